//! Helpers shared by the integration tests: an in-process server on
//! loopback, a gRPC client that behaves like a sensor, and a small HTTP/1.1
//! client for the API.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use picket_event::proto::sensor_client::SensorClient;
use picket_event::proto::sensor_message::Body as SensorBody;
use picket_event::proto::server_message::Body as ServerBody;
use picket_event::proto::{
    Batch, EnrollRequest, EnrollResponse, Hello, SensorMessage, ServerMessage,
};
use picket_event::Record;
use picket_server::admin;
use picket_server::serve::{self, Running, ServeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Streaming;

pub fn config(dir: &Path) -> ServeConfig {
    ServeConfig {
        data_dir: dir.to_owned(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        advertise_url: None,
        cert_sans: Vec::new(),
        min_free_bytes: 0,
    }
}

pub async fn start(dir: &Path) -> Running {
    serve::start(config(dir)).await.expect("server starts")
}

/// Creates an organisation and an installation key; returns (org id, key).
pub fn org_with_key(
    dir: &Path,
    name: &str,
    tags: &[&str],
) -> (String, picket_event::key::InstallationKey) {
    let mut out = Vec::new();
    admin::org_create(dir, name, &mut out).unwrap();
    let org_id = String::from_utf8(out).unwrap().trim().to_owned();
    let key = new_key(dir, &org_id, tags);
    (org_id, key)
}

pub fn new_key(dir: &Path, org: &str, tags: &[&str]) -> picket_event::key::InstallationKey {
    let mut out = Vec::new();
    let opts = admin::KeyCreate {
        org,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        description: "test",
        url: None,
        cert_sans: &[],
    };
    admin::key_create(dir, opts, &mut out).unwrap();
    picket_event::key::InstallationKey::decode(std::str::from_utf8(&out).unwrap()).unwrap()
}

pub fn api_key(dir: &Path, org: &str) -> String {
    let mut out = Vec::new();
    admin::apikey_create(dir, org, &mut out).unwrap();
    String::from_utf8(out).unwrap().trim().to_owned()
}

/// Connects a gRPC client that trusts the data directory's self-signed certificate.
pub async fn client(dir: &Path, addr: SocketAddr) -> SensorClient<Channel> {
    let pem = std::fs::read(dir.join("server.crt")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connection to the server");
    SensorClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

pub fn enroll_request(key: &picket_event::key::InstallationKey, host: &str) -> EnrollRequest {
    EnrollRequest {
        org_id: key.org_id.clone(),
        key_id: key.key_id.clone(),
        secret: key.secret.clone().into_bytes(),
        hostname: host.to_owned(),
        host_identity: format!("identity-of-{host}"),
        sensor_version: "test".into(),
        internal_ip: "10.0.0.5".into(),
    }
}

pub async fn enroll(
    client: &mut SensorClient<Channel>,
    key: &picket_event::key::InstallationKey,
    host: &str,
) -> EnrollResponse {
    client
        .enroll(enroll_request(key, host))
        .await
        .expect("enrollment succeeds")
        .into_inner()
}

/// Builds a process event shaped like the sensor's, with routing fields forged to
/// check that the server replaces them.
pub fn process_event(host: &str, n: u64) -> Record {
    let mut record = Record::new("NEW_PROCESS", host);
    record.routing.oid = Some("forged-org".into());
    record.routing.sid = Some("forged-sid".into());
    record.routing.ext_ip = Some("203.0.113.9".into());
    record
        .set("PROCESS_ID", 1000 + n)
        .set("PARENT_PROCESS_ID", 1)
        .set("FILE_PATH", "/usr/bin/curl")
        .set("COMMAND_LINE", format!("curl -s https://example.invalid/{n}"))
        .set("USER_ID", 0)
        .set(
            "CONTAINER",
            serde_json::json!({"ID": "4f2a9c0d1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5", "NAME": "web-1",
                "IMAGE": "nginx:1.27", "RUNTIME": "docker", "POD_NAME": "web-7d9f", "POD_NAMESPACE": "shop"}),
        );
    record
}

pub fn batch(seq: u64, records: &[Record]) -> SensorMessage {
    SensorMessage {
        body: Some(SensorBody::Batch(Batch {
            seq,
            records: records
                .iter()
                .map(|r| r.to_json_line().into_bytes())
                .collect(),
        })),
    }
}

pub fn hello(enrolled: &EnrollResponse, instance: &str, host: &str) -> SensorMessage {
    SensorMessage {
        body: Some(SensorBody::Hello(Hello {
            sid: enrolled.sid.clone(),
            credential: enrolled.credential.clone(),
            instance_id: instance.to_owned(),
            hostname: host.to_owned(),
            internal_ip: "10.0.0.5".into(),
            sensor_version: "test".into(),
            first_unacked_seq: 0,
            tier: "procscan".into(),
        })),
    }
}

/// An open stream: the sender for sensor messages and the server's replies.
pub struct Stream {
    pub tx: mpsc::Sender<SensorMessage>,
    pub rx: Streaming<ServerMessage>,
}

/// Opens a stream and sends `first`; fails with the server's status if the
/// server rejects the stream.
pub async fn open_stream(
    client: &mut SensorClient<Channel>,
    first: SensorMessage,
) -> Result<Stream, tonic::Status> {
    let (tx, rx) = mpsc::channel(1024);
    tx.send(first).await.unwrap();
    let response = client.stream(ReceiverStream::new(rx)).await?;
    Ok(Stream {
        tx,
        rx: response.into_inner(),
    })
}

impl Stream {
    /// Waits for the ack of `seq`, skipping other messages; fails with the
    /// stream's status.
    pub async fn wait_ack(&mut self, seq: u64) -> Result<(), tonic::Status> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.rx.message())
                .await
                .expect("ack within 20 s")?;
            match message {
                Some(ServerMessage {
                    body: Some(ServerBody::Ack(ack)),
                }) if ack.seq >= seq => return Ok(()),
                Some(_) => continue,
                None => return Err(tonic::Status::aborted("stream ended before the ack")),
            }
        }
    }

    /// Next message or the stream's status.
    pub async fn next(&mut self) -> Result<Option<ServerMessage>, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(20), self.rx.message())
            .await
            .expect("message within 20 s")
    }
}

/// A minimal HTTP/1.1 request; returns (status, body). Bodies of chunked
/// responses are returned raw.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    if let Some(body) = body {
        request.push_str(body);
    }
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
