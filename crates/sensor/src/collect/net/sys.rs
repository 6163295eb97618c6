//! The raw kernel calls of the network collector: `setns(2)` on a helper
//! thread, packet sockets with a classic BPF filter, sock_diag netlink
//! sockets, `recvfrom(2)` and `poll(2)`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Runs `work` on a new thread that first joined the network namespace of
/// `netns_file` (an nsfs file or a `/proc/<pid>/ns/net` link), and returns its
/// result. Only that thread changes namespace (`setns` with CLONE_NEWNET acts
/// on the calling thread), and it ends when `work` returns. Needs
/// CAP_SYS_ADMIN.
pub fn run_in_netns<T: Send>(
    netns_file: &Path,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    run_in_open_netns(&File::open(netns_file)?, work)
}

/// Opens `path` (an nsfs file or a `/proc/<pid>/ns/net` link) and checks
/// that it is the namespace `inode`. The open file pins that namespace, so a
/// pid reused after discovery cannot lead into another one.
pub fn open_netns(path: &Path, inode: u64) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let file = File::open(path)?;
    let found = file.metadata()?.ino();
    if found != inode {
        return Err(io::Error::other(format!(
            "{} is namespace {found}, expected {inode}",
            path.display()
        )));
    }
    Ok(file)
}

/// [`run_in_netns`] with a namespace file already open.
pub fn run_in_open_netns<T: Send>(
    file: &File,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: `file` is an open descriptor for the whole call;
                // setns only reads it.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netns helper thread panicked")))
    })
}

/// One classic BPF instruction (`struct sock_filter`).
pub type FilterInstruction = libc::sock_filter;

/// Returns the packets a packet socket dropped (its receive buffer was
/// full) since the previous call; reading resets the kernel's counters.
pub fn packet_drops(socket: BorrowedFd<'_>) -> io::Result<u32> {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `stats`, which
    // lives for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stats.tp_drops)
}

/// Opens a non-blocking `AF_PACKET`/`SOCK_DGRAM` socket for all protocols in
/// the calling thread's network namespace, attaches `filter`, and sets a
/// receive buffer of `rcvbuf` bytes. Needs CAP_NET_RAW.
pub fn packet_socket(filter: &[FilterInstruction], rcvbuf: usize) -> io::Result<OwnedFd> {
    let protocol = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: plain socket(2) call with constant arguments.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };

    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut FilterInstruction,
    };
    setsockopt(socket.as_fd(), libc::SO_ATTACH_FILTER, &program)?;
    let size = rcvbuf as libc::c_int;
    setsockopt(socket.as_fd(), libc::SO_RCVBUF, &size)?;
    Ok(socket)
}

fn setsockopt<T>(socket: BorrowedFd<'_>, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed; the kernel
    // copies it before returning.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Link-layer facts of a received packet.
#[derive(Debug, Clone, Copy)]
pub struct PacketInfo {
    /// Ethertype in host order (`ETH_P_IP`, `ETH_P_IPV6`, ...).
    pub protocol: u16,
    /// `PACKET_HOST`, `PACKET_OUTGOING`, ... (`linux/if_packet.h`).
    pub pkttype: u8,
    pub len: usize,
}

/// Receives one packet into `buf` without blocking. `Ok(None)` when no packet
/// is queued.
pub fn recv_packet(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<PacketInfo>> {
    let mut address = std::mem::MaybeUninit::<libc::sockaddr_ll>::zeroed();
    let mut address_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `buf` and `address` are valid for writes of the lengths passed.
    let received = unsafe {
        libc::recvfrom(
            socket.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_TRUNC,
            address.as_mut_ptr() as *mut libc::sockaddr,
            &mut address_len,
        )
    };
    if received < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(error);
    }
    // SAFETY: zero-initialised, and filled by the kernel on success.
    let address = unsafe { address.assume_init() };
    Ok(Some(PacketInfo {
        protocol: u16::from_be(address.sll_protocol),
        pkttype: address.sll_pkttype,
        // With MSG_TRUNC the real length is returned even when it exceeds
        // the buffer; callers see the cut through `len > buf.len()`.
        len: received as usize,
    }))
}

/// Waits up to `timeout_ms` for any of `fds` to become readable; returns the
/// indexes of the readable ones.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<usize>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polls` is a valid array of `polls.len()` entries.
    let rc = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            return Ok(Vec::new());
        }
        return Err(error);
    }
    Ok(polls
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .map(|(index, _)| index)
        .collect())
}

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HEADER_LEN: usize = 16;
/// `struct inet_diag_req_v2` (`linux/inet_diag.h`).
const INET_DIAG_REQ_LEN: usize = 56;

/// Opens a `NETLINK_SOCK_DIAG` socket in the calling thread's network
/// namespace. Like every socket it keeps that namespace for its life, and
/// its dumps list only sockets of that namespace.
pub fn sock_diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // A dump that never ends must not stall the poller.
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    setsockopt(socket.as_fd(), libc::SO_RCVTIMEO, &timeout)?;
    Ok(socket)
}

/// Dumps the sockets of one family and protocol whose state bit is set in
/// `states`, returning the payload of every `SOCK_DIAG_BY_FAMILY` message
/// (a `struct inet_diag_msg` each, attributes included).
pub fn sock_diag_dump(
    socket: BorrowedFd<'_>,
    family: u8,
    protocol: u8,
    states: u32,
) -> io::Result<Vec<Vec<u8>>> {
    let mut request = [0u8; NLMSG_HEADER_LEN + INET_DIAG_REQ_LEN];
    let total = request.len() as u32;
    request[0..4].copy_from_slice(&total.to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    request[16] = family;
    request[17] = protocol;
    request[20..24].copy_from_slice(&states.to_ne_bytes());

    // SAFETY: `request` is valid for reads of its length.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr() as *const libc::c_void,
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut messages = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let received = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = &buf[..received as usize];
        while rest.len() >= NLMSG_HEADER_LEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            if len < NLMSG_HEADER_LEN || len > rest.len() {
                return Err(io::Error::other("sock_diag reply has an invalid length"));
            }
            match kind {
                NLMSG_DONE => return Ok(messages),
                NLMSG_ERROR => {
                    let code = rest
                        .get(16..20)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .unwrap_or(0);
                    return Err(io::Error::from_raw_os_error(-code));
                }
                SOCK_DIAG_BY_FAMILY => messages.push(rest[NLMSG_HEADER_LEN..len].to_vec()),
                _ => {}
            }
            // Messages are 4-byte aligned (NLMSG_ALIGN).
            let advance = (len + 3) & !3;
            rest = rest.get(advance..).unwrap_or_default();
        }
    }
}
