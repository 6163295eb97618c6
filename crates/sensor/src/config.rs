//! Sensor configuration from the command line and the environment.
//!
//! The deployment contract fixes the inputs: `-d KEY` or `-d -` (key taken
//! from `LC_INSTALLATION_KEY`), `HOST_FS` (default `/`), `NET_NS` and
//! `LC_MOD_LOAD_LOC`. The environment is read through [`Env`], so tests fill
//! it without touching the process environment. Every problem is collected
//! and reported at once, each on one line that names the variable, its value
//! and what to do.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use picket_event::key::InstallationKey;

use crate::hostfs::{self, HostFs};

/// A snapshot of environment variables.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, OsString>,
}

impl Env {
    /// Captures the environment of this process.
    pub fn from_process() -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .collect();
        Env { vars }
    }

    pub fn from_pairs<K: Into<String>, V: Into<OsString>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Returns the value of `name`. An empty value counts as unset.
    pub fn get(&self, name: &str) -> Option<&OsString> {
        self.vars.get(name).filter(|v| !v.is_empty())
    }
}

/// Acquisition tier choice. `Auto` tries the best tier first; a named
/// tier is the highest the sensor will try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TierChoice {
    Auto,
    Ebpf,
    Netlink,
    Procpoll,
}

/// The command-line inputs that [`Config::resolve`] combines with the
/// environment.
#[derive(Debug, Clone)]
pub struct Args {
    /// `-d` value: a key, `-` for `LC_INSTALLATION_KEY`, or absent.
    pub key_arg: Option<String>,
    pub stdout: bool,
    pub tier: TierChoice,
    pub state_dir: Option<PathBuf>,
    pub poll_interval: Duration,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            key_arg: None,
            stdout: false,
            tier: TierChoice::Auto,
            state_dir: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Config {
    pub host_fs: HostFs,
    pub net_ns: Option<PathBuf>,
    pub key: Option<InstallationKey>,
    pub mod_load_loc: Option<PathBuf>,
    pub stdout: bool,
    pub tier: TierChoice,
    /// Directory for the sensor's identity and spool; the working directory
    /// when not given.
    pub state_dir: PathBuf,
    pub poll_interval: Duration,
}

/// One configuration problem. `fatal` problems stop the sensor; the others
/// are logged and the sensor runs without the affected feature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("HOST_FS={value}: {path} not found; mount the host's / (for example -v /:/rootfs:ro) and set HOST_FS to the mount point")]
    HostFsNoProc { value: String, path: String },
    #[error("NET_NS={value} is not readable ({reason}); mount the host's netns directory (for example -v /var/run/docker/netns:/netns:ro) or unset NET_NS")]
    NetNsUnreadable { value: String, reason: String },
    #[error("-d - reads the installation key from LC_INSTALLATION_KEY, which is not set; set it or pass the key as -d KEY")]
    KeyMissing,
    #[error("-d - reads the installation key from LC_INSTALLATION_KEY, which is empty; set it to the key printed by `picket-server key create`")]
    KeyEmpty,
    #[error("installation key from {source_name} is invalid: {reason}")]
    KeyInvalid {
        source_name: &'static str,
        reason: String,
    },
    #[error("LC_MOD_LOAD_LOC={value} {reason}; point it at a writable directory on a file system mounted without noexec")]
    ModLoadLoc { value: String, reason: String },
    #[error("no output selected; pass -d KEY (or -d - with LC_INSTALLATION_KEY) to send events, or --stdout to print them")]
    NoOutput,
}

impl ConfigError {
    /// True when the sensor cannot run with this problem.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ConfigError::NetNsUnreadable { .. } | ConfigError::ModLoadLoc { .. }
        )
    }
}

/// A resolved configuration with the problems that did not stop it.
#[derive(Debug)]
pub struct Resolved {
    pub config: Config,
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// Combines arguments and environment. Returns every problem when any is
    /// fatal.
    pub fn resolve(args: Args, env: &Env) -> Result<Resolved, Vec<ConfigError>> {
        let mut problems = Vec::new();

        let host_fs_value = env
            .get("HOST_FS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        let host_fs = HostFs::new(&host_fs_value);
        if !host_fs.path("/proc/1/stat").exists() {
            problems.push(ConfigError::HostFsNoProc {
                value: host_fs_value.display().to_string(),
                path: host_fs.path("/proc/1/stat").display().to_string(),
            });
        }

        let net_ns = env.get("NET_NS").map(PathBuf::from);
        if let Some(dir) = &net_ns {
            if let Err(e) = std::fs::read_dir(dir) {
                problems.push(ConfigError::NetNsUnreadable {
                    value: dir.display().to_string(),
                    reason: e.to_string(),
                });
            }
        }

        let key = match resolve_key(args.key_arg.as_deref(), env) {
            Ok(key) => key,
            Err(problem) => {
                problems.push(problem);
                None
            }
        };
        if args.key_arg.is_none() && !args.stdout {
            problems.push(ConfigError::NoOutput);
        }

        let mod_load_loc = env.get("LC_MOD_LOAD_LOC").map(PathBuf::from);
        if let Some(dir) = &mod_load_loc {
            if let Some(reason) = check_mod_load_loc(dir) {
                problems.push(ConfigError::ModLoadLoc {
                    value: dir.display().to_string(),
                    reason,
                });
            }
        }

        if problems.iter().any(ConfigError::is_fatal) {
            return Err(problems);
        }
        let config = Config {
            host_fs,
            net_ns,
            key,
            mod_load_loc,
            stdout: args.stdout,
            tier: args.tier,
            state_dir: args.state_dir.unwrap_or_else(|| PathBuf::from(".")),
            poll_interval: args.poll_interval,
        };
        Ok(Resolved {
            config,
            warnings: problems,
        })
    }
}

fn resolve_key(key_arg: Option<&str>, env: &Env) -> Result<Option<InstallationKey>, ConfigError> {
    let (text, source_name) = match key_arg {
        None => return Ok(None),
        Some("-") => {
            let value = env
                .get("LC_INSTALLATION_KEY")
                .ok_or(ConfigError::KeyMissing)?;
            if value.to_string_lossy().trim().is_empty() {
                return Err(ConfigError::KeyEmpty);
            }
            (value.to_string_lossy().into_owned(), "LC_INSTALLATION_KEY")
        }
        Some(text) => (text.to_owned(), "-d"),
    };
    InstallationKey::decode(&text)
        .map(Some)
        .map_err(|e| ConfigError::KeyInvalid {
            source_name,
            reason: e.to_string(),
        })
}

/// Returns why `dir` cannot serve as `LC_MOD_LOAD_LOC`, if it cannot.
fn check_mod_load_loc(dir: &Path) -> Option<String> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) => return Some(format!("cannot be used ({e})")),
    };
    if !meta.is_dir() {
        return Some("is not a directory".to_owned());
    }
    if !hostfs::is_writable(dir) {
        return Some("is not writable".to_owned());
    }
    match hostfs::mount_flags(dir) {
        Ok(flags) if flags & hostfs::ST_NOEXEC != 0 => {
            Some("is on a file system mounted noexec".to_owned())
        }
        Ok(_) => None,
        Err(e) => Some(format!("mount flags cannot be read ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/1")).unwrap();
        std::fs::write(dir.path().join("proc/1/stat"), "1 (init) S 0").unwrap();
        dir
    }

    fn stdout_args() -> Args {
        Args {
            stdout: true,
            ..Args::default()
        }
    }

    fn sample_key() -> String {
        InstallationKey {
            url: "https://127.0.0.1:4443".into(),
            org_id: uuid::Uuid::new_v4().to_string(),
            key_id: uuid::Uuid::new_v4().to_string(),
            secret: "a".repeat(64),
            cert_sha256: "b".repeat(64),
        }
        .encode()
    }

    #[test]
    fn host_fs_without_proc_is_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::from_pairs([("HOST_FS", dir.path().as_os_str())]);
        let problems = Config::resolve(stdout_args(), &env).unwrap_err();
        assert_eq!(problems.len(), 1);
        let message = problems[0].to_string();
        assert!(
            message.starts_with(&format!("HOST_FS={}", dir.path().display())),
            "{message}"
        );
        assert!(message.contains("mount the host's /"), "{message}");
    }

    #[test]
    fn dash_key_without_variable_is_fatal() {
        let root = fixture_root();
        let env = Env::from_pairs([("HOST_FS", root.path().as_os_str())]);
        let args = Args {
            key_arg: Some("-".into()),
            ..Args::default()
        };
        let problems = Config::resolve(args, &env).unwrap_err();
        assert_eq!(problems, vec![ConfigError::KeyMissing]);
        assert!(problems[0].to_string().contains("LC_INSTALLATION_KEY"));
    }

    #[test]
    fn empty_key_variable_is_named_empty() {
        let root = fixture_root();
        let env = Env::from_pairs([
            ("HOST_FS", root.path().as_os_str()),
            ("LC_INSTALLATION_KEY", std::ffi::OsStr::new(" \n")),
        ]);
        let args = Args {
            key_arg: Some("-".into()),
            ..Args::default()
        };
        let problems = Config::resolve(args, &env).unwrap_err();
        assert_eq!(problems, vec![ConfigError::KeyEmpty]);
        assert!(problems[0].to_string().contains("is empty"));
    }

    #[test]
    fn dash_key_reads_variable() {
        let root = fixture_root();
        let key = sample_key();
        let env = Env::from_pairs([
            ("HOST_FS", root.path().as_os_str().to_owned()),
            ("LC_INSTALLATION_KEY", key.clone().into()),
        ]);
        let args = Args {
            key_arg: Some("-".into()),
            ..Args::default()
        };
        let resolved = Config::resolve(args, &env).unwrap();
        assert_eq!(resolved.config.key.unwrap().encode(), key);
    }

    #[test]
    fn invalid_key_names_its_source() {
        let root = fixture_root();
        let env = Env::from_pairs([("HOST_FS", root.path().as_os_str())]);
        let args = Args {
            key_arg: Some("nonsense".into()),
            ..Args::default()
        };
        let problems = Config::resolve(args, &env).unwrap_err();
        assert!(matches!(
            &problems[0],
            ConfigError::KeyInvalid {
                source_name: "-d",
                ..
            }
        ));
    }

    #[test]
    fn every_problem_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::from_pairs([
            ("HOST_FS", dir.path().as_os_str().to_owned()),
            ("NET_NS", dir.path().join("missing-netns").into_os_string()),
        ]);
        let args = Args {
            key_arg: Some("-".into()),
            ..Args::default()
        };
        let problems = Config::resolve(args, &env).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn unreadable_net_ns_is_a_warning() {
        let root = fixture_root();
        let env = Env::from_pairs([
            ("HOST_FS", root.path().as_os_str().to_owned()),
            ("NET_NS", root.path().join("nope").into_os_string()),
        ]);
        let resolved = Config::resolve(stdout_args(), &env).unwrap();
        assert_eq!(resolved.warnings.len(), 1);
        let message = resolved.warnings[0].to_string();
        assert!(message.starts_with("NET_NS="), "{message}");
    }

    #[test]
    fn mod_load_loc_file_is_rejected() {
        let root = fixture_root();
        let file = root.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let env = Env::from_pairs([
            ("HOST_FS", root.path().as_os_str().to_owned()),
            ("LC_MOD_LOAD_LOC", file.into_os_string()),
        ]);
        let resolved = Config::resolve(stdout_args(), &env).unwrap();
        assert!(
            matches!(&resolved.warnings[0], ConfigError::ModLoadLoc { reason, .. } if reason == "is not a directory")
        );
    }

    #[test]
    fn mod_load_loc_noexec_is_rejected() {
        // /dev/shm and /run are mounted noexec on most distributions; /proc
        // always is. Use the first noexec directory found.
        let Some(dir) = ["/dev/shm", "/run", "/proc"]
            .iter()
            .map(Path::new)
            .find(|p| {
                hostfs::mount_flags(p).is_ok_and(|f| f & hostfs::ST_NOEXEC != 0)
                    && hostfs::is_writable(p)
            })
        else {
            println!("skipped: no writable noexec mount found");
            return;
        };
        assert_eq!(
            check_mod_load_loc(dir).as_deref(),
            Some("is on a file system mounted noexec")
        );
    }

    #[test]
    fn empty_variable_counts_as_unset() {
        let env = Env::from_pairs([("HOST_FS", "")]);
        assert!(env.get("HOST_FS").is_none());
    }

    #[test]
    fn no_output_is_fatal() {
        let root = fixture_root();
        let env = Env::from_pairs([("HOST_FS", root.path().as_os_str())]);
        let problems = Config::resolve(Args::default(), &env).unwrap_err();
        assert_eq!(problems, vec![ConfigError::NoOutput]);
    }
}
