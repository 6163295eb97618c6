//! A `picket-server` process with its embedded store in a temporary data
//! directory, listening on loopback ports, and its admin CLI.
//!
//! Every flag and subcommand name of the server lives in this file, so a
//! change of the server's CLI is adapted in one place.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{tail, wait_for};

/// A running server; killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    binary: PathBuf,
    data: tempfile::TempDir,
    log_path: PathBuf,
    /// Port of the sensor-facing gRPC/TLS listener on 127.0.0.1.
    pub ingest_port: u16,
    /// Port of the HTTP API on 127.0.0.1.
    pub api_port: u16,
}

/// Returns a TCP port on 127.0.0.1 that was free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding an ephemeral port on 127.0.0.1 failed")
}

impl Server {
    /// Starts `BINARY serve` on two free loopback ports and waits until
    /// both accept connections.
    pub fn start(binary: &Path) -> Server {
        let data = tempfile::Builder::new()
            .prefix("picket-e2e-server-")
            .tempdir()
            .expect("failed to create the server's data directory");
        let log_path = data.path().join("server.log");
        let log = File::create(&log_path).expect("failed to create the server log");
        let ingest_port = free_port();
        let api_port = free_port();

        let child = Command::new(binary)
            .args(serve_args(data.path(), ingest_port, api_port))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("failed to duplicate the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {}: {error}", binary.display()));

        let mut server = Server {
            child,
            binary: binary.to_owned(),
            data,
            log_path,
            ingest_port,
            api_port,
        };
        server.wait_until_listening();
        server
    }

    fn wait_until_listening(&mut self) {
        let ports = [self.ingest_port, self.api_port];
        let ready = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "picket-server exited with {status} during start:\n{}",
                    self.log()
                );
            }
            let all_listen = ports.iter().all(|port| {
                TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port)).is_ok()
            });
            all_listen.then_some(())
        });
        assert!(
            ready.is_some(),
            "picket-server did not listen on ports {ports:?} within 30 s:\n{}",
            self.log()
        );
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The last lines of the server's log.
    pub fn log(&self) -> String {
        tail(
            &std::fs::read_to_string(&self.log_path).unwrap_or_default(),
            60,
        )
    }

    /// Runs an admin subcommand against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(args)
            .arg("--data")
            .arg(self.data.path())
            .output()
            .unwrap_or_else(|error| panic!("failed to run picket-server {args:?}: {error}"))
    }

    /// Runs an admin subcommand, panics unless it succeeds, and returns its
    /// trimmed stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "picket-server {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Creates an organisation and returns its id.
    pub fn create_org(&self, name: &str) -> String {
        let out = self.cli_ok(&["org", "create", name]);
        assert!(
            uuid::Uuid::parse_str(&out).is_ok(),
            "org create printed no organisation id: {out}"
        );
        out
    }

    /// Creates an installation key for `org` and returns the key string.
    pub fn create_key(&self, org: &str) -> String {
        let out = self.cli_ok(&["key", "create", "--org", org]);
        let key = out
            .split_whitespace()
            .find(|word| word.starts_with(picket_event::key::PREFIX))
            .unwrap_or_else(|| panic!("key create printed no installation key: {out}"));
        key.to_owned()
    }

    /// Every stored record of `event_type`, as JSON values.
    pub fn events(&self, event_type: &str) -> Vec<Value> {
        let out = self.cli_ok(&[
            "events", "query", "--json", "--type", event_type, "--limit", "10000",
        ]);
        parse_records(&out)
    }

    /// Stored events of one type from one container (id or name), newest
    /// first. On a busy host the newest events of a type can all come from
    /// elsewhere, so tests that wait for one container's event ask this.
    pub fn container_events(&self, event_type: &str, container: &str) -> Vec<Value> {
        let out = self.cli_ok(&[
            "events",
            "query",
            "--json",
            "--type",
            event_type,
            "--container",
            container,
            "--limit",
            "10000",
        ]);
        parse_records(&out)
    }

    /// Every enrolled sensor, as JSON values.
    pub fn sensors(&self) -> Vec<Value> {
        let out = self.cli_ok(&["sensors", "list", "--json"]);
        parse_records(&out)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Arguments of `picket-server serve` for a loopback-only server.
fn serve_args(data: &Path, ingest_port: u16, api_port: u16) -> Vec<String> {
    vec![
        "serve".into(),
        "--data".into(),
        data.display().to_string(),
        "--grpc-listen".into(),
        format!("127.0.0.1:{ingest_port}"),
        "--http-listen".into(),
        format!("127.0.0.1:{api_port}"),
        "--advertise-url".into(),
        format!("https://127.0.0.1:{ingest_port}"),
    ]
}

fn parse_json(text: &str, source: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|error| panic!("{source} printed invalid JSON ({error}): {text}"))
}

/// Parses CLI output that is either one JSON array or JSON lines.
pub fn parse_records(text: &str) -> Vec<Value> {
    let text = text.trim();
    if text.is_empty() {
        return Vec::new();
    }
    if text.starts_with('[') {
        return match parse_json(text, "query") {
            Value::Array(items) => items,
            other => vec![other],
        };
    }
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| parse_json(line, "query"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_records_reads_array_and_lines() {
        assert_eq!(parse_records("[{\"a\":1},{\"a\":2}]").len(), 2);
        assert_eq!(parse_records("{\"a\":1}\n\n{\"a\":2}\n").len(), 2);
        assert!(parse_records("  \n").is_empty());
    }
}
