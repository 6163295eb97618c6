//! Network and DNS telemetry from real Docker containers on a user-defined
//! network, with the collector run the way the deployment contract runs the
//! sensor: `HOST_FS` is a read-only recursive bind of `/`, and `NET_NS` is a
//! read-only recursive bind of `/var/run/docker/netns` made in a private mount
//! namespace, so namespaces created afterwards are not visible there.
//!
//! Needs root and Docker with the `picket-test/busybox:latest` image
//! (`scripts/host-setup.sh`). All traffic stays on the test's own network;
//! the DNS resolver is a container of the test.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::workload::{
    self, ALIAS_MESSAGE_ID, ALIAS_NAME, ANSWER_IP, TCP_PORT, UDP_PORT, WEB_MESSAGE_ID, WEB_NAME,
};
use support::{of_type, run, SensorChild};

/// Entry of the test binary when it runs inside a container or as the
/// sensor child; a no-op in a normal test run.
#[test]
fn helper_entry() {
    if std::env::var_os(support::CHILD_ENV).is_some() {
        support::sensor_child_main();
        return;
    }
    workload::run_role();
}

/// Containers and network of one scenario, removed on drop.
struct Scenario {
    prefix: String,
    network: String,
    containers: Vec<String>,
}

impl Scenario {
    fn new(label: &str) -> Scenario {
        let prefix = format!("picket-net-{}-{label}", std::process::id());
        let network = format!("{prefix}-lan");
        run("docker", &["network", "create", &network]);
        Scenario {
            prefix,
            network,
            containers: Vec::new(),
        }
    }

    /// Starts the test binary in a busybox container with `role`; returns
    /// the container id.
    fn start(&mut self, name: &str, role: &str, env: &[(&str, String)]) -> String {
        let exe = std::env::current_exe().unwrap();
        let mount = format!("{}:/picket-helper:ro", exe.display());
        let name = format!("{}-{name}", self.prefix);

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
            &format!("{}={role}", workload::ROLE_ENV),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (key, value) in env {
            args.push("-e".into());
            args.push(format!("{key}={value}"));
        }
        args.extend(
            [
                "picket-test/busybox:latest",
                "/picket-helper",
                "helper_entry",
                "--exact",
                "--nocapture",
                "-q",
            ]
            .iter()
            .map(|s| s.to_string()),
        );

        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = run("docker", &args);
        self.containers.push(name);
        id
    }

    fn ip(&self, id: &str) -> String {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.network
        );
        run("docker", &["inspect", "-f", &format, id])
    }

    /// Host pids of the processes in container `id`.
    fn pids(&self, id: &str) -> Vec<u64> {
        run("docker", &["top", id, "-eo", "pid"])
            .lines()
            .skip(1)
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

fn container_id(record: &Value) -> Option<&str> {
    record["event"]["CONTAINER"]["ID"].as_str()
}

fn wait_for_exit(id: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if run("docker", &["inspect", "-f", "{{.State.Running}}", id]) == "false" {
            let code = run("docker", &["inspect", "-f", "{{.State.ExitCode}}", id]);
            let logs = Command::new("docker").args(["logs", id]).output().unwrap();
            assert_eq!(
                code,
                "0",
                "client failed: {}",
                String::from_utf8_lossy(&logs.stderr)
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("client container {id} still running after {timeout:?}");
}

/// The contract's mounts, made in a private mount namespace around the
/// sensor child.
const CONTRACT_WRAPPER: &str = r#"
set -e
root=$(dirname "$PICKET_NET_STOP_FILE")
mkdir -p "$root/rootfs" "$root/netns"
mount --rbind / "$root/rootfs"
mount -o remount,bind,ro "$root/rootfs"
mount --rbind /var/run/docker/netns "$root/netns"
mount -o remount,bind,ro "$root/netns"
export HOST_FS="$root/rootfs" NET_NS="$root/netns"
exec "$@"
"#;

/// How the sensor child collects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Socket tables polled every 500 ms, and the client keeps each flow open
    /// for 2.5 s so a pass reads it.
    Polling,
    /// The eBPF tier's network programs feed the collector. The client's
    /// flows and DNS sockets last a few milliseconds, far below the poll
    /// interval, so only the kernel reports include them.
    Ebpf,
}

#[test]
fn container_flows_and_dns_are_attributed() {
    if prerequisites() {
        scenario(Tier::Polling);
    }
}

#[test]
fn ebpf_short_flows_attributed() {
    if prerequisites() {
        scenario(Tier::Ebpf);
    }
}

fn prerequisites() -> bool {
    support::require(support::is_root(), "needs root")
        && support::require(
            support::docker_ready(),
            "needs docker and picket-test/busybox:latest",
        )
}

/// The sensor child reads every namespace on the host, so two scenarios at
/// once would report each other's flows and DNS answers. They take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn scenario(tier: Tier) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut scenario = Scenario::new(match tier {
        Tier::Polling => "poll",
        Tier::Ebpf => "ebpf",
    });
    let resolver = scenario.start("dns", "resolver", &[]);
    let server = scenario.start("server", "server", &[]);
    let resolver_ip = scenario.ip(&resolver);
    let server_ip = scenario.ip(&server);
    std::thread::sleep(Duration::from_millis(500));
    let server_pids = scenario.pids(&server);
    let resolver_netns = {
        use std::os::unix::fs::MetadataExt;
        let pid = scenario.pids(&resolver)[0];
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .expect("resolver's namespace")
            .ino()
    };

    let sensor_env: &[(&str, &str)] = match tier {
        Tier::Polling => &[],
        Tier::Ebpf => &[("PICKET_NET_EBPF", "1")],
    };
    let sensor = SensorChild::start(
        "helper_entry",
        &format!("exec unshare -m --propagation private sh -c '{CONTRACT_WRAPPER}' sh \"$@\""),
        sensor_env,
    );
    // The first pass has run; the client's namespace is created after the
    // NET_NS bind, so only its processes' ns/net links show it.
    std::thread::sleep(Duration::from_millis(1200));
    let mut client_env = vec![
        ("PICKET_SERVER_IP", server_ip.clone()),
        ("PICKET_RESOLVER_IP", resolver_ip.clone()),
    ];
    if tier == Tier::Ebpf {
        client_env.extend([
            ("PICKET_HOLD_MS", "0".to_owned()),
            ("PICKET_DNS_LINGER_MS", "0".to_owned()),
            ("PICKET_START_DELAY_MS", "3000".to_owned()),
        ]);
    }
    let client = scenario.start("client", "client", &client_env);
    let client_ip = scenario.ip(&client);
    let client_name = format!("{}-client", scenario.prefix);
    let server_name = format!("{}-server", scenario.prefix);
    std::thread::sleep(Duration::from_millis(1000));
    let client_pids = scenario.pids(&client);
    wait_for_exit(&client, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    let output = sensor.finish();
    let records = &output.records;

    // Outgoing TCP from the client's helper process.
    let outgoing = of_type(records, "NEW_TCP4_CONNECTION")
        .into_iter()
        .find(|r| {
            r["event"]["IS_OUTGOING"] == 1
                && r["event"]["DESTINATION"]["PORT"] == TCP_PORT
                && container_id(r) == Some(&client)
        })
        .unwrap_or_else(|| panic!("no outgoing tcp record from the client in {records:#?}"));
    assert_eq!(
        outgoing["event"]["DESTINATION"]["IP_ADDRESS"],
        server_ip.as_str()
    );
    assert_eq!(
        outgoing["event"]["SOURCE"]["IP_ADDRESS"],
        client_ip.as_str()
    );
    let client_pid = outgoing["event"]["PROCESS_ID"]
        .as_u64()
        .expect("client pid");
    assert!(
        client_pids.contains(&client_pid),
        "pid {client_pid} not in client {client_pids:?}"
    );
    assert_eq!(outgoing["routing"]["this"].as_str().map(str::len), Some(32));
    // The container resolver's metadata reached the record.
    assert_eq!(outgoing["event"]["CONTAINER"]["NAME"], client_name.as_str());
    assert_eq!(
        outgoing["event"]["CONTAINER"]["IMAGE"],
        "picket-test/busybox:latest"
    );
    assert_eq!(outgoing["event"]["CONTAINER"]["RUNTIME"], "docker");

    // The same flow seen from the server's namespace, as incoming.
    let incoming = of_type(records, "NEW_TCP4_CONNECTION")
        .into_iter()
        .find(|r| {
            r["event"]["IS_OUTGOING"] == 0 && r["event"]["SOURCE"] == outgoing["event"]["SOURCE"]
        })
        .expect("incoming tcp record on the server");
    assert_eq!(container_id(incoming), Some(server.as_str()));
    assert_eq!(incoming["event"]["CONTAINER"]["NAME"], server_name.as_str());
    let server_pid = incoming["event"]["PROCESS_ID"]
        .as_u64()
        .expect("server pid");
    assert!(
        server_pids.contains(&server_pid),
        "pid {server_pid} not in server {server_pids:?}"
    );
    assert_ne!(
        incoming["event"]["NETWORK_NAMESPACE"],
        outgoing["event"]["NETWORK_NAMESPACE"]
    );

    // The client closed the connection.
    let terminated = of_type(records, "TERMINATE_TCP4_CONNECTION")
        .into_iter()
        .find(|r| {
            r["event"]["SOURCE"] == outgoing["event"]["SOURCE"] && container_id(r) == Some(&client)
        })
        .expect("client connection terminated");
    assert_eq!(terminated["event"]["PROCESS_ID"].as_u64(), Some(client_pid));

    // UDP: the client's connected socket and the server's bound one.
    let udp_client = of_type(records, "NEW_UDP4_CONNECTION")
        .into_iter()
        .find(|r| r["event"]["DESTINATION"]["PORT"] == UDP_PORT && container_id(r) == Some(&client))
        .expect("client udp socket");
    assert_eq!(
        udp_client["event"]["DESTINATION"]["IP_ADDRESS"],
        server_ip.as_str()
    );
    assert_eq!(udp_client["event"]["PROCESS_ID"].as_u64(), Some(client_pid));
    assert_eq!(udp_client["event"]["IS_OUTGOING"], 1);
    let udp_server = of_type(records, "NEW_UDP4_CONNECTION")
        .into_iter()
        .find(|r| r["event"]["PORT"] == UDP_PORT && container_id(r) == Some(&server))
        .expect("server udp socket");
    assert_eq!(udp_server["event"]["STATE"], "UNCONNECTED");
    assert_eq!(udp_server["event"]["PROCESS_ID"].as_u64(), Some(server_pid));

    // DNS answers, in the client's namespace and attributed to its process.
    // Lookups of other workloads on the host are left out.
    let client_netns = outgoing["event"]["NETWORK_NAMESPACE"].as_u64();
    let dns: Vec<_> = of_type(records, "DNS_REQUEST")
        .into_iter()
        .filter(|r| {
            let netns = r["event"]["NETWORK_NAMESPACE"].as_u64();
            netns == client_netns || netns == Some(resolver_netns)
        })
        .collect();
    let web = dns
        .iter()
        .find(|r| r["event"]["MESSAGE_ID"] == WEB_MESSAGE_ID)
        .unwrap_or_else(|| panic!("no answer for {WEB_NAME} in {dns:#?}"));
    assert_eq!(web["event"]["DOMAIN_NAME"], WEB_NAME);
    assert_eq!(web["event"]["IP_ADDRESS"], ANSWER_IP.to_string());
    assert_eq!(web["event"]["DNS_TYPE"], 1);
    assert_eq!(container_id(web), Some(client.as_str()));
    assert_eq!(web["event"]["PROCESS_ID"].as_u64(), Some(client_pid));
    assert_eq!(
        web["event"]["NETWORK_NAMESPACE"],
        outgoing["event"]["NETWORK_NAMESPACE"]
    );

    let alias: Vec<_> = dns
        .iter()
        .filter(|r| r["event"]["MESSAGE_ID"] == ALIAS_MESSAGE_ID)
        .collect();
    assert_eq!(alias.len(), 2, "one record per answer: {alias:#?}");
    assert_eq!(alias[0]["event"]["DOMAIN_NAME"], ALIAS_NAME);
    assert_eq!(alias[0]["event"]["CNAME"], WEB_NAME);
    assert_eq!(alias[1]["event"]["DOMAIN_NAME"], WEB_NAME);
    assert_eq!(alias[1]["event"]["IP_ADDRESS"], ANSWER_IP.to_string());

    // Each response is reported once, for the client, never for the
    // resolver that sent it.
    assert_eq!(dns.len(), 3, "{dns:#?}");
    assert!(dns
        .iter()
        .all(|r| container_id(r) != Some(resolver.as_str())));

    // A per-process summary lists the server's listening UDP socket.
    let summary = of_type(records, "NETWORK_CONNECTIONS")
        .into_iter()
        .find(|r| r["event"]["PROCESS_ID"].as_u64() == Some(server_pid))
        .expect("summary for the server process");
    assert_eq!(container_id(summary), Some(server.as_str()));
    assert!(summary["event"]["NETWORK_ACTIVITY"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["PROTOCOL"] == "udp4" && a["DESTINATION"]["PORT"] == UDP_PORT));

    // The client's namespace file was not visible through the NET_NS bind.
    assert!(
        output.stats["netns_files_stale"].as_u64() > Some(0),
        "{}",
        output.stats
    );
    assert_eq!(output.stats["dns_malformed"], 0);

    if tier == Tier::Ebpf {
        // Reported once although both the kernel and the poller could see it.
        let same_flow = |event_type| {
            of_type(records, event_type)
                .into_iter()
                .filter(|r| {
                    r["event"]["SOURCE"] == outgoing["event"]["SOURCE"]
                        && container_id(r) == Some(&client)
                })
                .count()
        };
        assert_eq!(same_flow("NEW_TCP4_CONNECTION"), 1, "{records:#?}");
        assert_eq!(same_flow("TERMINATE_TCP4_CONNECTION"), 1, "{records:#?}");
        assert!(
            output.stats["kernel_events"].as_u64() >= Some(6),
            "{}",
            output.stats
        );
        // Both lookups were read from the client's buffer by the hooks, and
        // the capture's copies were dropped as already reported. Other
        // workloads' lookups may add to these host-wide counters.
        let counter = |name: &str| output.stats[name].as_u64().unwrap_or(0);
        assert!(counter("dns_kernel_responses") >= 2, "{}", output.stats);
        assert!(counter("dns_read_by_kernel") >= 2, "{}", output.stats);
    }
}
