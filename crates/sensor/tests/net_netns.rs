//! The polling tier against network namespaces the test makes itself with
//! `unshare`, without Docker: flows and their end when the namespace goes
//! away, a namespace that only a `NET_NS` file keeps alive (containerd/CNI naming),
//! and an empty or missing `NET_NS`.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use picket_sensor::collect::net::discover::{self, NetnsDir};
use picket_sensor::collect::net::poll::Poller;
use picket_sensor::collect::net::{sys, Attributor, NetConfig, NetStats, NoContainers};
use picket_sensor::dns::{self, build};
use serde_json::Value;
use support::of_type;

const FILE_NS_CHILD_ENV: &str = "PICKET_NET_FILE_NS_CHILD";

fn poller(net_ns: Option<&Path>) -> (Poller, Arc<NetStats>) {
    poller_with(net_ns, true)
}

fn poller_with(net_ns: Option<&Path>, sock_diag: bool) -> (Poller, Arc<NetStats>) {
    let stats = Arc::new(NetStats::default());
    let config = NetConfig {
        hostname: "test-host".into(),
        sock_diag,
        ..NetConfig::default()
    };
    let poller = Poller::new(
        config,
        PathBuf::from("/proc"),
        net_ns.map(Path::to_path_buf),
        Attributor::new(Path::new("/"), Arc::new(NoContainers)),
        stats.clone(),
        None,
        None,
    );
    (poller, stats)
}

fn records_json(records: Vec<picket_event::Record>) -> Vec<Value> {
    records
        .into_iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

/// Pids in namespace `netns` whose command line starts with `needle`.
fn pids_with_cmdline(netns: u64, needle: &str) -> Vec<u32> {
    discover::process_namespaces(Path::new("/proc"))
        .into_iter()
        .filter(|(_, inode)| *inode == netns)
        .filter(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .starts_with(needle)
                })
                .unwrap_or(false)
        })
        .map(|(pid, _)| pid)
        .collect()
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn flows_end_with_their_namespace_sock_diag() {
    flows_end_with_their_namespace(true);
}

#[test]
fn flows_end_with_their_namespace_proc_text() {
    flows_end_with_their_namespace(false);
}

fn counter(stats: &NetStats, name: &str) -> u64 {
    stats
        .snapshot()
        .into_iter()
        .find(|(k, _)| *k == name)
        .unwrap()
        .1
}

fn flows_end_with_their_namespace(sock_diag: bool) {
    if !support::require(support::is_root(), "needs root")
        || !support::require(
            have("unshare") && have("ip") && have("busybox"),
            "needs unshare, ip and busybox",
        )
    {
        return;
    }
    // busybox nc exits at end of its input, so both ends read a sleep.
    let script = "ip link set lo up; sleep 60 | busybox nc -l -p 5000 >/dev/null & sleep 0.3; sleep 60 | busybox nc 127.0.0.1 5000";
    let mut child = Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .process_group(0)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let netns = discover::namespace_inode(Path::new(&format!("/proc/{}/ns/net", child.id())))
        .expect("child namespace");
    let server_pid = pids_with_cmdline(netns, "busybox nc -l -p 5000")[0];
    let client_pid = pids_with_cmdline(netns, "busybox nc 127.0.0.1 5000")[0];

    let (mut poller, stats) = poller_with(None, sock_diag);
    let first = records_json(poller.poll_once());
    assert_eq!(counter(&stats, "diag_sockets") > 0, sock_diag);
    let in_ns: Vec<&Value> = of_type(&first, "NEW_TCP4_CONNECTION")
        .into_iter()
        .filter(|r| r["event"]["NETWORK_NAMESPACE"] == netns)
        .collect();
    assert_eq!(in_ns.len(), 2, "{in_ns:#?}");
    let outgoing = in_ns
        .iter()
        .find(|r| r["event"]["IS_OUTGOING"] == 1)
        .unwrap();
    let incoming = in_ns
        .iter()
        .find(|r| r["event"]["IS_OUTGOING"] == 0)
        .unwrap();
    assert_eq!(outgoing["event"]["DESTINATION"]["PORT"], 5000);
    assert_eq!(outgoing["event"]["PROCESS_ID"], client_pid);
    assert_eq!(outgoing["event"]["STATE"], "ESTABLISHED");
    assert_eq!(incoming["event"]["SOURCE"], outgoing["event"]["SOURCE"]);
    assert_eq!(incoming["event"]["PROCESS_ID"], server_pid);
    assert!(outgoing["event"].get("CONTAINER").is_none());

    // Nothing changed: no records for this namespace.
    let second = records_json(poller.poll_once());
    assert!(
        second
            .iter()
            .all(|r| r["event"]["NETWORK_NAMESPACE"] != netns),
        "{second:#?}"
    );

    // Kill every process of the namespace; the namespace disappears.
    // SAFETY: kill(2) on the process group this test created.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let third = records_json(poller.poll_once());
    let ended: Vec<&Value> = of_type(&third, "TERMINATE_TCP4_CONNECTION")
        .into_iter()
        .filter(|r| r["event"]["NETWORK_NAMESPACE"] == netns)
        .collect();
    assert_eq!(ended.len(), 2, "{third:#?}");
    assert!(ended.iter().any(|r| r["event"]["PROCESS_ID"] == client_pid));
    assert!(ended.iter().any(|r| r["event"]["PROCESS_ID"] == server_pid));
    assert!(stats
        .snapshot()
        .iter()
        .any(|(k, v)| *k == "connections_terminated" && *v >= 2));
}

/// Runs in a private mount namespace (see `file_only_namespace_is_read`).
fn file_only_namespace_child() {
    let dir = tempfile::tempdir().unwrap();
    let netns_dir = dir.path().join("netns");
    std::fs::create_dir(&netns_dir).unwrap();
    let file = netns_dir.join("cni-6f1c2e3a-0b4d-4e8f-9a7b-1c2d3e4f5a6b");
    std::fs::write(netns_dir.join("cni-stale"), b"").unwrap();
    std::fs::write(&file, b"").unwrap();
    support::run("unshare", &[&format!("--net={}", file.display()), "true"]);

    // Sockets in that namespace, held by this process, which stays in the
    // host namespace: a loopback connection and a listener.
    let (listener, client, server) = sys::run_in_netns(&file, || {
        let status = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()?;
        assert!(status.success());
        let listener = std::net::TcpListener::bind("127.0.0.1:7070")?;
        let client = std::net::TcpStream::connect("127.0.0.1:7070")?;
        let (server, _) = listener.accept()?;
        Ok((listener, client, server))
    })
    .unwrap();

    let inode = std::fs::metadata(&file)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let discovery = discover::discover(Path::new("/proc"), Some(&netns_dir));
    assert_eq!(
        discovery.netns_dir,
        NetnsDir::Read {
            namespaces: 1,
            stale: 1
        }
    );
    let netns = &discovery.namespaces[&inode];
    assert!(netns.pids.is_empty());
    assert_eq!(netns.file.as_deref(), Some(file.as_path()));

    let (mut poller, _) = poller(Some(&netns_dir));
    let records = records_json(poller.poll_once());
    let flows: Vec<&Value> = of_type(&records, "NEW_TCP4_CONNECTION")
        .into_iter()
        .filter(|r| r["event"]["NETWORK_NAMESPACE"] == inode)
        .collect();
    // No process is in the namespace, so the owner is unknown at first; the
    // flows are reported once the owner wait is over.
    assert!(flows.is_empty(), "{flows:#?}");
    poller.poll_once();
    let records = records_json(poller.poll_once());
    let flows: Vec<&Value> = of_type(&records, "NEW_TCP4_CONNECTION")
        .into_iter()
        .filter(|r| r["event"]["NETWORK_NAMESPACE"] == inode)
        .collect();
    assert_eq!(flows.len(), 2, "{records:#?}");
    assert!(flows
        .iter()
        .any(|r| r["event"]["DESTINATION"]["PORT"] == 7070 && r["event"]["IS_OUTGOING"] == 1));

    // netstat scans every process's fds, so it finds this process as owner.
    let rows =
        picket_sensor::netstat::snapshot(Path::new("/"), Some(&netns_dir), Arc::new(NoContainers));
    let listen = rows
        .iter()
        .find(|r| r.netns == inode && r.state == "LISTEN")
        .expect("listener in netstat");
    assert_eq!(listen.local.port(), 7070);
    assert_eq!(
        listen.process.as_ref().map(|p| p.pid),
        Some(std::process::id())
    );
    drop((listener, client, server));

    capture_in_file_only_namespace(&netns_dir, &file, inode);
}

/// Runs the whole collector against the namespace and sends it a valid DNS
/// response and two malformed ones over its loopback.
fn capture_in_file_only_namespace(netns_dir: &Path, file: &Path, inode: u64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let config = NetConfig {
        poll_interval: Duration::from_millis(200),
        hostname: "test-host".into(),
        ..NetConfig::default()
    };
    let handle = picket_sensor::collect::net::spawn(
        config,
        PathBuf::from("/"),
        Some(netns_dir.to_path_buf()),
        Arc::new(NoContainers),
        None,
        tx,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counter(&handle.stats, "capture_sockets") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no capture socket opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (resolver, client) = sys::run_in_netns(file, || {
        let resolver = std::net::UdpSocket::bind("127.0.0.1:53")?;
        let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
        Ok((resolver, client))
    })
    .unwrap();
    let query = build::query(0x7e57, "ok.picket.test", dns::TYPE_A);
    let answer = build::AnswerData::Address("10.9.8.7".parse().unwrap());
    let valid = build::response(&query, &[answer]).unwrap();
    let truncated = valid[..valid.len() - 3].to_vec();
    // A response whose answer name is a pointer to itself.
    let mut looping = valid[..12 + 16 + 4].to_vec();
    looping[7] = 1;
    let at = looping.len();
    looping.extend_from_slice(&[0xc0, at as u8, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
    let target = client.local_addr().unwrap();
    for packet in [&truncated, &looping, &valid] {
        resolver.send_to(packet, target).unwrap();
    }

    let mut dns_records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        while let Ok(record) = rx.try_recv() {
            if record.routing.event_type == "DNS_REQUEST" {
                dns_records.push(serde_json::to_value(record).unwrap());
            }
        }
        if !dns_records.is_empty() && counter(&handle.stats, "dns_malformed") >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(dns_records.len(), 1, "{dns_records:#?}");
    let event = &dns_records[0]["event"];
    assert_eq!(event["DOMAIN_NAME"], "ok.picket.test");
    assert_eq!(event["IP_ADDRESS"], "10.9.8.7");
    assert_eq!(event["MESSAGE_ID"], 0x7e57);
    assert_eq!(event["NETWORK_NAMESPACE"], inode);
    assert_eq!(counter(&handle.stats, "dns_malformed"), 2);
    assert_eq!(counter(&handle.stats, "dns_responses"), 1);
    drop(rx);
    handle.stop();
}

#[test]
fn file_only_namespace_is_read() {
    if std::env::var_os(FILE_NS_CHILD_ENV).is_some() {
        file_only_namespace_child();
        return;
    }
    if !support::require(support::is_root(), "needs root")
        || !support::require(have("unshare") && have("ip"), "needs unshare and ip")
    {
        return;
    }
    // `unshare --net=FILE` binds the namespace to FILE, which needs a mount
    // namespace of the test's own so nothing is left on the host.
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(&exe)
        .args([
            "file_only_namespace_is_read",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FILE_NS_CHILD_ENV, "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn empty_or_missing_netns_dir_is_counted() {
    let empty = tempfile::tempdir().unwrap();
    let (mut poller, stats) = poller(Some(empty.path()));
    poller.poll_once();
    let (mut missing, missing_stats) = poller_for_missing();
    missing.poll_once();

    let value = |stats: &NetStats, name: &str| {
        stats
            .snapshot()
            .into_iter()
            .find(|(k, _)| *k == name)
            .unwrap()
            .1
    };
    assert_eq!(value(&stats, "netns_dir_unreadable"), 0);
    assert!(value(&stats, "namespaces") >= 1);
    assert_eq!(value(&missing_stats, "netns_dir_unreadable"), 1);
    assert!(value(&missing_stats, "namespaces") >= 1);
}

fn poller_for_missing() -> (Poller, Arc<NetStats>) {
    poller(Some(Path::new("/nonexistent/picket/netns")))
}

#[test]
fn netstat_rejects_host_fs_without_proc() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_picket-sensor"))
        .arg("netstat")
        .env("HOST_FS", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "printed a table anyway");
    assert!(
        stderr.contains(&format!("HOST_FS={}", dir.path().display())),
        "{stderr}"
    );
    assert!(stderr.contains("proc/1/stat not found"), "{stderr}");
}
