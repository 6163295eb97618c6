//! The gRPC service sensors talk to: enrollment and the event stream.
//!
//! A stream starts with `Hello` (SID and credential), then carries batches.
//! Each batch is routed (the server's own `oid`, `sid`, `iid`, `hostname`,
//! `tags`, `ext_ip`, `int_ip` replace whatever the sensor wrote), queued to
//! the writer, and acknowledged in order once committed. A batch that cannot
//! be stored is never acknowledged: the stream ends with an error and the
//! sensor sends it again later.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picket_event::proto::sensor_message::Body as SensorBody;
use picket_event::proto::sensor_server::Sensor;
use picket_event::proto::server_message::Body as ServerBody;
use picket_event::proto::{
    Ack, Backoff, Batch, EnrollRequest, EnrollResponse, Hello, Rejected, SensorMessage,
    ServerMessage, Task, TaskReply,
};
use picket_event::record::now_ms;
use picket_event::{Record, Routing};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::store::{
    BatchWrite, Enrollment, EventRow, SensorPresence, SensorRow, Store, StoreError,
};
use crate::writer::{error_chain, WriteResult, Writer};

/// Maximum gRPC message size accepted from a sensor, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// How long a new stream may take to send `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a sensor is asked to wait when the server's storage is full.
const DISK_FULL_BACKOFF_SECS: u32 = 60;
/// Event type of the deployment event stored when a clone is detected.
pub const SENSOR_CLONE: &str = "sensor_clone";
/// How often tasks are looked up for a connected sensor without a wake-up.
const TASK_POLL: Duration = Duration::from_secs(30);
/// Maximum length of a hostname, host identity or instance id, in bytes.
const MAX_IDENTITY_LEN: usize = 256;

/// Streams currently open, by SID.
#[derive(Default)]
pub struct LiveSensors {
    streams: Mutex<HashMap<String, LiveStream>>,
    next_token: std::sync::atomic::AtomicU64,
}

struct LiveStream {
    instance_id: String,
    token: u64,
    ext_ip: String,
    tasks: Arc<Notify>,
}

/// Another live stream uses the SID with a different instance id.
struct CloneOf {
    instance_id: String,
    ext_ip: String,
}

impl LiveSensors {
    fn register(
        &self,
        sid: &str,
        instance_id: &str,
        ext_ip: &str,
    ) -> Result<(u64, Arc<Notify>), CloneOf> {
        let mut streams = self.streams.lock().expect("live sensors lock");
        // NOTE: a sensor whose host lost power leaves its old stream registered
        // until HTTP/2 keepalive notices (about 50 s), so its restarted
        // instance is rejected as a clone until then and retries.
        if let Some(live) = streams.get(sid) {
            if live.instance_id != instance_id {
                return Err(CloneOf {
                    instance_id: live.instance_id.clone(),
                    ext_ip: live.ext_ip.clone(),
                });
            }
        }
        // The same instance reconnecting replaces its older stream, which the
        // server may not have noticed closing yet.
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tasks = Arc::new(Notify::new());
        streams.insert(
            sid.to_owned(),
            LiveStream {
                instance_id: instance_id.to_owned(),
                token,
                ext_ip: ext_ip.to_owned(),
                tasks: tasks.clone(),
            },
        );
        Ok((token, tasks))
    }

    /// Removes the registration if it is still `token`'s; returns whether it was.
    fn unregister(&self, sid: &str, token: u64) -> bool {
        let mut streams = self.streams.lock().expect("live sensors lock");
        if streams.get(sid).is_some_and(|live| live.token == token) {
            streams.remove(sid);
            return true;
        }
        false
    }

    /// Wakes the stream of `sid` so it sends queued tasks now.
    pub fn wake_tasks(&self, sid: &str) {
        if let Some(live) = self.streams.lock().expect("live sensors lock").get(sid) {
            live.tasks.notify_one();
        }
    }

    pub fn is_online(&self, sid: &str) -> bool {
        self.streams
            .lock()
            .expect("live sensors lock")
            .contains_key(sid)
    }
}

/// The `picket.v1.Sensor` service.
#[derive(Clone)]
pub struct Ingest {
    store: Arc<dyn Store>,
    writer: Writer,
    live: Arc<LiveSensors>,
}

/// Server-side routing facts for one stream.
#[derive(Clone)]
struct RouteContext {
    sensor: SensorRow,
    hostname: String,
    ext_ip: String,
    int_ip: String,
}

impl Ingest {
    pub fn new(store: Arc<dyn Store>, writer: Writer, live: Arc<LiveSensors>) -> Self {
        Ingest {
            store,
            writer,
            live,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|_| Status::internal("store call panicked"))?
            .map_err(|error| {
                tracing::error!(error = %error_chain(&error), "store call failed");
                if error.is_disk_full() {
                    Status::resource_exhausted(error.to_string())
                } else {
                    Status::internal("the server's store failed; try again later")
                }
            })
    }
}

fn peer_ip<T>(request: &Request<T>) -> String {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let addr = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.get_ref().remote_addr())
        .or_else(|| request.remote_addr());
    addr.map(|a| canonical_ip(a.ip()).to_string())
        .unwrap_or_default()
}

/// IPv4-mapped IPv6 addresses shown as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        ip => ip,
    }
}

fn check_text(name: &str, value: &str, required: bool) -> Result<(), Status> {
    if required && value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{name} is missing")));
    }
    if value.len() > MAX_IDENTITY_LEN {
        return Err(Status::invalid_argument(format!(
            "{name} is longer than {MAX_IDENTITY_LEN} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{name} contains control characters"
        )));
    }
    Ok(())
}

fn message(body: ServerBody) -> ServerMessage {
    ServerMessage { body: Some(body) }
}

#[tonic::async_trait]
impl Sensor for Ingest {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let peer = peer_ip(&request);
        let req = request.into_inner();
        let result = self.enroll_checked(req, &peer).await;
        if let Err(status) = &result {
            tracing::warn!(%peer, code = ?status.code(), reason = status.message(), "enrollment rejected");
        }
        result.map(Response::new)
    }

    type StreamStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<SensorMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = peer_ip(&request);
        let mut inbound = request.into_inner();

        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no Hello within 30 s of opening the stream",
                ))
            }
            Ok(Err(status)) => {
                tracing::warn!(%peer, %status, "stream failed before Hello");
                return Err(status);
            }
            Ok(Ok(None)) => return Err(Status::invalid_argument("the stream closed before Hello")),
            Ok(Ok(Some(SensorMessage {
                body: Some(SensorBody::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "the first message of a stream must be Hello",
                ))
            }
        };

        let context = match self.authenticate(&hello, &peer).await {
            Ok(context) => context,
            Err(status) => {
                tracing::warn!(%peer, sid = %hello.sid, reason = status.message(), "stream rejected");
                return Err(status);
            }
        };
        let sid = context.sensor.sid.clone();

        let (token, tasks) = match self.live.register(&sid, &hello.instance_id, &peer) {
            Ok(registered) => registered,
            Err(clone) => {
                self.report_clone(&context, &hello, &clone).await;
                return Err(Status::already_exists(format!(
                    "sensor {sid} is already streaming from instance {} at {}; two live sensors claim this \
                     host (a cloned sensor); this stream is rejected, re-enroll the clone with its own host identity",
                    clone.instance_id, clone.ext_ip
                )));
            }
        };

        let presence = SensorPresence {
            hostname: context.hostname.clone(),
            int_ip: context.int_ip.clone(),
            ext_ip: context.ext_ip.clone(),
            version: hello.sensor_version.clone(),
            tier: hello.tier.clone(),
        };
        let sid_for_online = sid.clone();
        if let Err(status) = self
            .blocking(move |s| s.set_online(&sid_for_online, &presence))
            .await
        {
            self.live.unregister(&sid, token);
            return Err(status);
        }
        tracing::info!(%sid, %peer, instance = %hello.instance_id, hostname = %context.hostname, "sensor connected");

        let (out, out_rx) = mpsc::channel(256);
        let session = Session {
            ingest: self.clone(),
            context,
            out,
        };
        tokio::spawn(session.run(inbound, token, tasks));
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

impl Ingest {
    async fn enroll_checked(
        &self,
        req: EnrollRequest,
        peer: &str,
    ) -> Result<EnrollResponse, Status> {
        if uuid::Uuid::parse_str(&req.org_id).is_err() {
            return Err(Status::invalid_argument(format!(
                "org_id {:?} is not a UUID",
                req.org_id
            )));
        }
        if uuid::Uuid::parse_str(&req.key_id).is_err() {
            return Err(Status::invalid_argument(format!(
                "key_id {:?} is not a UUID",
                req.key_id
            )));
        }
        check_text("hostname", &req.hostname, true)?;
        check_text("host_identity", &req.host_identity, true)?;
        check_text("sensor_version", &req.sensor_version, false)?;
        check_text("internal_ip", &req.internal_ip, false)?;

        let key_id = req.key_id.clone();
        let key = self
            .blocking(move |s| s.installation_key(&key_id))
            .await?
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "installation key {} is not known to this server",
                    req.key_id
                ))
            })?;
        let secret = std::str::from_utf8(&req.secret).unwrap_or("");
        // The secret is checked before org and revocation, so only a holder of
        // the secret learns those facts about the key.
        if !auth::secret_matches(secret, &key.secret_sha256) {
            return Err(Status::unauthenticated(format!(
                "the enrollment secret does not match installation key {}",
                key.id
            )));
        }
        if key.org_id != req.org_id {
            return Err(Status::permission_denied(format!(
                "installation key {} does not belong to organisation {}",
                key.id, req.org_id
            )));
        }
        if key.revoked {
            return Err(Status::permission_denied(format!(
                "installation key {} was revoked; create a new one with `picket-server key create`",
                key.id
            )));
        }

        let credential = auth::new_secret();
        let enrollment = Enrollment {
            org_id: key.org_id.clone(),
            key_id: key.id.clone(),
            host_identity: req.host_identity.clone(),
            hostname: req.hostname.clone(),
            tags: key.tags.clone(),
            version: req.sensor_version.clone(),
            int_ip: req.internal_ip.clone(),
            credential_sha256: auth::sha256(&credential),
        };
        let enrolled = self.blocking(move |s| s.enroll(&enrollment)).await?;
        tracing::info!(
            sid = %enrolled.sensor.sid,
            org = %key.org_id,
            key = %key.id,
            hostname = %req.hostname,
            %peer,
            reused = enrolled.reused,
            "sensor enrolled"
        );
        Ok(EnrollResponse {
            sid: enrolled.sensor.sid,
            credential,
            tags: key.tags,
            reused: enrolled.reused,
            last_seq: enrolled.last_seq,
        })
    }

    async fn authenticate(&self, hello: &Hello, peer: &str) -> Result<RouteContext, Status> {
        check_text("instance_id", &hello.instance_id, true)?;
        check_text("hostname", &hello.hostname, false)?;
        check_text("internal_ip", &hello.internal_ip, false)?;
        check_text("sensor_version", &hello.sensor_version, false)?;
        check_text("tier", &hello.tier, false)?;
        if uuid::Uuid::parse_str(&hello.sid).is_err() {
            return Err(Status::unauthenticated(format!(
                "SID {:?} is not a UUID; enroll first",
                hello.sid
            )));
        }

        let sid = hello.sid.clone();
        let sensor = self
            .blocking(move |s| s.sensor(&sid))
            .await?
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "sensor {} is not known to this server; enroll again",
                    hello.sid
                ))
            })?;
        if !auth::secret_matches(&hello.credential, &sensor.credential_sha256) {
            return Err(Status::unauthenticated(format!(
                "the credential does not match sensor {}; it was replaced by a later enrollment or belongs to another sensor; enroll again",
                hello.sid
            )));
        }

        let hostname = if hello.hostname.is_empty() {
            sensor.hostname.clone()
        } else {
            hello.hostname.clone()
        };
        let int_ip = if hello.internal_ip.is_empty() {
            sensor.int_ip.clone()
        } else {
            hello.internal_ip.clone()
        };
        Ok(RouteContext {
            sensor,
            hostname,
            ext_ip: peer.to_owned(),
            int_ip,
        })
    }

    async fn report_clone(&self, context: &RouteContext, hello: &Hello, clone: &CloneOf) {
        let sid = &context.sensor.sid;
        tracing::warn!(
            %sid,
            live_instance = %clone.instance_id,
            live_ip = %clone.ext_ip,
            new_instance = %hello.instance_id,
            new_ip = %context.ext_ip,
            "sensor clone detected, second stream rejected"
        );

        let mut record = Record::new(SENSOR_CLONE, &context.hostname);
        record
            .set("SID", sid.as_str())
            .set("LIVE_INSTANCE_ID", clone.instance_id.as_str())
            .set("LIVE_EXT_IP", clone.ext_ip.as_str())
            .set("NEW_INSTANCE_ID", hello.instance_id.as_str())
            .set("NEW_EXT_IP", context.ext_ip.as_str())
            .set("NEW_HOSTNAME", hello.hostname.as_str());
        let row = route_bytes(context, record.to_json_line().as_bytes()).expect("a Record routes");
        let batch = BatchWrite {
            sensor_num: context.sensor.num,
            org_num: context.sensor.org_num,
            seq: None,
            events: vec![row],
            received_ms: now_ms(),
        };
        match self.writer.submit(batch).await {
            Ok(rx) => {
                if let Ok(Err(error)) = rx.await {
                    tracing::error!(%sid, error = %error_chain(error.as_ref()), "storing the sensor_clone event failed");
                }
            }
            Err(error) => tracing::error!(%sid, %error, "storing the sensor_clone event failed"),
        }
    }
}

/// One authenticated stream.
struct Session {
    ingest: Ingest,
    context: RouteContext,
    out: mpsc::Sender<Result<ServerMessage, Status>>,
}

type PendingAck = (u64, oneshot::Receiver<WriteResult>);

impl Session {
    async fn run(self, inbound: Streaming<SensorMessage>, token: u64, tasks: Arc<Notify>) {
        let sid = self.context.sensor.sid.clone();
        let (pending_tx, pending_rx) = mpsc::channel::<PendingAck>(1024);
        let (stop_tasks, stopped) = oneshot::channel::<()>();

        let pusher = tokio::spawn(push_tasks(
            self.ingest.store.clone(),
            sid.clone(),
            self.out.clone(),
            tasks,
            stopped,
        ));
        let acker = send_acks(sid.clone(), pending_rx, self.out.clone());
        let reader = self.read(inbound, pending_tx);
        let (batches, ()) = tokio::join!(reader, acker);
        let _ = stop_tasks.send(());
        let _ = pusher.await;

        let ingest = self.ingest;
        if ingest.live.unregister(&sid, token) {
            let sid_offline = sid.clone();
            if let Err(status) = ingest.blocking(move |s| s.set_offline(&sid_offline)).await {
                tracing::warn!(%sid, %status, "marking sensor offline failed");
            }
        }
        tracing::info!(%sid, batches, "sensor disconnected");
    }

    /// Reads batches until the stream ends; returns how many were read.
    async fn read(
        &self,
        mut inbound: Streaming<SensorMessage>,
        pending: mpsc::Sender<PendingAck>,
    ) -> u64 {
        let sid = &self.context.sensor.sid;
        let mut batches = 0u64;
        let mut last_backoff_ms = 0u64;
        loop {
            let message = match inbound.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    // Garbage, truncated or oversized frames end up here; only
                    // this sensor's stream ends.
                    tracing::warn!(%sid, code = ?status.code(), reason = status.message(), "sensor stream failed");
                    let reply = Status::new(
                        status.code(),
                        format!("the stream failed: {}", status.message()),
                    );
                    let _ = self.out.send(Err(reply)).await;
                    break;
                }
            };
            match message.body {
                Some(SensorBody::Batch(batch)) => {
                    batches += 1;
                    if self.ingest.writer.is_saturated()
                        && now_ms().saturating_sub(last_backoff_ms) > 5000
                    {
                        last_backoff_ms = now_ms();
                        let advice = Backoff {
                            seconds: 1,
                            reason: "the server's write queue is full".into(),
                        };
                        let _ = self.out.try_send(Ok(message_backoff(advice)));
                    }
                    let seq = batch.seq;
                    let Some(rx) = self.submit_batch(batch).await else {
                        break;
                    };
                    if pending.send((seq, rx)).await.is_err() {
                        break;
                    }
                }
                Some(SensorBody::TaskReply(reply)) => self.store_task_reply(reply).await,
                Some(SensorBody::Hello(_)) => {
                    let _ = self
                        .out
                        .send(Err(Status::invalid_argument(
                            "Hello may only be the first message",
                        )))
                        .await;
                    break;
                }
                None => {
                    let _ = self
                        .out
                        .send(Err(Status::invalid_argument("a message without a body")))
                        .await;
                    break;
                }
            }
        }
        batches
    }

    async fn submit_batch(&self, batch: Batch) -> Option<oneshot::Receiver<WriteResult>> {
        let sid = &self.context.sensor.sid;
        let (events, invalid) = route_batch(&self.context, batch.records);
        if invalid > 0 {
            tracing::warn!(%sid, seq = batch.seq, invalid, "records that are not valid event JSON were dropped");
        }
        let write = BatchWrite {
            sensor_num: self.context.sensor.num,
            org_num: self.context.sensor.org_num,
            seq: Some(batch.seq),
            events,
            received_ms: now_ms(),
        };
        match self.ingest.writer.submit(write).await {
            Ok(rx) => Some(rx),
            Err(error) => {
                let _ = self
                    .out
                    .send(Err(Status::unavailable(error.to_string())))
                    .await;
                None
            }
        }
    }

    async fn store_task_reply(&self, reply: TaskReply) {
        let sid = self.context.sensor.sid.clone();
        let task_id = reply.task_id.clone();
        let task = match self.ingest.blocking(move |s| s.task(&task_id)).await {
            Ok(Some(task)) if task.sid == sid => task,
            Ok(_) => {
                tracing::warn!(%sid, task = %reply.task_id, "reply for a task this sensor was not given; ignored");
                return;
            }
            Err(_) => return,
        };

        let (events, invalid) = route_batch(&self.context, reply.records);
        if invalid > 0 {
            tracing::warn!(%sid, task = %task.id, invalid, "records that are not valid event JSON were dropped");
        }
        let write = BatchWrite {
            sensor_num: self.context.sensor.num,
            org_num: self.context.sensor.org_num,
            seq: None,
            events,
            received_ms: now_ms(),
        };
        let stored = match self.ingest.writer.submit(write).await {
            Ok(rx) => matches!(rx.await, Ok(Ok(_))),
            Err(_) => false,
        };
        let (state, error) = match (stored, reply.error.is_empty()) {
            (false, _) => ("failed", "the server could not store the reply".to_owned()),
            (true, true) => ("done", String::new()),
            (true, false) => ("failed", reply.error),
        };
        let task_id = task.id.clone();
        let state = state.to_owned();
        let _ = self
            .ingest
            .blocking(move |s| s.set_task_state(&task_id, &state, &error))
            .await;
    }
}

fn message_backoff(backoff: Backoff) -> ServerMessage {
    message(ServerBody::Backoff(backoff))
}

/// Acknowledges batches in the order they arrived, each once it is stored.
async fn send_acks(
    sid: String,
    mut pending: mpsc::Receiver<PendingAck>,
    out: mpsc::Sender<Result<ServerMessage, Status>>,
) {
    while let Some((seq, rx)) = pending.recv().await {
        let reply = match rx.await {
            Ok(Ok(_)) => Ok(message(ServerBody::Ack(Ack { seq }))),
            Ok(Err(error)) if error.is_disk_full() => {
                tracing::warn!(%sid, seq, "batch not acknowledged, storage is full");
                let advice = Backoff {
                    seconds: DISK_FULL_BACKOFF_SECS,
                    reason: error.to_string(),
                };
                let _ = out.send(Ok(message_backoff(advice))).await;
                Err(Status::resource_exhausted(format!(
                    "batch {seq} was not stored: {error}; keep it and send it again later"
                )))
            }
            Ok(Err(error)) => {
                tracing::warn!(%sid, seq, error = %error_chain(error.as_ref()), "batch not acknowledged, write failed");
                let rejected = Rejected {
                    reason: format!("batch {seq} was not stored; send it again"),
                    fatal: false,
                };
                let _ = out.send(Ok(message(ServerBody::Rejected(rejected)))).await;
                Err(Status::internal(format!(
                    "batch {seq} was not stored; send it again"
                )))
            }
            Err(_) => Err(Status::unavailable("the server is shutting down")),
        };
        let failed = reply.is_err();
        if out.send(reply).await.is_err() || failed {
            break;
        }
    }
}

async fn push_tasks(
    store: Arc<dyn Store>,
    sid: String,
    out: mpsc::Sender<Result<ServerMessage, Status>>,
    wake: Arc<Notify>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let store_for_call = store.clone();
        let sid_for_call = sid.clone();
        let pending =
            tokio::task::spawn_blocking(move || store_for_call.pending_tasks(&sid_for_call)).await;
        match pending {
            Ok(Ok(tasks)) => {
                for task in tasks {
                    let body = ServerBody::Task(Task {
                        task_id: task.id.clone(),
                        command: task.command.clone(),
                    });
                    if out.send(Ok(message(body))).await.is_err() {
                        return;
                    }
                    if let Err(error) = store.set_task_state(&task.id, "sent", "") {
                        tracing::warn!(%sid, task = %task.id, error = %error_chain(&error), "marking task sent failed");
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%sid, error = %error_chain(&error), "reading pending tasks failed")
            }
            Err(_) => return,
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(TASK_POLL) => {}
        }
    }
}

/// Routes each record of a batch; returns the rows and the count of
/// records that were not valid event JSON.
fn route_batch(context: &RouteContext, records: Vec<Vec<u8>>) -> (Vec<EventRow>, usize) {
    let mut rows = Vec::with_capacity(records.len());
    let mut invalid = 0;
    for bytes in records {
        match route_bytes(context, &bytes) {
            Some(row) => rows.push(row),
            None => invalid += 1,
        }
    }
    (rows, invalid)
}

/// A record as received: the routing is rewritten, the event object is
/// kept byte for byte and only scanned for the indexed fields.
#[derive(Deserialize)]
struct IncomingRecord<'a> {
    routing: Routing,
    #[serde(borrow)]
    event: &'a RawValue,
}

#[derive(Deserialize)]
struct IndexedFields<'a> {
    #[serde(rename = "CONTAINER", default, borrow)]
    container: Option<ContainerFields<'a>>,
}

#[derive(Deserialize)]
struct ContainerFields<'a> {
    #[serde(rename = "ID", default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "NAME", default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(rename = "POD_NAME", default, borrow)]
    pod_name: Option<Cow<'a, str>>,
    #[serde(rename = "POD_NAMESPACE", default, borrow)]
    pod_namespace: Option<Cow<'a, str>>,
}

/// Overwrites the server-owned routing fields and extracts indexed columns;
/// `None` when the bytes are not a record with an event object.
fn route_bytes(context: &RouteContext, bytes: &[u8]) -> Option<EventRow> {
    let incoming: IncomingRecord<'_> = serde_json::from_slice(bytes).ok()?;
    let indexed: IndexedFields<'_> = serde_json::from_str(incoming.event.get()).ok()?;
    let mut routing = incoming.routing;

    let sensor = &context.sensor;
    routing.oid = Some(sensor.org_id.clone());
    routing.sid = Some(sensor.sid.clone());
    routing.iid = Some(sensor.iid.clone());
    routing.hostname = context.hostname.clone();
    routing.tags = Some(sensor.tags.clone());
    routing.ext_ip = Some(context.ext_ip.clone());
    routing.int_ip = Some(context.int_ip.clone());
    if routing.event_id.is_empty() {
        routing.event_id = uuid::Uuid::new_v4().to_string();
    }

    let mut record = Vec::with_capacity(bytes.len() + 256);
    record.extend_from_slice(b"{\"routing\":");
    serde_json::to_writer(&mut record, &routing).ok()?;
    record.extend_from_slice(b",\"event\":");
    record.extend_from_slice(incoming.event.get().as_bytes());
    record.push(b'}');
    let record = String::from_utf8(record).ok()?;

    let container = indexed.container;
    let owned = |field: Option<&Cow<'_, str>>| field.map(|v| v.clone().into_owned());
    Some(EventRow {
        event_type: routing.event_type,
        event_time: routing.event_time,
        event_id: routing.event_id,
        container_id: owned(container.as_ref().and_then(|c| c.id.as_ref())),
        container_name: owned(container.as_ref().and_then(|c| c.name.as_ref())),
        pod_name: owned(container.as_ref().and_then(|c| c.pod_name.as_ref())),
        pod_namespace: owned(container.as_ref().and_then(|c| c.pod_namespace.as_ref())),
        record,
    })
}
