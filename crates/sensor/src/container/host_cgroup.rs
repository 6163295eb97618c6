//! The sensor's own cgroup as the host sees it, for a sensor in a private
//! cgroup namespace.
//!
//! Docker gives every container a private cgroup namespace by default on
//! cgroup v2 hosts, `--privileged` included. `/proc/<pid>/cgroup` then reads
//! relative to the sensor's own cgroup, and that cgroup's host path is needed
//! to resolve it. The cgroup v2 tree under `$HOST_FS/sys/fs/cgroup` is the
//! host's mount (a recursive bind of `/` keeps it), whose directory names are
//! host paths whatever namespace the reader is in, so the sensor finds itself
//! by searching `cgroup.procs` files for its host pid (`$HOST_FS/proc/self`).

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

/// Cgroup directories visited before the search gives up.
const MAX_CGROUP_DIRECTORIES: usize = 200_000;

/// Failure to find the sensor's host cgroup.
#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup v2 hierarchy under {host_fs}/sys/fs/cgroup")]
    NoCgroup2 { host_fs: PathBuf },
    #[error("pid {pid} is in no cgroup.procs file under {root} (searched {searched} directories)")]
    NotFound {
        pid: u32,
        root: PathBuf,
        searched: usize,
    },
}

/// Finds the host path of the calling process's cgroup v2 cgroup when the
/// process is in a private cgroup namespace. Returns `Ok(None)` when it is in
/// the same cgroup namespace as host pid 1, where no prefix is needed.
///
/// NOTE: only the v2 (`0::`) hierarchy is searched. On a cgroup v1 host with
/// a private cgroup namespace, v1 paths stay unresolved and the attribution
/// says so.
pub fn find_host_cgroup_prefix(host_fs: &Path) -> Result<Option<String>, HostCgroupError> {
    let own_namespace = read_link(Path::new("/proc/self/ns/cgroup"))?;
    let host_namespace = read_link(&host_fs.join("proc/1/ns/cgroup"))?;
    if own_namespace == host_namespace {
        return Ok(None);
    }

    let pid = host_pid(host_fs)?;
    let root = cgroup2_root(host_fs)?;
    find_pid_cgroup(&root, pid).map(Some)
}

/// The caller's pid in the PID namespace of `$HOST_FS/proc`.
fn host_pid(host_fs: &Path) -> Result<u32, HostCgroupError> {
    let link = host_fs.join("proc/self");
    let target = read_link(&link)?;
    target.parse().map_err(|_| HostCgroupError::Read {
        path: link,
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("`{target}` is not a pid"),
        ),
    })
}

/// `sys/fs/cgroup` on a v2 host, `sys/fs/cgroup/unified` on a hybrid one.
fn cgroup2_root(host_fs: &Path) -> Result<PathBuf, HostCgroupError> {
    ["sys/fs/cgroup", "sys/fs/cgroup/unified"]
        .iter()
        .map(|relative| host_fs.join(relative))
        .find(|dir| {
            dir.join("cgroup.procs").exists() && dir.join("cgroup.subtree_control").exists()
        })
        .ok_or_else(|| HostCgroupError::NoCgroup2 {
            host_fs: host_fs.to_path_buf(),
        })
}

/// Breadth-first search of a cgroup tree for the cgroup holding `pid`.
/// Returns its path relative to `root`, starting with `/`.
pub(crate) fn find_pid_cgroup(root: &Path, pid: u32) -> Result<String, HostCgroupError> {
    let mut queue = VecDeque::from([root.to_path_buf()]);
    let mut searched = 0;
    while let Some(dir) = queue.pop_front() {
        searched += 1;
        if searched > MAX_CGROUP_DIRECTORIES {
            break;
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            if procs.lines().any(|line| line.trim().parse() == Ok(pid)) {
                let relative = dir.strip_prefix(root).unwrap_or(Path::new(""));
                return Ok(format!("/{}", relative.display()));
            }
        }
        // Cgroups vanish while the tree is walked; a failed listing is skipped.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(entry.path());
            }
        }
    }
    Err(HostCgroupError::NotFound {
        pid,
        root: root.to_path_buf(),
        searched,
    })
}

fn read_link(path: &Path) -> Result<String, HostCgroupError> {
    std::fs::read_link(path)
        .map(|target| target.to_string_lossy().into_owned())
        .map_err(|source| HostCgroupError::Read {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn pid_is_found_in_nested_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let nested = root.path().join("system.slice/docker-abc.scope");
        fs::create_dir_all(&nested).unwrap();
        fs::write(root.path().join("cgroup.procs"), "1\n2\n").unwrap();
        fs::write(root.path().join("system.slice/cgroup.procs"), "").unwrap();
        fs::write(nested.join("cgroup.procs"), "4242\n4243\n").unwrap();

        assert_eq!(
            find_pid_cgroup(root.path(), 4242).unwrap(),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(find_pid_cgroup(root.path(), 2).unwrap(), "/");
        assert!(matches!(
            find_pid_cgroup(root.path(), 99),
            Err(HostCgroupError::NotFound { pid: 99, .. })
        ));
    }

    #[test]
    fn host_namespace_needs_no_prefix() {
        // The test runs in the cgroup namespace of this host's pid 1 unless
        // it was started inside a container with a private one.
        let own = fs::read_link("/proc/self/ns/cgroup").unwrap();
        let Ok(init) = fs::read_link("/proc/1/ns/cgroup") else {
            println!("skipped: /proc/1/ns/cgroup is not readable (needs root)");
            return;
        };
        let result = find_host_cgroup_prefix(Path::new("/")).unwrap();
        if own == init {
            assert_eq!(result, None);
        } else {
            assert!(result.is_some_and(|p| p.starts_with('/')));
        }
    }
}
