//! Cost of container attribution per process: cgroup parsing, a cached
//! resolve, and a first resolve that reads Docker's `config.v2.json`.
//!
//! Run: `cargo bench -p picket-sensor --bench container_resolve`. Prints
//! nanoseconds per call; it asserts nothing.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use picket_sensor::container::{parse_cgroup, ContainerResolver};

const CONTAINERS: usize = 500;

fn container_id(n: usize) -> String {
    format!("{n:064x}")
}

fn v1_cgroup(id: &str) -> String {
    let controllers = [
        "name=systemd",
        "pids",
        "blkio",
        "freezer",
        "devices",
        "memory",
        "cpuset",
        "cpuacct",
        "cpu",
    ];
    let mut text: String = controllers
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}:{c}:/docker/{id}\n", controllers.len() - i))
        .collect();
    text.push_str(&format!("0::/docker/{id}\n"));
    text
}

fn v2_pod_cgroup(id: &str) -> String {
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod042efd86_1f3b_4f2f_8736_f31c58e95bbc.slice/cri-containerd-{id}.scope\n"
    )
}

fn write_docker_fixture(host: &Path) {
    for n in 0..CONTAINERS {
        let id = container_id(n);
        let dir = host.join("var/lib/docker/containers").join(&id);
        std::fs::create_dir_all(&dir).expect("create fixture directory");
        let config = serde_json::json!({
            "ID": id,
            "Name": format!("/bench-{n}"),
            "Config": {"Image": "picket-test/busybox:latest", "Labels": {"n": n.to_string()}},
        });
        std::fs::write(dir.join("config.v2.json"), config.to_string()).expect("write fixture");
    }
}

fn report(label: &str, calls: usize, started: Instant) {
    let nanos = started.elapsed().as_nanos() as f64 / calls as f64;
    println!("{label:<48} {nanos:>10.0} ns/call ({calls} calls)");
}

fn main() {
    let host = tempfile::tempdir().expect("create fixture HOST_FS");
    write_docker_fixture(host.path());
    let v1: Vec<String> = (0..CONTAINERS)
        .map(|n| v1_cgroup(&container_id(n)))
        .collect();
    // Ids with no metadata in the fixture.
    let v2: Vec<String> = (CONTAINERS..2 * CONTAINERS)
        .map(|n| v2_pod_cgroup(&container_id(n)))
        .collect();
    let rounds = 200;

    let started = Instant::now();
    for _ in 0..rounds {
        for text in &v1 {
            black_box(parse_cgroup(black_box(text), None));
        }
    }
    report(
        "parse_cgroup, cgroup v1 (10 lines)",
        rounds * CONTAINERS,
        started,
    );

    let started = Instant::now();
    for _ in 0..rounds {
        for text in &v2 {
            black_box(parse_cgroup(black_box(text), None));
        }
    }
    report(
        "parse_cgroup, cgroup v2 kubepods scope",
        rounds * CONTAINERS,
        started,
    );

    let resolver = ContainerResolver::new(host.path());
    let started = Instant::now();
    for text in &v1 {
        black_box(resolver.resolve(text));
    }
    report(
        "resolve, first lookup (reads config.v2.json)",
        CONTAINERS,
        started,
    );

    let started = Instant::now();
    for _ in 0..rounds {
        for text in &v1 {
            black_box(resolver.resolve(text));
        }
    }
    report("resolve, cached, cgroup v1", rounds * CONTAINERS, started);

    // No metadata for these ids. The first resolve of each searches every
    // runtime's files and misses; later ones hit the cached partial entry
    // inside its back-off window.
    let started = Instant::now();
    for text in &v2 {
        black_box(resolver.resolve(text));
    }
    report(
        "resolve, first lookup that finds nothing, v2",
        CONTAINERS,
        started,
    );

    let started = Instant::now();
    for _ in 0..rounds {
        for text in &v2 {
            black_box(resolver.resolve(text));
        }
    }
    report(
        "resolve, partial entry within back-off, v2",
        rounds * CONTAINERS,
        started,
    );
}
