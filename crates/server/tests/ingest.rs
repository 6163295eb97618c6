//! Enrollment and streaming against an in-process server over real TLS on
//! loopback, with a gRPC client that behaves like a sensor.

mod common;

use common::*;
use picket_event::proto::server_message::Body as ServerBody;
use picket_server::filter::EventQuery;
use tonic::Code;

fn all_events(org_id: &str) -> EventQuery {
    EventQuery {
        org_id: Some(org_id.to_owned()),
        limit: 100_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_stores_routed_events_once() {
    let dir = tempfile::tempdir().unwrap();
    let (org_id, key) = org_with_key(dir.path(), "acme", &["prod", "web"]);
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.grpc_addr).await;

    let enrolled = enroll(&mut client, &key, "node-1").await;
    assert!(!enrolled.reused);
    assert_eq!(enrolled.tags, ["prod", "web"]);
    assert_eq!(enrolled.last_seq, 0);

    let mut stream = open_stream(&mut client, hello(&enrolled, "instance-a", "node-1"))
        .await
        .unwrap();
    let first: Vec<_> = (0..3).map(|n| process_event("forged-host", n)).collect();
    stream.tx.send(batch(1, &first)).await.unwrap();
    stream.wait_ack(1).await.unwrap();
    // The same batch again, as a sensor sends it when an ack was lost.
    stream.tx.send(batch(1, &first)).await.unwrap();
    stream.wait_ack(1).await.unwrap();
    let second: Vec<_> = (3..5).map(|n| process_event("forged-host", n)).collect();
    stream.tx.send(batch(2, &second)).await.unwrap();
    stream.wait_ack(2).await.unwrap();

    let events = server.store.query_events(&all_events(&org_id)).unwrap();
    assert_eq!(events.len(), 5, "5 distinct events stored once each");
    for event in &events {
        let value: serde_json::Value = serde_json::from_str(&event.record).unwrap();
        let routing = &value["routing"];
        assert_eq!(routing["oid"], org_id.as_str());
        assert_eq!(routing["sid"], enrolled.sid.as_str());
        assert_eq!(routing["iid"], key.key_id.as_str());
        assert_eq!(routing["hostname"], "node-1");
        assert_eq!(routing["tags"], serde_json::json!(["prod", "web"]));
        assert_eq!(routing["ext_ip"], "127.0.0.1");
        assert_eq!(routing["int_ip"], "10.0.0.5");
    }

    let sensors = server.store.list_sensors(Some(&org_id)).unwrap();
    assert_eq!(sensors.len(), 1);
    assert!(sensors[0].online);
    assert_eq!(sensors[0].tier, "procscan");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_reenrollment_keeps_sid() {
    let dir = tempfile::tempdir().unwrap();
    let (org_id, key) = org_with_key(dir.path(), "acme", &[]);
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.grpc_addr).await;

    let first = enroll(&mut client, &key, "node-1").await;
    let mut stream = open_stream(&mut client, hello(&first, "instance-a", "node-1"))
        .await
        .unwrap();
    stream
        .tx
        .send(batch(7, &[process_event("node-1", 0)]))
        .await
        .unwrap();
    stream.wait_ack(7).await.unwrap();
    drop(stream);

    let again = enroll(&mut client, &key, "node-1").await;
    assert_eq!(again.sid, first.sid, "same host and key keep their SID");
    assert!(again.reused);
    assert_eq!(
        again.last_seq, 7,
        "re-enrollment reports where numbering stands"
    );
    assert_ne!(again.credential, first.credential);

    let other = enroll(&mut client, &key, "node-2").await;
    assert_ne!(other.sid, first.sid, "another host gets its own SID");
    assert_eq!(server.store.list_sensors(Some(&org_id)).unwrap().len(), 2);

    // The first credential was replaced, so replaying it fails.
    let replay = open_stream(&mut client, hello(&first, "instance-b", "node-1")).await;
    let status = replay.err().expect("replayed credential rejected");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("credential does not match"),
        "{}",
        status.message()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_enrollments_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_org_a, key_a) = org_with_key(dir.path(), "acme", &[]);
    let (org_b, _key_b) = org_with_key(dir.path(), "globex", &[]);
    let revoked = new_key(dir.path(), "acme", &[]);
    picket_server::admin::key_revoke(dir.path(), &revoked.key_id, &mut Vec::new()).unwrap();
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.grpc_addr).await;

    let mut cases = Vec::new();
    let mut request = enroll_request(&key_a, "h");
    request.org_id = "not-a-uuid".into();
    cases.push((
        "malformed org id",
        request,
        Code::InvalidArgument,
        "is not a UUID",
    ));

    let mut request = enroll_request(&key_a, "h");
    request.key_id = uuid::Uuid::new_v4().to_string();
    cases.push((
        "unknown key",
        request,
        Code::PermissionDenied,
        "is not known",
    ));

    let mut request = enroll_request(&key_a, "h");
    request.secret = b"00".repeat(32);
    cases.push((
        "wrong secret",
        request,
        Code::Unauthenticated,
        "secret does not match",
    ));

    let mut request = enroll_request(&key_a, "h");
    request.org_id = org_b.clone();
    cases.push((
        "foreign key",
        request,
        Code::PermissionDenied,
        "does not belong to organisation",
    ));

    cases.push((
        "revoked key",
        enroll_request(&revoked, "h"),
        Code::PermissionDenied,
        "was revoked",
    ));

    let mut request = enroll_request(&key_a, "h");
    request.host_identity = String::new();
    cases.push((
        "missing host identity",
        request,
        Code::InvalidArgument,
        "host_identity is missing",
    ));

    let mut request = enroll_request(&key_a, "h");
    request.hostname = "evil\nhost".into();
    cases.push((
        "control characters",
        request,
        Code::InvalidArgument,
        "control characters",
    ));

    for (name, request, code, text) in cases {
        let status = client
            .enroll(request)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        assert_eq!(status.code(), code, "{name}: {}", status.message());
        assert!(
            status.message().contains(text),
            "{name}: {}",
            status.message()
        );
    }
    assert!(
        server.store.list_sensors(None).unwrap().is_empty(),
        "no sensor was created"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_rejected_and_server_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let (org_a, key_a) = org_with_key(dir.path(), "acme", &[]);
    let (_org_b, key_b) = org_with_key(dir.path(), "globex", &[]);
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.grpc_addr).await;
    let sensor_a = enroll(&mut client, &key_a, "node-a").await;
    let sensor_b = enroll(&mut client, &key_b, "node-b").await;

    // A batch before Hello.
    let status = open_stream(&mut client, batch(1, &[process_event("x", 0)]))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("must be Hello"),
        "{}",
        status.message()
    );

    // Sensor B's credential presented for sensor A's SID (another org).
    let mut forged = sensor_a.clone();
    forged.credential = sensor_b.credential.clone();
    let status = open_stream(&mut client, hello(&forged, "i", "node-a"))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A SID that does not exist.
    let mut unknown = sensor_a.clone();
    unknown.sid = uuid::Uuid::new_v4().to_string();
    let status = open_stream(&mut client, hello(&unknown, "i", "node-a"))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("not known"),
        "{}",
        status.message()
    );

    // An oversized batch ends that stream only.
    let mut stream = open_stream(&mut client, hello(&sensor_a, "i-a", "node-a"))
        .await
        .unwrap();
    let mut huge = process_event("node-a", 0);
    huge.set(
        "COMMAND_LINE",
        "A".repeat(picket_server::ingest::MAX_MESSAGE_BYTES + 1024),
    );
    stream.tx.send(batch(1, &[huge])).await.unwrap();
    let status = loop {
        match stream.next().await {
            Ok(Some(message)) => {
                assert!(
                    !matches!(message.body, Some(ServerBody::Ack(_))),
                    "oversized batch acknowledged"
                );
            }
            Ok(None) => panic!("stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );

    // Garbage over plain TCP and garbage inside TLS.
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff\xfe garbage")
        .await
        .unwrap();
    drop(raw);

    // A string in a field where the record needs a number is not valid event
    // JSON; it is dropped and counted, the rest of the batch is stored.
    let mut stream = open_stream(&mut client, hello(&sensor_a, "i-a2", "node-a"))
        .await
        .unwrap();
    let mut message = batch(2, &[process_event("node-a", 1)]);
    if let Some(picket_event::proto::sensor_message::Body::Batch(b)) = &mut message.body {
        b.records
            .push(b"{\"routing\": {\"event_time\": \"soon\"}}".to_vec());
        b.records.push(b"\x00\x01 not json".to_vec());
    }
    stream.tx.send(message).await.unwrap();
    stream.wait_ack(2).await.unwrap();

    let events = server
        .store
        .query_events(&EventQuery {
            org_id: Some(org_a),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        events.len(),
        1,
        "only the valid record of the mixed batch was stored"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_live_instance_is_reported_as_clone() {
    let dir = tempfile::tempdir().unwrap();
    let (org_id, key) = org_with_key(dir.path(), "acme", &[]);
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.grpc_addr).await;
    let enrolled = enroll(&mut client, &key, "node-1").await;

    let mut live = open_stream(&mut client, hello(&enrolled, "instance-a", "node-1"))
        .await
        .unwrap();
    live.tx
        .send(batch(1, &[process_event("node-1", 0)]))
        .await
        .unwrap();
    live.wait_ack(1).await.unwrap();

    let status = open_stream(&mut client, hello(&enrolled, "instance-b", "node-1"))
        .await
        .err()
        .expect("clone rejected");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().contains("instance-a"),
        "{}",
        status.message()
    );

    let query = EventQuery {
        org_id: Some(org_id),
        event_type: Some(picket_server::ingest::SENSOR_CLONE.into()),
        limit: 10,
        ..Default::default()
    };
    let clones = server.store.query_events(&query).unwrap();
    assert_eq!(clones.len(), 1, "one sensor_clone event stored");
    let value: serde_json::Value = serde_json::from_str(&clones[0].record).unwrap();
    assert_eq!(value["event"]["LIVE_INSTANCE_ID"], "instance-a");
    assert_eq!(value["event"]["NEW_INSTANCE_ID"], "instance-b");
    assert_eq!(value["routing"]["sid"], enrolled.sid.as_str());

    // The live sensor is unaffected, and the same instance may reconnect.
    live.tx
        .send(batch(2, &[process_event("node-1", 1)]))
        .await
        .unwrap();
    live.wait_ack(2).await.unwrap();
    drop(live);
    let mut again = open_stream(&mut client, hello(&enrolled, "instance-a", "node-1"))
        .await
        .unwrap();
    again
        .tx
        .send(batch(3, &[process_event("node-1", 2)]))
        .await
        .unwrap();
    again.wait_ack(3).await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_disk_space_rejects_without_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (org_id, key) = org_with_key(dir.path(), "acme", &[]);
    let mut config = config(dir.path());
    // More free space than any disk has: every write finds the disk full.
    config.min_free_bytes = u64::MAX / 2;
    let server = picket_server::serve::start(config).await.unwrap();
    let mut client = client(dir.path(), server.grpc_addr).await;
    let enrolled = enroll(&mut client, &key, "node-1").await;

    let mut stream = open_stream(&mut client, hello(&enrolled, "instance-a", "node-1"))
        .await
        .unwrap();
    stream
        .tx
        .send(batch(1, &[process_event("node-1", 0)]))
        .await
        .unwrap();
    let mut saw_backoff = false;
    let status = loop {
        match stream.next().await {
            Ok(Some(message)) => match message.body {
                Some(ServerBody::Ack(ack)) => {
                    panic!("batch {} acknowledged on a full disk", ack.seq)
                }
                Some(ServerBody::Backoff(backoff)) => {
                    assert!(backoff.reason.contains("reserve"), "{}", backoff.reason);
                    saw_backoff = true;
                }
                _ => {}
            },
            Ok(None) => panic!("stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert!(saw_backoff, "the sensor was asked to back off");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("send it again later"),
        "{}",
        status.message()
    );
    assert!(server
        .store
        .query_events(&EventQuery {
            org_id: Some(org_id),
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .is_empty());
    server.shutdown().await;
}
