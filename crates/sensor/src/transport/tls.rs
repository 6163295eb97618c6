//! TLS 1.3 to the server with the certificate pinned by its SHA-256.
//!
//! The server usually presents a self-signed certificate, so there is no
//! chain to check. The installation key carries the SHA-256 of the
//! certificate's DER encoding, and the verifier accepts exactly that
//! certificate. It still checks the handshake signature, so a peer that
//! replays the certificate without its private key fails the handshake.
//! Names and validity dates are not checked, because the pin already
//! identifies one certificate.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Fingerprint check outcome shared between the verifier and the connector,
/// so the connector can return a typed error instead of rustls' generic one.
type MismatchSlot = Arc<Mutex<Option<String>>>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("server URL {url} is invalid: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("failed to resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to connect to {addr}")]
    Tcp {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "server certificate does not match the installation key: expected SHA-256 {expected}, \
         server presented {presented}; the key was made for another server or its certificate \
         changed, so create a new installation key"
    )]
    CertificateMismatch { expected: String, presented: String },
    #[error("TLS handshake with {addr} failed")]
    Handshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Accepts exactly one certificate, identified by the SHA-256 of its DER.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    expected: [u8; 32],
    provider: Arc<CryptoProvider>,
    mismatch: MismatchSlot,
}

impl PinnedCertVerifier {
    fn new(expected: [u8; 32], provider: Arc<CryptoProvider>, mismatch: MismatchSlot) -> Self {
        PinnedCertVerifier {
            expected,
            provider,
            mismatch,
        }
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if presented == self.expected {
            return Ok(ServerCertVerified::assertion());
        }
        *self
            .mismatch
            .lock()
            .expect("mismatch slot is never poisoned") = Some(hex::encode(presented));
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Pinned TLS client for the server named in the installation key.
#[derive(Clone)]
pub struct PinnedTls {
    host: String,
    port: u16,
    expected_hex: String,
    connector: TlsConnector,
    mismatch: MismatchSlot,
}

impl std::fmt::Debug for PinnedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedTls")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("expected", &self.expected_hex)
            .finish_non_exhaustive()
    }
}

impl PinnedTls {
    /// Builds a TLS 1.3-only client for `url` (`https://host:port`) that
    /// trusts only the certificate whose SHA-256 is `cert_sha256` (hex).
    pub fn new(url: &str, cert_sha256: &str) -> Result<Self, ConnectError> {
        let (host, port) = parse_url(url)?;
        let expected: [u8; 32] = hex::decode(cert_sha256)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(ConnectError::Url {
                url: url.to_owned(),
                reason: "certificate fingerprint is not 64 hex digits",
            })?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mismatch = MismatchSlot::default();
        let verifier = PinnedCertVerifier::new(expected, provider.clone(), mismatch.clone());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];

        Ok(PinnedTls {
            host,
            port,
            expected_hex: hex::encode(expected),
            connector: TlsConnector::from(Arc::new(config)),
            mismatch,
        })
    }

    /// Returns `http://host:port`, the URI tonic's endpoint is built from. The
    /// scheme is http because TLS happens in [`PinnedTls::connect`], not in
    /// tonic.
    pub fn endpoint_uri(&self) -> String {
        format!("http://{}", self.authority())
    }

    /// Returns `https://host:port`, the origin put on each request.
    pub fn origin_uri(&self) -> String {
        format!("https://{}", self.authority())
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Opens a TCP connection and completes the pinned TLS handshake. The
    /// local address of the connection is returned too: it is the sensor's
    /// internal IP as seen on the route to the server.
    pub async fn connect(
        &self,
    ) -> Result<(TokioIo<TlsStream<TcpStream>>, SocketAddr), ConnectError> {
        let target = (self.host.as_str(), self.port);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
            .await
            .map_err(|source| ConnectError::Resolve {
                host: self.host.clone(),
                source,
            })?
            .collect();
        let mut last_error = None;
        let mut tcp = None;
        for addr in &addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let addr = self.authority();
        let tcp = tcp.ok_or_else(|| ConnectError::Tcp {
            addr: addr.clone(),
            source: last_error.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "host resolved to no address")
            }),
        })?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(|source| ConnectError::Tcp {
            addr: addr.clone(),
            source,
        })?;

        let server_name =
            ServerName::try_from(self.host.clone()).map_err(|_| ConnectError::Url {
                url: self.origin_uri(),
                reason: "host is neither a DNS name nor an IP address",
            })?;
        *self
            .mismatch
            .lock()
            .expect("mismatch slot is never poisoned") = None;
        match self.connector.connect(server_name, tcp).await {
            Ok(tls) => Ok((TokioIo::new(tls), local)),
            Err(source) => {
                let presented = self
                    .mismatch
                    .lock()
                    .expect("mismatch slot is never poisoned")
                    .take();
                match presented {
                    Some(presented) => Err(ConnectError::CertificateMismatch {
                        expected: self.expected_hex.clone(),
                        presented,
                    }),
                    None => Err(ConnectError::Handshake { addr, source }),
                }
            }
        }
    }
}

/// Splits `https://host:port` into host and port. An IPv6 host is written
/// in brackets. The port defaults to 443.
fn parse_url(url: &str) -> Result<(String, u16), ConnectError> {
    let invalid = |reason| ConnectError::Url {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or(invalid("must start with https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(invalid("must be https://host:port"));
    }

    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or(invalid("unclosed [ in IPv6 host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| invalid("port is not a number from 1 to 65535"))?,
        None => 443,
    };
    if host.is_empty() || port == 0 {
        return Err(invalid("must be https://host:port"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing_accepts_common_shapes() {
        assert_eq!(
            parse_url("https://127.0.0.1:4443").unwrap(),
            ("127.0.0.1".into(), 4443)
        );
        assert_eq!(
            parse_url("https://picket.example:8443/").unwrap(),
            ("picket.example".into(), 8443)
        );
        assert_eq!(
            parse_url("https://[::1]:9000").unwrap(),
            ("::1".into(), 9000)
        );
        assert_eq!(parse_url("https://host").unwrap(), ("host".into(), 443));
    }

    #[test]
    fn url_parsing_rejects_bad_input() {
        for bad in [
            "http://h:1",
            "https://",
            "https://h:0",
            "https://h:99999",
            "https://u@h:1",
            "https://[::1:5",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn endpoint_uris_bracket_ipv6() {
        let tls = PinnedTls::new("https://[::1]:9000", &"ab".repeat(32)).unwrap();
        assert_eq!(tls.endpoint_uri(), "http://[::1]:9000");
        assert_eq!(tls.origin_uri(), "https://[::1]:9000");
    }
}
