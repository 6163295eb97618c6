//! The `/proc` polling tier: the set of host pids under `$HOST_FS/proc`,
//! diffed at an interval (default 100 ms).
//!
//! It needs no capability beyond reading `/proc` and works from any PID
//! namespace, which makes it the tier of the non-hostPID deployment. What it
//! cannot see:
//! - processes that start and exit within one interval are not reported;
//! - an exec that keeps the pid is reported only while the process is young
//!   (first seen less than [`YOUNG_POLLS`] polls ago) and only when its
//!   `comm` changes. A long-lived shell's `exec`, or an exec of a program
//!   with the same name, is not reported. Young processes are re-read because
//!   container runtimes create every container process as `runc init` and
//!   exec the real program a moment later;
//! - a pid that exits and is reused within one interval is taken for the
//!   same process;
//! - exit codes are unknown, because the process is gone when noticed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{ExecFact, ExitFact, Fact};
use crate::hostfs::{self, HostFs};
use crate::process::procfs;

/// Sends one [`Fact::Existing`] per pid now under `$HOST_FS/proc`. Returns
/// how many were sent.
pub fn send_existing(fs: &HostFs, tx: &SyncSender<Fact>) -> std::io::Result<usize> {
    let mut pids = fs.list_pids()?;
    // Ascending pids put most parents before their children.
    pids.sort_unstable();
    let mut sent = 0;
    for pid in pids {
        if tx.send(Fact::Existing { pid }).is_err() {
            break;
        }
        sent += 1;
    }
    Ok(sent)
}

/// Polls during which a new process is re-read to catch its exec.
pub const YOUNG_POLLS: u32 = 30;
/// Most young processes re-read per poll, so an exec storm of long-lived
/// processes cannot make each poll read thousands of files.
const MAX_YOUNG: usize = 1024;

/// A recently seen process, re-read to catch an exec that keeps its pid.
#[derive(Debug)]
struct Young {
    start_ticks: u64,
    comm: Vec<u8>,
    polls_left: u32,
}

/// State of the poller between two scans: pid to start time, with `None`
/// for kernel threads, which are remembered so they are read only once.
#[derive(Debug, Default)]
pub struct Poller {
    known: HashMap<u32, Option<u64>>,
    young: HashMap<u32, Young>,
}

impl Poller {
    /// Records the current pids as the baseline without reporting them.
    pub fn baseline(&mut self, fs: &HostFs) -> std::io::Result<()> {
        for pid in fs.list_pids()? {
            let stat = procfs::read_stat(fs, pid).ok();
            let start = stat
                .filter(|s| !s.is_kernel_thread())
                .map(|s| s.start_ticks);
            self.known.insert(pid, start);
        }
        Ok(())
    }

    /// Scans once and returns exits first (a reused pid exits before its new
    /// owner starts), then new processes.
    pub fn poll(&mut self, fs: &HostFs) -> std::io::Result<Vec<Fact>> {
        let now_ns = hostfs::now_ns();
        let mut current = fs.list_pids()?;
        current.sort_unstable();

        let mut facts = Vec::new();
        let present: std::collections::HashSet<u32> = current.iter().copied().collect();
        self.young.retain(|pid, _| present.contains(pid));
        self.known.retain(|pid, start| {
            if present.contains(pid) {
                return true;
            }
            if let Some(start) = start {
                facts.push(Fact::Exit(ExitFact {
                    pid: *pid,
                    start_ticks: Some(*start),
                    time_ns: now_ns,
                    exit_status: None,
                }));
            }
            false
        });

        self.recheck_young(fs, now_ns, &mut facts);

        for pid in current {
            if self.known.contains_key(&pid) {
                continue;
            }
            let Ok(stat) = procfs::read_stat(fs, pid) else {
                // Gone again between readdir and read, so it is not reported.
                continue;
            };
            if stat.is_kernel_thread() {
                self.known.insert(pid, None);
                continue;
            }
            self.known.insert(pid, Some(stat.start_ticks));
            if self.young.len() < MAX_YOUNG {
                self.young.insert(
                    pid,
                    Young {
                        start_ticks: stat.start_ticks,
                        comm: stat.comm.clone(),
                        polls_left: YOUNG_POLLS,
                    },
                );
            }
            facts.push(Fact::Exec(ExecFact {
                pid,
                ppid: Some(stat.ppid),
                start_ticks: Some(stat.start_ticks),
                time_ns: now_ns,
                details: None,
            }));
        }
        Ok(facts)
    }
}

impl Poller {
    /// Reports an exec of a young process, seen as a new `comm` under the
    /// same pid and start time.
    fn recheck_young(&mut self, fs: &HostFs, now_ns: u64, facts: &mut Vec<Fact>) {
        self.young.retain(|pid, young| {
            young.polls_left = young.polls_left.saturating_sub(1);
            let Ok(stat) = procfs::read_stat(fs, *pid) else {
                return false;
            };
            if stat.start_ticks != young.start_ticks {
                return false;
            }
            if stat.comm != young.comm {
                young.comm = stat.comm;
                facts.push(Fact::Exec(ExecFact {
                    pid: *pid,
                    ppid: Some(stat.ppid),
                    start_ticks: Some(stat.start_ticks),
                    time_ns: now_ns,
                    details: None,
                }));
            }
            young.polls_left > 0
        });
    }
}

/// Starts the polling thread. It first sends [`Fact::Existing`] for every
/// process, then a fact per change at each interval, until `stop` is set or
/// the receiver is gone.
pub fn start(
    fs: HostFs,
    interval: Duration,
    tx: SyncSender<Fact>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let mut poller = Poller::default();
    poller.baseline(&fs)?;
    std::thread::Builder::new()
        .name("procpoll".into())
        .spawn(move || {
            if send_existing(&fs, &tx).is_err() {
                return;
            }
            let mut next = Instant::now() + interval;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                next += interval;
                match poller.poll(&fs) {
                    Ok(facts) => {
                        for fact in facts {
                            if tx.send(fact).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list processes"),
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::procfs::fixture::{stat_line, write_process};

    #[test]
    fn poll_reports_new_and_gone() {
        let dir = tempfile::tempdir().unwrap();
        let fs = HostFs::new(dir.path());
        write_process(dir.path(), 1, 0, 1, "init", "/sbin/init", &[b"init"], 0, "");
        write_process(dir.path(), 10, 1, 50, "a", "/bin/a", &[b"a"], 0, "");
        let mut poller = Poller::default();
        poller.baseline(&fs).unwrap();
        assert!(poller.poll(&fs).unwrap().is_empty());

        std::fs::remove_dir_all(dir.path().join("proc/10")).unwrap();
        write_process(dir.path(), 11, 1, 60, "b", "/bin/b", &[b"b"], 0, "");
        let facts = poller.poll(&fs).unwrap();
        assert_eq!(facts.len(), 2);
        assert!(matches!(
            &facts[0],
            Fact::Exit(ExitFact {
                pid: 10,
                start_ticks: Some(50),
                ..
            })
        ));
        assert!(matches!(
            &facts[1],
            Fact::Exec(ExecFact {
                pid: 11,
                ppid: Some(1),
                start_ticks: Some(60),
                ..
            })
        ));
    }

    #[test]
    fn exec_of_young_process_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let fs = HostFs::new(dir.path());
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        let mut poller = Poller::default();
        poller.baseline(&fs).unwrap();
        write_process(
            dir.path(),
            20,
            1,
            70,
            "runc:[2:INIT]",
            "/usr/bin/runc",
            &[b"runc", b"init"],
            0,
            "",
        );
        assert_eq!(poller.poll(&fs).unwrap().len(), 1);
        assert!(poller.poll(&fs).unwrap().is_empty(), "no change, no fact");
        write_process(
            dir.path(),
            20,
            1,
            70,
            "sleep",
            "/bin/busybox",
            &[b"sleep", b"120"],
            0,
            "",
        );
        let facts = poller.poll(&fs).unwrap();
        assert!(
            matches!(
                &facts[..],
                [Fact::Exec(ExecFact {
                    pid: 20,
                    start_ticks: Some(70),
                    ..
                })]
            ),
            "{facts:?}"
        );
        for _ in 0..YOUNG_POLLS {
            poller.poll(&fs).unwrap();
        }
        write_process(
            dir.path(),
            20,
            1,
            70,
            "other",
            "/bin/other",
            &[b"other"],
            0,
            "",
        );
        assert!(
            poller.poll(&fs).unwrap().is_empty(),
            "an old process is no longer re-read"
        );
    }

    #[test]
    fn kernel_threads_are_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let fs = HostFs::new(dir.path());
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        let mut poller = Poller::default();
        poller.baseline(&fs).unwrap();
        std::fs::create_dir_all(dir.path().join("proc/3")).unwrap();
        std::fs::write(
            dir.path().join("proc/3/stat"),
            stat_line(3, "kworker/0:1", 'I', 2, 0x0020_0000, 1, 9),
        )
        .unwrap();
        assert!(poller.poll(&fs).unwrap().is_empty());
        std::fs::remove_dir_all(dir.path().join("proc/3")).unwrap();
        assert!(
            poller.poll(&fs).unwrap().is_empty(),
            "a kernel thread's exit is not reported either"
        );
    }

    #[test]
    fn real_child_is_seen_by_poll() {
        let fs = HostFs::new("/");
        let mut poller = Poller::default();
        poller.baseline(&fs).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        let facts = poller.poll(&fs).unwrap();
        assert!(
            facts
                .iter()
                .any(|f| matches!(f, Fact::Exec(e) if e.pid == pid)),
            "{facts:?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let facts = poller.poll(&fs).unwrap();
        assert!(
            facts
                .iter()
                .any(|f| matches!(f, Fact::Exit(e) if e.pid == pid)),
            "{facts:?}"
        );
    }
}
