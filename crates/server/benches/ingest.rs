//! Platform benchmark: prints figures, asserts nothing about speed.
//!
//!     cargo bench -p picket-server --bench ingest
//!
//! 1. Ingest: many simulated sensors stream realistic process events over
//!    gRPC/TLS on loopback into an in-process server. It reports sustained
//!    events/s from the first batch sent to the last ack and checks that
//!    every event was stored (no loss).
//! 2. Storage: bytes on disk per stored event.
//! 3. Queries over a large store filled directly through the store's batch
//!    writer (not over gRPC, to keep the fill time down): (sensor, event
//!    type, one-hour window) and a field match, each repeated and reported as
//!    median and maximum.
//!
//! Environment: BENCH_SENSORS (default 16), BENCH_EVENTS (ingest events,
//! default 1,000,000), BENCH_BATCH (events per batch, default 500),
//! BENCH_FILL (events in the query store, default 10,000,000), BENCH_DIR
//! (where the query store lives; reused when it already holds BENCH_FILL
//! events; default a fresh directory under the system temp dir, removed at
//! the end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use picket_event::key::InstallationKey;
use picket_event::proto::sensor_client::SensorClient;
use picket_event::proto::sensor_message::Body as SensorBody;
use picket_event::proto::server_message::Body as ServerBody;
use picket_event::proto::{Batch, EnrollRequest, Hello, SensorMessage};
use picket_server::admin;
use picket_server::filter::{parse_match, EventQuery};
use picket_server::serve::{self, ServeConfig};
use picket_server::store::{BatchWrite, EventRow, SqliteStore, Store};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

const HOUR_MS: u64 = 3_600_000;

const COMMANDS: [(&str, &str); 6] = [
    (
        "/usr/bin/python3.11",
        "python3 /app/worker.py --queue jobs-{n} --concurrency 4",
    ),
    (
        "/usr/local/bin/node",
        "node /srv/app/server.js --port 30{n} --env production",
    ),
    (
        "/bin/sh",
        "/bin/sh -c /usr/local/bin/healthcheck --timeout 5 --target 127.0.0.1:80{n}",
    ),
    (
        "/usr/bin/curl",
        "curl -fsS -o /dev/null -w %{http_code} http://svc-{n}.shop.svc.cluster.local/healthz",
    ),
    ("/usr/sbin/nginx", "nginx: worker process {n}"),
    (
        "/usr/bin/git",
        "git -C /var/lib/builds/{n} fetch --depth 1 origin main",
    ),
];

const EVENT_TYPES: [&str; 5] = [
    "NEW_PROCESS",
    "TERMINATE_PROCESS",
    "NEW_TCP4_CONNECTION",
    "DNS_REQUEST",
    "FILE_CREATE",
];

/// Formats a process event of the size and shape the sensor produces
/// (about 1 KiB of JSON with parent and container objects).
fn process_record(event_type: &str, host: &str, time_ms: u64, n: u64, id: &str) -> String {
    let (path, command) = COMMANDS[(n % COMMANDS.len() as u64) as usize];
    let command = command.replace("{n}", &(n % 97).to_string());
    let pid = 1000 + n % 60_000;
    let this = picket_event::atom::process_atom("b7e1c3a0", pid as u32, n);
    let parent = picket_event::atom::process_atom("b7e1c3a0", 1, 0);
    format!(
        concat!(
            r#"{{"routing":{{"event_type":"{event_type}","event_time":{time},"event_id":"{id}","hostname":"{host}","this":"{this}","parent":"{parent}"}},"#,
            r#""event":{{"PROCESS_ID":{pid},"PARENT_PROCESS_ID":{ppid},"FILE_PATH":"{path}","COMMAND_LINE":"{command}","#,
            r#""USER_ID":1000,"USER_NAME":"app","HASH":"{hash}","THREADS":4,"#,
            r#""PARENT":{{"PROCESS_ID":{ppid},"FILE_PATH":"/usr/bin/containerd-shim-runc-v2","COMMAND_LINE":"/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id {cid}"}},"#,
            r#""CONTAINER":{{"ID":"{cid}","NAME":"web-{c}","IMAGE":"registry.local/shop/web:1.{c}","RUNTIME":"containerd","POD_NAME":"web-7d9f-{c}","POD_NAMESPACE":"shop","POD_UID":"0f8e2d7c-1b3a-4c5d-9e6f-7a8b9c0d1e2f","K8S_CONTAINER_NAME":"web"}}}}}}"#
        ),
        event_type = event_type,
        time = time_ms,
        id = id,
        host = host,
        this = this,
        parent = parent,
        pid = pid,
        ppid = 1 + n % 50,
        path = path,
        command = command,
        hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        cid = format!("{:064x}", n % 40),
        c = n % 40,
    )
}

/// CPU time this process has used (user + system), in seconds, from
/// `/proc/self/stat` fields 14 and 15 (clock ticks, 100 per second on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Field 14 (utime) is index 11 after the name and the state field.
    (ticks(11) + ticks(12)) / 100.0
}

struct IngestFigures {
    events: u64,
    seconds: f64,
    cpu_seconds: f64,
    stored: u64,
    bytes: u64,
}

fn main() {
    let sensors = env_u64("BENCH_SENSORS", 16);
    let events = env_u64("BENCH_EVENTS", 1_000_000);
    let batch = env_u64("BENCH_BATCH", 500);
    let fill = env_u64("BENCH_FILL", 10_000_000);

    if events > 0 {
        let ingest = run_ingest(sensors, events, batch);
        println!(
            "platform ingest: {} sensors, {} events in batches of {}",
            sensors, ingest.events, batch
        );
        println!(
            "  sustained ingest      {:>10.0} events/s ({:.1} s)",
            ingest.events as f64 / ingest.seconds,
            ingest.seconds
        );
        println!(
            "  CPU per event         {:>10.1} µs (sensors and server together; {:.1} CPU-s in total)",
            ingest.cpu_seconds * 1e6 / ingest.events as f64,
            ingest.cpu_seconds
        );
        println!(
            "  stored                {:>10} of {} sent (lost: {})",
            ingest.stored,
            ingest.events,
            ingest.events - ingest.stored.min(ingest.events)
        );
        println!(
            "  bytes per event       {:>10.0} (database and WAL after checkpoint)",
            ingest.bytes as f64 / ingest.stored.max(1) as f64
        );
    }

    if fill > 0 {
        run_queries(fill);
    }
}

fn run_ingest(sensors: u64, events: u64, batch: u64) -> IngestFigures {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut out = Vec::new();
    admin::org_create(dir.path(), "bench", &mut out).unwrap();
    let opts = admin::KeyCreate {
        org: "bench",
        tags: vec!["bench".into()],
        description: "bench",
        url: None,
        cert_sans: &[],
    };
    out.clear();
    admin::key_create(dir.path(), opts, &mut out).unwrap();
    let key = InstallationKey::decode(std::str::from_utf8(&out).unwrap()).unwrap();

    // The server and the simulated sensors get separate runtimes, as two
    // processes would, and share the machine's cores.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = ServeConfig {
        data_dir: dir.path().to_owned(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        advertise_url: None,
        cert_sans: Vec::new(),
        min_free_bytes: 0,
    };
    let server = server_rt
        .block_on(serve::start(config))
        .expect("server starts");
    let addr = server.grpc_addr;

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let per_sensor = events / sensors;
    let pem = std::fs::read(dir.path().join("server.crt")).unwrap();
    let cpu_before = cpu_seconds();
    let seconds = client_rt.block_on(async {
        let mut tasks = Vec::new();
        let t0 = Instant::now();
        for s in 0..sensors {
            let key = key.clone();
            let pem = pem.clone();
            tasks.push(tokio::spawn(async move {
                simulate_sensor(addr, pem, key, s, per_sensor, batch).await
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        t0.elapsed().as_secs_f64()
    });

    let cpu_used = cpu_seconds() - cpu_before;
    let store = server.store.clone();
    server_rt.block_on(server.shutdown());
    let (stored, _) = store.usage().unwrap();
    drop(store);
    let checkpointed = rusqlite::Connection::open(dir.path().join("picket.db")).unwrap();
    checkpointed
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    drop(checkpointed);
    let bytes: u64 = ["picket.db", "picket.db-wal"]
        .iter()
        .map(|f| {
            std::fs::metadata(dir.path().join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    IngestFigures {
        events: per_sensor * sensors,
        seconds,
        cpu_seconds: cpu_used,
        stored,
        bytes,
    }
}

/// Runs one simulated sensor. It enrolls, opens a stream, keeps up to 8
/// batches in flight and waits for every ack.
async fn simulate_sensor(
    addr: std::net::SocketAddr,
    pem: Vec<u8>,
    key: InstallationKey,
    index: u64,
    events: u64,
    batch: u64,
) {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = SensorClient::new(channel);
    let host = format!("node-{index:03}");
    let enrolled = client
        .enroll(EnrollRequest {
            org_id: key.org_id.clone(),
            key_id: key.key_id.clone(),
            secret: key.secret.clone().into_bytes(),
            hostname: host.clone(),
            host_identity: format!("bench-{index}"),
            sensor_version: "bench".into(),
            internal_ip: "10.1.0.1".into(),
        })
        .await
        .unwrap()
        .into_inner();

    let (tx, rx) = mpsc::channel(64);
    tx.send(SensorMessage {
        body: Some(SensorBody::Hello(Hello {
            sid: enrolled.sid,
            credential: enrolled.credential,
            instance_id: format!("bench-{index}"),
            hostname: host.clone(),
            internal_ip: "10.1.0.1".into(),
            sensor_version: "bench".into(),
            first_unacked_seq: 0,
            tier: "bench".into(),
        })),
    })
    .await
    .unwrap();
    let mut replies = client
        .stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    let batches = events.div_ceil(batch);
    let window = Arc::new(tokio::sync::Semaphore::new(8));
    let sender = {
        let window = window.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let mut n = index * 1_000_000_000;
            for seq in 1..=batches {
                window.acquire().await.unwrap().forget();
                let now = picket_event::record::now_ms();
                let records = (0..batch)
                    .map(|_| {
                        n += 1;
                        process_record(
                            "NEW_PROCESS",
                            &host,
                            now,
                            n,
                            &uuid::Uuid::new_v4().to_string(),
                        )
                        .into_bytes()
                    })
                    .collect();
                let message = SensorMessage {
                    body: Some(SensorBody::Batch(Batch { seq, records })),
                };
                if tx.send(message).await.is_err() {
                    return;
                }
            }
            // Keep the stream open until the receiver saw the last ack.
            std::future::pending::<()>().await;
        })
    };

    let mut acked = 0;
    while acked < batches {
        let message = tokio::time::timeout(Duration::from_secs(120), replies.message())
            .await
            .expect("ack within 120 s")
            .expect("stream healthy")
            .expect("stream open");
        match message.body {
            Some(ServerBody::Ack(ack)) => {
                let newly = ack.seq - acked;
                acked = ack.seq;
                window.add_permits(newly as usize);
            }
            Some(ServerBody::Backoff(_)) => {}
            other => panic!("unexpected server message {other:?}"),
        }
    }
    sender.abort();
}

fn run_queries(fill: u64) {
    let (dir, _guard) = match std::env::var("BENCH_DIR") {
        Ok(dir) => (std::path::PathBuf::from(dir), None),
        Err(_) => {
            let temp = tempfile::tempdir().unwrap();
            (temp.path().to_owned(), Some(temp))
        }
    };
    let store = SqliteStore::open(&dir, 0).unwrap();
    let (existing, _) = store.usage().unwrap();
    const SENSORS: u64 = 100;
    let day_start = 1_796_342_400_000u64; // 2026-12-04T00:00:00Z
    let span_ms = 24 * HOUR_MS;

    if existing < fill {
        let org = store
            .create_org(&format!("fill-{}", uuid::Uuid::new_v4()))
            .unwrap();
        let key = store
            .create_installation_key(&org.id, &[], "fill", [0; 32])
            .unwrap();
        let mut sensors = Vec::new();
        for s in 0..SENSORS {
            let enrolled = store
                .enroll(&picket_server::store::Enrollment {
                    org_id: org.id.clone(),
                    key_id: key.id.clone(),
                    host_identity: format!("fill-{s}"),
                    hostname: format!("fill-{s:03}"),
                    tags: vec![],
                    version: "bench".into(),
                    int_ip: String::new(),
                    credential_sha256: [0; 32],
                })
                .unwrap();
            sensors.push(enrolled.sensor);
        }

        let t0 = Instant::now();
        let mut written = existing;
        let mut n = existing;
        let chunk = 2_000;
        while written < fill {
            let mut batches = Vec::new();
            for _ in 0..10 {
                let sensor = &sensors[(n / chunk % SENSORS) as usize];
                let events: Vec<EventRow> = (0..chunk)
                    .map(|_| {
                        n += 1;
                        // Event times rise through one day as they do on a live
                        // fleet, with sensors taking turns in chunks.
                        let time = day_start + n * span_ms / fill;
                        let event_type = EVENT_TYPES[(n % EVENT_TYPES.len() as u64) as usize];
                        let id = uuid::Uuid::new_v4().to_string();
                        let record = process_record(event_type, &sensor.hostname, time, n, &id);
                        EventRow {
                            event_type: event_type.into(),
                            event_time: time,
                            event_id: id,
                            container_id: Some(format!("{:064x}", n % 40)),
                            container_name: Some(format!("web-{}", n % 40)),
                            pod_name: Some(format!("web-7d9f-{}", n % 40)),
                            pod_namespace: Some("shop".into()),
                            record,
                        }
                    })
                    .collect();
                batches.push(BatchWrite {
                    sensor_num: sensor.num,
                    org_num: sensor.org_num,
                    seq: None,
                    events,
                    received_ms: 0,
                });
            }
            store.write_batches(&batches).unwrap();
            written += 10 * chunk;
            if written % 1_000_000 == 0 {
                eprintln!(
                    "filled {written} events, {:.0} s",
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        println!(
            "query store fill: {} events in {:.0} s ({:.0} events/s, direct batch writes)",
            written - existing,
            t0.elapsed().as_secs_f64(),
            (written - existing) as f64 / t0.elapsed().as_secs_f64()
        );
    }

    let (count, bytes) = store.usage().unwrap();
    println!(
        "query store: {count} events, {:.1} GiB, {:.0} bytes per event",
        bytes as f64 / (1u64 << 30) as f64,
        bytes as f64 / count as f64
    );

    let sensor = store
        .list_sensors(None)
        .unwrap()
        .into_iter()
        .find(|s| s.hostname == "fill-042")
        .expect("fill sensor");
    let hour = EventQuery {
        org_id: Some(sensor.org_id.clone()),
        sensor: Some(sensor.sid.clone()),
        event_type: Some("NEW_PROCESS".into()),
        from_ms: Some(day_start + 10 * HOUR_MS),
        to_ms: Some(day_start + 11 * HOUR_MS),
        limit: 100_000,
        ..Default::default()
    };
    measure("sensor + type + 1 h window (all rows)", &store, &hour);
    let newest = EventQuery {
        limit: 100,
        ..hour.clone()
    };
    measure("sensor + type + 1 h window (newest 100)", &store, &newest);

    let rare = EventQuery {
        org_id: Some(sensor.org_id.clone()),
        matches: vec![
            parse_match("event/COMMAND_LINE contains git -C /var/lib/builds/13 ").unwrap(),
        ],
        from_ms: Some(day_start + 10 * HOUR_MS),
        to_ms: Some(day_start + 11 * HOUR_MS),
        limit: 100,
        ..Default::default()
    };
    measure(
        "field match, 1 h window, org-wide (newest 100)",
        &store,
        &rare,
    );
    let whole = EventQuery {
        org_id: Some(sensor.org_id.clone()),
        matches: vec![parse_match("event/COMMAND_LINE contains no-such-command").unwrap()],
        limit: 100,
        ..Default::default()
    };
    measure(
        "field match, no time window, no hit (full scan)",
        &store,
        &whole,
    );
}

fn measure(name: &str, store: &SqliteStore, query: &EventQuery) {
    let mut runs = if query.from_ms.is_some() { 9 } else { 3 };
    let mut times = Vec::new();
    let mut rows = 0;
    for run in 0..runs {
        // One run is enough for a query that takes more than 30 s.
        if run == 1 && times[0] > 30_000.0 {
            runs = 1;
            break;
        }
        let t0 = Instant::now();
        rows = store.query_events(query).unwrap().len();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "  {name:<50} median {:>9.1} ms  max {:>9.1} ms  ({rows} rows, {runs} runs)",
        times[runs / 2],
        times[runs - 1]
    );
}
