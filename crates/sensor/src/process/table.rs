//! The table of live processes, keyed by (pid, start time).
//!
//! At most one live process has a given pid, so the table is indexed by pid and
//! every lookup checks the start time: an entry left behind by a process
//! whose exit was missed is replaced, never returned for the pid's new owner.
//! The table is bounded. When it is full the oldest entry is evicted and
//! counted, so memory stays flat under any churn.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use super::procfs::ProcessInfo;

/// (pid, start time in clock ticks since boot): one process for the life of
/// a boot.
pub type ProcessKey = (u32, u64);

/// Default maximum number of processes kept. The kernel's own default
/// `pid_max` on 64-bit hosts with many CPUs is 4,194,304, but hosts rarely
/// run more than a few tens of thousands of processes at once.
pub const DEFAULT_CAPACITY: usize = 65_536;

#[derive(Debug, Clone)]
pub struct Entry {
    pub info: Arc<ProcessInfo>,
    /// The parent as it was when this process was first seen.
    pub parent: Option<ProcessKey>,
    /// The `CONTAINER` object, `None` for host processes.
    pub container: Option<Arc<Value>>,
    /// True once a NEW_PROCESS or EXISTING_PROCESS event was sent for it.
    pub announced: bool,
    /// True when the process was gone before its details could be read.
    pub details_unavailable: bool,
}

impl Entry {
    pub fn key(&self) -> ProcessKey {
        (self.info.pid, self.info.start_ticks)
    }
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    sequence: u64,
}

#[derive(Debug)]
pub struct ProcessTable {
    by_pid: HashMap<u32, Slot>,
    /// Insertion order for eviction; may hold stale keys, which are skipped
    /// and compacted away.
    order: VecDeque<(u32, u64)>,
    capacity: usize,
    next_sequence: u64,
    evicted: u64,
    replaced: u64,
}

impl ProcessTable {
    pub fn new(capacity: usize) -> Self {
        ProcessTable {
            by_pid: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            next_sequence: 0,
            evicted: 0,
            replaced: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// Entries evicted because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Entries replaced by a new process with the same pid whose exit was
    /// not seen (missed exit or pid reuse between polls).
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// Length of the eviction queue, stale keys included (for memory tests).
    pub fn queue_len(&self) -> usize {
        self.order.len()
    }

    /// Inserts or replaces the entry for its pid.
    pub fn insert(&mut self, entry: Entry) {
        let (pid, start) = entry.key();
        if let Some(old) = self.by_pid.get(&pid) {
            if old.entry.info.start_ticks != start {
                self.replaced += 1;
            }
        } else if self.by_pid.len() >= self.capacity {
            self.evict_oldest();
        }

        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.by_pid.insert(pid, Slot { entry, sequence });
        self.order.push_back((pid, sequence));
        self.compact_if_needed();
    }

    /// Returns the entry of exactly this process, if present.
    pub fn get(&self, key: ProcessKey) -> Option<&Entry> {
        self.by_pid
            .get(&key.0)
            .map(|slot| &slot.entry)
            .filter(|entry| entry.info.start_ticks == key.1)
    }

    pub fn get_mut(&mut self, key: ProcessKey) -> Option<&mut Entry> {
        self.by_pid
            .get_mut(&key.0)
            .map(|slot| &mut slot.entry)
            .filter(|entry| entry.info.start_ticks == key.1)
    }

    /// Returns the entry that has `pid` now, whatever its start time.
    pub fn get_by_pid(&self, pid: u32) -> Option<&Entry> {
        self.by_pid.get(&pid).map(|slot| &slot.entry)
    }

    /// Removes the process. With `start_ticks` unknown, removes whatever
    /// entry has the pid.
    pub fn remove(&mut self, pid: u32, start_ticks: Option<u64>) -> Option<Entry> {
        let matches = match (self.by_pid.get(&pid), start_ticks) {
            (Some(slot), Some(start)) => slot.entry.info.start_ticks == start,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !matches {
            return None;
        }
        let slot = self.by_pid.remove(&pid)?;
        self.compact_if_needed();
        Some(slot.entry)
    }

    /// Returns the parent of a process with parent pid `ppid` that started at
    /// `child_start`. A parent cannot be younger than its child, so an entry
    /// for `ppid` that started later belongs to a process that reused the
    /// pid and is not returned.
    pub fn parent_of(&self, ppid: u32, child_start: u64) -> Option<&Entry> {
        self.get_by_pid(ppid)
            .filter(|parent| parent.info.start_ticks <= child_start)
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_pid.keys().copied()
    }

    fn evict_oldest(&mut self) {
        while let Some((pid, sequence)) = self.order.pop_front() {
            if self
                .by_pid
                .get(&pid)
                .is_some_and(|slot| slot.sequence == sequence)
            {
                self.by_pid.remove(&pid);
                self.evicted += 1;
                return;
            }
        }
    }

    /// Drops stale keys from the eviction queue once it is twice the table
    /// size, which keeps both structures within a constant factor of the
    /// live process count.
    fn compact_if_needed(&mut self) {
        if self.order.len() <= 2 * self.by_pid.len() + 64 {
            return;
        }
        let by_pid = &self.by_pid;
        self.order.retain(|(pid, sequence)| {
            by_pid
                .get(pid)
                .is_some_and(|slot| slot.sequence == *sequence)
        });
        if self.order.capacity() > 4 * self.order.len() + 256 {
            self.order.shrink_to(2 * self.order.len() + 64);
        }
        if self.by_pid.capacity() > 4 * self.by_pid.len() + 256 {
            self.by_pid.shrink_to(2 * self.by_pid.len() + 64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pid: u32, ppid: u32, start: u64) -> Entry {
        Entry {
            info: Arc::new(ProcessInfo {
                pid,
                ppid,
                start_ticks: start,
                ..ProcessInfo::default()
            }),
            parent: None,
            container: None,
            announced: true,
            details_unavailable: false,
        }
    }

    #[test]
    fn lookup_checks_start_time() {
        let mut table = ProcessTable::new(16);
        table.insert(entry(10, 1, 100));
        assert!(table.get((10, 100)).is_some());
        assert!(table.get((10, 101)).is_none());
    }

    #[test]
    fn reused_pid_replaces_entry() {
        let mut table = ProcessTable::new(16);
        table.insert(entry(10, 1, 100));
        table.insert(entry(10, 1, 500));
        assert_eq!(table.len(), 1);
        assert_eq!(table.replaced(), 1);
        assert!(table.get((10, 100)).is_none());
        assert!(table.get((10, 500)).is_some());
        assert!(table.remove(10, Some(100)).is_none());
        assert!(table.remove(10, Some(500)).is_some());
    }

    #[test]
    fn parent_younger_than_child_is_not_parent() {
        let mut table = ProcessTable::new(16);
        // The real parent (pid 20, start 100) exited; pid 20 was reused by a
        // process that started at 900, after the child (start 300).
        table.insert(entry(20, 1, 900));
        assert!(table.parent_of(20, 300).is_none());
        table.insert(entry(20, 1, 100));
        assert_eq!(table.parent_of(20, 300).unwrap().info.start_ticks, 100);
    }

    #[test]
    fn full_table_evicts_oldest() {
        let mut table = ProcessTable::new(3);
        for pid in 1..=4 {
            table.insert(entry(pid, 0, pid as u64));
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.evicted(), 1);
        assert!(table.get((1, 1)).is_none());
        assert!(table.get((4, 4)).is_some());
    }

    #[test]
    fn memory_stays_flat_under_churn() {
        let mut table = ProcessTable::new(1024);
        for pid in 1..=100u32 {
            table.insert(entry(pid, 1, pid as u64));
        }
        let mut max_queue = 0;
        let mut max_map_capacity = 0;
        // 500,000 short-lived processes, each exec'd and exited, pids wrapping.
        for n in 0..500_000u64 {
            let pid = 1000 + (n % 30_000) as u32;
            table.insert(entry(pid, 1, 10_000 + n));
            table.remove(pid, Some(10_000 + n));
            max_queue = max_queue.max(table.queue_len());
            max_map_capacity = max_map_capacity.max(table.by_pid.capacity());
        }
        assert_eq!(table.len(), 100);
        assert!(
            max_queue <= 2 * 101 + 64 + 1,
            "eviction queue grew to {max_queue}"
        );
        assert!(
            max_map_capacity <= 1024,
            "map capacity grew to {max_map_capacity}"
        );
        assert_eq!(table.evicted(), 0);
    }

    #[test]
    fn churn_without_exits_stays_bounded() {
        let mut table = ProcessTable::new(500);
        for n in 0..100_000u64 {
            table.insert(entry((n % 60_000) as u32 + 1, 1, n));
        }
        assert_eq!(table.len(), 500);
        assert!(table.queue_len() <= 2 * 500 + 64 + 1);
        assert!(table.by_pid.capacity() <= 2048);
    }
}
