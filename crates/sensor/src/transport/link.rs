//! The transport task: connect, enroll, stream, reconnect.
//!
//! One loop owns the outbox and alternates between two phases. While
//! disconnected it waits out the back-off and dials; while connected it
//! sends batches and applies the server's messages. In both phases it keeps
//! reading records from the core, so a slow or absent server does not hold
//! up the collectors. Batches made while disconnected go to the spool.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picket_event::proto::sensor_client::SensorClient;
use picket_event::proto::{self, sensor_message, server_message};
use picket_event::Record;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::backoff::Backoff;
use super::identity::{HostIdentity, IdentitySource, SavedEnrollment};
use super::outbox::{error_chain, Outbox, OutboxLimits};
use super::tls::{ConnectError, PinnedTls};
use super::{
    Enrollment, LinkStatus, TransportConfig, TransportError, TransportStats, TransportSummary,
};
use crate::spool::Spool;

/// Channels through which the task reports to the core.
pub(super) struct Outputs {
    pub enrollment: watch::Sender<Option<Enrollment>>,
    pub status: watch::Sender<LinkStatus>,
    pub tasks: mpsc::Sender<proto::Task>,
    pub stats: Arc<TransportStats>,
}

/// Cause of a session's end.
#[derive(Debug)]
enum LinkError {
    Connect(String),
    CertificateMismatch {
        expected: String,
        presented: String,
    },
    Grpc {
        during: &'static str,
        status: tonic::Status,
    },
    /// The server refused the enrollment secret or key for good.
    EnrollRejected {
        code: Code,
        message: String,
    },
    /// The server refused the saved credential or the stream.
    Rejected {
        reason: String,
        fatal: bool,
    },
    Closed,
    AckTimeout(Duration),
    Timeout(&'static str),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Connect(text) => write!(f, "{text}"),
            LinkError::CertificateMismatch {
                expected,
                presented,
            } => write!(
                f,
                "server certificate does not match the installation key: expected SHA-256 \
                 {expected}, server presented {presented}"
            ),
            LinkError::Grpc { during, status } => {
                write!(
                    f,
                    "{during} failed: {:?}: {}",
                    status.code(),
                    status.message()
                )
            }
            LinkError::EnrollRejected { code, message } => {
                write!(f, "enrollment rejected: {code:?}: {message}")
            }
            LinkError::Rejected { reason, .. } => write!(f, "stream rejected: {reason}"),
            LinkError::Closed => write!(f, "server closed the stream"),
            LinkError::AckTimeout(after) => {
                write!(f, "no acknowledgement for {}s", after.as_secs())
            }
            LinkError::Timeout(during) => write!(f, "{during} timed out"),
        }
    }
}

/// Status codes of the enrollment call after which retrying with the same
/// key cannot succeed.
fn is_fatal_enroll_code(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
    )
}

/// An open stream.
struct Session {
    enrollment: SavedEnrollment,
    /// True when the credential came from the state dir, not from an
    /// enrollment made for this session.
    from_saved: bool,
    /// Highest seq the server stored for this SID, from the enrollment.
    server_last_seq: Option<u64>,
    out: mpsc::Sender<proto::SensorMessage>,
    inbound: tonic::Streaming<proto::ServerMessage>,
}

/// Everything needed to open a session; shared with the dialing future.
struct Dialer {
    tls: PinnedTls,
    config: TransportConfig,
    identity: HostIdentity,
    instance_id: String,
}

impl Dialer {
    /// Connects, enrolls unless `saved` contains a credential for this key, and
    /// opens the stream with `Hello`.
    async fn open(
        &self,
        saved: Option<SavedEnrollment>,
        first_unacked: u64,
        outputs_enrollment: &watch::Sender<Option<Enrollment>>,
    ) -> Result<Session, LinkError> {
        let local = Arc::new(Mutex::new(None::<SocketAddr>));
        let channel = self.channel(local.clone()).await?;
        let internal_ip = local
            .lock()
            .expect("not poisoned")
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let mut client = SensorClient::new(channel)
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(2 * self.config.batch_max_bytes + 64 * 1024);

        let from_saved = saved.is_some();
        let (enrollment, server_last_seq) = match saved {
            Some(saved) => (saved, None),
            None => {
                let (enrollment, last_seq) = self
                    .enroll(&mut client, &internal_ip, outputs_enrollment)
                    .await?;
                (enrollment, Some(last_seq))
            }
        };

        let (out, out_rx) = mpsc::channel(self.config.max_inflight_batches.max(1) + 4);
        let hello = proto::Hello {
            sid: enrollment.sid.clone(),
            credential: enrollment.credential.clone(),
            instance_id: self.instance_id.clone(),
            hostname: self.config.hostname.clone(),
            internal_ip,
            sensor_version: self.config.sensor_version.clone(),
            first_unacked_seq: first_unacked,
            tier: self.config.tier.clone(),
        };
        out.send(proto::SensorMessage {
            body: Some(sensor_message::Body::Hello(hello)),
        })
        .await
        .expect("receiver is alive");

        let call = client.stream(tokio_stream::wrappers::ReceiverStream::new(out_rx));
        let response = match tokio::time::timeout(self.config.connect_timeout, call).await {
            Err(_) => return Err(LinkError::Timeout("opening the stream")),
            Ok(Err(status))
                if matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ) =>
            {
                return Err(LinkError::Rejected {
                    reason: status.message().to_owned(),
                    fatal: true,
                });
            }
            Ok(Err(status)) => {
                return Err(LinkError::Grpc {
                    during: "opening the stream",
                    status,
                })
            }
            Ok(Ok(response)) => response,
        };
        Ok(Session {
            enrollment,
            from_saved,
            server_last_seq,
            out,
            inbound: response.into_inner(),
        })
    }

    async fn channel(&self, local: Arc<Mutex<Option<SocketAddr>>>) -> Result<Channel, LinkError> {
        let tls = self.tls.clone();
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let tls = tls.clone();
            let local = local.clone();
            async move {
                let (io, addr) = tls.connect().await?;
                *local.lock().expect("not poisoned") = Some(addr);
                Ok::<_, ConnectError>(io)
            }
        });
        let origin: http::Uri = self
            .tls
            .origin_uri()
            .parse()
            .map_err(|e| LinkError::Connect(error_chain(&e)))?;
        let endpoint = Endpoint::from_shared(self.tls.endpoint_uri())
            .map_err(|e| LinkError::Connect(error_chain(&e)))?
            .origin(origin)
            .connect_timeout(self.config.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);

        let connect = endpoint.connect_with_connector(connector);
        match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Err(_) => Err(LinkError::Timeout("connecting")),
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(error)) => Err(classify_connect_error(&error)),
        }
    }

    async fn enroll(
        &self,
        client: &mut SensorClient<Channel>,
        internal_ip: &str,
        outputs_enrollment: &watch::Sender<Option<Enrollment>>,
    ) -> Result<(SavedEnrollment, u64), LinkError> {
        let key = &self.config.key;
        // The secret travels as the key's 64 hex digits, the form the
        // server hashes and compares.
        let secret = key.secret.as_bytes().to_vec();
        let request = proto::EnrollRequest {
            org_id: key.org_id.clone(),
            key_id: key.key_id.clone(),
            secret,
            hostname: self.config.hostname.clone(),
            host_identity: self.identity.value.clone(),
            sensor_version: self.config.sensor_version.clone(),
            internal_ip: internal_ip.to_owned(),
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.config.connect_timeout);
        let response = match client.enroll(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if is_fatal_enroll_code(status.code()) => {
                return Err(LinkError::EnrollRejected {
                    code: status.code(),
                    message: status.message().to_owned(),
                });
            }
            Err(status) => {
                return Err(LinkError::Grpc {
                    during: "enrollment",
                    status,
                })
            }
        };

        let saved = SavedEnrollment {
            url: key.url.clone(),
            org_id: key.org_id.clone(),
            key_id: key.key_id.clone(),
            sid: response.sid.clone(),
            credential: response.credential,
            tags: response.tags.clone(),
        };
        if let Err(error) = saved.save(&self.config.state_dir) {
            tracing::warn!(error = %error_chain(&error), "failed to save enrollment; the next start enrolls again");
        }
        tracing::info!(
            sid = %response.sid,
            reused = response.reused,
            last_seq = response.last_seq,
            tags = ?response.tags,
            hostname = %self.config.hostname,
            "enrolled"
        );
        outputs_enrollment.send_replace(Some(Enrollment {
            sid: response.sid,
            tags: response.tags,
            reused: response.reused,
            instance_id: self.instance_id.clone(),
        }));
        Ok((saved, response.last_seq))
    }
}

/// Finds the pinned-TLS error inside tonic's connect error, if there is one.
fn classify_connect_error(error: &(dyn std::error::Error + 'static)) -> LinkError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        match cause.downcast_ref::<ConnectError>() {
            Some(ConnectError::CertificateMismatch {
                expected,
                presented,
            }) => {
                return LinkError::CertificateMismatch {
                    expected: expected.clone(),
                    presented: presented.clone(),
                };
            }
            // tonic's wrappers repeat the inner message, so the chain is
            // reported from the pinned-TLS error down.
            Some(own) => return LinkError::Connect(error_chain(own)),
            None => source = cause.source(),
        }
    }
    LinkError::Connect(error_chain(error))
}

pub(super) struct Link {
    dialer: Arc<Dialer>,
    outbox: Outbox,
    outputs: Outputs,
    backoff: Backoff,
    flush_interval: Duration,
    ack_timeout: Duration,
    drain_timeout: Duration,
    saved: Option<SavedEnrollment>,
    /// Set once a rejected saved credential was replaced by enrolling, so
    /// a second rejection is final.
    reenrolled: bool,
    input_open: bool,
    drain_deadline: Option<Instant>,
    /// Earliest time to send again, from the server's `Backoff`.
    paused_until: Option<Instant>,
}

/// Outcome of the connected phase.
enum SessionEnd {
    Drained,
    Lost(LinkError),
}

impl Link {
    pub(super) fn new(
        config: TransportConfig,
        tls: PinnedTls,
        identity: HostIdentity,
        spool: Spool,
        outputs: Outputs,
    ) -> Self {
        let limits = OutboxLimits {
            batch_max_records: config.batch_max_records.max(1),
            batch_max_bytes: config.batch_max_bytes,
            memory_max_bytes: config.memory_max_bytes,
            max_inflight_batches: config.max_inflight_batches.max(1),
        };
        let outbox = Outbox::new(spool, limits, config.hostname.clone());
        let saved = SavedEnrollment::load(&config.state_dir).filter(|s| s.matches(&config.key));
        if let IdentitySource::MachineId(path) = &identity.source {
            tracing::debug!(path = %path.display(), "host identity from machine-id");
        }
        Link {
            backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            flush_interval: config.flush_interval,
            ack_timeout: config.ack_timeout,
            drain_timeout: config.drain_timeout,
            dialer: Arc::new(Dialer {
                tls,
                config,
                identity,
                instance_id: uuid::Uuid::new_v4().to_string(),
            }),
            outbox,
            outputs,
            saved,
            reenrolled: false,
            input_open: true,
            drain_deadline: None,
            paused_until: None,
        }
    }

    pub(super) async fn run(
        mut self,
        mut records: mpsc::Receiver<Record>,
    ) -> Result<TransportSummary, TransportError> {
        // The first tick comes after one interval, so the first batch is not
        // sealed with whatever arrived before the loop started.
        let mut flush =
            tokio::time::interval_at(Instant::now() + self.flush_interval, self.flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut delay = Duration::ZERO;

        let result = loop {
            let session = match self.dial(delay, &mut records, &mut flush).await {
                Some(Ok(session)) => session,
                Some(Err(error)) => match self.after_failure(error) {
                    Ok(next) => {
                        delay = next;
                        continue;
                    }
                    Err(fatal) => break Err(fatal),
                },
                None => break Ok(()),
            };

            match self.stream(session, &mut records, &mut flush).await {
                SessionEnd::Drained => break Ok(()),
                SessionEnd::Lost(error) => match self.after_failure(error) {
                    Ok(next) => delay = next,
                    Err(fatal) => break Err(fatal),
                },
            }
        };
        self.finish(result)
    }

    /// Waits `delay`, then opens a session, reading records meanwhile.
    /// Returns `None` when the record channel closed and the drain time ran
    /// out.
    async fn dial(
        &mut self,
        delay: Duration,
        records: &mut mpsc::Receiver<Record>,
        flush: &mut tokio::time::Interval,
    ) -> Option<Result<Session, LinkError>> {
        let attempt = self.backoff.failures() + 1;
        self.outputs.stats.connects.fetch_add(1, Ordering::Relaxed);
        let dialer = self.dialer.clone();
        let saved = self.saved.clone();
        let first_unacked = self.outbox.acked_seq() + 1;
        let enrollment_tx = self.outputs.enrollment.clone();
        let status_tx = self.outputs.status.clone();
        let open = async move {
            tokio::time::sleep(delay).await;
            status_tx.send_replace(LinkStatus::Connecting { attempt });
            dialer.open(saved, first_unacked, &enrollment_tx).await
        };
        tokio::pin!(open);

        loop {
            tokio::select! {
                result = &mut open => return Some(result),
                record = records.recv(), if self.input_open => self.on_record(record, false),
                _ = flush.tick() => self.flush(false),
                _ = sleep_until(self.drain_deadline.unwrap_or_else(far_future)), if self.drain_deadline.is_some() => {
                    return None;
                }
            }
            // With nothing left to send there is no reason to wait for a
            // server after the record channel closed.
            if !self.input_open && self.outbox.is_drained() {
                return None;
            }
        }
    }

    /// Runs the connected phase until the stream fails or everything is
    /// delivered after the record channel closed.
    async fn stream(
        &mut self,
        mut session: Session,
        records: &mut mpsc::Receiver<Record>,
        flush: &mut tokio::time::Interval,
    ) -> SessionEnd {
        let sid = session.enrollment.sid.clone();
        tracing::info!(sid = %sid, from_saved = session.from_saved, "stream open");
        if session.from_saved {
            let mut current = self.outputs.enrollment.borrow().clone();
            if current.is_none() {
                current = Some(Enrollment {
                    sid: sid.clone(),
                    tags: session.enrollment.tags.clone(),
                    reused: true,
                    instance_id: self.dialer.instance_id.clone(),
                });
                self.outputs.enrollment.send_replace(current);
            }
        }
        self.outputs
            .status
            .send_replace(LinkStatus::Connected { sid: sid.clone() });
        self.saved = Some(session.enrollment.clone());
        if let Some(last_seq) = session.server_last_seq {
            self.outbox.raise_seq_floor(last_seq);
        }
        self.outbox.restart_stream();
        let mut last_progress = Instant::now();
        let mut acked_once = false;

        loop {
            let waiting_for_ack = self.outbox.inflight_batches() > 0;
            let ack_deadline = last_progress + self.ack_timeout;
            let paused = self.paused_until.is_some_and(|t| t > Instant::now());
            let can_send = !paused && self.outbox.can_send();

            tokio::select! {
                message = session.inbound.message() => {
                    match message {
                        Ok(Some(message)) => {
                            if let Err(error) = self.on_server_message(message, &sid, &mut acked_once) {
                                return SessionEnd::Lost(error);
                            }
                            last_progress = Instant::now();
                        }
                        Ok(None) => return SessionEnd::Lost(LinkError::Closed),
                        Err(status) if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) => {
                            return SessionEnd::Lost(LinkError::Rejected { reason: status.message().to_owned(), fatal: true });
                        }
                        Err(status) => return SessionEnd::Lost(LinkError::Grpc { during: "stream", status }),
                    }
                }
                permit = session.out.reserve(), if can_send => {
                    let Ok(permit) = permit else {
                        return SessionEnd::Lost(LinkError::Closed);
                    };
                    if !waiting_for_ack {
                        last_progress = Instant::now();
                    }
                    if let Some(batch) = self.outbox.next_to_send() {
                        tracing::debug!(seq = batch.seq, records = batch.records.len(), "sending batch");
                        let batch = proto::Batch { seq: batch.seq, records: batch.records };
                        permit.send(proto::SensorMessage { body: Some(sensor_message::Body::Batch(batch)) });
                    }
                }
                record = records.recv(), if self.input_open => self.on_record(record, true),
                _ = flush.tick() => self.flush(true),
                _ = sleep_until(self.paused_until.unwrap_or_else(far_future)), if paused => {
                    self.paused_until = None;
                }
                _ = sleep_until(ack_deadline), if waiting_for_ack => {
                    return SessionEnd::Lost(LinkError::AckTimeout(self.ack_timeout));
                }
                _ = sleep_until(self.drain_deadline.unwrap_or_else(far_future)), if self.drain_deadline.is_some() => {
                    tracing::warn!(sid = %sid, "drain time ran out before every batch was acknowledged");
                    return SessionEnd::Drained;
                }
            }

            if !self.input_open {
                // No more records will come, so waiting for the flush tick
                // only delays the last batch.
                self.flush(true);
                if self.outbox.is_drained() {
                    return SessionEnd::Drained;
                }
            }
        }
    }

    fn on_server_message(
        &mut self,
        message: proto::ServerMessage,
        sid: &str,
        acked_once: &mut bool,
    ) -> Result<(), LinkError> {
        match message.body {
            Some(server_message::Body::Ack(ack)) => {
                let acked = self.outbox.ack(ack.seq);
                let stats = &self.outputs.stats;
                stats
                    .batches_acked
                    .fetch_add(acked.batches, Ordering::Relaxed);
                stats
                    .events_acked
                    .fetch_add(acked.events, Ordering::Relaxed);
                self.publish_spool_stats();
                if !*acked_once {
                    *acked_once = true;
                    self.backoff.reset();
                }
                tracing::debug!(seq = ack.seq, "ack");
            }
            Some(server_message::Body::Backoff(backoff)) => {
                let pause = Duration::from_secs(u64::from(backoff.seconds));
                tracing::warn!(sid = %sid, seconds = backoff.seconds, reason = %backoff.reason, "server requested back-off");
                self.paused_until = Some(Instant::now() + pause);
            }
            Some(server_message::Body::Task(task)) => {
                tracing::info!(sid = %sid, task_id = %task.task_id, command = %task.command, "task received");
                if let Err(error) = self.outputs.tasks.try_send(task) {
                    tracing::warn!(sid = %sid, error = %error, "task channel full or closed, task dropped");
                }
            }
            Some(server_message::Body::Rejected(rejected)) => {
                return Err(LinkError::Rejected {
                    reason: rejected.reason,
                    fatal: rejected.fatal,
                });
            }
            None => tracing::debug!(sid = %sid, "server message without body ignored"),
        }
        Ok(())
    }

    /// Logs a failed session and returns the delay before the next attempt,
    /// or the error that ends the transport.
    fn after_failure(&mut self, error: LinkError) -> Result<Duration, TransportError> {
        self.outbox.spill_memory();
        self.publish_spool_stats();
        let sid = self
            .saved
            .as_ref()
            .map(|s| s.sid.clone())
            .unwrap_or_default();

        match &error {
            LinkError::Rejected {
                reason,
                fatal: true,
            } if self.saved.is_some() && !self.reenrolled => {
                // A saved credential goes stale when the server's data is
                // reset, for example. Enrolling again returns either a working
                // credential for the same SID or a final rejection.
                tracing::warn!(sid = %sid, reason = %reason, "server rejected the saved credential, enrolling again");
                self.reenrolled = true;
                self.saved = None;
                if let Err(error) = SavedEnrollment::remove(&self.dialer.config.state_dir) {
                    tracing::warn!(error = %error_chain(&error), "failed to remove saved enrollment");
                }
                return Ok(Duration::ZERO);
            }
            LinkError::Rejected {
                reason,
                fatal: true,
            } => {
                tracing::error!(sid = %sid, reason = %reason, "server rejected this sensor, not retrying");
                return Err(TransportError::Rejected {
                    sid,
                    reason: reason.clone(),
                });
            }
            LinkError::EnrollRejected { code, message } => {
                tracing::error!(code = ?code, message = %message, key_id = %self.dialer.config.key.key_id,
                    "server rejected the installation key, not retrying");
                return Err(TransportError::EnrollRejected {
                    code: format!("{code:?}"),
                    message: message.clone(),
                });
            }
            _ => {}
        }

        let mut delay = self.backoff.next_delay();
        if let Some(until) = self.paused_until.take() {
            delay = delay.max(until.saturating_duration_since(Instant::now()));
        }
        match &error {
            LinkError::CertificateMismatch {
                expected,
                presented,
            } => {
                tracing::error!(
                    url = %self.dialer.config.key.url,
                    expected = %expected,
                    presented = %presented,
                    retry_in_ms = delay.as_millis() as u64,
                    "server certificate does not match the installation key; create a new key for this server"
                );
                self.outputs
                    .status
                    .send_replace(LinkStatus::CertificateMismatch {
                        expected: expected.clone(),
                        presented: presented.clone(),
                    });
            }
            other => {
                tracing::warn!(
                    url = %self.dialer.config.key.url,
                    error = %other,
                    attempt = self.backoff.failures(),
                    retry_in_ms = delay.as_millis() as u64,
                    spooled_batches = self.outbox.spooled_batches(),
                    "link down, retrying"
                );
                self.outputs.status.send_replace(LinkStatus::Disconnected {
                    error: other.to_string(),
                    retry_in: delay,
                });
            }
        }
        Ok(delay)
    }

    fn on_record(&mut self, record: Option<Record>, connected: bool) {
        match record {
            Some(record) => {
                self.outputs
                    .stats
                    .records_received
                    .fetch_add(1, Ordering::Relaxed);
                self.outbox
                    .add_record(record.to_json_line().into_bytes(), connected);
            }
            None => {
                self.input_open = false;
                self.outbox.flush(connected);
                self.drain_deadline = Some(Instant::now() + self.drain_timeout);
                tracing::info!(
                    drain_timeout_s = self.drain_timeout.as_secs(),
                    "record channel closed, draining"
                );
            }
        }
    }

    fn flush(&mut self, connected: bool) {
        self.outbox.flush(connected);
        self.publish_spool_stats();
    }

    fn publish_spool_stats(&self) {
        let stats = &self.outputs.stats;
        stats
            .spooled_batches
            .store(self.outbox.spooled_batches() as u64, Ordering::Relaxed);
        stats
            .spool_bytes
            .store(self.outbox.spool_bytes(), Ordering::Relaxed);
    }

    fn finish(
        self,
        result: Result<(), TransportError>,
    ) -> Result<TransportSummary, TransportError> {
        let stats = self.outputs.stats.clone();
        let spooled_batches = self.outbox.close();
        let summary = TransportSummary {
            records_received: stats.records_received.load(Ordering::Relaxed),
            events_acked: stats.events_acked.load(Ordering::Relaxed),
            spooled_batches,
        };
        if spooled_batches > 0 {
            tracing::info!(
                batches = spooled_batches,
                "unacknowledged batches left in the spool for the next start"
            );
        }
        let status = match &result {
            Ok(()) => LinkStatus::Stopped { error: None },
            Err(error) => LinkStatus::Stopped {
                error: Some(error_chain(error)),
            },
        };
        self.outputs.status.send_replace(status);
        result.map(|()| summary)
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
