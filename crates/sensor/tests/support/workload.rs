//! Workloads run inside test containers: the test binary itself, mounted
//! into a busybox container together with the host's shared libraries, acts
//! as a DNS resolver, a TCP/UDP echo server or a client.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use picket_sensor::dns::{self, build};

/// Environment variable that selects the workload.
pub const ROLE_ENV: &str = "PICKET_NET_ROLE";

pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 9090;
/// Address the test resolver returns for every `*.picket.test` name.
pub const ANSWER_IP: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 7);
pub const WEB_NAME: &str = "web.picket.test";
pub const ALIAS_NAME: &str = "alias.picket.test";
pub const WEB_MESSAGE_ID: u16 = 0x5a01;
pub const ALIAS_MESSAGE_ID: u16 = 0x5a02;

/// Runs the workload named by [`ROLE_ENV`]; returns false when none is set.
pub fn run_role() -> bool {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("resolver") => resolver(),
        Ok("server") => server(),
        Ok("client") => client(),
        Ok(other) => panic!("unknown role {other}"),
        Err(_) => return false,
    }
    true
}

/// Responds to A queries for `*.picket.test`: `alias.` with a CNAME to `web.`
/// plus the address, every other name with the address alone; anything else
/// with an empty answer.
fn resolver() {
    let socket = UdpSocket::bind("0.0.0.0:53").expect("resolver binds port 53");
    let mut buf = [0u8; 512];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let query = &buf[..len];
        let name = question_name(query).unwrap_or_default();
        let qtype = question_type(query);
        let address = build::AnswerData::Address(IpAddr::V4(ANSWER_IP));
        let answers: Vec<build::AnswerData<'_>> =
            if !name.ends_with(".picket.test") || qtype != Some(dns::TYPE_A) {
                Vec::new()
            } else if name == ALIAS_NAME {
                vec![build::AnswerData::Cname(WEB_NAME), address]
            } else {
                vec![address]
            };
        if let Some(response) = build::response(query, &answers) {
            let _ = socket.send_to(&response, peer);
        }
    }
}

fn question_name(query: &[u8]) -> Option<String> {
    let mut labels = Vec::new();
    let mut pos = 12;
    loop {
        let len = *query.get(pos)? as usize;
        if len == 0 {
            return Some(labels.join("."));
        }
        labels.push(String::from_utf8_lossy(query.get(pos + 1..pos + 1 + len)?).into_owned());
        pos += 1 + len;
    }
}

fn question_type(query: &[u8]) -> Option<u16> {
    let name_len = question_name(query)?.len() + 2;
    let at = 12 + name_len;
    Some(u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]))
}

/// TCP server that reads each connection to its end, and a UDP echo server.
fn server() {
    let udp = UdpSocket::bind(("0.0.0.0", UDP_PORT)).expect("udp server binds");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((len, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..len], peer);
        }
    });
    let listener = TcpListener::bind(("0.0.0.0", TCP_PORT)).expect("tcp server binds");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        });
    }
}

/// Keeps a TCP connection and a connected UDP socket open for a few seconds
/// each (`PICKET_HOLD_MS`), so at least one poll reads them. Then looks up
/// two names with sockets kept open for a moment after the response
/// (`PICKET_DNS_LINGER_MS`).
fn client() {
    let server: IpAddr = std::env::var("PICKET_SERVER_IP").unwrap().parse().unwrap();
    let resolver: IpAddr = std::env::var("PICKET_RESOLVER_IP")
        .unwrap()
        .parse()
        .unwrap();
    let millis = |name: &str, default: u64| {
        Duration::from_millis(
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default),
        )
    };
    // Time each flow stays open, time each DNS socket stays open after its
    // answer, and a pause before anything starts (so a test can list the
    // client's pids first).
    let hold = millis("PICKET_HOLD_MS", 2500);
    let linger = millis("PICKET_DNS_LINGER_MS", 800);
    std::thread::sleep(millis("PICKET_START_DELAY_MS", 0));

    let mut tcp = TcpStream::connect((server, TCP_PORT)).expect("client connects over tcp");
    tcp.write_all(b"hello").unwrap();
    std::thread::sleep(hold);
    drop(tcp);

    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.connect((server, UDP_PORT)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    udp.send(b"ping").unwrap();
    let mut buf = [0u8; 512];
    let len = udp.recv(&mut buf).expect("udp echo arrives");
    assert_eq!(&buf[..len], b"ping");
    std::thread::sleep(hold);
    drop(udp);

    for (id, name) in [(WEB_MESSAGE_ID, WEB_NAME), (ALIAS_MESSAGE_ID, ALIAS_NAME)] {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
            .send_to(
                &build::query(id, name, dns::TYPE_A),
                SocketAddr::new(resolver, 53),
            )
            .unwrap();
        let len = socket.recv(&mut buf).expect("dns answer arrives");
        let message = dns::parse_response(&buf[..len]).expect("resolver answer parses");
        assert_eq!(message.id, id);
        std::thread::sleep(linger);
    }
}
