//! The server certificate: created self-signed on first start, then reused,
//! so the fingerprint inside installation keys stays valid.
//!
//! Sensors pin the SHA-256 of the certificate (DER) carried in their key, so
//! the certificate need not chain to any authority. Only TLS 1.3 is offered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub const CERT_FILE: &str = "server.crt";
pub const KEY_FILE: &str = "server.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("cannot parse PEM in {path}")]
    Pem {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot generate the self-signed certificate for names {names:?}")]
    Generate {
        names: Vec<String>,
        #[source]
        source: rcgen::Error,
    },
    #[error("the certificate or key in {dir} is not usable for TLS")]
    Config {
        dir: String,
        #[source]
        source: rustls::Error,
    },
}

/// The certificate and key the server presents.
pub struct ServerCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_der: Vec<u8>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    /// SHA-256 of `cert_der`, 64 lower-case hex digits.
    pub fingerprint: String,
    /// True when this call created the files.
    pub created: bool,
}

/// SHA-256 of a DER certificate as 64 hex digits.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// Loads `server.crt`/`server.key` from `dir`, creating a self-signed pair
/// with `names` as subject alternative names when neither exists.
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<ServerCert, TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let mut created = false;
    if !cert_path.exists() && !key_path.exists() {
        create(&cert_path, &key_path, names)?;
        created = true;
    }

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let display = |p: &Path| p.display().to_string();
    let cert_pem = std::fs::read(&cert_path).map_err(|source| TlsError::Read {
        path: display(&cert_path),
        source,
    })?;
    let key_pem = std::fs::read(&key_path).map_err(|source| TlsError::Read {
        path: display(&key_path),
        source,
    })?;
    let cert = CertificateDer::pem_slice_iter(&cert_pem)
        .next()
        .ok_or_else(|| TlsError::NoCertificate {
            path: display(&cert_path),
        })?
        .map_err(|source| TlsError::Pem {
            path: display(&cert_path),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: display(&key_path),
        },
        source => TlsError::Pem {
            path: display(&key_path),
            source,
        },
    })?;

    Ok(ServerCert {
        fingerprint: fingerprint(&cert),
        cert_der: cert.to_vec(),
        key,
        cert_path,
        key_path,
        created,
    })
}

fn create(cert_path: &Path, key_path: &Path, names: &[String]) -> Result<(), TlsError> {
    let mut names: Vec<String> = names.to_vec();
    for default in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == default) {
            names.push(default.to_owned());
        }
    }
    let generated = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|source| TlsError::Generate { names, source })?;

    write_private(key_path, generated.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, generated.cert.pem()).map_err(|source| TlsError::Write {
        path: cert_path.display().to_string(),
        source,
    })?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)
}

/// Builds a rustls server configuration that offers only TLS 1.3 and HTTP/2.
pub fn server_config(cert: &ServerCert) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let dir = cert
        .cert_path
        .parent()
        .unwrap_or(Path::new("."))
        .display()
        .to_string();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Config {
            dir: dir.clone(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.cert_der.clone())],
            cert.key.clone_key(),
        )
        .map_err(|source| TlsError::Config { dir, source })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), &["sensors.example".into()]).unwrap();
        assert!(first.created);
        assert_eq!(first.fingerprint.len(), 64);
        let second = load_or_create(dir.path(), &[]).unwrap();
        assert!(!second.created);
        assert_eq!(first.fingerprint, second.fingerprint);
        server_config(&second).unwrap();
    }
}
