//! End-to-end `CODE_IDENTITY` and tier-selection tests against the built
//! `picket-sensor` binary (`HOST_FS=/ --stdout`). A fresh copy of a real
//! executable runs twice on the host or in a Docker container, and exactly
//! one `CODE_IDENTITY` with the file's SHA-256 must follow. A sensor started
//! without capabilities must name the missing one as the reason the eBPF
//! tier was not used.
//!
//! Needs root; the container test needs Docker and the local image
//! `picket-test/busybox:latest` (built by `scripts/host-setup.sh`). When a
//! prerequisite is missing a test fails if `CI=true`, else prints
//! `skipped: <reason>` and returns.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

const IMAGE: &str = "picket-test/busybox:latest";
const WAIT: Duration = Duration::from_secs(20);
/// Time given to a duplicate `CODE_IDENTITY` to show up before counting.
const SETTLE: Duration = Duration::from_secs(2);

fn skip_or_fail(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing: {reason}");
    }
    println!("skipped: {reason}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn docker_ready() -> Result<(), String> {
    let info = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .map_err(|e| format!("docker not runnable: {e}"))?;
    if !info.status.success() {
        return Err(format!(
            "docker image {IMAGE} missing or docker not running; run scripts/host-setup.sh"
        ));
    }
    Ok(())
}

/// `PICKET_SENSOR_BIN` when set, else the binary Cargo built for this test.
fn sensor_binary() -> PathBuf {
    std::env::var_os("PICKET_SENSOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_picket-sensor")))
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Records read from a running sensor's stdout.
struct Sensor {
    child: Child,
    records: Arc<Mutex<Vec<Value>>>,
}

impl Sensor {
    /// Starts `command` (the sensor binary, maybe behind a wrapper) with
    /// `--stdout --tier <tier>` and waits for `CONNECTED`.
    fn start(mut command: Command, tier: &str) -> Sensor {
        let mut child = command
            .arg(sensor_binary())
            .args(["--stdout", "--tier", tier])
            .env("HOST_FS", "/")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sensor binary runs");
        let stdout = child.stdout.take().unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not one JSON record per line ({e}): {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        let sensor = Sensor { child, records };
        sensor.connected();
        sensor
    }

    /// Starts the sensor directly, or returns `None` (after
    /// [`skip_or_fail`]) when `tier` is eBPF and that tier cannot run here.
    fn start_tier_or_skip(tier: &str) -> Option<Sensor> {
        let sensor = Sensor::start(Command::new("env"), tier);
        let connected = sensor.connected();
        if tier == "ebpf" && connected["event"]["ACQUISITION_TIER"] != "ebpf" {
            let reason = &connected["event"]["TIER_REASONS"]["ebpf"];
            skip_or_fail(&format!("the eBPF tier cannot run here: {reason}"));
            return None;
        }
        Some(sensor)
    }

    fn wait_for(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(found) = self.records.lock().unwrap().iter().find(|r| predicate(r)) {
                return found.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no record for {what} within {WAIT:?}");
    }

    fn connected(&self) -> Value {
        self.wait_for("CONNECTED", |r| r["routing"]["event_type"] == "CONNECTED")
    }

    /// Records of `event_type` whose `FILE_PATH` is `path`.
    fn with_path(&self, event_type: &str, path: &str) -> Vec<Value> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["routing"]["event_type"] == event_type)
            .filter(|r| r["event"]["FILE_PATH"] == path)
            .cloned()
            .collect()
    }

    /// Waits for the `CODE_IDENTITY` of `path`, then checks no second one
    /// follows, and returns it.
    fn only_code_identity(&self, path: &str) -> Value {
        self.wait_for(&format!("CODE_IDENTITY of {path}"), |r| {
            r["routing"]["event_type"] == "CODE_IDENTITY" && r["event"]["FILE_PATH"] == path
        });
        std::thread::sleep(SETTLE);
        let found = self.with_path("CODE_IDENTITY", path);
        assert_eq!(found.len(), 1, "one CODE_IDENTITY for {path}: {found:#?}");
        found[0].clone()
    }

    /// Checks the record links to a `NEW_PROCESS` of `path`. In the netlink
    /// tier a run that ended before `/proc` was read has no `FILE_PATH`, so
    /// the record may belong to either run.
    fn assert_linked_to_exec(&self, identity: &Value, path: &str) {
        let execs = self.with_path("NEW_PROCESS", path);
        let exec = execs
            .iter()
            .find(|e| e["event"]["PROCESS_ID"] == identity["event"]["PROCESS_ID"])
            .unwrap_or_else(|| panic!("no NEW_PROCESS for {identity} in {execs:#?}"));
        assert_eq!(identity["routing"]["this"], exec["routing"]["this"]);
        assert_eq!(identity["routing"]["parent"], exec["routing"]["parent"]);
        assert!(identity["routing"]["this"].is_string(), "{identity}");
        assert!(identity["event"]["TIMESTAMP"].as_u64().unwrap() > 0);
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        // SIGTERM, so the sensor flushes as in production.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies `source` to a new executable file under a fresh directory.
fn fresh_copy(source: &str, name: &str) -> (tempfile::TempDir, PathBuf) {
    // Under the target directory rather than /tmp, which may be noexec.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base).unwrap();
    let path = dir.path().join(name);
    std::fs::copy(source, &path).unwrap();
    (dir, path)
}

fn run_twice(path: &Path, args: &[&str]) {
    for _ in 0..2 {
        let status = Command::new(path).args(args).status().unwrap();
        assert!(status.success(), "{} failed", path.display());
    }
}

/// Checks that a fresh executable run twice on the host yields one
/// `CODE_IDENTITY` with its SHA-256 and size, linked to its run.
fn check_host(tier: &str, source: &str, args: &[&str]) {
    if !is_root() {
        return skip_or_fail("needs root");
    }
    let Some(sensor) = Sensor::start_tier_or_skip(tier) else {
        return;
    };
    let (_dir, path) = fresh_copy(source, &format!("core-it-{tier}"));
    run_twice(&path, args);
    let text = path.to_str().unwrap();

    let identity = sensor.only_code_identity(text);
    let event = &identity["event"];
    assert_eq!(event["HASH"], sha256_of(&path), "{identity}");
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(event["FILE_SIZE"], size, "{identity}");
    assert!(event.get("CONTAINER").is_none(), "{identity}");
    sensor.assert_linked_to_exec(&identity, text);
}

#[test]
fn new_executable_hashed_once_ebpf() {
    check_host("ebpf", "/bin/true", &[]);
}

#[test]
fn new_executable_hashed_once_netlink() {
    // The netlink tier reads a process after the exec event, so the process
    // must still run then. A run of /bin/true may already be gone.
    check_host("netlink", "/bin/sleep", &["0.5"]);
}

#[test]
fn new_executable_hashed_once_procpoll() {
    // Polling reports only processes alive at a poll, so this one sleeps.
    check_host("procpoll", "/bin/sleep", &["1"]);
}

/// Runs a fresh copy of busybox twice in a container; one `CODE_IDENTITY`
/// with the container's hash and its `CONTAINER` object must follow.
fn check_container(tier: &str, applet: &str) {
    if !is_root() {
        return skip_or_fail("needs root");
    }
    if let Err(reason) = docker_ready() {
        return skip_or_fail(&reason);
    }
    let Some(sensor) = Sensor::start_tier_or_skip(tier) else {
        return;
    };
    let name = format!("core-it-hash-{tier}-{}", std::process::id());
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    let output = Command::new("docker")
        .args(["run", "-d", "--name", &name, "--network", "none", IMAGE])
        .args(["sleep", "60"])
        .output()
        .unwrap();
    let _cleanup = Removal(name.clone());
    assert!(output.status.success(), "docker run failed: {output:?}");
    let id = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    // Each tier gets its own path because the sensors of parallel tests
    // report every container.
    let copy = format!("/opt/{tier}/busybox");
    // The trailing sleep keeps the shell, the parent, alive while the
    // sensor handles the two short runs.
    let script = format!(
        "mkdir -p /opt/{tier} && cp /bin/busybox {copy} && {copy} {applet} && {copy} {applet}; sleep 2"
    );
    let status = Command::new("docker")
        .args(["exec", &name, "sh", "-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "docker exec failed");

    let identity = sensor.only_code_identity(&copy);
    let init = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", &name])
        .output()
        .unwrap();
    let init = String::from_utf8(init.stdout).unwrap().trim().to_owned();
    let on_host = PathBuf::from(format!("/proc/{init}/root{copy}"));
    let event = &identity["event"];
    assert_eq!(event["HASH"], sha256_of(&on_host), "{identity}");
    assert_eq!(
        event["FILE_SIZE"],
        std::fs::metadata(&on_host).unwrap().len()
    );
    assert_eq!(event["CONTAINER"]["ID"], id.as_str(), "{identity}");
    assert_eq!(event["CONTAINER"]["NAME"], name.as_str(), "{identity}");
    sensor.assert_linked_to_exec(&identity, &copy);
}

/// Removes a container when dropped.
struct Removal(String);

impl Drop for Removal {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

#[test]
fn container_executable_hashed_once_ebpf() {
    check_container("ebpf", "true");
}

#[test]
fn container_executable_hashed_once_netlink() {
    check_container("netlink", "sleep 0.5");
}

/// Without capabilities the eBPF probe rejects the tier before any load, and
/// its reason reaches `CONNECTED`.
#[test]
fn missing_capability_reason_reaches_connected() {
    if !is_root() {
        return skip_or_fail("needs root");
    }
    let mut wrapper = Command::new("setpriv");
    wrapper.args([
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--",
    ]);
    let sensor = Sensor::start(wrapper, "auto");
    let connected = sensor.connected();
    let event = &connected["event"];
    assert_eq!(event["ACQUISITION_TIER"], "procpoll", "{connected}");
    assert_eq!(event["KERNEL_ACQ_AVAILABLE"], false, "{connected}");
    let reason = event["TIER_REASONS"]["ebpf"].as_str().unwrap();
    assert!(
        reason.starts_with("missing capability CAP_BPF"),
        "ebpf reason: {reason}"
    );
    assert!(event["TIER_REASONS"]["netlink"].is_string(), "{connected}");
}
