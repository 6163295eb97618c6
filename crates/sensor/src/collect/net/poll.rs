//! Polling tier: socket tables of every namespace, diffed pass to pass.
//!
//! What this tier cannot see: a connection that opens and closes between two
//! passes (most short HTTP requests, every DNS lookup over UDP) produces no
//! record at all. A connection is reported up to one poll interval late. A
//! UDP socket is reported once when it appears, and its later peers are not.
//! TCP connections still in the accept queue have no inode and no process
//! until the server accepts them.
//!
//! With the eBPF tier's reports ([`KernelFlows`]), the first pass still
//! reports every connection open at start. Later passes report only a TCP
//! flow the kernel did not, once two passes saw it, so a report still in the
//! ring buffer is not raced. UDP sockets are then reported by the kernel
//! only, per peer.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use picket_event::{types, Record};
use serde_json::Value;

use super::capture::CaptureHandle;
use super::discover::{self, Discovery, NetnsDir};
use super::kernel::KernelFlows;
use super::procfs::{self, tcp_state, Proto, SocketEntry};
use super::record::{self, Attributor, Connection, ProcessContext};
use super::{diag, sys, NetConfig, NetStats, Sink};

/// A TCP flow is keyed by its endpoints; a later flow on the same four-tuple
/// after this one closed is a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub(crate) proto: Proto,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
}

#[derive(Debug, Clone)]
struct Flow {
    inode: u64,
    state: u8,
    outgoing: bool,
    first_seen_ms: u64,
    owner: Option<ProcessContext>,
    announced: bool,
    /// Passes the flow was seen without an owner.
    unowned_passes: u8,
    /// Passes the flow was seen in.
    seen_passes: u8,
    /// The kernel reported this flow; the poller reports nothing about it.
    by_kernel: bool,
}

/// Passes a flow waits for its owner (a socket still in the accept queue has
/// inode 0) before it is reported without one.
const OWNER_WAIT_PASSES: u8 = 2;

#[derive(Default)]
struct NamespaceState {
    tcp: HashMap<FlowKey, Flow>,
    /// UDP sockets by (key, inode); one socket may be rebound or reconnected.
    udp: HashMap<(FlowKey, u64), Flow>,
    /// `CONTAINER` shared by every process of the namespace, for flows whose
    /// process is unknown.
    container: Option<Value>,
    /// TCP ports seen listening in this namespace, kept after the listener
    /// closed: some servers stop listening once they accepted.
    listened: HashSet<(Proto, u16)>,
    /// sock_diag socket created in this namespace, reused every pass.
    diag: Option<OwnedFd>,
    /// Set once opening a sock_diag socket failed; the namespace is then
    /// read through `/proc` only.
    diag_unavailable: bool,
}

/// Interval of the network counters' log line.
const COUNTER_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Ports remembered per namespace in [`NamespaceState::listened`].
const MAX_LISTENED_PORTS: usize = 4096;

/// Default ephemeral port range (`net.ipv4.ip_local_port_range`). Each
/// namespace may set its own; the direction guess only falls back to it.
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

/// State of the polling tier.
pub struct Poller {
    config: NetConfig,
    proc_root: PathBuf,
    net_ns: Option<PathBuf>,
    attributor: Attributor,
    stats: Arc<NetStats>,
    capture: Option<CaptureHandle>,
    namespaces: HashMap<u64, NamespaceState>,
    last_summary: Instant,
    diag_warned: bool,
    /// Flows the eBPF tier reported, when it runs.
    kernel: Option<Arc<KernelFlows>>,
    /// No pass has completed yet: flows seen now predate the sensor.
    first_pass: bool,
    /// Flows the kernel reported that left the socket tables, waiting to
    /// see whether the kernel reports their close too.
    vanished: Vec<Vanished>,
    /// Socket owners of every process on the host, by socket inode, and
    /// when they were read; see [`Poller::host_socket_owner`].
    host_owners: Option<(Instant, HashMap<u64, u32>)>,
}

/// Minimum time between two scans of every process's descriptors, which
/// find a socket whose process left its namespace.
const HOST_SCAN_INTERVAL: Duration = Duration::from_secs(5);

/// A kernel-reported flow gone from the socket tables.
struct Vanished {
    netns: u64,
    key: FlowKey,
    flow: Flow,
    container: Option<Value>,
    since: Instant,
}

/// Time a vanished flow waits for the kernel's close report before the
/// poller reports the close itself. The kernel's table of open sockets is
/// bounded, so it can lose a connection's owner and then its close.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

impl Poller {
    pub fn new(
        config: NetConfig,
        proc_root: PathBuf,
        net_ns: Option<PathBuf>,
        attributor: Attributor,
        stats: Arc<NetStats>,
        capture: Option<CaptureHandle>,
        kernel: Option<Arc<KernelFlows>>,
    ) -> Self {
        Poller {
            config,
            proc_root,
            net_ns,
            attributor,
            stats,
            capture,
            namespaces: HashMap::new(),
            last_summary: Instant::now(),
            host_owners: None,
            diag_warned: false,
            kernel,
            first_pass: true,
            vanished: Vec::new(),
        }
    }

    pub(crate) fn run(&mut self, sink: &Sink, stop: &AtomicBool) {
        let mut last_log = Instant::now();
        let mut last_slow_warning: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            if last_log.elapsed() >= COUNTER_LOG_INTERVAL {
                last_log = started;
                let counters: serde_json::Map<String, Value> = self
                    .stats
                    .snapshot()
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), Value::from(value)))
                    .collect();
                let counters = Value::Object(counters).to_string();
                tracing::info!(%counters, "network collector counters");
            }
            for record in self.poll_once() {
                if !sink.send(record) {
                    tracing::info!("network collector stopped: record receiver closed");
                    return;
                }
            }
            let elapsed = started.elapsed();
            let warned_lately =
                last_slow_warning.is_some_and(|at| at.elapsed() < COUNTER_LOG_INTERVAL);
            if elapsed > self.config.poll_interval * 2 && !warned_lately {
                last_slow_warning = Some(Instant::now());
                tracing::warn!(
                    pass_ms = elapsed.as_millis() as u64,
                    interval_ms = self.config.poll_interval.as_millis() as u64,
                    namespaces = self.namespaces.len(),
                    "network poll pass took longer than twice its interval; flows shorter than a pass are missed"
                );
            }
            let rest = self.config.poll_interval.saturating_sub(elapsed);
            sleep_unless_stopped(rest, stop);
        }
    }

    /// Runs one pass over every namespace and returns the records it made.
    pub fn poll_once(&mut self) -> Vec<Record> {
        NetStats::add(&self.stats.polls, 1);
        let discovery = discover::discover(&self.proc_root, self.net_ns.as_deref());
        self.count_discovery(&discovery);
        if let Some(capture) = &mut self.capture {
            capture.sync(&discovery, &self.stats);
        }

        let mut records = Vec::new();
        for netns in discovery.namespaces.values() {
            match self.read_namespace(netns) {
                Some(entries) => self.diff_namespace(netns, &entries, &mut records),
                None => {
                    NetStats::add(&self.stats.netns_vanished, 1);
                    self.close_namespace(netns.inode, &mut records);
                }
            }
        }

        let live: HashSet<u64> = discovery.namespaces.keys().copied().collect();
        let gone: Vec<u64> = self
            .namespaces
            .keys()
            .filter(|inode| !live.contains(inode))
            .copied()
            .collect();
        for inode in gone {
            self.close_namespace(inode, &mut records);
        }

        if self.last_summary.elapsed() >= self.config.summary_interval {
            self.last_summary = Instant::now();
            records.extend(self.summaries());
        }
        self.close_vanished(&mut records);
        self.first_pass = false;
        records
    }

    /// Reports the close of kernel-reported flows that left the socket
    /// tables at least [`CLOSE_GRACE`] ago while the kernel still has them
    /// open: their close report was lost.
    fn close_vanished(&mut self, records: &mut Vec<Record>) {
        let Some(kernel) = self.kernel.clone() else {
            return;
        };
        let hostname = self.config.hostname.clone();
        let (due, waiting): (Vec<Vanished>, Vec<Vanished>) = std::mem::take(&mut self.vanished)
            .into_iter()
            .partition(|v| v.since.elapsed() >= CLOSE_GRACE);
        self.vanished = waiting;
        for vanished_flow in due {
            if !kernel.tcp_open(vanished_flow.netns, &vanished_flow.key) {
                continue;
            }
            kernel.close_tcp(vanished_flow.netns, vanished_flow.key);
            let mut flow = vanished_flow.flow;
            flow.by_kernel = false;
            self.finish_flow(
                &vanished_flow.key,
                flow,
                vanished_flow.netns,
                &vanished_flow.container,
                &hostname,
                records,
            );
        }
    }

    fn count_discovery(&self, discovery: &Discovery) {
        self.stats
            .namespaces
            .store(discovery.namespaces.len() as u64, Ordering::Relaxed);
        match discovery.netns_dir {
            NetnsDir::Unreadable => NetStats::add(&self.stats.netns_dir_unreadable, 1),
            NetnsDir::Read { stale, .. } if stale > 0 => {
                NetStats::add(&self.stats.netns_files_stale, stale as u64)
            }
            _ => {}
        }
    }

    /// Reads the namespace's tables through its sock_diag socket when one
    /// can be opened. Otherwise reads them as text through one of its
    /// processes and then checks that the process is still in that
    /// namespace, because a pid reused meanwhile would attribute another
    /// namespace's sockets. The last route is a thread that joined the
    /// namespace through its `NET_NS` file.
    fn read_namespace(&mut self, netns: &discover::Netns) -> Option<Vec<SocketEntry>> {
        if self.has_no_sockets(netns) {
            NetStats::add(&self.stats.namespaces_without_sockets, 1);
            return Some(Vec::new());
        }
        if self.config.sock_diag {
            if let Some(entries) = self.read_with_diag(netns) {
                return Some(entries);
            }
        }
        for &pid in netns.pids.iter().take(4) {
            let pid_dir = self.proc_root.join(pid.to_string());
            match procfs::read_tables(&pid_dir.join("net")) {
                Ok((entries, invalid)) => {
                    NetStats::add(&self.stats.table_lines_invalid, invalid as u64);
                    if discover::namespace_inode(&pid_dir.join("ns/net")) == Some(netns.inode) {
                        return Some(entries);
                    }
                    NetStats::add(&self.stats.table_read_failed, 1);
                }
                Err(error) => {
                    NetStats::add(&self.stats.table_read_failed, 1);
                    tracing::debug!(netns = netns.inode, pid, %error, "socket table read failed");
                }
            }
        }

        let file = netns.file.as_ref()?;
        match read_tables_via_file(file) {
            Ok((entries, invalid)) => {
                NetStats::add(&self.stats.table_lines_invalid, invalid as u64);
                Some(entries)
            }
            Err(error) => {
                NetStats::add(&self.stats.table_read_failed, 1);
                tracing::debug!(netns = netns.inode, path = %file.display(), %error, "socket table read through netns file failed");
                None
            }
        }
    }

    fn has_no_sockets(&self, netns: &discover::Netns) -> bool {
        namespace_without_sockets(&self.proc_root, netns, false)
    }

    fn read_with_diag(&mut self, netns: &discover::Netns) -> Option<Vec<SocketEntry>> {
        let state = self.namespaces.entry(netns.inode).or_default();
        if state.diag_unavailable {
            return None;
        }
        if state.diag.is_none() {
            match open_diag(&self.proc_root, netns) {
                Ok(socket) => {
                    NetStats::add(&self.stats.diag_sockets, 1);
                    state.diag = Some(socket);
                }
                Err(error) => {
                    state.diag_unavailable = true;
                    NetStats::add(&self.stats.diag_open_failed, 1);
                    if !self.diag_warned {
                        self.diag_warned = true;
                        tracing::warn!(netns = netns.inode, %error, "sock_diag unavailable; reading socket tables from /proc");
                    }
                    return None;
                }
            }
        }

        let socket = state.diag.as_ref()?;
        match diag::read_tables(socket) {
            Ok(entries) => Some(entries),
            Err(error) => {
                state.diag = None;
                NetStats::add(&self.stats.table_read_failed, 1);
                tracing::debug!(netns = netns.inode, %error, "sock_diag dump failed");
                None
            }
        }
    }

    fn diff_namespace(
        &mut self,
        netns: &discover::Netns,
        entries: &[SocketEntry],
        records: &mut Vec<Record>,
    ) {
        let now_ms = picket_event::record::now_ms();
        let hostname = self.config.hostname.clone();
        let mut state = self.namespaces.remove(&netns.inode).unwrap_or_default();

        for entry in entries {
            if entry.proto.is_tcp()
                && entry.state == tcp_state::LISTEN
                && state.listened.len() < MAX_LISTENED_PORTS
            {
                state.listened.insert((entry.proto, entry.local.port()));
                // A dual-stack listener (IPV6_V6ONLY off, the Linux default)
                // also accepts IPv4 clients, whose flows the tables list
                // under TCP4 once their mapped addresses are unmapped.
                if entry.proto == Proto::Tcp6 && entry.local.ip().is_unspecified() {
                    state.listened.insert((Proto::Tcp4, entry.local.port()));
                }
            }
        }
        let listening = &state.listened;

        // Current open TCP flows and UDP sockets.
        let mut tcp_now: HashMap<FlowKey, &SocketEntry> = HashMap::new();
        let mut udp_now: HashMap<(FlowKey, u64), &SocketEntry> = HashMap::new();
        for entry in entries {
            let key = FlowKey {
                proto: entry.proto,
                local: entry.local,
                remote: entry.remote,
            };
            if entry.proto.is_tcp() {
                if tcp_state::is_open(entry.state) {
                    tcp_now.insert(key, entry);
                }
            } else {
                udp_now.insert((key, entry.inode), entry);
            }
        }

        // Closed TCP flows.
        let closed: Vec<FlowKey> = state
            .tcp
            .keys()
            .filter(|key| !tcp_now.contains_key(key))
            .copied()
            .collect();
        for key in closed {
            let mut flow = state.tcp.remove(&key).expect("key taken from the map");
            // The kernel may have reported a flow the poller announced
            // since the last pass.
            if flow.announced
                && self
                    .kernel
                    .as_ref()
                    .is_some_and(|k| k.has_tcp(netns.inode, &key))
            {
                flow.by_kernel = true;
            }
            if flow.by_kernel {
                self.vanished.push(Vanished {
                    netns: netns.inode,
                    key,
                    flow,
                    container: state.container.clone(),
                    since: Instant::now(),
                });
                continue;
            }
            self.finish_flow(
                &key,
                flow,
                netns.inode,
                &state.container,
                &hostname,
                records,
            );
        }
        state.udp.retain(|key, _| udp_now.contains_key(key));

        // Update or add open flows, then find owners of those that need one.
        for (key, entry) in &tcp_now {
            let flow = state.tcp.entry(*key).or_insert_with(|| Flow {
                inode: entry.inode,
                state: entry.state,
                outgoing: tcp_outgoing(entry, listening),
                first_seen_ms: now_ms,
                owner: None,
                announced: false,
                unowned_passes: 0,
                seen_passes: 0,
                by_kernel: false,
            });
            flow.seen_passes = flow.seen_passes.saturating_add(1);
            flow.state = entry.state;
            if flow.inode == 0 {
                flow.inode = entry.inode;
            }
        }
        // Past the first pass the kernel reports new UDP peers itself.
        let udp_by_kernel = self.kernel.is_some() && !self.first_pass;
        for (key, entry) in &udp_now {
            state.udp.entry(*key).or_insert_with(|| Flow {
                inode: entry.inode,
                state: entry.state,
                // A connected UDP socket called connect(2) or sent first;
                // an unconnected one is bound and waits.
                outgoing: entry.state == tcp_state::ESTABLISHED,
                first_seen_ms: now_ms,
                owner: None,
                announced: udp_by_kernel,
                unowned_passes: 0,
                seen_passes: 0,
                by_kernel: udp_by_kernel,
            });
        }
        self.assign_owners(&netns.pids, &mut state);

        // The namespace's container stands in for a missing owner. Looking
        // it up reads every process of the namespace, so it is refreshed
        // only in passes that have such a flow; flows that close later use
        // the value from then.
        let unowned = |flow: &Flow| flow.owner.is_none() && !flow.announced;
        if state.tcp.values().any(unowned) || state.udp.values().any(unowned) {
            state.container = self.attributor.namespace_container(&netns.pids);
        }

        // Announce flows that have an owner or waited long enough.
        let kernel = self.kernel.as_deref();
        let first_pass = self.first_pass;
        let mut announce = |key: &FlowKey, flow: &mut Flow, stats: &NetStats| {
            if flow.announced {
                // A kernel report that came after the poller's: the kernel
                // now reports the close.
                if !flow.by_kernel && kernel.is_some_and(|k| k.has_tcp(netns.inode, key)) {
                    flow.by_kernel = true;
                }
                return;
            }
            if let Some(kernel) = kernel {
                if kernel.has_tcp(netns.inode, key) {
                    flow.announced = true;
                    flow.by_kernel = true;
                    return;
                }
                if !first_pass && flow.seen_passes < 2 {
                    return;
                }
            }
            if flow.owner.is_none() {
                flow.unowned_passes += 1;
                if flow.unowned_passes <= OWNER_WAIT_PASSES {
                    return;
                }
                NetStats::add(&stats.connections_unowned, 1);
            }
            flow.announced = true;
            if let Some(kernel) = kernel {
                if key.proto.is_tcp() && !first_pass {
                    kernel.note_polled(netns.inode, *key);
                }
            }
            NetStats::add(&stats.connections_new, 1);
            let connection = connection_of(key, flow, netns.inode);
            records.push(connection.record(
                record::new_event_type(key.proto),
                &hostname,
                flow.owner.as_ref(),
                state.container.as_ref(),
            ));
        };
        for (key, flow) in state.tcp.iter_mut() {
            announce(key, flow, &self.stats);
        }
        for ((key, _), flow) in state.udp.iter_mut() {
            announce(key, flow, &self.stats);
        }

        self.namespaces.insert(netns.inode, state);
    }

    /// Looks up owners for flows without one. The fd scan covers the
    /// namespace's processes and only runs when some flow needs it.
    fn assign_owners(&mut self, pids: &[u32], state: &mut NamespaceState) {
        let needs_owner = |flow: &Flow| flow.owner.is_none() && flow.inode != 0;
        if !state.tcp.values().any(needs_owner) && !state.udp.values().any(needs_owner) {
            return;
        }
        let owners = procfs::socket_owners(&self.proc_root, pids);
        for flow in state.tcp.values_mut().chain(state.udp.values_mut()) {
            if !needs_owner(flow) {
                continue;
            }
            let mut owner = owners.get(&flow.inode).copied();
            // About to be reported without a process: the socket may be
            // held by a process that left the namespace (unshare -n, setns).
            if owner.is_none() && flow.unowned_passes >= OWNER_WAIT_PASSES {
                owner = self.host_socket_owner(flow.inode);
            }
            if let Some(pid) = owner {
                flow.owner = self.attributor.context(pid);
            }
        }
    }

    /// Finds the process holding socket `inode` among every process on the
    /// host. The scan reads every descriptor, so it runs at most once per
    /// [`HOST_SCAN_INTERVAL`]. A socket opened since the last scan is not
    /// found until the next one.
    fn host_socket_owner(&mut self, inode: u64) -> Option<u32> {
        let stale = self
            .host_owners
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= HOST_SCAN_INTERVAL);
        if stale {
            let pids: Vec<u32> = std::fs::read_dir(&self.proc_root)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            let owners = procfs::socket_owners(&self.proc_root, &pids);
            NetStats::add(&self.stats.host_owner_scans, 1);
            self.host_owners = Some((Instant::now(), owners));
        }
        let (_, owners) = self.host_owners.as_ref()?;
        owners.get(&inode).copied()
    }

    /// Emits the records of a closed TCP flow: its `NEW_*` first when it was
    /// never announced (it lived less than the owner wait), then
    /// `TERMINATE_*`.
    fn finish_flow(
        &self,
        key: &FlowKey,
        flow: Flow,
        netns: u64,
        container: &Option<Value>,
        hostname: &str,
        records: &mut Vec<Record>,
    ) {
        if flow.by_kernel {
            return;
        }
        if let Some(kernel) = &self.kernel {
            if !flow.announced && kernel.has_tcp(netns, key) {
                return;
            }
        }
        let connection = connection_of(key, &flow, netns);
        if !flow.announced {
            NetStats::add(&self.stats.connections_new, 1);
            if flow.owner.is_none() {
                NetStats::add(&self.stats.connections_unowned, 1);
            }
            records.push(connection.record(
                record::new_event_type(key.proto),
                hostname,
                flow.owner.as_ref(),
                container.as_ref(),
            ));
        }
        if let Some(event_type) = record::terminate_event_type(key.proto) {
            NetStats::add(&self.stats.connections_terminated, 1);
            records.push(connection.record(
                event_type,
                hostname,
                flow.owner.as_ref(),
                container.as_ref(),
            ));
        }
    }

    /// Ends every flow of a namespace that is gone.
    fn close_namespace(&mut self, inode: u64, records: &mut Vec<Record>) {
        let Some(mut state) = self.namespaces.remove(&inode) else {
            return;
        };
        let hostname = self.config.hostname.clone();
        for (key, flow) in state.tcp.drain() {
            self.finish_flow(&key, flow, inode, &state.container, &hostname, records);
        }
    }

    /// Builds one `NETWORK_CONNECTIONS` record per process with open flows.
    fn summaries(&self) -> Vec<Record> {
        let mut by_process: HashMap<(u32, u64), (ProcessContext, Vec<Value>)> = HashMap::new();
        for (&netns, state) in &self.namespaces {
            let flows = state
                .tcp
                .iter()
                .chain(state.udp.iter().map(|((key, _), flow)| (key, flow)));
            for (key, flow) in flows {
                let Some(owner) = &flow.owner else {
                    continue;
                };
                let entry = by_process
                    .entry((owner.pid, owner.start_ticks))
                    .or_insert_with(|| (owner.clone(), Vec::new()));
                entry
                    .1
                    .push(connection_of(key, flow, netns).activity(flow.first_seen_ms));
            }
        }

        by_process
            .into_values()
            .map(|(owner, activity)| {
                let mut record = Record::new(types::NETWORK_CONNECTIONS, &self.config.hostname);
                let event_time = record.routing.event_time;
                record::set_process(&mut record, &owner);
                record
                    .set("NETWORK_ACTIVITY", Value::Array(activity))
                    .set("TIMESTAMP", event_time);
                record
            })
            .collect()
    }
}

fn connection_of(key: &FlowKey, flow: &Flow, netns: u64) -> Connection {
    Connection::new(
        key.proto,
        key.local,
        key.remote,
        flow.outgoing,
        flow.state,
        netns,
    )
}

/// Direction of a TCP flow: the handshake state when it is still visible,
/// else whether its local port is one the namespace listened on, else
/// whether only the remote port is ephemeral.
fn tcp_outgoing(entry: &SocketEntry, listened: &HashSet<(Proto, u16)>) -> bool {
    match entry.state {
        tcp_state::SYN_SENT => return true,
        tcp_state::SYN_RECV | tcp_state::NEW_SYN_RECV => return false,
        _ => {}
    }
    if listened.contains(&(entry.proto, entry.local.port())) {
        return false;
    }
    let local_ephemeral = EPHEMERAL_PORTS.contains(&entry.local.port());
    let remote_ephemeral = EPHEMERAL_PORTS.contains(&entry.remote.port());
    // Only the remote port ephemeral: the remote side is the client.
    local_ephemeral || !remote_ephemeral
}

/// Returns true when the counters of `netns` show no TCP or UDP socket
/// (TIME_WAIT ones count only with `with_time_wait`). Each table read
/// walks the kernel's socket hash table, which all namespaces share. The
/// counters in `net/sockstat` are one small file, so checking them first
/// keeps a host with thousands of idle namespaces (which an unprivileged
/// user can create) fast to read. False when the counters cannot be read
/// through one of the namespace's processes.
pub(crate) fn namespace_without_sockets(
    proc_root: &Path,
    netns: &discover::Netns,
    with_time_wait: bool,
) -> bool {
    let Some(&pid) = netns.pids.first() else {
        return false;
    };
    let pid_dir = proc_root.join(pid.to_string());
    let read = |name: &str| std::fs::read_to_string(pid_dir.join("net").join(name));
    let Ok(v4) = read("sockstat") else {
        return false;
    };
    // Missing when IPv6 is disabled.
    let v6 = read("sockstat6").unwrap_or_default();
    let mut counts = vec![
        sockstat_field(&v4, "TCP:", "inuse"),
        sockstat_field(&v4, "UDP:", "inuse"),
        sockstat_field(&v4, "UDPLITE:", "inuse"),
    ];
    if with_time_wait {
        counts.push(sockstat_field(&v4, "TCP:", "tw"));
    }
    if !v6.is_empty() {
        counts.extend([
            sockstat_field(&v6, "TCP6:", "inuse"),
            sockstat_field(&v6, "UDP6:", "inuse"),
            sockstat_field(&v6, "UDPLITE6:", "inuse"),
        ]);
    }
    let empty = counts.iter().all(|count| *count == Some(0));
    // The pid may have left the namespace, or been reused, meanwhile.
    empty && discover::namespace_inode(&pid_dir.join("ns/net")) == Some(netns.inode)
}

/// Returns the value after `field` on the `protocol` line (such as
/// `TCP: inuse 3 orphan 0 tw 0 alloc 5 mem 1`) of a `sockstat` file; `None`
/// when the line or field is missing or not a number.
fn sockstat_field(text: &str, protocol: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(protocol))?;
    let mut words = line.split_whitespace().skip(1);
    while let Some(word) = words.next() {
        if word == field {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// Opens a sock_diag socket inside `netns`, entering it through its `NET_NS`
/// file or one of its processes (checked to still be that namespace).
fn open_diag(proc_root: &Path, netns: &discover::Netns) -> std::io::Result<OwnedFd> {
    let pid_links = netns
        .pids
        .iter()
        .take(4)
        .map(|pid| proc_root.join(format!("{pid}/ns/net")));
    let mut last_error = std::io::Error::other("namespace has no file and no process");
    for path in netns.file.clone().into_iter().chain(pid_links) {
        let opened = sys::open_netns(&path, netns.inode)
            .and_then(|file| sys::run_in_open_netns(&file, sys::sock_diag_socket));
        match opened {
            Ok(socket) => return Ok(socket),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// Reads the tables of a namespace that no visible process is in, from a
/// thread that joined it (`/proc/thread-self/net` follows the thread's
/// namespace).
fn read_tables_via_file(file: &Path) -> std::io::Result<(Vec<SocketEntry>, usize)> {
    sys::run_in_netns(file, || {
        procfs::read_tables(Path::new("/proc/thread-self/net")).map_err(std::io::Error::other)
    })
}

fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) {
    let deadline = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(local: &str, remote: &str, state: u8) -> SocketEntry {
        SocketEntry {
            proto: Proto::Tcp4,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            state,
            uid: 0,
            inode: 1,
        }
    }

    #[test]
    fn direction_follows_handshake_listener_then_ports() {
        let listened: HashSet<(Proto, u16)> = [(Proto::Tcp4, 8080)].into_iter().collect();
        let cases = [
            // (local, remote, state, outgoing)
            ("10.0.0.2:40000", "10.0.0.3:8080", tcp_state::SYN_SENT, true),
            (
                "10.0.0.3:8080",
                "10.0.0.2:40000",
                tcp_state::SYN_RECV,
                false,
            ),
            (
                "10.0.0.3:8080",
                "10.0.0.2:40000",
                tcp_state::ESTABLISHED,
                false,
            ),
            (
                "10.0.0.2:40000",
                "10.0.0.3:8080",
                tcp_state::ESTABLISHED,
                true,
            ),
            // No listener seen: only the remote port is ephemeral.
            (
                "10.0.0.3:5000",
                "10.0.0.2:45000",
                tcp_state::ESTABLISHED,
                false,
            ),
            // Both ephemeral, or neither: reported as outgoing.
            (
                "10.0.0.3:45001",
                "10.0.0.2:45000",
                tcp_state::ESTABLISHED,
                true,
            ),
            ("10.0.0.3:443", "10.0.0.2:22", tcp_state::ESTABLISHED, true),
        ];
        for (local, remote, state, outgoing) in cases {
            assert_eq!(
                tcp_outgoing(&entry(local, remote, state), &listened),
                outgoing,
                "{local} -> {remote} in state {state}"
            );
        }
    }

    /// Returns a poller of this host's `/proc`, without containers, and its
    /// counters.
    fn test_poller(kernel: Option<Arc<KernelFlows>>) -> (Poller, Arc<NetStats>) {
        let config = NetConfig {
            hostname: "test-host".into(),
            ..NetConfig::default()
        };
        let stats = Arc::new(NetStats::default());
        let poller = Poller::new(
            config,
            PathBuf::from("/proc"),
            None,
            Attributor::new(Path::new("/"), Arc::new(super::super::NoContainers)),
            stats.clone(),
            None,
            kernel,
        );
        (poller, stats)
    }

    /// Real loopback connections that the kernel reported open: the poller
    /// reports the close of the one whose close report never came, and
    /// nothing for the one the kernel closed.
    #[test]
    fn lost_kernel_close_reported_after_grace() {
        use std::os::unix::fs::MetadataExt;

        let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let flows = Arc::new(KernelFlows::default());
        let (mut poller, _) = test_poller(Some(flows.clone()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pairs = Vec::new();
        for _ in 0..2 {
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            for stream in [&client, &server] {
                let key = FlowKey {
                    proto: Proto::Tcp4,
                    local: stream.local_addr().unwrap(),
                    remote: stream.peer_addr().unwrap(),
                };
                flows.open_tcp(netns, key);
            }
            pairs.push((client, server));
        }
        let ports: Vec<u16> = pairs
            .iter()
            .map(|(client, _)| client.local_addr().unwrap().port())
            .collect();
        let ours = |records: &[Record], port: u16| -> Vec<String> {
            records
                .iter()
                .filter(|r| {
                    r.event["SOURCE"]["PORT"] == port || r.event["DESTINATION"]["PORT"] == port
                })
                .map(|r| r.routing.event_type.clone())
                .collect()
        };

        let first = poller.poll_once();
        assert!(
            ours(&first, ports[0]).is_empty(),
            "kernel flows reported again"
        );
        let (lost, closed) = (pairs.remove(0), pairs.remove(0));
        let closed_key = FlowKey {
            proto: Proto::Tcp4,
            local: closed.0.local_addr().unwrap(),
            remote: closed.0.peer_addr().unwrap(),
        };
        let closed_server_key = FlowKey {
            proto: Proto::Tcp4,
            local: closed.1.local_addr().unwrap(),
            remote: closed.1.peer_addr().unwrap(),
        };
        drop(lost);
        drop(closed);
        // The kernel reported this pair's close; the other's was lost.
        flows.close_tcp(netns, closed_key);
        flows.close_tcp(netns, closed_server_key);

        let second = poller.poll_once();
        assert!(
            ours(&second, ports[0]).is_empty(),
            "closed before the grace"
        );
        std::thread::sleep(CLOSE_GRACE);
        let third = poller.poll_once();
        assert_eq!(
            ours(&third, ports[0]),
            vec!["TERMINATE_TCP4_CONNECTION", "TERMINATE_TCP4_CONNECTION"]
        );
        assert!(
            ours(&third, ports[1]).is_empty(),
            "{:?}",
            ours(&third, ports[1])
        );
        assert!(!flows.tcp_open(netns, &closed_key));
    }

    /// An IPv4 client of a dual-stack listener: the tables list the listener
    /// under TCP6 and the accepted flow under TCP4, on an ephemeral port, and
    /// the server's side is still incoming.
    #[test]
    fn dual_stack_listener_flow_is_incoming() {
        let (mut poller, _) = test_poller(None);
        // Dual-stack as long as net.ipv6.bindv6only is 0, the default.
        let listener = std::net::TcpListener::bind("[::]:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let client_port = client.local_addr().unwrap().port();

        let records = poller.poll_once();
        let mut sides: Vec<(String, u64, u64, u64)> = records
            .iter()
            .filter(|r| {
                let ports = [&r.event["SOURCE"]["PORT"], &r.event["DESTINATION"]["PORT"]];
                ports.contains(&&serde_json::json!(port))
                    && ports.contains(&&serde_json::json!(client_port))
            })
            .map(|r| {
                (
                    r.routing.event_type.clone(),
                    r.event["IS_OUTGOING"].as_u64().unwrap(),
                    r.event["SOURCE"]["PORT"].as_u64().unwrap(),
                    r.event["DESTINATION"]["PORT"].as_u64().unwrap(),
                )
            })
            .collect();
        sides.sort();
        let (client_port, port) = (u64::from(client_port), u64::from(port));
        let new = "NEW_TCP4_CONNECTION".to_string();
        assert_eq!(
            sides,
            vec![
                (new.clone(), 0, client_port, port),
                (new, 1, client_port, port)
            ],
            "server side first, then client side"
        );
    }

    /// A connection the kernel reported late (after two passes): the poller
    /// reported it, the kernel's open gives no second record, and the
    /// kernel's close is the only `TERMINATE_*`.
    #[test]
    fn late_kernel_report_gives_no_duplicates() {
        use std::os::unix::fs::MetadataExt;

        let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let flows = Arc::new(KernelFlows::default());
        let (mut poller, _) = test_poller(Some(flows.clone()));
        poller.poll_once();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let port = client.local_addr().unwrap().port();
        let keys: Vec<FlowKey> = [&client, &server]
            .iter()
            .map(|stream| FlowKey {
                proto: Proto::Tcp4,
                local: stream.local_addr().unwrap(),
                remote: stream.peer_addr().unwrap(),
            })
            .collect();
        let ours = |records: &[Record]| -> Vec<String> {
            records
                .iter()
                .filter(|r| {
                    r.event["SOURCE"]["PORT"] == port || r.event["DESTINATION"]["PORT"] == port
                })
                .map(|r| r.routing.event_type.clone())
                .collect()
        };

        // No kernel report in two passes: the poller reports both sides.
        let mut announced = ours(&poller.poll_once());
        announced.extend(ours(&poller.poll_once()));
        assert_eq!(announced, vec!["NEW_TCP4_CONNECTION"; 2]);

        // The kernel's late opens give no record, and its closes end both.
        for key in &keys {
            assert!(!flows.open_tcp(netns, *key), "late open of {key:?}");
        }
        assert!(ours(&poller.poll_once()).is_empty());
        drop((client, server));
        for key in &keys {
            flows.close_tcp(netns, *key);
        }
        let mut after_close = ours(&poller.poll_once());
        std::thread::sleep(CLOSE_GRACE);
        after_close.extend(ours(&poller.poll_once()));
        assert!(after_close.is_empty(), "{after_close:?}");
    }

    /// A process that opened its connection in a namespace and went back to
    /// the host's (setns) still owns it. The namespace's own process (a
    /// `sleep`) has no socket, so only a scan of every process finds it.
    #[test]
    fn owner_outside_namespace_found() {
        let script = r#"
import ctypes, json, os, socket, subprocess, time
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
host = os.open('/proc/self/ns/net', os.O_RDONLY)
assert libc.unshare(CLONE_NEWNET) == 0, ctypes.get_errno()
subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)
keeper = subprocess.Popen(['sleep', '30'])
listener = socket.socket(); listener.bind(('127.0.0.1', 0)); listener.listen()
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
assert libc.setns(host, CLONE_NEWNET) == 0, ctypes.get_errno()
print(json.dumps({'keeper': keeper.pid, 'port': listener.getsockname()[1]}), flush=True)
time.sleep(30)
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let out: serde_json::Value = serde_json::from_str(&line).expect("child's ports");
        let port = out["port"].as_u64().unwrap();
        let keeper = out["keeper"].as_u64().unwrap() as i32;
        let (mut poller, stats) = test_poller(None);

        let mut records = Vec::new();
        for _ in 0..5 {
            records.extend(poller.poll_once());
        }
        // SAFETY: kill has no memory preconditions; the pids are our
        // children.
        unsafe {
            libc::kill(keeper, libc::SIGKILL);
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();

        let owners: Vec<Option<u64>> = records
            .iter()
            .filter(|r| r.routing.event_type == "NEW_TCP4_CONNECTION")
            .filter(|r| r.event["DESTINATION"]["PORT"] == port)
            .map(|r| r.event["PROCESS_ID"].as_u64())
            .collect();
        let pid = u64::from(child.id());
        assert_eq!(owners, vec![Some(pid), Some(pid)], "{records:#?}");
        assert!(
            stats
                .host_owner_scans
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
    }

    #[test]
    fn sockstat_field_reads_counts() {
        let v4 = "sockets: used 5\nTCP: inuse 3 orphan 0 tw 7 alloc 5 mem 1\nUDP: inuse 2 mem 0\n";
        assert_eq!(sockstat_field(v4, "TCP:", "inuse"), Some(3));
        assert_eq!(sockstat_field(v4, "TCP:", "tw"), Some(7));
        assert_eq!(sockstat_field(v4, "UDP:", "inuse"), Some(2));
        assert_eq!(sockstat_field(v4, "TCP6:", "inuse"), None, "missing line");
        assert_eq!(sockstat_field(v4, "UDP:", "tw"), None, "missing field");
        assert_eq!(sockstat_field("TCP: inuse x\n", "TCP:", "inuse"), None);
    }

    /// A namespace with no socket skips the table reads; one with a
    /// socket does not.
    #[test]
    fn empty_namespace_skips_tables() {
        use std::os::unix::fs::MetadataExt;

        let mut keeper = std::process::Command::new("unshare")
            .args(["-n", "sleep", "30"])
            .spawn()
            .expect("unshare runs");
        let keeper_pid = keeper.id();
        let path = format!("/proc/{keeper_pid}/ns/net");
        let host_inode = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let deadline = Instant::now() + Duration::from_secs(5);
        let empty_inode = loop {
            let inode = std::fs::metadata(&path).unwrap().ino();
            if inode != host_inode {
                break inode;
            }
            assert!(
                Instant::now() < deadline,
                "unshare did not enter a namespace"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let (poller, _) = test_poller(None);
        let _socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();

        let empty = discover::Netns {
            inode: empty_inode,
            pids: vec![keeper_pid],
            file: None,
        };
        let host = discover::Netns {
            inode: host_inode,
            pids: vec![std::process::id()],
            file: None,
        };
        let (empty_skipped, host_skipped) =
            (poller.has_no_sockets(&empty), poller.has_no_sockets(&host));
        let _ = keeper.kill();
        let _ = keeper.wait();
        assert!(empty_skipped);
        assert!(!host_skipped);
    }
}
