//! `CODE_IDENTITY` records: the SHA-256 of each executable the first time a
//! file identity (device, inode, modification time, size) runs.
//!
//! Enrichment opens the executable on its own thread, which costs one
//! `open` and one `fstat`, and checks the identity against the ones already
//! queued. Reading and hashing happen on a worker thread behind a bounded
//! queue, so a large file never holds up the event path. A full queue drops
//! the job and counts it; the identity stays unmarked, so its next exec
//! tries again. Files over the size limit are reported with
//! `FILE_TOO_LARGE` and no `HASH`.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use picket_event::Record;

use crate::collect::ebpf::code_identity::{sha256_hex, FileIdentity};
use crate::enrich::Stats;

/// Largest file that is hashed; a larger one gets `FILE_TOO_LARGE`.
pub const DEFAULT_SIZE_LIMIT: u64 = 64 << 20;
/// Jobs waiting for the worker.
pub const QUEUE: usize = 1024;
/// File identities remembered; past it the oldest is forgotten (and hashed
/// again when it next runs).
pub const SEEN_CAPACITY: usize = 16_384;

/// Destination of the worker's records. It returns false once every output
/// is closed.
pub type RecordSink = Box<dyn FnMut(Record) -> bool + Send>;

/// An executable opened for hashing.
pub struct Executable {
    pub file: File,
    /// The path it was opened by, for error messages.
    pub path: PathBuf,
    /// A memfd: its size is reported as `MEMORY_SIZE`, not `FILE_SIZE`.
    pub in_memory: bool,
}

/// One file to hash, with its record filled in except for hash and size.
struct Job {
    executable: Executable,
    size: u64,
    record: Record,
}

/// Identities already queued, oldest forgotten first.
struct Seen {
    set: HashSet<FileIdentity>,
    order: VecDeque<FileIdentity>,
}

impl Seen {
    fn insert(&mut self, identity: FileIdentity) {
        if self.order.len() >= SEEN_CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.set.insert(identity);
        self.order.push_back(identity);
    }
}

/// The enrichment side of hashing: the queue and the identities seen.
pub struct CodeHasher {
    tx: Option<SyncSender<Job>>,
    seen: Seen,
    stats: Arc<Stats>,
    /// Jobs dropped since the last `DATA_DROPPED` record.
    unreported_drops: u64,
    worker: Option<JoinHandle<()>>,
}

/// Outcome of [`CodeHasher::submit`] for one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    Queued,
    AlreadySeen,
    /// The queue was full. The value is the count of drops not yet reported.
    Dropped(u64),
}

impl CodeHasher {
    /// Starts the worker, which sends each record to `sink`.
    pub fn spawn(sink: RecordSink, size_limit: u64, stats: Arc<Stats>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let worker_stats = stats.clone();
        let worker = std::thread::Builder::new()
            .name("code-hash".into())
            .spawn(move || run_worker(rx, sink, size_limit, &worker_stats))?;
        Ok(CodeHasher {
            tx: Some(tx),
            seen: Seen {
                set: HashSet::new(),
                order: VecDeque::new(),
            },
            stats,
            unreported_drops: 0,
            worker: Some(worker),
        })
    }

    /// Queues the file for hashing unless its identity was queued before.
    /// `record` is the `CODE_IDENTITY` record without hash and size.
    pub fn submit(&mut self, executable: Executable, record: Record) -> Submitted {
        let Ok(meta) = executable.file.metadata() else {
            self.stats.code_hash_failed.fetch_add(1, Ordering::Relaxed);
            return Submitted::AlreadySeen;
        };
        let identity = FileIdentity::of(&meta);
        if self.seen.set.contains(&identity) {
            return Submitted::AlreadySeen;
        }
        let job = Job {
            executable,
            size: identity.size,
            record,
        };
        let Some(tx) = &self.tx else {
            return Submitted::AlreadySeen;
        };
        match tx.try_send(job) {
            Ok(()) => {
                self.seen.insert(identity);
                Submitted::Queued
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.code_hash_dropped.fetch_add(1, Ordering::Relaxed);
                self.unreported_drops += 1;
                Submitted::Dropped(self.unreported_drops)
            }
        }
    }

    /// Takes the count of drops not yet reported.
    pub fn take_drops(&mut self) -> u64 {
        std::mem::take(&mut self.unreported_drops)
    }
}

impl Drop for CodeHasher {
    /// Lets the worker finish the queued jobs, then waits for it.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn run_worker(rx: Receiver<Job>, mut sink: RecordSink, size_limit: u64, stats: &Stats) {
    for job in rx {
        let Some(record) = finish(job, size_limit, stats) else {
            continue;
        };
        if !sink(record) {
            break;
        }
    }
}

/// Hashes one job's file into its record. Returns `None` when the file
/// cannot be read.
fn finish(mut job: Job, size_limit: u64, stats: &Stats) -> Option<Record> {
    let size_field = if job.executable.in_memory {
        "MEMORY_SIZE"
    } else {
        "FILE_SIZE"
    };
    job.record.set(size_field, job.size);
    if job.size > size_limit {
        job.record
            .set("FILE_TOO_LARGE", true)
            .set("HASH_SIZE_LIMIT", size_limit);
        return Some(job.record);
    }
    let executable = &mut job.executable;
    match sha256_hex(&mut executable.file, &executable.path) {
        Ok(hash) => {
            stats.code_hashes.fetch_add(1, Ordering::Relaxed);
            job.record.set("HASH", hash);
            Some(job.record)
        }
        Err(error) => {
            stats.code_hash_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, "hashing executable failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn hasher(limit: u64) -> (CodeHasher, Arc<Mutex<Vec<Record>>>) {
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let hasher = CodeHasher::spawn(
            Box::new(move |record| {
                sink.lock().unwrap().push(record);
                true
            }),
            limit,
            Arc::new(Stats::default()),
        )
        .unwrap();
        (hasher, records)
    }

    fn submit(hasher: &mut CodeHasher, path: &std::path::Path) -> Submitted {
        let executable = Executable {
            file: File::open(path).unwrap(),
            path: path.to_owned(),
            in_memory: false,
        };
        let record = Record::new(picket_event::types::CODE_IDENTITY, "h");
        hasher.submit(executable, record)
    }

    #[test]
    fn same_identity_is_hashed_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        std::fs::write(&path, b"abc").unwrap();
        let (mut hasher, records) = hasher(1 << 20);
        assert_eq!(submit(&mut hasher, &path), Submitted::Queued);
        assert_eq!(submit(&mut hasher, &path), Submitted::AlreadySeen);
        drop(hasher);
        let records = records.lock().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].event["FILE_SIZE"], 3);
        assert_eq!(
            records[0].event["HASH"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn file_over_limit_is_flagged_without_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        let (mut hasher, records) = hasher(10);
        assert_eq!(submit(&mut hasher, &path), Submitted::Queued);
        drop(hasher);
        let records = records.lock().unwrap();
        assert_eq!(records[0].event["FILE_TOO_LARGE"], true);
        assert_eq!(records[0].event["HASH_SIZE_LIMIT"], 10);
        assert!(records[0].event.get("HASH").is_none());
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (release_tx, release_rx) = sync_channel::<()>(0);
        let stats = Arc::new(Stats::default());
        // The sink blocks until released, so the worker holds one job and
        // the queue fills behind it.
        let mut hasher = CodeHasher::spawn(
            Box::new(move |_| release_rx.recv().is_ok()),
            1 << 20,
            stats.clone(),
        )
        .unwrap();
        let mut dropped = 0;
        for i in 0..QUEUE + 8 {
            let path = dir.path().join(i.to_string());
            std::fs::write(&path, i.to_string()).unwrap();
            if let Submitted::Dropped(_) = submit(&mut hasher, &path) {
                dropped += 1;
            }
        }
        assert!(dropped >= 6, "{dropped} dropped");
        assert_eq!(stats.code_hash_dropped.load(Ordering::Relaxed), dropped);
        assert_eq!(hasher.take_drops(), dropped);
        assert_eq!(hasher.take_drops(), 0);
        drop(release_tx);
        drop(hasher);
    }
}
