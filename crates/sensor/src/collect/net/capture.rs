//! DNS capture: one packet socket per network namespace, one reader thread.
//!
//! Each socket is created by a short-lived thread that joined the namespace
//! with `setns`. A socket keeps the namespace it was created in for its whole
//! life, so the reader polls all of them from the host namespace. The socket
//! also keeps that namespace alive, which is why sockets are closed as soon
//! as discovery no longer sees their namespace.
//!
//! A classic BPF filter keeps only IPv4/IPv6 UDP datagrams from source port
//! 53 addressed to the namespace itself (`PACKET_HOST`). Each response is so
//! seen once, in the namespace of the client it was sent to: not as it
//! leaves the resolver's namespace (`PACKET_OUTGOING`), not on loopback a
//! second time, and not as it crosses a bridge port in the host namespace
//! (`PACKET_OTHERHOST`). Not covered: DNS over TCP, IPv6 extension headers,
//! fragmented responses (counted as undecodable) and encrypted DNS.
//!
//! NOTE: a response to a container behind NAT (a resolver outside the host)
//! reaches the host namespace addressed to the host, and is reported there
//! too, without a process, before it is forwarded to the container.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use picket_event::{types, Record};

use super::discover::Discovery;
use super::kernel::{self, KernelFlows};
use super::procfs;
use super::record::{self, Attributor};
use super::sys::{self, FilterInstruction};
use super::udp_ports::{PortSocket, UdpTables};
use super::{NetStats, Sink};
use crate::dns::{self, RecordData};

/// Receive buffer of each capture socket. DNS is bursty but small, and 1 MiB
/// buffers a few thousand responses while the reader is busy.
const CAPTURE_RCVBUF: usize = 1 << 20;
/// Packets read from one socket before moving to the next.
const PACKETS_PER_TURN: usize = 256;
/// Owner lookups (socket table read plus fd scan) per reader turn; responses
/// past it keep the namespace's container but no process.
const OWNER_LOOKUPS_PER_TURN: usize = 64;

const DNS_PORT: u16 = 53;

/// How long a captured response waits, in the eBPF tier, for the kernel to
/// report it as read by a process, or at least to name the process behind
/// its port. Kernel reports come through the ring buffer, whose reader wakes
/// at least every 20 ms.
const KERNEL_REPORT_WAIT: std::time::Duration = std::time::Duration::from_millis(250);
/// Interval between two reads of the capture sockets' drop counters.
const DROP_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Responses held back at once; past it they are attributed right away.
const MAX_DEFERRED: usize = 4096;

/// Classic BPF program run on the network header (`SOCK_DGRAM` sockets see
/// no link header): accept UDP from port 53 addressed to this namespace
/// (`PACKET_HOST`), over IPv4
/// (first fragment or unfragmented) or IPv6 (UDP as the first next header).
pub fn dns_response_filter() -> Vec<FilterInstruction> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
    const LDX_B_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
    const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // SKF_AD_OFF + SKF_AD_PKTTYPE (linux/filter.h).
    const PKTTYPE: u32 = (-0x1000i32) as u32 + 4;
    const PACKET_HOST: u32 = libc::PACKET_HOST as u32;

    let op = |code: u16, jt: u8, jf: u8, k: u32| FilterInstruction { code, jt, jf, k };
    // Jump offsets count instructions after the next one; targets are noted
    // by index: 6 = IPv4, 13 = IPv6, 17 = accept, 18 = drop.
    vec![
        op(LD_W_ABS, 0, 0, PKTTYPE),                // 0
        op(JEQ_K, 0, 16, PACKET_HOST),              // 1: not to this host -> 18
        op(LD_B_ABS, 0, 0, 0),                      // 2: version nibble
        op(AND_K, 0, 0, 0xf0),                      // 3
        op(JEQ_K, 1, 0, 0x40),                      // 4: -> 6
        op(JEQ_K, 7, 12, 0x60),                     // 5: -> 13, else 18
        op(LD_B_ABS, 0, 0, 9),                      // 6: IPv4 protocol
        op(JEQ_K, 0, 10, libc::IPPROTO_UDP as u32), // 7: else 18
        op(LD_H_ABS, 0, 0, 6),                      // 8: flags and fragment offset
        op(JSET_K, 8, 0, 0x1fff),                   // 9: later fragment -> 18
        op(LDX_B_MSH, 0, 0, 0),                     // 10: X = IPv4 header length
        op(LD_H_IND, 0, 0, 0),                      // 11: UDP source port
        op(JEQ_K, 4, 5, DNS_PORT as u32),           // 12: -> 17, else 18
        op(LD_B_ABS, 0, 0, 6),                      // 13: IPv6 next header
        op(JEQ_K, 0, 3, libc::IPPROTO_UDP as u32),  // 14: else 18
        op(LD_H_ABS, 0, 0, 40),                     // 15: UDP source port
        op(JEQ_K, 0, 1, DNS_PORT as u32),           // 16: -> 17, else 18
        op(RET_K, 0, 0, 0xffff),                    // 17: accept
        op(RET_K, 0, 0, 0),                         // 18: drop
    ]
}

/// A decoded UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub payload: &'a [u8],
}

/// Reason a captured packet was not a usable UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet truncated: {len} bytes")]
    Truncated { len: usize },
    #[error("unsupported network protocol {protocol:#06x}")]
    UnsupportedProtocol { protocol: u16 },
    #[error("ip header length {header_len} invalid for a {len} byte packet")]
    BadHeaderLength { header_len: usize, len: usize },
    #[error("not udp: next protocol {protocol}")]
    NotUdp { protocol: u8 },
    #[error("ipv4 fragment")]
    Fragment,
    #[error("udp length {udp_len} invalid for {available} bytes")]
    BadUdpLength { udp_len: usize, available: usize },
}

/// Decodes the IPv4 or IPv6 packet (network header first) carrying a UDP
/// datagram. `protocol` is the ethertype the packet socket reported.
pub fn decode_udp(protocol: u16, packet: &[u8]) -> Result<UdpDatagram<'_>, PacketError> {
    let truncated = PacketError::Truncated { len: packet.len() };
    let (source_ip, destination_ip, transport) = match protocol as i32 {
        libc::ETH_P_IP => {
            let header = packet.get(..20).ok_or(truncated.clone())?;
            if header[0] >> 4 != 4 {
                return Err(PacketError::UnsupportedProtocol { protocol });
            }
            let header_len = ((header[0] & 0x0f) as usize) * 4;
            let total_len = u16::from_be_bytes([header[2], header[3]]) as usize;
            if header_len < 20 || total_len < header_len || total_len > packet.len() {
                return Err(PacketError::BadHeaderLength {
                    header_len,
                    len: packet.len(),
                });
            }
            if header[9] != libc::IPPROTO_UDP as u8 {
                return Err(PacketError::NotUdp {
                    protocol: header[9],
                });
            }
            // More-fragments bit or a non-zero offset.
            if u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0 {
                return Err(PacketError::Fragment);
            }
            let source = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
            let destination = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
            (
                IpAddr::V4(source),
                IpAddr::V4(destination),
                &packet[header_len..total_len],
            )
        }
        libc::ETH_P_IPV6 => {
            let header = packet.get(..40).ok_or(truncated.clone())?;
            if header[0] >> 4 != 6 {
                return Err(PacketError::UnsupportedProtocol { protocol });
            }
            let payload_len = u16::from_be_bytes([header[4], header[5]]) as usize;
            if 40 + payload_len > packet.len() {
                return Err(PacketError::BadHeaderLength {
                    header_len: 40,
                    len: packet.len(),
                });
            }
            if header[6] != libc::IPPROTO_UDP as u8 {
                return Err(PacketError::NotUdp {
                    protocol: header[6],
                });
            }
            let source: [u8; 16] = header[8..24].try_into().expect("16 bytes");
            let destination: [u8; 16] = header[24..40].try_into().expect("16 bytes");
            (
                IpAddr::V6(Ipv6Addr::from(source)),
                IpAddr::V6(Ipv6Addr::from(destination)),
                &packet[40..40 + payload_len],
            )
        }
        _ => return Err(PacketError::UnsupportedProtocol { protocol }),
    };

    let udp = transport
        .get(..8)
        .ok_or(PacketError::Truncated { len: packet.len() })?;
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if udp_len < 8 || udp_len > transport.len() {
        return Err(PacketError::BadUdpLength {
            udp_len,
            available: transport.len(),
        });
    }
    Ok(UdpDatagram {
        source: SocketAddr::new(source_ip, u16::from_be_bytes([udp[0], udp[1]])),
        destination: SocketAddr::new(destination_ip, u16::from_be_bytes([udp[2], udp[3]])),
        payload: &transport[8..udp_len],
    })
}

enum Command {
    Add { netns: u64, socket: OwnedFd },
    Remove { netns: u64 },
}

/// The poller's side of the capture: opens sockets for new namespaces and
/// closes those of namespaces that are gone.
pub struct CaptureHandle {
    commands: mpsc::Sender<Command>,
    /// Pids of each captured namespace, for owner lookups by the reader.
    pids: Arc<Mutex<HashMap<u64, Vec<u32>>>>,
    open: HashSet<u64>,
    /// Namespaces where opening failed; retried when they reappear after
    /// being gone, not on every pass.
    failed: HashSet<u64>,
    proc_root: PathBuf,
    warned: bool,
}

impl CaptureHandle {
    /// Brings the set of capture sockets in line with `discovery`.
    pub fn sync(&mut self, discovery: &Discovery, stats: &NetStats) {
        {
            let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
            pids.clear();
            for (inode, netns) in &discovery.namespaces {
                pids.insert(*inode, netns.pids.clone());
            }
        }

        for (inode, netns) in &discovery.namespaces {
            if self.open.contains(inode) || self.failed.contains(inode) {
                continue;
            }
            let file = netns.file.clone().or_else(|| {
                netns
                    .pids
                    .first()
                    .map(|pid| self.proc_root.join(format!("{pid}/ns/net")))
            });
            let Some(file) = file else { continue };
            match open_capture(&file, *inode) {
                Ok(socket) => {
                    self.open.insert(*inode);
                    NetStats::add(&stats.capture_sockets, 1);
                    let _ = self.commands.send(Command::Add {
                        netns: *inode,
                        socket,
                    });
                }
                Err(error) => {
                    self.failed.insert(*inode);
                    NetStats::add(&stats.capture_open_failed, 1);
                    if !self.warned {
                        self.warned = true;
                        tracing::warn!(netns = inode, path = %file.display(), %error, "dns capture unavailable in namespace; connections are still polled");
                    } else {
                        tracing::debug!(netns = inode, path = %file.display(), %error, "dns capture open failed");
                    }
                }
            }
        }

        let gone: Vec<u64> = self
            .open
            .iter()
            .filter(|inode| !discovery.namespaces.contains_key(inode))
            .copied()
            .collect();
        for inode in gone {
            self.open.remove(&inode);
            let _ = self.commands.send(Command::Remove { netns: inode });
        }
        self.failed
            .retain(|inode| discovery.namespaces.contains_key(inode));
    }
}

/// Opens a DNS capture socket in the namespace `inode`, entered through
/// `netns_file`.
pub fn open_capture(netns_file: &Path, inode: u64) -> io::Result<OwnedFd> {
    let filter = dns_response_filter();
    let file = sys::open_netns(netns_file, inode)?;
    sys::run_in_open_netns(&file, || sys::packet_socket(&filter, CAPTURE_RCVBUF))
}

/// Starts the reader thread.
pub(crate) fn start(
    hostname: String,
    attributor: Attributor,
    sink: Sink,
    stats: Arc<NetStats>,
    stop: Arc<AtomicBool>,
    proc_root: PathBuf,
    kernel: Option<Arc<KernelFlows>>,
) -> io::Result<(CaptureHandle, std::thread::JoinHandle<()>)> {
    let (commands, receiver) = mpsc::channel();
    let pids = Arc::new(Mutex::new(HashMap::new()));
    let mut reader = Reader {
        hostname,
        attributor,
        stats,
        pids: pids.clone(),
        proc_root: proc_root.clone(),
        sockets: Vec::new(),
        kernel,
        deferred: std::collections::VecDeque::new(),
        udp_tables: UdpTables::default(),
    };
    let thread = std::thread::Builder::new()
        .name("picket-net-dns".into())
        .spawn(move || reader.run(&receiver, &sink, &stop))?;
    Ok((
        CaptureHandle {
            commands,
            pids,
            open: HashSet::new(),
            failed: HashSet::new(),
            proc_root,
            warned: false,
        },
        thread,
    ))
}

struct Reader {
    hostname: String,
    attributor: Attributor,
    stats: Arc<NetStats>,
    pids: Arc<Mutex<HashMap<u64, Vec<u32>>>>,
    proc_root: PathBuf,
    sockets: Vec<(u64, OwnedFd)>,
    /// The eBPF tier's tables, when it runs.
    kernel: Option<Arc<KernelFlows>>,
    /// Responses waiting for the kernel to name their process, oldest first.
    deferred: std::collections::VecDeque<Response>,
    /// Namespaces' UDP tables read in this turn.
    udp_tables: UdpTables,
}

/// A parsed DNS response and where it was seen.
struct Response {
    netns: u64,
    destination: SocketAddr,
    message: dns::Message,
    /// [`kernel::dns_digest`] of the datagram's payload.
    digest: u64,
    captured: std::time::Instant,
    /// Until when it may wait for its process.
    deadline: std::time::Instant,
}

impl Reader {
    fn run(&mut self, commands: &mpsc::Receiver<Command>, sink: &Sink, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65536];
        let mut last_drop_check = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if last_drop_check.elapsed() >= DROP_CHECK_INTERVAL {
                last_drop_check = std::time::Instant::now();
                if let Some(record) = self.dropped_packets() {
                    if !sink.send(record) {
                        return;
                    }
                }
            }
            for command in commands.try_iter() {
                match command {
                    Command::Add { netns, socket } => self.sockets.push((netns, socket)),
                    Command::Remove { netns } => self.sockets.retain(|(n, _)| *n != netns),
                }
            }
            self.udp_tables.clear();
            if !self.flush_deferred(sink, false) {
                return;
            }
            if self.sockets.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }

            let fds: Vec<_> = self.sockets.iter().map(|(_, s)| s.as_raw_fd()).collect();
            let timeout = if self.deferred.is_empty() { 100 } else { 20 };
            let ready = match sys::poll_readable(&fds, timeout) {
                Ok(ready) => ready,
                Err(error) => {
                    tracing::error!(%error, "dns capture poll failed; capture stopped");
                    return;
                }
            };
            let mut lookups_left = OWNER_LOOKUPS_PER_TURN;
            for index in ready {
                let netns = self.sockets[index].0;
                for _ in 0..PACKETS_PER_TURN {
                    let received = sys::recv_packet(self.sockets[index].1.as_fd(), &mut buf);
                    let info = match received {
                        Ok(Some(info)) => info,
                        Ok(None) => break,
                        Err(error) => {
                            tracing::debug!(netns, %error, "dns capture receive failed");
                            break;
                        }
                    };
                    NetStats::add(&self.stats.packets_captured, 1);
                    if info.len > buf.len() {
                        NetStats::add(&self.stats.packets_undecodable, 1);
                        continue;
                    }
                    for record in
                        self.handle_packet(netns, info, &buf[..info.len], &mut lookups_left)
                    {
                        if !sink.send(record) {
                            return;
                        }
                    }
                }
            }
        }
        // Responses still waiting go out with what /proc can tell.
        let _ = self.flush_deferred(sink, true);
    }

    /// Returns a `DATA_DROPPED` record for the packets the capture sockets
    /// dropped since the last check (full receive buffers, as in a flood
    /// of responses), if any.
    fn dropped_packets(&self) -> Option<Record> {
        let dropped: u64 = self
            .sockets
            .iter()
            .filter_map(|(_, socket)| sys::packet_drops(socket.as_fd()).ok())
            .map(u64::from)
            .sum();
        if dropped == 0 {
            return None;
        }
        NetStats::add(&self.stats.packets_dropped, dropped);
        let mut record = Record::new(types::DATA_DROPPED, &self.hostname);
        record
            .set("REASON", "dns_capture_overflow")
            .set("COUNT", dropped);
        Some(record)
    }

    fn handle_packet(
        &mut self,
        netns: u64,
        info: sys::PacketInfo,
        packet: &[u8],
        lookups_left: &mut usize,
    ) -> Vec<Record> {
        if info.pkttype != libc::PACKET_HOST {
            return Vec::new();
        }
        let datagram = match decode_udp(info.protocol, packet) {
            Ok(datagram) if datagram.source.port() == DNS_PORT => datagram,
            Ok(_) => return Vec::new(),
            Err(error) => {
                NetStats::add(&self.stats.packets_undecodable, 1);
                tracing::debug!(netns, %error, "captured packet not decodable");
                return Vec::new();
            }
        };
        let message = match dns::parse_response(datagram.payload) {
            Ok(message) => message,
            Err(error) => {
                NetStats::add(&self.stats.dns_malformed, 1);
                tracing::debug!(netns, kind = error.kind(), %error, "malformed dns response");
                return Vec::new();
            }
        };
        NetStats::add(&self.stats.dns_responses, 1);
        NetStats::add(
            &self.stats.dns_answers_dropped,
            message.answers_dropped as u64,
        );
        if message.answers.is_empty() && message.rcode() == 0 {
            return Vec::new();
        }
        let captured = std::time::Instant::now();
        let response = Response {
            netns,
            destination: datagram.destination,
            message,
            digest: kernel::dns_digest(datagram.payload),
            captured,
            deadline: captured + KERNEL_REPORT_WAIT,
        };
        if self.kernel.is_some() {
            // The kernel may report this response itself when the process
            // reads it, so it waits; see flush_deferred.
            if self.deferred.len() < MAX_DEFERRED {
                NetStats::add(&self.stats.dns_deferred, 1);
                self.deferred.push_back(response);
                return Vec::new();
            }
        }
        self.attribute(&response, lookups_left)
    }

    /// Handles the deferred responses whose wait ended (all of them when
    /// `all`). A response the kernel reported as read by a process is
    /// dropped. So is one sent to a port that no process sent from and no
    /// socket is bound to. The others are sent with the process that last
    /// used their port, if the kernel named one. Returns false once the
    /// receiver is closed.
    fn flush_deferred(&mut self, sink: &Sink, all: bool) -> bool {
        let Some(kernel) = self.kernel.clone() else {
            return true;
        };
        let now = std::time::Instant::now();
        let mut lookups_left = OWNER_LOOKUPS_PER_TURN;
        let mut waiting = std::collections::VecDeque::new();
        while let Some(response) = self.deferred.pop_front() {
            if !all && response.deadline > now {
                waiting.push_back(response);
                continue;
            }
            let port = response.destination.port();
            let id = response.message.id;
            if kernel.dns_reported(response.netns, port, id, response.digest) {
                NetStats::add(&self.stats.dns_read_by_kernel, 1);
                continue;
            }
            let records = match kernel.udp_owner(response.netns, port) {
                Some(owner) => self.records(&response, Some(owner)),
                None => {
                    let pids = self.namespace_pids(response.netns);
                    let socket = self.socket_at(&response, &pids);
                    if socket == PortSocket::Unbound {
                        // The hooks report every UDP socket's first send, so
                        // no query left this port: the datagram was sent
                        // unasked, as a forged response is.
                        NetStats::add(&self.stats.dns_unsolicited, 1);
                        tracing::debug!(
                            netns = response.netns,
                            destination = %response.destination,
                            id = response.message.id,
                            "dns response to a port that sent no query dropped"
                        );
                        continue;
                    }
                    self.attribute_to(&response, &pids, socket, &mut lookups_left)
                }
            };
            for record in records {
                if !sink.send(record) {
                    return false;
                }
            }
        }
        self.deferred = waiting;
        true
    }

    fn namespace_pids(&self, netns: u64) -> Vec<u32> {
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&netns)
            .cloned()
            .unwrap_or_default()
    }

    fn socket_at(&mut self, response: &Response, pids: &[u32]) -> PortSocket {
        self.udp_tables.socket_at(
            &self.proc_root,
            response.netns,
            pids,
            &response.destination,
            response.captured,
        )
    }

    /// Builds the records of a response whose process is looked up in the
    /// namespace's socket tables, else given as the namespace's container.
    fn attribute(&mut self, response: &Response, lookups_left: &mut usize) -> Vec<Record> {
        let pids = self.namespace_pids(response.netns);
        let socket = self.socket_at(response, &pids);
        self.attribute_to(response, &pids, socket, lookups_left)
    }

    /// Builds the records of a response sent to `socket` in a namespace of
    /// processes `pids`: with the socket's process when it is found within
    /// the turn's budget of descriptor scans, else with the container.
    fn attribute_to(
        &mut self,
        response: &Response,
        pids: &[u32],
        socket: PortSocket,
        lookups_left: &mut usize,
    ) -> Vec<Record> {
        let owner = match socket {
            PortSocket::Bound(inode) if *lookups_left > 0 => {
                *lookups_left -= 1;
                let owners = procfs::socket_owners(&self.proc_root, pids);
                owners
                    .get(&inode)
                    .and_then(|&pid| self.attributor.context(pid))
            }
            _ => None,
        };
        match owner {
            Some(owner) => self.records(response, Some(owner)),
            None => {
                let container = self.attributor.namespace_container(pids);
                let mut records = self.records(response, None);
                if let Some(container) = container {
                    for record in &mut records {
                        record.set(types::container::KEY, container.clone());
                    }
                }
                records
            }
        }
    }

    /// Builds one `DNS_REQUEST` per resource record of the answer section.
    fn records(&self, response: &Response, owner: Option<record::ProcessContext>) -> Vec<Record> {
        NetStats::add(
            &self.stats.dns_answers,
            response.message.answers.len() as u64,
        );
        dns_records(
            &self.hostname,
            response.netns,
            &response.message,
            owner.as_ref(),
        )
    }
}

/// Builds one `DNS_REQUEST` per resource record of the answer section of
/// `message`, seen in namespace `netns` and read by `owner` if known. A
/// failed lookup (a non-zero RCODE such as NXDOMAIN, and no answer) gives
/// one record for its question, without an address: failed lookups of
/// generated names are a sign of malware looking for its server.
pub(crate) fn dns_records(
    hostname: &str,
    netns: u64,
    message: &dns::Message,
    owner: Option<&record::ProcessContext>,
) -> Vec<Record> {
    if message.answers.is_empty() && message.rcode() != 0 {
        let Some(question) = message.questions.first() else {
            return Vec::new();
        };
        let mut record = Record::new(types::DNS_REQUEST, hostname);
        let event_time = record.routing.event_time;
        record
            .set("DOMAIN_NAME", question.name.clone())
            .set("QUESTION", question.name.clone())
            .set("DNS_TYPE", question.qtype)
            .set("DNS_FLAGS", message.flags)
            .set("RCODE", message.rcode())
            .set("MESSAGE_ID", message.id)
            .set("NETWORK_NAMESPACE", netns)
            .set("TIMESTAMP", event_time);
        if let Some(process) = owner {
            record::set_process(&mut record, process);
        }
        return vec![record];
    }
    message
        .answers
        .iter()
        .map(|answer| {
            let mut record = Record::new(types::DNS_REQUEST, hostname);
            let event_time = record.routing.event_time;
            record
                .set("DOMAIN_NAME", answer.name.clone())
                .set("DNS_TYPE", answer.rtype)
                .set("DNS_FLAGS", message.flags)
                .set("MESSAGE_ID", message.id)
                .set("NETWORK_NAMESPACE", netns)
                .set("TIMESTAMP", event_time);
            if let Some(question) = message.questions.first() {
                record.set("QUESTION", question.name.clone());
            }
            match &answer.data {
                RecordData::A(ip) => record.set("IP_ADDRESS", ip.to_string()),
                RecordData::Aaaa(ip) => record.set("IP_ADDRESS", ip.to_string()),
                RecordData::Cname(target) => record.set("CNAME", target.clone()),
                RecordData::Other { .. } => &mut record,
            };
            if let Some(process) = owner {
                record::set_process(&mut record, process);
            }
            record
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp(source_port: u16, payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut packet = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ];
        packet.extend_from_slice(&[10, 0, 0, 53, 10, 0, 0, 2]);
        packet.extend_from_slice(&source_port.to_be_bytes());
        packet.extend_from_slice(&40000u16.to_be_bytes());
        packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(payload);
        packet
    }

    #[test]
    fn ipv4_udp_decodes() {
        let packet = ipv4_udp(53, b"hello");
        let datagram = decode_udp(libc::ETH_P_IP as u16, &packet).unwrap();
        assert_eq!(datagram.source, "10.0.0.53:53".parse().unwrap());
        assert_eq!(datagram.destination, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(datagram.payload, b"hello");
    }

    #[test]
    fn ipv4_fragment_is_rejected() {
        let mut packet = ipv4_udp(53, b"hello");
        packet[6] = 0x20; // more fragments
        assert_eq!(
            decode_udp(libc::ETH_P_IP as u16, &packet),
            Err(PacketError::Fragment)
        );
    }

    #[test]
    fn udp_length_past_packet_is_rejected() {
        let mut packet = ipv4_udp(53, b"hello");
        packet[24] = 0x10;
        assert!(matches!(
            decode_udp(libc::ETH_P_IP as u16, &packet),
            Err(PacketError::BadUdpLength { .. })
        ));
    }

    #[test]
    fn ipv6_udp_decodes() {
        let payload = b"abc";
        let mut packet = vec![0x60, 0, 0, 0, 0, 11, 17, 64];
        packet.extend_from_slice(&"fd00::53".parse::<Ipv6Addr>().unwrap().octets());
        packet.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        packet.extend_from_slice(&[0, 53, 0x9c, 0x40, 0, 11, 0, 0]);
        packet.extend_from_slice(payload);
        let datagram = decode_udp(libc::ETH_P_IPV6 as u16, &packet).unwrap();
        assert_eq!(datagram.source, "[fd00::53]:53".parse().unwrap());
        assert_eq!(datagram.payload, payload);
    }

    #[test]
    fn filter_jumps_stay_in_program() {
        let filter = dns_response_filter();
        for (index, instruction) in filter.iter().enumerate() {
            if instruction.code & libc::BPF_JMP as u16 != 0
                && instruction.code & 0x07 == libc::BPF_JMP as u16
            {
                assert!(index + 1 + (instruction.jt as usize) < filter.len());
                assert!(index + 1 + (instruction.jf as usize) < filter.len());
            }
        }
    }

    #[test]
    fn failed_lookup_gives_one_record_for_its_question() {
        let mut packet = crate::dns::build::query(0x77, "nope.picket.test", crate::dns::TYPE_A);
        packet[2] = 0x81; // QR, RD
        packet[3] = 0x83; // RA, RCODE 3 (NXDOMAIN)
        let message = crate::dns::parse_response(&packet).unwrap();
        let records = dns_records("host", 42, &message, None);
        assert_eq!(records.len(), 1);
        let event = &records[0].event;
        assert_eq!(records[0].routing.event_type, types::DNS_REQUEST);
        assert_eq!(event["DOMAIN_NAME"], "nope.picket.test");
        assert_eq!(event["DNS_TYPE"], crate::dns::TYPE_A);
        assert_eq!(event["RCODE"], 3);
        assert_eq!(event["MESSAGE_ID"], 0x77);
        assert!(event.get("IP_ADDRESS").is_none());

        // An empty answer section without an error gives no record.
        packet[3] = 0x80;
        let message = crate::dns::parse_response(&packet).unwrap();
        assert!(dns_records("host", 42, &message, None).is_empty());
    }

    fn reader(kernel: Option<Arc<KernelFlows>>, netns: u64) -> (Reader, Arc<NetStats>) {
        let stats = Arc::new(NetStats::default());
        let pids = HashMap::from([(netns, vec![std::process::id()])]);
        let reader = Reader {
            hostname: "test-host".into(),
            attributor: Attributor::new(Path::new("/"), Arc::new(super::super::NoContainers)),
            stats: stats.clone(),
            pids: Arc::new(Mutex::new(pids)),
            proc_root: PathBuf::from("/proc"),
            sockets: Vec::new(),
            kernel,
            deferred: std::collections::VecDeque::new(),
            udp_tables: UdpTables::default(),
        };
        (reader, stats)
    }

    fn response_to(netns: u64, destination: SocketAddr, id: u16) -> Response {
        let query = dns::build::query(id, "a.picket.test", dns::TYPE_A);
        let answer = dns::build::AnswerData::Address("10.1.2.3".parse().unwrap());
        let payload = dns::build::response(&query, &[answer]).unwrap();
        let captured = std::time::Instant::now();
        Response {
            netns,
            destination,
            message: dns::parse_response(&payload).unwrap(),
            digest: kernel::dns_digest(&payload),
            captured,
            deadline: captured,
        }
    }

    /// In the eBPF tier, a response to a port that no process sent from
    /// and no socket is bound to is dropped and counted. One to a bound
    /// socket is reported with the socket's process.
    #[test]
    fn unsolicited_response_dropped_with_ebpf() {
        use std::os::unix::fs::MetadataExt;

        let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let (mut reader, stats) = reader(Some(Arc::new(KernelFlows::default())), netns);
        let open = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        reader
            .deferred
            .push_back(response_to(netns, open.local_addr().unwrap(), 1));
        reader.deferred.push_back(response_to(netns, closed, 2));
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let sink = Sink {
            tx,
            stats: stats.clone(),
        };

        assert!(reader.flush_deferred(&sink, true));
        let mut records = Vec::new();
        while let Ok(record) = rx.try_recv() {
            records.push(record);
        }
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_eq!(records[0].event["MESSAGE_ID"], 1);
        assert_eq!(records[0].event["PROCESS_ID"], std::process::id());
        assert_eq!(stats.dns_unsolicited.load(Ordering::Relaxed), 1);
    }

    /// Without eBPF no report shows which ports sent queries, and a client
    /// may close its socket before the capture reads the response, so a
    /// response to an unbound port is still reported, with no process.
    #[test]
    fn response_to_unbound_port_kept_without_ebpf() {
        use std::os::unix::fs::MetadataExt;

        let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let (mut reader, stats) = reader(None, netns);
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut lookups_left = OWNER_LOOKUPS_PER_TURN;

        let records = reader.attribute(&response_to(netns, closed, 3), &mut lookups_left);
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_eq!(records[0].event["MESSAGE_ID"], 3);
        assert_eq!(records[0].event.get("PROCESS_ID"), None);
        assert_eq!(stats.dns_unsolicited.load(Ordering::Relaxed), 0);
    }
}
