//! Process details read by a collector the moment it learns of an exec,
//! handed to enrichment by (pid, exec time).
//!
//! Short-lived processes are often gone by the time enrichment, which runs
//! behind a queue, gets to their exec. The netlink collector therefore reads
//! `/proc` itself right after each exec event and leaves the result here.
//! The exec time is part of the key, so two quick execs of one pid never
//! swap their details.

use std::collections::HashMap;
use std::sync::Mutex;

use super::procfs::ProcessInfo;

/// Default maximum of entries waiting for enrichment.
pub const DEFAULT_CAPACITY: usize = 65_536;

#[derive(Debug)]
pub struct Prefetch {
    entries: Mutex<HashMap<(u32, u64), ProcessInfo>>,
    capacity: usize,
}

impl Default for Prefetch {
    fn default() -> Self {
        Prefetch::new(DEFAULT_CAPACITY)
    }
}

impl Prefetch {
    pub fn new(capacity: usize) -> Self {
        Prefetch {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Stores the details of the exec of `pid` at `time_ns`. Returns false,
    /// storing nothing, when the buffer is full; enrichment then reads
    /// `/proc` itself.
    pub fn insert(&self, pid: u32, time_ns: u64, info: ProcessInfo) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            return false;
        }
        entries.insert((pid, time_ns), info);
        true
    }

    /// Removes and returns the details of the exec of `pid` at `time_ns`.
    pub fn take(&self, pid: u32, time_ns: u64) -> Option<ProcessInfo> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(pid, time_ns))
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_execs_of_one_pid_stay_apart() {
        let prefetch = Prefetch::new(8);
        let first = ProcessInfo {
            pid: 5,
            argv: vec![b"sh".to_vec()],
            ..ProcessInfo::default()
        };
        let second = ProcessInfo {
            pid: 5,
            argv: vec![b"ls".to_vec()],
            ..ProcessInfo::default()
        };
        assert!(prefetch.insert(5, 100, first));
        assert!(prefetch.insert(5, 200, second));
        assert_eq!(prefetch.take(5, 100).unwrap().argv, vec![b"sh".to_vec()]);
        assert_eq!(prefetch.take(5, 200).unwrap().argv, vec![b"ls".to_vec()]);
        assert!(prefetch.is_empty());
    }

    #[test]
    fn full_buffer_rejects() {
        let prefetch = Prefetch::new(1);
        assert!(prefetch.insert(1, 1, ProcessInfo::default()));
        assert!(!prefetch.insert(2, 2, ProcessInfo::default()));
        assert_eq!(prefetch.len(), 1);
    }
}
