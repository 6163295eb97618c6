//! Disk spool for outbound batches that the server has not acknowledged.
//!
//! The spool is a directory of append-only segment files
//! (`seg-<number>.pks`, numbered in write order) plus `meta.json`. Each
//! entry in a segment is one batch:
//!
//! | bytes | content |
//! | --- | --- |
//! | 4 | magic `PKS1` |
//! | 4 | body length, little-endian u32 |
//! | 4 | CRC-32 (IEEE) of the body, little-endian u32 |
//! | body | seq (u64 LE), record count (u32 LE), then per record its length (u32 LE) and bytes |
//!
//! A segment is fsynced when the writer rotates away from it and when the
//! spool is closed. An append that was not yet fsynced survives a crash of
//! the sensor process (it is in the page cache) but not a crash of the host.
//!
//! The spool is bounded by the total size of its segment files. To make room
//! it deletes the oldest segment and counts the unacknowledged batches in it
//! as dropped. Entries that fail their length or checksum test are skipped
//! and counted, and reading resumes at the next entry magic.
//!
//! Sequence numbers are allocated here so that they keep increasing across
//! restarts. `meta.json` stores a reserved upper bound that is fsynced before
//! any number below it is handed out, so after a crash the sensor continues
//! above every number it may have used. The first number of a run is also at
//! least the current time in microseconds since the Unix epoch. A sensor that
//! lost its whole state directory gets its old SID back from the server, and
//! this floor keeps its new numbers above those of its earlier runs unless the
//! host clock went backwards. Numbers therefore have gaps between runs.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default bound on the total size of the segment files.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

const MAGIC: [u8; 4] = *b"PKS1";
const HEADER_LEN: usize = 12;
/// Seq (u64) and record count (u32) at the start of every body.
const BODY_FIXED_LEN: usize = 12;
const META_FILE: &str = "meta.json";
const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".pks";
/// How many sequence numbers one fsynced reservation covers.
const SEQ_RESERVATION: u64 = 4096;

/// Spool location and bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Directory of the segment files; created with mode 0700 if missing.
    pub dir: PathBuf,
    /// Bound on the total size of all segment files, in bytes.
    pub max_bytes: u64,
    /// Size in bytes after which the writer starts a new segment.
    pub segment_bytes: u64,
}

impl SpoolConfig {
    /// Builds a config for `dir` bounded by `max_bytes`, with segments of a
    /// sixteenth of the bound, at least 4 KiB and at most 8 MiB unless that
    /// would make more than 64 segments. Every segment keeps a file
    /// descriptor open, so the cap keeps a large spool within the usual
    /// limit of 1,024 descriptors.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        let largest = (8 * 1024 * 1024).max(max_bytes / 64);
        let segment_bytes = (max_bytes / 16).clamp(4 * 1024, largest);
        SpoolConfig {
            dir: dir.into(),
            max_bytes,
            segment_bytes,
        }
    }
}

/// One batch as stored in the spool and sent to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledBatch {
    pub seq: u64,
    /// JSON records, one per entry, without trailing newlines.
    pub records: Vec<Vec<u8>>,
}

impl SpooledBatch {
    /// Total size of the records, without framing.
    pub fn payload_bytes(&self) -> usize {
        self.records.iter().map(Vec::len).sum()
    }

    fn encode_entry(&self) -> Vec<u8> {
        let body_len = BODY_FIXED_LEN + self.records.iter().map(|r| 4 + r.len()).sum::<usize>();
        let mut entry = Vec::with_capacity(HEADER_LEN + body_len);
        entry.extend_from_slice(&MAGIC);
        entry.extend_from_slice(&(body_len as u32).to_le_bytes());
        entry.extend_from_slice(&[0; 4]);
        entry.extend_from_slice(&self.seq.to_le_bytes());
        entry.extend_from_slice(&(self.records.len() as u32).to_le_bytes());
        for record in &self.records {
            entry.extend_from_slice(&(record.len() as u32).to_le_bytes());
            entry.extend_from_slice(record);
        }
        let crc = crc32fast::hash(&entry[HEADER_LEN..]);
        entry[8..12].copy_from_slice(&crc.to_le_bytes());
        entry
    }
}

/// Cause of lost batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The spool reached its size bound and deleted its oldest segment.
    SpoolFull,
    /// An entry failed its length or checksum test.
    SpoolCorrupt,
    /// Writing to the spool failed, for example because the disk is full.
    SpoolWriteFailed,
    /// One record was larger than a batch may be.
    RecordTooLarge,
}

impl DropReason {
    /// Returns the `REASON` value of the `DATA_DROPPED` event.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SpoolFull => "spool_full",
            DropReason::SpoolCorrupt => "spool_corrupt",
            DropReason::SpoolWriteFailed => "spool_write_failed",
            DropReason::RecordTooLarge => "record_too_large",
        }
    }
}

/// Counts of lost data. For corrupt entries the event count is unknown,
/// because the record count inside a corrupt entry cannot be trusted, so
/// only batches and bytes are counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DropCount {
    pub batches: u64,
    pub events: u64,
    pub bytes: u64,
}

impl DropCount {
    fn add(&mut self, other: DropCount) {
        self.batches += other.batches;
        self.events += other.events;
        self.bytes += other.bytes;
    }

    pub fn is_zero(&self) -> bool {
        *self == DropCount::default()
    }
}

/// Summary of the spool contents found by [`Spool::open`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Valid, unacknowledged batches that will be resent.
    pub batches: u64,
    pub events: u64,
    /// Corrupt or truncated regions skipped; also queued as drops.
    pub corrupt: DropCount,
    /// The first sequence number this run will use.
    pub next_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("failed to create spool directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to {op} spool file {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    /// Every sequence number below this value may have been used.
    next_seq_reserved: u64,
    /// The highest sequence number the server acknowledged.
    acked_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct EntryIndex {
    seq: u64,
    offset: u64,
    len: u32,
    events: u32,
    payload_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    number: u64,
    path: PathBuf,
    file: File,
    bytes: u64,
    entries: Vec<EntryIndex>,
}

impl Segment {
    fn last_seq(&self) -> Option<u64> {
        self.entries.last().map(|e| e.seq)
    }

    /// Unacknowledged content of this segment, as counted when it is dropped.
    fn unacked_count(&self, acked: u64) -> DropCount {
        let mut count = DropCount::default();
        for entry in self.entries.iter().filter(|e| e.seq > acked) {
            count.batches += 1;
            count.events += u64::from(entry.events);
            count.bytes += entry.payload_bytes;
        }
        count
    }
}

/// The on-disk spool. Not thread-safe: one transport task owns it.
#[derive(Debug)]
pub struct Spool {
    config: SpoolConfig,
    meta_path: PathBuf,
    /// Oldest first. The last one is the segment being written, if
    /// `writable_last` is set.
    segments: VecDeque<Segment>,
    writable_last: bool,
    next_segment_number: u64,
    total_bytes: u64,
    next_seq: u64,
    seq_reserved: u64,
    acked: u64,
    drops: Vec<(DropReason, DropCount)>,
}

impl Spool {
    /// Opens the spool in `config.dir`, creating it if needed, and indexes
    /// every valid entry. Corrupt entries are skipped and queued as drops.
    pub fn open(config: SpoolConfig) -> Result<(Spool, OpenReport), SpoolError> {
        create_private_dir(&config.dir)?;
        let meta_path = config.dir.join(META_FILE);
        let meta = read_meta(&meta_path)?;

        let mut spool = Spool {
            meta_path,
            segments: VecDeque::new(),
            writable_last: false,
            next_segment_number: 0,
            total_bytes: 0,
            next_seq: 1,
            seq_reserved: 0,
            acked: meta.acked_seq,
            drops: Vec::new(),
            config,
        };
        let mut report = OpenReport::default();
        spool.load_segments(&mut report)?;

        let after_spool = spool.last_seq().map_or(1, |s| s + 1);
        spool.next_seq = meta.next_seq_reserved.max(after_spool).max(now_micros());
        spool.seq_reserved = spool.next_seq;
        spool.reserve_seqs()?;
        report.next_seq = spool.next_seq;
        if !report.corrupt.is_zero() {
            spool.record_drop(DropReason::SpoolCorrupt, report.corrupt);
        }
        Ok((spool, report))
    }

    fn load_segments(&mut self, report: &mut OpenReport) -> Result<(), SpoolError> {
        let mut numbered = list_segments(&self.config.dir)?;
        numbered.sort_unstable_by_key(|(number, _)| *number);
        let mut last_seq = self.acked;

        for (number, path) in numbered {
            self.next_segment_number = self.next_segment_number.max(number + 1);
            let buf = read_file(&path)?;
            let (entries, corrupt) = parse_segment(&buf, &mut last_seq);
            report.corrupt.add(corrupt);
            let keep: Vec<EntryIndex> = entries;
            if keep.iter().all(|e| e.seq <= self.acked) {
                remove_file(&path)?;
                continue;
            }
            for entry in keep.iter().filter(|e| e.seq > self.acked) {
                report.batches += 1;
                report.events += u64::from(entry.events);
            }
            let file = File::open(&path).map_err(|source| SpoolError::Io {
                op: "open",
                path: path.clone(),
                source,
            })?;
            self.total_bytes += buf.len() as u64;
            self.segments.push_back(Segment {
                number,
                path,
                file,
                bytes: buf.len() as u64,
                entries: keep,
            });
        }
        if !report.corrupt.is_zero() {
            tracing::warn!(
                dir = %self.config.dir.display(),
                regions = report.corrupt.batches,
                bytes = report.corrupt.bytes,
                "skipped corrupt spool entries"
            );
        }
        Ok(())
    }

    /// Allocates the next sequence number, persisting a new reservation
    /// first when the current one is used up.
    pub fn next_seq(&mut self) -> Result<u64, SpoolError> {
        if self.next_seq >= self.seq_reserved {
            self.reserve_seqs()?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Makes every later sequence number greater than `floor`, the highest
    /// number the server has stored for this SID.
    pub fn raise_seq_floor(&mut self, floor: u64) -> Result<(), SpoolError> {
        if floor < self.next_seq {
            return Ok(());
        }
        self.next_seq = floor + 1;
        self.reserve_seqs()
    }

    fn reserve_seqs(&mut self) -> Result<(), SpoolError> {
        let reserved = self.next_seq + SEQ_RESERVATION;
        write_meta(
            &self.meta_path,
            &Meta {
                next_seq_reserved: reserved,
                acked_seq: self.acked,
            },
        )?;
        self.seq_reserved = reserved;
        Ok(())
    }

    /// Appends one batch, deleting the oldest segments first if the bound
    /// requires it. A batch larger than the whole bound is dropped and
    /// counted instead of stored.
    pub fn append(&mut self, batch: &SpooledBatch) -> Result<(), SpoolError> {
        let entry = batch.encode_entry();
        let len = entry.len() as u64;
        if len > self.config.max_bytes {
            self.record_drop(DropReason::SpoolFull, count_of(batch));
            return Ok(());
        }
        while self.total_bytes + len > self.config.max_bytes && !self.segments.is_empty() {
            self.drop_oldest_segment()?;
        }

        let rotate = match self.segments.back() {
            Some(last) if self.writable_last => last.bytes + len > self.config.segment_bytes,
            _ => true,
        };
        if rotate {
            self.start_segment()?;
        }

        let segment = self
            .segments
            .back_mut()
            .expect("start_segment pushed a segment");
        let offset = segment.bytes;
        if let Err(source) = (&segment.file).write_all(&entry) {
            // The file may now end in a partial entry, so the next append
            // starts a new segment. Reopening skips the partial entry by its
            // checksum.
            let path = segment.path.clone();
            self.writable_last = false;
            self.record_drop(DropReason::SpoolWriteFailed, count_of(batch));
            return Err(SpoolError::Io {
                op: "write",
                path,
                source,
            });
        }
        segment.bytes += len;
        segment.entries.push(EntryIndex {
            seq: batch.seq,
            offset,
            len: entry.len() as u32,
            events: batch.records.len() as u32,
            payload_bytes: batch.payload_bytes() as u64,
        });
        self.total_bytes += len;
        Ok(())
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        self.sync_last()?;
        let number = self.next_segment_number;
        self.next_segment_number += 1;
        let path = self
            .config
            .dir
            .join(format!("{SEGMENT_PREFIX}{number:016}{SEGMENT_SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| SpoolError::Io {
                op: "create",
                path: path.clone(),
                source,
            })?;
        sync_dir(&self.config.dir)?;
        self.segments.push_back(Segment {
            number,
            path,
            file,
            bytes: 0,
            entries: Vec::new(),
        });
        self.writable_last = true;
        Ok(())
    }

    /// Fsyncs the segment being written.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.sync_last()
    }

    fn sync_last(&mut self) -> Result<(), SpoolError> {
        if !self.writable_last {
            return Ok(());
        }
        if let Some(last) = self.segments.back() {
            last.file.sync_data().map_err(|source| SpoolError::Io {
                op: "fsync",
                path: last.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn drop_oldest_segment(&mut self) -> Result<(), SpoolError> {
        let Some(segment) = self.segments.pop_front() else {
            return Ok(());
        };
        if self.segments.is_empty() {
            self.writable_last = false;
        }
        self.total_bytes -= segment.bytes;
        let lost = segment.unacked_count(self.acked);
        if !lost.is_zero() {
            tracing::error!(
                segment = segment.number,
                batches = lost.batches,
                events = lost.events,
                bytes = lost.bytes,
                max_bytes = self.config.max_bytes,
                "spool full, dropped oldest segment"
            );
            self.record_drop(DropReason::SpoolFull, lost);
        }
        remove_file(&segment.path)
    }

    /// Returns the first stored batch with a sequence number above `seq`.
    /// Entries that fail their checksum now are removed and counted.
    pub fn first_after(&mut self, seq: u64) -> Option<SpooledBatch> {
        loop {
            let (segment_pos, entry_pos) = self.locate_after(seq)?;
            let segment = &self.segments[segment_pos];
            let entry = segment.entries[entry_pos];
            let mut buf = vec![0; entry.len as usize];
            let parsed = segment
                .file
                .read_exact_at(&mut buf, entry.offset)
                .ok()
                .and_then(|()| parse_entry(&buf).ok())
                .filter(|(batch, _)| batch.seq == entry.seq);
            if let Some((batch, _)) = parsed {
                return Some(batch);
            }

            tracing::warn!(
                path = %segment.path.display(),
                seq = entry.seq,
                "spool entry changed on disk since it was written, skipped"
            );
            let count = DropCount {
                batches: 1,
                events: 0,
                bytes: u64::from(entry.len),
            };
            self.segments[segment_pos].entries.remove(entry_pos);
            self.record_drop(DropReason::SpoolCorrupt, count);
        }
    }

    fn locate_after(&self, seq: u64) -> Option<(usize, usize)> {
        for (segment_pos, segment) in self.segments.iter().enumerate() {
            if segment.last_seq().is_none_or(|last| last <= seq) {
                continue;
            }
            let entry_pos = segment.entries.partition_point(|e| e.seq <= seq);
            return Some((segment_pos, entry_pos));
        }
        None
    }

    /// Records that the server stored every batch up to `seq` and deletes
    /// the segments that hold nothing newer.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        let mut removed = false;
        while let Some(first) = self.segments.front() {
            let done = first.last_seq().is_none_or(|last| last <= seq);
            let is_writer = self.writable_last && self.segments.len() == 1;
            if !done || (is_writer && first.entries.is_empty()) {
                break;
            }
            let segment = self.segments.pop_front().expect("front exists");
            if self.segments.is_empty() {
                self.writable_last = false;
            }
            self.total_bytes -= segment.bytes;
            remove_file(&segment.path)?;
            removed = true;
        }
        if removed {
            write_meta(
                &self.meta_path,
                &Meta {
                    next_seq_reserved: self.seq_reserved,
                    acked_seq: self.acked,
                },
            )?;
        }
        Ok(())
    }

    /// Fsyncs the open segment and stores the next unused sequence number in
    /// place of the reservation.
    pub fn close(mut self) -> Result<(), SpoolError> {
        self.sync_last()?;
        write_meta(
            &self.meta_path,
            &Meta {
                next_seq_reserved: self.next_seq,
                acked_seq: self.acked,
            },
        )
    }

    /// Takes the drops counted since the last call, one entry per reason.
    pub fn take_drops(&mut self) -> Vec<(DropReason, DropCount)> {
        std::mem::take(&mut self.drops)
    }

    /// Returns true if drops were counted since the last [`Spool::take_drops`].
    pub fn has_drops(&self) -> bool {
        !self.drops.is_empty()
    }

    fn record_drop(&mut self, reason: DropReason, count: DropCount) {
        match self.drops.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, total)) => total.add(count),
            None => self.drops.push((reason, count)),
        }
    }

    /// Number of stored batches not yet acknowledged.
    pub fn pending_batches(&self) -> usize {
        let acked = self.acked;
        self.segments
            .iter()
            .map(|s| s.entries.iter().filter(|e| e.seq > acked).count())
            .sum()
    }

    /// Returns true if a stored batch has a sequence number above `seq`.
    pub fn has_after(&self, seq: u64) -> bool {
        self.last_seq().is_some_and(|last| last > seq)
    }

    /// Total size of the segment files in bytes.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(Segment::last_seq)
    }

    pub fn acked_seq(&self) -> u64 {
        self.acked
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

fn count_of(batch: &SpooledBatch) -> DropCount {
    DropCount {
        batches: 1,
        events: batch.records.len() as u64,
        bytes: batch.payload_bytes() as u64,
    }
}

/// Indexes the valid entries of one segment file. Entries whose sequence
/// number does not increase past `last_seq` are treated as corrupt, because
/// the writer only ever appends increasing numbers.
fn parse_segment(buf: &[u8], last_seq: &mut u64) -> (Vec<EntryIndex>, DropCount) {
    let mut entries = Vec::new();
    let mut corrupt = DropCount::default();
    let mut pos = 0;

    while pos < buf.len() {
        match parse_entry(&buf[pos..]) {
            Ok((batch, len)) if batch.seq > *last_seq => {
                *last_seq = batch.seq;
                entries.push(EntryIndex {
                    seq: batch.seq,
                    offset: pos as u64,
                    len: len as u32,
                    events: batch.records.len() as u32,
                    payload_bytes: batch.payload_bytes() as u64,
                });
                pos += len;
            }
            Ok((_, len)) => {
                corrupt.add(DropCount {
                    batches: 1,
                    events: 0,
                    bytes: len as u64,
                });
                pos += len;
            }
            Err(()) => {
                let next = find_magic(buf, pos + 1).unwrap_or(buf.len());
                corrupt.add(DropCount {
                    batches: 1,
                    events: 0,
                    bytes: (next - pos) as u64,
                });
                pos = next;
            }
        }
    }
    (entries, corrupt)
}

fn find_magic(buf: &[u8], from: usize) -> Option<usize> {
    if from >= buf.len() {
        return None;
    }
    buf[from..]
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
        .map(|p| p + from)
}

/// Decodes the entry at the start of `buf`, returning it and its length.
fn parse_entry(buf: &[u8]) -> Result<(SpooledBatch, usize), ()> {
    if buf.len() < HEADER_LEN || buf[..4] != MAGIC {
        return Err(());
    }
    let body_len = read_u32(buf, 4)? as usize;
    let crc = read_u32(buf, 8)?;
    let body = buf
        .get(HEADER_LEN..HEADER_LEN.checked_add(body_len).ok_or(())?)
        .ok_or(())?;
    if body.len() < BODY_FIXED_LEN || crc32fast::hash(body) != crc {
        return Err(());
    }

    let seq = u64::from_le_bytes(body[..8].try_into().map_err(|_| ())?);
    let count = read_u32(body, 8)? as usize;
    let mut records = Vec::with_capacity(count.min(body.len() / 4));
    let mut pos = BODY_FIXED_LEN;
    for _ in 0..count {
        let len = read_u32(body, pos)? as usize;
        pos += 4;
        let record = body.get(pos..pos.checked_add(len).ok_or(())?).ok_or(())?;
        records.push(record.to_vec());
        pos += len;
    }
    if pos != body.len() {
        return Err(());
    }
    Ok((SpooledBatch { seq, records }, HEADER_LEN + body_len))
}

fn read_u32(buf: &[u8], at: usize) -> Result<u32, ()> {
    let bytes = buf.get(at..at + 4).ok_or(())?;
    Ok(u32::from_le_bytes(bytes.try_into().map_err(|_| ())?))
}

fn create_private_dir(dir: &Path) -> Result<(), SpoolError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SpoolError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let entries = fs::read_dir(dir).map_err(|source| SpoolError::Io {
        op: "list",
        path: dir.to_owned(),
        source,
    })?;
    let mut segments = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SEGMENT_PREFIX))
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((number, entry.path()));
    }
    Ok(segments)
}

fn read_file(path: &Path) -> Result<Vec<u8>, SpoolError> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|source| SpoolError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        })?;
    Ok(buf)
}

fn remove_file(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SpoolError::Io {
            op: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SpoolError::Io {
            op: "fsync",
            path: dir.to_owned(),
            source,
        })
}

/// Reads the metadata file. An unreadable one is replaced by defaults,
/// because the clock floor of the first sequence number still keeps new
/// numbers above the old ones.
fn read_meta(path: &Path) -> Result<Meta, SpoolError> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            tracing::warn!(path = %path.display(), %error, "invalid spool metadata, ignored");
            Meta::default()
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Meta::default()),
        Err(source) => Err(SpoolError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Replaces the metadata file atomically: write a temporary file, fsync it,
/// rename it over the old one, fsync the directory.
fn write_meta(path: &Path, meta: &Meta) -> Result<(), SpoolError> {
    let tmp = path.with_extension("json.tmp");
    let io = |op, source| SpoolError::Io {
        op,
        path: tmp.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    let json = serde_json::to_vec(meta).expect("meta is two integers");
    file.write_all(&json).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("fsync", e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(spool: &mut Spool, events: usize, tag: &str) -> SpooledBatch {
        let seq = spool.next_seq().unwrap();
        let records = (0..events)
            .map(|i| format!(r#"{{"n":"{tag}-{i}"}}"#).into_bytes())
            .collect();
        SpooledBatch { seq, records }
    }

    fn drain(spool: &mut Spool) -> Vec<SpooledBatch> {
        let mut out = Vec::new();
        let mut after = spool.acked_seq();
        while let Some(b) = spool.first_after(after) {
            after = b.seq;
            out.push(b);
        }
        out
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        files.sort();
        files
    }

    #[test]
    fn segment_size_scales_with_bound() {
        assert_eq!(SpoolConfig::new("/s", 64 << 20).segment_bytes, 4 << 20);
        assert_eq!(SpoolConfig::new("/s", 16 << 10).segment_bytes, 4 << 10);
        assert_eq!(SpoolConfig::new("/s", 10 << 30).segment_bytes, 160 << 20);
    }

    #[test]
    fn reopen_returns_every_batch_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig::new(dir.path(), 1 << 20);
        let (mut spool, report) = Spool::open(config.clone()).unwrap();
        assert_eq!(report.batches, 0);
        let written: Vec<SpooledBatch> = (0..50)
            .map(|i| batch(&mut spool, 3, &i.to_string()))
            .collect();
        for b in &written {
            spool.append(b).unwrap();
        }
        assert_eq!(drain(&mut spool), written);
        spool.close().unwrap();

        let (mut spool, report) = Spool::open(config).unwrap();
        assert_eq!(report.batches, 50);
        assert_eq!(report.events, 150);
        assert!(report.corrupt.is_zero());
        assert!(report.next_seq > written.last().unwrap().seq);
        assert_eq!(drain(&mut spool), written);
        assert!(spool.take_drops().is_empty());
    }

    #[test]
    fn seq_increases_after_crash_without_close() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig::new(dir.path(), 1 << 20);
        let (mut spool, _) = Spool::open(config.clone()).unwrap();
        let mut last = 0;
        for _ in 0..10 {
            last = spool.next_seq().unwrap();
        }
        // Dropping without close() is what kill -9 leaves behind.
        drop(spool);
        let (mut spool, _) = Spool::open(config.clone()).unwrap();
        assert!(spool.next_seq().unwrap() > last);

        fs::remove_file(dir.path().join(META_FILE)).unwrap();
        let (mut spool, _) = Spool::open(config).unwrap();
        assert!(
            spool.next_seq().unwrap() > last,
            "clock floor keeps seq above a lost meta file"
        );
    }

    #[test]
    fn ack_deletes_delivered_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SpoolConfig::new(dir.path(), 1 << 20);
        config.segment_bytes = 512;
        let (mut spool, _) = Spool::open(config.clone()).unwrap();
        let written: Vec<SpooledBatch> = (0..40)
            .map(|i| batch(&mut spool, 4, &i.to_string()))
            .collect();
        for b in &written {
            spool.append(b).unwrap();
        }
        let files_before = segment_files(dir.path()).len();
        assert!(files_before > 4, "small segments rotate: {files_before}");

        spool.ack(written[29].seq).unwrap();
        assert!(segment_files(dir.path()).len() < files_before);
        assert_eq!(spool.pending_batches(), 10);
        assert_eq!(drain(&mut spool), written[30..].to_vec());
        drop(spool);

        let (mut spool, report) = Spool::open(config).unwrap();
        assert_eq!(report.batches, 10);
        assert_eq!(drain(&mut spool), written[30..].to_vec());

        spool.ack(written[39].seq).unwrap();
        assert_eq!(spool.pending_batches(), 0);
        assert!(segment_files(dir.path()).len() <= 1);
    }

    #[test]
    fn bound_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SpoolConfig::new(dir.path(), 8 * 1024);
        config.segment_bytes = 2 * 1024;
        let (mut spool, _) = Spool::open(config).unwrap();
        let written: Vec<SpooledBatch> = (0..100)
            .map(|i| batch(&mut spool, 5, &format!("{i:03}")))
            .collect();
        for b in &written {
            spool.append(b).unwrap();
            assert!(spool.bytes() <= 8 * 1024);
        }

        let kept = drain(&mut spool);
        assert!(!kept.is_empty());
        assert_eq!(
            kept.last().unwrap(),
            written.last().unwrap(),
            "newest batch is kept"
        );
        let first_kept = written.iter().position(|b| b.seq == kept[0].seq).unwrap();
        assert_eq!(
            kept,
            written[first_kept..].to_vec(),
            "only the oldest were dropped"
        );

        let drops = spool.take_drops();
        assert_eq!(drops.len(), 1);
        let (reason, count) = drops[0];
        assert_eq!(reason, DropReason::SpoolFull);
        assert_eq!(count.batches, first_kept as u64);
        assert_eq!(count.events, 5 * first_kept as u64);
        let lost_bytes: usize = written[..first_kept]
            .iter()
            .map(SpooledBatch::payload_bytes)
            .sum();
        assert_eq!(count.bytes, lost_bytes as u64);
        assert!(spool.take_drops().is_empty(), "drops are taken once");
    }

    #[test]
    fn acked_batches_are_not_counted_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SpoolConfig::new(dir.path(), 4 * 1024);
        config.segment_bytes = 4 * 1024;
        let (mut spool, _) = Spool::open(config).unwrap();
        let first: Vec<SpooledBatch> = (0..10)
            .map(|i| batch(&mut spool, 2, &i.to_string()))
            .collect();
        for b in &first {
            spool.append(b).unwrap();
        }
        spool.ack(first[9].seq).unwrap();
        for i in 0..40 {
            let b = batch(&mut spool, 2, &format!("later-{i}"));
            spool.append(&b).unwrap();
        }
        for (reason, count) in spool.take_drops() {
            assert_eq!(reason, DropReason::SpoolFull);
            assert!(
                count.batches < 40,
                "acked batches counted as lost: {count:?}"
            );
        }
    }

    #[test]
    fn corrupt_entry_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig::new(dir.path(), 1 << 20);
        let (mut spool, _) = Spool::open(config.clone()).unwrap();
        let written: Vec<SpooledBatch> = (0..5)
            .map(|i| batch(&mut spool, 2, &i.to_string()))
            .collect();
        for b in &written {
            spool.append(b).unwrap();
        }
        spool.close().unwrap();

        let file = &segment_files(dir.path())[0];
        let mut bytes = fs::read(file).unwrap();
        let entry_len = written[0].encode_entry().len();
        // Flip one payload byte of the third entry.
        bytes[2 * entry_len + HEADER_LEN + BODY_FIXED_LEN + 6] ^= 0xff;
        fs::write(file, &bytes).unwrap();

        let (mut spool, report) = Spool::open(config).unwrap();
        assert_eq!(report.batches, 4);
        assert_eq!(report.corrupt.batches, 1);
        assert_eq!(report.corrupt.bytes, entry_len as u64);
        let kept = drain(&mut spool);
        let expected: Vec<SpooledBatch> = written
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, b)| b.clone())
            .collect();
        assert_eq!(kept, expected);
        assert_eq!(
            spool.take_drops(),
            vec![(DropReason::SpoolCorrupt, report.corrupt)]
        );
    }

    #[test]
    fn truncated_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig::new(dir.path(), 1 << 20);
        let (mut spool, _) = Spool::open(config.clone()).unwrap();
        let written: Vec<SpooledBatch> = (0..3)
            .map(|i| batch(&mut spool, 2, &i.to_string()))
            .collect();
        for b in &written {
            spool.append(b).unwrap();
        }
        drop(spool);
        let file = &segment_files(dir.path())[0];
        let len = fs::metadata(file).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(len - 5)
            .unwrap();

        let (mut spool, report) = Spool::open(config).unwrap();
        assert_eq!(report.batches, 2);
        assert_eq!(report.corrupt.batches, 1);
        assert_eq!(drain(&mut spool), written[..2].to_vec());

        // Appending after a truncated segment goes to a fresh segment.
        let b = batch(&mut spool, 1, "after");
        spool.append(&b).unwrap();
        assert_eq!(drain(&mut spool).last().unwrap(), &b);
    }

    #[test]
    fn garbage_segment_does_not_fail_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("seg-0000000000000007.pks"),
            vec![0x5a; 5000],
        )
        .unwrap();
        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&u32::MAX.to_le_bytes());
        garbage.extend_from_slice(&[1, 2, 3]);
        fs::write(dir.path().join("seg-0000000000000008.pks"), garbage).unwrap();
        fs::write(dir.path().join(META_FILE), b"{not json").unwrap();

        let (mut spool, report) = Spool::open(SpoolConfig::new(dir.path(), 1 << 20)).unwrap();
        assert_eq!(report.batches, 0);
        assert_eq!(report.corrupt.bytes, 5000 + 11);
        assert!(drain(&mut spool).is_empty());
        let b = batch(&mut spool, 1, "x");
        spool.append(&b).unwrap();
        assert_eq!(drain(&mut spool), vec![b]);
    }

    #[test]
    fn entry_changed_after_open_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(SpoolConfig::new(dir.path(), 1 << 20)).unwrap();
        let written: Vec<SpooledBatch> = (0..3)
            .map(|i| batch(&mut spool, 2, &i.to_string()))
            .collect();
        for b in &written {
            spool.append(b).unwrap();
        }
        let file = &segment_files(dir.path())[0];
        let entry_len = written[0].encode_entry().len() as u64;
        OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .write_all_at(b"XXXX", entry_len + 20)
            .unwrap();

        assert_eq!(
            drain(&mut spool),
            vec![written[0].clone(), written[2].clone()]
        );
        let drops = spool.take_drops();
        assert_eq!(drops.len(), 1);
        assert_eq!(drops[0].0, DropReason::SpoolCorrupt);
        assert_eq!(drops[0].1.batches, 1);
    }
}
