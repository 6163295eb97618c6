//! Host path of the root of the sensor's cgroup namespace, for a sensor in a
//! private one.
//!
//! Docker gives every container a private cgroup namespace by default on
//! cgroup v2 hosts, `--privileged` included. `/proc/<pid>/cgroup` then reads
//! relative to the namespace root, and the root's host path is needed to
//! resolve it. The cgroup tree under `$HOST_FS/sys/fs/cgroup` is the host's
//! mount (Docker binds `-v /:/rootfs` recursively), whose directory names are
//! host paths whatever namespace the reader is in. So the sensor finds itself
//! by searching `cgroup.procs` files for its host pid (`$HOST_FS/proc/self`).
//!
//! Joining the host's cgroup namespace with `setns` on
//! `$HOST_FS/proc/1/ns/cgroup` (CAP_SYS_ADMIN) avoids the prefix entirely;
//! this search is for when that is not possible.

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
    #[error("no cgroup hierarchy with a cgroup.procs file under {host_fs}/sys/fs/cgroup")]
    NoHierarchy { host_fs: PathBuf },
    #[error("pid {pid} is in no cgroup.procs file under {root} (searched {searched} directories)")]
    NotFound {
        pid: u32,
        root: PathBuf,
        searched: usize,
    },
    #[error("host cgroup {host_path} of pid {pid} does not end with its namespace-relative path {relative}")]
    Mismatch {
        pid: u32,
        host_path: String,
        relative: String,
    },
}

/// Hierarchies searched, v2 first: `sys/fs/cgroup` on a v2 host,
/// `sys/fs/cgroup/unified` on a hybrid one, then v1 hierarchies that every
/// runtime places containers in.
pub(crate) const HIERARCHIES: [(&str, &str); 5] = [
    ("sys/fs/cgroup", ""),
    ("sys/fs/cgroup/unified", ""),
    ("sys/fs/cgroup/pids", "pids"),
    ("sys/fs/cgroup/memory", "memory"),
    ("sys/fs/cgroup/systemd", "name=systemd"),
];

/// Finds the host path of the root of the calling process's cgroup
/// namespace, the prefix [`parse_cgroup`](super::parse_cgroup) needs.
/// Returns `Ok(None)` when the process is in the host's cgroup namespace,
/// where paths need no prefix.
///
/// The process's cgroup is found by its host pid in the tree under
/// `$HOST_FS/sys/fs/cgroup`, and its namespace-relative path (from
/// `/proc/self/cgroup`) is cut off the end. The search reads every
/// `cgroup.procs` file, which takes milliseconds on a host with thousands of
/// cgroups, so call this once at start.
///
/// NOTE: one prefix, from the first hierarchy found, is applied to every
/// line. That is right when the runtime places a container at the same path
/// in every hierarchy, as Docker's cgroupfs and systemd drivers do, but not on
/// a hybrid host whose v2 line differs from the v1 lines.
pub fn find_host_cgroup_prefix(host_fs: &Path) -> Result<Option<String>, HostCgroupError> {
    // Same namespace as host pid 1: no search needed. Reading pid 1's link
    // needs ptrace access to it, so a failure falls through to the search.
    let own_namespace = std::fs::read_link("/proc/self/ns/cgroup").ok();
    let host_namespace = std::fs::read_link(host_fs.join("proc/1/ns/cgroup")).ok();
    if own_namespace.is_some() && own_namespace == host_namespace {
        return Ok(None);
    }

    let pid = host_pid(host_fs)?;
    let (root, controller) = hierarchy_root(host_fs)?;
    let host_path = find_pid_cgroup(&root, pid)?;
    let relative = own_relative_path(controller)?;
    prefix_from(pid, &host_path, &relative)
}

/// Cuts the namespace-relative path off the host path.
fn prefix_from(
    pid: u32,
    host_path: &str,
    relative: &str,
) -> Result<Option<String>, HostCgroupError> {
    if host_path == relative {
        return Ok(None);
    }
    let relative_trimmed = relative.trim_end_matches('/');
    let prefix = host_path
        .strip_suffix(relative_trimmed)
        .filter(|p| relative_trimmed.is_empty() || p.is_empty() || !p.ends_with('/'))
        .ok_or_else(|| HostCgroupError::Mismatch {
            pid,
            host_path: host_path.to_string(),
            relative: relative.to_string(),
        })?;
    // An empty prefix means the namespace root is the host root.
    Ok((!prefix.is_empty()).then(|| prefix.to_string()))
}

/// Reads the caller's pid in the PID namespace of `$HOST_FS/proc`.
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

/// First hierarchy present under `$HOST_FS`, with the controller name its
/// line carries in `/proc/<pid>/cgroup` (empty for v2).
fn hierarchy_root(host_fs: &Path) -> Result<(PathBuf, &'static str), HostCgroupError> {
    HIERARCHIES
        .iter()
        .map(|(relative, controller)| (host_fs.join(relative), *controller))
        .find(|(dir, _)| dir.join("cgroup.procs").exists())
        .ok_or_else(|| HostCgroupError::NoHierarchy {
            host_fs: host_fs.to_path_buf(),
        })
}

/// Reads the caller's path in `controller`'s hierarchy, relative to its own
/// cgroup namespace.
fn own_relative_path(controller: &str) -> Result<String, HostCgroupError> {
    let path = Path::new("/proc/self/cgroup");
    let text = std::fs::read_to_string(path).map_err(|source| HostCgroupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, cgroup) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = if controller.is_empty() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == controller)
            };
            matches.then(|| cgroup.to_string())
        })
        .next()
        .ok_or_else(|| HostCgroupError::Read {
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                format!("no line for hierarchy `{controller}`"),
            ),
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
    fn prefix_cuts_relative_path() {
        assert_eq!(
            prefix_from(7, "/docker/abc", "/").unwrap().as_deref(),
            Some("/docker/abc")
        );
        assert_eq!(
            prefix_from(7, "/docker/abc/sub", "/sub")
                .unwrap()
                .as_deref(),
            Some("/docker/abc")
        );
        assert_eq!(prefix_from(7, "/docker/abc", "/docker/abc").unwrap(), None);
        assert_eq!(prefix_from(7, "/sub", "/sub/").unwrap(), None);
        assert!(matches!(
            prefix_from(7, "/docker/abcsub", "/sub"),
            Err(HostCgroupError::Mismatch { pid: 7, .. })
        ));
    }
}
