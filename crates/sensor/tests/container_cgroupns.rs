//! `find_host_cgroup_prefix` run from a real private cgroup namespace.
//!
//! The test creates a cgroup, moves a child into it, and has the child
//! `unshare --cgroup` and run this same test binary. In the child the test
//! reports the prefix it finds and what `parse_cgroup` makes of the parent's
//! cgroup from there. Needs root and a writable cgroup hierarchy. Without them
//! the test fails when `CI=true` and otherwise prints `skipped: <reason>`.

use std::path::{Path, PathBuf};
use std::process::Command;

use picket_sensor::container::{find_host_cgroup_prefix, parse_cgroup};

const CHILD_ENV: &str = "PICKET_CGROUPNS_PROBE_PARENT_PID";
const SIBLING_ENV: &str = "PICKET_CGROUPNS_PROBE_SIBLING_PID";
const TEST_NAME: &str = "prefix_found_from_private_namespace";

/// First writable hierarchy in the order the prefix search uses.
fn hierarchy() -> Option<PathBuf> {
    [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/pids",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|dir| dir.join("cgroup.procs").exists())
}

fn skip_or_fail(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("cgroup namespace test cannot run in CI: {reason}");
    }
    println!("skipped: {reason}");
}

/// Child side: runs inside the private namespace and prints its findings.
fn run_child(parent_pid: &str, sibling_pid: &str) {
    let prefix = find_host_cgroup_prefix(Path::new("/")).expect("prefix search failed");
    println!("PREFIX={}", prefix.as_deref().unwrap_or("-"));

    let parent_cgroup = std::fs::read_to_string(format!("/proc/{parent_pid}/cgroup")).unwrap();
    let seen = parse_cgroup(&parent_cgroup, prefix.as_deref());
    println!("PARENT_PATH={}", seen.cgroup_path.as_deref().unwrap_or("-"));
    println!("PARENT_UNRESOLVED={}", seen.unresolved_relative);

    let sibling_cgroup = std::fs::read_to_string(format!("/proc/{sibling_pid}/cgroup")).unwrap();
    let sibling = parse_cgroup(&sibling_cgroup, prefix.as_deref());
    println!(
        "SIBLING_ID={}",
        sibling.container_id.as_deref().unwrap_or("-")
    );
    println!(
        "SIBLING_PATH={}",
        sibling.cgroup_path.as_deref().unwrap_or("-")
    );
    let unprefixed = parse_cgroup(&sibling_cgroup, None);
    println!(
        "SIBLING_UNPREFIXED_UNRESOLVED={}",
        unprefixed.unresolved_relative
    );
}

/// Finds `KEY=value` in the child's output, where the test harness may have
/// printed other words on the same line.
fn field<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn prefix_found_from_private_namespace() {
    if let (Ok(parent_pid), Ok(sibling_pid)) =
        (std::env::var(CHILD_ENV), std::env::var(SIBLING_ENV))
    {
        run_child(&parent_pid, &sibling_pid);
        return;
    }

    let Some(root) = hierarchy() else {
        return skip_or_fail("no cgroup hierarchy under /sys/fs/cgroup");
    };
    let name = format!("picket-cgns-test-{}", std::process::id());
    let cgroup = root.join(&name);
    if let Err(e) = std::fs::create_dir(&cgroup) {
        return skip_or_fail(&format!(
            "cannot create {} (needs root): {e}",
            cgroup.display()
        ));
    }

    // A process in a cgroup shaped like a Docker container, outside the
    // child's namespace.
    let container_id = format!("{:0>64x}", std::process::id());
    let sibling_parent = root.join(format!("picket-cgns-sibling-{}", std::process::id()));
    let sibling_cgroup = sibling_parent.join(format!("docker-{container_id}.scope"));
    std::fs::create_dir_all(&sibling_cgroup).unwrap();
    let mut sibling = Command::new("sleep").arg("60").spawn().expect("sleep runs");
    std::fs::write(
        sibling_cgroup.join("cgroup.procs"),
        sibling.id().to_string(),
    )
    .unwrap();

    // The parent's own cgroup path in the host's view, to compare with what
    // the child resolves.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own_path = parse_cgroup(&own, None).cgroup_path.unwrap();

    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "echo $$ > {procs} && exec unshare --cgroup {exe} {TEST_NAME} --exact --nocapture --test-threads=1",
        procs = cgroup.join("cgroup.procs").display(),
        exe = exe.display(),
    );
    let output = Command::new("sh")
        .args(["-c", &script])
        .env(CHILD_ENV, std::process::id().to_string())
        .env(SIBLING_ENV, sibling.id().to_string())
        .output()
        .expect("sh runs");
    let _ = sibling.kill();
    let _ = sibling.wait();
    let _ = std::fs::remove_dir(&cgroup);
    let _ = std::fs::remove_dir(&sibling_cgroup);
    let _ = std::fs::remove_dir(&sibling_parent);

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        field(&stdout, "PREFIX"),
        Some(format!("/{name}").as_str()),
        "child output:\n{stdout}"
    );
    assert_eq!(
        field(&stdout, "PARENT_UNRESOLVED"),
        Some("false"),
        "child output:\n{stdout}"
    );
    assert_eq!(
        field(&stdout, "SIBLING_ID"),
        Some(container_id.as_str()),
        "child output:\n{stdout}"
    );
    let expected_sibling_path = format!(
        "/picket-cgns-sibling-{}/docker-{container_id}.scope",
        std::process::id()
    );
    assert_eq!(
        field(&stdout, "SIBLING_PATH"),
        Some(expected_sibling_path.as_str()),
        "child output:\n{stdout}"
    );
    assert_eq!(
        field(&stdout, "SIBLING_UNPREFIXED_UNRESOLVED"),
        Some("true"),
        "child output:\n{stdout}"
    );

    // The parent is in no container, so its result is its v2 line, which the
    // prefix must map back to the host path.
    let parent_path = field(&stdout, "PARENT_PATH").unwrap_or("-");
    assert_eq!(parent_path, own_path, "child output:\n{stdout}");
}
