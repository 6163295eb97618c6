//! Shared pieces of the network tests: prerequisite checks, a Docker
//! container id lookup for the `CONTAINER` seam, and the sensor child that
//! prints the collector's records.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picket_sensor::collect::net::{self, NetConfig};
use serde_json::{json, Value};

pub mod workload;

/// Returns false (after printing why) when a prerequisite is missing and the
/// test may be skipped; panics instead when `CI=true`.
pub fn require(condition: bool, reason: &str) -> bool {
    if condition {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing in CI: {reason}");
    }
    println!("skipped: {reason}");
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn docker_ready() -> bool {
    Command::new("docker")
        .args(["image", "inspect", "picket-test/busybox:latest"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command and returns its trimmed stdout; panics with stderr on
/// failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Environment of the sensor child process.
pub const CHILD_ENV: &str = "PICKET_NET_SENSOR_CHILD";
const STOP_FILE_ENV: &str = "PICKET_NET_STOP_FILE";

/// Body of the sensor child: runs the collector with `HOST_FS`/`NET_NS` from
/// the environment and prints every record as `RECORD <json>`, then the
/// counters as `STATS <json>`, until the stop file exists.
pub fn sensor_child_main() {
    let host_fs = PathBuf::from(std::env::var("HOST_FS").unwrap_or_else(|_| "/".into()));
    let net_ns = std::env::var_os("NET_NS").map(PathBuf::from);
    let stop_file = PathBuf::from(std::env::var(STOP_FILE_ENV).expect("stop file variable"));
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let config = NetConfig {
        poll_interval: Duration::from_millis(500),
        summary_interval: Duration::from_secs(3),
        hostname: "test-host".into(),
        ..NetConfig::default()
    };
    let resolver = picket_sensor::container::ContainerResolver::new(&host_fs);
    // With PICKET_NET_EBPF=1 the eBPF tier runs too and feeds its network
    // reports to the collector; its process facts are read and dropped.
    let mut ebpf_tier = None;
    let kernel = if std::env::var("PICKET_NET_EBPF").as_deref() == Ok("1") {
        let (fact_tx, fact_rx) = std::sync::mpsc::sync_channel(4096);
        let (net_tx, net_rx) = std::sync::mpsc::sync_channel(4096);
        let ebpf_config = picket_sensor::collect::ebpf::EbpfConfig {
            host_fs: host_fs.clone(),
            ..Default::default()
        };
        let tier =
            picket_sensor::collect::ebpf::start_with_network(&ebpf_config, fact_tx, Some(net_tx))
                .expect("ebpf tier starts");
        assert!(
            tier.network_unavailable.is_none(),
            "ebpf network programs unavailable: {:?}",
            tier.network_unavailable
        );
        // Enrichment runs as in the sensor, so reports of processes that
        // exited before /proc was read keep their container.
        let registry = Arc::new(picket_sensor::process::ProcessRegistry::default());
        let fs = picket_sensor::hostfs::HostFs::new(&host_fs);
        let mut enricher = picket_sensor::enrich::Enricher::new(
            fs.clone(),
            picket_sensor::namespaces::read_boot_id(&fs),
            "test-host".into(),
            picket_sensor::sensor::resolver_lookup(
                picket_sensor::container::ContainerResolver::new(&host_fs),
            ),
            Arc::new(picket_sensor::enrich::Stats::default()),
        )
        .with_registry(registry.clone());
        // The processes already running, as the sensor's start scan
        // reports them, then the tier's facts.
        let running: Vec<u32> = std::fs::read_dir(host_fs.join("proc"))
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        std::thread::spawn(move || {
            for pid in running {
                enricher.handle(picket_sensor::collect::Fact::Existing { pid }, &mut |_| {});
            }
            for fact in fact_rx {
                enricher.handle(fact, &mut |_| {});
            }
        });
        ebpf_tier = Some(tier);
        Some(net::kernel::KernelInput {
            events: net_rx,
            processes: Some(registry),
        })
    } else {
        None
    };
    let handle = net::spawn(config, host_fs, net_ns, Arc::new(resolver), kernel, tx)
        .expect("network collector starts");
    println!("READY");

    loop {
        while let Ok(record) = rx.try_recv() {
            println!("RECORD {}", record.to_json_line());
        }
        if stop_file.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats: serde_json::Map<String, Value> = handle
        .stats
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    println!("STATS {}", Value::Object(stats));
    drop(rx);
    drop(ebpf_tier);
    handle.stop();
}

/// A running sensor child and the lines it printed so far.
pub struct SensorChild {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    stop_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// What the sensor child reported.
pub struct SensorOutput {
    pub records: Vec<Value>,
    pub stats: Value,
}

impl SensorChild {
    /// Starts the current test binary as the sensor child, running the test
    /// named `entry`, through `wrapper` (a shell script run by `sh -c` that
    /// ends with `exec "$@"`) and with `env` set. Waits until the collector
    /// started.
    pub fn start(entry: &str, wrapper: &str, env: &[(&str, &str)]) -> SensorChild {
        let dir = tempfile::tempdir().unwrap();
        let stop_file = dir.path().join("stop");
        let exe = std::env::current_exe().unwrap();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(wrapper)
            .arg("sh")
            .arg(&exe)
            .args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env(CHILD_ENV, "1")
            .env(STOP_FILE_ENV, &stop_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("sensor child starts");

        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = ready_tx.send(());
                }
                sink.lock().unwrap().push(line);
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("sensor child printed READY");
        SensorChild {
            child,
            lines,
            reader: Some(reader),
            stop_file,
            _dir: dir,
        }
    }

    /// Stops the child and returns its records and counters.
    pub fn finish(mut self) -> SensorOutput {
        std::fs::write(&self.stop_file, b"").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "sensor child failed: {status}");
        self.reader.take().unwrap().join().unwrap();
        let lines = self.lines.lock().unwrap();
        let records = lines
            .iter()
            .filter_map(|l| l.strip_prefix("RECORD "))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let stats = lines
            .iter()
            .find_map(|l| l.strip_prefix("STATS "))
            .map(|l| serde_json::from_str(l).unwrap())
            .expect("sensor child printed its counters");
        SensorOutput { records, stats }
    }
}

impl Drop for SensorChild {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = std::fs::write(&self.stop_file, b"");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Records of `event_type`.
pub fn of_type<'a>(records: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["routing"]["event_type"] == event_type)
        .collect()
}
