//! SHA-256 of executables for `CODE_IDENTITY`, computed once per file
//! identity (device, inode, modification time, size) rather than per exec.
//!
//! Hash through `$HOST_FS/proc/<pid>/exe` when the process is alive: that
//! link opens the very file that was executed, even when it was deleted or
//! lives in another mount namespace.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Identity of a file for hashing: two opens with equal identity are one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i128,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("cannot open {path} for hashing")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path} for hashing")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, over the hashing limit of {limit} bytes")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
}

impl FileIdentity {
    /// Returns the identity of an open file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            size: meta.size(),
        }
    }
}

/// Computes the lower-case hex SHA-256 of what remains to be read from
/// `file`. `path` only names the file in errors.
pub fn sha256_hex(file: &mut impl Read, path: &Path) -> Result<String, HashError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(HashError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A new hash: the first time this file identity was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeIdentity {
    pub identity: FileIdentity,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub size: u64,
}

/// Remembers which file identities were hashed; the oldest are forgotten past
/// `capacity`, so a forgotten file is hashed (and reported) again.
pub struct HashCache {
    seen: HashMap<FileIdentity, String>,
    order: VecDeque<FileIdentity>,
    capacity: usize,
    max_bytes: u64,
}

impl HashCache {
    /// `max_bytes` bounds the size of a file that is hashed at all.
    pub fn new(capacity: usize, max_bytes: u64) -> HashCache {
        HashCache {
            seen: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            max_bytes,
        }
    }

    /// Hashes the file at `path` unless its identity was hashed before.
    /// Returns `Ok(None)` for an identity already seen.
    pub fn hash_once(&mut self, path: &Path) -> Result<Option<CodeIdentity>, HashError> {
        let mut file = File::open(path).map_err(|source| HashError::Open {
            path: path.to_owned(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| HashError::Read {
            path: path.to_owned(),
            source,
        })?;
        let identity = FileIdentity::of(&meta);
        if self.seen.contains_key(&identity) {
            return Ok(None);
        }
        if meta.size() > self.max_bytes {
            return Err(HashError::TooLarge {
                path: path.to_owned(),
                size: meta.size(),
                limit: self.max_bytes,
            });
        }
        let sha256 = sha256_hex(&mut file, path)?;
        self.remember(identity, sha256.clone());
        Ok(Some(CodeIdentity {
            identity,
            sha256,
            size: meta.size(),
        }))
    }

    /// Returns the hash recorded for an identity, if it is still cached.
    pub fn lookup(&self, identity: &FileIdentity) -> Option<&str> {
        self.seen.get(identity).map(String::as_str)
    }

    fn remember(&mut self, identity: FileIdentity, sha256: String) {
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.order.push_back(identity);
        self.seen.insert(identity, sha256);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hash_once_hashes_first_open_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        std::fs::write(&path, b"abc").unwrap();
        let mut cache = HashCache::new(16, 1 << 20);

        let first = cache
            .hash_once(&path)
            .unwrap()
            .expect("first sight is hashed");
        assert_eq!(
            first.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(first.size, 3);
        assert!(cache.hash_once(&path).unwrap().is_none());
    }

    #[test]
    fn changed_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        std::fs::write(&path, b"abc").unwrap();
        let mut cache = HashCache::new(16, 1 << 20);
        cache.hash_once(&path).unwrap();

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"d").unwrap();
        drop(file);
        let second = cache
            .hash_once(&path)
            .unwrap()
            .expect("new size means new identity");
        assert_eq!(second.size, 4);
    }

    #[test]
    fn file_over_limit_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        let mut cache = HashCache::new(16, 10);
        assert!(matches!(
            cache.hash_once(&path),
            Err(HashError::TooLarge { size: 100, .. })
        ));
    }

    #[test]
    fn cache_forgets_oldest_past_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = HashCache::new(1, 1 << 20);
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        cache.hash_once(&a).unwrap();
        cache.hash_once(&b).unwrap();
        assert!(cache.hash_once(&a).unwrap().is_some());
    }
}
