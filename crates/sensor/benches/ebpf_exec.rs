//! Exec storm benchmark of the eBPF tier, side by side with no sensor and
//! with bpftrace.
//!
//! Run as root: `cargo bench -p picket-sensor --bench ebpf_exec`.
//! `PICKET_BENCH_EXECS` sets the execs per run (default 4000).
//!
//! Each run starts the observer in its own process (this binary with
//! `--sensor`, or bpftrace). It then runs `/bin/true <nonce> <i>` N times on
//! the host or in a `picket-test/busybox` container, at 2,000/s or as fast as
//! it goes. Reported per run:
//! - the share of execs the observer captured with the full argv;
//! - the observer's CPU time per 1,000 execs (user + system of its process).
//!   The BPF programs run in the exec'ing tasks, so their cost shows up as
//!   workload slow-down instead;
//! - the workload's wall time and CPU time against the run without observer;
//! - the observer's peak RSS (VmHWM).
//!
//! bpftrace reads argv at `sys_enter_execve` from the caller's user
//! pointers (`join(args->argv)`). Its tracepoints need tracefs, so it runs in
//! a private mount namespace with tracefs mounted there.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use picket_sensor::collect::ebpf::{self, EbpfConfig, FileConfig};
use picket_sensor::collect::Fact;

const IMAGE: &str = "picket-test/busybox:latest";

#[derive(Clone, Copy, PartialEq)]
enum Place {
    Host,
    Container,
}

#[derive(Clone, Copy, PartialEq)]
enum Observer {
    None,
    Picket,
    Bpftrace,
}

impl Observer {
    fn name(self) -> &'static str {
        match self {
            Observer::None => "none",
            Observer::Picket => "picket",
            Observer::Bpftrace => "bpftrace",
        }
    }
}

struct Workload {
    wall: Duration,
    cpu: Duration,
}

struct Row {
    place: &'static str,
    target: String,
    observer: &'static str,
    achieved_rate: f64,
    captured: Option<f64>,
    observer_cpu_ms_per_1000: Option<f64>,
    wall_slowdown: f64,
    cpu_slowdown: f64,
    peak_rss_kib: Option<u64>,
    rss_kib: Option<u64>,
    losses: String,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--sensor") {
        sensor_child(&args[2]);
        return;
    }
    if args.iter().any(|a| a == "--list") {
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
    let execs: u32 = std::env::var("PICKET_BENCH_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let docker = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    let bpftrace = Command::new("bpftrace").arg("--version").output().is_ok();

    let mut rows = Vec::new();
    let places: &[Place] = if docker {
        &[Place::Host, Place::Container]
    } else {
        &[Place::Host]
    };
    for &place in places {
        for rate in [Some(2000.0), None] {
            let mut baseline: Option<Workload> = None;
            for observer in [Observer::None, Observer::Picket, Observer::Bpftrace] {
                if observer == Observer::Bpftrace && !bpftrace {
                    continue;
                }
                let row = run_case(place, rate, observer, execs, baseline.as_ref());
                if observer == Observer::None {
                    baseline = Some(row.1);
                }
                rows.push(row.0);
            }
        }
    }
    print_table(execs, &rows);
}

fn run_case(
    place: Place,
    rate: Option<f64>,
    observer: Observer,
    execs: u32,
    baseline: Option<&Workload>,
) -> (Row, Workload) {
    let nonce = format!("pktbench{}x{}", std::process::id(), rand_suffix());
    let mut watcher = match observer {
        Observer::None => None,
        Observer::Picket => Some(Watcher::picket(&nonce)),
        Observer::Bpftrace => Some(Watcher::bpftrace(&nonce)),
    };
    let cpu_before = watcher.as_ref().map(|w| process_cpu(w.child.id()));

    let workload = match place {
        Place::Host => host_storm(&nonce, execs, rate),
        Place::Container => container_storm(&nonce, execs, rate),
    };
    std::thread::sleep(Duration::from_millis(1500));

    let (captured, cpu, rss, losses) = match watcher.as_mut() {
        Some(w) => {
            let cpu = process_cpu(w.child.id()) - cpu_before.unwrap_or_default();
            let rss = (
                status_kib(w.child.id(), "VmHWM:"),
                status_kib(w.child.id(), "VmRSS:"),
            );
            let (count, losses) = w.finish();
            (
                Some(count as f64 / f64::from(execs)),
                Some(cpu),
                rss,
                losses,
            )
        }
        None => (None, None, (None, None), String::new()),
    };
    let base = baseline.unwrap_or(&workload);
    let row = Row {
        place: if place == Place::Host {
            "host"
        } else {
            "container"
        },
        target: rate
            .map(|r| format!("{r:.0}/s"))
            .unwrap_or_else(|| "max".to_owned()),
        observer: observer.name(),
        achieved_rate: f64::from(execs) / workload.wall.as_secs_f64(),
        captured,
        observer_cpu_ms_per_1000: cpu.map(|c| c.as_secs_f64() * 1000.0 * 1000.0 / f64::from(execs)),
        wall_slowdown: workload.wall.as_secs_f64() / base.wall.as_secs_f64() - 1.0,
        cpu_slowdown: workload.cpu.as_secs_f64() / base.cpu.as_secs_f64().max(1e-9) - 1.0,
        peak_rss_kib: rss.0,
        rss_kib: rss.1,
        losses,
    };
    (row, workload)
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    nanos % 1_000_000
}

/// An observer process and the execs it reported, by index.
struct Watcher {
    child: Child,
    seen: Arc<Mutex<HashSet<u32>>>,
    summary: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn picket(nonce: &str) -> Watcher {
        let exe = std::env::current_exe().expect("bench binary path");
        let child = Command::new(exe)
            .args(["--sensor", nonce])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sensor child");
        Watcher::follow(child, nonce, "ready")
    }

    fn bpftrace(nonce: &str) -> Watcher {
        let program =
            r#"tracepoint:syscalls:sys_enter_execve { printf("%d ", pid); join(args->argv); }"#;
        let script =
            format!("mount -t tracefs tracefs /sys/kernel/tracing && exec bpftrace -e '{program}'");
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bpftrace");
        Watcher::follow(child, nonce, "Attaching")
    }

    /// Reads the observer's stdout: lines `... /bin/true <nonce> <i>` count
    /// as captured with full argv; waits for the line starting with `ready`.
    fn follow(mut child: Child, nonce: &str, ready: &str) -> Watcher {
        let stdout = child.stdout.take().expect("piped stdout");
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let summary = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = sync_channel(1);
        let (nonce, ready) = (nonce.to_owned(), ready.to_owned());
        let (seen_w, summary_w) = (seen.clone(), summary.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with(&ready) {
                    let _ = ready_tx.try_send(());
                    continue;
                }
                if let Some(rest) = line.strip_prefix("summary ") {
                    *summary_w.lock().unwrap() = rest.to_owned();
                    continue;
                }
                let words: Vec<&str> = line.split_whitespace().collect();
                if let Some(pos) = words.iter().position(|w| *w == nonce) {
                    if pos >= 1 && words[pos - 1] == "/bin/true" && words.len() == pos + 2 {
                        if let Ok(i) = words[pos + 1].parse() {
                            seen_w.lock().unwrap().insert(i);
                        }
                    }
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("observer did not become ready");
        std::thread::sleep(Duration::from_millis(300));
        Watcher {
            child,
            seen,
            summary,
            reader: Some(reader),
        }
    }

    /// Stops the observer; returns the captured count and its loss summary.
    fn finish(&mut self) -> (usize, String) {
        drop(self.child.stdin.take());
        // SAFETY: kill sends SIGINT to the observer this benchmark started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let count = self.seen.lock().unwrap().len();
        (count, self.summary.lock().unwrap().clone())
    }
}

/// Runs the eBPF tier as the `--sensor` child. Prints each exec of the
/// benchmark's nonce as `<pid> <argv...>`, then a summary line on SIGINT or
/// when stdin closes.
fn sensor_child(nonce: &str) {
    let (tx, rx) = sync_channel(65_536);
    let config = EbpfConfig {
        files: FileConfig {
            enabled: false,
            ..FileConfig::default()
        },
        ..EbpfConfig::default()
    };
    let handle = ebpf::start(&config, tx).expect("start the eBPF tier");
    println!("ready");
    // Buffered, so the harness's own output costs little of the measured CPU.
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    std::thread::spawn(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        // stdin closed, so the parent is done.
        // SAFETY: raise only delivers SIGINT to this process, whose handler sets STOP.
        unsafe { libc::raise(libc::SIGINT) };
    });
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    while !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(fact) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        if let Fact::Exec(exec) = fact {
            let Some(details) = exec.details else {
                continue;
            };
            if details.argv.get(1).map(Vec::as_slice) == Some(nonce.as_bytes())
                && !details.argv_truncated
            {
                let argv: Vec<String> = details
                    .argv
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let _ = writeln!(out, "{} {}", exec.pid, argv.join(" "));
            }
        }
    }
    let losses = handle.losses();
    let _ = writeln!(
        out,
        "summary ringbuf {} argv {} queue {} events {}",
        losses.ringbuf_reserve,
        losses.argv_unreadable,
        losses.queue_overflow,
        handle.events_read()
    );
    let _ = out.flush();
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn children_cpu() -> Duration {
    // SAFETY: getrusage fills one rusage struct that lives for the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `/bin/true <nonce> <i>` from two threads, paced to `rate` if given.
fn host_storm(nonce: &str, execs: u32, rate: Option<f64>) -> Workload {
    let threads = 2u32;
    let cpu_before = children_cpu();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let mut i = t;
                while i < execs {
                    if let Some(rate) = rate {
                        let due = start + Duration::from_secs_f64(f64::from(i) / rate);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let _ = Command::new("/bin/true")
                        .arg(nonce)
                        .arg(i.to_string())
                        .status();
                    i += threads;
                }
            });
        }
    });
    Workload {
        wall: start.elapsed(),
        cpu: children_cpu() - cpu_before,
    }
}

/// Runs the storm in a busybox container as a shell loop. The loop times
/// itself with /proc/uptime (10 ms resolution) and `times`, so container
/// start-up is not counted. Pacing checks the schedule every 20 execs and
/// sleeps while the loop is ahead.
fn container_storm(nonce: &str, execs: u32, rate: Option<f64>) -> Workload {
    let pace = match rate {
        Some(rate) => format!(
            "if [ $((i % 20)) -eq 0 ]; then read n x < /proc/uptime; n=${{n%.*}}${{n#*.}}; due=$((s + i * 100 / {rate:.0})); \
             if [ $n -lt $due ]; then usleep $(( (due - n) * 10000 )); fi; fi;"
        ),
        None => String::new(),
    };
    let script = format!(
        "read s x < /proc/uptime; s=${{s%.*}}${{s#*.}}; i=0; while [ $i -lt {execs} ]; do {pace} /bin/true {nonce} $i; i=$((i+1)); done; \
         read e x < /proc/uptime; e=${{e%.*}}${{e#*.}}; echo wall_cs $((e - s)); times"
    );
    let name = format!("pkt-ebpf-bench-{}", rand_suffix());
    let out = Command::new("docker")
        .args(["run", "--rm", "--name", &name, IMAGE, "sh", "-c", &script])
        .output()
        .expect("docker run");
    let text = String::from_utf8_lossy(&out.stdout);
    let wall_cs: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("wall_cs "))
        .and_then(|v| v.trim().parse().ok())
        .expect("container loop prints its wall time");
    // `times` prints the shell's times, then its children's: "0m1.2s 0m0.5s".
    let children = text.lines().last().unwrap_or_default();
    let cpu = children.split_whitespace().map(parse_times).sum();
    Workload {
        wall: Duration::from_millis(wall_cs * 10),
        cpu,
    }
}

fn parse_times(value: &str) -> Duration {
    let (minutes, seconds) = value
        .trim_end_matches('s')
        .split_once('m')
        .unwrap_or(("0", "0"));
    let minutes: f64 = minutes.parse().unwrap_or(0.0);
    let seconds: f64 = seconds.parse().unwrap_or(0.0);
    Duration::from_secs_f64(minutes * 60.0 + seconds)
}

fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = stat[end + 2..].split(' ').collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Reads a `/proc/<pid>/status` memory field such as `VmHWM:`, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn print_table(execs: u32, rows: &[Row]) {
    println!("exec storm: {execs} execs of /bin/true <nonce> <i> per run");
    println!(
        "{:<10} {:<8} {:<9} {:>7} {:>9} {:>11} {:>7} {:>7} {:>9} {:>9}  observer losses",
        "place",
        "target",
        "observer",
        "rate/s",
        "captured",
        "obs ms/1k",
        "wall+%",
        "cpu+%",
        "peak RSS",
        "end RSS"
    );
    for r in rows {
        println!(
            "{:<10} {:<8} {:<9} {:>7.0} {:>9} {:>11} {:>7.1} {:>7.1} {:>9} {:>9}  {}",
            r.place,
            r.target,
            r.observer,
            r.achieved_rate,
            r.captured
                .map(|c| format!("{:.2}%", c * 100.0))
                .unwrap_or_else(|| "-".into()),
            r.observer_cpu_ms_per_1000
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "-".into()),
            r.wall_slowdown * 100.0,
            r.cpu_slowdown * 100.0,
            r.peak_rss_kib
                .map(|k| format!("{:.1}M", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            r.rss_kib
                .map(|k| format!("{:.1}M", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            r.losses
        );
    }
}
