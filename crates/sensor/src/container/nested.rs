//! The root directory of an outer container, where the runtime files of the
//! containers nested in it live (the containerd of a kind or minikube node,
//! the dockerd of a Docker-in-Docker container).
//!
//! The host's runtime does not know a nested container, so its metadata is
//! read from the outer container's own `/run` and `/var/lib`. Those are seen
//! through `$HOST_FS/proc/<pid>/root` of any process of the outer container
//! that is not itself in a nested container, found in the outer container's
//! cgroup. Reading another process's root needs the ptrace access a
//! privileged sensor has.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::cgroup::is_hex64;
use super::host_cgroup::HIERARCHIES;

/// Cgroup directories visited below the outer container before giving up.
const MAX_DIRECTORIES: usize = 2_000;

/// Finds `$HOST_FS/proc/<pid>/root` for a process of the outer container
/// `outer_id`, given the decisive cgroup path of a process nested in it.
pub(crate) fn outer_container_root(
    host_fs: &Path,
    cgroup_path: &str,
    outer_id: &str,
) -> Option<PathBuf> {
    let segments: Vec<&str> = cgroup_path.split('/').filter(|s| !s.is_empty()).collect();
    let outer_index = segments.iter().position(|s| s.contains(outer_id))?;
    let outer_path = segments[..=outer_index].join("/");

    HIERARCHIES
        .iter()
        .map(|(root, _)| host_fs.join(root).join(&outer_path))
        .filter(|dir| dir.is_dir())
        .find_map(|dir| first_outer_pid(&dir))
        .map(|pid| host_fs.join(format!("proc/{pid}/root")))
        .filter(|root| root.is_dir())
}

/// Breadth-first search for a pid in the outer container's cgroup, skipping
/// sub-trees that hold nested containers, whose root directories differ.
fn first_outer_pid(outer: &Path) -> Option<u32> {
    let mut queue = VecDeque::from([outer.to_path_buf()]);
    let mut visited = 0;
    while let Some(dir) = queue.pop_front() {
        visited += 1;
        if visited > MAX_DIRECTORIES {
            return None;
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if let Some(pid) = procs.lines().find_map(|line| line.trim().parse().ok()) {
            return Some(pid);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_dir()) && !holds_nested_containers(name) {
                queue.push_back(entry.path());
            }
        }
    }
    None
}

/// Cgroup names under which a node or Docker-in-Docker container places its
/// own containers.
fn holds_nested_containers(name: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "kubepods",
        "kubelet",
        "docker",
        "cri-containerd-",
        "crio-",
        "libpod",
        "lxc.payload",
        "actions_job",
        "machine.slice",
    ];
    is_hex64(name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const OUTER: &str = "c1146e7ccca9ab4436abd69923c07d097b37b762ed21cc3f24584c2f84e77c57";

    #[test]
    fn root_found_through_node_process() {
        let host = tempfile::tempdir().unwrap();
        let node = host
            .path()
            .join(format!("sys/fs/cgroup/system.slice/docker-{OUTER}.scope"));
        // A nested container's process comes first in a naive walk and must
        // be skipped: its root is not the node's.
        fs::create_dir_all(node.join("kubelet/kubepods/pod1/abc")).unwrap();
        fs::write(node.join("kubelet/kubepods/pod1/abc/cgroup.procs"), "999\n").unwrap();
        fs::create_dir_all(node.join("system.slice/containerd.service")).unwrap();
        fs::write(node.join("cgroup.procs"), "").unwrap();
        fs::write(
            node.join("system.slice/containerd.service/cgroup.procs"),
            "4242\n",
        )
        .unwrap();
        fs::create_dir_all(host.path().join("proc/4242/root")).unwrap();
        fs::create_dir_all(host.path().join("proc/999/root")).unwrap();

        let path = format!("/system.slice/docker-{OUTER}.scope/kubelet/kubepods/pod1/abc");
        let root = outer_container_root(host.path(), &path, OUTER).unwrap();
        assert_eq!(root, host.path().join("proc/4242/root"));
    }

    #[test]
    fn missing_cgroup_gives_no_root() {
        let host = tempfile::tempdir().unwrap();
        let path = format!("/system.slice/docker-{OUTER}.scope/kubelet/kubepods/pod1/abc");
        assert_eq!(outer_container_root(host.path(), &path, OUTER), None);
    }
}
