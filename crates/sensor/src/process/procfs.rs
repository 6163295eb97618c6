//! Readers for `/proc/<pid>/*` under `$HOST_FS`.
//!
//! A process can exit, or its pid be reused, between any two reads. The
//! start time (field 22 of `stat`, clock ticks since boot) identifies the
//! process: [`read_process`] reads it first and again last, and rejects the
//! result when it changed, so details are never taken from a reused pid.

use crate::hostfs::HostFs;

/// Default cap on the command line bytes kept per process.
pub const COMMAND_LINE_CAP: usize = 16 * 1024;

/// `PF_KTHREAD` from `<linux/sched.h>`: the task is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/<pid>/stat` the sensor uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// `comm`, the first 15 bytes of the executable's name.
    pub comm: Vec<u8>,
    pub state: u8,
    pub ppid: u32,
    pub flags: u64,
    pub num_threads: u32,
    pub start_ticks: u64,
    /// Exit status as `wait(2)` reports it; only meaningful for a zombie.
    pub exit_code: Option<i32>,
}

impl Stat {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    pub fn is_zombie(&self) -> bool {
        self.state == b'Z'
    }
}

/// Details of one live process as read from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub start_ticks: u64,
    pub comm: Vec<u8>,
    /// Target of `/proc/<pid>/exe`, in the process's mount namespace.
    pub exe: Option<Vec<u8>>,
    /// Arguments, cut at [`COMMAND_LINE_CAP`] bytes in total.
    pub argv: Vec<Vec<u8>>,
    /// Length in bytes of the whole `cmdline`, kept or not.
    pub cmdline_len: usize,
    pub cmdline_truncated: bool,
    pub cwd: Option<Vec<u8>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub threads: u32,
    /// Resident set size in bytes (`VmRSS`).
    pub rss_bytes: Option<u64>,
    /// Content of `/proc/<pid>/cgroup`, empty when unreadable.
    pub cgroup_text: String,
    pub zombie: bool,
    pub exit_code: Option<i32>,
    /// Facts only a kernel-side tier provides; empty when read from `/proc`.
    pub kernel: KernelFacts,
}

/// What a kernel-side tier adds about an exec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelFacts {
    /// Number of arguments the program received, kept or not.
    pub argc: Option<u32>,
    pub exe_truncated: bool,
    pub cwd_truncated: bool,
    /// Kind of executed file when it is not a regular file on disk
    /// (`deleted`, `memfd`, `dev_shm`, `fd`).
    pub exe_kind: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    #[error("pid {pid} now belongs to another process (start time {found}, expected {expected})")]
    Reused { pid: u32, expected: u64, found: u64 },
    #[error("pid {pid} is a kernel thread")]
    KernelThread { pid: u32 },
    #[error("/proc/{pid}/stat is malformed")]
    Malformed { pid: u32 },
    #[error("cannot read /proc/{pid}/{file}")]
    Unreadable {
        pid: u32,
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Parses the content of `/proc/<pid>/stat`. The `comm` field may contain
/// spaces and parentheses, so the fields after it are found from the last `)`.
pub fn parse_stat(pid: u32, text: &[u8]) -> Result<Stat, ReadError> {
    let malformed = || ReadError::Malformed { pid };
    let open = text.iter().position(|b| *b == b'(').ok_or_else(malformed)?;
    let close = text
        .iter()
        .rposition(|b| *b == b')')
        .ok_or_else(malformed)?;
    if close < open {
        return Err(malformed());
    }
    let comm = text[open + 1..close].to_vec();
    let rest = std::str::from_utf8(&text[close + 1..]).map_err(|_| malformed())?;
    // Fields after comm, numbered from 3 (state) as in proc(5).
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied().ok_or_else(malformed);
    let number = |n: usize| field(n)?.parse::<u64>().map_err(|_| malformed());

    let state = field(3)?.bytes().next().ok_or_else(malformed)?;
    let exit_code = fields.get(52 - 3).and_then(|s| s.parse::<i32>().ok());
    Ok(Stat {
        pid,
        comm,
        state,
        ppid: number(4)? as u32,
        flags: number(9)?,
        num_threads: number(20)? as u32,
        start_ticks: number(22)?,
        exit_code,
    })
}

pub fn read_stat(fs: &HostFs, pid: u32) -> Result<Stat, ReadError> {
    let text = fs
        .read(format!("/proc/{pid}/stat"))
        .map_err(|e| io_error(pid, "stat", e))?;
    parse_stat(pid, &text)
}

/// Reads only the start time of `pid`, or `None` when it is gone.
pub fn read_start_ticks(fs: &HostFs, pid: u32) -> Option<u64> {
    read_stat(fs, pid).ok().map(|stat| stat.start_ticks)
}

/// Status fields: real uid, real gid and `VmRSS` in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub rss_bytes: Option<u64>,
}

pub fn parse_status(text: &str) -> Status {
    let mut status = Status::default();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let first = value.split_ascii_whitespace().next();
        match name {
            "Uid" => status.uid = first.and_then(|v| v.parse().ok()),
            "Gid" => status.gid = first.and_then(|v| v.parse().ok()),
            "VmRSS" => {
                status.rss_bytes = first
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|kib| kib * 1024)
            }
            _ => {}
        }
    }
    status
}

/// Splits `cmdline` content into arguments. A process may rewrite its
/// argument area, so a missing final NUL is accepted.
pub fn split_cmdline(raw: &[u8]) -> Vec<Vec<u8>> {
    let trimmed = raw.strip_suffix(&[0]).unwrap_or(raw);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed.split(|b| *b == 0).map(<[u8]>::to_vec).collect()
}

/// Reads one process. With `expected_start`, a pid whose start time differs
/// is rejected as reused. Kernel threads are rejected with
/// [`ReadError::KernelThread`]; zombies are returned with what is left.
///
/// All files are read through one open `/proc/<pid>` directory, so once the
/// start time is checked every later read is of that same process or fails.
pub fn read_process(
    fs: &HostFs,
    pid: u32,
    expected_start: Option<u64>,
) -> Result<ProcessInfo, ReadError> {
    let dir = fs.open_proc_dir(pid).map_err(|e| io_error(pid, "", e))?;
    let stat_text = dir.read("stat").map_err(|e| io_error(pid, "stat", e))?;
    let stat = parse_stat(pid, &stat_text)?;
    check_start(pid, expected_start, stat.start_ticks)?;
    if stat.is_kernel_thread() {
        return Err(ReadError::KernelThread { pid });
    }

    let mut info = ProcessInfo {
        pid,
        ppid: stat.ppid,
        start_ticks: stat.start_ticks,
        comm: stat.comm.clone(),
        threads: stat.num_threads,
        zombie: stat.is_zombie(),
        exit_code: if stat.is_zombie() {
            stat.exit_code
        } else {
            None
        },
        ..ProcessInfo::default()
    };
    if info.zombie {
        return Ok(info);
    }

    // The command line goes first: it is what a short-lived process loses
    // first, and what a detection needs most. exe, cwd and cmdline of another
    // user's process need ptrace access (CAP_SYS_PTRACE); each is optional so
    // one denial does not lose the rest.
    if let Ok((raw, total)) = dir.read_capped("cmdline", COMMAND_LINE_CAP) {
        info.cmdline_truncated = total > raw.len();
        info.cmdline_len = total;
        info.argv = split_cmdline(&raw);
    }
    info.exe = dir.read_link("exe").ok();
    if let Ok(text) = dir.read_to_string("status") {
        let status = parse_status(&text);
        info.uid = status.uid;
        info.gid = status.gid;
        info.rss_bytes = status.rss_bytes;
    }
    info.cwd = dir.read_link("cwd").ok();
    info.cgroup_text = dir.read_to_string("cgroup").unwrap_or_default();

    // A process that exits during the reads leaves the later ones empty. It
    // is reported with what was read, and flagged when it is now a zombie.
    match dir
        .read("stat")
        .ok()
        .and_then(|text| parse_stat(pid, &text).ok())
    {
        Some(after) => info.zombie = after.is_zombie(),
        None if info.argv.is_empty() && info.exe.is_none() => return Err(ReadError::Gone { pid }),
        None => {}
    }
    Ok(info)
}

fn check_start(pid: u32, expected: Option<u64>, found: u64) -> Result<(), ReadError> {
    match expected {
        Some(expected) if expected != found => Err(ReadError::Reused {
            pid,
            expected,
            found,
        }),
        _ => Ok(()),
    }
}

fn io_error(pid: u32, file: &'static str, source: std::io::Error) -> ReadError {
    match source.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => ReadError::Gone { pid },
        _ => ReadError::Unreadable { pid, file, source },
    }
}

/// Boot time in seconds since the Unix epoch (`btime` in `/proc/stat`).
pub fn read_boot_time(fs: &HostFs) -> Option<u64> {
    let text = fs.read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Builders for fixture `/proc` trees.
    use std::path::Path;

    /// Formats a `stat` line with the given fields and zeros elsewhere.
    pub fn stat_line(
        pid: u32,
        comm: &str,
        state: char,
        ppid: u32,
        flags: u64,
        threads: u32,
        start: u64,
    ) -> String {
        let mut fields = vec!["0".to_string(); 52];
        fields[0] = state.to_string();
        fields[1] = ppid.to_string();
        fields[6] = flags.to_string();
        fields[17] = threads.to_string();
        fields[19] = start.to_string();
        format!("{pid} ({comm}) {}\n", fields.join(" "))
    }

    /// Writes a fake process under `root/proc/<pid>`.
    #[allow(clippy::too_many_arguments)]
    pub fn write_process(
        root: &Path,
        pid: u32,
        ppid: u32,
        start: u64,
        comm: &str,
        exe: &str,
        argv: &[&[u8]],
        uid: u32,
        cgroup: &str,
    ) {
        let dir = root.join(format!("proc/{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stat"),
            stat_line(pid, comm, 'S', ppid, 0, 1, start),
        )
        .unwrap();
        let mut cmdline = Vec::new();
        for arg in argv {
            cmdline.extend_from_slice(arg);
            cmdline.push(0);
        }
        std::fs::write(dir.join("cmdline"), cmdline).unwrap();
        std::fs::write(
            dir.join("status"),
            format!("Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\nVmRSS:\t  1024 kB\nThreads:\t1\n"),
        )
        .unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        let _ = std::fs::remove_file(dir.join("exe"));
        let _ = std::fs::remove_file(dir.join("cwd"));
        std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
        std::os::unix::fs::symlink("/", dir.join("cwd")).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn stat_comm_with_spaces_and_parens() {
        let line = stat_line(9, "a) (b", 'R', 3, 0, 4, 777);
        let stat = parse_stat(9, line.as_bytes()).unwrap();
        assert_eq!(stat.comm, b"a) (b");
        assert_eq!(stat.ppid, 3);
        assert_eq!(stat.num_threads, 4);
        assert_eq!(stat.start_ticks, 777);
        assert_eq!(stat.state, b'R');
    }

    #[test]
    fn stat_of_live_process_parses() {
        let fs = HostFs::new("/");
        let stat = read_stat(&fs, std::process::id()).unwrap();
        assert_eq!(stat.pid, std::process::id());
        assert!(stat.start_ticks > 0);
        assert!(!stat.is_kernel_thread());
    }

    #[test]
    fn truncated_stat_is_malformed() {
        assert!(matches!(
            parse_stat(1, b"1 (init) S 0"),
            Err(ReadError::Malformed { pid: 1 })
        ));
        assert!(matches!(
            parse_stat(1, b"garbage"),
            Err(ReadError::Malformed { pid: 1 })
        ));
    }

    #[test]
    fn status_fields_parse() {
        let status =
            parse_status("Uid:\t1000\t1000\t1000\t1000\nGid:\t5\t5\t5\t5\nVmRSS:\t  2048 kB\n");
        assert_eq!(status.uid, Some(1000));
        assert_eq!(status.gid, Some(5));
        assert_eq!(status.rss_bytes, Some(2048 * 1024));
    }

    #[test]
    fn cmdline_split_keeps_empty_and_binary_args() {
        assert_eq!(
            split_cmdline(b"sh\0-c\0\0x\xff\0"),
            vec![
                b"sh".to_vec(),
                b"-c".to_vec(),
                Vec::new(),
                b"x\xff".to_vec()
            ]
        );
        assert!(split_cmdline(b"").is_empty());
        assert_eq!(
            split_cmdline(b"rewritten title"),
            vec![b"rewritten title".to_vec()]
        );
    }

    #[test]
    fn fixture_process_reads_fully() {
        let dir = tempfile::tempdir().unwrap();
        write_process(
            dir.path(),
            50,
            1,
            1234,
            "sleep",
            "/usr/bin/sleep",
            &[b"sleep", b"60"],
            1000,
            "0::/user.slice\n",
        );
        let info = read_process(&HostFs::new(dir.path()), 50, Some(1234)).unwrap();
        assert_eq!(info.exe.as_deref(), Some(&b"/usr/bin/sleep"[..]));
        assert_eq!(info.argv, vec![b"sleep".to_vec(), b"60".to_vec()]);
        assert_eq!(info.uid, Some(1000));
        assert_eq!(info.rss_bytes, Some(1024 * 1024));
        assert_eq!(info.cgroup_text, "0::/user.slice\n");
        assert!(!info.cmdline_truncated);
    }

    #[test]
    fn reused_pid_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write_process(
            dir.path(),
            50,
            1,
            1234,
            "sleep",
            "/usr/bin/sleep",
            &[b"sleep"],
            0,
            "",
        );
        let err = read_process(&HostFs::new(dir.path()), 50, Some(999)).unwrap_err();
        assert!(matches!(
            err,
            ReadError::Reused {
                pid: 50,
                expected: 999,
                found: 1234
            }
        ));
    }

    #[test]
    fn missing_process_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        assert!(matches!(
            read_process(&HostFs::new(dir.path()), 77, None),
            Err(ReadError::Gone { pid: 77 })
        ));
    }

    #[test]
    fn kernel_thread_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let proc_dir = dir.path().join("proc/2");
        std::fs::create_dir_all(&proc_dir).unwrap();
        std::fs::write(
            proc_dir.join("stat"),
            stat_line(2, "kthreadd", 'S', 0, PF_KTHREAD, 1, 3),
        )
        .unwrap();
        assert!(matches!(
            read_process(&HostFs::new(dir.path()), 2, None),
            Err(ReadError::KernelThread { pid: 2 })
        ));
    }

    #[test]
    fn long_cmdline_is_capped_with_length() {
        let dir = tempfile::tempdir().unwrap();
        let long = vec![b'x'; COMMAND_LINE_CAP * 2];
        write_process(
            dir.path(),
            60,
            1,
            5,
            "big",
            "/bin/big",
            &[b"big", &long],
            0,
            "",
        );
        let info = read_process(&HostFs::new(dir.path()), 60, None).unwrap();
        assert!(info.cmdline_truncated);
        assert_eq!(info.cmdline_len, 4 + COMMAND_LINE_CAP * 2 + 1);
        let kept: usize = info.argv.iter().map(|a| a.len() + 1).sum();
        assert!(kept <= COMMAND_LINE_CAP + 1);
    }
}
