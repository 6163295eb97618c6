//! Acquisition tiers and the raw facts they produce.
//!
//! Every tier (eBPF, netlink process connector, /proc polling) emits the same
//! [`Fact`] values, so enrichment, rules and queries do not depend on the tier.
//! A fact carries what the tier saw in the kernel; anything missing is read
//! from `$HOST_FS/proc` during enrichment, and flagged when the process was
//! already gone.

pub mod cnproc;
pub mod ebpf;
pub mod procscan;

/// The acquisition tier in use, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Ebpf,
    Netlink,
    ProcPoll,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Ebpf => "ebpf",
            Tier::Netlink => "netlink",
            Tier::ProcPoll => "procpoll",
        }
    }
}

/// Process details read in the kernel at exec time (eBPF tier). The other
/// tiers leave [`ExecFact::details`] empty and enrichment reads `/proc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecDetails {
    /// Path of the executable as the kernel resolved it (`d_path` of the file).
    pub exe: Vec<u8>,
    /// True when `exe` was cut (too deep or too long to read whole).
    pub exe_truncated: bool,
    pub argv: Vec<Vec<u8>>,
    /// Number of arguments the program really received.
    pub argc: u32,
    /// True when `argv` was cut (argument count or byte cap).
    pub argv_truncated: bool,
    pub cwd: Vec<u8>,
    /// True when `cwd` was cut.
    pub cwd_truncated: bool,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id (the inode of the cgroup directory), 0 when unknown.
    pub cgroup_id: u64,
    /// Cgroup path(s) in `/proc/<pid>/cgroup` form when the tier could read
    /// them, otherwise empty.
    pub cgroup_text: String,
    pub exe_kind: ExeKind,
}

/// What kind of file was executed, decided from kernel facts (link count,
/// file system, how the exec was requested), not from path text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExeKind {
    #[default]
    Regular,
    /// The file had no links left (deleted before or during the exec).
    Deleted,
    /// An anonymous memory file (`memfd_create`).
    Memfd,
    /// A file on a tmpfs mounted at `/dev/shm`.
    DevShm,
    /// `execveat` on a file descriptor (`fexecve`).
    Fd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecFact {
    pub pid: u32,
    pub ppid: Option<u32>,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_ticks: Option<u64>,
    /// Nanoseconds since the Unix epoch when the tier saw the exec.
    pub time_ns: u64,
    pub details: Option<ExecDetails>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitFact {
    pub pid: u32,
    pub start_ticks: Option<u64>,
    pub time_ns: u64,
    /// Exit status as `wait(2)` reports it: code in bits 8..16, signal in 0..7.
    pub exit_status: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkFact {
    pub pid: u32,
    pub ppid: u32,
    pub start_ticks: Option<u64>,
    pub time_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Create,
    Delete,
    Modify,
    Rename,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFact {
    pub action: FileAction,
    pub pid: u32,
    pub start_ticks: Option<u64>,
    pub path: Vec<u8>,
    /// New path for [`FileAction::Rename`].
    pub new_path: Option<Vec<u8>>,
    pub time_ns: u64,
}

/// A raw observation from a collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// A process that was already running when the sensor started.
    Existing {
        pid: u32,
    },
    Exec(ExecFact),
    Fork(ForkFact),
    Exit(ExitFact),
    File(FileFact),
    /// A network report of the eBPF tier. Its reader routes these to the
    /// network collector; they never reach enrichment.
    Net(net::kernel::KernelNetEvent),
    /// Data the collector lost, by reason (for example `ringbuf_reserve`).
    Dropped {
        reason: &'static str,
        count: u64,
    },
}

pub mod net;
