//! Network programs against the running kernel. The sockets live in a child
//! process (python3), because the tier ignores its own process's UDP and
//! accept calls. Each test checks the reports for that child's pid.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;
use crate::collect::net::kernel::{KernelAction, KernelNetEvent};
use crate::collect::net::procfs::Proto;

struct Tier {
    _handle: EbpfHandle,
    _facts: Receiver<Fact>,
    net: Receiver<KernelNetEvent>,
}

fn start_tier() -> Option<Tier> {
    if let Err(error) = probe(Path::new("/")) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("eBPF test prerequisite missing: {error}");
        }
        println!("skipped: {error}");
        return None;
    }
    let (tx, facts) = sync_channel(200_000);
    let (net_tx, net) = sync_channel(200_000);
    let config = EbpfConfig {
        files: FileConfig {
            enabled: false,
            ..FileConfig::default()
        },
        ..EbpfConfig::default()
    };
    let handle = start_with_network(&config, tx, Some(net_tx))
        .unwrap_or_else(|e| panic!("start failed after a successful probe: {e}"));
    assert_eq!(handle.network_unavailable, None);
    Some(Tier {
        _handle: handle,
        _facts: facts,
        net,
    })
}

/// Runs `script` in python3 and returns its pid and the JSON object it
/// printed last.
fn python(script: &str) -> (u32, Value) {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 runs (scripts/host-setup.sh installs it)");
    assert!(
        output.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut lines = stdout.lines();
    let pid: u32 = lines.next().expect("pid line").parse().unwrap();
    let result = serde_json::from_str(lines.last().expect("result line")).unwrap();
    (pid, result)
}

/// Collects reports for `pid` until `done` returns true or 5 s pass.
fn reports_of(
    tier: &Tier,
    pid: u32,
    mut done: impl FnMut(&[KernelNetEvent]) -> bool,
) -> Vec<KernelNetEvent> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reports = Vec::new();
    while Instant::now() < deadline && !done(&reports) {
        if let Ok(event) = tier.net.recv_timeout(Duration::from_millis(50)) {
            if event.pid == pid {
                reports.push(event);
            }
        }
    }
    reports
}

fn addr(value: &Value) -> SocketAddr {
    let pair = value.as_array().expect("[host, port]");
    let host = pair[0].as_str().unwrap();
    let port = pair[1].as_u64().unwrap() as u16;
    SocketAddr::new(host.parse().unwrap(), port)
}

const PRELUDE: &str = "import os, socket, json, time\nprint(os.getpid(), flush=True)\n";

fn count(events: &[KernelNetEvent], action: KernelAction) -> usize {
    events.iter().filter(|e| e.action == action).count()
}

#[test]
fn tcp4_flow_reported_once() {
    let Some(tier) = start_tier() else { return };
    let (pid, ports) = python(&format!(
        "{PRELUDE}
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
c = socket.create_connection(s.getsockname())
a, _ = s.accept()
c.sendall(b'x'); a.recv(1)
out = {{'client': c.getsockname(), 'server': s.getsockname()}}
c.close(); a.close()
# A refused connection: nothing listens on this port any more.
s.close()
try:
    socket.create_connection(out['server'], timeout=2)
except OSError:
    pass
print(json.dumps(out))"
    ));
    let client = addr(&ports["client"]);
    let server = addr(&ports["server"]);
    let events = reports_of(&tier, pid, |e| count(e, KernelAction::TcpClose) >= 2);
    let mut expected_close = 0;
    for event in &events {
        assert_eq!(event.proto, Proto::Tcp4);
        assert_ne!(event.netns, 0);
        assert_eq!(event.comm, "python3");
        match event.action {
            KernelAction::TcpConnect => {
                assert_eq!((event.local, event.remote), (client, server));
            }
            KernelAction::TcpAccept => {
                assert_eq!((event.local, event.remote), (server, client));
            }
            KernelAction::TcpClose => {
                expected_close += 1;
                // Endpoints are those of the open: by close the kernel may
                // have released the local port.
                if event.outgoing {
                    assert_eq!((event.local, event.remote), (client, server));
                } else {
                    assert_eq!((event.local, event.remote), (server, client));
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(count(&events, KernelAction::TcpConnect), 1, "{events:#?}");
    assert_eq!(count(&events, KernelAction::TcpAccept), 1, "{events:#?}");
    assert_eq!(expected_close, 2, "{events:#?}");
    // The refused connection never opened, so it is not reported.
    std::thread::sleep(Duration::from_millis(300));
    let late: Vec<_> = tier.net.try_iter().filter(|e| e.pid == pid).collect();
    assert!(late.is_empty(), "refused connection reported: {late:#?}");
}

#[test]
fn tcp6_and_mapped_ipv4_reported() {
    let Some(tier) = start_tier() else { return };
    let (pid, ports) = python(&format!(
        "{PRELUDE}
s = socket.socket(socket.AF_INET6); s.bind(('::', 0)); s.listen()
port = s.getsockname()[1]
c6 = socket.create_connection(('::1', port)); a6, _ = s.accept()
c4 = socket.create_connection(('127.0.0.1', port)); a4, _ = s.accept()
out = {{'c6': c6.getsockname()[:2], 'c4': c4.getsockname()[:2], 'a4': a4.getsockname()[:2]}}
for x in (c6, a6, c4, a4): x.close()
print(json.dumps(out))"
    ));
    let events = reports_of(&tier, pid, |e| count(e, KernelAction::TcpClose) >= 4);
    let c6 = addr(&ports["c6"]);
    let connect6 = events
        .iter()
        .find(|e| e.action == KernelAction::TcpConnect && e.local == c6)
        .unwrap_or_else(|| panic!("no ipv6 connect in {events:#?}"));
    assert_eq!(connect6.proto, Proto::Tcp6);
    // The IPv4 client came in on the dual-stack listener: its accepted
    // socket is an IPv6 one with mapped addresses.
    let a4 = addr(&ports["a4"]);
    let accept4 = events
        .iter()
        .find(|e| e.action == KernelAction::TcpAccept && e.local == a4)
        .unwrap_or_else(|| panic!("no mapped accept in {events:#?}"));
    assert_eq!(accept4.proto, Proto::Tcp6);
    let c4 = addr(&ports["c4"]);
    let connect4 = events
        .iter()
        .find(|e| e.action == KernelAction::TcpConnect && e.local == c4)
        .unwrap_or_else(|| panic!("no ipv4 connect in {events:#?}"));
    assert_eq!(connect4.proto, Proto::Tcp4);
    assert_eq!(count(&events, KernelAction::TcpClose), 4, "{events:#?}");
}

#[test]
fn udp_peer_reported_once() {
    let Some(tier) = start_tier() else { return };
    let (pid, ports) = python(&format!(
        "{PRELUDE}
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('127.0.0.1', 0))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0))
for i in range(5):
    s.sendto(b'a', r.getsockname())
    r.recvfrom(16)
# sendmsg and recvmsg with an address, from a second sender.
m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); m.bind(('127.0.0.1', 0))
m.sendmsg([b'b'], [], 0, r.getsockname())
r.recvmsg(16)
# A connected socket, then send and recv without addresses.
k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); k.connect(r.getsockname())
k.send(b'c'); r.recvfrom(16)
out = {{'r': r.getsockname(), 's': s.getsockname(), 'm': m.getsockname(), 'k': k.getsockname()}}
print(json.dumps(out))"
    ));
    let r = addr(&ports["r"]);
    let s = addr(&ports["s"]);
    let m = addr(&ports["m"]);
    let k = addr(&ports["k"]);
    let events = reports_of(&tier, pid, |e| e.len() >= 6);
    std::thread::sleep(Duration::from_millis(300));
    let mut events = events;
    events.extend(tier.net.try_iter().filter(|e| e.pid == pid));

    let find = |action, local, remote| {
        events
            .iter()
            .filter(|e| e.action == action && e.local == local && e.remote == remote)
            .count()
    };
    // Five datagrams, one report per side.
    assert_eq!(find(KernelAction::UdpSend, s, r), 1, "{events:#?}");
    assert_eq!(find(KernelAction::UdpReceive, r, s), 1, "{events:#?}");
    // sendmsg / recvmsg with addresses.
    assert_eq!(find(KernelAction::UdpSend, m, r), 1, "{events:#?}");
    assert_eq!(find(KernelAction::UdpReceive, r, m), 1, "{events:#?}");
    // The connected socket's peer comes from the socket itself.
    let connected: Vec<_> = events
        .iter()
        .filter(|e| e.action == KernelAction::UdpSend && e.local == k)
        .collect();
    assert_eq!(connected.len(), 1, "{events:#?}");
    assert_eq!(connected[0].remote, r);
    assert!(connected[0].udp_connected);
    assert_eq!(find(KernelAction::UdpReceive, r, k), 1, "{events:#?}");
    assert!(events.iter().all(|e| e.proto == Proto::Udp4));
    assert_eq!(events.len(), 6, "{events:#?}");
}

#[test]
fn reused_socket_memory_reported_again() {
    let Some(tier) = start_tier() else { return };
    // Each socket sends to the same peer and closes, so the kernel often
    // hands the next socket the same memory.
    let (pid, ports) = python(&format!(
        "{PRELUDE}
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('127.0.0.1', 0))
locals = []
for i in range(20):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b'x', r.getsockname())
    locals.append(s.getsockname())
    s.close()
print(json.dumps({{'r': r.getsockname(), 'locals': locals}}))"
    ));
    let r = addr(&ports["r"]);
    let events = reports_of(&tier, pid, |e| e.len() >= 20);
    let sends: Vec<_> = events
        .iter()
        .filter(|e| e.action == KernelAction::UdpSend && e.remote == r)
        .map(|e| e.local)
        .collect();
    let expected: Vec<SocketAddr> = ports["locals"]
        .as_array()
        .unwrap()
        .iter()
        .map(addr)
        .collect();
    assert_eq!(sends, expected, "{events:#?}");
}

#[test]
fn connected_socket_sendto_reports_given_peer() {
    let Some(tier) = start_tier() else { return };
    let (pid, ports) = python(&format!(
        "{PRELUDE}
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(('127.0.0.1', 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(('127.0.0.1', 0))
k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); k.connect(a.getsockname())
k.sendto(b'x', b.getsockname())
print(json.dumps({{'b': b.getsockname(), 'k': k.getsockname()}}))"
    ));
    let b = addr(&ports["b"]);
    let k = addr(&ports["k"]);
    let events = reports_of(&tier, pid, |e| {
        e.iter()
            .any(|e| e.action == KernelAction::UdpSend && e.local == k)
    });
    let send = events
        .iter()
        .find(|e| e.action == KernelAction::UdpSend && e.local == k)
        .unwrap_or_else(|| panic!("no send from the connected socket in {events:#?}"));
    assert_eq!(
        send.remote, b,
        "the address given to sendto, not the connected peer"
    );
    assert!(send.udp_connected);
}

/// Python has no sendmmsg or recvmmsg; these ctypes definitions call libc's.
const MMSG_PRELUDE: &str = "import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [('name', ctypes.c_void_p), ('namelen', ctypes.c_uint32),
                ('iov', ctypes.POINTER(iovec)), ('iovlen', ctypes.c_size_t),
                ('control', ctypes.c_void_p), ('controllen', ctypes.c_size_t),
                ('flags', ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [('hdr', msghdr), ('len', ctypes.c_uint)]
assert ctypes.sizeof(mmsghdr) == 64
def sockaddr(addr):
    raw = struct.pack('=H', socket.AF_INET) + struct.pack('!H', addr[1])
    return ctypes.create_string_buffer(raw + socket.inet_aton(addr[0]) + bytes(8), 16)
def batch(n, names):
    msgs = (mmsghdr * n)()
    keep = []
    for i in range(n):
        buf = ctypes.create_string_buffer(64)
        iov = iovec(ctypes.cast(buf, ctypes.c_void_p), 64)
        name = names[i] if names else ctypes.create_string_buffer(16)
        keep += [buf, iov, name]
        msgs[i].hdr.name = ctypes.cast(name, ctypes.c_void_p)
        msgs[i].hdr.namelen = 16
        msgs[i].hdr.iov = ctypes.pointer(iov)
        msgs[i].hdr.iovlen = 1
    return msgs, keep
";

#[test]
fn every_peer_of_a_batch_reported() {
    let Some(tier) = start_tier() else { return };
    let (pid, ports) = python(&format!(
        "{PRELUDE}{MMSG_PRELUDE}
# One sendmmsg call to three receivers.
rs = []
for i in range(3):
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('127.0.0.1', 0)); rs.append(r)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0))
msgs, keep = batch(3, [sockaddr(r.getsockname()) for r in rs])
assert libc.sendmmsg(s.fileno(), msgs, 3, 0) == 3, ctypes.get_errno()
# Three senders, then one recvmmsg call that reads all three datagrams.
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); q.bind(('127.0.0.1', 0))
senders = []
for i in range(3):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(('127.0.0.1', 0))
    a.sendto(b'x', q.getsockname()); senders.append(a)
time.sleep(0.05)
msgs, keep = batch(3, None)
MSG_DONTWAIT = 0x40
assert libc.recvmmsg(q.fileno(), msgs, 3, MSG_DONTWAIT, None) == 3, ctypes.get_errno()
out = {{'s': s.getsockname(), 'rs': [r.getsockname() for r in rs],
       'q': q.getsockname(), 'senders': [a.getsockname() for a in senders]}}
print(json.dumps(out))"
    ));
    let s = addr(&ports["s"]);
    let q = addr(&ports["q"]);
    let list = |key: &str| -> Vec<SocketAddr> {
        ports[key].as_array().unwrap().iter().map(addr).collect()
    };
    let receivers = list("rs");
    let senders = list("senders");
    // Three batch sends, three plain sends, three batch receives.
    let events = reports_of(&tier, pid, |e| e.len() >= 9);
    let find = |action, local, remote| {
        events
            .iter()
            .filter(|e| e.action == action && e.local == local && e.remote == remote)
            .count()
    };
    for r in &receivers {
        assert_eq!(find(KernelAction::UdpSend, s, *r), 1, "to {r}: {events:#?}");
    }
    for a in &senders {
        assert_eq!(
            find(KernelAction::UdpReceive, q, *a),
            1,
            "from {a}: {events:#?}"
        );
    }
}

/// In the child `io_uring_accept_reported` starts: the file its result goes
/// to.
const URING_RESULT_ENV: &str = "PICKET_TEST_URING_RESULT";

/// Child side of `io_uring_accept_reported`: takes two connections with
/// io_uring's accept, so no accept(2) call is made. It reads from the
/// first and closes the second without reading or writing. Does nothing in
/// a normal test run.
#[test]
fn uring_accept_child() {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};

    let Some(result) = std::env::var_os(URING_RESULT_ENV) else {
        return;
    };
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(ring) => ring,
        Err(error) => {
            let reason = format!("io_uring unavailable: {error}");
            std::fs::write(
                result,
                serde_json::json!({ "unavailable": reason }).to_string(),
            )
            .unwrap();
            return;
        }
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let mut accept = || {
        let fd = io_uring::types::Fd(listener.as_raw_fd());
        let entry =
            io_uring::opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut()).build();
        // SAFETY: the entry points to no buffer, and the listener stays
        // open until the completion below is read.
        unsafe { ring.submission().push(&entry).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let completion = ring.completion().next().expect("one completion");
        let accepted = completion.result();
        assert!(
            accepted >= 0,
            "io_uring accept failed: {}",
            std::io::Error::from_raw_os_error(-accepted)
        );
        // SAFETY: the completion's result is a new descriptor nothing else
        // owns.
        unsafe { std::net::TcpStream::from_raw_fd(accepted) }
    };

    let mut client = std::net::TcpStream::connect(server).unwrap();
    let mut accepted = accept();
    client.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    accepted.read_exact(&mut byte).unwrap();

    let silent_client = std::net::TcpStream::connect(server).unwrap();
    drop(accept());
    let out = serde_json::json!({
        "server": server.to_string(),
        "client": client.local_addr().unwrap().to_string(),
        "silent_client": silent_client.local_addr().unwrap().to_string(),
    });
    std::fs::write(result, out.to_string()).unwrap();
}

#[test]
fn io_uring_accept_reported() {
    let Some(tier) = start_tier() else { return };
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("result.json");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "collect::ebpf::net_tests::uring_accept_child",
            "--test-threads=1",
        ])
        .env(URING_RESULT_ENV, &result)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "the io_uring child failed");

    let out: Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    if let Some(reason) = out["unavailable"].as_str() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{reason}");
        println!("skipped: {reason}");
        return;
    }
    let server: SocketAddr = out["server"].as_str().unwrap().parse().unwrap();
    let client: SocketAddr = out["client"].as_str().unwrap().parse().unwrap();
    let silent: SocketAddr = out["silent_client"].as_str().unwrap().parse().unwrap();

    let events = reports_of(&tier, pid, |e| count(e, KernelAction::TcpAccept) >= 2);
    let accepted_from: Vec<_> = events
        .iter()
        .filter(|e| e.action == KernelAction::TcpAccept)
        .map(|e| (e.local, e.remote))
        .collect();
    assert_eq!(
        accepted_from,
        vec![(server, client), (server, silent)],
        "the read one, then the one closed unread: {events:#?}"
    );
}

/// A resolver on TCP port 53 and two clients in a network namespace of the
/// child's own, so the port is free. The first client reads the two-byte
/// length and then the message, as most resolvers do; the second reads
/// both at once.
#[test]
fn dns_over_tcp_response_read() {
    let Some(tier) = start_tier() else { return };
    let (pid, _) = python(&format!(
        "{PRELUDE}import ctypes, struct, subprocess, threading
CLONE_NEWNET = 0x40000000
assert ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) == 0, ctypes.get_errno()
subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)
name = b''.join(bytes([len(l)]) + l for l in b'tcp.picket.test'.split(b'.')) + b'\\0'
def response(ident):
    question = name + struct.pack('>HH', 1, 1)
    answer = b'\\xc0\\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + socket.inet_aton('10.9.8.7')
    return struct.pack('>HHHHHH', ident, 0x8180, 1, 1, 0, 0) + question + answer
server = socket.socket(); server.bind(('127.0.0.1', 53)); server.listen()
def serve():
    for ident in (0x5301, 0x5302):
        conn, _ = server.accept()
        length = struct.unpack('>H', conn.recv(2))[0]
        conn.recv(length)
        message = response(ident)
        conn.sendall(struct.pack('>H', len(message)) + message)
        conn.close()
threading.Thread(target=serve).start()
query = struct.pack('>HHHHHH', 0x5301, 0x0100, 1, 0, 0, 0) + name + struct.pack('>HH', 1, 1)
c = socket.create_connection(('127.0.0.1', 53))
c.sendall(struct.pack('>H', len(query)) + query)
length = struct.unpack('>H', c.recv(2, socket.MSG_WAITALL))[0]
c.recv(length, socket.MSG_WAITALL)
d = socket.create_connection(('127.0.0.1', 53))
d.sendall(struct.pack('>H', len(query)) + query)
time.sleep(0.2)
d.recv(1024)
print(json.dumps({{}}))"
    ));

    let events = reports_of(&tier, pid, |e| count(e, KernelAction::DnsResponse) >= 2);
    let responses: Vec<_> = events
        .iter()
        .filter(|e| e.action == KernelAction::DnsResponse)
        .collect();
    assert_eq!(responses.len(), 2, "{events:#?}");
    for response in &responses {
        assert_eq!(response.proto, Proto::Tcp4);
        assert_eq!(response.remote.port(), 53);
    }
    // The length read alone is skipped; the message read comes whole.
    let first = crate::dns::parse_response(&responses[0].payload).expect("message");
    assert_eq!(first.id, 0x5301);
    // The read of both starts with the length.
    let both = &responses[1].payload;
    assert_eq!(
        usize::from(u16::from_be_bytes([both[0], both[1]])),
        both.len() - 2
    );
    let second = crate::dns::parse_response(&both[2..]).expect("message after the length");
    assert_eq!(second.id, 0x5302);
}

/// A socket connected to its own address opens simultaneously: its SYN
/// reaches itself in SYN_SENT, and it passes through SYN_RECV. It is
/// still one outgoing connection, never an accepted one.
#[test]
fn simultaneous_open_reported_as_outgoing() {
    let Some(tier) = start_tier() else { return };
    let (pid, ports) = python(&format!(
        "{PRELUDE}
s = socket.socket(); s.bind(('127.0.0.1', 0))
s.connect(s.getsockname())
s.sendall(b'x'); s.recv(1)
out = {{'self': s.getsockname()}}
s.close()
print(json.dumps(out))"
    ));
    let address = addr(&ports["self"]);

    let events = reports_of(&tier, pid, |e| count(e, KernelAction::TcpClose) > 0);
    let ours: Vec<_> = events
        .iter()
        .filter(|e| e.local == address)
        .map(|e| e.action)
        .collect();
    assert_eq!(
        ours,
        vec![KernelAction::TcpConnect, KernelAction::TcpClose],
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e.remote == address), "{events:#?}");
}
