//! Where records go: a fan-out to bounded channels, one per consumer (the
//! transport to the platform, the stdout sink), and the stdout sink itself.
//!
//! Each channel is bounded. A full channel makes enrichment wait, which in
//! turn fills the collector's queue. Loss then happens, and is counted, at
//! the collector (for example ENOBUFS on the netlink socket), so no record is
//! dropped silently here.

use std::io::Write;

use picket_event::Record;
use tokio::sync::mpsc;

/// Default capacity of each outbound channel, in records.
pub const CHANNEL_CAPACITY: usize = 10_000;

/// Sends every record to all consumers.
#[derive(Clone, Default)]
pub struct Outbound {
    senders: Vec<mpsc::Sender<Record>>,
}

impl Outbound {
    pub fn new() -> Self {
        Outbound::default()
    }

    /// Adds a consumer and returns its receiving end.
    pub fn subscribe(&mut self, capacity: usize) -> mpsc::Receiver<Record> {
        let (tx, rx) = mpsc::channel(capacity);
        self.senders.push(tx);
        rx
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Sends from a thread outside the async runtime, waiting while a
    /// consumer's channel is full. Consumers that have gone are removed.
    /// Returns false once no consumer is left.
    pub fn send_blocking(&mut self, record: Record) -> bool {
        let last = self.senders.len().saturating_sub(1);
        let mut record = Some(record);
        let mut closed = Vec::new();
        for (i, sender) in self.senders.iter().enumerate() {
            let item = if i == last {
                record.take().expect("moved only on the last sender")
            } else {
                record.clone().expect("present until the last sender")
            };
            if sender.blocking_send(item).is_err() {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            self.senders.remove(i);
        }
        !self.senders.is_empty()
    }
}

/// Writes records as JSON lines to `writer`, one record per line. The writer
/// is flushed whenever the channel is momentarily empty, so output is
/// prompt without a flush per line under load. Returns when the channel
/// closes or a write fails (for example a closed pipe).
pub async fn write_json_lines<W: Write>(
    mut rx: mpsc::Receiver<Record>,
    mut writer: W,
) -> std::io::Result<()> {
    while let Some(record) = rx.recv().await {
        write_line(&mut writer, &record)?;
        while let Ok(record) = rx.try_recv() {
            write_line(&mut writer, &record)?;
        }
        writer.flush()?;
    }
    writer.flush()
}

fn write_line<W: Write>(writer: &mut W, record: &Record) -> std::io::Result<()> {
    // serde_json escapes every control character, so a record is one line.
    serde_json::to_writer(&mut *writer, record).map_err(std::io::Error::other)?;
    writer.write_all(b"\n")
}

/// Spawns the stdout sink on the current runtime.
pub fn spawn_stdout(rx: mpsc::Receiver<Record>) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::task::spawn_blocking(move || {
        let handle = tokio::runtime::Handle::current();
        let stdout = std::io::stdout().lock();
        handle.block_on(write_json_lines(
            rx,
            std::io::BufWriter::with_capacity(64 * 1024, stdout),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_become_single_lines() {
        let mut outbound = Outbound::new();
        let rx = outbound.subscribe(16);
        let writer = tokio::task::spawn_blocking(move || {
            let mut record = Record::new("NEW_PROCESS", "node");
            record.set("COMMAND_LINE", "a\nb\r\u{1b}c");
            assert!(outbound.send_blocking(record.clone()));
            assert!(outbound.send_blocking(record));
        });
        writer.await.unwrap();
        let mut buffer = Vec::new();
        write_json_lines(rx, &mut buffer).await.unwrap();
        let text = String::from_utf8(buffer).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let back: Record = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(back.event["COMMAND_LINE"], "a\nb\r\u{1b}c");
    }

    #[tokio::test]
    async fn closed_consumer_is_removed() {
        let mut outbound = Outbound::new();
        let rx_a = outbound.subscribe(4);
        let mut rx_b = outbound.subscribe(4);
        drop(rx_a);
        let sent =
            tokio::task::spawn_blocking(move || outbound.send_blocking(Record::new("X", "h")))
                .await
                .unwrap();
        assert!(sent);
        assert_eq!(rx_b.recv().await.unwrap().routing.event_type, "X");
    }
}
