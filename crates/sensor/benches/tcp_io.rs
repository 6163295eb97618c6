//! Cost of the eBPF tier's network programs on a TCP workload that makes
//! many small reads and writes, side by side with no programs loaded.
//!
//! Run as root: `cargo bench -p picket-sensor --bench tcp_io`.
//! `PICKET_BENCH_ROUND_TRIPS` sets the round trips per run (default
//! 100,000).
//!
//! The workloads run in this binary started again as a child, because the
//! programs skip the process that loaded them:
//! - ping-pong: one byte bounced back and forth over a loopback connection,
//!   so each round trip is two writes and two reads, and each runs the send
//!   or receive hook;
//! - full buffer: non-blocking one-byte writes to a connection whose peer
//!   never reads, once its buffers are full. Most calls (about 95 % here)
//!   fail at once with EAGAIN, so the hook's cost is a large share of the
//!   call's.
//!
//! Three setups take turns, five runs each, and the median is printed:
//! - no programs loaded;
//! - the process programs only (`network: false`, file events off);
//! - the process and network programs (`network: true`, file events off).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use picket_sensor::collect::ebpf::{self, EbpfConfig, FileConfig};

/// In the child: the workload and its count, as `ping-pong:N` or
/// `full-buffer:N`.
const ROLE_ENV: &str = "PICKET_BENCH_TCP_IO_CHILD";
/// Calls per run of the full-buffer workload.
const FULL_BUFFER_WRITES: u64 = 1_000_000;
const RUNS: usize = 5;

#[derive(Clone, Copy)]
enum Workload {
    PingPong,
    FullBuffer,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::PingPong => "ping-pong",
            Workload::FullBuffer => "full-buffer",
        }
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let (workload, count) = role.split_once(':').expect("workload:count");
        let count: u64 = count.parse().expect("count");
        let elapsed = match workload {
            "ping-pong" => ping_pong(count),
            "full-buffer" => full_buffer(count),
            other => panic!("unknown workload {other}"),
        };
        println!("{}", elapsed.as_nanos());
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: the eBPF benchmark needs root");
        return;
    }
    if let Err(error) = ebpf::probe(Path::new("/")) {
        println!("skipped: {error}");
        return;
    }
    let round_trips: u64 = std::env::var("PICKET_BENCH_ROUND_TRIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);

    let setups = [
        ("no programs", None),
        ("process programs", Some(false)),
        ("process and network programs", Some(true)),
    ];
    let workloads = [
        (Workload::PingPong, round_trips),
        (Workload::FullBuffer, FULL_BUFFER_WRITES),
    ];
    for (workload, count) in workloads {
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
        for _ in 0..RUNS {
            for (index, (_, network)) in setups.iter().enumerate() {
                runs[index].push(run(*network, workload, count));
            }
        }

        let unit = match workload {
            Workload::PingPong => "round trip",
            Workload::FullBuffer => "write",
        };
        println!();
        println!(
            "tcp_io {}: {count} calls or round trips per run, median of {RUNS} runs",
            workload.name()
        );
        println!("| programs loaded | ns per {unit} | against none |");
        println!("| --- | ---: | ---: |");
        let medians: Vec<f64> = runs.iter_mut().map(|r| median(r)).collect();
        for ((name, _), ns) in setups.iter().zip(&medians) {
            let ratio = ns / medians[0];
            println!("| {name} | {ns:.0} | {ratio:.3}x |");
        }
    }
}

/// Runs `workload` in a child with the programs `network` selects loaded
/// (`None`: none) and returns its nanoseconds per call or round trip.
fn run(network: Option<bool>, workload: Workload, count: u64) -> f64 {
    let tier = network.map(|network| {
        let (tx, facts) = sync_channel(100_000);
        let (net_tx, net) = sync_channel(100_000);
        let config = EbpfConfig {
            files: FileConfig {
                enabled: false,
                ..FileConfig::default()
            },
            network,
            ..EbpfConfig::default()
        };
        let handle = ebpf::start_with_network(&config, tx, Some(net_tx)).expect("eBPF tier starts");
        // Both channels are drained, so a full channel does not slow the
        // readers.
        let drain_facts = std::thread::spawn(move || facts.iter().count());
        let drain_net = std::thread::spawn(move || net.iter().count());
        (handle, drain_facts, drain_net)
    });

    let output = Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, format!("{}:{count}", workload.name()))
        .output()
        .expect("benchmark child runs");
    assert!(output.status.success(), "child failed: {output:?}");
    let nanos: f64 = String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .expect("child prints nanoseconds");

    if let Some((handle, drain_facts, drain_net)) = tier {
        drop(handle);
        let _ = (drain_facts.join(), drain_net.join());
    }
    nanos / count as f64
}

/// Bounces one byte over a loopback TCP connection `round_trips` times
/// and returns the time it took.
fn ping_pong(round_trips: u64) -> Duration {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_nodelay(true).unwrap();
        let mut byte = [0u8; 1];
        while stream.read_exact(&mut byte).is_ok() {
            stream.write_all(&byte).unwrap();
        }
    });
    let mut client = std::net::TcpStream::connect(address).unwrap();
    client.set_nodelay(true).unwrap();
    let mut byte = [7u8; 1];
    let start = Instant::now();
    for _ in 0..round_trips {
        client.write_all(&byte).unwrap();
        client.read_exact(&mut byte).unwrap();
    }
    let elapsed = start.elapsed();
    drop(client);
    server.join().unwrap();
    elapsed
}

/// Fills a loopback connection whose peer never reads, then makes `writes`
/// non-blocking one-byte writes, most failing with EAGAIN, and returns the
/// time they took.
fn full_buffer(writes: u64) -> Duration {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_server, _) = listener.accept().unwrap();
    client.set_nonblocking(true).unwrap();

    let chunk = [0u8; 65536];
    // Loopback moves data into the peer's receive buffer after the write
    // returns, so fill until a write still fails after a pause.
    loop {
        match client.write(&chunk) {
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("filling the buffer failed: {error}"),
        }
        std::thread::sleep(Duration::from_millis(100));
        if client
            .write(&chunk[..1])
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
        {
            break;
        }
    }

    let start = Instant::now();
    let mut written = 0u64;
    for _ in 0..writes {
        // Some writes still find buffer space; they run the same hook.
        if client.write(&chunk[..1]).is_ok() {
            written += 1;
        }
    }
    let elapsed = start.elapsed();
    assert!(
        written * 5 < writes,
        "{written} of {writes} writes to a full buffer succeeded"
    );
    elapsed
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
