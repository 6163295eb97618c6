//! The one door to the host: file reads under `$HOST_FS` and the few raw
//! syscalls the sensor core makes (`setns`, `statvfs`, `uname`, netlink).
//!
//! Everything that inspects the host goes through [`HostFs`], so parsing,
//! attribution and fallback logic run unchanged on a fixture tree in tests.
//! The sensor never writes under `$HOST_FS`.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The host's root file system as mounted for the sensor (`/` on the host,
/// `/rootfs` in the deployment container).
#[derive(Debug, Clone)]
pub struct HostFs {
    root: PathBuf,
}

/// Identity of a namespace file: device and inode of `/proc/<pid>/ns/<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl HostFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostFs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a host path such as `/proc/1/stat` to the path under `$HOST_FS`.
    pub fn path(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let host_path = host_path.as_ref();
        let relative = host_path.strip_prefix("/").unwrap_or(host_path);
        self.root.join(relative)
    }

    /// Path of `/proc/<pid>/<name>` under `$HOST_FS`.
    pub fn proc_path(&self, pid: u32, name: &str) -> PathBuf {
        self.path(format!("/proc/{pid}/{name}"))
    }

    pub fn read(&self, host_path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(host_path))
    }

    pub fn read_to_string(&self, host_path: impl AsRef<Path>) -> io::Result<String> {
        std::fs::read_to_string(self.path(host_path))
    }

    /// Reads at most `cap` bytes of a file and returns them with the file's
    /// full length, so a capped field can state its original size without
    /// holding it all in memory.
    pub fn read_capped(
        &self,
        host_path: impl AsRef<Path>,
        cap: usize,
    ) -> io::Result<(Vec<u8>, usize)> {
        read_capped_from(std::fs::File::open(self.path(host_path))?, cap)
    }

    /// Target of a symbolic link, as raw bytes.
    pub fn read_link(&self, host_path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        let target = std::fs::read_link(self.path(host_path))?;
        Ok(target.as_os_str().as_bytes().to_vec())
    }

    pub fn exists(&self, host_path: impl AsRef<Path>) -> bool {
        self.path(host_path).exists()
    }

    /// Numeric entries of `$HOST_FS/proc`, that is the host's thread group ids.
    pub fn list_pids(&self) -> io::Result<Vec<u32>> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir(self.path("/proc"))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            if let Some(pid) = std::str::from_utf8(name.as_bytes())
                .ok()
                .and_then(|s| s.parse().ok())
            {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Identity of `$HOST_FS/proc/<pid>/ns/<kind>`.
    pub fn ns_id(&self, pid: u32, kind: &str) -> io::Result<NsId> {
        ns_id_at(&self.proc_path(pid, &format!("ns/{kind}")))
    }
}

/// An open `/proc/<pid>` directory. Files opened through it belong to that
/// process even after its pid is reused, because procfs ties the directory
/// to the kernel's `struct pid`. Once the process is gone every read through
/// it fails (ENOENT or ESRCH) instead of reaching the pid's new owner.
#[derive(Debug)]
pub struct ProcDir {
    dir: OwnedFd,
}

impl HostFs {
    /// Opens `$HOST_FS/proc/<pid>`.
    pub fn open_proc_dir(&self, pid: u32) -> io::Result<ProcDir> {
        let path = self.path(format!("/proc/{pid}"));
        let c_path = c_string(&path)?;
        // SAFETY: c_path is NUL-terminated; open takes no other pointers.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(ProcDir {
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

impl ProcDir {
    fn open(&self, name: &str) -> io::Result<std::fs::File> {
        let c_name = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?;
        // SAFETY: c_name is NUL-terminated and the directory descriptor is open.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }

    /// Reads the whole file `name` of this process.
    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open(name)?.read_to_end(&mut data)?;
        Ok(data)
    }

    pub fn read_to_string(&self, name: &str) -> io::Result<String> {
        String::from_utf8(self.read(name)?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Reads at most `cap` bytes of `name`; returns them with the full length.
    pub fn read_capped(&self, name: &str, cap: usize) -> io::Result<(Vec<u8>, usize)> {
        read_capped_from(self.open(name)?, cap)
    }

    /// Target of the symbolic link `name` (`exe`, `cwd`), as raw bytes.
    pub fn read_link(&self, name: &str) -> io::Result<Vec<u8>> {
        let c_name = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?;
        let mut buffer = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: c_name is NUL-terminated and buffer is valid for its length.
        let n = unsafe {
            libc::readlinkat(
                self.dir.as_raw_fd(),
                c_name.as_ptr(),
                buffer.as_mut_ptr() as *mut libc::c_char,
                buffer.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buffer.truncate(n as usize);
        Ok(buffer)
    }
}

fn c_string(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn read_capped_from(mut file: std::fs::File, cap: usize) -> io::Result<(Vec<u8>, usize)> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut total = 0usize;
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
        total += n;
    }
    Ok((kept, total))
}

/// Identity of a namespace file at a path outside `$HOST_FS` (for example the
/// sensor's own `/proc/self/ns/pid`).
pub fn ns_id_at(path: &Path) -> io::Result<NsId> {
    let meta = std::fs::metadata(path)?;
    Ok(NsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Moves the calling thread into the namespace of the file at `path`
/// (`setns(2)`). Threads created afterwards inherit the namespace; threads that
/// already exist do not, so callers do this before starting any thread.
pub fn setns(path: &Path, nstype: libc::c_int) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the descriptor is open for the duration of the call; setns only
    // reads it and the nstype flag.
    let rc = unsafe { libc::setns(file.as_raw_fd(), nstype) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mount flags of the file system holding `path` (`statvfs(2)`).
pub fn mount_flags(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs is plain data; an all-zero value is valid.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat points to a valid statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_flag as u64)
}

/// `ST_NOEXEC` from `<sys/statvfs.h>`: the file system is mounted `noexec`.
pub const ST_NOEXEC: u64 = 8;

/// True when the effective user may write into `path` (`access(2)` with W_OK).
pub fn is_writable(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c_path is a valid NUL-terminated string.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK) == 0 }
}

/// Node name from `uname(2)`: the kernel's hostname in the caller's UTS
/// namespace.
pub fn uname_nodename() -> Option<String> {
    // SAFETY: utsname is plain data; an all-zero value is valid.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts points to a valid utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = uts
        .nodename
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

/// Kernel release from `uname(2)`.
pub fn uname_release() -> Option<String> {
    // SAFETY: utsname is plain data; an all-zero value is valid.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts points to a valid utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

/// Clock ticks per second used by `/proc/<pid>/stat` times (`USER_HZ`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Wall-clock minus monotonic time in nanoseconds, to turn kernel
/// `ktime_get_ns` timestamps (process connector) into Unix time.
pub fn realtime_offset_ns() -> i128 {
    let wall = now_ns() as i128;
    let mono = monotonic_ns() as i128;
    wall - mono
}

pub fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data; an all-zero value is valid.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts points to a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `NETLINK_CONNECTOR` from `<linux/netlink.h>`.
const NETLINK_CONNECTOR: libc::c_int = 11;

/// Opens a netlink connector socket bound to the multicast `group`.
pub fn netlink_connector_socket(group: u32, receive_buffer: usize) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_CONNECTOR,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    // SO_RCVBUFFORCE needs CAP_NET_ADMIN; fall back to SO_RCVBUF, which the
    // kernel caps at net.core.rmem_max.
    let size = receive_buffer.min(i32::MAX as usize) as libc::c_int;
    if set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        let _ = set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, size);
    }

    // SAFETY: sockaddr_nl is plain data; an all-zero value is valid.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = group;
    // SAFETY: addr is a valid sockaddr_nl and the length matches its size.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Sets a receive timeout so a blocking `recv` returns periodically.
pub fn set_receive_timeout(socket: &OwnedFd, timeout: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval and the length matches its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_int_option(
    socket: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value is a valid c_int and the length matches its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends one datagram on a netlink socket to the kernel (port 0).
pub fn netlink_send(socket: &OwnedFd, message: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_nl is plain data; an all-zero value addresses the kernel.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: message and addr are valid for the lengths given.
    let rc = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr() as *const libc::c_void,
            message.len(),
            0,
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram; returns its length.
pub fn netlink_receive(socket: &OwnedFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buffer is valid for writes of its length.
    let rc = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr() as *mut libc::c_void,
            buffer.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// Reads `/proc/self/status` field `name` of the sensor itself, for resource
/// figures (for example `VmHWM`, the peak resident set size).
pub fn self_status_kib(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_maps_under_root() {
        let fs = HostFs::new("/rootfs");
        assert_eq!(
            fs.path("/proc/1/stat"),
            PathBuf::from("/rootfs/proc/1/stat")
        );
        assert_eq!(
            fs.proc_path(7, "ns/pid"),
            PathBuf::from("/rootfs/proc/7/ns/pid")
        );
        assert_eq!(
            HostFs::new("/").path("/etc/passwd"),
            PathBuf::from("/etc/passwd")
        );
    }

    #[test]
    fn read_capped_reports_full_length() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'a'; 20_000]).unwrap();
        let fs = HostFs::new(dir.path());
        let (kept, total) = fs.read_capped("/big", 100).unwrap();
        assert_eq!(kept.len(), 100);
        assert_eq!(total, 20_000);
    }

    #[test]
    fn proc_dir_reads_own_process() {
        let dir = HostFs::new("/").open_proc_dir(std::process::id()).unwrap();
        let (cmdline, total) = dir.read_capped("cmdline", 4).unwrap();
        assert_eq!(cmdline.len(), 4.min(total));
        assert_eq!(
            dir.read_link("exe").unwrap(),
            std::fs::read_link("/proc/self/exe")
                .unwrap()
                .as_os_str()
                .as_bytes()
        );
        assert!(dir
            .read_to_string("stat")
            .unwrap()
            .starts_with(&format!("{} (", std::process::id())));
    }

    #[test]
    fn proc_dir_of_exited_process_reads_nothing() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let dir = HostFs::new("/").open_proc_dir(child.id()).unwrap();
        assert!(dir.read("cmdline").is_ok());
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: the directory no longer reaches any process, even if the
        // pid were given to a new one.
        assert!(dir.read("stat").is_err());
        assert!(dir.read_link("exe").is_err());
    }

    #[test]
    fn list_pids_skips_non_numeric() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["1", "42", "self", "sys", "7x"] {
            std::fs::create_dir_all(dir.path().join("proc").join(name)).unwrap();
        }
        let mut pids = HostFs::new(dir.path()).list_pids().unwrap();
        pids.sort();
        assert_eq!(pids, vec![1, 42]);
    }
}
