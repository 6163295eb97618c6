//! The sensor's own tgid as the BPF programs see it, so they can skip the
//! sensor's own file writes (its state dir and spool).
//!
//! `bpf_get_current_pid_tgid()` returns ids of the initial PID namespace.
//! In the deployment container (no `--pid=host`, no `hostPID`) `getpid()`
//! returns the sensor's pid in its private namespace instead, often 1. The
//! kernel resolves the `self` link of each procfs to the caller's pid in the
//! PID namespace that procfs belongs to, so `$HOST_FS/proc/self` gives the
//! host's tgid.
//!
//! NOTE: when `$HOST_FS/proc` is itself the procfs of a non-initial PID
//! namespace (a "host" that is a container, as in kind), the value is that
//! namespace's tgid and the sensor's own writes are reported again.

use std::path::Path;

/// Returns the sensor's tgid in the PID namespace of `$HOST_FS/proc`, or
/// `getpid()` when `$HOST_FS/proc/self` is missing or unreadable.
pub(super) fn host_tgid(host_fs: &Path) -> u32 {
    let link = host_fs.join("proc/self");
    let own = std::process::id();
    match read_pid_link(&link) {
        Ok(tgid) => {
            if tgid != own {
                tracing::debug!(
                    host_tgid = tgid,
                    pid = own,
                    "sensor runs in a private PID namespace"
                );
            }
            tgid
        }
        Err(error) => {
            tracing::warn!(
                link = %link.display(),
                %error,
                pid = own,
                "cannot read the sensor's host tgid; its own file writes may be reported"
            );
            own
        }
    }
}

fn read_pid_link(link: &Path) -> std::io::Result<u32> {
    let target = std::fs::read_link(link)?;
    target
        .to_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("link target {} is not a pid", target.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_root_gives_getpid() {
        assert_eq!(host_tgid(Path::new("/")), std::process::id());
    }

    #[test]
    fn self_link_target_is_used() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("proc")).unwrap();
        std::os::unix::fs::symlink("4242", root.path().join("proc/self")).unwrap();
        assert_eq!(host_tgid(root.path()), 4242);
    }

    #[test]
    fn missing_or_bad_link_gives_getpid() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(host_tgid(root.path()), std::process::id());

        std::fs::create_dir(root.path().join("proc")).unwrap();
        std::os::unix::fs::symlink("self-1", root.path().join("proc/self")).unwrap();
        assert_eq!(host_tgid(root.path()), std::process::id());
    }
}
