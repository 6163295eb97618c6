//! Where the sensor runs relative to the host: PID and cgroup namespaces,
//! boot id and hostname.
//!
//! Two facts of the deployment contract decide what the sensor can do:
//! - Without `--pid=host` the sensor is in its own PID namespace. The kernel
//!   ignores process connector subscriptions from any PID namespace but the
//!   initial one (`cn_proc.c`), so only `/proc` polling through
//!   `$HOST_FS/proc` sees host processes.
//! - On cgroup v2 hosts Docker gives even privileged containers a private
//!   cgroup namespace, and `/proc/<pid>/cgroup` then shows paths relative to
//!   the reader's cgroup root. Joining the host cgroup namespace
//!   (`$HOST_FS/proc/1/ns/cgroup`) restores host paths. `setns(2)` moves only
//!   the calling thread, so [`join_host_cgroup_ns`] must run before any
//!   thread is started; later threads inherit the namespace.

use std::path::Path;

use serde_json::{json, Value};

use crate::hostfs::{self, HostFs};

/// Result of comparing one of the sensor's namespaces with the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsState {
    Host,
    Private,
    /// The comparison failed; the text gives the reason.
    Unknown(String),
}

impl NsState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NsState::Host => "host",
            NsState::Private => "private",
            NsState::Unknown(_) => "unknown",
        }
    }
}

/// Outcome of the cgroup namespace step at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupNs {
    /// Already in the host cgroup namespace.
    Host,
    /// Started in a private one and joined the host's.
    Joined,
    /// In a private one and joining failed: container attribution from
    /// `/proc/<pid>/cgroup` paths is unavailable.
    JoinFailed(String),
    Unknown(String),
}

impl CgroupNs {
    /// True when cgroup paths read now are host paths.
    pub fn attribution_available(&self) -> bool {
        matches!(self, CgroupNs::Host | CgroupNs::Joined)
    }
}

/// Compares the namespace `kind` of the sensor (`/proc/self/ns/<kind>` of the
/// sensor's own procfs) with that of host pid 1, or of pid 2 (`kthreadd`)
/// when pid 1's is unreadable.
pub fn compare_with_host(fs: &HostFs, kind: &str) -> NsState {
    compare_with_host_from(fs, Path::new("/proc/self/ns"), kind)
}

fn compare_with_host_from(fs: &HostFs, own_ns_dir: &Path, kind: &str) -> NsState {
    let own = match hostfs::ns_id_at(&own_ns_dir.join(kind)) {
        Ok(id) => id,
        Err(e) => return NsState::Unknown(format!("cannot stat /proc/self/ns/{kind}: {e}")),
    };
    let host = match host_ns_file(fs, kind) {
        Ok((_, id)) => id,
        Err(reason) => return NsState::Unknown(reason),
    };
    if own == host {
        NsState::Host
    } else {
        NsState::Private
    }
}

/// Returns the host's namespace file of `kind` and its identity: that of pid 1, or
/// of pid 2 (`kthreadd`, always in the initial namespaces) when pid 1's
/// cannot be read. Some init systems and sandboxes make pid 1 unreadable even
/// to root.
fn host_ns_file(fs: &HostFs, kind: &str) -> Result<(std::path::PathBuf, hostfs::NsId), String> {
    let mut errors = Vec::new();
    for pid in [1, 2] {
        let path = fs.proc_path(pid, &format!("ns/{kind}"));
        match hostfs::ns_id_at(&path) {
            Ok(id) => return Ok((path, id)),
            Err(e) => errors.push(format!("cannot stat {}: {e}", path.display())),
        }
    }
    Err(errors.join("; "))
}

/// Joins the host cgroup namespace when the sensor is not in it. Call from
/// `main` before any thread exists.
pub fn join_host_cgroup_ns(fs: &HostFs) -> CgroupNs {
    match compare_with_host(fs, "cgroup") {
        NsState::Host => CgroupNs::Host,
        NsState::Unknown(reason) => CgroupNs::Unknown(reason),
        NsState::Private => {
            let path = match host_ns_file(fs, "cgroup") {
                Ok((path, _)) => path,
                Err(reason) => return CgroupNs::JoinFailed(reason),
            };
            match hostfs::setns(&path, libc::CLONE_NEWCGROUP) {
                Ok(()) => CgroupNs::Joined,
                Err(e) => CgroupNs::JoinFailed(format!("setns({}) failed: {e}", path.display())),
            }
        }
    }
}

/// Host facts read once at start.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub pid_ns: NsState,
    pub cgroup_ns: CgroupNs,
    /// `$HOST_FS/proc/sys/kernel/random/boot_id`, the key of process atoms.
    pub boot_id: String,
    pub hostname: String,
    pub kernel_release: String,
}

impl HostFacts {
    pub fn read(fs: &HostFs, cgroup_ns: CgroupNs) -> Self {
        HostFacts {
            pid_ns: compare_with_host(fs, "pid"),
            cgroup_ns,
            boot_id: read_boot_id(fs),
            hostname: read_hostname(fs),
            kernel_release: fs
                .read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .ok()
                .or_else(hostfs::uname_release)
                .unwrap_or_default(),
        }
    }

    /// Namespace facts as they appear in the `CONNECTED` event.
    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "PID_NAMESPACE": self.pid_ns.as_str(),
            "CGROUP_NAMESPACE": match &self.cgroup_ns {
                CgroupNs::Host => "host",
                CgroupNs::Joined => "joined_host",
                CgroupNs::JoinFailed(_) => "private",
                CgroupNs::Unknown(_) => "unknown",
            },
            "CONTAINER_ATTRIBUTION": self.cgroup_ns.attribution_available(),
        });
        let reason = match (&self.pid_ns, &self.cgroup_ns) {
            (_, CgroupNs::JoinFailed(r)) | (_, CgroupNs::Unknown(r)) => Some(r),
            (NsState::Unknown(r), _) => Some(r),
            _ => None,
        };
        if let Some(reason) = reason {
            value["NAMESPACE_ERROR"] = Value::String(reason.clone());
        }
        value
    }
}

/// Reads the host's boot id, or returns an empty string when unreadable (atoms then only
/// stay unique within this boot of the sensor's view).
pub fn read_boot_id(fs: &HostFs) -> String {
    fs.read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Reads the host's name: `$HOST_FS/etc/hostname`, else the kernel node name.
/// With `--net=host` alone the container's UTS namespace is private, so the
/// file is preferred.
pub fn read_hostname(fs: &HostFs) -> String {
    fs.read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(hostfs::uname_nodename)
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inode_is_host_namespace() {
        // The sensor's own /proc as HOST_FS: pid 1 of this procfs may or may
        // not share our namespace, but comparing our ns dir with itself must.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/1/ns")).unwrap();
        std::fs::write(dir.path().join("proc/1/ns/pid"), "").unwrap();
        let fs = HostFs::new(dir.path());
        let own = dir.path().join("proc/1/ns");
        assert_eq!(compare_with_host_from(&fs, &own, "pid"), NsState::Host);
    }

    #[test]
    fn different_inode_is_private_namespace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/1/ns")).unwrap();
        std::fs::create_dir_all(dir.path().join("own")).unwrap();
        std::fs::write(dir.path().join("proc/1/ns/pid"), "").unwrap();
        std::fs::write(dir.path().join("own/pid"), "").unwrap();
        let fs = HostFs::new(dir.path());
        assert_eq!(
            compare_with_host_from(&fs, &dir.path().join("own"), "pid"),
            NsState::Private
        );
    }

    #[test]
    fn missing_host_proc_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let state = compare_with_host(&HostFs::new(dir.path()), "pid");
        assert!(
            matches!(state, NsState::Unknown(ref r) if r.contains("proc/1/ns/pid")),
            "{state:?}"
        );
    }

    #[test]
    fn hostname_prefers_etc_hostname() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/hostname"), "node-7\n").unwrap();
        assert_eq!(read_hostname(&HostFs::new(dir.path())), "node-7");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            read_hostname(&HostFs::new(empty.path())),
            hostfs::uname_nodename().unwrap()
        );
    }

    #[test]
    fn boot_id_of_this_host_reads() {
        let id = read_boot_id(&HostFs::new("/"));
        assert_eq!(id.len(), 36, "{id}");
    }

    #[test]
    fn failed_join_reports_no_attribution() {
        let facts = HostFacts {
            pid_ns: NsState::Private,
            cgroup_ns: CgroupNs::JoinFailed("setns failed: EPERM".into()),
            boot_id: String::new(),
            hostname: "h".into(),
            kernel_release: String::new(),
        };
        let json = facts.to_json();
        assert_eq!(json["CONTAINER_ATTRIBUTION"], false);
        assert_eq!(json["CGROUP_NAMESPACE"], "private");
        assert_eq!(json["PID_NAMESPACE"], "private");
        assert_eq!(json["NAMESPACE_ERROR"], "setns failed: EPERM");
    }
}
