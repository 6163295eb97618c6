//! `picket-server serve`: the gRPC listener for sensors (TLS 1.3 only) and
//! the HTTP API listener, over one data directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use picket_event::proto::sensor_server::SensorServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::api;
use crate::ingest::{Ingest, LiveSensors, MAX_MESSAGE_BYTES};
use crate::store::{SqliteStore, Store};
use crate::tls;
use crate::writer::{error_chain, Writer};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the WAL is copied into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// URL sensors use, written into installation keys; defaults to
    /// `https://<grpc listen address>`.
    pub advertise_url: Option<String>,
    /// Extra subject alternative names for a newly created certificate.
    pub cert_sans: Vec<String>,
    /// Events are rejected while free space is below this.
    pub min_free_bytes: u64,
}

/// A started server; dropping it does not stop it, call [`Running::shutdown`].
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub fingerprint: String,
    pub store: Arc<dyn Store>,
    shutdown: Vec<oneshot::Sender<()>>,
    _checkpointer: std::sync::mpsc::Sender<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting connections and waits for the listeners to finish.
    pub async fn shutdown(mut self) {
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Names a new certificate should cover for `listen` plus `extra`.
pub fn cert_names(listen: &SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names = extra.to_vec();
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names
}

/// Binds both listeners and starts serving.
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    let sqlite = SqliteStore::open(&config.data_dir, config.min_free_bytes)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let checkpointer = sqlite
        .start_checkpointer(CHECKPOINT_INTERVAL)
        .context("starting WAL checkpoints")?;
    let store: Arc<dyn Store> = Arc::new(sqlite);
    store
        .mark_all_offline()
        .context("resetting sensor online state")?;

    let cert = tls::load_or_create(
        &config.data_dir,
        &cert_names(&config.grpc_listen, &config.cert_sans),
    )
    .context("loading the server certificate")?;
    if cert.created {
        tracing::info!(path = %cert.cert_path.display(), fingerprint = %cert.fingerprint, "created self-signed certificate");
    } else {
        tracing::info!(path = %cert.cert_path.display(), fingerprint = %cert.fingerprint, "using certificate");
    }
    let tls_config = tls::server_config(&cert).context("building the TLS configuration")?;

    let grpc_listener = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("binding the gRPC listener to {}", config.grpc_listen))?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener to {}", config.http_listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    if grpc_addr.ip().is_unspecified() && config.advertise_url.is_none() {
        tracing::warn!(%grpc_addr, "listening on all addresses without --advertise-url; installation keys will name an address sensors cannot use");
    }

    let writer = Writer::start(store.clone());
    let live = Arc::new(LiveSensors::default());
    let ingest = Ingest::new(store.clone(), writer, live.clone());

    let (grpc_stop, grpc_stopped) = oneshot::channel::<()>();
    let incoming = accept_tls(grpc_listener, TlsAcceptor::from(tls_config));
    let grpc_task = tokio::spawn(async move {
        let service = SensorServer::new(ingest).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = grpc_stopped.await;
            })
            .await;
        if let Err(error) = result {
            tracing::error!(error = %error_chain(&error), "gRPC server stopped");
        }
    });

    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let router = api::router(api::ApiState {
        store: store.clone(),
        live,
    });
    let http_task = tokio::spawn(async move {
        let result = axum::serve(http_listener, router)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "HTTP server stopped");
        }
    });

    tracing::info!(%grpc_addr, %http_addr, data = %config.data_dir.display(), "server started");
    Ok(Running {
        grpc_addr,
        http_addr,
        fingerprint: cert.fingerprint,
        store,
        shutdown: vec![grpc_stop, http_stop],
        _checkpointer: checkpointer,
        tasks: vec![grpc_task, http_task],
    })
}

/// Accepts TCP connections and completes TLS handshakes concurrently, so a
/// slow or hostile peer delays only itself.
fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let failures = Arc::new(FailureLog::default());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => failures.record(peer, &error.to_string()),
                    Err(_) => failures.record(peer, "handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Logs failed TLS handshakes at most once per 10 s, with a count of those
/// not logged, so a scanner cannot flood the log.
#[derive(Default)]
struct FailureLog {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl FailureLog {
    fn record(&self, peer: SocketAddr, error: &str) {
        let now = picket_event::record::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 10_000 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.last_ms.store(now, Ordering::Relaxed);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(%peer, error, suppressed, "TLS handshake failed");
    }
}
