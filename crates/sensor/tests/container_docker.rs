//! Attribution of real Docker containers: each test starts a container from
//! the local image `picket-test/busybox:latest` (built by
//! `scripts/host-setup.sh`), reads `/proc/<pid>/cgroup` of its process from
//! the host and resolves it with `HOST_FS=/`.
//!
//! Needs root and a running Docker engine. Without them a test fails when
//! `CI=true` and otherwise prints `skipped: <reason>` and returns.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use picket_sensor::container::{explain_cgroup_with_metadata, parse_cgroup, ContainerResolver};

const IMAGE: &str = "picket-test/busybox:latest";

/// Returns `false` (after printing why) when the test cannot run here.
fn docker_ready() -> bool {
    let problem = if is_not_root() {
        Some("not running as root".to_string())
    } else {
        match Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
        {
            Err(e) => Some(format!("docker client not runnable: {e}")),
            Ok(out) if !out.status.success() => Some(format!(
                "docker engine or image {IMAGE} unavailable (run scripts/host-setup.sh): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(_) => None,
        }
    };
    match problem {
        None => true,
        Some(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Docker test cannot run in CI: {reason}")
        }
        Some(reason) => {
            println!("skipped: {reason}");
            false
        }
    }
}

fn is_not_root() -> bool {
    // The effective uid is readable from /proc without libc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid != "0"))
        })
        .unwrap_or(true)
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("docker prints UTF-8")
        .trim()
        .to_string()
}

/// A container removed (with its cgroup parents, when given) on drop.
struct TestContainer {
    id: String,
    name: String,
    cgroup_parent: Option<String>,
}

impl TestContainer {
    fn start(name: &str, extra: &[&str]) -> Self {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sleep", "300"]);
        let cgroup_parent = extra
            .iter()
            .position(|a| *a == "--cgroup-parent")
            .map(|i| extra[i + 1].to_string());
        let id = docker(&args);
        Self {
            id,
            name: name.to_string(),
            cgroup_parent,
        }
    }

    fn host_pid(&self) -> u32 {
        docker(&["inspect", "-f", "{{.State.Pid}}", &self.id])
            .parse()
            .expect("docker inspect prints a pid")
    }

    fn cgroup_text(&self) -> String {
        let path = format!("/proc/{}/cgroup", self.host_pid());
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("failed to read {path}: {e}"))
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
        // Docker leaves the parent cgroups of --cgroup-parent behind; remove
        // the ones this test created, deepest first. rmdir fails harmlessly
        // on a cgroup that is still in use.
        if let Some(parent) = &self.cgroup_parent {
            let mut levels: Vec<&str> = parent.trim_matches('/').split('/').collect();
            while !levels.is_empty() {
                let relative = levels.join("/");
                if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
                    for hierarchy in entries.flatten() {
                        let _ = std::fs::remove_dir(hierarchy.path().join(&relative));
                    }
                }
                levels.pop();
            }
        }
    }
}

fn unique_name(kind: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "picket-container-{kind}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[test]
fn docker_container_resolves_id_name_image() {
    if !docker_ready() {
        return;
    }
    // Started before the resolver exists, like a container that ran before
    // the sensor.
    let name = unique_name("plain");
    let container = TestContainer::start(&name, &[]);
    let cgroup = container.cgroup_text();

    let resolver = ContainerResolver::new(Path::new("/"));
    let info = resolver
        .resolve(&cgroup)
        .unwrap_or_else(|| panic!("container not attributed from cgroup:\n{cgroup}"));
    assert_eq!(info.id, container.id);
    assert_eq!(info.name.as_deref(), Some(name.as_str()));
    assert_eq!(info.image.as_deref(), Some(IMAGE));
    assert_eq!(info.runtime.map(|r| r.as_str()), Some("docker"));
    assert_eq!(info.pod_name, None);

    let json = info.to_json();
    assert_eq!(json["ID"], container.id.as_str());
    assert_eq!(json["NAME"], name.as_str());
    assert_eq!(json["IMAGE"], IMAGE);
    assert_eq!(json["RUNTIME"], "docker");
    assert!(
        json.get("POD_NAME").is_none(),
        "plain container has pod fields: {json}"
    );

    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    assert_eq!(
        resolver.resolve(&own),
        None,
        "the test process is a host process but was attributed; its cgroup:\n{own}"
    );
}

#[test]
fn docker_pod_labels_give_pod_fields() {
    if !docker_ready() {
        return;
    }
    // What the kubelet's dockershim does: a pod cgroup parent, k8s_ names and
    // io.kubernetes labels.
    let uid = format!(
        "{:08x}-7a1e-4c3b-9d2f-{:012x}",
        std::process::id(),
        0x5eed_u64
    );
    let parent = format!("/kubepods/besteffort/pod{uid}");
    let name = format!("k8s_app_web-0_shop_{uid}_{}", unique_name("pod"));
    let labels = [
        "--label".to_string(),
        "io.kubernetes.pod.name=web-0".to_string(),
        "--label".to_string(),
        "io.kubernetes.pod.namespace=shop".to_string(),
        "--label".to_string(),
        format!("io.kubernetes.pod.uid={uid}"),
        "--label".to_string(),
        "io.kubernetes.container.name=app".to_string(),
        "--label".to_string(),
        "io.kubernetes.docker.type=container".to_string(),
        "--cgroup-parent".to_string(),
        parent.clone(),
    ];
    let extra: Vec<&str> = labels.iter().map(String::as_str).collect();
    let container = TestContainer::start(&name, &extra);
    let cgroup = container.cgroup_text();
    assert!(
        cgroup.contains(&format!("{parent}/{}", container.id)),
        "docker did not place the container below {parent}:\n{cgroup}"
    );

    let attribution = parse_cgroup(&cgroup, None);
    assert_eq!(attribution.pod_uid.as_deref(), Some(uid.as_str()));
    assert_eq!(
        attribution.runtime_hint, None,
        "the path shape names no runtime"
    );

    let resolver = ContainerResolver::new(Path::new("/"));
    let info = resolver.resolve(&cgroup).expect("pod container attributed");
    assert_eq!(info.id, container.id);
    assert_eq!(
        info.runtime.map(|r| r.as_str()),
        Some("docker"),
        "runtime from metadata"
    );
    assert_eq!(info.name.as_deref(), Some(name.as_str()));
    assert_eq!(info.image.as_deref(), Some(IMAGE));

    let json = info.to_json();
    assert_eq!(json["POD_NAME"], "web-0");
    assert_eq!(json["POD_NAMESPACE"], "shop");
    assert_eq!(json["POD_UID"], uid.as_str());
    assert_eq!(json["K8S_CONTAINER_NAME"], "app");

    let explained = explain_cgroup_with_metadata(&resolver, &cgroup);
    assert_eq!(explained["runtime"], "docker");
    assert_eq!(explained["runtime_source"], "metadata");
    assert_eq!(explained["metadata_complete"], true);
}

#[test]
fn private_cgroupns_view_resolves_with_prefix() {
    if !docker_ready() {
        return;
    }
    let target = TestContainer::start(&unique_name("target"), &[]);
    let target_pid = target.host_pid().to_string();
    let reader = TestContainer::start(
        &unique_name("reader"),
        &["--cgroupns=private", "--pid=host"],
    );

    // The reader sees the target's cgroup relative to its own namespace root.
    let relative = docker(&[
        "exec",
        &reader.name,
        "cat",
        &format!("/proc/{target_pid}/cgroup"),
    ]);
    assert!(
        relative.contains("/.."),
        "expected paths climbing out of the reader's cgroup namespace:\n{relative}"
    );

    let without_prefix = parse_cgroup(&relative, None);
    assert!(without_prefix.unresolved_relative);

    let reader_cgroup = reader.cgroup_text();
    let prefix = parse_cgroup(&reader_cgroup, None)
        .cgroup_path
        .expect("reader cgroup path");
    let resolved = parse_cgroup(&relative, Some(&prefix));
    assert_eq!(resolved.container_id.as_deref(), Some(target.id.as_str()));
    assert!(!resolved.unresolved_relative);
    assert_eq!(
        resolved.cgroup_path,
        parse_cgroup(&target.cgroup_text(), None).cgroup_path,
        "resolved path differs from the host's view"
    );

    // The reader's own processes read `/`, which the prefix resolves to the
    // reader itself.
    let own = docker(&["exec", &reader.name, "cat", "/proc/self/cgroup"]);
    let own_resolved = parse_cgroup(&own, Some(&prefix));
    assert_eq!(
        own_resolved.container_id.as_deref(),
        Some(reader.id.as_str())
    );
}

#[test]
fn docker_bundle_alone_names_runtime() {
    if !docker_ready() {
        return;
    }
    let container = TestContainer::start(&unique_name("bundle"), &[]);
    let cgroup = container.cgroup_text();

    // A HOST_FS that shows only the host's /run: Docker's config.v2.json is
    // out of sight, so the runtime must come from the containerd bundle
    // dockerd keeps in the `moby` namespace.
    let host = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/run", host.path().join("run")).unwrap();
    let bundle_visible = [
        "run/containerd/io.containerd.runtime.v2.task/moby",
        "run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby",
    ]
    .iter()
    .any(|dir| {
        host.path()
            .join(dir)
            .join(&container.id)
            .join("config.json")
            .exists()
    });
    assert!(
        bundle_visible,
        "no containerd bundle for {} under /run",
        container.id
    );

    let resolver = ContainerResolver::new(host.path());
    let info = resolver.resolve(&cgroup).expect("container attributed");
    assert_eq!(info.id, container.id);
    assert_eq!(info.runtime.map(|r| r.as_str()), Some("docker"));
    assert_eq!(info.name, None, "the bundle carries no Docker name");
    assert!(
        info.metadata_files
            .iter()
            .any(|p| p.ends_with(format!("moby/{}/config.json", container.id))),
        "metadata not read from the bundle: {:?}",
        info.metadata_files
    );
}

#[test]
fn nested_container_read_through_outer_root() {
    if !docker_ready() {
        return;
    }
    // The outer container plays a kind node: a containerd bundle is
    // written inside it, and the nested container's cgroup path is the one a
    // node's kubelet would create below it. The resolver must find the bundle
    // through /proc/<pid>/root of the outer container's process.
    let outer = TestContainer::start(&unique_name("node"), &[]);
    let inner_id = format!("{:0>64x}", u64::from(std::process::id()) << 8 | 0x5a);
    let uid = "0b3f6a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    let bundle = format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{inner_id}");
    let config = r#"{"annotations":{"io.kubernetes.cri.container-name":"web","io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.image-name":"nginx:1.27"}}"#;
    docker(&[
        "exec",
        &outer.name,
        "sh",
        "-c",
        &format!("mkdir -p {bundle} && echo '{config}' > {bundle}/config.json"),
    ]);

    let cgroup = format!(
        "0::/docker/{}/kubepods/besteffort/pod{uid}/{inner_id}",
        outer.id
    );
    let resolver = ContainerResolver::new(Path::new("/"));
    let info = resolver
        .resolve(&cgroup)
        .expect("nested container attributed");
    assert_eq!(info.id, inner_id);
    assert_eq!(info.outer_id.as_deref(), Some(outer.id.as_str()));
    assert_eq!(info.runtime.map(|r| r.as_str()), Some("containerd"));
    assert_eq!(info.pod_name.as_deref(), Some("web-0"));
    assert_eq!(info.pod_namespace.as_deref(), Some("shop"));
    assert_eq!(info.pod_uid.as_deref(), Some(uid));
    assert_eq!(info.k8s_container_name.as_deref(), Some("web"));
    assert_eq!(info.image.as_deref(), Some("nginx:1.27"));
    assert!(
        info.metadata_files
            .iter()
            .any(|p| p.starts_with("/proc") && p.ends_with("config.json")),
        "bundle not read through /proc/<pid>/root: {:?}",
        info.metadata_files
    );
}
