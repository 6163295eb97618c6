//! Connections reported by the eBPF tier's network programs.
//!
//! The BPF programs (see `bpf/picket.bpf.c`) report a TCP connection when it
//! is established outwards or accepted, and when it closes, and a UDP
//! socket's first datagram to or from each peer. Each report names the
//! process that connected, accepted or did the I/O, so flows far shorter
//! than the poll interval arrive with their process.
//!
//! This module turns those reports into records and keeps two tables the
//! other parts consult:
//!
//! - TCP flows the kernel reported, open or recently closed, so the poller
//!   does not report them a second time. The poller still reports what the
//!   kernel did not see: connections older than the sensor, and any lost in
//!   a full ring buffer.
//! - The process behind each UDP port of each namespace, learnt from its
//!   sends, so the DNS capture can name the process a response is for even
//!   after its socket closed.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use picket_event::Record;

use super::capture;
use super::poll::FlowKey;
use super::procfs::{self, tcp_state, Proto};
use super::record::{self, Attributor, Connection, ProcessContext};
use super::{NetStats, Sink};
use crate::dns;
use crate::process::ProcessRegistry;

/// Kind of a kernel network report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelAction {
    /// An outgoing TCP connection completed its handshake.
    TcpConnect,
    /// A process accepted an incoming TCP connection.
    TcpAccept,
    /// A reported TCP connection closed.
    TcpClose,
    /// A UDP socket sent its first datagram to a peer.
    UdpSend,
    /// A UDP socket received its first datagram from a peer.
    UdpReceive,
    /// A process read a datagram from port 53; the report carries it.
    DnsResponse,
}

/// One network report of the eBPF tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNetEvent {
    pub action: KernelAction,
    pub proto: Proto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Inode of the socket's network namespace.
    pub netns: u64,
    pub pid: u32,
    pub start_ticks: u64,
    /// Command name of the process when the report was made.
    pub comm: String,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// For TCP closes: the connection was outgoing.
    pub outgoing: bool,
    /// For UDP: the socket was connected to its peer.
    pub udp_connected: bool,
    /// For [`KernelAction::DnsResponse`]: the first bytes of the datagram
    /// (at most 512).
    pub payload: Vec<u8>,
}

/// Input of the network collector from the eBPF tier.
pub struct KernelInput {
    /// The tier's network reports.
    pub events: Receiver<KernelNetEvent>,
    /// Processes recorded by the enricher, for reports whose process exited
    /// before `/proc` could be read.
    pub processes: Option<Arc<ProcessRegistry>>,
}

/// How long a closed flow stays in [`KernelFlows`]: longer than a poll
/// interval plus a pass, so the poller still finds it when its table read
/// predates the close.
const CLOSED_KEPT: Duration = Duration::from_secs(10);
/// Age after which a UDP port's owner is forgotten.
const UDP_OWNER_KEPT: Duration = Duration::from_secs(120);
/// Maximum UDP owners kept; past it the older half is dropped.
const MAX_UDP_OWNERS: usize = 65536;
/// How long a DNS response read by a process is remembered, for the
/// capture's check and against reading it twice.
const DNS_KEPT: Duration = Duration::from_secs(5);
/// Maximum DNS responses remembered; past it the table is cleared.
const MAX_DNS_RESPONSES: usize = 65536;
/// Maximum TCP flows kept; past it closed flows are dropped first.
const MAX_TCP_FLOWS: usize = 262_144;
/// How long a flow the poller reported first waits for a late kernel
/// report, which then gives no second record.
/// NOTE: a kernel report later than this (an io_uring-accepted connection
/// idle for longer before its first read) gives a second `NEW_*` record.
const POLLED_KEPT: Duration = Duration::from_secs(600);

#[derive(Default)]
struct Tables {
    /// `None` while open, else when the close was reported.
    tcp: HashMap<(u64, FlowKey), Option<Instant>>,
    udp_owners: HashMap<(u64, u16), (ProcessContext, Instant)>,
    /// DNS responses the kernel reported, by (namespace, client port,
    /// message id, [`dns_digest`]), with when.
    dns: HashMap<(u64, u16, u16, u64), Instant>,
    /// TCP flows the poller reported because no kernel report came within
    /// two passes, with when.
    polled: HashMap<(u64, FlowKey), Instant>,
}

/// Tables shared between the kernel report thread, the poller and the DNS
/// capture.
#[derive(Default)]
pub struct KernelFlows {
    tables: Mutex<Tables>,
}

impl KernelFlows {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns true when the kernel reported this TCP flow, open or lately
    /// closed.
    pub(crate) fn has_tcp(&self, netns: u64, key: &FlowKey) -> bool {
        self.lock().tcp.contains_key(&(netns, *key))
    }

    /// Returns true when the kernel reported this TCP flow open and not
    /// (yet) its close.
    pub(crate) fn tcp_open(&self, netns: u64, key: &FlowKey) -> bool {
        matches!(self.lock().tcp.get(&(netns, *key)), Some(None))
    }

    /// Returns the process that last used UDP port `port` in namespace
    /// `netns`.
    pub(crate) fn udp_owner(&self, netns: u64, port: u16) -> Option<ProcessContext> {
        self.lock()
            .udp_owners
            .get(&(netns, port))
            .map(|(owner, _)| owner.clone())
    }

    /// Returns true when the kernel reported this DNS response as read by a
    /// process in the last [`DNS_KEPT`]. `digest` is the response's
    /// [`dns_digest`].
    pub(crate) fn dns_reported(&self, netns: u64, port: u16, id: u16, digest: u64) -> bool {
        self.lock().dns.contains_key(&(netns, port, id, digest))
    }

    /// Records a DNS response read by a process; false when the same
    /// response was already recorded (read twice, or peeked first). Other
    /// responses with the same message ID, as a client that reuses its ID
    /// gets, are new ones. A repeated read does not extend the entry's
    /// time.
    fn note_dns(&self, netns: u64, port: u16, id: u16, digest: u64) -> bool {
        let mut tables = self.lock();
        if tables.dns.len() >= MAX_DNS_RESPONSES {
            tables.dns.clear();
        }
        match tables.dns.entry((netns, port, id, digest)) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(Instant::now());
                true
            }
        }
    }

    /// Records a TCP flow the kernel reported open. Returns false when the
    /// poller reported it first, so no second record is due: an accept
    /// delayed behind a full backlog, or one reported at the first read of
    /// a connection io_uring accepted.
    pub(crate) fn open_tcp(&self, netns: u64, key: FlowKey) -> bool {
        let mut tables = self.lock();
        if tables.tcp.len() >= MAX_TCP_FLOWS {
            tables.tcp.retain(|_, closed| closed.is_none());
        }
        tables.tcp.insert((netns, key), None);
        tables.polled.remove(&(netns, key)).is_none()
    }

    /// Records a TCP flow the poller reported itself, because the kernel
    /// had not reported it.
    pub(crate) fn note_polled(&self, netns: u64, key: FlowKey) {
        let mut tables = self.lock();
        if tables.polled.len() >= MAX_TCP_FLOWS {
            tables.polled.clear();
        }
        tables.polled.insert((netns, key), Instant::now());
    }

    pub(crate) fn close_tcp(&self, netns: u64, key: FlowKey) {
        self.lock().tcp.insert((netns, key), Some(Instant::now()));
    }

    fn set_udp_owner(&self, netns: u64, port: u16, owner: ProcessContext) {
        let mut tables = self.lock();
        if tables.udp_owners.len() >= MAX_UDP_OWNERS {
            let mut ages: Vec<Instant> = tables.udp_owners.values().map(|(_, at)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            tables.udp_owners.retain(|_, (_, at)| *at > cut);
        }
        tables
            .udp_owners
            .insert((netns, port), (owner, Instant::now()));
    }

    fn prune(&self) {
        let mut tables = self.lock();
        tables
            .tcp
            .retain(|_, closed| closed.is_none_or(|at| at.elapsed() < CLOSED_KEPT));
        tables
            .udp_owners
            .retain(|_, (_, at)| at.elapsed() < UDP_OWNER_KEPT);
        tables.dns.retain(|_, at| at.elapsed() < DNS_KEPT);
        tables.polled.retain(|_, at| at.elapsed() < POLLED_KEPT);
    }
}

/// Turns kernel reports from `events` into records until the channel closes
/// or `stop` is set.
pub(crate) fn run(
    input: KernelInput,
    flows: Arc<KernelFlows>,
    attributor: Attributor,
    hostname: String,
    stats: Arc<NetStats>,
    sink: Sink,
    stop: Arc<AtomicBool>,
) {
    let KernelInput { events, processes } = input;
    let mut resolver = Resolver {
        processes,
        attributor,
        cache: ContextCache::default(),
    };
    // Reports whose process exited before it could be read and that the
    // registry does not know yet, in arrival order with their deadline.
    // Later reports queue behind them so one flow's records stay in order.
    let mut waiting: VecDeque<(KernelNetEvent, Instant)> = VecDeque::new();
    let mut last_prune = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let timeout = if waiting.is_empty() { 200 } else { 20 };
        match events.recv_timeout(Duration::from_millis(timeout)) {
            Ok(mut event) => {
                NetStats::add(&stats.kernel_events, 1);
                // An IPv4 flow on a dual-stack socket is reported as IPv4,
                // as the socket tables report it.
                if let Some((proto, local, remote)) =
                    procfs::unmap_endpoints(event.proto, event.local, event.remote)
                {
                    (event.proto, event.local, event.remote) = (proto, local, remote);
                }
                waiting.push_back((event, Instant::now()));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Some((event, arrived)) = waiting.front() {
            let waited = arrived.elapsed();
            let expired = waited >= REGISTRY_WAIT;
            let process = match resolver.process(event, waited) {
                Some(process) => process,
                None if expired || resolver.processes.is_none() => resolver.gone(event),
                None => break,
            };
            let (event, _) = waiting.pop_front().expect("front exists");
            for record in handle(&event, process, &flows, &hostname, &stats) {
                if !sink.send(record) {
                    return;
                }
            }
        }
        if last_prune.elapsed() >= Duration::from_secs(1) {
            last_prune = Instant::now();
            flows.prune();
        }
    }
    // Reports still waiting are sent with what /proc or the report gives.
    for (event, _) in waiting {
        let process = resolver
            .process(&event, REGISTRY_WAIT)
            .unwrap_or_else(|| resolver.gone(&event));
        for record in handle(&event, process, &flows, &hostname, &stats) {
            if !sink.send(record) {
                return;
            }
        }
    }
}

/// Maximum wait for the enricher to record a process that exited before
/// its report was handled. The exec fact and the network report travel on
/// different channels, so the report can come first.
const REGISTRY_WAIT: Duration = Duration::from_secs(2);

/// Wait for the exec of a process that the registry has only from its
/// fork, because the exec may have moved it to another container's cgroup.
const EXEC_SETTLE: Duration = Duration::from_millis(300);

/// Finds the process of each report.
struct Resolver {
    processes: Option<Arc<ProcessRegistry>>,
    attributor: Attributor,
    cache: ContextCache,
}

impl Resolver {
    /// Returns the process of a report from the cache or the enricher's
    /// registry, else (without a registry, or once it waited
    /// [`REGISTRY_WAIT`]) from `/proc`. `None` means wait, or, once expired,
    /// that the process is gone.
    ///
    /// The registry is preferred over `/proc` because an exited process
    /// that is not yet reaped still has `/proc/<pid>`, but the kernel has
    /// moved it to the root cgroup, so its container would read as none.
    fn process(&mut self, event: &KernelNetEvent, waited: Duration) -> Option<ProcessContext> {
        if let Some(process) = self.cache.get(event) {
            return Some(process);
        }
        let expired = waited >= REGISTRY_WAIT;
        let process = match self.processes.as_deref() {
            Some(registry) => match known_process(event, registry) {
                Some((process, true)) => process,
                Some((process, false)) if waited >= EXEC_SETTLE => process,
                Some(_) => return None,
                None if expired => from_proc(event, &mut self.attributor)?,
                None => return None,
            },
            None => from_proc(event, &mut self.attributor)?,
        };
        self.cache.put(event, &process);
        Some(process)
    }

    /// Builds the context of a process known only from its report.
    fn gone(&self, event: &KernelNetEvent) -> ProcessContext {
        self.attributor
            .gone_process(event.pid, event.start_ticks, &event.comm)
    }
}

/// Builds the `DNS_REQUEST` records of a response a process read, once per
/// response.
/// Returns the DNS message in a response report's payload. DNS over TCP
/// puts a two-byte length before each message. Most clients read it
/// separately, and the kernel program skips such short reads. A read of
/// both at once starts with a length that matches the bytes after it, or
/// exceeds them when the payload was capped.
///
/// A TCP message cut at the payload cap gets the TC bit set, so the answers
/// before the cut are kept. A cut UDP message stays as it is: it fails to
/// parse and the capture, which has the whole datagram, reports it.
fn dns_message(event: &KernelNetEvent) -> Cow<'_, [u8]> {
    let payload = &event.payload[..];
    if !event.proto.is_tcp() || payload.len() < 2 {
        return Cow::Borrowed(payload);
    }
    let length = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
    let after = payload.len() - 2;
    let capped = payload.len() >= crate::collect::ebpf::DNS_PAYLOAD_CAP;
    // NOTE: a message read without its length whose ID happens to equal
    // its size minus two is taken as framed, and then fails to parse.
    let (message, cut) = if length == after || (capped && length > after) {
        (&payload[2..], length > after)
    } else {
        (payload, capped)
    };
    if !cut || message.len() < 3 {
        return Cow::Borrowed(message);
    }
    let mut message = message.to_vec();
    message[2] |= 0x02;
    Cow::Owned(message)
}

/// Returns a digest of the first bytes of a DNS message (as many as the
/// kernel program copies), the same for the kernel's copy and the
/// capture's, so the two copies of one response match.
pub(crate) fn dns_digest(message: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let end = message.len().min(crate::collect::ebpf::DNS_PAYLOAD_CAP);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    message[..end].hash(&mut hasher);
    hasher.finish()
}

fn dns_response(
    event: &KernelNetEvent,
    process: &ProcessContext,
    flows: &KernelFlows,
    hostname: &str,
    stats: &NetStats,
) -> Vec<Record> {
    let bytes = dns_message(event);
    let message = match dns::parse_response(&bytes) {
        Ok(message) => message,
        Err(error) => {
            NetStats::add(&stats.dns_malformed, 1);
            tracing::debug!(netns = event.netns, kind = error.kind(), %error, "malformed dns response read by a process");
            return Vec::new();
        }
    };
    let digest = dns_digest(&bytes);
    if !flows.note_dns(event.netns, event.local.port(), message.id, digest) {
        return Vec::new();
    }
    NetStats::add(&stats.dns_kernel_responses, 1);
    NetStats::add(&stats.dns_responses, 1);
    NetStats::add(&stats.dns_answers_dropped, message.answers_dropped as u64);
    NetStats::add(&stats.dns_answers, message.answers.len() as u64);
    let mut records = capture::dns_records(hostname, event.netns, &message, Some(process));
    for record in &mut records {
        record.routing.event_time = event.time_ns / 1_000_000;
        record.set("TIMESTAMP", event.time_ns / 1_000_000);
    }
    records
}

/// Process contexts by (pid, start time), so a busy process's reports do
/// not each read `/proc`. Entries are refreshed after a while: container
/// metadata can arrive after the process started.
#[derive(Default)]
struct ContextCache {
    entries: HashMap<(u32, u64), (Instant, ProcessContext)>,
}

/// Age after which a cached context is looked up again.
const CONTEXT_REFRESH: Duration = Duration::from_secs(5);
/// Maximum contexts kept; past it the cache is cleared.
const MAX_CONTEXTS: usize = 16384;

impl ContextCache {
    fn get(&self, event: &KernelNetEvent) -> Option<ProcessContext> {
        let (at, context) = self.entries.get(&(event.pid, event.start_ticks))?;
        (event.start_ticks != 0 && at.elapsed() < CONTEXT_REFRESH).then(|| context.clone())
    }

    fn put(&mut self, event: &KernelNetEvent, context: &ProcessContext) {
        if self.entries.len() >= MAX_CONTEXTS {
            self.entries.clear();
        }
        self.entries.insert(
            (event.pid, event.start_ticks),
            (Instant::now(), context.clone()),
        );
    }
}

/// Returns the process of a report as the enricher's registry has it, and
/// whether its container was read from its own cgroup.
fn known_process(
    event: &KernelNetEvent,
    registry: &ProcessRegistry,
) -> Option<(ProcessContext, bool)> {
    let known = registry.get(event.pid, event.start_ticks)?;
    let context = ProcessContext {
        pid: event.pid,
        start_ticks: known.start_ticks,
        comm: known.comm,
        atom: known.atom,
        container: known.container.map(|c| (*c).clone()),
    };
    Some((context, known.own_cgroup))
}

/// Returns the process of a report read from `/proc`, or `None` when it
/// exited or its pid was reused.
fn from_proc(event: &KernelNetEvent, attributor: &mut Attributor) -> Option<ProcessContext> {
    attributor
        .context(event.pid)
        .filter(|context| event.start_ticks == 0 || context.start_ticks == event.start_ticks)
}

fn handle(
    event: &KernelNetEvent,
    process: ProcessContext,
    flows: &KernelFlows,
    hostname: &str,
    stats: &NetStats,
) -> Vec<Record> {
    let key = FlowKey {
        proto: event.proto,
        local: event.local,
        remote: event.remote,
    };
    let (event_type, outgoing, state) = match event.action {
        KernelAction::TcpConnect | KernelAction::TcpAccept => {
            if !flows.open_tcp(event.netns, key) {
                NetStats::add(&stats.kernel_reports_after_poll, 1);
                return Vec::new();
            }
            NetStats::add(&stats.connections_new, 1);
            (
                record::new_event_type(event.proto),
                event.action == KernelAction::TcpConnect,
                tcp_state::ESTABLISHED,
            )
        }
        KernelAction::TcpClose => {
            flows.close_tcp(event.netns, key);
            NetStats::add(&stats.connections_terminated, 1);
            let Some(event_type) = record::terminate_event_type(event.proto) else {
                return Vec::new();
            };
            (event_type, event.outgoing, tcp_state::CLOSE)
        }
        KernelAction::DnsResponse => {
            return dns_response(event, &process, flows, hostname, stats);
        }
        KernelAction::UdpSend | KernelAction::UdpReceive => {
            flows.set_udp_owner(event.netns, event.local.port(), process.clone());
            NetStats::add(&stats.connections_new, 1);
            let state = if event.udp_connected {
                tcp_state::ESTABLISHED
            } else {
                tcp_state::CLOSE
            };
            (
                record::new_event_type(event.proto),
                event.action == KernelAction::UdpSend,
                state,
            )
        }
    };
    let connection = Connection::new(
        event.proto,
        event.local,
        event.remote,
        outgoing,
        state,
        event.netns,
    );
    let mut record = connection.record(event_type, hostname, Some(&process), None);
    record.routing.event_time = event.time_ns / 1_000_000;
    record.set("TIMESTAMP", event.time_ns / 1_000_000);
    vec![record]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::net::NoContainers;
    use crate::process::KnownProcess;
    use std::path::Path;
    use std::sync::mpsc::sync_channel;

    /// A pid far above any default pid_max, so `/proc` never has it.
    const GONE_PID: u32 = 0x3fff_fff0;

    fn connect_report() -> KernelNetEvent {
        KernelNetEvent {
            action: KernelAction::TcpConnect,
            proto: Proto::Tcp4,
            local: "10.1.0.2:40000".parse().unwrap(),
            remote: "10.1.0.3:80".parse().unwrap(),
            netns: 4026532000,
            pid: GONE_PID,
            start_ticks: 777,
            comm: "curl".into(),
            time_ns: 1_700_000_000_000_000_000,
            outgoing: true,
            udp_connected: false,
            payload: Vec::new(),
        }
    }

    struct Running {
        events: std::sync::mpsc::SyncSender<KernelNetEvent>,
        records: tokio::sync::mpsc::Receiver<Record>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn start(registry: Arc<ProcessRegistry>) -> Running {
        let (events_tx, events) = sync_channel(16);
        let (tx, records) = tokio::sync::mpsc::channel(16);
        let stats = Arc::new(NetStats::default());
        let sink = Sink {
            tx,
            stats: stats.clone(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let input = KernelInput {
            events,
            processes: Some(registry),
        };
        let attributor = Attributor::new(Path::new("/"), Arc::new(NoContainers));
        let flows = Arc::new(KernelFlows::default());
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            run(
                input,
                flows,
                attributor,
                "host".into(),
                stats,
                sink,
                thread_stop,
            )
        });
        Running {
            events: events_tx,
            records,
            stop,
            thread: Some(thread),
        }
    }

    fn next_record(running: &mut Running, within: Duration) -> Option<Record> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(record) = running.records.try_recv() {
                return Some(record);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn report_waits_for_late_registry() {
        let registry = Arc::new(ProcessRegistry::default());
        let mut running = start(registry.clone());
        running.events.send(connect_report()).unwrap();
        assert!(
            next_record(&mut running, Duration::from_millis(300)).is_none(),
            "sent before the process was known"
        );

        registry.record(
            GONE_PID,
            KnownProcess {
                start_ticks: 777,
                atom: "a".repeat(32),
                comm: "curl".into(),
                container: Some(Arc::new(serde_json::json!({"ID": "c0ffee"}))),
                own_cgroup: true,
            },
        );
        let record = next_record(&mut running, Duration::from_secs(2)).expect("record");
        assert_eq!(record.routing.event_type, "NEW_TCP4_CONNECTION");
        assert_eq!(record.event["CONTAINER"]["ID"], "c0ffee");
        assert_eq!(record.event["PROCESS_ID"], GONE_PID);
        assert_eq!(
            record.routing.this.as_deref(),
            Some("a".repeat(32).as_str())
        );
    }

    #[test]
    fn unknown_process_reported_after_wait() {
        let registry = Arc::new(ProcessRegistry::default());
        let mut running = start(registry);
        let sent = Instant::now();
        running.events.send(connect_report()).unwrap();
        let record = next_record(&mut running, REGISTRY_WAIT * 2).expect("record");
        assert!(sent.elapsed() >= REGISTRY_WAIT);
        assert_eq!(record.event["PROCESS_ID"], GONE_PID);
        assert!(record.event.get("CONTAINER").is_none());
        // The atom is still derived from the pid and start time.
        assert_eq!(record.routing.this.as_deref().map(str::len), Some(32));
    }

    fn dns_event(proto: Proto, payload: Vec<u8>) -> KernelNetEvent {
        KernelNetEvent {
            action: KernelAction::DnsResponse,
            proto,
            local: "10.0.0.2:40000".parse().unwrap(),
            remote: "10.0.0.53:53".parse().unwrap(),
            netns: 1,
            pid: 1,
            start_ticks: 1,
            comm: "client".into(),
            time_ns: 0,
            outgoing: false,
            udp_connected: true,
            payload,
        }
    }

    #[test]
    fn dns_message_strips_tcp_length_only() {
        let query = dns::build::query(0x0a0b, "a.picket.test", dns::TYPE_A);
        let answer = dns::build::AnswerData::Address("10.1.2.3".parse().unwrap());
        let message = dns::build::response(&query, &[answer]).unwrap();
        let mut framed = (message.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&message);

        let tcp_framed = dns_event(Proto::Tcp4, framed.clone());
        assert_eq!(&*dns_message(&tcp_framed), &message[..]);
        let tcp_bare = dns_event(Proto::Tcp4, message.clone());
        assert_eq!(&*dns_message(&tcp_bare), &message[..]);
        // A UDP payload is a message as it is.
        let udp = dns_event(Proto::Udp4, framed.clone());
        assert_eq!(&*dns_message(&udp), &framed[..]);
    }

    /// A TCP response longer than the payload cap: the answers before the
    /// cut are reported.
    #[test]
    fn cut_tcp_dns_message_keeps_its_first_answers() {
        let query = dns::build::query(0x0c0d, "many.picket.test", dns::TYPE_A);
        let answers: Vec<_> = (0..60u8)
            .map(|i| dns::build::AnswerData::Address(std::net::IpAddr::from([10, 0, 0, i])))
            .collect();
        let message = dns::build::response(&query, &answers).unwrap();
        let cap = crate::collect::ebpf::DNS_PAYLOAD_CAP;
        assert!(message.len() > cap, "{} bytes", message.len());
        let mut framed = (message.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&message);
        framed.truncate(cap);

        let cut = dns_event(Proto::Tcp4, framed);
        let parsed = dns::parse_response(&dns_message(&cut)).expect("cut message parses");
        assert!(parsed.truncated());
        assert!(!parsed.answers.is_empty());
        assert!(
            parsed.answers.len() < 60,
            "{} answers",
            parsed.answers.len()
        );
        // The same cut over UDP is left to the capture.
        let udp = dns_event(Proto::Udp4, message[..cap].to_vec());
        assert!(dns::parse_response(&dns_message(&udp)).is_err());
    }

    /// Returns the context of a host process (pid 42) named `comm`.
    fn host_process(comm: &str) -> ProcessContext {
        ProcessContext {
            pid: 42,
            start_ticks: 777,
            comm: comm.into(),
            atom: "a".repeat(32),
            container: None,
        }
    }

    /// A kernel report of a TCP open the poller already reported gives no
    /// second record.
    #[test]
    fn late_open_after_poll_gives_no_record() {
        let flows = KernelFlows::default();
        let stats = NetStats::default();
        let process = host_process("server");
        let mut accept = connect_report();
        accept.action = KernelAction::TcpAccept;
        let key = FlowKey {
            proto: accept.proto,
            local: accept.local,
            remote: accept.remote,
        };

        flows.note_polled(accept.netns, key);
        let late = handle(&accept, process.clone(), &flows, "host", &stats);
        assert!(late.is_empty(), "{late:#?}");
        assert!(flows.tcp_open(accept.netns, &key));
        assert_eq!(
            stats
                .kernel_reports_after_poll
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );

        // The next open of the same endpoints is a new connection.
        let again = handle(&accept, process, &flows, "host", &stats);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].routing.event_type, "NEW_TCP4_CONNECTION");
    }

    /// Responses with one message ID on one socket are each reported when
    /// their content differs; a second read of the same one is not.
    #[test]
    fn reused_message_id_reported_per_response() {
        let flows = KernelFlows::default();
        let stats = NetStats::default();
        let process = host_process("client");
        let response = |name: &str| {
            let query = dns::build::query(0x4242, name, dns::TYPE_A);
            let answer = dns::build::AnswerData::Address("10.1.2.3".parse().unwrap());
            dns_event(
                Proto::Udp4,
                dns::build::response(&query, &[answer]).unwrap(),
            )
        };
        let names = |records: Vec<Record>| -> Vec<String> {
            records
                .iter()
                .map(|r| r.event["DOMAIN_NAME"].as_str().unwrap().to_owned())
                .collect()
        };

        let first = handle(
            &response("benign.picket.test"),
            process.clone(),
            &flows,
            "host",
            &stats,
        );
        assert_eq!(names(first), ["benign.picket.test"]);
        let again = handle(
            &response("benign.picket.test"),
            process.clone(),
            &flows,
            "host",
            &stats,
        );
        assert!(again.is_empty(), "the same response read twice");
        let hidden = handle(
            &response("hidden.picket.test"),
            process,
            &flows,
            "host",
            &stats,
        );
        assert_eq!(names(hidden), ["hidden.picket.test"]);
    }
}
