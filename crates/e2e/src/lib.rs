//! Support code for Picket's end-to-end tests.
//!
//! The tests in `tests/` drive real parts only: a Docker engine, the
//! `picket-server` binary with its embedded store in a temporary data
//! directory, and the FROM-scratch sensor image started with the flags of
//! the deployment contract. Everything is observed through the server's
//! admin CLI, as a user would see it.
//!
//! Tests that need root or Docker call [`prerequisite`]: with `CI=true` a
//! missing prerequisite fails the test, otherwise the test prints
//! `skipped: <reason>` and returns.

pub mod docker;
pub mod server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Returns true when `available`; otherwise fails under `CI=true`, or
/// prints `skipped: <reason>` and returns false.
pub fn prerequisite(available: bool, reason: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {reason}");
    }
    println!("skipped: {reason}");
    false
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the e2e crate lives two levels below the repository root")
}

/// Calls `probe` every `interval` until it returns `Some` or `timeout`
/// has passed; returns the last result.
pub fn wait_for<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// A short random token that marks the containers, commands and files of
/// one test run, so that its events are told apart from everything else
/// on the host.
pub fn run_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
