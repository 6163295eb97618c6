//! The eBPF acquisition tier: process lifecycle and file changes captured in
//! the kernel by the CO-RE programs in `bpf/picket.bpf.c`.
//!
//! Requirements: Linux 5.8 or later with BTF (`/sys/kernel/btf/vmlinux`, or
//! the same file under `HOST_FS`), CAP_BPF with CAP_PERFMON or CAP_SYS_ADMIN,
//! and no lockdown in confidentiality mode (it blocks reading kernel memory
//! from BPF). All programs attach as BTF tracepoints, so neither tracefs nor
//! debugfs needs to be mounted.
//!
//! The loader is aya. It is pure Rust, so the sensor stays one static binary
//! with no libbpf or libelf to ship. It performs CO-RE relocation against the
//! kernel BTF it is given, so that BTF can come from under `HOST_FS`.
//!
//! Entry points: [`probe`] checks whether the tier can run here. [`start`]
//! loads the programs and streams [`Fact`]s to a channel until the returned
//! [`EbpfHandle`] is dropped. [`EbpfHandle::losses`] feeds health output.

pub mod code_identity;
mod own_tgid;
mod wire;

pub use wire::DNS_PAYLOAD_CAP;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, ProgramError};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};

use super::net::kernel::KernelNetEvent;
use super::Fact;
pub use wire::LOSS_REASONS;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/picket.bpf.o"));

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const PREFIX_SLOTS: usize = 8;
const PREFIX_CAP: usize = 256;

/// Reason the eBPF tier cannot run on this host.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no kernel BTF at {}: the kernel needs CONFIG_DEBUG_INFO_BTF", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or "))]
    NoBtf { searched: Vec<PathBuf> },
    #[error("kernel {release} is older than 5.8, the oldest with BPF ring buffers")]
    KernelTooOld { release: String },
    #[error("missing capability {missing}: loading eBPF programs needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN")]
    MissingCapability { missing: &'static str },
    #[error(
        "kernel lockdown is in {mode} mode, which forbids BPF programs from reading kernel memory"
    )]
    Lockdown { mode: String },
    #[error("cannot read {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Failure of [`start`]; the caller falls back to a lower tier.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Unavailable(Unavailable),
    #[error("cannot parse kernel BTF at {path}")]
    Btf {
        path: PathBuf,
        #[source]
        source: aya::BtfError,
    },
    #[error("cannot create the BPF maps of the embedded object")]
    Object(#[source] aya::EbpfError),
    #[error("the kernel refused to create BPF map {map} (permission denied): missing CAP_BPF/CAP_SYS_ADMIN, or a low RLIMIT_MEMLOCK on kernels before 5.11")]
    MapPermissionDenied {
        map: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the verifier rejected program {program}: {log_tail}")]
    Verifier {
        program: &'static str,
        /// The last lines of the verifier log, which name the failing check.
        log_tail: String,
        /// The whole verifier log.
        log: String,
    },
    #[error("the kernel refused program {program} (permission denied): missing CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN, a low RLIMIT_MEMLOCK on kernels before 5.11, or a security module")]
    PermissionDenied {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot load program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot attach program {program} to tracepoint {hook}")]
    Attach {
        program: &'static str,
        hook: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name} is missing from the embedded object")]
    MissingMap { name: &'static str },
    #[error("cannot access map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot start the ring buffer reader thread")]
    Thread(#[source] std::io::Error),
    #[error("file path prefix {prefix:?} is invalid: {reason}")]
    Prefix {
        prefix: String,
        reason: &'static str,
    },
}

/// File event settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// Report file changes at all. They cost a check on every syscall.
    pub enabled: bool,
    /// Report only paths under these prefixes (whole components: `/etc`
    /// matches `/etc/passwd`, not `/etcd`); empty reports every path. At most
    /// 8 prefixes of at most 256 bytes each.
    pub prefixes: Vec<String>,
    /// Events per second each process may produce; 0 disables the limit.
    pub rate_per_sec: u32,
    /// Events a process may produce at once before the rate applies.
    pub burst: u32,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            enabled: true,
            prefixes: Vec::new(),
            rate_per_sec: 200,
            burst: 1000,
        }
    }
}

/// Settings of the eBPF tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfConfig {
    /// Mount point of the host's `/` (`HOST_FS`).
    pub host_fs: PathBuf,
    /// Ring buffer size in bytes; a power of two and a multiple of the page size.
    pub ring_bytes: u32,
    pub files: FileConfig,
    /// Attach the network programs (TCP connect/accept/close, UDP peers).
    /// Their reports go to the channel given to [`start_with_network`].
    pub network: bool,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        EbpfConfig {
            host_fs: PathBuf::from("/"),
            ring_bytes: 16 << 20,
            files: FileConfig::default(),
            network: true,
        }
    }
}

/// Loss counts by reason since the tier started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LossCounts {
    /// Events the kernel could not put in the ring buffer (it was full).
    pub ringbuf_reserve: u64,
    /// Execs whose argument area could not be read.
    pub argv_unreadable: u64,
    /// File events the per-process rate limit suppressed.
    pub file_rate_limit: u64,
    /// File events whose path could not be read from user memory.
    pub path_unreadable: u64,
    /// Facts dropped because the consumer's channel was full.
    pub queue_overflow: u64,
    /// Ring buffer records that did not decode.
    pub malformed: u64,
}

#[derive(Default)]
struct SharedCounts {
    kernel: [AtomicU64; 4],
    queue_overflow: AtomicU64,
    malformed: AtomicU64,
    events: AtomicU64,
}

/// A running eBPF tier. Dropping it detaches the programs and stops the
/// reader thread.
pub struct EbpfHandle {
    stop: Arc<AtomicBool>,
    counts: Arc<SharedCounts>,
    thread: Option<JoinHandle<()>>,
    /// Reason file events are off although configured, if they are.
    pub file_events_unavailable: Option<String>,
    /// Reason network reports are off or partial although configured, if
    /// they are.
    pub network_unavailable: Option<String>,
}

impl EbpfHandle {
    /// Loss counts so far, by reason.
    pub fn losses(&self) -> LossCounts {
        let kernel = |i: usize| self.counts.kernel[i].load(Ordering::Relaxed);
        LossCounts {
            ringbuf_reserve: kernel(0),
            argv_unreadable: kernel(1),
            file_rate_limit: kernel(2),
            path_unreadable: kernel(3),
            queue_overflow: self.counts.queue_overflow.load(Ordering::Relaxed),
            malformed: self.counts.malformed.load(Ordering::Relaxed),
        }
    }

    /// Records decoded from the ring buffer so far.
    pub fn events_read(&self) -> u64 {
        self.counts.events.load(Ordering::Relaxed)
    }
}

impl Drop for EbpfHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Kernel BTF candidates, `HOST_FS` first.
fn btf_candidates(host_fs: &Path) -> Vec<PathBuf> {
    let mut paths = vec![host_fs.join("sys/kernel/btf/vmlinux")];
    let plain = PathBuf::from("/sys/kernel/btf/vmlinux");
    if !paths.contains(&plain) {
        paths.push(plain);
    }
    paths
}

fn find_btf(host_fs: &Path) -> Result<PathBuf, Unavailable> {
    first_file(btf_candidates(host_fs))
}

fn first_file(searched: Vec<PathBuf>) -> Result<PathBuf, Unavailable> {
    searched
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or(Unavailable::NoBtf { searched })
}

/// Parses "6.1.0-13-amd64" into (6, 1).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn effective_capabilities() -> Result<u64, Unavailable> {
    let path = PathBuf::from("/proc/self/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|source| Unavailable::Unreadable { path, source })?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("0");
    Ok(u64::from_str_radix(hex, 16).unwrap_or(0))
}

/// Checks whether the eBPF tier can run here, without loading anything.
/// A successful probe does not rule out a later [`LoadError`] (a verifier
/// rejection or a security module can still refuse the programs).
pub fn probe(host_fs: &Path) -> Result<(), Unavailable> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim().to_owned();
    if kernel_version(&release).is_some_and(|version| version < (5, 8)) {
        return Err(Unavailable::KernelTooOld { release });
    }
    find_btf(host_fs)?;

    let caps = effective_capabilities()?;
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            return Err(Unavailable::MissingCapability { missing: "CAP_BPF" });
        }
        if !has(CAP_PERFMON) {
            return Err(Unavailable::MissingCapability {
                missing: "CAP_PERFMON",
            });
        }
    }

    // securityfs may not be mounted; then lockdown cannot be checked here
    // and a refusal shows up at load time instead.
    if let Ok(text) = std::fs::read_to_string("/sys/kernel/security/lockdown") {
        if let Some(mode) = text
            .split('[')
            .nth(1)
            .and_then(|rest| rest.split(']').next())
        {
            if mode == "confidentiality" {
                return Err(Unavailable::Lockdown {
                    mode: mode.to_owned(),
                });
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Prefix {
    len: u32,
    pad: u32,
    bytes: [u8; PREFIX_CAP],
}

// SAFETY: Prefix is repr(C), has no padding (4 + 4 + 256 bytes) and every bit
// pattern is valid, as aya requires of map values.
unsafe impl aya::Pod for Prefix {}

fn prefix_entries(prefixes: &[String]) -> Result<Vec<Prefix>, LoadError> {
    if prefixes.len() > PREFIX_SLOTS {
        return Err(LoadError::Prefix {
            prefix: prefixes[PREFIX_SLOTS].clone(),
            reason: "at most 8 prefixes",
        });
    }
    prefixes
        .iter()
        .map(|prefix| {
            let bytes = prefix.as_bytes();
            if !prefix.starts_with('/') {
                return Err(LoadError::Prefix {
                    prefix: prefix.clone(),
                    reason: "must be an absolute path",
                });
            }
            if bytes.len() > PREFIX_CAP {
                return Err(LoadError::Prefix {
                    prefix: prefix.clone(),
                    reason: "longer than 256 bytes",
                });
            }
            let mut entry = Prefix {
                len: bytes.len() as u32,
                pad: 0,
                bytes: [0; PREFIX_CAP],
            };
            entry.bytes[..bytes.len()].copy_from_slice(bytes);
            Ok(entry)
        })
        .collect()
}

/// Syscall numbers the file programs watch, for the build's architecture.
#[cfg(target_arch = "x86_64")]
const SYSCALLS: &[(&str, i32)] = &[
    ("nr_open", 2),
    ("nr_openat", 257),
    ("nr_openat2", 437),
    ("nr_creat", 85),
    ("nr_unlink", 87),
    ("nr_unlinkat", 263),
    ("nr_rename", 82),
    ("nr_renameat", 264),
    ("nr_renameat2", 316),
    ("nr_write", 1),
    ("nr_pwrite64", 18),
    ("nr_writev", 20),
    ("nr_pwritev", 296),
    ("nr_pwritev2", 328),
    ("nr_close", 3),
    ("nr_read", 0),
    ("nr_accept", 43),
    ("nr_accept4", 288),
    ("nr_sendto", 44),
    ("nr_sendmsg", 46),
    ("nr_sendmmsg", 307),
    ("nr_recvfrom", 45),
    ("nr_recvmsg", 47),
    ("nr_recvmmsg", 299),
];

#[cfg(target_arch = "aarch64")]
const SYSCALLS: &[(&str, i32)] = &[
    ("nr_openat", 56),
    ("nr_openat2", 437),
    ("nr_unlinkat", 35),
    ("nr_renameat", 38),
    ("nr_renameat2", 276),
    ("nr_write", 64),
    ("nr_pwrite64", 68),
    ("nr_writev", 66),
    ("nr_pwritev", 70),
    ("nr_pwritev2", 287),
    ("nr_close", 57),
    ("nr_read", 63),
    ("nr_accept", 202),
    ("nr_accept4", 242),
    ("nr_sendto", 206),
    ("nr_sendmsg", 211),
    ("nr_sendmmsg", 269),
    ("nr_recvfrom", 207),
    ("nr_recvmsg", 212),
    ("nr_recvmmsg", 243),
];

fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map(|n| n as u32).unwrap_or(256).max(1)
}

/// Lifts RLIMIT_MEMLOCK, which BPF maps count against before Linux 5.11.
/// Failure is fine on later kernels, which charge the memory cgroup instead.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one valid rlimit struct and changes no memory.
    let result = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot raise RLIMIT_MEMLOCK");
    }
}

fn program_error(program: &'static str, source: ProgramError) -> LoadError {
    match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } if io_error.raw_os_error() != Some(libc::EPERM) => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(4).collect();
            let log_tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
            let log_tail = format!("{io_error}: {log_tail}");
            LoadError::Verifier {
                program,
                log_tail,
                log,
            }
        }
        ProgramError::LoadError { .. } => LoadError::PermissionDenied { program, source },
        source => LoadError::Program { program, source },
    }
}

/// Runs `f` with every blockable signal blocked in the calling thread.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data; sigfillset initialises it fully.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above, for the saved mask that pthread_sigmask fills.
    let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid for the calls; only this thread's mask changes.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
    }
    let result = f();
    // SAFETY: restores the mask saved above for this thread.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
    result
}

fn attach(
    bpf: &mut Ebpf,
    btf: &Btf,
    program: &'static str,
    hook: &'static str,
) -> Result<(), LoadError> {
    let prog: &mut BtfTracePoint = bpf
        .program_mut(program)
        .ok_or(LoadError::Program {
            program,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| LoadError::Program { program, source })?;
    // The verifier gives up with EAGAIN when a signal is pending for the
    // loading thread, so signals are blocked here (another thread takes a
    // process-wide signal meanwhile) and an EAGAIN load is retried, as libbpf
    // does.
    let mut attempt = 0;
    loop {
        let result = with_signals_blocked(|| prog.load(hook, btf));
        match result {
            Ok(()) => break,
            Err(ProgramError::LoadError { io_error, .. })
                if attempt < 5 && io_error.raw_os_error() == Some(libc::EAGAIN) =>
            {
                attempt += 1;
                tracing::debug!(program, attempt, error = %io_error, "retrying program load");
            }
            Err(source) => return Err(program_error(program, source)),
        }
    }
    prog.attach().map_err(|source| LoadError::Attach {
        program,
        hook,
        source,
    })?;
    Ok(())
}

fn load_object(config: &EbpfConfig, btf: &Btf, with_files: bool) -> Result<Ebpf, LoadError> {
    let self_tgid = own_tgid::host_tgid(&config.host_fs);
    let enabled = u32::from(with_files);
    let net_enabled = u32::from(config.network);
    let prefix_count = config.files.prefixes.len() as u32;
    let burst = config.files.burst.max(1);
    let wakeup_bytes = u64::from(config.ring_bytes / 8).min(256 * 1024);
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(btf))
        .set_global("self_tgid", &self_tgid, true)
        .set_global("file_events_enabled", &enabled, true)
        .set_global("net_events_enabled", &net_enabled, true)
        .set_global("prefix_count", &prefix_count, true)
        .set_global("file_rate_per_sec", &config.files.rate_per_sec, true)
        .set_global("file_burst", &burst, true)
        .set_global("wakeup_bytes", &wakeup_bytes, true)
        .set_max_entries("exec_scratch", possible_cpus())
        .set_max_entries("events", config.ring_bytes);
    for (name, number) in SYSCALLS {
        loader.set_global(name, number, true);
    }
    loader.load(OBJECT).map_err(|error| match error {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error, .. })
            if io_error.raw_os_error() == Some(libc::EPERM) =>
        {
            LoadError::MapPermissionDenied {
                map: name,
                source: io_error,
            }
        }
        error => LoadError::Object(error),
    })
}

/// Loads and attaches the programs and starts a thread that sends each
/// event to `tx` as a [`Fact`]. When `tx` is full, facts are dropped and
/// counted, and a `Fact::Dropped` with reason `queue_overflow` follows once
/// there is room. Kernel-side losses are sent as `Fact::Dropped` once a
/// second. Network reports are discarded; see [`start_with_network`].
pub fn start(config: &EbpfConfig, tx: SyncSender<Fact>) -> Result<EbpfHandle, LoadError> {
    let config = EbpfConfig {
        network: false,
        ..config.clone()
    };
    start_with_network(&config, tx, None)
}

/// [`start`], with the network programs' reports sent to `net_tx` when
/// `config.network` is set. Reports that find `net_tx` full are dropped and
/// counted as `queue_overflow`; a closed `net_tx` only ends the reports.
pub fn start_with_network(
    config: &EbpfConfig,
    tx: SyncSender<Fact>,
    net_tx: Option<SyncSender<KernelNetEvent>>,
) -> Result<EbpfHandle, LoadError> {
    let config = &EbpfConfig {
        network: config.network && net_tx.is_some(),
        ..config.clone()
    };
    let btf_path = find_btf(&config.host_fs).map_err(LoadError::Unavailable)?;
    let btf =
        Btf::parse_file(&btf_path, Endianness::default()).map_err(|source| LoadError::Btf {
            path: btf_path.clone(),
            source,
        })?;
    let prefixes = prefix_entries(&config.files.prefixes)?;
    raise_memlock();

    let mut bpf = load_object(config, &btf, config.files.enabled)?;
    attach(&mut bpf, &btf, "handle_exec", "sched_process_exec")?;
    attach(&mut bpf, &btf, "handle_fork", "sched_process_fork")?;
    attach(&mut bpf, &btf, "handle_exit", "sched_process_exit")?;

    let mut file_events_unavailable = None;
    let mut network_unavailable = None;
    if config.files.enabled || config.network {
        if let Err(error) = attach_syscall_programs(&mut bpf, &btf, &prefixes) {
            if let LoadError::Verifier { log, .. } = &error {
                tracing::debug!(%log, "verifier log");
            }
            tracing::warn!(%error, "file events and udp peers of unconnected sockets unavailable in the ebpf tier");
            file_events_unavailable = Some(error.to_string());
            network_unavailable = Some(format!(
                "accepted connections and unconnected udp peers unavailable: {error}"
            ));
        }
    }
    if config.network {
        if let Err(reason) = attach_network_programs(&mut bpf, &btf) {
            tracing::warn!(%reason, "network reports unavailable in the ebpf tier");
            network_unavailable = Some(reason);
        }
    }

    let ring = RingBuf::try_from(
        bpf.take_map("events")
            .ok_or(LoadError::MissingMap { name: "events" })?,
    )
    .map_err(|source| LoadError::Map {
        name: "events",
        source,
    })?;
    let loss: PerCpuArray<MapData, u64> = PerCpuArray::try_from(
        bpf.take_map("loss")
            .ok_or(LoadError::MissingMap { name: "loss" })?,
    )
    .map_err(|source| LoadError::Map {
        name: "loss",
        source,
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(SharedCounts::default());
    let sink = Sink {
        tx,
        net_tx: net_tx.filter(|_| config.network),
        counts: counts.clone(),
        unsent_overflow: 0,
    };
    let reader = Reader {
        bpf,
        ring,
        loss,
        sink,
        stop: stop.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("ebpf-reader".to_owned())
        .spawn(move || reader.run())
        .map_err(LoadError::Thread)?;
    tracing::info!(
        btf = %btf_path.display(),
        files = file_events_unavailable.is_none() && config.files.enabled,
        network = network_unavailable.is_none() && config.network,
        "ebpf tier started"
    );
    Ok(EbpfHandle {
        stop,
        counts,
        thread: Some(thread),
        file_events_unavailable,
        network_unavailable,
    })
}

/// Attaches the TCP state program, then the UDP I/O programs, which need
/// Linux 6.3 or later. Returns what is missing.
fn attach_network_programs(bpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    attach(
        bpf,
        btf,
        "handle_inet_sock_set_state",
        "inet_sock_set_state",
    )
    .map_err(|e| format!("tcp connections unavailable: {e}"))?;
    attach(bpf, btf, "handle_sock_send_length", "sock_send_length")
        .and_then(|()| attach(bpf, btf, "handle_sock_recv_length", "sock_recv_length"))
        .map_err(|e| format!("udp peers unavailable (needs linux 6.3 or later): {e}"))?;
    // Without it, responses on connected sockets are read by the packet
    // capture only, without their process once the socket closed.
    if let Err(error) = attach(bpf, btf, "handle_dns_recv_length", "sock_recv_length") {
        tracing::warn!(%error, "dns responses on connected sockets are not read in the kernel (needs linux 5.15 or later)");
    }
    Ok(())
}

/// Attaches the raw syscall programs, which report file changes and read
/// the peers of accept, send and receive calls.
fn attach_syscall_programs(
    bpf: &mut Ebpf,
    btf: &Btf,
    prefixes: &[Prefix],
) -> Result<(), LoadError> {
    let mut map: Array<&mut MapData, Prefix> =
        Array::try_from(bpf.map_mut("file_prefixes").ok_or(LoadError::MissingMap {
            name: "file_prefixes",
        })?)
        .map_err(|source| LoadError::Map {
            name: "file_prefixes",
            source,
        })?;
    for (index, prefix) in prefixes.iter().enumerate() {
        map.set(index as u32, prefix, 0)
            .map_err(|source| LoadError::Map {
                name: "file_prefixes",
                source,
            })?;
    }
    attach(bpf, btf, "handle_sys_enter", "sys_enter")?;
    attach(bpf, btf, "handle_sys_exit", "sys_exit")?;
    Ok(())
}

/// CLOCK_BOOTTIME to Unix time, refreshed by the reader once a second so a
/// wall clock step shows up within a second.
struct Clock {
    offset_ns: i128,
}

impl Clock {
    fn now() -> Clock {
        let read = |clock| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes one timespec into valid memory.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        };
        Clock {
            offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_BOOTTIME),
        }
    }
}

impl wire::BootClock for Clock {
    fn to_epoch_ns(&self, boot_ns: u64) -> u64 {
        (i128::from(boot_ns) + self.offset_ns).max(0) as u64
    }
}

struct Reader {
    // Kept so the programs stay attached while the thread runs.
    #[allow(dead_code)]
    bpf: Ebpf,
    ring: RingBuf<MapData>,
    loss: PerCpuArray<MapData, u64>,
    sink: Sink,
    stop: Arc<AtomicBool>,
}

/// The consumer's channel, with the count of facts it had no room for.
struct Sink {
    tx: SyncSender<Fact>,
    /// Receiver of network reports; `None` once it closed.
    net_tx: Option<SyncSender<KernelNetEvent>>,
    counts: Arc<SharedCounts>,
    unsent_overflow: u64,
}

impl Sink {
    /// Sends the count of facts the queue had no room for, if any and if
    /// there is room now; false when the receiver is gone.
    fn flush_overflow(&mut self) -> bool {
        if self.unsent_overflow == 0 {
            return true;
        }
        let dropped = Fact::Dropped {
            reason: "queue_overflow",
            count: self.unsent_overflow,
        };
        match self.tx.try_send(dropped) {
            Ok(()) => self.unsent_overflow = 0,
            Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => return false,
        }
        true
    }

    /// Sends one fact; false when the receiver is gone.
    fn send(&mut self, fact: Fact) -> bool {
        let fact = match fact {
            Fact::Net(event) => return self.send_net(event),
            other => other,
        };
        if !self.flush_overflow() {
            return false;
        }
        match self.tx.try_send(fact) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.unsent_overflow += 1;
                self.counts.queue_overflow.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Sink {
    /// Sends one network report. A full channel drops it, counted; a closed
    /// one ends network reports but not the tier.
    fn send_net(&mut self, event: KernelNetEvent) -> bool {
        let Some(net_tx) = &self.net_tx else {
            return true;
        };
        match net_tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.unsent_overflow += 1;
                self.counts.queue_overflow.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::info!("network report receiver closed; reports discarded");
                self.net_tx = None;
            }
        }
        true
    }
}

impl Reader {
    fn run(mut self) {
        let mut clock = Clock::now();
        let mut last_tick = Instant::now();
        let mut reported = [0u64; 4];

        while !self.stop.load(Ordering::Relaxed) {
            // Records mostly do not wake the reader (see wakeup_flag in the
            // BPF source), so this timeout is the usual delivery delay.
            self.wait_readable(Duration::from_millis(20));
            while let Some(record) = self.ring.next() {
                match wire::decode(&record, &clock) {
                    Ok(fact) => {
                        self.sink.counts.events.fetch_add(1, Ordering::Relaxed);
                        if !self.sink.send(fact) {
                            return;
                        }
                    }
                    Err(error) => {
                        self.sink.counts.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%error, "malformed ring buffer record");
                    }
                }
            }
            // A quiet host sends no further fact that would carry the
            // overflow count, so it is also flushed on every wake-up.
            if !self.sink.flush_overflow() {
                return;
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = Instant::now();
                clock = Clock::now();
                if !self.report_kernel_losses(&mut reported) {
                    return;
                }
            }
        }
    }

    fn wait_readable(&self, timeout: Duration) {
        let mut pollfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd that lives for the call.
        unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as libc::c_int) };
    }

    fn report_kernel_losses(&mut self, reported: &mut [u64; 4]) -> bool {
        for (slot, reason) in LOSS_REASONS.iter().enumerate() {
            let Ok(values) = self.loss.get(&(slot as u32), 0) else {
                continue;
            };
            let total: u64 = values.iter().sum();
            self.sink.counts.kernel[slot].store(total, Ordering::Relaxed);
            if total > reported[slot] {
                let count = total - reported[slot];
                reported[slot] = total;
                if !self.sink.send(Fact::Dropped { reason, count }) {
                    return false;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod net_tests;
