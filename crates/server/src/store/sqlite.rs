//! The embedded store: one SQLite database (`picket.db`) in WAL mode.
//!
//! Event writes go through one connection and one transaction per group of
//! batches, with `synchronous=FULL`, so an acknowledged batch survives a
//! crash of the server process or the machine. Readers use their own
//! connections, and in WAL mode a reader does not block the writer.
//!
//! Events are keyed by small integers for the organisation and the sensor
//! and indexed on (sensor, event type, time) and (org, time). Every other
//! filter (event type without a sensor, container, pod, field match) is
//! checked row by row inside the rows those indexes select. The event id
//! stays inside the record: exactly-once storage rests on the (sensor, seq)
//! batch table, not on a per-event index.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::*;
use crate::filter::{EventQuery, MatchOp};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "picket.db";

/// How long a connection waits for another writer before failing.
const BUSY_TIMEOUT_MS: u64 = 10_000;
/// How often the free-space check runs, at most.
const SPACE_CHECK_INTERVAL_MS: u64 = 1000;

pub struct SqliteStore {
    path: PathBuf,
    data_dir: PathBuf,
    meta: Mutex<Connection>,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    min_free_bytes: u64,
    last_space_check_ms: AtomicU64,
    last_free_bytes: AtomicU64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orgs (
    num INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS installation_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    tags TEXT NOT NULL,
    description TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sensors (
    num INTEGER PRIMARY KEY,
    sid TEXT NOT NULL UNIQUE,
    org_num INTEGER NOT NULL,
    org_id TEXT NOT NULL,
    iid TEXT NOT NULL,
    hostname TEXT NOT NULL,
    host_identity TEXT NOT NULL,
    tier TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '',
    int_ip TEXT NOT NULL DEFAULT '',
    ext_ip TEXT NOT NULL DEFAULT '',
    credential_sha256 BLOB NOT NULL,
    enrolled_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL DEFAULT 0,
    online INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0,
    UNIQUE (iid, host_identity)
);
CREATE INDEX IF NOT EXISTS sensors_hostname ON sensors (hostname);
CREATE TABLE IF NOT EXISTS batches (
    sensor INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    first_event_id TEXT NOT NULL,
    events INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (sensor, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    num INTEGER PRIMARY KEY,
    org INTEGER NOT NULL,
    sensor INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    event_time INTEGER NOT NULL,
    container_id TEXT,
    container_name TEXT,
    pod_name TEXT,
    pod_namespace TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_sensor_type_time ON events (sensor, event_type, event_time);
CREATE INDEX IF NOT EXISTS events_org_time ON events (org, event_time);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    sid TEXT NOT NULL,
    command TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_sid_state ON tasks (sid, state);
";

trait SqlContext<T> {
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> SqlContext<T> for Result<T, rusqlite::Error> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite {
            path: path.display().to_string(),
            source,
        })
    }
}

fn now_ms() -> u64 {
    picket_event::record::now_ms()
}

fn hash_from_blob(blob: Vec<u8>) -> [u8; 32] {
    let mut out = [0u8; 32];
    if blob.len() == 32 {
        out.copy_from_slice(&blob);
    }
    out
}

fn tags_from_json(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn tags_to_json(tags: &[String]) -> String {
    serde_json::to_string(tags).expect("a list of strings serialises")
}

impl SqliteStore {
    /// Opens or creates the store in `data_dir`. New events are rejected
    /// while the file system has less than `min_free_bytes` available.
    pub fn open(data_dir: &Path, min_free_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);

        let meta = open_connection(&path)?;
        meta.execute_batch(SCHEMA).at(&path)?;
        let writer = open_connection(&path)?;
        // A larger page cache keeps the event indexes' upper levels in memory.
        // Checkpoints run on their own thread (see `start_checkpointer`), so
        // the writer checkpoints only as a fallback when the WAL passes
        // about 256 MiB.
        writer
            .execute_batch("PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 65536;")
            .at(&path)?;

        Ok(SqliteStore {
            path,
            data_dir: data_dir.to_owned(),
            meta: Mutex::new(meta),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            min_free_bytes,
            last_space_check_ms: AtomicU64::new(0),
            last_free_bytes: AtomicU64::new(u64::MAX),
        })
    }

    /// Starts a thread that copies the WAL into the database every
    /// `interval` without blocking the writer (a passive checkpoint), so the
    /// writer does not pay for checkpoints with every few MiB it commits.
    /// The thread ends when the returned sender is dropped.
    pub fn start_checkpointer(
        &self,
        interval: std::time::Duration,
    ) -> Result<std::sync::mpsc::Sender<()>, StoreError> {
        let conn = open_connection(&self.path)?;
        let path = self.path.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || {
                // Only changes between failing and working are logged, so a
                // full disk does not write a line every interval.
                let mut failing = false;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        Err(error) if !failing => {
                            failing = true;
                            tracing::warn!(path = %path.display(), %error, "WAL checkpoint failed, retrying");
                        }
                        Ok(()) if failing => {
                            failing = false;
                            tracing::info!(path = %path.display(), "WAL checkpoint works again");
                        }
                        _ => {}
                    }
                }
            })
            .expect("spawning the checkpoint thread");
        Ok(stop)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.readers.lock().expect("reader pool lock").pop();
        let conn = match conn {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().expect("reader pool lock");
        if pool.len() < 8 {
            pool.push(conn);
        }
        result
    }

    fn check_free_space(&self) -> Result<(), StoreError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let now = now_ms();
        let last = self.last_space_check_ms.load(Ordering::Relaxed);
        let mut free = self.last_free_bytes.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= SPACE_CHECK_INTERVAL_MS {
            free = match rustix::fs::statvfs(&self.data_dir) {
                Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
                Err(error) => {
                    tracing::warn!(path = %self.data_dir.display(), %error, "free space check failed");
                    u64::MAX
                }
            };
            self.last_free_bytes.store(free, Ordering::Relaxed);
            self.last_space_check_ms.store(now, Ordering::Relaxed);
        }
        if free < self.min_free_bytes {
            return Err(StoreError::DiskFull {
                path: self.data_dir.display().to_string(),
                free_mb: free >> 20,
                min_mb: self.min_free_bytes >> 20,
            });
        }
        Ok(())
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).at(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
        .at(path)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .at(path)?;
    Ok(conn)
}

const SENSOR_COLUMNS: &str =
    "num, sid, org_num, org_id, iid, hostname, host_identity, tier, tags, \
     version, int_ip, ext_ip, credential_sha256, enrolled_ms, last_seen_ms, online";

fn sensor_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SensorRow> {
    Ok(SensorRow {
        num: row.get(0)?,
        sid: row.get(1)?,
        org_num: row.get(2)?,
        org_id: row.get(3)?,
        iid: row.get(4)?,
        hostname: row.get(5)?,
        host_identity: row.get(6)?,
        tier: row.get(7)?,
        tags: tags_from_json(&row.get::<_, String>(8)?),
        version: row.get(9)?,
        int_ip: row.get(10)?,
        ext_ip: row.get(11)?,
        credential_sha256: hash_from_blob(row.get(12)?),
        enrolled_ms: row.get::<_, i64>(13)? as u64,
        last_seen_ms: row.get::<_, i64>(14)? as u64,
        online: row.get::<_, i64>(15)? != 0,
    })
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<InstallationKeyRow> {
    Ok(InstallationKeyRow {
        id: row.get(0)?,
        org_id: row.get(1)?,
        tags: tags_from_json(&row.get::<_, String>(2)?),
        description: row.get(3)?,
        secret_sha256: hash_from_blob(row.get(4)?),
        revoked: row.get::<_, i64>(5)? != 0,
        created_ms: row.get::<_, i64>(6)? as u64,
    })
}

fn task_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        id: row.get(0)?,
        org_id: row.get(1)?,
        sid: row.get(2)?,
        command: row.get(3)?,
        state: row.get(4)?,
        error: row.get(5)?,
        created_ms: row.get::<_, i64>(6)? as u64,
    })
}

fn org_num(conn: &Connection, path: &Path, org_id: &str) -> Result<i64, StoreError> {
    conn.query_row("SELECT num FROM orgs WHERE id = ?1", [org_id], |r| r.get(0))
        .optional()
        .at(path)?
        .ok_or_else(|| StoreError::OrgNotFound(org_id.to_owned()))
}

impl Store for SqliteStore {
    fn create_org(&self, name: &str) -> Result<Org, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        let exists: bool = conn
            .query_row("SELECT 1 FROM orgs WHERE name = ?1", [name], |_| Ok(true))
            .optional()
            .at(&self.path)?
            .unwrap_or(false);
        if exists {
            return Err(StoreError::OrgExists(name.to_owned()));
        }
        let org = Org {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            created_ms: now_ms(),
        };
        conn.execute(
            "INSERT INTO orgs (id, name, created_ms) VALUES (?1, ?2, ?3)",
            params![org.id, org.name, org.created_ms as i64],
        )
        .at(&self.path)?;
        Ok(org)
    }

    fn find_org(&self, id_or_name: &str) -> Result<Org, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        conn.query_row(
            "SELECT id, name, created_ms FROM orgs WHERE id = ?1 OR name = ?1",
            [id_or_name],
            |r| {
                Ok(Org {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_ms: r.get::<_, i64>(2)? as u64,
                })
            },
        )
        .optional()
        .at(&self.path)?
        .ok_or_else(|| StoreError::OrgNotFound(id_or_name.to_owned()))
    }

    fn list_orgs(&self) -> Result<Vec<Org>, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        let mut stmt = conn
            .prepare("SELECT id, name, created_ms FROM orgs ORDER BY name")
            .at(&self.path)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Org {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created_ms: r.get::<_, i64>(2)? as u64,
                })
            })
            .at(&self.path)?;
        rows.collect::<Result<_, _>>().at(&self.path)
    }

    fn create_installation_key(
        &self,
        org_id: &str,
        tags: &[String],
        description: &str,
        secret_sha256: [u8; 32],
    ) -> Result<InstallationKeyRow, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        org_num(&conn, &self.path, org_id)?;
        let key = InstallationKeyRow {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: org_id.to_owned(),
            tags: tags.to_vec(),
            description: description.to_owned(),
            revoked: false,
            created_ms: now_ms(),
            secret_sha256,
        };
        conn.execute(
            "INSERT INTO installation_keys (id, org_id, tags, description, secret_sha256, created_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![key.id, key.org_id, tags_to_json(tags), key.description, &key.secret_sha256[..], key.created_ms as i64],
        )
        .at(&self.path)?;
        Ok(key)
    }

    fn installation_key(&self, key_id: &str) -> Result<Option<InstallationKeyRow>, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        conn.query_row(
            "SELECT id, org_id, tags, description, secret_sha256, revoked, created_ms \
             FROM installation_keys WHERE id = ?1",
            [key_id],
            key_from_row,
        )
        .optional()
        .at(&self.path)
    }

    fn list_installation_keys(
        &self,
        org_id: Option<&str>,
    ) -> Result<Vec<InstallationKeyRow>, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        let mut stmt = conn
            .prepare(
                "SELECT id, org_id, tags, description, secret_sha256, revoked, created_ms \
                 FROM installation_keys WHERE ?1 IS NULL OR org_id = ?1 ORDER BY created_ms",
            )
            .at(&self.path)?;
        let rows = stmt.query_map([org_id], key_from_row).at(&self.path)?;
        rows.collect::<Result<_, _>>().at(&self.path)
    }

    fn revoke_installation_key(&self, key_id: &str) -> Result<(), StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        let changed = conn
            .execute(
                "UPDATE installation_keys SET revoked = 1 WHERE id = ?1",
                [key_id],
            )
            .at(&self.path)?;
        if changed == 0 {
            return Err(StoreError::KeyNotFound(key_id.to_owned()));
        }
        Ok(())
    }

    fn create_api_key(
        &self,
        org_id: &str,
        secret_sha256: [u8; 32],
    ) -> Result<ApiKeyRow, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        org_num(&conn, &self.path, org_id)?;
        let key = ApiKeyRow {
            id: uuid::Uuid::new_v4().simple().to_string(),
            org_id: org_id.to_owned(),
            created_ms: now_ms(),
            secret_sha256,
        };
        conn.execute(
            "INSERT INTO api_keys (id, org_id, secret_sha256, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                key.id,
                key.org_id,
                &key.secret_sha256[..],
                key.created_ms as i64
            ],
        )
        .at(&self.path)?;
        Ok(key)
    }

    fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        conn.query_row(
            "SELECT id, org_id, secret_sha256, created_ms FROM api_keys WHERE id = ?1",
            [id],
            |r| {
                Ok(ApiKeyRow {
                    id: r.get(0)?,
                    org_id: r.get(1)?,
                    secret_sha256: hash_from_blob(r.get(2)?),
                    created_ms: r.get::<_, i64>(3)? as u64,
                })
            },
        )
        .optional()
        .at(&self.path)
    }

    fn enroll(&self, e: &Enrollment) -> Result<Enrolled, StoreError> {
        let mut conn = self.meta.lock().expect("meta lock");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&self.path)?;
        let org = org_num(&tx, &self.path, &e.org_id)?;
        let existing: Option<(i64, i64)> = tx
            .query_row(
                "SELECT num, last_seq FROM sensors WHERE iid = ?1 AND host_identity = ?2",
                params![e.key_id, e.host_identity],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .at(&self.path)?;

        let (num, reused, last_seq) = match existing {
            Some((num, last_seq)) => {
                tx.execute(
                    "UPDATE sensors SET credential_sha256 = ?2, hostname = ?3, tags = ?4, version = ?5, \
                     int_ip = ?6 WHERE num = ?1",
                    params![num, &e.credential_sha256[..], e.hostname, tags_to_json(&e.tags), e.version, e.int_ip],
                )
                .at(&self.path)?;
                (num, true, last_seq as u64)
            }
            None => {
                tx.execute(
                    "INSERT INTO sensors (sid, org_num, org_id, iid, hostname, host_identity, tags, version, \
                     int_ip, credential_sha256, enrolled_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        uuid::Uuid::new_v4().to_string(),
                        org,
                        e.org_id,
                        e.key_id,
                        e.hostname,
                        e.host_identity,
                        tags_to_json(&e.tags),
                        e.version,
                        e.int_ip,
                        &e.credential_sha256[..],
                        now_ms() as i64
                    ],
                )
                .at(&self.path)?;
                (tx.last_insert_rowid(), false, 0)
            }
        };
        let sensor = tx
            .query_row(
                &format!("SELECT {SENSOR_COLUMNS} FROM sensors WHERE num = ?1"),
                [num],
                sensor_from_row,
            )
            .at(&self.path)?;
        tx.commit().at(&self.path)?;
        Ok(Enrolled {
            sensor,
            reused,
            last_seq,
        })
    }

    fn sensor(&self, sid: &str) -> Result<Option<SensorRow>, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        conn.query_row(
            &format!("SELECT {SENSOR_COLUMNS} FROM sensors WHERE sid = ?1"),
            [sid],
            sensor_from_row,
        )
        .optional()
        .at(&self.path)
    }

    fn list_sensors(&self, org_id: Option<&str>) -> Result<Vec<SensorRow>, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {SENSOR_COLUMNS} FROM sensors WHERE ?1 IS NULL OR org_id = ?1 ORDER BY hostname, sid"
            ))
            .at(&self.path)?;
        let rows = stmt.query_map([org_id], sensor_from_row).at(&self.path)?;
        rows.collect::<Result<_, _>>().at(&self.path)
    }

    fn set_online(&self, sid: &str, p: &SensorPresence) -> Result<(), StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        conn.execute(
            "UPDATE sensors SET online = 1, last_seen_ms = ?2, hostname = ?3, int_ip = ?4, ext_ip = ?5, \
             version = CASE WHEN ?6 = '' THEN version ELSE ?6 END, \
             tier = CASE WHEN ?7 = '' THEN tier ELSE ?7 END WHERE sid = ?1",
            params![sid, now_ms() as i64, p.hostname, p.int_ip, p.ext_ip, p.version, p.tier],
        )
        .at(&self.path)?;
        Ok(())
    }

    fn set_offline(&self, sid: &str) -> Result<(), StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        conn.execute("UPDATE sensors SET online = 0 WHERE sid = ?1", [sid])
            .at(&self.path)?;
        Ok(())
    }

    fn mark_all_offline(&self) -> Result<(), StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        conn.execute("UPDATE sensors SET online = 0 WHERE online != 0", [])
            .at(&self.path)?;
        Ok(())
    }

    fn write_batches(&self, batches: &[BatchWrite]) -> Result<Vec<BatchOutcome>, StoreError> {
        self.check_free_space()?;
        let mut conn = self.writer.lock().expect("writer lock");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(&self.path)?;
        let mut outcomes = Vec::with_capacity(batches.len());
        {
            let mut seen_batch = tx
                .prepare_cached("SELECT first_event_id FROM batches WHERE sensor = ?1 AND seq = ?2")
                .at(&self.path)?;
            let mut add_batch = tx
                .prepare_cached(
                    "INSERT INTO batches (sensor, seq, first_event_id, events, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .at(&self.path)?;
            let mut add_event = tx
                .prepare_cached(
                    "INSERT INTO events (org, sensor, event_type, event_time, container_id, \
                     container_name, pod_name, pod_namespace, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .at(&self.path)?;
            let mut touch_sensor = tx
                .prepare_cached(
                    "UPDATE sensors SET last_seen_ms = MAX(last_seen_ms, ?2), last_seq = MAX(last_seq, ?3) WHERE num = ?1",
                )
                .at(&self.path)?;

            for batch in batches {
                let first_event_id = batch
                    .events
                    .first()
                    .map(|e| e.event_id.as_str())
                    .unwrap_or("");
                if let Some(seq) = batch.seq {
                    let previous: Option<String> = seen_batch
                        .query_row(params![batch.sensor_num, seq as i64], |r| r.get(0))
                        .optional()
                        .at(&self.path)?;
                    match previous {
                        Some(previous) if previous == first_event_id => {
                            outcomes.push(BatchOutcome::Duplicate);
                            continue;
                        }
                        // A sensor that lost its state and restarted its numbering
                        // sends new events under an old seq; they are stored, not
                        // dropped as a replay.
                        Some(_) => tracing::warn!(
                            sensor = batch.sensor_num,
                            seq,
                            "batch seq reused with different events; storing them"
                        ),
                        None => {
                            add_batch
                                .execute(params![
                                    batch.sensor_num,
                                    seq as i64,
                                    first_event_id,
                                    batch.events.len() as i64,
                                    batch.received_ms as i64
                                ])
                                .at(&self.path)?;
                        }
                    }
                }

                for event in &batch.events {
                    add_event
                        .execute(params![
                            batch.org_num,
                            batch.sensor_num,
                            event.event_type,
                            event.event_time as i64,
                            event.container_id,
                            event.container_name,
                            event.pod_name,
                            event.pod_namespace,
                            event.record
                        ])
                        .at(&self.path)?;
                }
                touch_sensor
                    .execute(params![
                        batch.sensor_num,
                        batch.received_ms as i64,
                        batch.seq.unwrap_or(0) as i64
                    ])
                    .at(&self.path)?;
                outcomes.push(BatchOutcome::Stored {
                    events: batch.events.len(),
                });
            }
        }
        tx.commit().at(&self.path)?;
        Ok(outcomes)
    }

    fn query_events(&self, q: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        self.with_reader(|conn| {
            let mut sql = String::from("SELECT e.num, e.record FROM events e WHERE 1 = 1");
            let mut args: Vec<SqlValue> = Vec::new();

            let org = match &q.org_id {
                Some(org_id) => Some(org_num(conn, &self.path, org_id)?),
                None => None,
            };
            // Sensors are resolved within the organisation, so a sensor filter
            // confines the query by itself. Leaving the org term out then keeps
            // SQLite on the (sensor, type, time) index instead of scanning the
            // whole organisation's time range.
            match &q.sensor {
                Some(sensor) => {
                    let nums = sensor_nums(conn, &self.path, org, sensor)?;
                    if nums.is_empty() {
                        return Ok(Vec::new());
                    }
                    let list: Vec<String> = nums.iter().map(i64::to_string).collect();
                    sql.push_str(&format!(" AND e.sensor IN ({})", list.join(",")));
                }
                None => {
                    if let Some(org) = org {
                        bind(
                            &mut sql,
                            &mut args,
                            " AND e.org = ?",
                            SqlValue::Integer(org),
                        );
                    }
                }
            }
            if let Some(event_type) = &q.event_type {
                bind(
                    &mut sql,
                    &mut args,
                    " AND e.event_type = ?",
                    SqlValue::Text(event_type.clone()),
                );
            }
            if let Some(from) = q.from_ms {
                bind(
                    &mut sql,
                    &mut args,
                    " AND e.event_time >= ?",
                    SqlValue::Integer(from as i64),
                );
            }
            if let Some(to) = q.to_ms {
                bind(
                    &mut sql,
                    &mut args,
                    " AND e.event_time < ?",
                    SqlValue::Integer(to as i64),
                );
            }
            if let Some(container) = &q.container {
                // A name, a full id, or an id prefix of at least 12 digits (the
                // short form `docker ps` prints).
                args.push(SqlValue::Text(container.clone()));
                sql.push_str(&format!(
                    " AND (e.container_name = ?{0} OR e.container_id = ?{0} \
                     OR (length(?{0}) >= 12 AND substr(e.container_id, 1, length(?{0})) = ?{0}))",
                    args.len()
                ));
            }
            if let Some(pod) = &q.pod {
                bind(
                    &mut sql,
                    &mut args,
                    " AND e.pod_name = ?",
                    SqlValue::Text(pod.clone()),
                );
            }
            if let Some(namespace) = &q.namespace {
                bind(
                    &mut sql,
                    &mut args,
                    " AND e.pod_namespace = ?",
                    SqlValue::Text(namespace.clone()),
                );
            }
            for m in &q.matches {
                // NOTE: no index serves a field match, so without a time window
                // it reads every record of the organisation (105 s for 10
                // million events in the platform benchmark).
                // Checking the record text for the value first is much cheaper
                // than parsing the JSON, and rules out nearly every row of a
                // selective match.
                if literal_in_record(m) {
                    args.push(SqlValue::Text(m.value.clone()));
                    sql.push_str(&format!(" AND instr(e.record, ?{}) > 0", args.len()));
                }
                args.push(SqlValue::Text(m.json_path()));
                let extracted = format!("json_extract(e.record, ?{})", args.len());
                let clause = match m.op {
                    MatchOp::Exists => {
                        format!(" AND json_type(e.record, ?{}) IS NOT NULL", args.len())
                    }
                    MatchOp::Is => format!(" AND CAST({extracted} AS TEXT) = ?{}", args.len() + 1),
                    MatchOp::IsNot => {
                        format!(" AND CAST({extracted} AS TEXT) IS NOT ?{}", args.len() + 1)
                    }
                    MatchOp::Contains => format!(
                        " AND instr(CAST({extracted} AS TEXT), ?{}) > 0",
                        args.len() + 1
                    ),
                    MatchOp::StartsWith => {
                        format!(
                            " AND substr(CAST({extracted} AS TEXT), 1, length(?{0})) = ?{0}",
                            args.len() + 1
                        )
                    }
                    MatchOp::EndsWith => {
                        format!(
                            " AND substr(CAST({extracted} AS TEXT), -length(?{0})) = ?{0}",
                            args.len() + 1
                        )
                    }
                };
                sql.push_str(&clause);
                if m.op != MatchOp::Exists {
                    args.push(SqlValue::Text(m.value.clone()));
                }
            }
            match q.after_num {
                Some(after) => {
                    args.push(SqlValue::Integer(after));
                    sql.push_str(&format!(" AND e.num > ?{} ORDER BY e.num ASC", args.len()));
                }
                None => sql.push_str(" ORDER BY e.event_time DESC, e.num DESC"),
            }
            args.push(SqlValue::Integer(q.limit as i64));
            sql.push_str(&format!(" LIMIT ?{}", args.len()));

            let mut stmt = conn.prepare(&sql).at(&self.path)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    Ok(StoredEvent {
                        num: r.get(0)?,
                        record: r.get(1)?,
                    })
                })
                .at(&self.path)?;
            rows.collect::<Result<_, _>>().at(&self.path)
        })
    }

    fn last_event_num(&self) -> Result<i64, StoreError> {
        self.with_reader(|conn| {
            conn.query_row("SELECT COALESCE(MAX(num), 0) FROM events", [], |r| r.get(0))
                .at(&self.path)
        })
    }

    fn usage(&self) -> Result<(u64, u64), StoreError> {
        self.with_reader(|conn| {
            let count: i64 = conn
                .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
                .at(&self.path)?;
            let mut bytes = 0;
            for suffix in ["", "-wal"] {
                let file = PathBuf::from(format!("{}{suffix}", self.path.display()));
                bytes += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            }
            Ok((count as u64, bytes))
        })
    }

    fn enqueue_task(&self, sid: &str, command: &str) -> Result<TaskRow, StoreError> {
        let sensor = self
            .sensor(sid)?
            .ok_or_else(|| StoreError::SensorNotFound(sid.to_owned()))?;
        let task = TaskRow {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: sensor.org_id,
            sid: sid.to_owned(),
            command: command.to_owned(),
            state: "pending".into(),
            error: String::new(),
            created_ms: now_ms(),
        };
        let conn = self.meta.lock().expect("meta lock");
        conn.execute(
            "INSERT INTO tasks (id, org_id, sid, command, state, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![task.id, task.org_id, task.sid, task.command, task.state, task.created_ms as i64],
        )
        .at(&self.path)?;
        Ok(task)
    }

    fn pending_tasks(&self, sid: &str) -> Result<Vec<TaskRow>, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        let mut stmt = conn
            .prepare(
                "SELECT id, org_id, sid, command, state, error, created_ms FROM tasks \
                 WHERE sid = ?1 AND state = 'pending' ORDER BY created_ms",
            )
            .at(&self.path)?;
        let rows = stmt.query_map([sid], task_from_row).at(&self.path)?;
        rows.collect::<Result<_, _>>().at(&self.path)
    }

    fn set_task_state(&self, task_id: &str, state: &str, error: &str) -> Result<(), StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        let changed = conn
            .execute(
                "UPDATE tasks SET state = ?2, error = ?3 WHERE id = ?1",
                params![task_id, state, error],
            )
            .at(&self.path)?;
        if changed == 0 {
            return Err(StoreError::TaskNotFound(task_id.to_owned()));
        }
        Ok(())
    }

    fn task(&self, task_id: &str) -> Result<Option<TaskRow>, StoreError> {
        let conn = self.meta.lock().expect("meta lock");
        conn.query_row(
            "SELECT id, org_id, sid, command, state, error, created_ms FROM tasks WHERE id = ?1",
            [task_id],
            task_from_row,
        )
        .optional()
        .at(&self.path)
    }
}

/// Sensors matching a SID or hostname, within one organisation when given.
fn sensor_nums(
    conn: &Connection,
    path: &Path,
    org: Option<i64>,
    sensor: &str,
) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT num FROM sensors WHERE (sid = ?1 OR hostname = ?1) AND (?2 IS NULL OR org_num = ?2)")
        .at(path)?;
    let rows = stmt
        .query_map(params![sensor, org], |r| r.get(0))
        .at(path)?;
    rows.collect::<Result<_, _>>().at(path)
}

/// Appends `clause` with its one `?` numbered for `value`.
fn bind(sql: &mut String, args: &mut Vec<SqlValue>, clause: &str, value: SqlValue) {
    args.push(value);
    sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
}

/// True when a row can match `m` only if its record text contains the value
/// as written: a string value that JSON stores without escapes, for an
/// operator that needs the value to be present. Numeric-looking values are
/// left out because a stored number may be written differently (`1e3`).
fn literal_in_record(m: &crate::filter::FieldMatch) -> bool {
    let needs_value = matches!(
        m.op,
        MatchOp::Is | MatchOp::Contains | MatchOp::StartsWith | MatchOp::EndsWith
    );
    let escaped = m
        .value
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control());
    let numeric = m
        .value
        .chars()
        .all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
    needs_value && !m.value.is_empty() && !escaped && !numeric
}
