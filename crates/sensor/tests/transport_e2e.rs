//! End-to-end tests of the sensor transport against a real `picket-server`
//! over TLS on loopback.
//!
//! The sensor side runs in a child process: this test binary started again
//! with `PICKET_TRANSPORT_HARNESS` set, which makes `harness_process` send a
//! numbered set of records through `picket_sensor::transport` and exit. Each
//! record's `event_id` encodes its run and number, so the tests count
//! exactly which events the server stored.
//!
//! The server binary is `$PICKET_SERVER_BIN`, else the tests run
//! `cargo build -p picket-server` once and use the result. When that fails
//! the tests print `skipped:` and pass, or fail when `CI=true`.
//!
//! `PICKET_OUTAGE_SECS` sets how long the server stays down in
//! `server_down_then_back_delivers_everything` (default 60).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use picket_event::key::InstallationKey;
use picket_event::Record;
use picket_sensor::transport::{self, LinkStatus, TransportConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const HARNESS_ENV: &str = "PICKET_TRANSPORT_HARNESS";
const TEST_EVENT: &str = "TRANSPORT_TEST";

// ---------------------------------------------------------------------------
// Child process: the sensor side.

/// Settings passed to the child process as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HarnessConfig {
    key: String,
    state_dir: PathBuf,
    host_fs: PathBuf,
    run: u32,
    first: u64,
    count: u64,
    /// Records per second; 0 sends as fast as the channel takes them.
    rate: u64,
    batch_max_records: usize,
    spool_max_bytes: u64,
    drain_timeout_ms: u64,
    backoff_max_ms: u64,
    /// Batch age limit; a long one makes every batch exactly
    /// `batch_max_records` long.
    flush_interval_ms: u64,
    /// Print `SENT <n>` after every 100 records handed to the transport.
    progress: bool,
}

impl HarnessConfig {
    fn new(key: &str, state_dir: &Path, host_fs: &Path, run: u32, count: u64) -> Self {
        HarnessConfig {
            key: key.to_owned(),
            state_dir: state_dir.to_owned(),
            host_fs: host_fs.to_owned(),
            run,
            first: 0,
            count,
            rate: 0,
            batch_max_records: 200,
            spool_max_bytes: 64 << 20,
            drain_timeout_ms: 60_000,
            backoff_max_ms: 2_000,
            flush_interval_ms: 50,
            progress: false,
        }
    }
}

/// Final line the child prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
struct HarnessReport {
    sid: Option<String>,
    records_received: u64,
    events_acked: u64,
    spooled_batches: u64,
    /// Connection attempts, the first one included.
    connects: u64,
    error: Option<String>,
    mismatch: Option<(String, String)>,
}

/// Entry point of the child process. When the harness variable is not set
/// this test has nothing to do: it only runs inside the child.
#[test]
fn harness_process() {
    let Ok(json) = std::env::var(HARNESS_ENV) else {
        return;
    };
    let config: HarnessConfig = serde_json::from_str(&json).expect("harness config");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(run_harness(config));
    // A leading newline keeps the marker off libtest's "test ... " line.
    println!("\nREPORT {}", serde_json::to_string(&report).unwrap());
    let code = if report.error.is_some() { 2 } else { 0 };
    std::process::exit(code);
}

async fn run_harness(config: HarnessConfig) -> HarnessReport {
    let key = match transport::installation_key_from_arg(&config.key, |_| None) {
        Ok(key) => key,
        Err(error) => {
            return HarnessReport {
                sid: None,
                records_received: 0,
                events_acked: 0,
                spooled_batches: 0,
                connects: 0,
                error: Some(format!("{:#}", anyhow::Error::from(error))),
                mismatch: None,
            }
        }
    };
    let mut settings = TransportConfig::new(key, "harness-host".into());
    settings.state_dir = config.state_dir.clone();
    settings.host_fs = config.host_fs.clone();
    settings.batch_max_records = config.batch_max_records;
    settings.spool_max_bytes = config.spool_max_bytes;
    settings.drain_timeout = Duration::from_millis(config.drain_timeout_ms);
    settings.backoff_max = Duration::from_millis(config.backoff_max_ms);
    settings.flush_interval = Duration::from_millis(config.flush_interval_ms);
    settings.tier = "test".into();

    let (tx, rx) = tokio::sync::mpsc::channel(10_000);
    let mut handle = transport::spawn(settings, rx).expect("spawn transport");
    let (_, no_tasks) = tokio::sync::mpsc::channel(1);
    let mut tasks = std::mem::replace(&mut handle.tasks, no_tasks);
    tokio::spawn(async move {
        while let Some(task) = tasks.recv().await {
            println!("\nTASK {} {}", task.task_id, task.command);
        }
    });
    let mut status = handle.status.clone();
    let watcher = tokio::spawn(async move {
        let mut mismatch = None;
        loop {
            if let LinkStatus::CertificateMismatch {
                expected,
                presented,
            } = &*status.borrow_and_update()
            {
                mismatch = Some((expected.clone(), presented.clone()));
            }
            if status.changed().await.is_err() {
                return mismatch;
            }
        }
    });
    let mut enrollment = handle.enrollment.clone();
    tokio::spawn(async move {
        if let Ok(e) = enrollment.wait_for(Option::is_some).await {
            println!("\nSID {}", e.as_ref().unwrap().sid);
        }
    });

    let start = Instant::now();
    for n in config.first..config.first + config.count {
        let mut record = Record::new(TEST_EVENT, "harness-host");
        record.routing.event_id = event_id(config.run, n);
        record.set("RUN", config.run).set("N", n);
        tx.send(record).await.unwrap();
        if config.progress && (n + 1) % 100 == 0 {
            println!("\nSENT {}", n + 1);
        }
        if config.rate > 0 {
            let due =
                start + Duration::from_secs_f64((n - config.first + 1) as f64 / config.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    drop(tx);

    let result = handle.join.await.expect("transport task panicked");
    let connects = handle
        .stats
        .connects
        .load(std::sync::atomic::Ordering::Relaxed);
    let sid = handle.enrollment.borrow().as_ref().map(|e| e.sid.clone());
    let mismatch = watcher.await.unwrap();
    match result {
        Ok(summary) => HarnessReport {
            sid,
            records_received: summary.records_received,
            events_acked: summary.events_acked,
            spooled_batches: summary.spooled_batches,
            connects,
            error: None,
            mismatch,
        },
        Err(error) => HarnessReport {
            sid,
            records_received: 0,
            events_acked: 0,
            spooled_batches: 0,
            connects,
            error: Some(format!("{:#}", anyhow::Error::from(error))),
            mismatch,
        },
    }
}

fn event_id(run: u32, n: u64) -> String {
    uuid::Uuid::from_u128((u128::from(run) << 64) | u128::from(n)).to_string()
}

// ---------------------------------------------------------------------------
// Parent side: server, admin CLI, harness processes.

fn server_binary() -> Option<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    if let Some(path) = std::env::var_os("PICKET_SERVER_BIN") {
        return Some(PathBuf::from(path));
    }
    match BUILT.get_or_init(build_server) {
        Ok(path) => Some(path.clone()),
        Err(message) if std::env::var("CI").as_deref() == Ok("true") => panic!("{message}"),
        Err(message) => {
            println!("skipped: {message}");
            None
        }
    }
}

/// Builds `picket-server` from this checkout into the target directory this
/// test runs from, so the server under test matches the sensor's source.
/// Cargo does not hold its build lock while tests run, so this does not
/// wait on the `cargo test` that started us.
fn build_server() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("test binary is not in <target>/<profile>/deps")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let target_dir = profile_dir
        .parent()
        .ok_or("test binary has no target directory")?;
    let mut command = Command::new(&cargo);
    command
        .current_dir(&workspace)
        .args(["build", "--quiet", "-p", "picket-server", "--target-dir"])
        .arg(target_dir);
    if profile_dir.ends_with("release") {
        command.arg("--release");
    }
    let output = command
        .output()
        .map_err(|e| format!("failed to run {cargo} to build picket-server: {e}"))?;

    let binary = profile_dir.join("picket-server");
    if !output.status.success() || !binary.exists() {
        return Err(format!(
            "`cargo build -p picket-server` failed, so there is no server to test against; set \
             PICKET_SERVER_BIN to use a prebuilt one: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(binary)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    bin: PathBuf,
    data: PathBuf,
    grpc_port: u16,
    http_port: u16,
    child: Option<Child>,
    org: String,
}

impl Server {
    /// Creates a data dir with one org, without starting the server.
    fn new(bin: PathBuf, data: PathBuf) -> Self {
        let mut server = Server {
            bin,
            data,
            grpc_port: free_port(),
            http_port: free_port(),
            child: None,
            org: String::new(),
        };
        server.org = server.admin(&["org", "create", "acme"]).trim().to_owned();
        assert_eq!(
            server.org.len(),
            36,
            "org create prints a UUID: {:?}",
            server.org
        );
        server
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc_port)
    }

    fn admin(&self, args: &[&str]) -> String {
        let output = Command::new(&self.bin)
            .arg("--data")
            .arg(&self.data)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "picket-server {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn create_key(&self) -> String {
        let url = self.url();
        self.admin(&[
            "key", "create", "--org", &self.org, "--tags", "e2e", "--url", &url,
        ])
        .trim()
        .to_owned()
    }

    fn start(&mut self) {
        self.start_with_min_free_mb(1);
    }

    /// Starts the server; it refuses to store batches while its file system
    /// has less than `min_free_mb` MiB free.
    fn start_with_min_free_mb(&mut self, min_free_mb: u64) {
        assert!(self.child.is_none());
        let log =
            std::fs::File::create(self.data.join(format!("serve-{}.log", now_nanos()))).unwrap();
        let child = Command::new(&self.bin)
            .arg("--data")
            .arg(&self.data)
            .args([
                "serve",
                "--grpc-listen",
                &format!("127.0.0.1:{}", self.grpc_port),
            ])
            .args(["--http-listen", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--min-free-mb", &min_free_mb.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.grpc_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server did not listen on {} within 30 s",
                self.grpc_port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Event ids of stored test events: all of them, duplicates included.
    /// The server rejects `--type` for a type no sensor sends while none is
    /// stored, so the test type is picked out here.
    fn stored_test_events(&self) -> Vec<String> {
        self.query(&[])
            .iter()
            .filter(|r| r.routing.event_type == TEST_EVENT)
            .map(|r| r.routing.event_id.clone())
            .collect()
    }

    fn query(&self, filters: &[&str]) -> Vec<Record> {
        let mut args = vec![
            "events", "query", "--org", &self.org, "--limit", "100000", "--json",
        ];
        args.extend_from_slice(filters);
        self.admin(&args)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("query line {l:?}: {e}")))
            .collect()
    }

    fn cert_fingerprint(&self) -> String {
        let pem = std::fs::read(self.data.join("server.crt")).unwrap();
        let der = rustls_pemfile_der(&pem);
        hex::encode(Sha256::digest(der))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Decodes the first PEM certificate block.
fn rustls_pemfile_der(pem: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).unwrap();
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Creates a fake host root with a machine-id, as mounted at `HOST_FS`.
fn host_fs(dir: &Path) -> PathBuf {
    let root = dir.join("hostfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let id = format!("{:032x}", now_nanos());
    std::fs::write(root.join("etc/machine-id"), format!("{id}\n")).unwrap();
    root
}

struct Harness {
    child: Child,
    stdout_lines: std::sync::mpsc::Receiver<String>,
}

impl Harness {
    fn start(config: &HarnessConfig, log: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "harness_process",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(HARNESS_ENV, serde_json::to_string(config).unwrap())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Harness {
            child,
            stdout_lines: rx,
        }
    }

    /// Waits for a `TASK <id> <command>` line and returns id and command.
    fn wait_task(&self, timeout: Duration) -> (String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout_lines
                .recv_timeout(left)
                .expect("no task reached the harness in time");
            if let Some((_, task)) = line.split_once("TASK ") {
                let (id, command) = task.trim().split_once(' ').unwrap();
                return (id.to_owned(), command.to_owned());
            }
        }
    }

    /// Waits for the `SID` line.
    fn wait_sid(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout_lines
                .recv_timeout(left)
                .expect("harness printed no SID in time");
            if let Some((_, sid)) = line.split_once("SID ") {
                return sid.trim().to_owned();
            }
        }
    }

    /// Waits until the child has handed at least `n` records to the
    /// transport and returns the count it reported.
    fn wait_sent(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout_lines
                .recv_timeout(left)
                .expect("harness progress stalled");
            if let Some((_, sent)) = line.split_once("SENT ") {
                let sent: u64 = sent.trim().parse().unwrap();
                if sent >= n {
                    return sent;
                }
            }
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the child to exit and returns its report and exit code.
    fn finish(mut self, timeout: Duration) -> (HarnessReport, i32) {
        let deadline = Instant::now() + timeout;
        let mut report = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((_, json)) = line.split_once("REPORT ") {
                        report = Some(serde_json::from_str(json).unwrap());
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("harness did not finish within {timeout:?}");
                }
            }
        }
        let status = self.child.wait().unwrap();
        (
            report.expect("harness printed no REPORT line"),
            status.code().unwrap_or(-1),
        )
    }
}

fn run_harness_to_end(
    config: &HarnessConfig,
    log: &Path,
    timeout: Duration,
) -> (HarnessReport, i32) {
    Harness::start(config, log).finish(timeout)
}

fn expected_ids(run: u32, range: std::ops::Range<u64>) -> BTreeSet<String> {
    range.map(|n| event_id(run, n)).collect()
}

/// Asserts that the stored events are exactly `expected`, each once.
fn assert_stored_exactly_once(stored: &[String], expected: &BTreeSet<String>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in stored {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicates.is_empty(),
        "events stored more than once: {duplicates:?}"
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .take(5)
        .collect();
    let missing_count = expected
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .count();
    assert_eq!(
        missing_count, 0,
        "{missing_count} events missing, for example {missing:?}"
    );
    let unexpected = counts.keys().filter(|id| !expected.contains(**id)).count();
    assert_eq!(unexpected, 0, "stored events that were never generated");
    assert_eq!(stored.len(), expected.len());
}

fn setup() -> Option<(tempfile::TempDir, Server)> {
    let bin = server_binary()?;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).unwrap();
    Some((dir, Server::new(bin, data)))
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn server_kill9_mid_stream_stores_each_event_once() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    server.start();

    let mut config = HarnessConfig::new(
        &key,
        &dir.path().join("state"),
        &host_fs(dir.path()),
        1,
        20_000,
    );
    config.rate = 2_500;
    config.batch_max_records = 100;
    let harness = Harness::start(&config, &dir.path().join("sensor.log"));
    harness.wait_sid(Duration::from_secs(30));

    std::thread::sleep(Duration::from_secs(3));
    server.kill9();
    std::thread::sleep(Duration::from_secs(2));
    server.start();
    std::thread::sleep(Duration::from_secs(2));
    server.kill9();
    server.start();

    let (report, code) = harness.finish(Duration::from_secs(180));
    assert_eq!(code, 0, "harness failed: {report:?}");
    assert_eq!(report.records_received, 20_000);
    assert!(
        report.connects >= 3,
        "the sensor reconnected after each kill: {report:?}"
    );
    assert_eq!(report.spooled_batches, 0, "everything was acknowledged");
    assert_stored_exactly_once(&server.stored_test_events(), &expected_ids(1, 0..20_000));
}

#[test]
fn server_down_then_back_delivers_everything() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let outage: u64 = std::env::var("PICKET_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let key = server.create_key();
    server.start();

    let mut config =
        HarnessConfig::new(&key, &dir.path().join("state"), &host_fs(dir.path()), 2, 0);
    config.count = 400 * (outage + 10);
    config.rate = 400;
    config.drain_timeout_ms = (outage + 120) * 1000;
    let harness = Harness::start(&config, &dir.path().join("sensor.log"));
    harness.wait_sid(Duration::from_secs(30));

    std::thread::sleep(Duration::from_secs(3));
    server.kill9();
    let spool_dir = dir.path().join("state/spool");
    std::thread::sleep(Duration::from_secs(outage));
    let spooled: u64 = std::fs::read_dir(&spool_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        spooled > 0,
        "batches made during the outage are in the spool"
    );
    server.start();

    let (report, code) = harness.finish(Duration::from_secs(outage + 180));
    assert_eq!(code, 0, "harness failed: {report:?}");
    assert_eq!(report.spooled_batches, 0);
    assert_stored_exactly_once(
        &server.stored_test_events(),
        &expected_ids(2, 0..config.count),
    );
}

#[test]
fn restart_without_state_keeps_sid() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    server.start();
    let host = host_fs(dir.path());

    let first = HarnessConfig::new(&key, &dir.path().join("state-1"), &host, 3, 50);
    let (report1, code) = run_harness_to_end(
        &first,
        &dir.path().join("sensor-1.log"),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{report1:?}");

    let mut second = HarnessConfig::new(&key, &dir.path().join("state-2"), &host, 3, 50);
    second.first = 50;
    let (report2, code) = run_harness_to_end(
        &second,
        &dir.path().join("sensor-2.log"),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{report2:?}");

    assert!(report1.sid.is_some());
    assert_eq!(
        report1.sid, report2.sid,
        "a sensor without its state dir keeps its SID"
    );
    // The second run's batches must not be taken for replays of the first.
    assert_stored_exactly_once(&server.stored_test_events(), &expected_ids(3, 0..100));

    let other_host = host_fs(&dir.path().join("other"));
    let mut third = HarnessConfig::new(&key, &dir.path().join("state-3"), &other_host, 3, 1);
    third.first = 100;
    let (report3, _) = run_harness_to_end(
        &third,
        &dir.path().join("sensor-3.log"),
        Duration::from_secs(60),
    );
    assert!(report3.sid.is_some());
    assert_ne!(
        report3.sid, report1.sid,
        "another machine-id is another sensor"
    );
}

#[test]
fn wrong_fingerprint_is_reported_and_spooled() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    server.start();
    let real = server.cert_fingerprint();
    let mut decoded = InstallationKey::decode(&key).unwrap();
    assert_eq!(decoded.cert_sha256, real);
    decoded.cert_sha256 = "00".repeat(32);

    let mut config = HarnessConfig::new(
        &decoded.encode(),
        &dir.path().join("state"),
        &host_fs(dir.path()),
        4,
        30,
    );
    config.drain_timeout_ms = 3_000;
    let log = dir.path().join("sensor.log");
    let (report, code) = run_harness_to_end(&config, &log, Duration::from_secs(60));
    assert_eq!(code, 0, "a mismatch is retried, not fatal: {report:?}");
    assert_eq!(report.mismatch, Some(("00".repeat(32), real.clone())));
    assert_eq!(report.sid, None, "no enrollment over an unverified link");
    assert!(report.spooled_batches > 0, "records stay in the spool");

    let stderr = std::fs::read_to_string(&log).unwrap();
    let line = stderr
        .lines()
        .find(|l| l.contains("does not match"))
        .expect("mismatch logged");
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&real) && line.contains(&"00".repeat(32)),
        "{line}"
    );
    assert!(server.stored_test_events().is_empty());
}

#[test]
fn malformed_key_is_rejected_before_connecting() {
    let cases = ["", "hello", "PK1.***", "PK1.eyJ1IjoiaHR0cDovL3gifQ"];
    for text in cases {
        let error = transport::installation_key_from_arg(text, |_| None).unwrap_err();
        let message = format!("{:#}", anyhow::Error::from(error));
        assert!(
            message.starts_with("invalid installation key in -d"),
            "{text:?}: {message}"
        );
    }
    let error = transport::installation_key_from_arg("-", |_| None).unwrap_err();
    assert!(error.to_string().contains("LC_INSTALLATION_KEY"), "{error}");
    let from_env =
        transport::installation_key_from_arg("-", |_| Some("garbage".into())).unwrap_err();
    assert!(format!("{:#}", anyhow::Error::from(from_env)).contains("LC_INSTALLATION_KEY"));

    // A key whose URL is unusable fails at spawn, before any traffic.
    let mut key = InstallationKey {
        url: "https://:99".into(),
        org_id: uuid::Uuid::new_v4().to_string(),
        key_id: uuid::Uuid::new_v4().to_string(),
        secret: "ab".repeat(32),
        cert_sha256: "cd".repeat(32),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime.block_on(async {
        let mut config = TransportConfig::new(key.clone(), "h".into());
        config.state_dir = dir.path().to_owned();
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let error = transport::spawn(config, rx).unwrap_err();
        assert!(
            matches!(error, transport::TransportError::Url(_)),
            "{error}"
        );
    });
    key.url = "https://127.0.0.1:1".into();
    assert!(InstallationKey::decode(&key.encode()).is_ok());
}

#[test]
fn revoked_key_cannot_enroll_but_enrolled_sensor_streams() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    server.start();
    let key_id = InstallationKey::decode(&key).unwrap().key_id;
    let host = host_fs(dir.path());

    let enrolled = HarnessConfig::new(&key, &dir.path().join("state-enrolled"), &host, 5, 10);
    let (report, code) = run_harness_to_end(
        &enrolled,
        &dir.path().join("sensor-1.log"),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{report:?}");

    server.admin(&["key", "revoke", &key_id]);

    let mut again = enrolled.clone();
    again.first = 10;
    let (report, code) = run_harness_to_end(
        &again,
        &dir.path().join("sensor-2.log"),
        Duration::from_secs(60),
    );
    assert_eq!(
        code, 0,
        "a sensor with a saved credential keeps streaming: {report:?}"
    );

    let other_host = host_fs(&dir.path().join("other"));
    let fresh = HarnessConfig::new(&key, &dir.path().join("state-fresh"), &other_host, 6, 10);
    let log = dir.path().join("sensor-3.log");
    let (report, code) = run_harness_to_end(&fresh, &log, Duration::from_secs(60));
    assert_eq!(
        code, 2,
        "enrollment with a revoked key is fatal: {report:?}"
    );
    let error = report.error.expect("error reported");
    assert!(error.contains("rejected the installation key"), "{error}");
    assert_eq!(report.sid, None);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("not retrying")),
        "{stderr}"
    );

    assert_stored_exactly_once(&server.stored_test_events(), &expected_ids(5, 0..20));
}

/// Sums `event/EVENTS` of stored `DATA_DROPPED` events with `reason`.
fn dropped(server: &Server, reason: &str) -> (u64, u64, usize) {
    let records = server.query(&["--type", "DATA_DROPPED"]);
    let matching: Vec<&Record> = records
        .iter()
        .filter(|r| r.event["REASON"] == reason)
        .collect();
    let events = matching
        .iter()
        .map(|r| r.event.get("EVENTS").and_then(|v| v.as_u64()).unwrap_or(0))
        .sum();
    let batches = matching
        .iter()
        .map(|r| r.event["BATCHES"].as_u64().unwrap())
        .sum();
    (events, batches, matching.len())
}

#[test]
fn spool_bound_exceeded_sends_data_dropped() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    let state = dir.path().join("state");
    let host = host_fs(dir.path());

    // Server not started: everything goes to a 64 KiB spool.
    let mut offline = HarnessConfig::new(&key, &state, &host, 7, 5_000);
    offline.batch_max_records = 50;
    offline.flush_interval_ms = 600_000;
    offline.spool_max_bytes = 64 * 1024;
    offline.drain_timeout_ms = 1_000;
    let (report, code) = run_harness_to_end(
        &offline,
        &dir.path().join("sensor-1.log"),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{report:?}");
    assert!(report.spooled_batches > 0);

    server.start();
    let mut online = offline.clone();
    online.count = 0;
    online.drain_timeout_ms = 30_000;
    let (report, code) = run_harness_to_end(
        &online,
        &dir.path().join("sensor-2.log"),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{report:?}");
    assert_eq!(report.spooled_batches, 0);

    let stored: BTreeSet<String> = server.stored_test_events().into_iter().collect();
    let (lost_events, lost_batches, records) = dropped(&server, "spool_full");
    assert!(records >= 1, "a DATA_DROPPED record reached the server");
    assert!(lost_events > 0, "a 64 KiB spool cannot hold 5,000 events");
    assert_eq!(
        stored.len() as u64 + lost_events,
        5_000,
        "every event is stored or counted as dropped"
    );
    assert_eq!(
        lost_events,
        lost_batches * 50,
        "only whole batches of 50 are dropped"
    );
    // Oldest first: what survived is the newest, contiguous tail.
    let first_kept = 5_000 - stored.len() as u64;
    assert_eq!(stored, expected_ids(7, first_kept..5_000));
}

#[test]
fn corrupt_spool_file_is_skipped_and_counted() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    let state = dir.path().join("state");
    let host = host_fs(dir.path());

    let mut offline = HarnessConfig::new(&key, &state, &host, 8, 300);
    offline.batch_max_records = 10;
    offline.flush_interval_ms = 600_000;
    offline.drain_timeout_ms = 500;
    let (report, code) = run_harness_to_end(
        &offline,
        &dir.path().join("sensor-1.log"),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{report:?}");
    assert_eq!(report.spooled_batches, 30);

    // Flip one byte in the middle of the only segment's 16th batch.
    let segments: Vec<PathBuf> = std::fs::read_dir(state.join("spool"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&segments[0], &bytes).unwrap();

    server.start();
    let mut online = offline.clone();
    online.count = 0;
    online.drain_timeout_ms = 30_000;
    let (report, code) = run_harness_to_end(
        &online,
        &dir.path().join("sensor-2.log"),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{report:?}");

    let stored = server.stored_test_events();
    assert_eq!(stored.len(), 290, "exactly one batch of 10 was lost");
    let (_, corrupt_batches, records) = dropped(&server, "spool_corrupt");
    assert_eq!(records, 1);
    assert_eq!(corrupt_batches, 1);
}

#[test]
fn sensor_kill9_while_offline_resends_spool() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    let state = dir.path().join("state");
    let host = host_fs(dir.path());

    // Server not started: batches go to the spool until the kill.
    let mut offline = HarnessConfig::new(&key, &state, &host, 9, 1_000_000);
    offline.rate = 1_000;
    offline.batch_max_records = 100;
    offline.progress = true;
    let harness = Harness::start(&offline, &dir.path().join("sensor-1.log"));
    let sent = harness.wait_sent(3_000, Duration::from_secs(60));
    harness.kill9();

    server.start();
    let mut online = offline.clone();
    online.count = 0;
    online.progress = false;
    online.drain_timeout_ms = 30_000;
    let (report, code) = run_harness_to_end(
        &online,
        &dir.path().join("sensor-2.log"),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{report:?}");
    assert_eq!(report.spooled_batches, 0);

    let stored = server.stored_test_events();
    let delivered = stored.len() as u64;
    // Records still in the channel or in the unsealed batch die with the
    // process: at most one batch plus what arrived within one flush interval.
    assert!(
        delivered + 200 >= sent,
        "only {delivered} of {sent} records survived kill -9"
    );
    assert_stored_exactly_once(&stored, &expected_ids(9, 0..delivered));
}

#[test]
fn foreign_key_is_rejected() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    server.start();
    let valid = InstallationKey::decode(&key).unwrap();
    let other_org = server.admin(&["org", "create", "other"]).trim().to_owned();

    let mut unknown_key = valid.clone();
    unknown_key.key_id = uuid::Uuid::new_v4().to_string();
    let mut wrong_org = valid.clone();
    wrong_org.org_id = other_org;
    let mut wrong_secret = valid.clone();
    wrong_secret.secret = "0".repeat(64);

    for (name, key, expected) in [
        ("unknown key id", unknown_key, "PermissionDenied"),
        ("other org", wrong_org, "PermissionDenied"),
        ("wrong secret", wrong_secret, "Unauthenticated"),
    ] {
        let state = dir.path().join(name.replace(' ', "-"));
        let config = HarnessConfig::new(&key.encode(), &state, &host_fs(&state), 10, 5);
        let (report, code) = run_harness_to_end(
            &config,
            &state.with_extension("log"),
            Duration::from_secs(60),
        );
        assert_eq!(code, 2, "{name}: {report:?}");
        let error = report.error.unwrap_or_default();
        assert!(
            error.contains("rejected the installation key") && error.contains(expected),
            "{name}: {error}"
        );
        assert_eq!(report.sid, None, "{name}");
    }
    assert!(server.stored_test_events().is_empty());
}

#[test]
fn slow_stream_stays_on_one_connection() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    server.start();

    // 45 s at 4 records/s: longer than the connect timeout, the HTTP/2
    // keep-alive interval and the server's Hello timeout together.
    let mut config = HarnessConfig::new(
        &key,
        &dir.path().join("state"),
        &host_fs(dir.path()),
        11,
        180,
    );
    config.rate = 4;
    let (report, code) = run_harness_to_end(
        &config,
        &dir.path().join("sensor.log"),
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{report:?}");
    assert_eq!(
        report.connects, 1,
        "the stream was never re-opened: {report:?}"
    );
    assert_stored_exactly_once(&server.stored_test_events(), &expected_ids(11, 0..180));
}

#[test]
fn server_disk_full_backoff_is_honoured() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    // More free space than any test machine has, so every batch write fails
    // as "disk full" and the server requests a back-off.
    server.start_with_min_free_mb(1 << 40);

    let mut config = HarnessConfig::new(
        &key,
        &dir.path().join("state"),
        &host_fs(dir.path()),
        12,
        20,
    );
    config.drain_timeout_ms = 180_000;
    config.backoff_max_ms = 1_000;
    let log = dir.path().join("sensor.log");
    let harness = Harness::start(&config, &log);
    harness.wait_sid(Duration::from_secs(30));

    let deadline = Instant::now() + Duration::from_secs(30);
    let backoff_line = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("server requested back-off"))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no back-off request within 30 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let requested: u64 = field(&backoff_line, "seconds").parse().unwrap();
    assert!(requested >= 2, "{backoff_line}");

    // The retry delay after the stream fails follows the server's request,
    // not the sensor's own 1 s maximum.
    std::thread::sleep(Duration::from_secs(2));
    let text = std::fs::read_to_string(&log).unwrap();
    let after = &text[text.find("server requested back-off").unwrap()..];
    let retry = after
        .lines()
        .find(|l| l.contains("link down, retrying"))
        .expect("stream failed after back-off");
    let retry_ms: u64 = field(retry, "retry_in_ms").parse().unwrap();
    assert!(
        retry_ms + 1_000 >= requested * 1_000,
        "retry in {retry_ms} ms, server asked for {requested} s"
    );

    server.kill9();
    server.start();
    let (report, code) = harness.finish(Duration::from_secs(requested + 120));
    assert_eq!(code, 0, "{report:?}");
    assert_stored_exactly_once(&server.stored_test_events(), &expected_ids(12, 0..20));
}

/// Returns the value of `name=value` in a plain-text tracing line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 1;
    line[start..].split_whitespace().next().unwrap()
}

/// Sends one HTTP/1.1 request to the server's API and returns status and body.
fn http_request(port: u16, method: &str, path: &str, api_key: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn server_task_reaches_task_channel() {
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    server.start();
    let api_key = server
        .admin(&["apikey", "create", "--org", &server.org])
        .trim()
        .to_owned();

    let mut config = HarnessConfig::new(
        &key,
        &dir.path().join("state"),
        &host_fs(dir.path()),
        13,
        150,
    );
    config.rate = 10;
    let harness = Harness::start(&config, &dir.path().join("sensor.log"));
    let sid = harness.wait_sid(Duration::from_secs(30));

    let body = format!(r#"{{"sid": "{sid}", "command": "os_processes"}}"#);
    let (status, response) =
        http_request(server.http_port, "POST", "/api/v1/tasks", &api_key, &body);
    assert_eq!(status, 201, "{response}");
    let queued: serde_json::Value = serde_json::from_str(&response).unwrap();

    let (task_id, command) = harness.wait_task(Duration::from_secs(30));
    assert_eq!(command, "os_processes");
    assert_eq!(task_id, queued["id"].as_str().unwrap());
    let (report, code) = harness.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{report:?}");
}

/// The real `picket-sensor` binary, not the harness: a key the server
/// rejects must end the process with a failure status, so an orchestrator
/// does not record the stop as a clean completion.
#[test]
fn sensor_binary_exits_nonzero_on_revoked_key() {
    if !running_as_root() {
        return;
    }
    let Some((dir, mut server)) = setup() else {
        return;
    };
    let key = server.create_key();
    server.start();
    let key_id = InstallationKey::decode(&key).unwrap().key_id;
    server.admin(&["key", "revoke", &key_id]);

    let state = dir.path().join("state-binary");
    std::fs::create_dir_all(&state).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_picket-sensor"))
        .args(["-d", "-", "--tier", "procpoll", "--state-dir"])
        .arg(&state)
        .env("LC_INSTALLATION_KEY", &key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sensor kept running with a revoked key");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "exit status {status}; stderr: {stderr}");
    assert!(stderr.contains("revoked"), "{stderr}");
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this test runs the sensor, which reads every process, and needs root under CI"
        );
        println!("skipped: not root");
    }
    root
}
