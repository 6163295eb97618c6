//! Socket tables through sock_diag (`linux/inet_diag.h`), the faster route
//! of the polling tier: the kernel filters by state, so the TIME_WAIT
//! sockets of a busy server are never copied or parsed, and no text is
//! formatted. The socket is created once per namespace from a thread that
//! joined it and reused on every pass.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};

use super::procfs::{self, tcp_state, Proto, SocketEntry};
use super::sys;

/// Length of `struct inet_diag_msg` without attributes.
const INET_DIAG_MSG_LEN: usize = 72;

/// TCP states requested: every state except TIME_WAIT. No process owns a
/// TIME_WAIT socket, and they dominate a busy server's table.
const TCP_STATES: u32 = !(1 << tcp_state::TIME_WAIT as u32);
const UDP_STATES: u32 = u32::MAX;

/// Reads all four tables through `socket`.
pub fn read_tables(socket: &OwnedFd) -> io::Result<Vec<SocketEntry>> {
    let mut entries = Vec::new();
    for proto in Proto::ALL {
        let (family, protocol, states) = match proto {
            Proto::Tcp4 => (libc::AF_INET, libc::IPPROTO_TCP, TCP_STATES),
            Proto::Tcp6 => (libc::AF_INET6, libc::IPPROTO_TCP, TCP_STATES),
            Proto::Udp4 => (libc::AF_INET, libc::IPPROTO_UDP, UDP_STATES),
            Proto::Udp6 => (libc::AF_INET6, libc::IPPROTO_UDP, UDP_STATES),
        };
        let messages = sys::sock_diag_dump(socket.as_fd(), family as u8, protocol as u8, states)?;
        entries.extend(messages.iter().filter_map(|m| parse_message(proto, m)));
    }
    Ok(entries)
}

/// Decodes one `struct inet_diag_msg`.
pub fn parse_message(proto: Proto, message: &[u8]) -> Option<SocketEntry> {
    let message = message.get(..INET_DIAG_MSG_LEN)?;
    let family = message[0] as i32;
    let state = message[1];
    // inet_diag_sockid: sport, dport (big endian), src[4], dst[4] (network
    // order words), interface, cookie.
    let local_port = u16::from_be_bytes([message[4], message[5]]);
    let remote_port = u16::from_be_bytes([message[6], message[7]]);
    let source: [u8; 16] = message[8..24].try_into().ok()?;
    let destination: [u8; 16] = message[24..40].try_into().ok()?;
    let address = |bytes: [u8; 16]| -> Option<IpAddr> {
        match family {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
            _ => None,
        }
    };
    let uid = u32::from_ne_bytes(message[64..68].try_into().ok()?);
    let inode = u32::from_ne_bytes(message[68..72].try_into().ok()?) as u64;
    Some(procfs::unmap_ipv4(SocketEntry {
        proto,
        local: SocketAddr::new(address(source)?, local_port),
        remote: SocketAddr::new(address(destination)?, remote_port),
        state,
        uid,
        inode,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn dump_matches_proc_tables() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();

        let socket = match sys::sock_diag_socket() {
            Ok(socket) => socket,
            Err(error) => {
                println!("skipped: sock_diag unavailable: {error}");
                return;
            }
        };
        let entries = read_tables(&socket).unwrap();
        let (proc_entries, _) = procfs::read_tables(Path::new("/proc/self/net")).unwrap();
        for expected in [
            listener.local_addr().unwrap(),
            client.local_addr().unwrap(),
            udp.local_addr().unwrap(),
        ] {
            let from_diag = entries
                .iter()
                .find(|e| e.local == expected)
                .expect("socket in dump");
            let from_proc = proc_entries
                .iter()
                .find(|e| e.local == expected)
                .expect("socket in /proc");
            assert_eq!(from_diag, from_proc);
        }
    }

    #[test]
    fn short_message_is_skipped() {
        assert_eq!(parse_message(Proto::Tcp4, &[0u8; 40]), None);
    }
}
