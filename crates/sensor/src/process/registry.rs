//! Processes recorded by the enricher, shared with other threads by pid.
//!
//! A kernel network report names a pid. When that process has already
//! exited, `/proc` no longer gives its container. The enricher saw the
//! process start (with its cgroup read in the kernel in the eBPF tier), so it
//! records each process here, and keeps exited ones for a while for reports
//! that are still on their way.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Facts about a process that other threads look up.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownProcess {
    pub start_ticks: u64,
    /// `routing/this` of the process.
    pub atom: String,
    pub comm: String,
    /// The `CONTAINER` object, `None` for host processes.
    pub container: Option<Arc<Value>>,
    /// True when the container was read from the process's own cgroup (at
    /// exec or from `/proc`), false when inherited from its parent at fork.
    /// A child can change cgroup before it execs, as `runc exec` does.
    pub own_cgroup: bool,
}

/// How long an exited process stays known.
const EXITED_KEPT: Duration = Duration::from_secs(30);
/// Most processes kept. The enricher's table is bounded too; past this, the
/// oldest exited processes go first, then new ones are not recorded.
const MAX_PROCESSES: usize = 1 << 20;

#[derive(Default)]
struct Inner {
    by_pid: HashMap<u32, KnownProcess>,
    /// (when, pid, start) of exits, oldest first.
    exits: VecDeque<(Instant, u32, u64)>,
}

impl Inner {
    fn forget_exited(&mut self, older_than: Duration) {
        while let Some(&(at, pid, start)) = self.exits.front() {
            if at.elapsed() < older_than {
                break;
            }
            self.exits.pop_front();
            if self
                .by_pid
                .get(&pid)
                .is_some_and(|p| p.start_ticks == start)
            {
                self.by_pid.remove(&pid);
            }
        }
    }
}

/// Processes by pid; see the module documentation.
#[derive(Default)]
pub struct ProcessRegistry {
    inner: Mutex<Inner>,
}

impl ProcessRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a running process, replacing what a reused pid held.
    pub fn record(&self, pid: u32, process: KnownProcess) {
        let mut inner = self.lock();
        inner.forget_exited(EXITED_KEPT);
        if inner.by_pid.len() >= MAX_PROCESSES {
            inner.forget_exited(Duration::ZERO);
            if inner.by_pid.len() >= MAX_PROCESSES {
                return;
            }
        }
        inner.by_pid.insert(pid, process);
    }

    /// Notes that a process exited; it stays known for a while.
    pub fn exited(&self, pid: u32, start_ticks: u64) {
        let mut inner = self.lock();
        inner.exits.push_back((Instant::now(), pid, start_ticks));
        inner.forget_exited(EXITED_KEPT);
    }

    /// Returns the process `pid` that started at `start_ticks`, or any
    /// process with that pid when `start_ticks` is 0.
    pub fn get(&self, pid: u32, start_ticks: u64) -> Option<KnownProcess> {
        let inner = self.lock();
        let process = inner.by_pid.get(&pid)?;
        (start_ticks == 0 || process.start_ticks == start_ticks).then(|| process.clone())
    }

    /// Processes known now, exited ones included.
    pub fn len(&self) -> usize {
        self.lock().by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(start_ticks: u64) -> KnownProcess {
        KnownProcess {
            start_ticks,
            atom: format!("atom-{start_ticks}"),
            comm: "sh".into(),
            container: None,
            own_cgroup: true,
        }
    }

    #[test]
    fn lookup_checks_the_start_time() {
        let registry = ProcessRegistry::default();
        registry.record(10, known(500));
        assert_eq!(registry.get(10, 500).unwrap().atom, "atom-500");
        assert_eq!(registry.get(10, 0).unwrap().atom, "atom-500");
        assert!(
            registry.get(10, 501).is_none(),
            "a reused pid is another process"
        );
        assert!(registry.get(11, 0).is_none());
    }

    #[test]
    fn exited_process_is_kept_then_forgotten() {
        let registry = ProcessRegistry::default();
        registry.record(10, known(500));
        registry.exited(10, 500);
        assert!(registry.get(10, 500).is_some(), "kept after exit");

        let mut inner = registry.lock();
        inner.forget_exited(Duration::ZERO);
        drop(inner);
        assert!(registry.get(10, 500).is_none());
    }

    #[test]
    fn old_exit_keeps_reused_pid() {
        let registry = ProcessRegistry::default();
        registry.record(10, known(500));
        registry.exited(10, 500);
        registry.record(10, known(900));
        registry.lock().forget_exited(Duration::ZERO);
        assert_eq!(registry.get(10, 900).unwrap().atom, "atom-900");
    }
}
