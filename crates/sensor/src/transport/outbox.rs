//! Outbound queue: batching, the memory queue of unacknowledged batches,
//! and the spool behind it.
//!
//! Every batch that the server has not acknowledged is in exactly one place:
//! the memory queue or the spool. Batches are sent in sequence order. The
//! spool only contains batches older than those in memory, because a batch
//! goes to the spool only after the memory queue was moved there first. While connected, new batches stay in memory up to its byte bound.
//! When the link drops or the memory queue is full, the memory queue is
//! written to the spool, so a sensor killed while disconnected resends the
//! batches on its next start.

use std::collections::VecDeque;

use picket_event::{types, Record};

use crate::spool::{DropCount, DropReason, Spool, SpooledBatch};

/// Batching and memory bounds of the outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    pub memory_max_bytes: usize,
    pub max_inflight_batches: usize,
}

#[derive(Debug)]
pub struct Outbox {
    spool: Spool,
    limits: OutboxLimits,
    hostname: String,

    /// Records not yet sealed into a batch.
    pending: Vec<Vec<u8>>,
    pending_bytes: usize,

    /// Unacknowledged batches not on disk, oldest first; all newer than
    /// every spooled batch.
    memory: VecDeque<SpooledBatch>,
    memory_bytes: usize,

    /// Sequence numbers and event counts sent on the current stream and not
    /// yet acknowledged, oldest first.
    inflight: VecDeque<(u64, usize)>,
    /// Highest sequence number sent on the current stream.
    sent: u64,
    acked: u64,

    /// Drops counted here rather than in the spool.
    own_drops: Vec<(DropReason, DropCount)>,
    spool_errors: u64,
}

/// Outcome of an acknowledgement.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub batches: u64,
    pub events: u64,
}

impl Outbox {
    pub fn new(spool: Spool, limits: OutboxLimits, hostname: String) -> Self {
        let acked = spool.acked_seq();
        Outbox {
            spool,
            limits,
            hostname,
            pending: Vec::new(),
            pending_bytes: 0,
            memory: VecDeque::new(),
            memory_bytes: 0,
            inflight: VecDeque::new(),
            sent: acked,
            acked,
            own_drops: Vec::new(),
            spool_errors: 0,
        }
    }

    /// Adds one record, sealing a batch when the record or byte limit is
    /// reached. A record larger than a whole batch is dropped and counted.
    pub fn add_record(&mut self, line: Vec<u8>, connected: bool) {
        if line.len() > self.limits.batch_max_bytes {
            tracing::warn!(
                bytes = line.len(),
                max = self.limits.batch_max_bytes,
                "record larger than a batch, dropped"
            );
            let count = DropCount {
                batches: 0,
                events: 1,
                bytes: line.len() as u64,
            };
            add_drop(&mut self.own_drops, DropReason::RecordTooLarge, count);
            return;
        }
        if self.pending_bytes + line.len() > self.limits.batch_max_bytes {
            self.flush(connected);
        }
        self.pending_bytes += line.len();
        self.pending.push(line);
        if self.pending.len() >= self.limits.batch_max_records {
            self.flush(connected);
        }
    }

    /// Seals the pending records into a batch and queues it. While
    /// connected a `DATA_DROPPED` record for the drops counted so far joins
    /// the batch first. While disconnected the counts wait in memory, because
    /// a record put in the spool could be dropped in turn and take the counts
    /// with it.
    pub fn flush(&mut self, connected: bool) {
        if connected {
            self.queue_drop_records();
        }
        if self.pending.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        match self.spool.next_seq() {
            Ok(seq) => self.store(SpooledBatch { seq, records }, connected),
            Err(error) => {
                self.log_spool_error(&error, "failed to reserve sequence numbers");
                let count = DropCount {
                    batches: 1,
                    events: records.len() as u64,
                    bytes: records.iter().map(|r| r.len() as u64).sum(),
                };
                add_drop(&mut self.own_drops, DropReason::SpoolWriteFailed, count);
            }
        }
    }

    /// Returns true if any drop records were queued.
    fn queue_drop_records(&mut self) -> bool {
        let records = self.take_drop_records();
        let any = !records.is_empty();
        for record in records {
            let line = record.to_json_line().into_bytes();
            self.pending_bytes += line.len();
            self.pending.push(line);
        }
        any
    }

    fn store(&mut self, batch: SpooledBatch, connected: bool) {
        let bytes = batch.payload_bytes();
        if connected && self.memory_bytes + bytes <= self.limits.memory_max_bytes {
            self.memory_bytes += bytes;
            self.memory.push_back(batch);
            return;
        }
        self.spill_memory();
        if let Err(error) = self.spool.append(&batch) {
            self.log_spool_error(&error, "failed to spool batch, dropped");
        }
    }

    /// Moves the memory queue to the spool.
    pub fn spill_memory(&mut self) {
        while let Some(batch) = self.memory.pop_front() {
            self.memory_bytes -= batch.payload_bytes();
            if let Err(error) = self.spool.append(&batch) {
                self.log_spool_error(&error, "failed to spool batch, dropped");
            }
        }
    }

    fn log_spool_error(&mut self, error: &crate::spool::SpoolError, message: &str) {
        self.spool_errors += 1;
        // Repeats of one disk problem are logged once per 100 failures.
        if self.spool_errors % 100 == 1 {
            tracing::error!(error = %error_chain(error), failures = self.spool_errors, "{message}");
        }
    }

    /// Returns true if a batch is ready to send and the in-flight window has
    /// room.
    pub fn can_send(&self) -> bool {
        self.inflight.len() < self.limits.max_inflight_batches
            && (self.spool.has_after(self.sent)
                || self.memory.back().is_some_and(|b| b.seq > self.sent))
    }

    /// Returns the next batch to send and records it as sent.
    pub fn next_to_send(&mut self) -> Option<SpooledBatch> {
        let batch = match self.spool.first_after(self.sent) {
            Some(batch) => batch,
            None => {
                let pos = self.memory.partition_point(|b| b.seq <= self.sent);
                self.memory.get(pos)?.clone()
            }
        };
        self.sent = batch.seq;
        self.inflight.push_back((batch.seq, batch.records.len()));
        Some(batch)
    }

    /// Applies an acknowledgement of every batch up to `seq`.
    pub fn ack(&mut self, seq: u64) -> Acked {
        let mut acked = Acked::default();
        // An ack for a batch never sent on this stream would mark unsent
        // batches as stored and stop all sending, so it is capped.
        let seq = if seq > self.sent {
            tracing::warn!(
                seq,
                sent = self.sent,
                "server acknowledged a batch that was not sent, capped"
            );
            self.sent
        } else {
            seq
        };
        if seq <= self.acked {
            return acked;
        }
        self.acked = seq;
        while self.inflight.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, events) = self.inflight.pop_front().expect("front exists");
            acked.batches += 1;
            acked.events += events as u64;
        }
        while self.memory.front().is_some_and(|b| b.seq <= seq) {
            let batch = self.memory.pop_front().expect("front exists");
            self.memory_bytes -= batch.payload_bytes();
        }
        if let Err(error) = self.spool.ack(seq) {
            tracing::warn!(error = %error_chain(&error), "failed to delete acknowledged spool segment");
        }
        acked
    }

    /// Applies the server's highest stored sequence number for this SID,
    /// reported at enrollment. New batches are numbered above it.
    pub fn raise_seq_floor(&mut self, server_last_seq: u64) {
        let stale = self
            .memory
            .iter()
            .any(|b| b.seq <= server_last_seq && b.seq > self.acked)
            || self
                .spool
                .first_after(self.acked)
                .is_some_and(|b| b.seq <= server_last_seq);
        if stale {
            // NOTE: these batches reuse numbers the server already stored,
            // so it takes them for replays. This happens only when the host
            // clock went back while the state dir was lost.
            tracing::warn!(
                server_last_seq,
                "unsent batches are numbered at or below the server's last seq"
            );
        }
        if let Err(error) = self.spool.raise_seq_floor(server_last_seq) {
            self.log_spool_error(&error, "failed to store the raised sequence number");
        }
    }

    /// Starts a new stream: every unacknowledged batch is sent again.
    pub fn restart_stream(&mut self) {
        self.sent = self.acked;
        self.inflight.clear();
    }

    /// Returns true if nothing is waiting: no pending record and no
    /// unacknowledged batch.
    pub fn is_drained(&self) -> bool {
        self.pending.is_empty()
            && self.memory.is_empty()
            && !self.spool.has_after(self.acked)
            && self.own_drops.is_empty()
            && !self.spool.has_drops()
    }

    pub fn acked_seq(&self) -> u64 {
        self.acked
    }

    pub fn inflight_batches(&self) -> usize {
        self.inflight.len()
    }

    pub fn spooled_batches(&self) -> usize {
        self.spool.pending_batches()
    }

    pub fn spool_bytes(&self) -> u64 {
        self.spool.bytes()
    }

    /// Moves everything to the spool and closes it, for the next start to
    /// resend. Returns the number of unacknowledged batches left there.
    pub fn close(mut self) -> u64 {
        self.flush(false);
        self.spill_memory();
        // Spooling the DATA_DROPPED records can itself drop the oldest
        // segment, which the next round counts. Each round appends one small
        // batch to the newest segment, so two rounds normally settle it.
        for _ in 0..3 {
            if !self.queue_drop_records() {
                break;
            }
            self.flush(false);
        }
        let left = self.spool.pending_batches() as u64;
        let dir = self.spool.dir().to_owned();
        if let Err(error) = self.spool.close() {
            tracing::error!(dir = %dir.display(), error = %error_chain(&error), "failed to close spool");
        }
        left
    }

    fn take_drop_records(&mut self) -> Vec<Record> {
        let mut drops = self.spool.take_drops();
        for (reason, count) in self.own_drops.drain(..) {
            add_drop(&mut drops, reason, count);
        }
        drops.sort_by_key(|(reason, _)| *reason);
        drops
            .into_iter()
            .filter(|(_, count)| !count.is_zero())
            .map(|(reason, count)| data_dropped(&self.hostname, reason, count))
            .collect()
    }
}

fn add_drop(drops: &mut Vec<(DropReason, DropCount)>, reason: DropReason, count: DropCount) {
    match drops.iter_mut().find(|(r, _)| *r == reason) {
        Some((_, total)) => {
            total.batches += count.batches;
            total.events += count.events;
            total.bytes += count.bytes;
        }
        None => drops.push((reason, count)),
    }
}

/// Builds a `DATA_DROPPED` record. `EVENTS` is left out for corrupt spool
/// entries, whose record count cannot be trusted.
pub fn data_dropped(hostname: &str, reason: DropReason, count: DropCount) -> Record {
    let mut record = Record::new(types::DATA_DROPPED, hostname);
    record.set("REASON", reason.as_str());
    record.set("BATCHES", count.batches);
    record.set("BYTES", count.bytes);
    if reason != DropReason::SpoolCorrupt {
        record.set("EVENTS", count.events);
    }
    record
}

/// Formats an error with its sources, for one log field.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolConfig;

    fn limits() -> OutboxLimits {
        OutboxLimits {
            batch_max_records: 3,
            batch_max_bytes: 1 << 20,
            memory_max_bytes: 1 << 20,
            max_inflight_batches: 100,
        }
    }

    fn outbox(dir: &std::path::Path, limits: OutboxLimits) -> Outbox {
        let (spool, _) = Spool::open(SpoolConfig::new(dir, 1 << 20)).unwrap();
        Outbox::new(spool, limits, "host".into())
    }

    fn send_all(outbox: &mut Outbox) -> Vec<SpooledBatch> {
        let mut sent = Vec::new();
        while outbox.can_send() {
            sent.push(outbox.next_to_send().unwrap());
        }
        sent
    }

    fn line(n: usize) -> Vec<u8> {
        format!(r#"{{"n":{n}}}"#).into_bytes()
    }

    #[test]
    fn batches_sent_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = outbox(dir.path(), limits());
        for n in 0..6 {
            outbox.add_record(line(n), false);
        }
        assert_eq!(
            outbox.spooled_batches(),
            2,
            "disconnected batches are spooled"
        );
        for n in 6..12 {
            outbox.add_record(line(n), true);
        }
        assert_eq!(
            outbox.spooled_batches(),
            2,
            "connected batches stay in memory"
        );

        let sent = send_all(&mut outbox);
        assert_eq!(sent.len(), 4);
        assert!(sent.windows(2).all(|w| w[0].seq < w[1].seq));
        let records: Vec<Vec<u8>> = sent.iter().flat_map(|b| b.records.clone()).collect();
        assert_eq!(records, (0..12).map(line).collect::<Vec<_>>());
    }

    #[test]
    fn unacked_batches_are_resent_after_restart_of_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = outbox(dir.path(), limits());
        for n in 0..9 {
            outbox.add_record(line(n), true);
        }
        let first = send_all(&mut outbox);
        assert_eq!(first.len(), 3);
        let acked = outbox.ack(first[0].seq);
        assert_eq!(
            acked,
            Acked {
                batches: 1,
                events: 3
            }
        );

        outbox.spill_memory();
        outbox.restart_stream();
        let again = send_all(&mut outbox);
        assert_eq!(again, first[1..].to_vec());
        outbox.ack(again[1].seq);
        assert!(outbox.is_drained());
    }

    #[test]
    fn close_keeps_unacked_batches_for_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = outbox(dir.path(), limits());
        for n in 0..7 {
            outbox.add_record(line(n), true);
        }
        let sent = send_all(&mut outbox);
        outbox.ack(sent[0].seq);
        outbox.close();

        let mut outbox = self::outbox(dir.path(), limits());
        let resent = send_all(&mut outbox);
        let records: Vec<Vec<u8>> = resent.iter().flat_map(|b| b.records.clone()).collect();
        assert_eq!(records, (3..7).map(line).collect::<Vec<_>>());
    }

    #[test]
    fn memory_bound_spills_to_spool() {
        let dir = tempfile::tempdir().unwrap();
        let mut small = limits();
        small.memory_max_bytes = 40;
        let mut outbox = outbox(dir.path(), small);
        for n in 0..30 {
            outbox.add_record(line(n), true);
        }
        assert!(outbox.memory_bytes <= 40);
        assert!(outbox.spooled_batches() > 0);
        let sent = send_all(&mut outbox);
        let records: Vec<Vec<u8>> = sent.iter().flat_map(|b| b.records.clone()).collect();
        assert_eq!(records, (0..30).map(line).collect::<Vec<_>>());
    }

    #[test]
    fn oversized_record_becomes_data_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut small = limits();
        small.batch_max_bytes = 100;
        let mut outbox = outbox(dir.path(), small);
        outbox.add_record(vec![b'x'; 101], true);
        outbox.add_record(line(1), true);
        outbox.flush(true);
        outbox.flush(true);
        let sent = send_all(&mut outbox);
        let dropped: Vec<Record> = sent
            .iter()
            .flat_map(|b| b.records.iter())
            .map(|r| serde_json::from_slice::<Record>(r).unwrap_or_default())
            .filter(|r| r.routing.event_type == types::DATA_DROPPED)
            .collect();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].event["REASON"], "record_too_large");
        assert_eq!(dropped[0].event["EVENTS"], 1);
        assert_eq!(dropped[0].event["BYTES"], 101);
    }

    #[test]
    fn ack_beyond_sent_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = outbox(dir.path(), limits());
        for n in 0..9 {
            outbox.add_record(line(n), true);
        }
        let first = outbox.next_to_send().unwrap();
        outbox.ack(u64::MAX);
        assert_eq!(outbox.acked_seq(), first.seq);
        let rest = send_all(&mut outbox);
        assert_eq!(rest.len(), 2, "unsent batches are still sent");
    }

    #[test]
    fn inflight_window_limits_sending() {
        let dir = tempfile::tempdir().unwrap();
        let mut small = limits();
        small.max_inflight_batches = 2;
        let mut outbox = outbox(dir.path(), small);
        for n in 0..15 {
            outbox.add_record(line(n), true);
        }
        let first = send_all(&mut outbox);
        assert_eq!(first.len(), 2);
        outbox.ack(first[1].seq);
        assert_eq!(send_all(&mut outbox).len(), 2);
    }
}
