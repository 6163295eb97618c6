//! UDP sockets of a namespace by local port, from its socket tables, for the
//! DNS capture: which socket a captured response was sent to, if any.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use super::procfs::{self, Proto, SocketEntry};

/// The socket at a datagram's destination, as a namespace's UDP tables
/// list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortSocket {
    /// A socket is bound there; the value is its inode number.
    Bound(u64),
    /// The tables were read and no socket is bound there.
    Unbound,
    /// The tables could not be read: the namespace has no process, or its
    /// processes exited or moved.
    Unknown,
}

/// UDP tables of namespaces, each read once and reused for datagrams
/// captured before that read.
#[derive(Default)]
pub(crate) struct UdpTables {
    read: HashMap<u64, (Instant, Option<Vec<SocketEntry>>)>,
}

impl UdpTables {
    /// Forgets every table read, so memory stays bounded by one turn's
    /// namespaces.
    pub(crate) fn clear(&mut self) {
        self.read.clear();
    }

    /// Finds the socket bound to `destination` in namespace `netns`,
    /// reading the tables through one of `pids` unless they were read after
    /// `captured`, the time the datagram was seen. A socket opened later
    /// could not have been its destination.
    pub(crate) fn socket_at(
        &mut self,
        proc_root: &Path,
        netns: u64,
        pids: &[u32],
        destination: &SocketAddr,
        captured: Instant,
    ) -> PortSocket {
        let fresh = matches!(self.read.get(&netns), Some((at, _)) if *at >= captured);
        if !fresh {
            let entries = pids
                .iter()
                .take(4)
                .find_map(|&pid| read_udp_tables(proc_root, pid, netns).ok());
            self.read.insert(netns, (Instant::now(), entries));
        }
        let Some((_, Some(entries))) = self.read.get(&netns) else {
            return PortSocket::Unknown;
        };
        match entries.iter().find(|entry| bound_to(entry, destination)) {
            Some(entry) => PortSocket::Bound(entry.inode),
            None => PortSocket::Unbound,
        }
    }
}

/// Reads the UDP and UDP6 tables of `pid`'s namespace, checked to be
/// `netns` after the read: a pid reused in another namespace would give
/// that namespace's sockets. A missing `udp6` (IPv6 disabled) is empty.
fn read_udp_tables(proc_root: &Path, pid: u32, netns: u64) -> io::Result<Vec<SocketEntry>> {
    let process = proc_root.join(pid.to_string());
    let text = std::fs::read_to_string(process.join("net/udp"))?;
    let mut entries = procfs::parse_table(Proto::Udp4, &text).0;
    match std::fs::read_to_string(process.join("net/udp6")) {
        Ok(text) => entries.extend(procfs::parse_table(Proto::Udp6, &text).0),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let now_in = std::fs::metadata(process.join("ns/net"))?.ino();
    if now_in != netns {
        return Err(io::Error::other("process left the namespace"));
    }
    Ok(entries)
}

/// Returns whether a datagram to `destination` is delivered to the socket
/// of `entry`: the same port, and its address or a wildcard of a family that
/// receives it (an IPv6 socket receives IPv4 through mapped addresses).
fn bound_to(entry: &SocketEntry, destination: &SocketAddr) -> bool {
    if entry.local.port() != destination.port() {
        return false;
    }
    let local = entry.local.ip();
    if local.is_unspecified() {
        return destination.is_ipv4() || local.is_ipv6();
    }
    local.to_canonical() == destination.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(proto: Proto, local: &str) -> SocketEntry {
        SocketEntry {
            proto,
            local: local.parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: 7,
            uid: 0,
            inode: 1,
        }
    }

    #[test]
    fn bound_to_matches_port_address_and_wildcards() {
        let v4: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let v6: SocketAddr = "[fd00::2]:40000".parse().unwrap();
        let cases = [
            (Proto::Udp4, "10.0.0.2:40000", v4, true),
            (Proto::Udp4, "0.0.0.0:40000", v4, true),
            (Proto::Udp4, "10.0.0.3:40000", v4, false),
            (Proto::Udp4, "10.0.0.2:40001", v4, false),
            // Dual-stack wildcard and a mapped address receive IPv4.
            (Proto::Udp6, "[::]:40000", v4, true),
            (Proto::Udp6, "[::ffff:10.0.0.2]:40000", v4, true),
            (Proto::Udp6, "[::]:40000", v6, true),
            (Proto::Udp6, "[fd00::2]:40000", v6, true),
            // An IPv4 socket does not receive IPv6.
            (Proto::Udp4, "0.0.0.0:40000", v6, false),
        ];
        for (proto, local, destination, expected) in cases {
            assert_eq!(
                bound_to(&entry(proto, local), &destination),
                expected,
                "{local} for {destination}"
            );
        }
    }

    #[test]
    fn socket_at_reads_this_namespace() {
        let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let bound = socket.local_addr().unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            socket.as_raw_fd()
        }))
        .unwrap()
        .ino();
        let pids = [std::process::id()];
        let mut tables = UdpTables::default();
        let proc_root = Path::new("/proc");

        let found = tables.socket_at(proc_root, netns, &pids, &bound, Instant::now());
        assert_eq!(found, PortSocket::Bound(inode));

        // A read made before the port closed still lists it. A datagram
        // captured after the close makes the tables be read again.
        let port = bound.port();
        drop(socket);
        let before = tables.socket_at(
            proc_root,
            netns,
            &pids,
            &bound,
            Instant::now() - std::time::Duration::from_secs(5),
        );
        assert_eq!(before, PortSocket::Bound(inode));
        let after = tables.socket_at(proc_root, netns, &pids, &bound, Instant::now());
        assert_eq!(after, PortSocket::Unbound, "port {port} closed");

        // A pid outside the namespace gives no table.
        let unknown = tables.socket_at(proc_root, netns + 1, &pids, &bound, Instant::now());
        assert_eq!(unknown, PortSocket::Unknown);
    }
}
