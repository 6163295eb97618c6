//! Connection storm: short TCP connections between Docker containers while
//! the network collector runs in its own process. Prints the share of
//! connections each tier reported, the collector's CPU per 1,000
//! connections and its peak RSS.
//!
//! `cargo bench -p picket-sensor --bench net_storm` as root with Docker and
//! `picket-test/busybox:latest`. `PICKET_STORM_SECS` sets the length of each
//! phase (default 10).
//!
//! Two server and two client containers run this binary (mounted with the
//! host's shared libraries). Every connection is opened by a client, the
//! server writes one byte and closes, the client reads to the end and
//! closes, so the whole connection lives well under a millisecond.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use picket_sensor::collect::ebpf;
use picket_sensor::collect::net::{self, NetConfig};
use serde_json::{json, Value};

const ROLE_ENV: &str = "PICKET_STORM_ROLE";
const STORM_PORT: u16 = 7777;
const CLIENT_THREADS: usize = 8;

fn main() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("server") => return server(),
        Ok("client") => return client(),
        Ok("sensor") => return sensor(),
        _ => {}
    }
    if !is_root() || !docker_ready() {
        println!("skipped: the connection storm needs root, docker and picket-test/busybox:latest");
        return;
    }
    let secs: u64 = std::env::var("PICKET_STORM_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);

    let lab = Lab::new();
    println!("network connection storm: 2 server and 2 client containers, {secs} s per phase");
    println!(
        "{:<36} {:>9} {:>10} {:>9} {:>9} {:>12} {:>8} {:>9}",
        "phase", "conns", "conns/s", "reported", "share", "cpu ms/1k", "user %", "peak rss"
    );
    let only = std::env::var("PICKET_STORM_ONLY").ok();
    // (label, connections/s or None for as fast as possible, poll interval,
    // sock_diag, dns capture, ebpf network programs)
    for (label, rate, poll_ms, sock_diag, dns, ebpf) in [
        ("idle, poll 1 s", Some(0), 1000, true, true, false),
        ("idle, ebpf", Some(0), 1000, true, true, true),
        ("5,000/s, poll 1 s", Some(5000), 1000, true, true, false),
        ("5,000/s, ebpf", Some(5000), 1000, true, true, true),
        (
            "5,000/s, poll 1 s, no dns capture",
            Some(5000),
            1000,
            true,
            false,
            false,
        ),
        (
            "5,000/s, poll 1 s, /proc text",
            Some(5000),
            1000,
            false,
            true,
            false,
        ),
        ("5,000/s, poll 100 ms", Some(5000), 100, true, true, false),
        ("max rate, poll 1 s", None, 1000, true, true, false),
        ("max rate, ebpf", None, 1000, true, true, true),
        ("max rate, poll 100 ms", None, 100, true, true, false),
    ] {
        if only.as_deref().is_some_and(|only| !label.contains(only)) {
            continue;
        }
        let result = lab.phase(rate, poll_ms, sock_diag, dns, ebpf, secs);
        let share = if result.connections > 0 {
            format!(
                "{:.2}%",
                100.0 * result.reported as f64 / result.connections as f64
            )
        } else {
            "-".into()
        };
        let per_thousand = if result.connections > 0 {
            format!(
                "{:.1}",
                result.cpu_ms / (result.connections as f64 / 1000.0)
            )
        } else {
            format!("({:.0} total)", result.cpu_ms)
        };
        println!(
            "{:<36} {:>9} {:>10.0} {:>9} {:>9} {:>12} {:>7.0}% {:>6} MiB",
            label,
            result.connections,
            result.connections as f64 / result.seconds,
            result.reported,
            share,
            per_thousand,
            100.0 * result.user_ms / result.cpu_ms.max(1.0),
            result.peak_rss_kib / 1024
        );
    }
    println!(
        "ebpf rows: the collector with the eBPF tier's network programs (file events off); \
         cpu is the sensor process only, the programs' own cost is charged to the workload \
         and shows as a lower max rate"
    );
}

struct PhaseResult {
    connections: u64,
    seconds: f64,
    reported: u64,
    cpu_ms: f64,
    user_ms: f64,
    peak_rss_kib: u64,
}

struct Lab {
    network: String,
    servers: Vec<String>,
    names: Vec<String>,
}

impl Lab {
    fn new() -> Lab {
        let prefix = format!("picket-storm-{}", std::process::id());
        let network = format!("{prefix}-lan");
        run("docker", &["network", "create", &network]);
        let mut lab = Lab {
            network,
            servers: Vec::new(),
            names: Vec::new(),
        };
        for index in 0..2 {
            let name = format!("{prefix}-server{index}");
            lab.start(&name, "server", &[]);
            let format = format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                lab.network
            );
            lab.servers
                .push(run("docker", &["inspect", "-f", &format, &name]));
        }
        lab
    }

    fn start(&mut self, name: &str, role: &str, env: &[String]) {
        let exe = std::env::current_exe().unwrap();
        let mount = format!("{}:/picket-storm:ro", exe.display());
        let role_env = format!("{ROLE_ENV}={role}");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &self.network,
            "-v",
            &mount,
            "-v",
            "/usr/lib:/lib:ro",
            "-v",
            "/usr/lib64:/lib64:ro",
            "-e",
            &role_env,
            "--sysctl",
            "net.ipv4.ip_local_port_range=1024 65000",
            "--sysctl",
            "net.ipv4.tcp_tw_reuse=1",
        ];
        for value in env {
            args.push("-e");
            args.push(value);
        }
        args.extend(["picket-test/busybox:latest", "/picket-storm"]);
        run("docker", &args);
        self.names.push(name.to_owned());
    }

    /// Runs one phase: a fresh collector process, then the client containers for
    /// `secs` seconds at `rate` connections/s in total (`None`: as fast as
    /// they go), then two more polls so the last connections can be seen.
    fn phase(
        &self,
        rate: Option<u64>,
        poll_ms: u64,
        sock_diag: bool,
        dns: bool,
        ebpf: bool,
        secs: u64,
    ) -> PhaseResult {
        let dir = tempfile::tempdir().unwrap();
        let stop_file = dir.path().join("stop");
        let mut sensor = Command::new(std::env::current_exe().unwrap())
            .env(ROLE_ENV, "sensor")
            .env("PICKET_STORM_STOP", &stop_file)
            .env("PICKET_STORM_POLL_MS", poll_ms.to_string())
            .env("PICKET_STORM_SOCK_DIAG", if sock_diag { "1" } else { "0" })
            .env("PICKET_STORM_DNS", if dns { "1" } else { "0" })
            .env("PICKET_STORM_EBPF", if ebpf { "1" } else { "0" })
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(sensor.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "READY");

        let mut clients = Vec::new();
        let started = Instant::now();
        if rate != Some(0) {
            for index in 0..2 {
                let name = format!(
                    "{}-client{index}-{poll_ms}-{}-{}",
                    self.network,
                    rate.unwrap_or(0),
                    u8::from(ebpf)
                );
                let per_client = rate.map(|r| r / 2).unwrap_or(0);
                let mut lab_env = vec![
                    format!("PICKET_STORM_SERVERS={}", self.servers.join(",")),
                    format!("PICKET_STORM_RATE={per_client}"),
                    format!("PICKET_STORM_SECS={secs}"),
                ];
                lab_env.push(format!("PICKET_STORM_NAME={name}"));
                let exe = std::env::current_exe().unwrap();
                let mount = format!("{}:/picket-storm:ro", exe.display());
                let mut args: Vec<String> = [
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--network",
                    &self.network,
                    "-v",
                    &mount,
                    "-v",
                    "/usr/lib:/lib:ro",
                    "-v",
                    "/usr/lib64:/lib64:ro",
                    "-e",
                    &format!("{ROLE_ENV}=client"),
                    "--sysctl",
                    "net.ipv4.ip_local_port_range=1024 65000",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                for value in &lab_env {
                    args.push("-e".into());
                    args.push(value.clone());
                }
                args.push("picket-test/busybox:latest".into());
                args.push("/picket-storm".into());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run("docker", &args);
                clients.push(name);
            }
        }

        let mut connections = 0;
        if clients.is_empty() {
            std::thread::sleep(Duration::from_secs(secs));
        }
        for name in &clients {
            run("docker", &["wait", name]);
            let logs = run("docker", &["logs", name]);
            let made: u64 = logs
                .lines()
                .find_map(|l| l.strip_prefix("CONNECTIONS "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("client {name} printed no count: {logs}"));
            connections += made;
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
        let seconds = started.elapsed().as_secs_f64().min(secs as f64).max(1.0);
        std::thread::sleep(Duration::from_millis(2 * poll_ms + 200));

        std::fs::write(&stop_file, b"").unwrap();
        let summary: Value = lines
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("SUMMARY ")
                    .map(|s| serde_json::from_str(s).unwrap())
            })
            .expect("collector summary");
        sensor.wait().unwrap();
        PhaseResult {
            connections,
            seconds,
            reported: summary["reported"].as_u64().unwrap(),
            cpu_ms: summary["cpu_ms"].as_f64().unwrap(),
            user_ms: summary["user_ms"].as_f64().unwrap(),
            peak_rss_kib: summary["peak_rss_kib"].as_u64().unwrap(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

fn server() {
    let listener = TcpListener::bind(("0.0.0.0", STORM_PORT)).unwrap();
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        let _ = stream.write_all(b"x");
    }
}

fn client() {
    let servers: Vec<SocketAddr> = std::env::var("PICKET_STORM_SERVERS")
        .unwrap()
        .split(',')
        .map(|ip| SocketAddr::new(ip.parse().unwrap(), STORM_PORT))
        .collect();
    let rate: u64 = std::env::var("PICKET_STORM_RATE").unwrap().parse().unwrap();
    let secs: u64 = std::env::var("PICKET_STORM_SECS").unwrap().parse().unwrap();
    let made = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);

    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|index| {
            let made = made.clone();
            let servers = servers.clone();
            std::thread::spawn(move || {
                // Paced threads send at fixed intervals, catching up after a
                // slow connection; rate 0 means no pacing.
                let interval = (rate > 0)
                    .then(|| Duration::from_secs_f64(CLIENT_THREADS as f64 / rate as f64));
                let mut next = Instant::now();
                let mut buf = [0u8; 8];
                let mut turn = index;
                while Instant::now() < deadline {
                    if let Some(interval) = interval {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += interval;
                    }
                    turn += 1;
                    if let Ok(mut stream) = TcpStream::connect(servers[turn % servers.len()]) {
                        let _ = stream.read(&mut buf);
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    println!("CONNECTIONS {}", made.load(Ordering::Relaxed));
}

fn sensor() {
    let stop_file = PathBuf::from(std::env::var("PICKET_STORM_STOP").unwrap());
    let poll_ms: u64 = std::env::var("PICKET_STORM_POLL_MS")
        .unwrap()
        .parse()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8192);
    let config = NetConfig {
        poll_interval: Duration::from_millis(poll_ms),
        sock_diag: std::env::var("PICKET_STORM_SOCK_DIAG").as_deref() != Ok("0"),
        dns_capture: std::env::var("PICKET_STORM_DNS").as_deref() != Ok("0"),
        hostname: "bench".into(),
        ..NetConfig::default()
    };
    let resolver = picket_sensor::container::ContainerResolver::new(std::path::Path::new("/"));
    let mut tier = None;
    let kernel = if std::env::var("PICKET_STORM_EBPF").as_deref() == Ok("1") {
        let (fact_tx, fact_rx) = std::sync::mpsc::sync_channel(65536);
        let (net_tx, net_rx) = std::sync::mpsc::sync_channel(65536);
        let ebpf_config = ebpf::EbpfConfig {
            files: ebpf::FileConfig {
                enabled: false,
                ..Default::default()
            },
            ..Default::default()
        };
        let handle = ebpf::start_with_network(&ebpf_config, fact_tx, Some(net_tx))
            .expect("ebpf tier starts");
        std::thread::spawn(move || for _fact in fact_rx {});
        tier = Some(handle);
        Some(net::kernel::KernelInput {
            events: net_rx,
            processes: None,
        })
    } else {
        None
    };
    let handle = net::spawn(config, "/".into(), None, Arc::new(resolver), kernel, tx).unwrap();
    println!("READY");

    let stop = AtomicBool::new(false);
    let mut reported = 0u64;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(record) = rx.try_recv() {
            let event = &record.event;
            if record.routing.event_type == "NEW_TCP4_CONNECTION"
                && event["IS_OUTGOING"] == 1
                && event["DESTINATION"]["PORT"] == STORM_PORT
            {
                reported += 1;
            }
        }
        if stop_file.exists() {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let losses = tier.as_ref().map(|t| t.losses());
    drop(rx);
    drop(tier);
    handle.stop();
    if let Some(losses) = losses {
        eprintln!("ebpf losses: {losses:?}");
    }

    println!(
        "SUMMARY {}",
        json!({
            "reported": reported,
            "cpu_ms": cpu_ms().0 + cpu_ms().1,
            "user_ms": cpu_ms().0,
            "peak_rss_kib": peak_rss_kib(),
        })
    );
}

/// User and system CPU time of this process, in milliseconds.
fn cpu_ms() -> (f64, f64) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is valid for one `rusage`, which getrusage fills.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: zero-initialised and filled by the call above.
    let usage = unsafe { usage.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    (ms(usage.ru_utime), ms(usage.ru_stime))
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn docker_ready() -> bool {
    Command::new("docker")
        .args(["image", "inspect", "picket-test/busybox:latest"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
