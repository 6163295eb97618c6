//! Host identity and the saved enrollment.
//!
//! The host identity lets the server return the same SID to a sensor that
//! lost its state directory (a restarted pod or container). It is the
//! SHA-256 of the host's machine-id and the installation key id, so the raw
//! machine-id never leaves the host and two orgs see unrelated values for one
//! host. systemd writes the machine-id to `/etc/machine-id`; D-Bus keeps a
//! copy at `/var/lib/dbus/machine-id` on hosts without systemd. Both are read
//! under `HOST_FS`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Host paths tried in order, relative to `HOST_FS`.
const MACHINE_ID_PATHS: [&str; 2] = ["etc/machine-id", "var/lib/dbus/machine-id"];
/// Random identity used when the host has no machine-id, in the state dir.
const GENERATED_ID_FILE: &str = "picket-host-id";
/// Saved SID and credential, in the state dir.
const ENROLLMENT_FILE: &str = "picket-enrollment.json";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Source of the host identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    MachineId(PathBuf),
    /// No machine-id exists, so a random id was stored in the state dir. A
    /// sensor restarted without that file enrolls as a new sensor.
    Generated(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// 64 hex digits sent in `EnrollRequest.host_identity`.
    pub value: String,
    pub source: IdentitySource,
}

/// Derives the host identity for `key_id` from the machine-id under
/// `host_fs`, or from a random id kept in `state_dir` when the host has none.
pub fn host_identity(
    host_fs: &Path,
    key_id: &str,
    state_dir: &Path,
) -> Result<HostIdentity, IdentityError> {
    for relative in MACHINE_ID_PATHS {
        let path = host_fs.join(relative);
        match fs::read_to_string(&path) {
            Ok(text) if is_machine_id(text.trim()) => {
                return Ok(HostIdentity {
                    value: hash_identity(text.trim(), key_id),
                    source: IdentitySource::MachineId(path),
                });
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "machine-id is empty or not 32 hex digits, ignored")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(IdentityError::Read { path, source }),
        }
    }

    let path = state_dir.join(GENERATED_ID_FILE);
    let id = match fs::read_to_string(&path) {
        Ok(text) if is_machine_id(text.trim()) => text.trim().to_owned(),
        Ok(_) | Err(_) => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            write_private(&path, id.as_bytes())?;
            id
        }
    };
    tracing::warn!(
        tried = ?MACHINE_ID_PATHS.iter().map(|p| host_fs.join(p)).collect::<Vec<_>>(),
        stored = %path.display(),
        "host has no machine-id; using a random host id kept in the state dir, so a restart \
         without the state dir enrolls as a new sensor"
    );
    Ok(HostIdentity {
        value: hash_identity(&id, key_id),
        source: IdentitySource::Generated(path),
    })
}

/// Checks the machine-id(5) format: 32 lower-case hex digits. systemd
/// writes `uninitialized` during first boot, which must not identify a host.
fn is_machine_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hash_identity(machine_id: &str, key_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(machine_id.as_bytes());
    hasher.update(b"\n");
    hasher.update(key_id.as_bytes());
    hex::encode(hasher.finalize())
}

/// Reads the host name from `$HOST_FS/etc/hostname`, else the kernel's host name of
/// the sensor's UTS namespace (the host's under `--net=host`/`hostNetwork`).
pub fn default_hostname(host_fs: &Path) -> String {
    let from_host = fs::read_to_string(host_fs.join("etc/hostname")).ok();
    let from_kernel = || fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_host
        .filter(|h| !h.trim().is_empty())
        .or_else(from_kernel)
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// SID and credential from a successful enrollment, saved in the state dir
/// with mode 0600 because the credential is a secret. `Debug` leaves the
/// credential out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEnrollment {
    pub url: String,
    pub org_id: String,
    pub key_id: String,
    pub sid: String,
    pub credential: String,
    /// Tags of the installation key, applied by the server at enrollment.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl std::fmt::Debug for SavedEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedEnrollment")
            .field("url", &self.url)
            .field("org_id", &self.org_id)
            .field("key_id", &self.key_id)
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

impl SavedEnrollment {
    /// Loads the saved enrollment. A missing or unreadable file means the
    /// sensor enrolls again, which returns the same SID for the same host.
    pub fn load(state_dir: &Path) -> Option<SavedEnrollment> {
        let path = state_dir.join(ENROLLMENT_FILE);
        let bytes = fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(saved) => Some(saved),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "invalid saved enrollment, enrolling again");
                None
            }
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        let json = serde_json::to_vec_pretty(self).expect("enrollment is plain strings");
        write_private(&state_dir.join(ENROLLMENT_FILE), &json)
    }

    pub fn remove(state_dir: &Path) -> Result<(), IdentityError> {
        let path = state_dir.join(ENROLLMENT_FILE);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(IdentityError::Write { path, source }),
        }
    }

    /// Returns true if this enrollment was made with the same key and server.
    pub fn matches(&self, key: &picket_event::key::InstallationKey) -> bool {
        self.url == key.url && self.org_id == key.org_id && self.key_id == key.key_id
    }
}

/// Writes a file readable only by its owner, replacing it atomically.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|source| IdentityError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_ID: &str = "0b9d8f7e-1c2d-4e3f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn identity_hashes_machine_id_with_key() {
        let host = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        fs::create_dir_all(host.path().join("etc")).unwrap();
        let machine_id = "4c4c4544004e3510804bb4c04f564433";
        fs::write(
            host.path().join("etc/machine-id"),
            format!("{machine_id}\n"),
        )
        .unwrap();

        let id = host_identity(host.path(), KEY_ID, state.path()).unwrap();
        assert_eq!(
            id.source,
            IdentitySource::MachineId(host.path().join("etc/machine-id"))
        );
        assert_eq!(id.value.len(), 64);
        assert!(!id.value.contains(machine_id));
        assert_eq!(
            id,
            host_identity(host.path(), KEY_ID, state.path()).unwrap()
        );
        let other_key = host_identity(host.path(), "another", state.path()).unwrap();
        assert_ne!(id.value, other_key.value);
    }

    #[test]
    fn identity_falls_back_to_dbus_then_state() {
        let host = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        fs::create_dir_all(host.path().join("etc")).unwrap();
        fs::write(host.path().join("etc/machine-id"), "uninitialized\n").unwrap();

        let generated = host_identity(host.path(), KEY_ID, state.path()).unwrap();
        assert!(matches!(generated.source, IdentitySource::Generated(_)));
        let again = host_identity(host.path(), KEY_ID, state.path()).unwrap();
        assert_eq!(generated, again, "generated id is kept in the state dir");

        fs::create_dir_all(host.path().join("var/lib/dbus")).unwrap();
        fs::write(
            host.path().join("var/lib/dbus/machine-id"),
            "0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        let dbus = host_identity(host.path(), KEY_ID, state.path()).unwrap();
        assert_eq!(
            dbus.source,
            IdentitySource::MachineId(host.path().join("var/lib/dbus/machine-id"))
        );
    }

    #[test]
    fn saved_enrollment_round_trips_privately() {
        use std::os::unix::fs::PermissionsExt;
        let state = tempfile::tempdir().unwrap();
        assert_eq!(SavedEnrollment::load(state.path()), None);
        let saved = SavedEnrollment {
            url: "https://127.0.0.1:1".into(),
            org_id: "o".into(),
            key_id: "k".into(),
            sid: "s".into(),
            credential: "c".into(),
            tags: vec!["prod".into()],
        };
        saved.save(state.path()).unwrap();
        assert_eq!(SavedEnrollment::load(state.path()), Some(saved.clone()));
        let mode = fs::metadata(state.path().join(ENROLLMENT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            !format!("{saved:?}").contains("credential"),
            "Debug leaves out the credential"
        );
        SavedEnrollment::remove(state.path()).unwrap();
        assert_eq!(SavedEnrollment::load(state.path()), None);
    }
}
