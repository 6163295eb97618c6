//! `kill -9` of the server process in the middle of a stream: a client that
//! behaves like the sensor (keeps each batch until acknowledged, reconnects,
//! sends unacknowledged batches again) ends with every event stored exactly
//! once.

mod common;

use std::collections::{HashSet, VecDeque};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use picket_event::proto::sensor_client::SensorClient;
use picket_event::proto::server_message::Body as ServerBody;
use picket_event::Record;
use picket_server::filter::EventQuery;
use picket_server::store::Store;

const BATCHES: u64 = 120;
const EVENTS_PER_BATCH: u64 = 100;
/// Batches acknowledged before the server is killed.
const KILL_AFTER_ACKS: usize = 40;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_server(dir: &std::path::Path, grpc: u16, http: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_picket-server"))
        .args(["--data", dir.to_str().unwrap(), "serve"])
        .args([
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
        ])
        .args(["--min-free-mb", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting picket-server")
}

async fn connect(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
) -> SensorClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pem = std::fs::read(dir.join("server.crt")).unwrap();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .domain_name("localhost");
        let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        match channel.connect().await {
            Ok(channel) => return SensorClient::new(channel),
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("server did not come back within 30 s: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_stores_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let (org_id, key) = org_with_key(dir.path(), "acme", &[]);
    let (grpc, http) = (free_port(), free_port());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{grpc}").parse().unwrap();
    let mut server = spawn_server(dir.path(), grpc, http);

    let mut client = connect(dir.path(), addr).await;
    let enrolled = enroll(&mut client, &key, "node-1").await;

    let mut produced: HashSet<String> = HashSet::new();
    let mut unacked: VecDeque<(u64, Vec<Record>)> = VecDeque::new();
    let mut next_seq = 1u64;
    let mut acked_batches = 0usize;
    let mut killed = false;
    let mut reconnects = 0;

    'connection: while next_seq <= BATCHES || !unacked.is_empty() {
        let mut stream =
            match open_stream(&mut client, hello(&enrolled, "instance-a", "node-1")).await {
                Ok(stream) => stream,
                Err(_) => {
                    reconnects += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    client = connect(dir.path(), addr).await;
                    continue;
                }
            };
        // Everything not yet acknowledged goes again, oldest first.
        for (seq, records) in &unacked {
            if stream.tx.send(batch(*seq, records)).await.is_err() {
                continue 'connection;
            }
        }

        loop {
            if next_seq <= BATCHES && unacked.len() < 16 {
                let records: Vec<Record> = (0..EVENTS_PER_BATCH)
                    .map(|n| process_event("node-1", next_seq * 1000 + n))
                    .collect();
                produced.extend(records.iter().map(|r| r.routing.event_id.clone()));
                let _ = stream.tx.send(batch(next_seq, &records)).await;
                unacked.push_back((next_seq, records));
                next_seq += 1;
                continue;
            }
            if unacked.is_empty() {
                break 'connection;
            }

            let message = tokio::time::timeout(Duration::from_secs(20), stream.rx.message()).await;
            match message {
                Ok(Ok(Some(message))) => {
                    if let Some(ServerBody::Ack(ack)) = message.body {
                        while unacked.front().is_some_and(|(seq, _)| *seq <= ack.seq) {
                            unacked.pop_front();
                            acked_batches += 1;
                        }
                    }
                }
                _ => {
                    reconnects += 1;
                    continue 'connection;
                }
            }

            if !killed && acked_batches >= KILL_AFTER_ACKS {
                killed = true;
                server.kill().expect("SIGKILL to the server");
                server.wait().unwrap();
                server = spawn_server(dir.path(), grpc, http);
                client = connect(dir.path(), addr).await;
                reconnects += 1;
                continue 'connection;
            }
        }
    }
    assert!(killed, "the server was killed mid-stream");
    assert!(reconnects >= 1);

    server.kill().unwrap();
    server.wait().unwrap();
    let store = picket_server::store::SqliteStore::open(dir.path(), 0).unwrap();
    let query = EventQuery {
        org_id: Some(org_id),
        event_type: Some("NEW_PROCESS".into()),
        limit: 100_000,
        ..Default::default()
    };
    let stored = store.query_events(&query).unwrap();
    let ids: Vec<String> = stored
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.record).unwrap()["routing"]["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let distinct: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(produced.len() as u64, BATCHES * EVENTS_PER_BATCH);
    assert_eq!(distinct, produced, "every produced event is stored");
    assert_eq!(ids.len(), produced.len(), "no event is stored twice");
}
