//! The sensor's link to `picket-server`: enrollment, one long-lived gRPC
//! stream over pinned TLS 1.3, batching with sequence numbers, and the
//! spool for batches the server has not acknowledged.
//!
//! The core starts it with [`spawn`] and feeds it records through a bounded
//! channel:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use picket_sensor::transport::{self, TransportConfig};
//! let key = transport::installation_key_from_arg("-", |name| std::env::var(name).ok())?;
//! let hostname = transport::default_hostname(std::path::Path::new("/"));
//! let (records, rx) = tokio::sync::mpsc::channel(10_000);
//! let mut link = transport::spawn(TransportConfig::new(key, hostname), rx)?;
//! let enrolled = link.enrollment.wait_for(Option::is_some).await?.clone().unwrap();
//! tracing::info!(sid = %enrolled.sid, "enrolled");
//! # drop(records);
//! # Ok(())
//! # }
//! ```
//!
//! Dropping every record sender ends the transport: it seals the last batch,
//! waits up to [`TransportConfig::drain_timeout`] for acknowledgements, then
//! spools what is left for the next start and returns.

mod backoff;
mod identity;
mod link;
mod outbox;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use picket_event::key::{InstallationKey, KeyError};
use picket_event::{proto, Record};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use identity::{
    default_hostname, host_identity, HostIdentity, IdentityError, IdentitySource, SavedEnrollment,
};
pub use outbox::data_dropped;
pub use tls::{ConnectError, PinnedCertVerifier, PinnedTls};

use crate::spool::{Spool, SpoolConfig, SpoolError};

/// Environment variable read for the key when the sensor is started with
/// `-d -`.
pub const KEY_ENV: &str = "LC_INSTALLATION_KEY";

/// Settings of the transport. [`TransportConfig::new`] fills the defaults.
/// Its `Debug` output leaves out the enrollment secret.
#[derive(Clone)]
pub struct TransportConfig {
    pub key: InstallationKey,
    /// `routing/hostname` of events made here and the host name sent at
    /// enrollment.
    pub hostname: String,
    /// Directory of the saved enrollment and the spool (`spool/` inside it).
    /// Default: the current directory, which is the image's WORKDIR in the
    /// container deployment.
    pub state_dir: PathBuf,
    /// Mount point of the host's `/` (`HOST_FS`). Default `/`.
    pub host_fs: PathBuf,
    pub sensor_version: String,
    /// Acquisition tier (`ebpf`, `cnproc`, `procscan`), sent in `Hello` for
    /// the server's sensor list. Default empty.
    pub tier: String,
    /// Bound on the spool's files, in bytes. Default 64 MiB.
    pub spool_max_bytes: u64,
    /// Bound on unacknowledged batches kept in memory, in bytes of records;
    /// more goes to the spool. Default 16 MiB.
    pub memory_max_bytes: usize,
    /// Records per batch. Default 1,000.
    pub batch_max_records: usize,
    /// Bytes of records per batch; a larger single record is dropped and
    /// counted. Default 1 MiB, a quarter of tonic's default 4 MiB message
    /// limit on the server.
    pub batch_max_bytes: usize,
    /// How long a batch may stay open before it is sent. Default 200 ms.
    pub flush_interval: Duration,
    /// Batches sent and not yet acknowledged on one stream. Default 32.
    pub max_inflight_batches: usize,
    /// First reconnect delay. Default 500 ms.
    pub backoff_initial: Duration,
    /// Maximum reconnect delay. Default 30 s.
    pub backoff_max: Duration,
    /// Time allowed for TCP, TLS and the enrollment call. Default 10 s.
    pub connect_timeout: Duration,
    /// Reconnect when batches are in flight and no acknowledgement came for
    /// this long. Default 60 s.
    pub ack_timeout: Duration,
    /// After the record channel closes, how long to wait for
    /// acknowledgements before spooling the rest. Default 10 s.
    pub drain_timeout: Duration,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("url", &self.key.url)
            .field("org_id", &self.key.org_id)
            .field("key_id", &self.key.key_id)
            .field("cert_sha256", &self.key.cert_sha256)
            .field("hostname", &self.hostname)
            .field("state_dir", &self.state_dir)
            .field("host_fs", &self.host_fs)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("memory_max_bytes", &self.memory_max_bytes)
            .finish_non_exhaustive()
    }
}

impl TransportConfig {
    pub fn new(key: InstallationKey, hostname: String) -> Self {
        TransportConfig {
            key,
            hostname,
            state_dir: PathBuf::from("."),
            host_fs: PathBuf::from("/"),
            sensor_version: env!("CARGO_PKG_VERSION").to_owned(),
            tier: String::new(),
            spool_max_bytes: crate::spool::DEFAULT_MAX_BYTES,
            memory_max_bytes: 16 * 1024 * 1024,
            batch_max_records: 1000,
            batch_max_bytes: 1024 * 1024,
            flush_interval: Duration::from_millis(200),
            max_inflight_batches: 32,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir.join("spool")
    }
}

/// Parses the `-d` argument: `-` reads the key from `LC_INSTALLATION_KEY`
/// through `env`, anything else is the key itself.
pub fn installation_key_from_arg(
    arg: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<InstallationKey, KeyArgError> {
    if arg == "-" {
        let text = env(KEY_ENV).ok_or(KeyArgError::MissingEnv)?;
        return InstallationKey::decode(&text).map_err(|source| KeyArgError::Invalid {
            from: KEY_ENV,
            source,
        });
    }
    InstallationKey::decode(arg).map_err(|source| KeyArgError::Invalid { from: "-d", source })
}

#[derive(Debug, thiserror::Error)]
pub enum KeyArgError {
    #[error("`-d -` reads the installation key from {KEY_ENV}, which is not set")]
    MissingEnv,
    #[error("invalid installation key in {from}")]
    Invalid {
        from: &'static str,
        #[source]
        source: KeyError,
    },
}

/// Result of enrollment, published on [`TransportHandle::enrollment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub sid: String,
    pub tags: Vec<String>,
    /// True when the server recognised the host and returned its old SID.
    pub reused: bool,
    /// Random per process start; sent in `Hello`.
    pub instance_id: String,
}

/// State of the link, published on [`TransportHandle::status`] for health
/// output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    Connecting {
        attempt: u32,
    },
    Connected {
        sid: String,
    },
    /// The last attempt failed; the next one starts after `retry_in`.
    Disconnected {
        error: String,
        retry_in: Duration,
    },
    /// The server's certificate does not match the key's fingerprint.
    CertificateMismatch {
        expected: String,
        presented: String,
    },
    /// The transport ended; `error` is set when it ended on a fatal error.
    Stopped {
        error: Option<String>,
    },
}

/// Counters of the transport, for health output and tests.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub records_received: AtomicU64,
    pub batches_acked: AtomicU64,
    pub events_acked: AtomicU64,
    pub connects: AtomicU64,
    pub spooled_batches: AtomicU64,
    pub spool_bytes: AtomicU64,
}

impl TransportStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Counts returned when the transport ends without a fatal error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportSummary {
    pub records_received: u64,
    pub events_acked: u64,
    /// Batches left in the spool for the next start.
    pub spooled_batches: u64,
}

/// Handles the core keeps after [`spawn`].
#[derive(Debug)]
pub struct TransportHandle {
    /// `None` until the first enrollment succeeds.
    pub enrollment: watch::Receiver<Option<Enrollment>>,
    pub status: watch::Receiver<LinkStatus>,
    /// Tasks from the server. Nothing runs them yet; a full channel drops
    /// new tasks with a warning.
    pub tasks: mpsc::Receiver<proto::Task>,
    pub stats: Arc<TransportStats>,
    pub join: JoinHandle<Result<TransportSummary, TransportError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("installation key has an unusable server URL")]
    Url(#[source] ConnectError),
    #[error("failed to create state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to open the spool")]
    Spool(#[source] SpoolError),
    #[error("failed to determine the host identity")]
    Identity(#[source] IdentityError),
    #[error(
        "server rejected the installation key ({code}): {message}; the key may be revoked, \
         belong to another server or org, or have been changed when copied"
    )]
    EnrollRejected { code: String, message: String },
    #[error("server rejected sensor {sid}: {reason}")]
    Rejected { sid: String, reason: String },
}

/// Returns `preferred` if the sensor can write there, else a directory under
/// the system temporary directory. A read-only WORKDIR (for example a pod
/// with `readOnlyRootFilesystem`) must not stop the sensor, but the fallback
/// loses the spool and the saved enrollment when the container restarts.
fn usable_state_dir(preferred: &Path) -> Result<PathBuf, TransportError> {
    let error = match check_writable(preferred) {
        Ok(()) => return Ok(preferred.to_owned()),
        Err(error) => error,
    };
    let fallback = std::env::temp_dir().join("picket-sensor");
    check_writable(&fallback).map_err(|source| TransportError::StateDir {
        path: preferred.to_owned(),
        source,
    })?;
    tracing::error!(
        preferred = %preferred.display(),
        %error,
        using = %fallback.display(),
        "state dir is not writable; spooled batches and the enrollment will not survive a container restart"
    );
    Ok(fallback)
}

/// Creates `dir` if needed and writes and removes a probe file in it.
fn check_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".picket-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Starts the transport task on the current tokio runtime.
///
/// Fails only on local problems found before any network traffic (state
/// directory, spool, host identity, server URL). A server that is down is
/// not an error: records are spooled and the link retries with back-off.
/// The task ends with an error only when the server rejects the key or the
/// sensor for good.
pub fn spawn(
    mut config: TransportConfig,
    records: mpsc::Receiver<Record>,
) -> Result<TransportHandle, TransportError> {
    let tls =
        PinnedTls::new(&config.key.url, &config.key.cert_sha256).map_err(TransportError::Url)?;
    config.state_dir = usable_state_dir(&config.state_dir)?;
    let identity = host_identity(&config.host_fs, &config.key.key_id, &config.state_dir)
        .map_err(TransportError::Identity)?;

    let spool_config = SpoolConfig::new(config.spool_dir(), config.spool_max_bytes);
    let (spool, report) = Spool::open(spool_config).map_err(TransportError::Spool)?;
    if report.batches > 0 || !report.corrupt.is_zero() {
        tracing::info!(
            batches = report.batches,
            events = report.events,
            corrupt_regions = report.corrupt.batches,
            corrupt_bytes = report.corrupt.bytes,
            "spool holds batches from an earlier run"
        );
    }

    let (enrollment_tx, enrollment) = watch::channel(None);
    let (status_tx, status) = watch::channel(LinkStatus::Connecting { attempt: 1 });
    let (tasks_tx, tasks) = mpsc::channel(64);
    let stats = Arc::new(TransportStats::default());

    let link = link::Link::new(
        config,
        tls,
        identity,
        spool,
        link::Outputs {
            enrollment: enrollment_tx,
            status: status_tx,
            tasks: tasks_tx,
            stats: stats.clone(),
        },
    );
    let join = tokio::spawn(link.run(records));
    Ok(TransportHandle {
        enrollment,
        status,
        tasks,
        stats,
        join,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_falls_back_when_unusable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(usable_state_dir(dir.path()).unwrap(), dir.path());

        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let chosen = usable_state_dir(&file).unwrap();
        assert_eq!(chosen, std::env::temp_dir().join("picket-sensor"));
    }
}
