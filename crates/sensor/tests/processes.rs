//! End-to-end process tests: the built `picket-sensor` binary runs against
//! this host (`HOST_FS=/ --stdout`), real processes and real Docker
//! containers are started around it, and each process's event is checked
//! field by field. Every scenario runs once per tier (netlink, procpoll).
//!
//! Needs root; the container tests need Docker and the local image
//! `picket-test/busybox:latest` (built by `scripts/host-setup.sh`). When a
//! prerequisite is missing a test fails if `CI=true`, else prints
//! `skipped: <reason>` and returns.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use picket_event::atom::process_atom;
use serde_json::Value;

const IMAGE: &str = "picket-test/busybox:latest";
/// How long a test waits for one record. Generous, because parallel
/// builds and tests can delay the sensor's start and its polls by seconds.
const WAIT: Duration = Duration::from_secs(60);

fn skip_or_fail(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing: {reason}");
    }
    println!("skipped: {reason}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
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

/// Returns the binary under test: `PICKET_SENSOR_BIN` when set (a copy kept
/// apart from a shared target directory that other builds overwrite), else
/// the one Cargo built for this test.
fn sensor_binary() -> PathBuf {
    std::env::var_os("PICKET_SENSOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_picket-sensor")))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn atom(pid: u32) -> String {
    process_atom(&boot_id(), pid, start_ticks(pid))
}

/// Records read from a running sensor's stdout.
struct Sensor {
    child: Child,
    records: Arc<Mutex<Vec<Value>>>,
    /// Container name when the sensor itself runs in Docker.
    container: Option<String>,
}

impl Sensor {
    /// Starts the sensor on the host, or returns `None` (after
    /// [`skip_or_fail`]) when `tier` is eBPF and that tier cannot run here.
    fn start_tier_or_skip(tier: &str) -> Option<Sensor> {
        let sensor = Sensor::start_on_host(tier);
        let chosen = sensor.connected()["event"]["ACQUISITION_TIER"].clone();
        if tier == "ebpf" && chosen != "ebpf" {
            let reason = sensor.connected()["event"]["TIER_REASONS"]["ebpf"].clone();
            skip_or_fail(&format!("the eBPF tier cannot run here: {reason}"));
            return None;
        }
        Some(sensor)
    }

    fn start_on_host(tier: &str) -> Sensor {
        let child = Command::new(sensor_binary())
            .args(["--stdout", "--tier", tier])
            .env("HOST_FS", "/")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sensor binary runs");
        Sensor::attach(child, None)
    }

    fn attach(mut child: Child, container: Option<String>) -> Sensor {
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
        let sensor = Sensor {
            child,
            records,
            container,
        };
        sensor.wait_for("CONNECTED", |r| r["routing"]["event_type"] == "CONNECTED");
        sensor
    }

    /// Waits for the first record matching `predicate`.
    fn wait_for(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(found) = self.records.lock().unwrap().iter().find(|r| predicate(r)) {
                return found.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let records = self.records.lock().unwrap();
        panic!(
            "no record for {what} within {WAIT:?}; {} records seen",
            records.len()
        );
    }

    fn connected(&self) -> Value {
        self.wait_for("CONNECTED", |r| r["routing"]["event_type"] == "CONNECTED")
    }

    fn process_event(&self, event_type: &str, pid: u32) -> Value {
        self.wait_for(&format!("{event_type} of pid {pid}"), |r| {
            r["routing"]["event_type"] == event_type && r["event"]["PROCESS_ID"] == pid
        })
    }

    /// Waits for the process event whose command line is exactly `command_line`.
    fn by_command_line(&self, event_type: &str, command_line: &str) -> Value {
        self.wait_for(&format!("{event_type} of `{command_line}`"), |r| {
            r["routing"]["event_type"] == event_type && r["event"]["COMMAND_LINE"] == command_line
        })
    }

    fn all(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Some(name) = &self.container {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        } else {
            // SIGTERM, so the sensor unsubscribes and flushes as in production.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
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

/// A Docker container removed when dropped.
struct Container {
    name: String,
    id: String,
}

impl Container {
    fn run(label: &str, command: &[&str]) -> Container {
        let name = format!("core-it-{label}-{}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        let output = Command::new("docker")
            .args(["run", "-d", "--name", &name, "--network", "none", IMAGE])
            .args(command)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        assert_eq!(id.len(), 64, "docker run printed {id:?}");
        Container { name, id }
    }

    /// Host pid of the container's init process.
    fn init_pid(&self) -> u32 {
        let output = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", &self.name])
            .output()
            .unwrap();
        String::from_utf8(output.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Runs `docker exec -i` in the background with its stdin piped, so the
    /// command reads end of input once the caller drops `stdin`.
    fn exec_with_stdin(&self, command: &[&str]) -> Child {
        Command::new("docker")
            .args(["exec", "-i"])
            .arg(&self.name)
            .args(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn assert_carried_by(&self, record: &Value) {
        let container = &record["event"]["CONTAINER"];
        assert_eq!(
            container["ID"],
            self.id.as_str(),
            "CONTAINER.ID of {record}"
        );
        assert_eq!(
            container["NAME"],
            self.name.as_str(),
            "CONTAINER.NAME of {record}"
        );
        assert_eq!(container["IMAGE"], IMAGE, "CONTAINER.IMAGE of {record}");
        assert_eq!(
            container["RUNTIME"], "docker",
            "CONTAINER.RUNTIME of {record}"
        );
        assert!(
            container.get("POD_NAME").is_none(),
            "a plain Docker container has no pod: {record}"
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

fn readlink(path: impl AsRef<Path>) -> String {
    std::fs::read_link(path)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Checks a host process started after the sensor, field by field.
fn check_host_exec(tier: &str) {
    if !is_root() {
        return skip_or_fail("needs root");
    }
    let Some(sensor) = Sensor::start_tier_or_skip(tier) else {
        return;
    };
    let workdir = tempfile::tempdir().unwrap();
    let marker = format!("picket-host-{tier}-{}", std::process::id());
    // The shell's child `cat` blocks on the shared stdin until the test
    // closes it, so both stay alive until their events have arrived, as
    // the polling tier needs however slow its polls are.
    let script = "cat; exit 7";
    let mut child = Command::new("/bin/sh")
        .args(["-c", script, &marker])
        .current_dir(workdir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let this_atom = atom(pid);
    let expected_exe = readlink(format!("/proc/{pid}/exe"));

    let record = sensor.process_event("NEW_PROCESS", pid);
    let event = &record["event"];
    assert_eq!(event["PARENT_PROCESS_ID"], std::process::id());
    assert_eq!(event["FILE_PATH"], expected_exe.as_str());
    assert_eq!(
        event["COMMAND_LINE"],
        format!("/bin/sh -c {script} {marker}").as_str()
    );
    assert_eq!(event["USER_ID"], 0);
    assert_eq!(event["USER_NAME"], "root");
    assert_eq!(event["WORKING_DIRECTORY"], workdir.path().to_str().unwrap());
    assert_eq!(event["THREADS"], 1);
    if tier != "ebpf" {
        // The eBPF tier takes details from the kernel at exec time and does
        // not read the resident set size.
        assert!(event["MEMORY_USAGE"].as_u64().unwrap() > 0);
    }
    let created = event["CREATION_TIME"].as_u64().unwrap();
    let now = picket_event::record::now_ms();
    assert!(
        created <= now && now - created < 30_000,
        "CREATION_TIME {created} not near {now}"
    );
    assert!(event.get("DETAILS_UNAVAILABLE").is_none());
    assert!(
        event.get("CONTAINER").is_none(),
        "a host process has no CONTAINER: {record}"
    );
    assert_eq!(record["routing"]["this"], this_atom.as_str());
    assert_eq!(
        record["routing"]["parent"],
        atom(std::process::id()).as_str()
    );
    assert_eq!(event["PARENT"]["PROCESS_ID"], std::process::id());
    assert_eq!(
        event["PARENT"]["FILE_PATH"],
        readlink("/proc/self/exe").as_str()
    );

    // The shell's child links back to the shell.
    let cat = sensor.wait_for("NEW_PROCESS of the shell's cat", |r| {
        r["routing"]["event_type"] == "NEW_PROCESS" && r["event"]["PARENT_PROCESS_ID"] == pid
    });
    assert_eq!(cat["event"]["COMMAND_LINE"], "cat");
    assert_eq!(cat["routing"]["parent"], this_atom.as_str());
    assert_eq!(
        cat["event"]["PARENT"]["COMMAND_LINE"],
        event["COMMAND_LINE"]
    );

    drop(child.stdin.take());
    assert_eq!(child.wait().unwrap().code(), Some(7));
    let exit = sensor.process_event("TERMINATE_PROCESS", pid);
    assert_eq!(exit["routing"]["this"], this_atom.as_str());
    assert_eq!(exit["event"]["PARENT_PROCESS_ID"], std::process::id());
    if tier == "procpoll" {
        assert!(
            exit["event"].get("EXIT_CODE").is_none(),
            "polling cannot know the exit code"
        );
    } else {
        assert_eq!(exit["event"]["EXIT_CODE"], 7);
    }

    let connected = sensor.connected();
    assert_eq!(connected["event"]["ACQUISITION_TIER"], tier);
    assert_eq!(connected["event"]["NAMESPACES"]["PID_NAMESPACE"], "host");
    assert_eq!(
        connected["event"]["NAMESPACES"]["CONTAINER_ATTRIBUTION"],
        true
    );
    if tier == "ebpf" {
        assert_eq!(connected["event"]["TIER_REASONS"], serde_json::json!({}));
    } else {
        assert!(connected["event"]["TIER_REASONS"]["ebpf"].is_string());
    }
}

/// Without `--tier`, the best tier that starts is used and the CONNECTED
/// event names it. A process is reported by it with its command line.
#[test]
fn auto_tier_reports_host_exec() {
    if !is_root() {
        return skip_or_fail("needs root");
    }
    let child_sensor = Command::new(sensor_binary())
        .arg("--stdout")
        .env("HOST_FS", "/")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let sensor = Sensor::attach(child_sensor, None);
    let connected = sensor.connected();
    let tier = connected["event"]["ACQUISITION_TIER"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        ["ebpf", "netlink"].contains(&tier.as_str()),
        "root in the host PID namespace chose {tier}"
    );
    assert_eq!(connected["event"]["KERNEL_ACQ_AVAILABLE"], tier == "ebpf");
    if tier == "netlink" {
        assert!(
            connected["event"]["TIER_REASONS"]["ebpf"].is_string(),
            "{connected}"
        );
    }

    let marker = format!("picket-auto-{}", std::process::id());
    let mut child = Command::new("/bin/sh")
        .args(["-c", "sleep 1", &marker])
        .spawn()
        .unwrap();
    let pid = child.id();
    let record = sensor.process_event("NEW_PROCESS", pid);
    assert_eq!(
        record["event"]["COMMAND_LINE"],
        format!("/bin/sh -c sleep 1 {marker}").as_str()
    );
    assert_eq!(record["event"]["PARENT_PROCESS_ID"], std::process::id());
    assert_eq!(record["routing"]["this"], atom(pid).as_str());
    child.wait().unwrap();
}

#[test]
fn host_exec_reported_netlink() {
    check_host_exec("netlink");
}

#[test]
fn host_exec_reported_ebpf() {
    check_host_exec("ebpf");
}

#[test]
fn host_exec_reported_procpoll() {
    check_host_exec("procpoll");
}

fn check_existing(tier: &str) {
    if !is_root() {
        return skip_or_fail("needs root");
    }
    let marker = format!("picket-existing-{tier}-{}", std::process::id());
    let mut child = Command::new("/bin/sh")
        .args(["-c", "sleep 30", &marker])
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(100));
    let expected_atom = atom(pid);

    let sensor = Sensor::start_on_host(tier);
    let record = sensor.process_event("EXISTING_PROCESS", pid);
    assert_eq!(
        record["event"]["COMMAND_LINE"],
        format!("/bin/sh -c sleep 30 {marker}").as_str()
    );
    assert_eq!(record["event"]["PARENT_PROCESS_ID"], std::process::id());
    assert_eq!(record["routing"]["this"], expected_atom.as_str());
    assert!(record["event"].get("CONTAINER").is_none());

    // A kernel thread (kthreadd, pid 2) is counted, not reported.
    assert!(
        !sensor
            .all()
            .iter()
            .any(|r| r["routing"]["event_type"] == "EXISTING_PROCESS"
                && r["event"]["PROCESS_ID"] == 2),
        "kernel threads are not reported"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let exit = sensor.process_event("TERMINATE_PROCESS", pid);
    assert_eq!(exit["routing"]["this"], expected_atom.as_str());
    if tier == "netlink" {
        assert_eq!(exit["event"]["EXIT_SIGNAL"], 9);
    }
}

#[test]
fn existing_process_reported_netlink() {
    check_existing("netlink");
}

#[test]
fn existing_process_reported_procpoll() {
    check_existing("procpoll");
}

/// Containers started before and after the sensor; processes exec'd in
/// both carry the container's id, name and image.
fn check_containers(tier: &str) {
    if !is_root() {
        return skip_or_fail("needs root");
    }
    if let Err(reason) = docker_ready() {
        return skip_or_fail(&reason);
    }
    let before = Container::run(&format!("before-{tier}"), &["sleep", "120"]);
    let before_pid = before.init_pid();
    std::thread::sleep(Duration::from_millis(200));

    let Some(sensor) = Sensor::start_tier_or_skip(tier) else {
        return;
    };
    let existing = sensor.process_event("EXISTING_PROCESS", before_pid);
    assert_eq!(existing["event"]["COMMAND_LINE"], "sleep 120");
    assert_eq!(existing["event"]["FILE_PATH"], "/bin/busybox");
    before.assert_carried_by(&existing);

    let after = Container::run(&format!("after-{tier}"), &["sleep", "120"]);
    let after_pid = after.init_pid();
    // The runtime creates the process as `runc init` and then execs `sleep`.
    let after_init = sensor.wait_for("NEW_PROCESS of the new container's init", |r| {
        r["routing"]["event_type"] == "NEW_PROCESS"
            && r["event"]["PROCESS_ID"] == after_pid
            && r["event"]["COMMAND_LINE"] == "sleep 120"
    });
    after.assert_carried_by(&after_init);

    for (container, label) in [(&before, "before"), (&after, "after")] {
        // `cat` blocks until the test closes stdin, so the shell and its
        // child stay alive until their events have arrived.
        let script = format!("cat; echo {label}-{tier}");
        let mut exec = container.exec_with_stdin(&["sh", "-c", &script]);
        let record = sensor.by_command_line("NEW_PROCESS", &format!("sh -c {script}"));
        assert_eq!(record["event"]["FILE_PATH"], "/bin/busybox");
        assert_eq!(record["event"]["USER_ID"], 0);
        assert_eq!(record["event"]["WORKING_DIRECTORY"], "/");
        container.assert_carried_by(&record);
        let pid = record["event"]["PROCESS_ID"].as_u64().unwrap() as u32;
        let child = sensor.wait_for("cat inside the exec", |r| {
            r["routing"]["event_type"] == "NEW_PROCESS" && r["event"]["PARENT_PROCESS_ID"] == pid
        });
        container.assert_carried_by(&child);
        assert_eq!(child["event"]["COMMAND_LINE"], "cat");
        assert_eq!(child["routing"]["parent"], record["routing"]["this"]);
        drop(exec.stdin.take());
        assert!(exec.wait().unwrap().success());
        let exit = sensor.process_event("TERMINATE_PROCESS", pid);
        container.assert_carried_by(&exit);
    }

    // The docker CLI itself is a host process.
    let cli = sensor.wait_for("the docker exec client", |r| {
        r["routing"]["event_type"] == "NEW_PROCESS"
            && r["event"]["COMMAND_LINE"]
                .as_str()
                .is_some_and(|c| c.starts_with("docker exec"))
    });
    assert!(
        cli["event"].get("CONTAINER").is_none(),
        "host process carries no CONTAINER: {cli}"
    );
}

#[test]
fn container_processes_attributed_netlink() {
    check_containers("netlink");
}

#[test]
fn container_processes_attributed_ebpf() {
    check_containers("ebpf");
}

#[test]
fn container_processes_attributed_procpoll() {
    check_containers("procpoll");
}

/// Path pieces to run the dynamically linked test binary in a FROM-scratch
/// container through the host's loader under `/rootfs`.
fn loader_and_libraries() -> (PathBuf, PathBuf) {
    let loader = std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2").expect("x86_64 glibc loader");
    let libraries = loader.parent().unwrap().to_path_buf();
    (loader, libraries)
}

/// Builds the `docker run` of the sensor under test as the deployment
/// contract runs it: privileged, host network, the host's / at /rootfs, no
/// `--pid=host`, and a private cgroup namespace. `docker_flags` go before
/// the image and `sensor_args` after the sensor binary. The container is
/// removed when it exits.
fn contract_container_command(name: &str, docker_flags: &[&str], sensor_args: &[&str]) -> Command {
    let _ = Command::new("docker").args(["rm", "-f", name]).output();
    let binary = sensor_binary();
    let binary = binary.display();
    let mut command = Command::new("docker");
    command.args([
        "run",
        "--rm",
        "-i",
        "--name",
        name,
        "--privileged",
        "--net=host",
        "--cgroupns=private",
    ]);
    command.args([
        "-v",
        "/:/rootfs:ro",
        "--env",
        "HOST_FS=/rootfs",
        "--env",
        "RUST_LOG=info",
    ]);
    command.args(docker_flags);
    // A statically linked build (RUSTFLAGS='-C target-feature=+crt-static')
    // runs in the scratch image as is; the test build is dynamically linked
    // and borrows the host's loader and libc through the /rootfs mount.
    match std::env::var("PICKET_STATIC_SENSOR") {
        Ok(static_binary) => {
            command.args([
                "-v",
                &format!("{static_binary}:/picket-sensor:ro"),
                "--entrypoint",
                "/picket-sensor",
                IMAGE,
            ]);
        }
        Err(_) => {
            let (loader, libraries) = loader_and_libraries();
            command.args(["-v", &format!("{binary}:/picket-sensor:ro")]);
            command.args([
                "--entrypoint",
                &format!("/rootfs{}", loader.display()),
                IMAGE,
            ]);
            command.args([
                "--library-path",
                &format!("/rootfs{}", libraries.display()),
                "/picket-sensor",
            ]);
        }
    }
    command
        .args(sensor_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// The sensor run as the deployment contract runs it: a privileged
/// container with the host's / at /rootfs, no `--pid=host`, and a private
/// cgroup namespace.
#[test]
fn deployment_contract_container() {
    if !is_root() {
        return skip_or_fail("needs root");
    }
    if let Err(reason) = docker_ready() {
        return skip_or_fail(&reason);
    }
    let name = format!("core-it-sensor-{}", std::process::id());
    // As the non-eBPF DaemonSet: eBPF is not tried, and netlink must be
    // found unusable from the container's PID namespace.
    let mut command = contract_container_command(&name, &[], &["--stdout", "--tier", "netlink"]);
    let before = Container::run("contract-before", &["sleep", "120"]);
    let sensor = Sensor::attach(command.spawn().unwrap(), Some(name));

    let connected = sensor.connected();
    let event = &connected["event"];
    assert_eq!(event["ACQUISITION_TIER"], "procpoll");
    assert_eq!(event["NAMESPACES"]["PID_NAMESPACE"], "private");
    let cgroup_ns = event["NAMESPACES"]["CGROUP_NAMESPACE"].as_str().unwrap();
    assert!(
        cgroup_ns == "joined_host" || cgroup_ns == "host",
        "CGROUP_NAMESPACE {cgroup_ns}"
    );
    assert_eq!(event["NAMESPACES"]["CONTAINER_ATTRIBUTION"], true);
    assert!(
        event["TIER_REASONS"]["netlink"]
            .as_str()
            .unwrap()
            .contains("PID namespace"),
        "{connected}"
    );

    let existing = sensor.process_event("EXISTING_PROCESS", before.init_pid());
    before.assert_carried_by(&existing);

    // The polling tier reports only processes alive at one of its polls,
    // and a loaded host can delay a poll by longer than a fixed sleep. So
    // each process below stays alive until its event has arrived: it blocks
    // in `read` until the test closes its stdin.
    let after = Container::run("contract-after", &["sleep", "120"]);
    let script = "read -r line; echo contract";
    let mut exec = after.exec_with_stdin(&["sh", "-c", script]);
    let record = sensor.by_command_line("NEW_PROCESS", &format!("sh -c {script}"));
    after.assert_carried_by(&record);
    drop(exec.stdin.take());
    assert!(exec.wait().unwrap().success());

    // A host process seen from inside the container: no CONTAINER, host pids.
    let mut host_child = Command::new("/bin/sh")
        .args(["-c", "read -r line", "picket-contract-host"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let host_pid = host_child.id();
    let host_record = sensor.process_event("NEW_PROCESS", host_pid);
    drop(host_child.stdin.take());
    assert_eq!(
        host_record["event"]["COMMAND_LINE"],
        "/bin/sh -c read -r line picket-contract-host"
    );
    assert_eq!(
        host_record["event"]["PARENT_PROCESS_ID"],
        std::process::id()
    );
    assert!(
        host_record["event"].get("CONTAINER").is_none(),
        "{host_record}"
    );
    assert_eq!(host_record["routing"]["this"], atom(host_pid).as_str());
    host_child.wait().unwrap();
}

/// Bad input gives one line naming the variable and a non-zero exit.
#[test]
fn host_fs_without_proc_exits_nonzero() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(sensor_binary())
        .arg("--stdout")
        .env("HOST_FS", empty.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap();
    assert!(
        first.contains(&format!("HOST_FS={}", empty.path().display())),
        "{stderr}"
    );
    assert!(first.contains("mount the host's /"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn dash_key_without_variable_exits_nonzero() {
    let output = Command::new(sensor_binary())
        .args(["-d", "-"])
        .env("HOST_FS", "/")
        .env_remove("LC_INSTALLATION_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .lines()
            .next()
            .unwrap()
            .contains("LC_INSTALLATION_KEY, which is not set"),
        "{stderr}"
    );
}

#[test]
fn explain_pid_reports_own_process() {
    let output = Command::new(sensor_binary())
        .args(["explain", "pid", &std::process::id().to_string()])
        .env("HOST_FS", "/")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["record"]["event"]["PROCESS_ID"], std::process::id());
    assert_eq!(
        report["record"]["event"]["FILE_PATH"],
        readlink("/proc/self/exe").as_str()
    );
    assert_eq!(report["attribution"]["container_id"], Value::Null);
    assert!(report["namespaces"]["PID_NAMESPACE"].is_string());
}

#[test]
fn explain_cgroup_reads_stdin() {
    use std::io::Write;
    let id = "4f1c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170f1e2d3c";
    let mut child = Command::new(sensor_binary())
        .args(["explain", "cgroup", "-"])
        .env("HOST_FS", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("0::/system.slice/docker-{id}.scope\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["container_id"], id);
    assert_eq!(report["runtime"], "docker");
}

/// Builds an installation key whose server is a closed loopback port, so
/// the sensor spools every batch under its state dir.
fn unreachable_server_key() -> String {
    picket_event::key::InstallationKey {
        url: "https://127.0.0.1:9".into(),
        org_id: "2b1f0b8e-7c1a-4d44-9a0e-0f3f4f5e6a7b".into(),
        key_id: "8d7c6b5a-4f3e-4d2c-8b1a-0f9e8d7c6b5a".into(),
        secret: "a".repeat(64),
        cert_sha256: "b".repeat(64),
    }
    .encode()
}

/// The eBPF tier in the deployment container (no `--pid=host`), spooling
/// to a state dir: none of the sensor's own writes come back as FILE
/// events. The BPF filter compares host tgids, so it must get the sensor's
/// host tgid, not the pid inside the container's PID namespace.
#[test]
fn contract_container_skips_own_writes() {
    if !is_root() {
        return skip_or_fail("needs root");
    }
    if let Err(reason) = docker_ready() {
        return skip_or_fail(&reason);
    }
    let state = tempfile::tempdir().unwrap();
    let control_dir = tempfile::tempdir().unwrap();
    let name = format!("core-it-own-writes-{}", std::process::id());
    let state_mount = format!("{}:/state", state.path().display());
    let key = unreachable_server_key();
    let mut command = contract_container_command(
        &name,
        &["-v", &state_mount],
        &[
            "-d",
            &key,
            "--stdout",
            "--tier",
            "ebpf",
            "--state-dir",
            "/state",
        ],
    );
    let sensor = Sensor::attach(command.spawn().unwrap(), Some(name.clone()));

    let connected = sensor.connected();
    if connected["event"]["ACQUISITION_TIER"] != "ebpf" {
        let reason = &connected["event"]["TIER_REASONS"]["ebpf"];
        return skip_or_fail(&format!("the eBPF tier cannot run here: {reason}"));
    }
    assert_eq!(connected["event"]["NAMESPACES"]["PID_NAMESPACE"], "private");
    let sensor_pid: u32 = container_host_pid(&name);
    assert_ne!(
        sensor_pid, 1,
        "the container's init has a host pid other than 1"
    );

    // The first spooled batch creates a segment file, after the BPF
    // programs are attached (CONNECTED comes once they are).
    let spool = state.path().join("spool");
    let deadline = Instant::now() + WAIT;
    let segment_written = || {
        std::fs::read_dir(&spool)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| {
                entry.file_name().to_string_lossy().ends_with(".pks")
                    && entry.metadata().map(|m| m.len() > 0).unwrap_or(false)
            })
    };
    while !segment_written() {
        assert!(
            Instant::now() < deadline,
            "no spool segment written under {} within {WAIT:?}",
            spool.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A host write after the sensor's own: once its event is out, the
    // sensor's writes before it have passed the pipeline too.
    let control = control_dir.path().join("control");
    std::fs::write(&control, b"x").unwrap();
    let control_path = control.to_str().unwrap();
    sensor.wait_for(&format!("FILE_CREATE of {control_path}"), |r| {
        r["routing"]["event_type"] == "FILE_CREATE" && r["event"]["FILE_PATH"] == control_path
    });

    let file_events: Vec<Value> = sensor
        .all()
        .into_iter()
        .filter(|r| {
            r["routing"]["event_type"]
                .as_str()
                .is_some_and(|t| t.starts_with("FILE_"))
        })
        .collect();
    let own: Vec<&Value> = file_events
        .iter()
        .filter(|r| r["event"]["PROCESS_ID"] == sensor_pid)
        .collect();
    assert!(
        own.is_empty(),
        "{} FILE events carry the sensor's host pid {sensor_pid}, first: {}",
        own.len(),
        own[0]
    );
    let in_state_dir: Vec<&Value> = file_events
        .iter()
        .filter(|r| {
            r["event"]["FILE_PATH"]
                .as_str()
                .is_some_and(|p| p.starts_with("/state/"))
        })
        .collect();
    assert!(
        in_state_dir.is_empty(),
        "{} FILE events are in the sensor's state dir, first: {}",
        in_state_dir.len(),
        in_state_dir[0]
    );
}

fn container_host_pid(name: &str) -> u32 {
    let output = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", name])
        .output()
        .unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("docker inspect gave no pid for {name}: {e}"))
}

/// With `-d KEY` the transport starts beside stdout. The server address is a
/// closed loopback port, so the sensor keeps reporting locally and spools.
#[test]
fn key_with_unreachable_server_keeps_running() {
    if !is_root() {
        return skip_or_fail("needs root");
    }
    let state = tempfile::tempdir().unwrap();
    let key = unreachable_server_key();
    let child = Command::new(sensor_binary())
        .args(["-d", &key, "--stdout", "--tier", "procpoll", "--state-dir"])
        .arg(state.path())
        .env("HOST_FS", "/")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut sensor = Sensor::attach(child, None);
    let connected = sensor.connected();
    assert_eq!(connected["event"]["ACQUISITION_TIER"], "procpoll");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sensor.child.try_wait().unwrap().is_none(),
        "the sensor exited although the server is only unreachable"
    );
    assert!(
        state.path().join("spool").is_dir(),
        "the transport did not create its spool under --state-dir"
    );
}

/// An argument with invalid UTF-8, a newline and an escape byte keeps its
/// bytes in `COMMAND_LINE_B64` and leaves the record on one line. A command
/// line past the cap is cut and says so with its original length.
fn check_hostile_command_lines(tier: &str) {
    use std::os::unix::ffi::OsStrExt;
    if !is_root() {
        return skip_or_fail("needs root");
    }
    let sensor = Sensor::start_on_host(tier);

    // Each shell blocks in `read` until the test closes its stdin, so it is
    // alive at a poll however slow the polling tier's polls are.
    let hostile: &[u8] = b"bad\xff\nname\x1b[2J";
    let mut child = Command::new("/bin/sh")
        .args(["-c", "read -r line"])
        .arg(std::ffi::OsStr::from_bytes(hostile))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let record = sensor.process_event("NEW_PROCESS", child.id());
    drop(child.stdin.take());
    let mut expected = b"/bin/sh -c read -r line ".to_vec();
    expected.extend_from_slice(hostile);
    let event = record["event"].as_object().unwrap();
    assert_eq!(
        picket_event::bytes::get_bytes(event, "COMMAND_LINE").unwrap(),
        expected
    );
    assert_eq!(
        event["COMMAND_LINE"],
        "/bin/sh -c read -r line bad\\xff\nname\u{1b}[2J"
    );
    child.wait().unwrap();

    let long = "x".repeat(40_000);
    let mut child = Command::new("/bin/sh")
        .args(["-c", "read -r line", &long])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let record = sensor.process_event("NEW_PROCESS", child.id());
    drop(child.stdin.take());
    assert_eq!(record["event"]["COMMAND_LINE_TRUNCATED"], true);
    // "/bin/sh\0-c\0read -r line\0" plus the long argument and its NUL.
    assert_eq!(record["event"]["COMMAND_LINE_LENGTH"], 8 + 3 + 13 + 40_001);
    let kept = record["event"]["COMMAND_LINE"].as_str().unwrap();
    assert!(kept.len() <= 16 * 1024, "kept {} bytes", kept.len());
    assert!(kept.starts_with("/bin/sh -c read -r line xxx"));
    child.wait().unwrap();
}

#[test]
fn hostile_command_lines_netlink() {
    check_hostile_command_lines("netlink");
}

#[test]
fn hostile_command_lines_procpoll() {
    check_hostile_command_lines("procpoll");
}
