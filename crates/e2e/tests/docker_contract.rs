//! The deployment contract, end to end, on a real Docker engine.
//!
//! The test starts one server with its embedded store and workload
//! containers before and after the sensor. Some workloads are shaped like
//! Kubernetes pods, with the labels and cgroup parent that the kubelet's
//! Docker runtime sets. The sensor image runs with exactly the flags of the
//! contract's `docker run` line, then again after `docker rm -f`, then the
//! way the eBPF DaemonSet runs it. Everything is checked through the
//! server's admin CLI.
//!
//! One test function runs the steps in order, because every step shares the
//! host with the sensor and two sensors reporting at once would race.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use picket_e2e::docker::{engine_available, image_exists, Container, BUSYBOX_IMAGE};
use picket_e2e::server::Server;
use picket_e2e::{is_root, prerequisite, repo_root, run_token, wait_for};
use picket_event::record::lookup_path;
use picket_event::types::{self, container as ct};
use serde_json::Value;

/// How long an event may take from the workload to the server's store.
const EVENT_TIMEOUT: Duration = Duration::from_secs(45);
const POLL: Duration = Duration::from_millis(500);

/// Flags of the deployment contract's `docker run` line, before the key.
const CONTRACT_FLAGS: &[&str] = &[
    "--privileged",
    "--net=host",
    "-v",
    "/:/rootfs:ro",
    "--env",
    "HOST_FS=/rootfs",
    "-v",
    "/var/run/docker/netns:/netns:ro",
    "--env",
    "NET_NS=/netns",
];

/// The eBPF DaemonSet's pod settings expressed as `docker run` flags.
/// NOTE: the manifest's `mountPropagation: HostToContainer` (`rslave`) is
/// left out, because Docker rejects it when the host's `/` is a private
/// mount, as on hosts booted without systemd.
const EBPF_DAEMONSET_FLAGS: &[&str] = &[
    "--pid=host",
    "--net=host",
    "--privileged",
    "--cap-add",
    "SYS_ADMIN",
    "--memory",
    "256m",
    "--cpus",
    "0.9",
    "-v",
    "/:/rootfs:ro",
    "--env",
    "HOST_FS=/rootfs",
    "-v",
    "/var/run/docker/netns:/netns:ro",
    "--env",
    "NET_NS=/netns",
    "-v",
    "/sys/kernel/debug:/sys/kernel/debug",
    "-v",
    "/sys/kernel/btf:/sys/kernel/btf:ro",
    "-v",
    "/lib/modules:/lib/modules:ro",
];

/// Port of the HTTP listener inside the network workload container.
const WORKLOAD_HTTP_PORT: &str = "18080";

/// A workload container and what its events must carry.
struct Workload {
    container: Container,
    /// Text that only this workload's command lines contain.
    marker: String,
    pod: Option<Pod>,
}

/// Kubernetes identity given to a pod-shaped workload.
struct Pod {
    name: String,
    namespace: String,
    uid: String,
    container_name: String,
}

/// Starts a busybox container that execs `/bin/sh -c 'exit 0' MARKER`
/// every half second, so that NEW_PROCESS events keep coming from inside
/// it whenever the sensor starts.
fn start_workload(token: &str, role: &str, pod: Option<Pod>) -> Workload {
    let marker = format!("pkt-e2e-{token}-{role}");
    let script = format!(
        "echo ok > /tmp/index.html; httpd -p {WORKLOAD_HTTP_PORT} -h /tmp; \
         while :; do /bin/sh -c 'exit 0' {marker}; sleep 0.5; done"
    );

    let mut args: Vec<String> = Vec::new();
    let name = match &pod {
        None => format!("pkt-e2e-{token}-{role}"),
        Some(pod) => {
            // The kubelet's Docker runtime names containers
            // k8s_<container>_<pod>_<namespace>_<uid>_<attempt>, labels them,
            // and puts them under the pod's cgroup (cgroupfs driver layout).
            for (label, value) in [
                ("io.kubernetes.pod.name", &pod.name),
                ("io.kubernetes.pod.namespace", &pod.namespace),
                ("io.kubernetes.pod.uid", &pod.uid),
                ("io.kubernetes.container.name", &pod.container_name),
            ] {
                args.push("--label".into());
                args.push(format!("{label}={value}"));
            }
            args.push("--cgroup-parent".into());
            args.push(format!("/kubepods/besteffort/pod{}", pod.uid));
            format!(
                "k8s_{}_{}_{}_{}_0",
                pod.container_name, pod.name, pod.namespace, pod.uid
            )
        }
    };
    args.extend([BUSYBOX_IMAGE.to_owned(), "sh".into(), "-c".into(), script]);

    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let container = Container::run(&name, &arg_refs);
    Workload {
        container,
        marker,
        pod,
    }
}

fn pod_for(token: &str, role: &str) -> Pod {
    Pod {
        name: format!("web-{token}-{role}"),
        namespace: "picket-e2e".into(),
        uid: uuid::Uuid::new_v4().to_string(),
        container_name: "web".into(),
    }
}

/// The test's state: server, key and the binaries' image.
struct Scenario {
    token: String,
    server: Server,
    key: String,
    sensor_image: String,
}

impl Scenario {
    /// Starts the sensor container with `flags`, the key and the image.
    fn start_sensor(&self, flags: &[&str]) -> Container {
        let key_env = format!("LC_INSTALLATION_KEY={}", self.key);
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["--env", &key_env, &self.sensor_image]);
        Container::run(&format!("pkt-e2e-{}-sensor", self.token), &args)
    }

    /// Server log and sensor log, for failure messages.
    fn diagnostics(&self, sensor: &Container) -> String {
        format!(
            "--- server log ---\n{}\n--- sensor log ---\n{}",
            self.server.log(),
            picket_e2e::tail(&sensor.logs(), 60)
        )
    }

    /// Waits for a record of `event_type` that `matches`, and returns it.
    fn wait_event(
        &self,
        sensor: &Container,
        event_type: &str,
        description: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_event_from(sensor, event_type, None, description, matches)
    }

    /// [`Scenario::wait_event`] among the events of one container when
    /// `container` is set.
    fn wait_event_from(
        &self,
        sensor: &Container,
        event_type: &str,
        container: Option<&str>,
        description: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = wait_for(EVENT_TIMEOUT, POLL, || {
            let events = match container {
                Some(container) => self.server.container_events(event_type, container),
                None => self.server.events(event_type),
            };
            events.into_iter().find(|record| matches(record))
        });
        found.unwrap_or_else(|| {
            let mut stored = self.server.events(event_type);
            stored.sort_by_key(|record| {
                std::cmp::Reverse(lookup_path(record, "routing/event_time").and_then(Value::as_u64))
            });
            let newest: Vec<String> = stored.iter().take(10).map(Value::to_string).collect();
            panic!(
                "no {event_type} event {description} within {EVENT_TIMEOUT:?}\n\
                 newest {event_type} events stored:\n{}\n{}",
                newest.join("\n"),
                self.diagnostics(sensor)
            )
        })
    }

    /// Waits until exactly one sensor is listed and returns its SID.
    fn wait_single_sensor(&self, sensor: &Container) -> String {
        let listed = wait_for(EVENT_TIMEOUT, POLL, || {
            let sensors = self.server.sensors();
            (!sensors.is_empty()).then_some(sensors)
        })
        .unwrap_or_else(|| panic!("no sensor enrolled\n{}", self.diagnostics(sensor)));
        assert_eq!(listed.len(), 1, "expected one sensor, listed: {listed:#?}");
        sid_of(&listed[0]).unwrap_or_else(|| panic!("sensor entry without a SID: {}", listed[0]))
    }
}

fn sid_of(entry: &Value) -> Option<String> {
    ["sid", "SID", "routing/sid"]
        .iter()
        .find_map(|path| lookup_path(entry, path))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn text_field(record: &Value, path: &str) -> Option<String> {
    lookup_path(record, path)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// True when one whitespace-separated word of the command line is `marker`;
/// a substring match would confuse `...-before` with `...-before-pod`.
fn command_line_contains(record: &Value, marker: &str) -> bool {
    text_field(record, "event/COMMAND_LINE")
        .is_some_and(|line| line.split_whitespace().any(|word| word == marker))
}

fn container_field(record: &Value, field: &str) -> Option<String> {
    text_field(record, &format!("event/{}/{field}", ct::KEY))
}

/// Builds the static binaries and images with `scripts/build-images.sh`
/// and returns the server binary and the sensor image.
fn build_images(tag: &str) -> (PathBuf, String) {
    let script = repo_root().join("scripts/build-images.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(tag)
        .output()
        .unwrap_or_else(|error| panic!("failed to run {}: {error}", script.display()));
    assert!(
        output.status.success(),
        "scripts/build-images.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if PathBuf::from("/work/target-shared").is_dir() {
                PathBuf::from("/work/target-shared")
            } else {
                repo_root().join("target")
            }
        });
    let server = target_dir.join("x86_64-unknown-linux-gnu/release/picket-server");
    (server, format!("picket/sensor:{tag}"))
}

/// Reason to skip while the sensor or server next to `server_binary` is
/// still the placeholder binary of the workspace skeleton.
fn placeholder_reason(server_binary: &Path) -> Option<String> {
    let sensor_binary = server_binary.with_file_name("picket-sensor");
    let binaries = [server_binary, sensor_binary.as_path()];
    let placeholder = binaries.into_iter().find(|binary| {
        Command::new(binary)
            .arg("--help")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("not built yet"))
    });
    placeholder.map(|binary| format!("{} is the placeholder binary", binary.display()))
}

fn assert_workload_attributed(scenario: &Scenario, sensor: &Container, workload: &Workload) {
    let record = scenario.wait_event(
        sensor,
        types::NEW_PROCESS,
        &format!("with {} in its command line", workload.marker),
        |record| {
            command_line_contains(record, &workload.marker)
                && container_field(record, ct::ID).is_some()
        },
    );
    let container = &workload.container;
    assert_eq!(
        container_field(&record, ct::ID).as_deref(),
        Some(container.id.as_str()),
        "{record}"
    );
    assert_eq!(
        container_field(&record, ct::NAME).as_deref(),
        Some(container.name.as_str()),
        "{record}"
    );
    assert_eq!(
        container_field(&record, ct::IMAGE).as_deref(),
        Some(BUSYBOX_IMAGE),
        "{record}"
    );

    let Some(pod) = &workload.pod else { return };
    assert_eq!(
        container_field(&record, ct::POD_NAME).as_deref(),
        Some(pod.name.as_str()),
        "{record}"
    );
    assert_eq!(
        container_field(&record, ct::POD_NAMESPACE).as_deref(),
        Some(pod.namespace.as_str()),
        "{record}"
    );
    assert_eq!(
        container_field(&record, ct::POD_UID).as_deref(),
        Some(pod.uid.as_str()),
        "{record}"
    );
    assert_eq!(
        container_field(&record, ct::K8S_CONTAINER_NAME).as_deref(),
        Some(pod.container_name.as_str()),
        "{record}"
    );
}

/// Runs a uniquely marked command on the host and checks that its
/// NEW_PROCESS record carries no CONTAINER object.
fn assert_host_process_unattributed(scenario: &Scenario, sensor: &Container, label: &str) {
    let marker = format!("pkt-e2e-{}-host-{label}", scenario.token);
    let status = Command::new("/bin/sh")
        .args(["-c", "exit 0", &marker])
        .status()
        .expect("failed to run /bin/sh on the host");
    assert!(status.success());

    let record = scenario.wait_event(
        sensor,
        types::NEW_PROCESS,
        &format!("for host command {marker}"),
        |record| command_line_contains(record, &marker),
    );
    assert!(
        lookup_path(&record, &format!("event/{}", ct::KEY)).is_none(),
        "host process carries a CONTAINER object: {record}"
    );
}

/// How long the test connection stays open.
#[derive(Clone, Copy)]
enum Flow {
    /// 3 s, longer than the polling network tier's 1 s interval, which
    /// misses shorter flows.
    Held,
    /// One HTTP request and its response: a few milliseconds, which only the
    /// eBPF tier's hooks report.
    Short,
}

/// Opens a TCP connection inside the workload to its own address and
/// checks that the connection event is attributed to that container.
fn assert_connection_attributed(
    scenario: &Scenario,
    sensor: &Container,
    workload: &Workload,
    flow: Flow,
) {
    let container = &workload.container;
    let command = match flow {
        Flow::Held => format!("(sleep 3) | nc $(hostname -i) {WORKLOAD_HTTP_PORT}"),
        Flow::Short => {
            format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc $(hostname -i) {WORKLOAD_HTTP_PORT}")
        }
    };
    let output = container.exec(&["sh", "-c", &command]);
    assert!(
        output.status.success(),
        "nc inside {} failed: {}",
        container.name,
        String::from_utf8_lossy(&output.stderr)
    );

    let record = scenario.wait_event_from(
        sensor,
        types::NEW_TCP4_CONNECTION,
        Some(&container.id),
        &format!(
            "to port {WORKLOAD_HTTP_PORT} from container {}",
            container.name
        ),
        |record| {
            container_field(record, ct::ID).as_deref() == Some(container.id.as_str())
                && record.to_string().contains(WORKLOAD_HTTP_PORT)
        },
    );
    assert_eq!(
        container_field(&record, ct::NAME).as_deref(),
        Some(container.name.as_str()),
        "{record}"
    );
}

/// Acquisition tiers from highest to lowest, as the sensor names them in
/// `CONNECTED/ACQUISITION_TIER` and as keys of `CONNECTED/TIER_REASONS`.
const TIERS: [&str; 3] = ["ebpf", "netlink", "procpoll"];

/// Waits for a CONNECTED record sent at or after `since_ms` and checks that
/// it names its tier and gives a reason for each higher tier it skipped.
/// Returns the tier.
fn assert_connected_reports_tier(scenario: &Scenario, sensor: &Container, since_ms: u64) -> String {
    let record = scenario.wait_event(
        sensor,
        types::CONNECTED,
        "from the sensor just started",
        |record| {
            lookup_path(record, "routing/event_time").and_then(Value::as_u64) >= Some(since_ms)
        },
    );

    let tier = text_field(&record, "event/ACQUISITION_TIER")
        .unwrap_or_else(|| panic!("CONNECTED without ACQUISITION_TIER: {record}"));
    let rank = TIERS
        .iter()
        .position(|known| *known == tier)
        .unwrap_or_else(|| panic!("unknown tier {tier:?} in CONNECTED: {record}"));
    for skipped in &TIERS[..rank] {
        let reason = text_field(&record, &format!("event/TIER_REASONS/{skipped}"));
        assert!(
            reason
                .as_deref()
                .is_some_and(|text| !text.trim().is_empty()),
            "CONNECTED runs tier {tier} but gives no reason for skipping {skipped}: {record}"
        );
    }
    tier
}

/// Environment variable that makes this test binary act as the test's DNS
/// resolver inside a container.
const RESOLVER_ROLE_ENV: &str = "PICKET_E2E_RESOLVER";
/// Address the test resolver returns for every `*.picket.test` A query.
const RESOLVER_ANSWER: &str = "10.253.0.9";

/// Entry of this test binary when it runs as the resolver container's
/// program; a no-op in a normal test run.
#[test]
fn resolver_entry() {
    if std::env::var_os(RESOLVER_ROLE_ENV).is_some() {
        run_resolver();
    }
}

/// Serves UDP port 53: an A query for `*.picket.test` gets
/// [`RESOLVER_ANSWER`], every other query an empty answer section.
fn run_resolver() {
    use picket_sensor::dns::{self, build};
    let socket = std::net::UdpSocket::bind("0.0.0.0:53").expect("resolver binds port 53");
    let answer: std::net::IpAddr = RESOLVER_ANSWER.parse().unwrap();
    let mut buf = [0u8; 512];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let query = &buf[..len];
        // Question name starts at 12; its type follows the name.
        let mut pos = 12;
        let mut labels = Vec::new();
        while let Some(&label_len) = query.get(pos) {
            if label_len == 0 || pos + 1 + label_len as usize > query.len() {
                break;
            }
            labels.push(
                String::from_utf8_lossy(&query[pos + 1..pos + 1 + label_len as usize]).into_owned(),
            );
            pos += 1 + label_len as usize;
        }
        let qtype = query
            .get(pos + 1..pos + 3)
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        let name = labels.join(".");
        let answers = if name.ends_with(".picket.test") && qtype == Some(dns::TYPE_A) {
            vec![build::AnswerData::Address(answer)]
        } else {
            Vec::new()
        };
        if let Some(response) = build::response(query, &answers) {
            let _ = socket.send_to(&response, peer);
        }
    }
}

/// Starts the resolver container: this test binary, with the host's shared
/// libraries, on the default bridge. Returns it and its address.
fn start_resolver(token: &str) -> (Container, String) {
    let exe = std::env::current_exe().unwrap();
    let mount = format!("{}:/picket-resolver:ro", exe.display());
    let role = format!("{RESOLVER_ROLE_ENV}=1");
    let container = Container::run(
        &format!("pkt-e2e-{token}-dns"),
        &[
            "-v",
            &mount,
            "-v",
            "/usr/lib:/lib:ro",
            "-v",
            "/usr/lib64:/lib64:ro",
            "-e",
            &role,
            BUSYBOX_IMAGE,
            "/picket-resolver",
            "resolver_entry",
            "--exact",
            "--nocapture",
            "-q",
        ],
    );
    let ip = picket_e2e::docker::docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}}",
        &container.id,
    ]);
    (container, ip.trim().to_owned())
}

/// Looks a name up from inside the workload against the test's resolver and
/// checks that the response is stored as a `DNS_REQUEST` of that container,
/// with the process that sent the query.
fn assert_dns_attributed(
    scenario: &Scenario,
    sensor: &Container,
    workload: &Workload,
    resolver_ip: &str,
) {
    let container = &workload.container;
    let name = format!("{}.picket.test", container.name);
    let output = container.exec(&["nslookup", "-type=a", &name, resolver_ip]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(RESOLVER_ANSWER),
        "nslookup inside {} got no answer: {}{}",
        container.name,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let record = scenario.wait_event_from(
        sensor,
        types::DNS_REQUEST,
        Some(&container.id),
        &format!("for {name} in container {}", container.name),
        |record| text_field(record, "event/DOMAIN_NAME").as_deref() == Some(name.as_str()),
    );
    assert_eq!(
        text_field(&record, "event/IP_ADDRESS").as_deref(),
        Some(RESOLVER_ANSWER),
        "{record}"
    );
    assert!(
        lookup_path(&record, "event/PROCESS_ID")
            .and_then(Value::as_u64)
            .is_some(),
        "DNS answer without the process that asked: {record}"
    );
}

/// True when this host offers what the eBPF tier needs (BTF for CO-RE).
fn ebpf_possible() -> bool {
    std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
}

#[test]
fn docker_run_contract_end_to_end() {
    if !prerequisite(is_root(), "needs root to run privileged containers") {
        return;
    }
    if !prerequisite(
        engine_available(),
        "no Docker engine answers; run scripts/host-setup.sh",
    ) {
        return;
    }
    if !prerequisite(
        image_exists(BUSYBOX_IMAGE),
        "image picket-test/busybox:latest is missing; run scripts/host-setup.sh",
    ) {
        return;
    }

    let token = run_token();
    let (server_binary, sensor_image) = build_images("e2e");
    if let Some(reason) = placeholder_reason(&server_binary) {
        println!("skipped: {reason}");
        return;
    }

    let server = Server::start(&server_binary);
    let org = server.create_org(&format!("e2e-{token}"));
    let key = server.create_key(&org);
    let scenario = Scenario {
        token: token.clone(),
        server,
        key,
        sensor_image,
    };

    // Workloads that run before the sensor starts, and the test's resolver.
    let (_resolver, resolver_ip) = start_resolver(&token);
    let before = start_workload(&token, "before", None);
    let before_pod = start_workload(&token, "before-pod", Some(pod_for(&token, "before")));

    // The sensor exactly as the contract's `docker run` line starts it.
    let started_ms = picket_event::record::now_ms();
    let sensor = scenario.start_sensor(CONTRACT_FLAGS);
    let first_sid = scenario.wait_single_sensor(&sensor);
    let tier = assert_connected_reports_tier(&scenario, &sensor, started_ms);
    // The netlink process connector rejects listeners outside the initial
    // PID namespace, and the contract's line has no --pid=host.
    assert_ne!(
        tier, "netlink",
        "netlink tier without the host PID namespace"
    );

    let after = start_workload(&token, "after", None);
    let after_pod = start_workload(&token, "after-pod", Some(pod_for(&token, "after")));
    for workload in [&before, &before_pod, &after, &after_pod] {
        assert_workload_attributed(&scenario, &sensor, workload);
    }
    assert_host_process_unattributed(&scenario, &sensor, "contract");
    assert_connection_attributed(&scenario, &sensor, &after, Flow::Held);
    assert_dns_attributed(&scenario, &sensor, &after, &resolver_ip);

    // `docker rm -f` and the same command again: the server must know the
    // host and keep one sensor with the same SID.
    sensor.remove();
    let sensor = scenario.start_sensor(CONTRACT_FLAGS);
    let restarted_sid = scenario.wait_single_sensor(&sensor);
    assert_eq!(
        restarted_sid, first_sid,
        "a restarted sensor must keep its SID"
    );
    let restarted = start_workload(&token, "restarted", None);
    assert_workload_attributed(&scenario, &sensor, &restarted);
    sensor.remove();

    // The sensor as the eBPF DaemonSet runs it: host PID, the extra mounts.
    let started_ms = picket_event::record::now_ms();
    let sensor = scenario.start_sensor(EBPF_DAEMONSET_FLAGS);
    assert_eq!(
        scenario.wait_single_sensor(&sensor),
        first_sid,
        "same host, same SID"
    );
    let tier = assert_connected_reports_tier(&scenario, &sensor, started_ms);
    if ebpf_possible() {
        assert_eq!(
            tier, "ebpf",
            "the eBPF DaemonSet flags on a kernel with BTF must give the eBPF tier"
        );
    }
    let ebpf_pod = start_workload(&token, "ebpf-pod", Some(pod_for(&token, "ebpf")));
    assert_workload_attributed(&scenario, &sensor, &ebpf_pod);
    assert_workload_attributed(&scenario, &sensor, &before);
    assert_host_process_unattributed(&scenario, &sensor, "ebpf");
    assert_connection_attributed(&scenario, &sensor, &ebpf_pod, Flow::Held);
    if tier == "ebpf" {
        assert_connection_attributed(&scenario, &sensor, &before, Flow::Short);
    }
    assert!(
        sensor.is_running(),
        "sensor exited:\n{}",
        scenario.diagnostics(&sensor)
    );
}
