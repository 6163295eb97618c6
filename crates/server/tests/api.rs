//! The HTTP API and the admin CLI against a server holding two
//! organisations: each API key reads only its own organisation.

mod common;

use std::time::Duration;

use common::*;
use picket_event::proto::sensor_message::Body as SensorBody;
use picket_event::proto::server_message::Body as ServerBody;
use picket_event::proto::{SensorMessage, TaskReply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_see_only_their_org() {
    let dir = tempfile::tempdir().unwrap();
    let (org_a, key_a) = org_with_key(dir.path(), "acme", &["a"]);
    let (org_b, key_b) = org_with_key(dir.path(), "globex", &["b"]);
    let api_a = api_key(dir.path(), &org_a);
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.grpc_addr).await;

    let sensor_a = enroll(&mut client, &key_a, "node-a").await;
    let sensor_b = enroll(&mut client, &key_b, "node-b").await;
    let mut stream_a = open_stream(&mut client, hello(&sensor_a, "ia", "node-a"))
        .await
        .unwrap();
    let mut stream_b = open_stream(&mut client, hello(&sensor_b, "ib", "node-b"))
        .await
        .unwrap();
    let events_a: Vec<_> = (0..5).map(|n| process_event("node-a", n)).collect();
    let events_b: Vec<_> = (0..5).map(|n| process_event("node-b", n)).collect();
    stream_a.tx.send(batch(1, &events_a)).await.unwrap();
    stream_b.tx.send(batch(1, &events_b)).await.unwrap();
    stream_a.wait_ack(1).await.unwrap();
    stream_b.wait_ack(1).await.unwrap();
    let http_addr = server.http_addr;

    let (status, body) = http(http_addr, "GET", "/api/v1/sensors", Some(&api_a), None).await;
    assert_eq!(status, 200, "{body}");
    let sensors: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sensors["sensors"].as_array().unwrap().len(), 1);
    assert_eq!(sensors["sensors"][0]["sid"], sensor_a.sid.as_str());
    assert_eq!(sensors["sensors"][0]["online"], true);

    let (status, body) = http(
        http_addr,
        "GET",
        "/api/v1/events?limit=1000",
        Some(&api_a),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| e["routing"]["oid"] == org_a.as_str()));

    for filter in [
        format!("sensor={}", sensor_b.sid),
        "sensor=node-b".to_owned(),
    ] {
        let (status, body) = http(
            http_addr,
            "GET",
            &format!("/api/v1/events?{filter}"),
            Some(&api_a),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body, "{\"events\":[]}",
            "{filter} leaked another org's events"
        );
    }

    let path = format!(
        "/api/v1/events?type=NEW_PROCESS&container=web-1&pod=web-7d9f&namespace=shop&since=1h&match={}",
        encode("event/COMMAND_LINE ends with /3")
    );
    let (status, body) = http(http_addr, "GET", &path, Some(&api_a), None).await;
    assert_eq!(status, 200, "{body}");
    let found: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["events"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(
        found["events"][0]["event"]["COMMAND_LINE"],
        "curl -s https://example.invalid/3"
    );

    let (status, body) = http(
        http_addr,
        "GET",
        "/api/v1/events?match=COMMAND_LINE%20has%20x",
        Some(&api_a),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid --match"), "{body}");
    let (status, body) = http(
        http_addr,
        "GET",
        "/api/v1/events?since=yesterday",
        Some(&api_a),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid duration"), "{body}");
    let (status, body) = http(
        http_addr,
        "GET",
        "/api/v1/events?colour=red",
        Some(&api_a),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown query parameter"), "{body}");

    let (status, _) = http(http_addr, "GET", "/api/v1/events", None, None).await;
    assert_eq!(status, 401);
    let forged = format!(
        "PKA1.{}.{}",
        api_a.split('.').nth(1).unwrap(),
        "0".repeat(64)
    );
    let (status, _) = http(http_addr, "GET", "/api/v1/events", Some(&forged), None).await;
    assert_eq!(status, 401);

    // A task for another org's sensor is not found; for its own it is queued.
    let body_b = format!(
        "{{\"sid\": \"{}\", \"command\": \"os_processes\"}}",
        sensor_b.sid
    );
    let (status, _) = http(
        http_addr,
        "POST",
        "/api/v1/tasks",
        Some(&api_a),
        Some(&body_b),
    )
    .await;
    assert_eq!(status, 404);
    let body_a = format!(
        "{{\"sid\": \"{}\", \"command\": \"os_processes\"}}",
        sensor_a.sid
    );
    let (status, body) = http(
        http_addr,
        "POST",
        "/api/v1/tasks",
        Some(&api_a),
        Some(&body_a),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let task: serde_json::Value = serde_json::from_str(&body).unwrap();
    let task_id = task["id"].as_str().unwrap().to_owned();

    let delivered = loop {
        match stream_a.next().await.unwrap() {
            Some(message) => {
                if let Some(ServerBody::Task(task)) = message.body {
                    break task;
                }
            }
            None => panic!("stream ended before the task arrived"),
        }
    };
    assert_eq!(delivered.task_id, task_id);
    assert_eq!(delivered.command, "os_processes");
    let reply = TaskReply {
        task_id: task_id.clone(),
        records: vec![process_event("node-a", 99).to_json_line().into_bytes()],
        error: String::new(),
    };
    stream_a
        .tx
        .send(SensorMessage {
            body: Some(SensorBody::TaskReply(reply)),
        })
        .await
        .unwrap();

    let mut state = String::new();
    for _ in 0..50 {
        let (status, body) = http(
            http_addr,
            "GET",
            &format!("/api/v1/tasks/{task_id}"),
            Some(&api_a),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        state = serde_json::from_str::<serde_json::Value>(&body).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_owned();
        if state == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "done");
    let api_b = api_key(dir.path(), &org_b);
    let (status, _) = http(
        http_addr,
        "GET",
        &format!("/api/v1/tasks/{task_id}"),
        Some(&api_b),
        None,
    )
    .await;
    assert_eq!(status, 404, "another org's key cannot read the task");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_new_events_of_own_org() {
    let dir = tempfile::tempdir().unwrap();
    let (org_a, key_a) = org_with_key(dir.path(), "acme", &[]);
    let (_org_b, key_b) = org_with_key(dir.path(), "globex", &[]);
    let api_a = api_key(dir.path(), &org_a);
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.grpc_addr).await;
    let sensor_a = enroll(&mut client, &key_a, "node-a").await;
    let sensor_b = enroll(&mut client, &key_b, "node-b").await;
    let mut stream_a = open_stream(&mut client, hello(&sensor_a, "ia", "node-a"))
        .await
        .unwrap();
    let mut stream_b = open_stream(&mut client, hello(&sensor_b, "ib", "node-b"))
        .await
        .unwrap();

    let old = process_event("node-a", 0);
    stream_a
        .tx
        .send(batch(1, std::slice::from_ref(&old)))
        .await
        .unwrap();
    stream_a.wait_ack(1).await.unwrap();

    let mut follow = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    let request = format!(
        "GET /api/v1/events/follow?type=NEW_PROCESS HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_a}\r\n\r\n"
    );
    follow.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let new_a = process_event("node-a", 1);
    let new_b = process_event("node-b", 1);
    stream_a
        .tx
        .send(batch(2, std::slice::from_ref(&new_a)))
        .await
        .unwrap();
    stream_b
        .tx
        .send(batch(1, std::slice::from_ref(&new_b)))
        .await
        .unwrap();
    stream_a.wait_ack(2).await.unwrap();
    stream_b.wait_ack(1).await.unwrap();

    let mut received = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !received.contains(&new_a.routing.event_id) && tokio::time::Instant::now() < deadline {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(2), follow.read(&mut buf))
            .await
            .map(|r| r.unwrap())
            .unwrap_or(0);
        received.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(received.contains("application/x-ndjson"), "{received}");
    assert!(
        received.contains(&new_a.routing.event_id),
        "new event streamed: {received}"
    );
    assert!(
        !received.contains(&old.routing.event_id),
        "only events stored after the request"
    );
    assert!(
        !received.contains(&new_b.routing.event_id),
        "another org's event leaked"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_queries_print_lines_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    let (org_a, key_a) = org_with_key(dir.path(), "acme", &["prod"]);
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.grpc_addr).await;
    let sensor = enroll(&mut client, &key_a, "node-a").await;
    let mut stream = open_stream(&mut client, hello(&sensor, "ia", "node-a"))
        .await
        .unwrap();
    let mut hostile = process_event("node-a", 1);
    hostile.set("COMMAND_LINE", "sh -c 'printf x'\n\x1b[2J fake-row");
    stream
        .tx
        .send(batch(1, &[process_event("node-a", 0), hostile.clone()]))
        .await
        .unwrap();
    stream.wait_ack(1).await.unwrap();

    let bin = env!("CARGO_BIN_EXE_picket-server");
    let data = dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(["--data", data])
            .args(args)
            .output()
            .unwrap()
    };

    let out = run(&[
        "events",
        "query",
        "--json",
        "--org",
        "acme",
        "--sensor",
        "node-a",
        "--match",
        "event/COMMAND_LINE contains printf",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(&hostile.routing.event_id));

    let out = run(&[
        "events",
        "query",
        "--table",
        "--org",
        org_a.as_str(),
        "--type",
        "NEW_PROCESS",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "header and two rows: {text}");
    assert!(text.lines().next().unwrap().contains("  POD  "), "{text}");
    assert!(text.contains("  shop/web-7d9f  "), "{text}");
    assert!(!text.contains('\x1b'), "control characters escaped");
    assert!(text.contains("\\n\\u{1b}[2J fake-row"), "{text}");

    let out = run(&[
        "events",
        "query",
        "--match",
        "event/COMMAND_LINE resembles x",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --match"));
    let out = run(&["events", "query", "--from", "tomorrow"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --from"));

    let out = run(&["sensors", "list", "--table"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("node-a")
            && text.contains("procscan")
            && text.contains("prod")
            && text.contains("yes"),
        "{text}"
    );
    let out = run(&["key", "list", "--json"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&key_a.key_id) && !text.contains(&key_a.secret),
        "key list never shows the secret: {text}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_follow_prints_new_events() {
    use std::io::BufRead;

    let dir = tempfile::tempdir().unwrap();
    let (_org_a, key_a) = org_with_key(dir.path(), "acme", &[]);
    let server = start(dir.path()).await;
    let mut client = client(dir.path(), server.grpc_addr).await;
    let sensor = enroll(&mut client, &key_a, "node-a").await;
    let mut stream = open_stream(&mut client, hello(&sensor, "ia", "node-a"))
        .await
        .unwrap();
    let old = process_event("node-a", 0);
    stream
        .tx
        .send(batch(1, std::slice::from_ref(&old)))
        .await
        .unwrap();
    stream.wait_ack(1).await.unwrap();

    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_picket-server"))
        .args([
            "--data",
            dir.path().to_str().unwrap(),
            "events",
            "follow",
            "--json",
            "--type",
            "NEW_PROCESS",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let new = process_event("node-a", 1);
    stream
        .tx
        .send(batch(2, std::slice::from_ref(&new)))
        .await
        .unwrap();
    stream.wait_ack(2).await.unwrap();

    let stdout = follow.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(10), line)
        .await
        .expect("a line within 10 s")
        .unwrap()
        .unwrap();
    follow.kill().unwrap();
    follow.wait().unwrap();

    assert!(
        line.contains(&new.routing.event_id),
        "the new event is printed first: {line}"
    );
    assert!(
        !line.contains(&old.routing.event_id),
        "events stored before follow started are not printed"
    );
    server.shutdown().await;
}

/// Starts a server with one organisation with one stored `NEW_PROCESS`
/// event; returns the server, an API key of the organisation and the event.
async fn server_with_one_event(
    dir: &std::path::Path,
) -> (picket_server::serve::Running, String, picket_event::Record) {
    let (org_a, key_a) = org_with_key(dir, "acme", &[]);
    let api_a = api_key(dir, &org_a);
    let server = start(dir).await;
    let mut client = client(dir, server.grpc_addr).await;
    let sensor = enroll(&mut client, &key_a, "node-a").await;
    let mut stream = open_stream(&mut client, hello(&sensor, "ia", "node-a"))
        .await
        .unwrap();
    let stored = process_event("node-a", 0);
    stream
        .tx
        .send(batch(1, std::slice::from_ref(&stored)))
        .await
        .unwrap();
    stream.wait_ack(1).await.unwrap();
    (server, api_a, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rejects_unknown_event_type() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api_a, stored) = server_with_one_event(dir.path()).await;
    let http_addr = server.http_addr;
    // Without the type check, a follow of an unknown type streams nothing
    // forever, so every request here has a deadline.
    let get = |path: String| {
        let api_a = api_a.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(20),
                http(http_addr, "GET", &path, Some(&api_a), None),
            )
            .await
            .unwrap_or_else(|_| panic!("GET {path} did not finish within 20 s"))
        }
    };

    for path in ["/api/v1/events", "/api/v1/events/follow"] {
        let (status, body) = get(format!("{path}?type=NEW_PROCES")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body.contains("invalid --type \\\"NEW_PROCES\\\""),
            "{path}: {body}"
        );
        assert!(body.contains("Did you mean NEW_PROCESS?"), "{path}: {body}");
        assert!(body.contains("Known types: CONNECTED, "), "{path}: {body}");
        assert!(body.contains("FILE_CREATE"), "{path}: {body}");
    }

    let (status, body) = get("/api/v1/events?type=new_process".into()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Did you mean NEW_PROCESS?"), "{body}");

    let (status, body) = get("/api/v1/events?type=FILE_DELETE".into()).await;
    assert_eq!(status, 200, "a known type absent from the store: {body}");
    assert_eq!(body, "{\"events\":[]}");

    let (status, body) = get("/api/v1/events?type=NEW_PROCESS".into()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&stored.routing.event_id), "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_rejects_unknown_event_type() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _, stored) = server_with_one_event(dir.path()).await;
    let bin = env!("CARGO_BIN_EXE_picket-server");
    let data = dir.path().to_str().unwrap();
    let run = |args: &[&str]| {
        let mut child = std::process::Command::new(bin)
            .args(["--data", data])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Without the type check, `events follow` never exits.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("picket-server {args:?} did not exit within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };

    for command in ["query", "follow"] {
        let out = run(&["events", command, "--json", "--type", "PROCESS_START"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "events {command} accepted PROCESS_START"
        );
        assert!(
            stderr.contains("invalid --type \"PROCESS_START\""),
            "events {command}: {stderr}"
        );
        assert!(
            stderr.contains("Known types: CONNECTED, "),
            "events {command}: {stderr}"
        );
        assert!(
            !stderr.contains("Did you mean"),
            "events {command}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "events {command} printed events");
    }

    let out = run(&["events", "query", "--json", "--type", "FILE_DELETE"]);
    assert!(
        out.status.success(),
        "a known type absent from the store: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = run(&["events", "query", "--json", "--type", "NEW_PROCESS"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&stored.routing.event_id), "{text}");
    server.shutdown().await;
}

#[test]
fn read_commands_reject_missing_data_dir() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("typo");
    for args in [
        &["sensors", "list"][..],
        &["events", "query", "--limit", "1"][..],
        &["org", "list"][..],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_picket-server"))
            .args(args)
            .arg("--data")
            .arg(&missing)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{args:?} succeeded on a missing data dir"
        );
        assert!(
            stderr.contains("no Picket data directory"),
            "{args:?} stderr: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
}
