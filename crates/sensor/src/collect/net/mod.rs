//! Network and DNS telemetry for every network namespace on the host.
//!
//! The sensor runs in the host's network namespace (`--net=host`,
//! `hostNetwork`) and looks into each container's namespace in two ways:
//!
//! - **Polling tier** ([`poll`]): every [`NetConfig::poll_interval`], each
//!   namespace's socket tables are read through a sock_diag socket created in
//!   it ([`diag`]), or, without CAP_SYS_ADMIN, from `$HOST_FS/proc/<pid>/net/*`
//!   of one process in it, and diffed against the previous pass. Socket inodes are mapped to processes through
//!   `$HOST_FS/proc/<pid>/fd/*`. Connections that open and close between two
//!   passes are not seen at all, and a connection is reported up to one
//!   interval after it opened or closed.
//! - **DNS capture** ([`capture`]): one `AF_PACKET` socket per namespace with a
//!   classic BPF filter for UDP source port 53, opened from a thread that
//!   joined the namespace. A packet socket stays bound to the namespace it
//!   was created in, so one reader thread serves all of them.
//!
//! - **Kernel reports** ([`kernel`]): with the eBPF tier, its programs
//!   report TCP connects, accepts and closes and each UDP socket's peers as
//!   they happen, with the process. The poller then only reports flows the
//!   kernel did not (those older than the sensor, or lost), and the capture
//!   learns the process behind each DNS client port from the sends.
//!
//! Entry point: [`spawn`]. It needs read access to `$HOST_FS/proc` (which
//! works without `hostPID`). The DNS capture and sock_diag also need
//! CAP_SYS_ADMIN and CAP_NET_RAW for `setns` and packet sockets. Without
//! them the capture is reported as unavailable and the tables are read from
//! `/proc` text.

pub mod capture;
pub mod diag;
pub mod discover;
pub mod kernel;
pub mod poll;
pub mod procfs;
mod record;
pub mod sys;
mod udp_ports;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use picket_event::Record;

pub use record::{Attributor, ProcessContext};

/// Looks up the `event/CONTAINER` object of a process from the text of its
/// `/proc/<pid>/cgroup`. The container resolver implements this; host
/// processes return `None`.
pub trait ContainerLookup: Send + Sync + 'static {
    fn container_json(&self, cgroup_text: &str) -> Option<serde_json::Value>;
}

impl ContainerLookup for crate::container::ContainerResolver {
    fn container_json(&self, cgroup_text: &str) -> Option<serde_json::Value> {
        self.resolve(cgroup_text).map(|info| info.to_json())
    }
}

/// A lookup that attributes nothing, for hosts without container runtimes and
/// for callers that enrich later.
pub struct NoContainers;

impl ContainerLookup for NoContainers {
    fn container_json(&self, _cgroup_text: &str) -> Option<serde_json::Value> {
        None
    }
}

/// Settings of the network collector.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Time between two reads of every namespace's socket tables. Connections
    /// shorter than this may be missed. Default 1 s.
    pub poll_interval: Duration,
    /// Time between two `NETWORK_CONNECTIONS` summaries per process.
    /// Default 60 s.
    pub summary_interval: Duration,
    /// Capture DNS responses in every namespace. Default true.
    pub dns_capture: bool,
    /// Read socket tables through sock_diag where a socket can be opened in
    /// the namespace (CAP_SYS_ADMIN), instead of `/proc` text. Default true.
    pub sock_diag: bool,
    /// `routing/hostname` of every record.
    pub hostname: String,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            poll_interval: Duration::from_secs(1),
            summary_interval: Duration::from_secs(60),
            dns_capture: true,
            sock_diag: true,
            hostname: String::new(),
        }
    }
}

/// Counters of the network collector. All are totals since start, except
/// `namespaces`, which is the count at the last pass.
#[derive(Debug, Default)]
pub struct NetStats {
    pub polls: AtomicU64,
    pub namespaces: AtomicU64,
    /// Passes where `NET_NS` was set but could not be read.
    pub netns_dir_unreadable: AtomicU64,
    /// `NET_NS` entries that were not nsfs files (mount not propagated).
    pub netns_files_stale: AtomicU64,
    /// Namespaces whose socket tables could not be read by any route, because
    /// every process in them exited and no `NET_NS` file pins them.
    pub netns_vanished: AtomicU64,
    /// Socket table reads that failed and were retried with another process.
    pub table_read_failed: AtomicU64,
    /// Namespace passes that skipped the socket tables because the
    /// namespace's counters showed no TCP or UDP socket.
    pub namespaces_without_sockets: AtomicU64,
    pub table_lines_invalid: AtomicU64,
    /// Namespaces read through a sock_diag socket.
    pub diag_sockets: AtomicU64,
    /// Namespaces where no sock_diag socket could be opened.
    pub diag_open_failed: AtomicU64,
    pub connections_new: AtomicU64,
    pub connections_terminated: AtomicU64,
    /// Connections reported without a process because no fd referred to
    /// their socket.
    pub connections_unowned: AtomicU64,
    /// Scans of every process's descriptors for sockets whose process left
    /// their namespace.
    pub host_owner_scans: AtomicU64,
    pub capture_sockets: AtomicU64,
    pub capture_open_failed: AtomicU64,
    pub packets_captured: AtomicU64,
    /// Packets the capture sockets dropped because their buffer was full;
    /// also sent as `DATA_DROPPED` with reason `dns_capture_overflow`.
    pub packets_dropped: AtomicU64,
    /// Captured packets that were not a complete IPv4/IPv6 UDP datagram.
    pub packets_undecodable: AtomicU64,
    pub dns_responses: AtomicU64,
    /// DNS payloads that did not parse, by any [`crate::dns::DnsError`].
    pub dns_malformed: AtomicU64,
    /// DNS answers past the per-message cap.
    pub dns_answers_dropped: AtomicU64,
    pub dns_answers: AtomicU64,
    /// Records not delivered because the receiver was closed.
    pub records_undelivered: AtomicU64,
    /// Reports received from the eBPF tier's network programs.
    pub kernel_events: AtomicU64,
    /// TCP opens the kernel reported after the poller had reported them;
    /// no second record is sent.
    pub kernel_reports_after_poll: AtomicU64,
    /// DNS responses the capture held back to see whether the kernel
    /// reports them.
    pub dns_deferred: AtomicU64,
    /// Captured responses dropped because the kernel reported them as read.
    pub dns_read_by_kernel: AtomicU64,
    /// Captured responses dropped in the eBPF tier because they were sent
    /// to a port no process sent from and no socket was bound to.
    pub dns_unsolicited: AtomicU64,
    /// DNS responses read from the receiving process by the kernel hooks.
    pub dns_kernel_responses: AtomicU64,
}

impl NetStats {
    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    /// Counters as `(name, value)` pairs, for health output and tests.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("polls", load(&self.polls)),
            ("namespaces", load(&self.namespaces)),
            ("netns_dir_unreadable", load(&self.netns_dir_unreadable)),
            ("netns_files_stale", load(&self.netns_files_stale)),
            ("netns_vanished", load(&self.netns_vanished)),
            ("table_read_failed", load(&self.table_read_failed)),
            (
                "namespaces_without_sockets",
                load(&self.namespaces_without_sockets),
            ),
            ("table_lines_invalid", load(&self.table_lines_invalid)),
            ("diag_sockets", load(&self.diag_sockets)),
            ("diag_open_failed", load(&self.diag_open_failed)),
            ("connections_new", load(&self.connections_new)),
            ("connections_terminated", load(&self.connections_terminated)),
            ("connections_unowned", load(&self.connections_unowned)),
            ("host_owner_scans", load(&self.host_owner_scans)),
            ("capture_sockets", load(&self.capture_sockets)),
            ("capture_open_failed", load(&self.capture_open_failed)),
            ("packets_captured", load(&self.packets_captured)),
            ("packets_dropped", load(&self.packets_dropped)),
            ("packets_undecodable", load(&self.packets_undecodable)),
            ("dns_responses", load(&self.dns_responses)),
            ("dns_malformed", load(&self.dns_malformed)),
            ("dns_answers_dropped", load(&self.dns_answers_dropped)),
            ("dns_answers", load(&self.dns_answers)),
            ("records_undelivered", load(&self.records_undelivered)),
            ("kernel_events", load(&self.kernel_events)),
            (
                "kernel_reports_after_poll",
                load(&self.kernel_reports_after_poll),
            ),
            ("dns_deferred", load(&self.dns_deferred)),
            ("dns_read_by_kernel", load(&self.dns_read_by_kernel)),
            ("dns_unsolicited", load(&self.dns_unsolicited)),
            ("dns_kernel_responses", load(&self.dns_kernel_responses)),
        ]
    }
}

/// Handle on the running collector threads.
pub struct NetHandle {
    pub stats: Arc<NetStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl NetHandle {
    /// Stops the threads and waits for them. They notice within one poll
    /// interval, unless a thread is blocked on a full channel: drop the
    /// receiver (or keep reading it) before calling this.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Destination of records: a bounded tokio channel, written from plain
/// threads.
/// A full channel blocks the collector, so the polling pass is delayed rather
/// than losing records.
#[derive(Clone)]
pub(crate) struct Sink {
    tx: tokio::sync::mpsc::Sender<Record>,
    stats: Arc<NetStats>,
}

impl Sink {
    /// Sends a record; returns false once the receiver is closed.
    pub(crate) fn send(&self, record: Record) -> bool {
        if self.tx.blocking_send(record).is_ok() {
            return true;
        }
        NetStats::add(&self.stats.records_undelivered, 1);
        false
    }
}

/// Starts the polling collector and, when enabled, the DNS capture, on their
/// own threads. `host_fs` is where the host's `/` is mounted (`HOST_FS`);
/// `net_ns` is the `NET_NS` directory, if set. `kernel` carries the eBPF
/// tier's network reports when that tier runs. Records go to `tx` until it
/// is closed or [`NetHandle::stop`] is called.
///
/// Must be called outside a tokio runtime's worker context or from one; the
/// threads it starts use `blocking_send`, never the runtime.
pub fn spawn(
    config: NetConfig,
    host_fs: PathBuf,
    net_ns: Option<PathBuf>,
    containers: Arc<dyn ContainerLookup>,
    kernel: Option<kernel::KernelInput>,
    tx: tokio::sync::mpsc::Sender<Record>,
) -> std::io::Result<NetHandle> {
    let stats = Arc::new(NetStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sink = Sink {
        tx,
        stats: stats.clone(),
    };
    let proc_root = host_fs.join("proc");
    let mut threads = Vec::new();

    let flows = match kernel {
        Some(input) => {
            let flows = Arc::new(kernel::KernelFlows::default());
            let attributor = Attributor::new(&host_fs, containers.clone());
            let (shared, hostname, stats, sink, stop) = (
                flows.clone(),
                config.hostname.clone(),
                stats.clone(),
                sink.clone(),
                stop.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("picket-net-kernel".into())
                    .spawn(move || {
                        kernel::run(input, shared, attributor, hostname, stats, sink, stop)
                    })?,
            );
            Some(flows)
        }
        None => None,
    };

    let capture = if config.dns_capture {
        let (handle, thread) = capture::start(
            config.hostname.clone(),
            Attributor::new(&host_fs, containers.clone()),
            sink.clone(),
            stats.clone(),
            stop.clone(),
            proc_root.clone(),
            flows.clone(),
        )?;
        threads.push(thread);
        Some(handle)
    } else {
        None
    };

    let mut poller = poll::Poller::new(
        config.clone(),
        proc_root,
        net_ns,
        Attributor::new(&host_fs, containers),
        stats.clone(),
        capture,
        flows.clone(),
    );
    let poll_stop = stop.clone();
    threads.push(
        std::thread::Builder::new()
            .name("picket-net-poll".into())
            .spawn(move || poller.run(&sink, &poll_stop))?,
    );

    tracing::info!(
        connections = if flows.is_some() { "ebpf" } else { "procpoll" },
        interval_ms = config.poll_interval.as_millis() as u64,
        dns_capture = config.dns_capture,
        "network collector started"
    );
    Ok(NetHandle {
        stats,
        stop,
        threads,
    })
}
