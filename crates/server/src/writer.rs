//! The event writer: one thread that owns event writes and commits groups of
//! batches in one transaction each.
//!
//! Streams hand batches over through a bounded queue and wait for the
//! outcome before they acknowledge. Grouping many batches per commit keeps
//! the cost of the durable commit (an fsync) per group instead of per batch.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{BatchOutcome, BatchWrite, Store, StoreError};

/// Batches waiting for the writer, at most.
pub const QUEUE_BATCHES: usize = 512;
/// Events committed in one transaction, at most.
const GROUP_EVENTS: usize = 50_000;

pub type WriteResult = Result<BatchOutcome, Arc<StoreError>>;

struct Job {
    batch: BatchWrite,
    reply: oneshot::Sender<WriteResult>,
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

#[derive(Debug, thiserror::Error)]
#[error("the event writer has stopped")]
pub struct WriterStopped;

impl Writer {
    /// Starts the writer thread on `store`.
    pub fn start(store: Arc<dyn Store>) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        std::thread::Builder::new()
            .name("event-writer".into())
            .spawn(move || run(store, rx))
            .expect("spawning the writer thread");
        Writer { tx }
    }

    /// True when the queue is full, so a sender would wait.
    pub fn is_saturated(&self) -> bool {
        self.tx.capacity() == 0
    }

    /// Queues a batch; the receiver yields its outcome once committed.
    pub async fn submit(
        &self,
        batch: BatchWrite,
    ) -> Result<oneshot::Receiver<WriteResult>, WriterStopped> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { batch, reply })
            .await
            .map_err(|_| WriterStopped)?;
        Ok(rx)
    }
}

fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>) {
    let mut batches: Vec<BatchWrite> = Vec::new();
    let mut replies: Vec<oneshot::Sender<WriteResult>> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut events = first.batch.events.len();
        batches.push(first.batch);
        replies.push(first.reply);
        while events < GROUP_EVENTS {
            match rx.try_recv() {
                Ok(job) => {
                    events += job.batch.events.len();
                    batches.push(job.batch);
                    replies.push(job.reply);
                }
                Err(_) => break,
            }
        }

        match store.write_batches(&batches) {
            Ok(outcomes) => {
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                if error.is_disk_full() {
                    tracing::error!(%error, batches = batches.len(), "events rejected, storage is full");
                } else {
                    tracing::error!(error = %error_chain(&error), batches = batches.len(), "event write failed");
                }
                let error = Arc::new(error);
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        batches.clear();
    }
    tracing::info!("event writer stopped");
}

/// Formats the error and its causes on one line.
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
