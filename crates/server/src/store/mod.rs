//! Storage behind one trait, so the embedded SQLite store can be replaced by
//! a distributed engine without touching ingest, the API or the CLI.
//!
//! Ids are UUID strings. Secrets (enrollment secrets, sensor credentials, API
//! key secrets) are stored only as SHA-256 hashes.

pub mod sqlite;

use serde::Serialize;

use crate::filter::EventQuery;

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("organisation {0:?} not found; list organisations with `picket-server org list`")]
    OrgNotFound(String),
    #[error("organisation name {0:?} is already taken")]
    OrgExists(String),
    #[error("installation key {0} not found")]
    KeyNotFound(String),
    #[error("sensor {0} not found")]
    SensorNotFound(String),
    #[error("task {0} not found")]
    TaskNotFound(String),
    #[error("free space in {path} is {free_mb} MiB, below the {min_mb} MiB reserve; new events are rejected until space is freed")]
    DiskFull {
        path: String,
        free_mb: u64,
        min_mb: u64,
    },
    #[error("database {path} failed")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create data directory {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// True when the failure is lack of space, which the sensor should wait
    /// out while keeping its data.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DiskFull)
            ),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub created_ms: u64,
}

/// An installation key as stored; the secret itself is not kept.
#[derive(Debug, Clone, Serialize)]
pub struct InstallationKeyRow {
    pub id: String,
    pub org_id: String,
    pub tags: Vec<String>,
    pub description: String,
    pub revoked: bool,
    pub created_ms: u64,
    #[serde(skip)]
    pub secret_sha256: [u8; 32],
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyRow {
    pub id: String,
    pub org_id: String,
    pub created_ms: u64,
    #[serde(skip)]
    pub secret_sha256: [u8; 32],
}

#[derive(Debug, Clone, Serialize)]
pub struct SensorRow {
    pub sid: String,
    pub org_id: String,
    /// Installation key the sensor enrolled with.
    pub iid: String,
    pub hostname: String,
    pub host_identity: String,
    pub tier: String,
    pub tags: Vec<String>,
    pub version: String,
    pub int_ip: String,
    pub ext_ip: String,
    pub enrolled_ms: u64,
    pub last_seen_ms: u64,
    pub online: bool,
    #[serde(skip)]
    pub credential_sha256: [u8; 32],
    /// Store-internal row number, used to key events compactly.
    #[serde(skip)]
    pub num: i64,
    #[serde(skip)]
    pub org_num: i64,
}

/// Facts an enrollment records in the store.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub org_id: String,
    pub key_id: String,
    pub host_identity: String,
    pub hostname: String,
    pub tags: Vec<String>,
    pub version: String,
    pub int_ip: String,
    pub credential_sha256: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct Enrolled {
    pub sensor: SensorRow,
    /// True when the host had enrolled with this key before.
    pub reused: bool,
    /// Highest batch sequence number stored for the SID, 0 when none.
    pub last_seq: u64,
}

/// Sensor facts from a stream's `Hello`, recorded while it is connected.
#[derive(Debug, Clone, Default)]
pub struct SensorPresence {
    pub hostname: String,
    pub int_ip: String,
    pub ext_ip: String,
    pub version: String,
    pub tier: String,
}

/// One event ready to store: the routed record and its indexed columns.
#[derive(Debug, Clone, Default)]
pub struct EventRow {
    pub event_type: String,
    pub event_time: u64,
    pub event_id: String,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    /// The whole record as one JSON line.
    pub record: String,
}

/// A batch from one sensor. `seq` is `None` for records that do not belong
/// to the sensor's numbered sequence (task replies, server-made events).
#[derive(Debug, Clone)]
pub struct BatchWrite {
    pub sensor_num: i64,
    pub org_num: i64,
    pub seq: Option<u64>,
    pub events: Vec<EventRow>,
    pub received_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    Stored {
        events: usize,
    },
    /// The same (SID, seq) was stored before; nothing was written.
    Duplicate,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    /// Store-wide insertion order, used as a cursor by `events follow`.
    pub num: i64,
    pub record: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub id: String,
    pub org_id: String,
    pub sid: String,
    pub command: String,
    pub state: String,
    pub error: String,
    pub created_ms: u64,
}

/// Storage used by ingest, the HTTP API and the admin CLI.
pub trait Store: Send + Sync + 'static {
    fn create_org(&self, name: &str) -> Result<Org, StoreError>;
    /// Finds an organisation by id or by name.
    fn find_org(&self, id_or_name: &str) -> Result<Org, StoreError>;
    fn list_orgs(&self) -> Result<Vec<Org>, StoreError>;

    fn create_installation_key(
        &self,
        org_id: &str,
        tags: &[String],
        description: &str,
        secret_sha256: [u8; 32],
    ) -> Result<InstallationKeyRow, StoreError>;
    fn installation_key(&self, key_id: &str) -> Result<Option<InstallationKeyRow>, StoreError>;
    fn list_installation_keys(
        &self,
        org_id: Option<&str>,
    ) -> Result<Vec<InstallationKeyRow>, StoreError>;
    fn revoke_installation_key(&self, key_id: &str) -> Result<(), StoreError>;

    fn create_api_key(
        &self,
        org_id: &str,
        secret_sha256: [u8; 32],
    ) -> Result<ApiKeyRow, StoreError>;
    fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, StoreError>;

    /// Records an enrollment. The same (installation key, host identity)
    /// keeps its SID and gets the new credential.
    fn enroll(&self, enrollment: &Enrollment) -> Result<Enrolled, StoreError>;
    fn sensor(&self, sid: &str) -> Result<Option<SensorRow>, StoreError>;
    fn list_sensors(&self, org_id: Option<&str>) -> Result<Vec<SensorRow>, StoreError>;
    fn set_online(&self, sid: &str, presence: &SensorPresence) -> Result<(), StoreError>;
    fn set_offline(&self, sid: &str) -> Result<(), StoreError>;
    /// Marks every sensor offline; called at server start, since no stream
    /// survives a restart.
    fn mark_all_offline(&self) -> Result<(), StoreError>;

    /// Writes batches in one transaction and returns one outcome per batch,
    /// in order. Either every batch is durable or the call fails.
    fn write_batches(&self, batches: &[BatchWrite]) -> Result<Vec<BatchOutcome>, StoreError>;
    fn query_events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError>;
    /// Row number of the newest stored event, 0 when there is none.
    fn last_event_num(&self) -> Result<i64, StoreError>;
    /// Total events and the bytes the database files occupy.
    fn usage(&self) -> Result<(u64, u64), StoreError>;

    fn enqueue_task(&self, sid: &str, command: &str) -> Result<TaskRow, StoreError>;
    fn pending_tasks(&self, sid: &str) -> Result<Vec<TaskRow>, StoreError>;
    fn set_task_state(&self, task_id: &str, state: &str, error: &str) -> Result<(), StoreError>;
    fn task(&self, task_id: &str) -> Result<Option<TaskRow>, StoreError>;
}
