//! Checks the FROM-scratch images built by `scripts/build-images.sh`. The
//! sensor image's entry point, environment and working directory must match
//! the deployment contract. Each image must contain only its binary and the
//! empty directories it needs. The server image must serve as an
//! unprivileged user on a read-only root file system.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use picket_e2e::docker::{docker, docker_ok, engine_available, Container};
use picket_e2e::server::free_port;
use picket_e2e::{is_root, prerequisite, repo_root, run_token, wait_for};
use serde_json::Value;

/// Entries that Docker adds to every container's file system at run time;
/// they are not part of the image.
const RUNTIME_ENTRIES: &[&str] = &[
    ".dockerenv",
    "dev/",
    "dev/console",
    "dev/pts/",
    "dev/shm/",
    "etc/",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
    "proc/",
    "sys/",
];

/// Images built once per test binary, tagged `e2e` so repeated runs
/// replace them instead of piling up tags.
struct Images {
    sensor: String,
    server: String,
}

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let script = repo_root().join("scripts/build-images.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg("e2e")
            .output()
            .expect("failed to run build-images.sh");
        assert!(
            output.status.success(),
            "scripts/build-images.sh failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let printed = String::from_utf8_lossy(&output.stdout);
        let images = Images {
            sensor: "picket/sensor:e2e".to_owned(),
            server: "picket/server:e2e".to_owned(),
        };
        assert!(
            printed.contains(&images.sensor),
            "build-images.sh did not print {}: {printed}",
            images.sensor
        );
        assert!(
            printed.contains(&images.server),
            "build-images.sh did not print {}: {printed}",
            images.server
        );
        images
    })
}

fn image_config(image: &str) -> Value {
    let text = docker_ok(&["image", "inspect", "--format", "{{json .Config}}", image]);
    serde_json::from_str(&text).expect("docker image inspect printed invalid JSON")
}

/// Lists the image's files as `tar -tv` lines, without the runtime entries.
fn image_entries(image: &str) -> Vec<(String, String)> {
    let created = docker_ok(&["create", image]);
    let mut export = Command::new("docker")
        .args(["export", &created])
        .stdout(Stdio::piped())
        .spawn()
        .expect("failed to run docker export");
    let listing = Command::new("tar")
        .args(["-tvf", "-"])
        .stdin(export.stdout.take().expect("docker export stdout is piped"))
        .output()
        .expect("failed to run tar");
    let exported = export.wait().expect("failed to wait for docker export");
    docker(&["rm", &created]);
    assert!(exported.success(), "docker export {image} failed");
    assert!(
        listing.status.success(),
        "tar failed to read the exported image"
    );

    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter_map(|line| {
            let mode = line.split_whitespace().next()?.to_owned();
            let path = line.split_whitespace().nth(5)?.to_owned();
            (!RUNTIME_ENTRIES.contains(&path.as_str())).then_some((path, mode))
        })
        .collect()
}

fn ready() -> bool {
    prerequisite(is_root(), "needs root to build images")
        && prerequisite(
            engine_available(),
            "no Docker engine answers; run scripts/host-setup.sh",
        )
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn images_match_contract_and_hold_one_binary() {
    if !ready() {
        return;
    }
    let images = images();

    let sensor = image_config(&images.sensor);
    assert_eq!(string_list(&sensor["Entrypoint"]), ["/picket-sensor"]);
    assert_eq!(string_list(&sensor["Cmd"]), ["-d", "-"]);
    assert_eq!(sensor["WorkingDir"], "/lc");
    let env = string_list(&sensor["Env"]);
    assert!(env.contains(&"HOST_FS=/rootfs".to_owned()), "{env:?}");
    assert!(env.contains(&"NET_NS=/netns".to_owned()), "{env:?}");

    let entries = image_entries(&images.sensor);
    let paths: BTreeSet<&str> = entries.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        BTreeSet::from(["lc/", "picket-sensor", "tmp/"]),
        "{entries:?}"
    );
    let tmp_mode = entries
        .iter()
        .find(|(path, _)| path == "tmp/")
        .map(|(_, mode)| mode.as_str());
    assert_eq!(
        tmp_mode,
        Some("drwxrwxrwt"),
        "/tmp must be world-writable with the sticky bit"
    );

    let server = image_config(&images.server);
    assert_eq!(string_list(&server["Entrypoint"]), ["/picket-server"]);
    let server_entries = image_entries(&images.server);
    let server_paths: BTreeSet<&str> = server_entries
        .iter()
        .map(|(path, _)| path.as_str())
        .collect();
    assert_eq!(
        server_paths,
        BTreeSet::from(["data/", "picket-server", "tmp/"]),
        "{server_entries:?}"
    );
}

#[test]
fn server_image_serves_unprivileged_read_only() {
    if !ready() {
        return;
    }
    let images = images();
    let data = tempfile::tempdir().expect("failed to create a data directory");
    let chown = Command::new("chown")
        .arg("65532:65532")
        .arg(data.path())
        .status()
        .expect("failed to run chown");
    assert!(chown.success());

    let port = free_port();
    let volume = format!("{}:/data", data.path().display());
    let listen = format!("127.0.0.1:{port}");
    let http_listen = format!("127.0.0.1:{}", free_port());
    let advertise = format!("https://127.0.0.1:{port}");
    let container = Container::run(
        &format!("pkt-e2e-{}-server", run_token()),
        &[
            "--user",
            "65532:65532",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--net=host",
            "-v",
            &volume,
            &images.server,
            "serve",
            "--data",
            "/data",
            "--grpc-listen",
            &listen,
            "--http-listen",
            &http_listen,
            "--advertise-url",
            &advertise,
        ],
    );

    let listening = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).ok()
    });
    assert!(
        listening.is_some(),
        "server container did not listen on {listen}:\n{}",
        container.logs()
    );

    let org = container.exec(&[
        "/picket-server",
        "org",
        "create",
        "images-test",
        "--data",
        "/data",
    ]);
    assert!(
        org.status.success(),
        "org create failed: {}",
        String::from_utf8_lossy(&org.stderr)
    );
    let org_id = String::from_utf8_lossy(&org.stdout).trim().to_owned();
    let key = container.exec(&[
        "/picket-server",
        "key",
        "create",
        "--org",
        &org_id,
        "--data",
        "/data",
    ]);
    assert!(
        key.status.success(),
        "key create failed: {}",
        String::from_utf8_lossy(&key.stderr)
    );
    let key_text = String::from_utf8_lossy(&key.stdout);
    let parsed = picket_event::key::InstallationKey::decode(key_text.trim())
        .expect("key create printed an invalid key");
    assert_eq!(parsed.url, advertise);
    assert!(
        data.path().join("server.crt").exists(),
        "the certificate is not in the data volume"
    );
}
