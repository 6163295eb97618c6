//! Enrichment: raw [`Fact`]s joined with the process table, `/proc`, user
//! names and container metadata into [`Record`]s.
//!
//! Process events carry `PROCESS_ID`, `PARENT_PROCESS_ID`, `FILE_PATH`,
//! `COMMAND_LINE`, `USER_ID`, `USER_NAME`, `WORKING_DIRECTORY`,
//! `CREATION_TIME` (ms since the Unix epoch), `THREADS`, `MEMORY_USAGE`
//! (resident bytes), a `PARENT` object with the same fields, a `CONTAINER`
//! object for containerised processes, and the `routing/this` and
//! `routing/parent` atoms. A process that was gone before it could be read is
//! still reported with `DETAILS_UNAVAILABLE: true` and what the tier itself
//! saw. It is never filled from whatever process has its pid now.
//!
//! Other flags: `ZOMBIE` (exited, not yet reaped when read), and for a
//! command line past [`COMMAND_LINE_CAP`] bytes `COMMAND_LINE_TRUNCATED`,
//! `COMMAND_LINE_LENGTH` (the original length in bytes, NULs included) and
//! `COMMAND_LINE_CAP`. The eBPF tier can add `ARGUMENT_COUNT` (for a cut
//! command line), `FILE_PATH_TRUNCATED`, `WORKING_DIRECTORY_TRUNCATED` and
//! `FILE_KIND` (`deleted`, `memfd`, `dev_shm` or `fd` for a program that was
//! not a regular file on disk). `TERMINATE_PROCESS` adds `EXIT_CODE`, or `EXIT_SIGNAL`
//! for a process killed by a signal, when the tier reports it (not in `/proc`
//! polling). File facts become `FILE_CREATE`, `FILE_DELETE`,
//! `FILE_MODIFIED` and `FILE_RENAME` (with `NEW_FILE_PATH`). Byte fields that
//! are not UTF-8 get a `<FIELD>_B64` sibling (see `picket_event::bytes`).
//!
//! With a [`CodeHasher`], the first run of each executable file identity
//! (device, inode, modification time, size) in any tier also yields a
//! `CODE_IDENTITY` record: `FILE_PATH`, `HASH` (hex SHA-256), `FILE_SIZE`
//! (`MEMORY_SIZE` for a memfd), `PROCESS_ID`, `TIMESTAMP` (ms, the exec
//! time), the process's `CONTAINER` and its `routing/this` and
//! `routing/parent` atoms. A file over the hashing limit carries
//! `FILE_TOO_LARGE: true` and `HASH_SIZE_LIMIT` instead of `HASH`. The file
//! is opened through `/proc/<pid>/exe`; for a process already gone, through
//! its path (under `HOST_FS`, or under the parent's root in a container).
//! Executables the full hashing queue could not take are reported as
//! `DATA_DROPPED` with reason `code_identity_queue`.
//!
//! NOTE: in the netlink and eBPF tiers a process that forks and never execs
//! (a worker of a pre-forking server) is kept in the table as a parent but
//! gets no NEW_PROCESS or TERMINATE_PROCESS of its own; the `/proc` polling
//! tier reports it like any other new pid.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use picket_event::atom::process_atom;
use picket_event::bytes::put_bytes;
use picket_event::types;
use picket_event::Record;
use serde_json::{Map, Value};

use crate::code_hash::{CodeHasher, Executable, Submitted};
use crate::collect::{
    ExeKind, ExecDetails, ExecFact, ExitFact, Fact, FileAction, FileFact, ForkFact,
};
use crate::hostfs::{self, HostFs};
use crate::process::procfs::{self, KernelFacts, COMMAND_LINE_CAP};
use crate::process::table::DEFAULT_CAPACITY;
use crate::process::{
    Entry, KnownProcess, Prefetch, ProcessInfo, ProcessKey, ProcessRegistry, ProcessTable,
    ReadError,
};

/// Container attribution as enrichment uses it: `/proc/<pid>/cgroup` content
/// in, the `CONTAINER` object out (`None` for host processes).
pub trait ContainerLookup: Send {
    fn lookup(&mut self, cgroup_text: &str) -> Option<Arc<Value>>;
}

/// Lookup used when attribution is unavailable: every process is reported
/// without a `CONTAINER` object.
pub struct NoContainers;

impl ContainerLookup for NoContainers {
    fn lookup(&mut self, _cgroup_text: &str) -> Option<Arc<Value>> {
        None
    }
}

/// Counters of what enrichment handled quietly. Shared with the sensor loop,
/// which logs them.
#[derive(Debug, Default)]
pub struct Stats {
    pub facts: AtomicU64,
    pub records: AtomicU64,
    /// Processes gone before their details could be read.
    pub details_unavailable: AtomicU64,
    /// Reads rejected because the pid had been reused.
    pub pid_reused: AtomicU64,
    pub kernel_threads: AtomicU64,
    pub zombies: AtomicU64,
    /// `/proc` entries that exist but could not be read (permissions).
    pub unreadable: AtomicU64,
    /// Exits of processes that forked but never exec'd (no event sent).
    pub fork_only_exits: AtomicU64,
    /// Records or facts lost, as reported by collectors.
    pub dropped: AtomicU64,
    /// Executables hashed for `CODE_IDENTITY`.
    pub code_hashes: AtomicU64,
    /// Executables not hashed because the hashing queue was full.
    pub code_hash_dropped: AtomicU64,
    /// Executables that could not be opened or read for hashing.
    pub code_hash_failed: AtomicU64,
}

impl Stats {
    pub fn to_json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "facts": get(&self.facts),
            "records": get(&self.records),
            "details_unavailable": get(&self.details_unavailable),
            "pid_reused": get(&self.pid_reused),
            "kernel_threads": get(&self.kernel_threads),
            "zombies": get(&self.zombies),
            "unreadable": get(&self.unreadable),
            "fork_only_exits": get(&self.fork_only_exits),
            "dropped": get(&self.dropped),
            "code_hashes": get(&self.code_hashes),
            "code_hash_dropped": get(&self.code_hash_dropped),
            "code_hash_failed": get(&self.code_hash_failed),
        })
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// User names from `$HOST_FS/etc/passwd`, reloaded when the file changes
/// (checked at most every 5 s).
///
/// NOTE: a containerised process's uid is named from the host's passwd, not
/// the container image's, so `USER_NAME` can differ from what `id` prints
/// inside the container.
pub struct UserNames {
    path: PathBuf,
    names: HashMap<u32, String>,
    modified: Option<std::time::SystemTime>,
    checked: Option<Instant>,
}

impl UserNames {
    const RECHECK: Duration = Duration::from_secs(5);

    pub fn new(fs: &HostFs) -> Self {
        UserNames {
            path: fs.path("/etc/passwd"),
            names: HashMap::new(),
            modified: None,
            checked: None,
        }
    }

    pub fn name(&mut self, uid: u32) -> Option<&str> {
        self.refresh();
        self.names.get(&uid).map(String::as_str)
    }

    fn refresh(&mut self) {
        if self.checked.is_some_and(|at| at.elapsed() < Self::RECHECK) {
            return;
        }
        self.checked = Some(Instant::now());
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == self.modified && modified.is_some() {
            return;
        }
        self.modified = modified;
        self.names = std::fs::read_to_string(&self.path)
            .map(|text| parse_passwd(&text))
            .unwrap_or_default();
    }
}

/// Parses passwd(5) lines into uid to name. The first entry for a uid wins,
/// as with `getpwuid(3)`.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse::<u32>() {
            names.entry(uid).or_insert_with(|| name.to_owned());
        }
    }
    names
}

/// Boot time and tick rate, to turn start ticks into wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub boot_time_secs: u64,
    pub ticks_per_second: u64,
}

impl Clock {
    pub fn read(fs: &HostFs) -> Self {
        Clock {
            boot_time_secs: procfs::read_boot_time(fs).unwrap_or(0),
            ticks_per_second: hostfs::clock_ticks_per_second(),
        }
    }

    /// Start of a process in milliseconds since the Unix epoch. Precision is
    /// one clock tick (10 ms at the usual 100 Hz).
    pub fn start_ms(&self, start_ticks: u64) -> u64 {
        self.boot_time_secs * 1000 + start_ticks * 1000 / self.ticks_per_second.max(1)
    }
}

pub struct Enricher {
    fs: HostFs,
    boot_id: String,
    hostname: String,
    clock: Clock,
    table: ProcessTable,
    users: UserNames,
    containers: Box<dyn ContainerLookup>,
    stats: Arc<Stats>,
    prefetch: Option<Arc<Prefetch>>,
    code_hasher: Option<CodeHasher>,
    /// Records produced beside the one a fact maps to, sent after it.
    extra: Vec<Record>,
    /// Registry in which other threads look up processes by pid.
    registry: Option<Arc<ProcessRegistry>>,
}

impl Enricher {
    pub fn new(
        fs: HostFs,
        boot_id: String,
        hostname: String,
        containers: Box<dyn ContainerLookup>,
        stats: Arc<Stats>,
    ) -> Self {
        Enricher {
            clock: Clock::read(&fs),
            users: UserNames::new(&fs),
            table: ProcessTable::new(DEFAULT_CAPACITY),
            fs,
            boot_id,
            hostname,
            containers,
            stats,
            prefetch: None,
            code_hasher: None,
            extra: Vec::new(),
            registry: None,
        }
    }

    /// Records every process it learns of in `registry`, for threads that
    /// get a pid from elsewhere (the network collector).
    pub fn with_registry(mut self, registry: Arc<ProcessRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Adds `entry` to the table, and to the registry if there is one.
    /// `own_cgroup` is false when the container was inherited at fork.
    fn insert(&mut self, entry: Entry, own_cgroup: bool) {
        if let Some(registry) = &self.registry {
            let known = KnownProcess {
                start_ticks: entry.info.start_ticks,
                atom: process_atom(&self.boot_id, entry.info.pid, entry.info.start_ticks),
                comm: String::from_utf8_lossy(&entry.info.comm).into_owned(),
                container: entry.container.clone(),
                own_cgroup,
            };
            registry.record(entry.info.pid, known);
        }
        self.table.insert(entry);
    }

    /// Reports the hash of each executable the first time it runs.
    pub fn with_code_hasher(mut self, hasher: CodeHasher) -> Self {
        self.code_hasher = Some(hasher);
        self
    }

    /// Uses details a tier read at exec time before reading `/proc`.
    pub fn with_prefetch(mut self, prefetch: Arc<Prefetch>) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    pub fn table(&self) -> &ProcessTable {
        &self.table
    }

    /// Handles one fact, passing each record it produces to `out`.
    pub fn handle(&mut self, fact: Fact, out: &mut dyn FnMut(Record)) {
        bump(&self.stats.facts);
        let record = match fact {
            Fact::Existing { pid } => self.on_existing(pid),
            Fact::Exec(exec) => self.on_exec(exec),
            Fact::Fork(fork) => {
                self.on_fork(fork);
                None
            }
            Fact::Exit(exit) => self.on_exit(exit),
            Fact::Dropped { reason, count } => Some(self.dropped_record(reason, count)),
            Fact::File(file) => Some(self.file_record(file)),
            // Turned into records by the network collector.
            Fact::Net(_) => None,
        };
        if let Some(record) = record {
            bump(&self.stats.records);
            out(record);
        }
        for record in std::mem::take(&mut self.extra) {
            bump(&self.stats.records);
            out(record);
        }
    }

    fn on_existing(&mut self, pid: u32) -> Option<Record> {
        let info = self.read(pid, None)?;
        let entry = self.make_entry(info, false);
        let record = self.process_record(types::EXISTING_PROCESS, &entry, None);
        self.queue_code_identity(&entry, record.routing.event_time);
        self.insert_announced(entry);
        Some(record)
    }

    fn on_fork(&mut self, fork: ForkFact) {
        let Some(start) = fork.start_ticks else {
            return;
        };
        if self.table.get((fork.pid, start)).is_some() {
            return;
        }
        // A forked child runs its parent's image until it execs, so it
        // inherits the parent's details.
        let parent = self.table.parent_of(fork.ppid, start).cloned();
        let mut info = parent
            .as_ref()
            .map(|p| (*p.info).clone())
            .unwrap_or_default();
        info.pid = fork.pid;
        info.ppid = fork.ppid;
        info.start_ticks = start;
        info.threads = 1;
        info.rss_bytes = None;
        let entry = Entry {
            info: Arc::new(info),
            parent: parent.as_ref().map(Entry::key),
            container: parent.as_ref().and_then(|p| p.container.clone()),
            announced: false,
            details_unavailable: parent.as_ref().is_none_or(|p| p.details_unavailable),
        };
        self.insert(entry, false);
    }

    fn on_exec(&mut self, exec: ExecFact) -> Option<Record> {
        // The start time from the tier, else from a fork seen earlier: exec
        // keeps the pid and the start time.
        let known = self.table.get_by_pid(exec.pid).cloned();
        let expected_start = exec
            .start_ticks
            .or(known.as_ref().map(|e| e.info.start_ticks));

        let entry = if let Some(details) = exec.details.clone() {
            self.entry_from_details(&exec, details, known.as_ref())
        } else if let Some(info) = self.take_prefetched(&exec, expected_start) {
            self.make_entry(info, false)
        } else {
            match self.read(exec.pid, expected_start) {
                Some(info) => self.make_entry(info, false),
                None => self.unavailable_entry(&exec, expected_start, known.as_ref())?,
            }
        };
        let record = self.process_record(types::NEW_PROCESS, &entry, Some(exec.time_ns));
        self.queue_code_identity(&entry, exec.time_ns / 1_000_000);
        self.insert_announced(entry);
        Some(record)
    }

    fn take_prefetched(
        &mut self,
        exec: &ExecFact,
        expected_start: Option<u64>,
    ) -> Option<ProcessInfo> {
        let info = self.prefetch.as_ref()?.take(exec.pid, exec.time_ns)?;
        if expected_start.is_some_and(|start| start != info.start_ticks) {
            bump(&self.stats.pid_reused);
            return None;
        }
        Some(info)
    }

    fn on_exit(&mut self, exit: ExitFact) -> Option<Record> {
        let entry = self.table.remove(exit.pid, exit.start_ticks)?;
        if let Some(registry) = &self.registry {
            registry.exited(entry.info.pid, entry.info.start_ticks);
        }
        if !entry.announced {
            bump(&self.stats.fork_only_exits);
            return None;
        }
        let mut record = Record::new(types::TERMINATE_PROCESS, &self.hostname);
        self.set_routing(&mut record, &entry);
        record.set("PROCESS_ID", entry.info.pid);
        record.set("PARENT_PROCESS_ID", entry.info.ppid);
        record.set("TIMESTAMP", exit.time_ns / 1_000_000);
        put_bytes(
            &mut record.event,
            "FILE_PATH",
            entry.info.exe.as_deref().unwrap_or_default(),
        );
        if let Some(status) = exit.exit_status {
            // wait(2) status: a normal exit has the code in bits 8..16 and
            // zero in the low 7 bits; otherwise those bits are the signal.
            let signal = status & 0x7f;
            if signal == 0 {
                record.set("EXIT_CODE", (status >> 8) & 0xff);
            } else {
                record.set("EXIT_SIGNAL", signal);
            }
        }
        if let Some(container) = &entry.container {
            record.set(types::container::KEY, (**container).clone());
        }
        Some(record)
    }

    /// Builds a FILE_CREATE, FILE_DELETE, FILE_MODIFIED or FILE_RENAME
    /// record, linked to the process by its atom and carrying its container.
    fn file_record(&self, file: FileFact) -> Record {
        let event_type = match file.action {
            FileAction::Create => types::FILE_CREATE,
            FileAction::Delete => types::FILE_DELETE,
            FileAction::Modify => types::FILE_MODIFIED,
            FileAction::Rename => types::FILE_RENAME,
        };
        let mut record = Record::new(event_type, &self.hostname);
        let process = match file.start_ticks {
            Some(start) => self.table.get((file.pid, start)),
            None => self.table.get_by_pid(file.pid),
        };
        let start = file.start_ticks.or(process.map(|p| p.info.start_ticks));
        if let Some(start) = start.filter(|s| *s != 0) {
            record.routing.this = Some(process_atom(&self.boot_id, file.pid, start));
        }
        put_bytes(&mut record.event, "FILE_PATH", &file.path);
        if let Some(new_path) = &file.new_path {
            put_bytes(&mut record.event, "NEW_FILE_PATH", new_path);
        }
        record.set("PROCESS_ID", file.pid);
        record.set("TIMESTAMP", file.time_ns / 1_000_000);
        if let Some(container) = process.and_then(|p| p.container.as_ref()) {
            record.set(types::container::KEY, (**container).clone());
        }
        record
    }

    /// Queues the process's executable for a `CODE_IDENTITY` record; a
    /// full queue adds a `DATA_DROPPED` record instead.
    fn queue_code_identity(&mut self, entry: &Entry, time_ms: u64) {
        if self.code_hasher.is_none() {
            return;
        }
        let Some((file, path)) = self.open_executable(entry) else {
            return;
        };
        let exe = entry.info.exe.as_deref().unwrap_or_default();
        let executable = Executable {
            file,
            path,
            in_memory: entry.info.kernel.exe_kind == Some("memfd") || exe.starts_with(b"/memfd:"),
        };
        let record = self.code_identity_record(entry, time_ms);
        let hasher = self.code_hasher.as_mut().expect("checked above");
        if let Submitted::Dropped(_) = hasher.submit(executable, record) {
            let count = hasher.take_drops();
            let record = self.dropped_record("code_identity_queue", count);
            self.extra.push(record);
        }
    }

    /// Opens the executable through `/proc/<pid>/exe`, which reaches the
    /// very file that was run (deleted or in another mount namespace). A
    /// process already gone falls back to its path: under `HOST_FS` for a
    /// host process, under the parent's root for a containerised one.
    fn open_executable(&self, entry: &Entry) -> Option<(File, PathBuf)> {
        let info = &entry.info;
        let exe_link = self.fs.proc_path(info.pid, "exe");
        if let Ok(file) = File::open(&exe_link) {
            // Checked after the open: a pid reused before it shows another
            // start time here.
            if procfs::read_start_ticks(&self.fs, info.pid) == Some(info.start_ticks) {
                return Some((file, exe_link));
            }
        }
        let exe = info.exe.as_deref()?;
        if info.kernel.exe_kind.is_some() || !exe.starts_with(b"/") {
            return None;
        }
        let exe = Path::new(OsStr::from_bytes(exe));
        let path = match &entry.container {
            None => self.fs.path(exe),
            Some(_) => self
                .fs
                .proc_path(info.ppid, "root")
                .join(exe.strip_prefix("/").ok()?),
        };
        match File::open(&path) {
            Ok(file) => Some((file, path)),
            Err(error) => {
                bump(&self.stats.code_hash_failed);
                tracing::debug!(%error, pid = info.pid, path = %path.display(), "opening executable for hashing failed");
                None
            }
        }
    }

    /// Builds the `CODE_IDENTITY` record of a process's executable without
    /// hash and size, which the hashing worker adds.
    fn code_identity_record(&self, entry: &Entry, time_ms: u64) -> Record {
        let mut record = Record::new(types::CODE_IDENTITY, &self.hostname);
        self.set_routing(&mut record, entry);
        let info = &entry.info;
        put_bytes(
            &mut record.event,
            "FILE_PATH",
            info.exe.as_deref().unwrap_or_default(),
        );
        record.set("PROCESS_ID", info.pid);
        record.set("TIMESTAMP", time_ms);
        if let Some(container) = &entry.container {
            record.set(types::container::KEY, (**container).clone());
        }
        record
    }

    fn dropped_record(&self, reason: &str, count: u64) -> Record {
        self.stats.dropped.fetch_add(count, Ordering::Relaxed);
        let mut record = Record::new(types::DATA_DROPPED, &self.hostname);
        record.set("REASON", reason).set("COUNT", count);
        record
    }

    /// Reads a process, counting the quiet failures.
    fn read(&mut self, pid: u32, expected_start: Option<u64>) -> Option<ProcessInfo> {
        match procfs::read_process(&self.fs, pid, expected_start) {
            Ok(info) => {
                if info.zombie {
                    bump(&self.stats.zombies);
                }
                Some(info)
            }
            Err(ReadError::KernelThread { .. }) => {
                bump(&self.stats.kernel_threads);
                None
            }
            Err(ReadError::Reused { .. }) => {
                bump(&self.stats.pid_reused);
                None
            }
            Err(ReadError::Gone { .. }) | Err(ReadError::Malformed { .. }) => None,
            Err(e @ ReadError::Unreadable { .. }) => {
                bump(&self.stats.unreadable);
                tracing::debug!(error = %e, "process unreadable");
                None
            }
        }
    }

    fn make_entry(&mut self, info: ProcessInfo, details_unavailable: bool) -> Entry {
        let container = if info.cgroup_text.is_empty() {
            None
        } else {
            self.containers.lookup(&info.cgroup_text)
        };
        let parent = self.resolve_parent(info.ppid, info.start_ticks);
        Entry {
            info: Arc::new(info),
            parent,
            container,
            announced: false,
            details_unavailable,
        }
    }

    fn entry_from_details(
        &mut self,
        exec: &ExecFact,
        details: ExecDetails,
        known: Option<&Entry>,
    ) -> Entry {
        let start = exec
            .start_ticks
            .or(known.map(|e| e.info.start_ticks))
            .unwrap_or(0);
        let ppid = exec.ppid.or(known.map(|e| e.info.ppid)).unwrap_or(0);
        let info = ProcessInfo {
            pid: exec.pid,
            ppid,
            start_ticks: start,
            exe: Some(details.exe),
            // NOTE: the kernel-side tier reports a cut argv without the
            // original byte length, so a cut command line from it carries no
            // COMMAND_LINE_LENGTH.
            cmdline_len: if details.argv_truncated {
                0
            } else {
                details.argv.iter().map(|a| a.len() + 1).sum()
            },
            cmdline_truncated: details.argv_truncated,
            argv: details.argv,
            cwd: Some(details.cwd),
            uid: Some(details.uid),
            gid: Some(details.gid),
            threads: 1,
            cgroup_text: details.cgroup_text,
            kernel: KernelFacts {
                argc: Some(details.argc),
                exe_truncated: details.exe_truncated,
                cwd_truncated: details.cwd_truncated,
                exe_kind: match details.exe_kind {
                    ExeKind::Regular => None,
                    ExeKind::Deleted => Some("deleted"),
                    ExeKind::Memfd => Some("memfd"),
                    ExeKind::DevShm => Some("dev_shm"),
                    ExeKind::Fd => Some("fd"),
                },
            },
            ..ProcessInfo::default()
        };
        self.make_entry(info, false)
    }

    /// Builds the entry for an exec whose process was gone (or its pid
    /// reused) before `/proc` could be read. Without a start time no atom can be formed, but
    /// the event is still sent.
    fn unavailable_entry(
        &mut self,
        exec: &ExecFact,
        start: Option<u64>,
        known: Option<&Entry>,
    ) -> Option<Entry> {
        bump(&self.stats.details_unavailable);
        let known = known.filter(|e| Some(e.info.start_ticks) == start);
        let ppid = exec.ppid.or(known.map(|e| e.info.ppid)).unwrap_or(0);
        let info = ProcessInfo {
            pid: exec.pid,
            ppid,
            start_ticks: start.unwrap_or(0),
            ..ProcessInfo::default()
        };
        let parent = known
            .and_then(|e| e.parent)
            .or_else(|| start.and_then(|s| self.resolve_parent(ppid, s)));
        // cgroup membership is inherited at fork, so the parent's container is
        // the child's unless it moved itself, which short-lived processes do not.
        let container = known.and_then(|e| e.container.clone()).or_else(|| {
            parent
                .and_then(|key| self.table.get(key))
                .and_then(|p| p.container.clone())
        });
        Some(Entry {
            info: Arc::new(info),
            parent,
            container,
            announced: false,
            details_unavailable: true,
        })
    }

    fn resolve_parent(&mut self, ppid: u32, child_start: u64) -> Option<ProcessKey> {
        if ppid == 0 {
            return None;
        }
        if let Some(parent) = self.table.parent_of(ppid, child_start) {
            return Some(parent.key());
        }
        // Not seen yet (its EXISTING event may come later in the start scan):
        // read it now so the child's parent atom and PARENT object are right.
        let info = procfs::read_process(&self.fs, ppid, None).ok()?;
        if info.start_ticks > child_start {
            return None;
        }
        let key = (ppid, info.start_ticks);
        let container = if info.cgroup_text.is_empty() {
            None
        } else {
            self.containers.lookup(&info.cgroup_text)
        };
        let grandparent = self
            .table
            .parent_of(info.ppid, info.start_ticks)
            .map(Entry::key);
        let entry = Entry {
            info: Arc::new(info),
            parent: grandparent,
            container,
            announced: false,
            details_unavailable: false,
        };
        self.insert(entry, true);
        Some(key)
    }

    fn insert_announced(&mut self, mut entry: Entry) {
        entry.announced = true;
        self.insert(entry, true);
    }

    fn set_routing(&self, record: &mut Record, entry: &Entry) {
        if entry.info.start_ticks != 0 {
            record.routing.this = Some(process_atom(
                &self.boot_id,
                entry.info.pid,
                entry.info.start_ticks,
            ));
        }
        if let Some((ppid, pstart)) = entry.parent {
            record.routing.parent = Some(process_atom(&self.boot_id, ppid, pstart));
        }
    }

    /// Builds a NEW_PROCESS or EXISTING_PROCESS record.
    fn process_record(&mut self, event_type: &str, entry: &Entry, time_ns: Option<u64>) -> Record {
        let mut record = Record::new(event_type, &self.hostname);
        self.set_routing(&mut record, entry);
        let mut fields = self.process_fields(entry);
        fields.insert(
            "TIMESTAMP".into(),
            Value::from(
                time_ns
                    .map(|ns| ns / 1_000_000)
                    .unwrap_or(record.routing.event_time),
            ),
        );

        let parent = entry.parent.and_then(|key| self.table.get(key).cloned());
        if let Some(parent) = parent {
            let parent_fields = self.process_fields(&parent);
            fields.insert("PARENT".into(), Value::Object(parent_fields));
        }
        if let Some(container) = &entry.container {
            fields.insert(types::container::KEY.into(), (**container).clone());
        }
        record.event = fields;
        record
    }

    /// Builds the fields of one process, shared by the event and its `PARENT`.
    fn process_fields(&mut self, entry: &Entry) -> Map<String, Value> {
        let info = &entry.info;
        let mut map = Map::new();
        map.insert("PROCESS_ID".into(), info.pid.into());
        map.insert("PARENT_PROCESS_ID".into(), info.ppid.into());
        if entry.details_unavailable {
            map.insert("DETAILS_UNAVAILABLE".into(), true.into());
        }
        if info.start_ticks != 0 {
            map.insert(
                "CREATION_TIME".into(),
                self.clock.start_ms(info.start_ticks).into(),
            );
        }
        if info.zombie {
            map.insert("ZOMBIE".into(), true.into());
        }
        if let Some(exe) = &info.exe {
            put_bytes(&mut map, "FILE_PATH", exe);
        }
        if !info.argv.is_empty() {
            put_bytes(&mut map, "COMMAND_LINE", &info.argv.join(&b' '));
        }
        if info.cmdline_truncated {
            map.insert("COMMAND_LINE_TRUNCATED".into(), true.into());
            if info.cmdline_len > 0 {
                map.insert("COMMAND_LINE_LENGTH".into(), info.cmdline_len.into());
                map.insert("COMMAND_LINE_CAP".into(), COMMAND_LINE_CAP.into());
            }
        }
        if info.kernel.exe_truncated {
            map.insert("FILE_PATH_TRUNCATED".into(), true.into());
        }
        if let Some(kind) = info.kernel.exe_kind {
            map.insert("FILE_KIND".into(), kind.into());
        }
        if info.cmdline_truncated {
            if let Some(argc) = info.kernel.argc {
                map.insert("ARGUMENT_COUNT".into(), argc.into());
            }
        }
        if info.kernel.cwd_truncated {
            map.insert("WORKING_DIRECTORY_TRUNCATED".into(), true.into());
        }
        if let Some(cwd) = &info.cwd {
            put_bytes(&mut map, "WORKING_DIRECTORY", cwd);
        }
        if let Some(uid) = info.uid {
            map.insert("USER_ID".into(), uid.into());
            if let Some(name) = self.users.name(uid) {
                map.insert("USER_NAME".into(), name.into());
            }
        }
        if !entry.details_unavailable {
            map.insert("THREADS".into(), info.threads.into());
        }
        if let Some(rss) = info.rss_bytes {
            map.insert("MEMORY_USAGE".into(), rss.into());
        }
        map
    }

    /// Everything the sensor would report about one live process, for
    /// `explain pid`.
    pub fn explain_pid(&mut self, pid: u32) -> Result<Value, ReadError> {
        let info = procfs::read_process(&self.fs, pid, None)?;
        let cgroup_text = info.cgroup_text.clone();
        let entry = self.make_entry(info, false);
        let record = self.process_record(types::EXISTING_PROCESS, &entry, None);
        Ok(serde_json::json!({
            "record": record,
            "cgroup": cgroup_text,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::procfs::fixture::write_process;

    struct FixedContainer;

    impl ContainerLookup for FixedContainer {
        fn lookup(&mut self, cgroup_text: &str) -> Option<Arc<Value>> {
            cgroup_text
                .contains("docker-")
                .then(|| Arc::new(serde_json::json!({"ID": "abc", "NAME": "web"})))
        }
    }

    fn fixture() -> (tempfile::TempDir, Enricher) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/stat"), "cpu 0 0 0 0\nbtime 1700000000\n").unwrap();
        write_process(
            root,
            1,
            0,
            1,
            "init",
            "/sbin/init",
            &[b"/sbin/init"],
            0,
            "0::/init.scope\n",
        );
        write_process(
            root,
            100,
            1,
            500,
            "containerd-shim",
            "/usr/bin/containerd-shim",
            &[b"shim"],
            0,
            "0::/system.slice/docker-abc.scope\n",
        );
        let enricher = Enricher::new(
            HostFs::new(root),
            "boot".into(),
            "node".into(),
            Box::new(FixedContainer),
            Arc::new(Stats::default()),
        );
        (dir, enricher)
    }

    fn collect(enricher: &mut Enricher, fact: Fact) -> Vec<Record> {
        let mut records = Vec::new();
        enricher.handle(fact, &mut |r| records.push(r));
        records
    }

    fn exec(pid: u32) -> Fact {
        Fact::Exec(ExecFact {
            pid,
            ppid: None,
            start_ticks: None,
            time_ns: 1_700_000_123_000_000,
            details: None,
        })
    }

    #[test]
    fn existing_process_has_fields_and_user_name() {
        let (dir, mut enricher) = fixture();
        write_process(
            dir.path(),
            200,
            1,
            900,
            "bash",
            "/bin/bash",
            &[b"bash", b"-l"],
            1000,
            "0::/user.slice\n",
        );
        collect(&mut enricher, Fact::Existing { pid: 1 });
        let records = collect(&mut enricher, Fact::Existing { pid: 200 });
        let record = &records[0];
        assert_eq!(record.routing.event_type, "EXISTING_PROCESS");
        assert_eq!(record.event["PROCESS_ID"], 200);
        assert_eq!(record.event["PARENT_PROCESS_ID"], 1);
        assert_eq!(record.event["FILE_PATH"], "/bin/bash");
        assert_eq!(record.event["COMMAND_LINE"], "bash -l");
        assert_eq!(record.event["USER_ID"], 1000);
        assert_eq!(record.event["USER_NAME"], "alice");
        assert_eq!(record.event["CREATION_TIME"], 1_700_000_000_000u64 + 9000);
        assert_eq!(record.event["PARENT"]["FILE_PATH"], "/sbin/init");
        assert!(record.event.get("CONTAINER").is_none());
        assert_eq!(
            record.routing.this.as_deref(),
            Some(process_atom("boot", 200, 900).as_str())
        );
        assert_eq!(
            record.routing.parent.as_deref(),
            Some(process_atom("boot", 1, 1).as_str())
        );
    }

    #[test]
    fn container_process_carries_container() {
        let (dir, mut enricher) = fixture();
        write_process(
            dir.path(),
            300,
            100,
            800,
            "nginx",
            "/usr/sbin/nginx",
            &[b"nginx"],
            0,
            "0::/system.slice/docker-abc.scope\n",
        );
        let records = collect(&mut enricher, exec(300));
        assert_eq!(records[0].event["CONTAINER"]["ID"], "abc");
        assert_eq!(
            records[0].event["PARENT"]["FILE_PATH"],
            "/usr/bin/containerd-shim"
        );
        assert!(
            records[0].event["PARENT"].get("CONTAINER").is_none(),
            "PARENT has no nested container"
        );
        assert_eq!(records[0].event["TIMESTAMP"], 1_700_000_123u64);
    }

    #[test]
    fn vanished_exec_is_flagged_with_fork_start() {
        let (_dir, mut enricher) = fixture();
        collect(&mut enricher, Fact::Existing { pid: 100 });
        collect(
            &mut enricher,
            Fact::Fork(ForkFact {
                pid: 400,
                ppid: 100,
                start_ticks: Some(1000),
                time_ns: 0,
            }),
        );
        let records = collect(&mut enricher, exec(400));
        let record = &records[0];
        assert_eq!(record.event["DETAILS_UNAVAILABLE"], true);
        assert_eq!(record.event["PROCESS_ID"], 400);
        assert_eq!(record.event["PARENT_PROCESS_ID"], 100);
        assert!(record.event.get("FILE_PATH").is_none());
        assert_eq!(
            record.event["CONTAINER"]["ID"], "abc",
            "container inherited from the parent"
        );
        assert_eq!(
            record.routing.this.as_deref(),
            Some(process_atom("boot", 400, 1000).as_str())
        );
        assert_eq!(
            record.routing.parent.as_deref(),
            Some(process_atom("boot", 100, 500).as_str())
        );
    }

    #[test]
    fn exec_on_reused_pid_unfilled() {
        let (dir, mut enricher) = fixture();
        collect(
            &mut enricher,
            Fact::Fork(ForkFact {
                pid: 500,
                ppid: 1,
                start_ticks: Some(1000),
                time_ns: 0,
            }),
        );
        // Process 500 (start 1000) exited; pid 500 now belongs to another
        // process that started at 2000.
        write_process(
            dir.path(),
            500,
            1,
            2000,
            "other",
            "/bin/other",
            &[b"other"],
            0,
            "",
        );
        let records = collect(&mut enricher, exec(500));
        assert_eq!(records[0].event["DETAILS_UNAVAILABLE"], true);
        assert!(records[0].event.get("FILE_PATH").is_none());
        assert!(records[0].event.get("COMMAND_LINE").is_none());
        assert_eq!(enricher.stats.pid_reused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn terminate_carries_exit_code_and_evicts() {
        let (dir, mut enricher) = fixture();
        write_process(
            dir.path(),
            600,
            100,
            700,
            "sh",
            "/bin/sh",
            &[b"sh"],
            0,
            "0::/system.slice/docker-abc.scope\n",
        );
        collect(&mut enricher, exec(600));
        let exit = |status| {
            Fact::Exit(ExitFact {
                pid: 600,
                start_ticks: None,
                time_ns: 5_000_000,
                exit_status: Some(status),
            })
        };
        let records = collect(&mut enricher, exit(3 << 8));
        assert_eq!(records[0].routing.event_type, "TERMINATE_PROCESS");
        assert_eq!(records[0].event["EXIT_CODE"], 3);
        assert_eq!(records[0].event["CONTAINER"]["ID"], "abc");
        assert_eq!(
            records[0].routing.this.as_deref(),
            Some(process_atom("boot", 600, 700).as_str())
        );
        assert!(enricher.table().get_by_pid(600).is_none());
        assert!(
            collect(&mut enricher, exit(9)).is_empty(),
            "second exit of the same pid is ignored"
        );
    }

    #[test]
    fn killed_process_reports_signal() {
        let (dir, mut enricher) = fixture();
        write_process(dir.path(), 610, 1, 700, "sh", "/bin/sh", &[b"sh"], 0, "");
        collect(&mut enricher, exec(610));
        let records = collect(
            &mut enricher,
            Fact::Exit(ExitFact {
                pid: 610,
                start_ticks: Some(700),
                time_ns: 0,
                exit_status: Some(9),
            }),
        );
        assert_eq!(records[0].event["EXIT_SIGNAL"], 9);
        assert!(records[0].event.get("EXIT_CODE").is_none());
    }

    #[test]
    fn fork_only_exit_sends_nothing() {
        let (_dir, mut enricher) = fixture();
        collect(
            &mut enricher,
            Fact::Fork(ForkFact {
                pid: 700,
                ppid: 1,
                start_ticks: Some(10),
                time_ns: 0,
            }),
        );
        let records = collect(
            &mut enricher,
            Fact::Exit(ExitFact {
                pid: 700,
                start_ticks: None,
                time_ns: 0,
                exit_status: Some(0),
            }),
        );
        assert!(records.is_empty());
        assert_eq!(enricher.stats.fork_only_exits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn non_utf8_argument_keeps_bytes() {
        let (dir, mut enricher) = fixture();
        write_process(
            dir.path(),
            800,
            1,
            5,
            "x",
            "/tmp/\u{e9}x",
            &[b"/tmp/x", b"\xff\n\x1b"],
            0,
            "",
        );
        let records = collect(&mut enricher, exec(800));
        let line = records[0].to_json_line();
        assert!(!line.contains('\n'));
        assert_eq!(records[0].event["COMMAND_LINE"], "/tmp/x \\xff\n\u{1b}");
        let raw = picket_event::bytes::get_bytes(&records[0].event, "COMMAND_LINE").unwrap();
        assert_eq!(raw, b"/tmp/x \xff\n\x1b");
    }

    #[test]
    fn reparented_child_links_to_new_parent() {
        let (dir, mut enricher) = fixture();
        collect(&mut enricher, Fact::Existing { pid: 1 });
        write_process(
            dir.path(),
            900,
            850,
            60,
            "daemon",
            "/usr/bin/daemon",
            &[b"daemon"],
            0,
            "",
        );
        // Parent 850 exited before the scan and the daemon was reparented
        // to init: the /proc value (ppid 1) is what the event carries.
        write_process(
            dir.path(),
            900,
            1,
            60,
            "daemon",
            "/usr/bin/daemon",
            &[b"daemon"],
            0,
            "",
        );
        let records = collect(&mut enricher, Fact::Existing { pid: 900 });
        assert_eq!(records[0].event["PARENT_PROCESS_ID"], 1);
        assert_eq!(
            records[0].routing.parent.as_deref(),
            Some(process_atom("boot", 1, 1).as_str())
        );
    }

    #[test]
    fn file_fact_links_to_process() {
        let (dir, mut enricher) = fixture();
        write_process(
            dir.path(),
            820,
            100,
            900,
            "sh",
            "/bin/sh",
            &[b"sh"],
            0,
            "0::/system.slice/docker-abc.scope\n",
        );
        collect(&mut enricher, exec(820));
        let fact = FileFact {
            action: FileAction::Rename,
            pid: 820,
            start_ticks: Some(900),
            path: b"/etc/a".to_vec(),
            new_path: Some(b"/etc/b\xff".to_vec()),
            time_ns: 7_000_000,
        };
        let records = collect(&mut enricher, Fact::File(fact));
        let record = &records[0];
        assert_eq!(record.routing.event_type, "FILE_RENAME");
        assert_eq!(record.event["FILE_PATH"], "/etc/a");
        assert_eq!(record.event["NEW_FILE_PATH"], "/etc/b\\xff");
        assert!(record.event.contains_key("NEW_FILE_PATH_B64"));
        assert_eq!(record.event["PROCESS_ID"], 820);
        assert_eq!(record.event["TIMESTAMP"], 7);
        assert_eq!(record.event["CONTAINER"]["ID"], "abc");
        assert_eq!(
            record.routing.this.as_deref(),
            Some(process_atom("boot", 820, 900).as_str())
        );
    }

    #[test]
    fn kernel_details_are_used_and_flagged() {
        let (_dir, mut enricher) = fixture();
        let details = ExecDetails {
            exe: b"/memfd:payload (deleted)".to_vec(),
            argv: vec![b"payload".to_vec(), b"-x".to_vec()],
            argc: 9,
            argv_truncated: true,
            cwd: b"/tmp".to_vec(),
            uid: 1000,
            cgroup_text: "0::/system.slice/docker-abc.scope\n".into(),
            exe_kind: ExeKind::Memfd,
            ..ExecDetails::default()
        };
        let fact = ExecFact {
            pid: 830,
            ppid: Some(1),
            start_ticks: Some(950),
            time_ns: 0,
            details: Some(details),
        };
        let records = collect(&mut enricher, Fact::Exec(fact));
        let event = &records[0].event;
        assert_eq!(event["FILE_PATH"], "/memfd:payload (deleted)");
        assert_eq!(event["FILE_KIND"], "memfd");
        assert_eq!(event["COMMAND_LINE"], "payload -x");
        assert_eq!(event["COMMAND_LINE_TRUNCATED"], true);
        assert_eq!(event["ARGUMENT_COUNT"], 9);
        assert!(
            event.get("COMMAND_LINE_LENGTH").is_none(),
            "the original length is unknown"
        );
        assert_eq!(event["USER_NAME"], "alice");
        assert_eq!(event["WORKING_DIRECTORY"], "/tmp");
        assert_eq!(event["CONTAINER"]["ID"], "abc");
        assert_eq!(
            records[0].routing.this.as_deref(),
            Some(process_atom("boot", 830, 950).as_str())
        );
    }

    /// Attaches a hasher whose records land in the returned list.
    fn with_hasher(enricher: Enricher) -> (Enricher, Arc<std::sync::Mutex<Vec<Record>>>) {
        let records = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = records.clone();
        let hasher = CodeHasher::spawn(
            Box::new(move |record| {
                sink.lock().unwrap().push(record);
                true
            }),
            1 << 20,
            Arc::new(Stats::default()),
        )
        .unwrap();
        (enricher.with_code_hasher(hasher), records)
    }

    #[test]
    fn code_identity_once_per_file() {
        let (dir, enricher) = fixture();
        let (mut enricher, hashed) = with_hasher(enricher);
        let program = dir.path().join("nginx");
        std::fs::write(&program, b"abc").unwrap();
        let cgroup = "0::/system.slice/docker-abc.scope\n";
        let mut execs = Vec::new();
        for pid in [300, 301] {
            write_process(
                dir.path(),
                pid,
                100,
                800,
                "nginx",
                "/x",
                &[b"nginx"],
                0,
                cgroup,
            );
            let exe = dir.path().join(format!("proc/{pid}/exe"));
            std::fs::remove_file(&exe).unwrap();
            std::os::unix::fs::symlink(&program, &exe).unwrap();
            execs.extend(collect(&mut enricher, exec(pid)));
        }
        drop(enricher);

        let hashed = hashed.lock().unwrap();
        assert_eq!(hashed.len(), 1, "{hashed:?}");
        let identity = &hashed[0];
        assert_eq!(identity.routing.event_type, "CODE_IDENTITY");
        assert_eq!(
            identity.event["HASH"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(identity.event["FILE_SIZE"], 3);
        assert_eq!(identity.event["PROCESS_ID"], 300);
        assert_eq!(identity.event["TIMESTAMP"], 1_700_000_123u64);
        assert_eq!(identity.event["CONTAINER"]["ID"], "abc");
        assert_eq!(identity.routing.this, execs[0].routing.this);
        assert_eq!(identity.routing.parent, execs[0].routing.parent);
    }

    #[test]
    fn gone_host_process_hashed_by_path() {
        let (dir, enricher) = fixture();
        let (mut enricher, hashed) = with_hasher(enricher);
        std::fs::create_dir_all(dir.path().join("opt")).unwrap();
        std::fs::write(dir.path().join("opt/tool"), b"abc").unwrap();
        let details = ExecDetails {
            exe: b"/opt/tool".to_vec(),
            argv: vec![b"tool".to_vec()],
            argc: 1,
            ..ExecDetails::default()
        };
        let fact = ExecFact {
            pid: 840,
            ppid: Some(1),
            start_ticks: Some(960),
            time_ns: 0,
            details: Some(details),
        };
        collect(&mut enricher, Fact::Exec(fact));
        drop(enricher);

        let hashed = hashed.lock().unwrap();
        assert_eq!(hashed.len(), 1, "{hashed:?}");
        assert_eq!(hashed[0].event["FILE_PATH"], "/opt/tool");
        assert_eq!(
            hashed[0].event["HASH"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hashed[0].event.get("CONTAINER").is_none());
    }

    #[test]
    fn passwd_first_entry_wins() {
        let names = parse_passwd("a:x:5:5::/:/bin/sh\nb:x:5:5::/:/bin/sh\nbroken\n# comment\n");
        assert_eq!(names[&5], "a");
        assert_eq!(names.len(), 1);
    }
}
