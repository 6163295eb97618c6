//! Reads the per-namespace socket tables and the fd links that own sockets,
//! all under `$HOST_FS/proc`.
//!
//! `/proc/<pid>/net/{tcp,tcp6,udp,udp6}` list the sockets of the network
//! namespace that `<pid>` is in (format: `net/ipv4/tcp_ipv4.c`,
//! `get_tcp4_sock`). Addresses are printed as native-endian `u32` words of the
//! network-order address, ports as host-order hex. A socket's owner is found
//! through `/proc/<pid>/fd/*` links that read `socket:[<inode>]`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Socket table family and transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp4,
    Tcp6,
    Udp4,
    Udp6,
}

impl Proto {
    pub const ALL: [Proto; 4] = [Proto::Tcp4, Proto::Tcp6, Proto::Udp4, Proto::Udp6];

    /// File name under `/proc/<pid>/net`, also the `PROTOCOL` field value
    /// without the trailing digit: `tcp`, `tcp6`, `udp`, `udp6`.
    pub fn table_name(self) -> &'static str {
        match self {
            Proto::Tcp4 => "tcp",
            Proto::Tcp6 => "tcp6",
            Proto::Udp4 => "udp",
            Proto::Udp6 => "udp6",
        }
    }

    /// `PROTOCOL` value of `NETWORK_ACTIVITY` entries.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Proto::Tcp4 => "tcp4",
            Proto::Tcp6 => "tcp6",
            Proto::Udp4 => "udp4",
            Proto::Udp6 => "udp6",
        }
    }

    pub fn is_tcp(self) -> bool {
        matches!(self, Proto::Tcp4 | Proto::Tcp6)
    }
}

/// TCP states as `include/net/tcp_states.h` numbers them.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;

    /// Kernel name of a state number.
    pub fn name(state: u8) -> &'static str {
        match state {
            ESTABLISHED => "ESTABLISHED",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            FIN_WAIT1 => "FIN_WAIT1",
            FIN_WAIT2 => "FIN_WAIT2",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            LISTEN => "LISTEN",
            CLOSING => "CLOSING",
            NEW_SYN_RECV => "NEW_SYN_RECV",
            _ => "UNKNOWN",
        }
    }

    /// True while the connection still exists for its owner: from the
    /// handshake until the owner closed it (TIME_WAIT and CLOSE are the end).
    pub fn is_open(state: u8) -> bool {
        matches!(
            state,
            ESTABLISHED
                | SYN_SENT
                | SYN_RECV
                | FIN_WAIT1
                | FIN_WAIT2
                | CLOSE_WAIT
                | LAST_ACK
                | CLOSING
                | NEW_SYN_RECV
        )
    }
}

/// One row of a socket table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketEntry {
    pub proto: Proto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// TCP state number; for UDP, 1 (ESTABLISHED) when connected, 7 otherwise.
    pub state: u8,
    pub uid: u32,
    /// Socket inode; 0 for sockets no file refers to (TIME_WAIT, accept queue).
    pub inode: u64,
}

/// A row that did not match the table format.
#[derive(Debug, thiserror::Error)]
#[error("invalid socket table line in {table}: {line:?}")]
pub struct InvalidLine {
    pub table: &'static str,
    pub line: String,
}

/// Parses the text of one socket table. Lines that do not parse are returned
/// in the error list instead of stopping the parse.
pub fn parse_table(proto: Proto, text: &str) -> (Vec<SocketEntry>, Vec<InvalidLine>) {
    let mut entries = Vec::new();
    let mut invalid = Vec::new();
    for line in text.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(proto, line) {
            Some(entry) => entries.push(entry),
            None => invalid.push(InvalidLine {
                table: proto.table_name(),
                line: line.chars().take(200).collect(),
            }),
        }
    }
    (entries, invalid)
}

fn parse_line(proto: Proto, line: &str) -> Option<SocketEntry> {
    let mut fields = line.split_whitespace();
    fields.next()?; // "sl:"
    let local = parse_endpoint(fields.next()?)?;
    let remote = parse_endpoint(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    fields.next()?; // tx_queue:rx_queue
    fields.next()?; // tr:tm->when
    fields.next()?; // retrnsmt
    let uid = fields.next()?.parse().ok()?;
    fields.next()?; // timeout
    let inode = fields.next()?.parse().ok()?;
    Some(unmap_ipv4(SocketEntry {
        proto,
        local,
        remote,
        state,
        uid,
        inode,
    }))
}

/// Reports an IPv6 socket that carries IPv4 traffic (a dual-stack socket
/// with `::ffff:a.b.c.d` endpoints, as a server bound to `::` accepts them)
/// as the IPv4 flow it is on the wire. Sockets bound to `::` stay IPv6.
pub(crate) fn unmap_ipv4(entry: SocketEntry) -> SocketEntry {
    match unmap_endpoints(entry.proto, entry.local, entry.remote) {
        Some((proto, local, remote)) => SocketEntry {
            proto,
            local,
            remote,
            ..entry
        },
        None => entry,
    }
}

/// Returns the IPv4 form of an IPv6 flow whose endpoints are IPv4-mapped, or
/// `None` when the flow is not one. Every tier reports such flows this way.
pub(crate) fn unmap_endpoints(
    proto: Proto,
    local: SocketAddr,
    remote: SocketAddr,
) -> Option<(Proto, SocketAddr, SocketAddr)> {
    let proto = match proto {
        Proto::Tcp6 => Proto::Tcp4,
        Proto::Udp6 => Proto::Udp4,
        _ => return None,
    };
    let as_ipv4 = |addr: SocketAddr| match addr.ip() {
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
        IpAddr::V4(ip) => Some(ip),
    };
    let local_ip = as_ipv4(local)?;
    let remote_ip = match as_ipv4(remote) {
        Some(remote) => remote,
        None if remote.ip().is_unspecified() => Ipv4Addr::UNSPECIFIED,
        None => return None,
    };
    Some((
        proto,
        SocketAddr::new(IpAddr::V4(local_ip), local.port()),
        SocketAddr::new(IpAddr::V4(remote_ip), remote.port()),
    ))
}

fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(parse_word(addr)?)),
        32 => {
            let mut octets = [0u8; 16];
            for (index, chunk) in octets.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&parse_word(&addr[index * 8..index * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses one 8-hex-digit word. The kernel printed a network-order 4-byte group as a
/// native-endian `u32`, so the native bytes of the value are the wire bytes.
fn parse_word(hex: &str) -> Option<[u8; 4]> {
    Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
}

/// Failure to read a namespace's socket tables.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("failed to read socket table {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads all four tables from `net_dir` (`/proc/<pid>/net` or
/// `/proc/thread-self/net`). A missing `tcp6`/`udp6` file means IPv6 is
/// disabled and reads as empty; any other failure (the process exited, the
/// namespace is gone) is an error.
pub fn read_tables(net_dir: &Path) -> Result<(Vec<SocketEntry>, usize), TableError> {
    let mut all = Vec::new();
    let mut invalid_lines = 0;
    for proto in Proto::ALL {
        let path = net_dir.join(proto.table_name());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error)
                if error.kind() == io::ErrorKind::NotFound
                    && matches!(proto, Proto::Tcp6 | Proto::Udp6)
                    && net_dir.join("tcp").exists() =>
            {
                continue
            }
            Err(source) => return Err(TableError::Read { path, source }),
        };
        let (entries, invalid) = parse_table(proto, &text);
        invalid_lines += invalid.len();
        for line in invalid {
            tracing::debug!(table = line.table, line = %line.line, "invalid socket table line");
        }
        all.extend(entries);
    }
    Ok((all, invalid_lines))
}

/// Socket inode of an fd link target such as `socket:[12345]`.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let inner = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// Maps socket inodes to the pids holding them, reading `fd/*` of each pid in
/// `pids`. When several processes share a socket (after `fork`), the first pid
/// in `pids` order wins. Pids that exited meanwhile are skipped.
pub fn socket_owners(proc_root: &Path, pids: &[u32]) -> HashMap<u64, u32> {
    let mut owners = HashMap::new();
    for &pid in pids {
        let fd_dir = proc_root.join(pid.to_string()).join("fd");
        let Ok(entries) = std::fs::read_dir(&fd_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            use std::os::unix::ffi::OsStrExt;
            if let Some(inode) = socket_inode(target.as_os_str().as_bytes()) {
                owners.entry(inode).or_insert(pid);
            }
        }
    }
    owners
}

/// Identity of a process for atoms and display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
    pub start_ticks: u64,
    pub comm: String,
}

/// Reads the start time and command name of `pid`; `None` once it exited.
pub fn process_identity(proc_root: &Path, pid: u32) -> Option<ProcessIdentity> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(pid, &stat)
}

fn parse_stat(pid: u32, stat: &str) -> Option<ProcessIdentity> {
    // The command name is inside the first "(" and the last ")": it may
    // itself contain spaces and parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // After ")" come fields 3.. ; the start time is field 22.
    let start_ticks = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some(ProcessIdentity {
        pid,
        start_ticks,
        comm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines captured from `/proc/net/tcp` and `/proc/net/tcp6` on x86_64.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 23873 1 0000000000000000 100 0 0 10 0
   1: 0200A8C0:9C40 0300A8C0:1F90 01 00000000:00000000 02:0000076B 00000000  1000        0 40211 2 0000000000000000 20 4 30 10 -1
   2: 0200A8C0:9C41 0300A8C0:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000200A8C0:1F90 0000000000000000FFFF00000300A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 5556 1 0000000000000000 20 4 0 10 -1
";

    #[test]
    fn tcp4_table_parses() {
        let (entries, invalid) = parse_table(Proto::Tcp4, TCP);
        assert!(invalid.is_empty());
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].local, "127.0.0.1:3306".parse().unwrap());
        assert_eq!(entries[0].state, tcp_state::LISTEN);
        assert_eq!(entries[0].inode, 23873);
        assert_eq!(entries[1].local, "192.168.0.2:40000".parse().unwrap());
        assert_eq!(entries[1].remote, "192.168.0.3:8080".parse().unwrap());
        assert_eq!(entries[1].uid, 1000);
        assert_eq!(entries[2].state, tcp_state::TIME_WAIT);
        assert_eq!(entries[2].inode, 0);
    }

    #[test]
    fn tcp6_table_parses() {
        let (entries, invalid) = parse_table(Proto::Tcp6, TCP6);
        assert!(invalid.is_empty());
        assert_eq!(entries[0].local, "[::1]:8080".parse().unwrap());
        assert_eq!(entries[0].proto, Proto::Tcp6);
        // A dual-stack socket's IPv4 flow is reported as IPv4.
        assert_eq!(entries[1].proto, Proto::Tcp4);
        assert_eq!(entries[1].remote, "192.168.0.3:54321".parse().unwrap());
    }

    #[test]
    fn bad_lines_are_reported_not_fatal() {
        let text = format!("{TCP}   9: garbage\n   10: 0100007F:ZZZZ 00000000:0000 0A\n");
        let (entries, invalid) = parse_table(Proto::Tcp4, &text);
        assert_eq!(entries.len(), 3);
        assert_eq!(invalid.len(), 2);
    }

    #[test]
    fn socket_link_parses() {
        assert_eq!(socket_inode(b"socket:[40211]"), Some(40211));
        assert_eq!(socket_inode(b"pipe:[40211]"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
    }

    #[test]
    fn stat_with_odd_comm_parses() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        let identity = parse_stat(42, stat).unwrap();
        assert_eq!(identity.comm, "a) b (c");
        assert_eq!(identity.start_ticks, 98765);
    }

    #[test]
    fn own_tables_read_from_real_proc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (entries, _) = read_tables(Path::new("/proc/self/net")).unwrap();
        let entry = entries
            .iter()
            .find(|e| e.proto == Proto::Tcp4 && e.local.port() == port)
            .expect("own listener in /proc/self/net/tcp");
        assert_eq!(entry.state, tcp_state::LISTEN);

        let owners = socket_owners(Path::new("/proc"), &[std::process::id()]);
        assert_eq!(owners.get(&entry.inode), Some(&std::process::id()));
    }
}
