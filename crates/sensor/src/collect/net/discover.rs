//! Network namespace discovery.
//!
//! Two sources, merged by namespace inode:
//! - every process's `$HOST_FS/proc/<pid>/ns/net` link (`net:[<inode>]`),
//!   which always reflects the live namespaces;
//! - the files in `NET_NS` (Docker: `/var/run/docker/netns/<sandbox id>`,
//!   containerd/CNI: `/var/run/netns/cni-<uuid>`, CRI-O: `/var/run/netns/<uuid>`),
//!   whose `stat` inode is the namespace inode when the file is an nsfs bind
//!   mount. A plain read-only bind of that directory does not propagate mounts
//!   made after the sensor started, so newer entries show up as empty files of
//!   the underlying file system; those are counted as stale and the namespace
//!   is still found through its processes.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `NSFS_MAGIC` from `include/uapi/linux/magic.h`.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// One network namespace and what points at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Netns {
    pub inode: u64,
    /// Host pids whose `ns/net` is this namespace, ascending.
    pub pids: Vec<u32>,
    /// The nsfs file in `NET_NS` for this namespace, if any.
    pub file: Option<PathBuf>,
}

/// State of the `NET_NS` directory at one discovery pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsDir {
    /// `NET_NS` was not set.
    NotConfigured,
    /// The directory could not be read (not mounted, or not a directory).
    Unreadable,
    Read {
        /// Entries that are nsfs files.
        namespaces: usize,
        /// Entries that are not nsfs files (mount not propagated) or could
        /// not be examined.
        stale: usize,
    },
}

/// Result of one discovery pass.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub namespaces: BTreeMap<u64, Netns>,
    pub netns_dir: NetnsDir,
    /// Inode of the host's namespace (that of host pid 1), when readable.
    pub host_inode: Option<u64>,
}

/// Lists the network namespaces of the host.
pub fn discover(proc_root: &Path, net_ns: Option<&Path>) -> Discovery {
    let mut namespaces: BTreeMap<u64, Netns> = BTreeMap::new();

    for (pid, inode) in process_namespaces(proc_root) {
        let netns = namespaces.entry(inode).or_default();
        netns.inode = inode;
        netns.pids.push(pid);
    }

    let netns_dir = match net_ns {
        None => NetnsDir::NotConfigured,
        Some(dir) => match netns_files(dir) {
            None => NetnsDir::Unreadable,
            Some((files, stale)) => {
                let count = files.len();
                for (inode, path) in files {
                    let netns = namespaces.entry(inode).or_default();
                    netns.inode = inode;
                    netns.file.get_or_insert(path);
                }
                NetnsDir::Read {
                    namespaces: count,
                    stale,
                }
            }
        },
    };

    Discovery {
        host_inode: namespace_inode(&proc_root.join("1/ns/net")),
        namespaces,
        netns_dir,
    }
}

/// `(pid, netns inode)` for every readable process, in ascending pid order.
/// Processes that exit during the scan are skipped.
pub fn process_namespaces(proc_root: &Path) -> Vec<(u32, u64)> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, u64)> = entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = std::str::from_utf8(entry.file_name().as_bytes())
                .ok()?
                .parse()
                .ok()?;
            let inode = namespace_inode(&entry.path().join("ns/net"))?;
            Some((pid, inode))
        })
        .collect();
    found.sort_unstable();
    found
}

/// Inode of the namespace a `/proc/<pid>/ns/net` link points to.
pub fn namespace_inode(link: &Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    parse_namespace_link(target.as_os_str().as_bytes())
}

/// Parses `net:[4026531840]`.
pub fn parse_namespace_link(target: &[u8]) -> Option<u64> {
    let inner = target.strip_prefix(b"net:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// nsfs files in `dir` as `(inode, path)`, and the number of other entries.
/// `None` when the directory cannot be read.
fn netns_files(dir: &Path) -> Option<(Vec<(u64, PathBuf)>, usize)> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut files = Vec::new();
    let mut stale = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        match nsfs_inode(&path) {
            Some(inode) => files.push((inode, path)),
            None => stale += 1,
        }
    }
    files.sort();
    Some((files, stale))
}

/// Inode of `path` when it is an nsfs file.
fn nsfs_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    if !metadata.is_file() || fs_type(path)? != NSFS_MAGIC {
        return None;
    }
    Some(metadata.ino())
}

fn fs_type(path: &Path) -> Option<i64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `buf` is large
    // enough for one `statfs`, which the kernel fills on success.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so the buffer is initialised.
    let buf = unsafe { buf.assume_init() };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 or u32 by architecture"
    )]
    Some(buf.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_link_parses() {
        assert_eq!(parse_namespace_link(b"net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_namespace_link(b"mnt:[4026531840]"), None);
        assert_eq!(parse_namespace_link(b"net:[x]"), None);
    }

    #[test]
    fn own_namespace_is_found_by_pid() {
        let discovery = discover(Path::new("/proc"), None);
        let own = namespace_inode(Path::new("/proc/self/ns/net")).unwrap();
        let netns = &discovery.namespaces[&own];
        assert!(netns.pids.contains(&std::process::id()));
        assert_eq!(discovery.netns_dir, NetnsDir::NotConfigured);
    }

    #[test]
    fn missing_netns_dir_is_unreadable() {
        let discovery = discover(Path::new("/proc"), Some(Path::new("/nonexistent/netns")));
        assert_eq!(discovery.netns_dir, NetnsDir::Unreadable);
        assert!(!discovery.namespaces.is_empty());
    }

    #[test]
    fn plain_files_in_netns_dir_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cni-0000"), b"").unwrap();
        std::fs::write(dir.path().join("default"), b"").unwrap();
        let discovery = discover(Path::new("/proc"), Some(dir.path()));
        assert_eq!(
            discovery.netns_dir,
            NetnsDir::Read {
                namespaces: 0,
                stale: 2
            }
        );
    }

    #[test]
    fn empty_proc_root_finds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let discovery = discover(dir.path(), None);
        assert!(discovery.namespaces.is_empty());
        assert_eq!(discovery.host_inode, None);
    }
}
