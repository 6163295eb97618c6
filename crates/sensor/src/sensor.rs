//! The run loop: tier selection, the enrichment thread and the outbound
//! consumers.
//!
//! A tier is anything that sends [`Fact`]s into a bounded
//! `std::sync::mpsc::SyncSender<Fact>` from its own thread. Selection tries
//! eBPF, then the netlink process connector, then `/proc` polling, and
//! records why each higher tier was not used. `--tier` names the highest
//! tier to try. The reasons appear in the `CONNECTED` event and one log line.
//!
//! Beside the tier run the network collector, whose records are forwarded to
//! the same outputs, and, with `-d KEY`, the transport to the platform. At
//! shutdown the tier stops first, then the network collector, then
//! enrichment drains its queue and the outputs flush.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use picket_event::{types, Record};
use serde_json::{Map, Value};

use crate::code_hash::{self, CodeHasher};
use crate::collect::net::kernel::KernelNetEvent;
use crate::collect::{cnproc, ebpf, net, procscan, Fact, Tier};
use crate::config::{Config, TierChoice};
use crate::container::{self, ContainerInfo, ContainerResolver, ResolverConfig};
use crate::enrich::{ContainerLookup, Enricher, Stats};
use crate::hostfs::HostFs;
use crate::namespaces::{HostFacts, NsState};
use crate::output::{self, Outbound};
use crate::process::{Prefetch, ProcessRegistry};
use crate::transport::{self, TransportConfig};

/// Capacity of the fact queue between a tier and enrichment.
pub const FACT_QUEUE: usize = 65_536;
/// Network reports of the eBPF tier waiting for the network collector.
const NET_REPORT_QUEUE: usize = 65_536;

/// Inputs a tier needs to start.
pub struct TierContext {
    pub fs: HostFs,
    /// Details a tier read at exec time, for enrichment.
    pub prefetch: Arc<Prefetch>,
    pub host: HostFacts,
    pub poll_interval: Duration,
    pub tx: SyncSender<Fact>,
    /// Channel for the eBPF tier's network reports; `None` turns its network
    /// programs off.
    pub net_tx: Option<SyncSender<KernelNetEvent>>,
    /// Set by the eBPF tier: why its network reports are unavailable.
    pub net_unavailable: std::sync::Mutex<Option<String>>,
    pub stop: Arc<AtomicBool>,
}

/// The running tier and why the higher ones are not running.
pub struct Selection {
    pub tier: Tier,
    /// (tier, reason) for each tier above the one chosen.
    pub skipped: Vec<(Tier, String)>,
    pub threads: Vec<JoinHandle<()>>,
    /// Handles that stop their tier when dropped (the eBPF tier's).
    pub guards: Vec<Box<dyn Send>>,
    /// Source of connection records: `Ok` when the eBPF tier's network
    /// programs report them, else why the socket table poll does alone.
    pub kernel_network: Result<(), String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("no acquisition tier could start: {reasons}")]
    NoTier { reasons: String },
}

/// Starts the best tier allowed by `choice`.
pub fn select_tier(choice: TierChoice, ctx: &TierContext) -> Result<Selection, SensorError> {
    let highest = match choice {
        TierChoice::Auto | TierChoice::Ebpf => Tier::Ebpf,
        TierChoice::Netlink => Tier::Netlink,
        TierChoice::Procpoll => Tier::ProcPoll,
    };
    let mut skipped = Vec::new();
    for tier in [Tier::Ebpf, Tier::Netlink, Tier::ProcPoll] {
        if tier < highest {
            skipped.push((tier, format!("not tried: --tier {}", highest.name())));
            continue;
        }
        match start_tier(tier, ctx) {
            Ok((threads, guards)) => {
                let kernel_network = if tier != Tier::Ebpf {
                    Err(format!("the {} tier has no network hooks", tier.name()))
                } else if ctx.net_tx.is_none() {
                    Err("network reports not requested".to_owned())
                } else {
                    match ctx
                        .net_unavailable
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                    {
                        Some(reason) => Err(reason),
                        None => Ok(()),
                    }
                };
                return Ok(Selection {
                    tier,
                    skipped,
                    threads,
                    guards,
                    kernel_network,
                });
            }
            Err(reason) => skipped.push((tier, reason)),
        }
    }
    let reasons = skipped
        .iter()
        .map(|(t, r)| format!("{}: {r}", t.name()))
        .collect::<Vec<_>>()
        .join("; ");
    Err(SensorError::NoTier { reasons })
}

/// A started tier: its threads, and handles that stop it when dropped.
type Started = (Vec<JoinHandle<()>>, Vec<Box<dyn Send>>);

fn start_tier(tier: Tier, ctx: &TierContext) -> Result<Started, String> {
    match tier {
        Tier::Ebpf => {
            let handle = start_ebpf(ctx)?;
            Ok((vec![spawn_existing_scan(ctx)?], vec![handle]))
        }
        Tier::Netlink => {
            if ctx.host.pid_ns != NsState::Host {
                return Err(match &ctx.host.pid_ns {
                    NsState::Unknown(why) => format!("host PID namespace unknown ({why})"),
                    _ => "not in the host PID namespace (run with --pid=host or hostPID: true); the kernel ignores process connector listeners in other PID namespaces".to_owned(),
                });
            }
            let collector = cnproc::start(
                ctx.fs.clone(),
                ctx.prefetch.clone(),
                ctx.tx.clone(),
                ctx.stop.clone(),
            )
            .map_err(|e| error_chain(&e))?;
            // Subscribed first, then scanned, so no process falls between.
            Ok((vec![collector, spawn_existing_scan(ctx)?], Vec::new()))
        }
        Tier::ProcPoll => {
            let collector = procscan::start(
                ctx.fs.clone(),
                ctx.poll_interval,
                ctx.tx.clone(),
                ctx.stop.clone(),
            )
            .map_err(|e| format!("cannot read {}: {e}", ctx.fs.path("/proc").display()))?;
            Ok((vec![collector], Vec::new()))
        }
    }
}

/// Starts the eBPF tier, or returns why it cannot run: the probe's reason
/// (no BTF, old kernel, missing capability, lockdown) without a load, else
/// the load error, which names the program.
fn start_ebpf(ctx: &TierContext) -> Result<Box<dyn Send>, String> {
    ebpf::probe(ctx.fs.root()).map_err(|e| error_chain(&e))?;
    let config = ebpf::EbpfConfig {
        host_fs: ctx.fs.root().to_path_buf(),
        ..ebpf::EbpfConfig::default()
    };
    let handle = ebpf::start_with_network(&config, ctx.tx.clone(), ctx.net_tx.clone())
        .map_err(|e| error_chain(&e))?;
    if let Some(reason) = &handle.file_events_unavailable {
        tracing::warn!(%reason, "file events unavailable in the eBPF tier");
    }
    *ctx.net_unavailable
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = handle.network_unavailable.clone();
    Ok(Box::new(handle))
}

/// Builds the container lookup. In a private cgroup namespace that could
/// not be left, `/proc/<pid>/cgroup` paths are relative to the sensor's own
/// cgroup, so the resolver is given that cgroup's host path as a prefix when
/// it can be found.
pub fn container_lookup(fs: &HostFs, host: &HostFacts) -> Box<dyn ContainerLookup> {
    let mut config = ResolverConfig::default();
    if !host.cgroup_ns.attribution_available() {
        match container::find_host_cgroup_prefix(fs.root()) {
            Ok(prefix) => {
                tracing::warn!(prefix = ?prefix, "resolving container cgroups relative to the sensor's own cgroup");
                config.cgroup_prefix = prefix;
            }
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "container attribution unavailable: cgroup paths are not host paths")
            }
        }
    }
    resolver_lookup(ContainerResolver::with_config(fs.root(), config))
}

/// Wraps `resolver` as enrichment's lookup, building each container's
/// `CONTAINER` object once.
pub fn resolver_lookup(resolver: ContainerResolver) -> Box<dyn ContainerLookup> {
    Box::new(ResolverLookup {
        resolver,
        objects: HashMap::new(),
    })
}

/// Starts the network collector (socket tables and DNS of every network
/// namespace) with a thread that forwards its records to the outputs. A
/// collector that cannot start is logged and the sensor runs without it.
fn start_network(
    config: &Config,
    host: &HostFacts,
    kernel: Option<net::kernel::KernelInput>,
    outbound: Outbound,
) -> Option<(net::NetHandle, JoinHandle<()>)> {
    let mut resolver_config = ResolverConfig::default();
    if !host.cgroup_ns.attribution_available() {
        resolver_config.cgroup_prefix = container::find_host_cgroup_prefix(config.host_fs.root())
            .ok()
            .flatten();
    }
    let resolver = Arc::new(ContainerResolver::with_config(
        config.host_fs.root(),
        resolver_config,
    ));
    let net_config = net::NetConfig {
        hostname: host.hostname.clone(),
        ..net::NetConfig::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(output::CHANNEL_CAPACITY);

    let handle = match net::spawn(
        net_config,
        config.host_fs.root().to_path_buf(),
        config.net_ns.clone(),
        resolver,
        kernel,
        tx,
    ) {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!(error = %e, "network collector unavailable; no connection or DNS events");
            return None;
        }
    };
    let forward = std::thread::Builder::new()
        .name("net-forward".into())
        .spawn(move || {
            let mut outbound = outbound;
            while let Some(record) = rx.blocking_recv() {
                if !outbound.send_blocking(record) {
                    break;
                }
            }
        });
    match forward {
        Ok(forward) => Some((handle, forward)),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the network forwarding thread");
            handle.stop();
            None
        }
    }
}

/// Adapter from [`ContainerResolver`] to [`ContainerLookup`], keeping the
/// `CONTAINER` object of each resolved container so it is built once.
struct ResolverLookup {
    resolver: ContainerResolver,
    objects: HashMap<String, (Arc<ContainerInfo>, Arc<Value>)>,
}

/// Containers whose `CONTAINER` object is kept; past it the map is cleared.
const CONTAINER_OBJECTS: usize = 4096;

impl ContainerLookup for ResolverLookup {
    fn lookup(&mut self, cgroup_text: &str) -> Option<Arc<Value>> {
        let info = self.resolver.resolve(cgroup_text)?;
        if let Some((cached, object)) = self.objects.get(&info.id) {
            // The resolver hands out a new Arc when a retry found more.
            if Arc::ptr_eq(cached, &info) {
                return Some(object.clone());
            }
        }
        if self.objects.len() >= CONTAINER_OBJECTS {
            self.objects.clear();
        }
        let object = Arc::new(info.to_json());
        self.objects.insert(info.id.clone(), (info, object.clone()));
        Some(object)
    }
}

/// Builds what `explain cgroup` prints for `/proc/<pid>/cgroup` content,
/// with the runtime metadata found under `$HOST_FS`.
pub fn explain_cgroup(fs: &HostFs, text: &str) -> Value {
    let resolver = ContainerResolver::new(fs.root());
    container::explain_cgroup_with_metadata(&resolver, text)
}

fn spawn_existing_scan(ctx: &TierContext) -> Result<JoinHandle<()>, String> {
    let fs = ctx.fs.clone();
    let tx = ctx.tx.clone();
    std::thread::Builder::new()
        .name("existing-scan".into())
        .spawn(move || {
            if let Err(e) = procscan::send_existing(&fs, &tx) {
                tracing::error!(error = %e, "cannot list existing processes");
            }
        })
        .map_err(|e| format!("cannot start the existing-process scan: {e}"))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Builds the `CONNECTED` record: host name, tier, why higher tiers were
/// not used, and the namespace facts.
pub fn connected_record(host: &HostFacts, selection: &Selection) -> Record {
    let mut record = Record::new(types::CONNECTED, &host.hostname);
    let reasons: Map<String, Value> = selection
        .skipped
        .iter()
        .map(|(tier, reason)| (tier.name().to_owned(), Value::String(reason.clone())))
        .collect();
    record
        .set("HOST_NAME", host.hostname.as_str())
        .set("IS_SEGREGATED", 0)
        .set("KERNEL_ACQ_AVAILABLE", selection.tier == Tier::Ebpf)
        .set("ACQUISITION_TIER", selection.tier.name())
        .set("TIER_REASONS", Value::Object(reasons))
        .set(
            "NETWORK_SOURCE",
            if selection.kernel_network.is_ok() {
                "ebpf"
            } else {
                "procpoll"
            },
        )
        .set("NAMESPACES", host.to_json())
        .set("KERNEL_VERSION", host.kernel_release.as_str())
        .set("SENSOR_VERSION", env!("CARGO_PKG_VERSION"));
    if let Err(reason) = &selection.kernel_network {
        record.set("NETWORK_SOURCE_REASON", reason.as_str());
    }
    record
}

/// Runs the sensor until SIGINT or SIGTERM, or until every consumer is gone.
pub async fn run(
    config: Config,
    host: HostFacts,
    containers: Box<dyn ContainerLookup>,
) -> anyhow::Result<()> {
    let mut outbound = Outbound::new();
    let mut sinks = Vec::new();
    if config.stdout {
        sinks.push(output::spawn_stdout(
            outbound.subscribe(output::CHANNEL_CAPACITY),
        ));
    }
    let transport_rx = config
        .key
        .as_ref()
        .map(|_| outbound.subscribe(output::CHANNEL_CAPACITY));
    if outbound.is_empty() {
        anyhow::bail!("no output is available; run with --stdout");
    }

    let (tx, rx) = sync_channel(FACT_QUEUE);
    let (net_tx, net_rx) = sync_channel(NET_REPORT_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let prefetch = Arc::new(Prefetch::default());
    let ctx = TierContext {
        fs: config.host_fs.clone(),
        prefetch: prefetch.clone(),
        host: host.clone(),
        poll_interval: config.poll_interval,
        tx,
        net_tx: Some(net_tx),
        net_unavailable: Default::default(),
        stop: stop.clone(),
    };
    let selection = select_tier(config.tier, &ctx)?;
    drop(ctx);
    log_selection(&selection);

    let registry = Arc::new(ProcessRegistry::default());
    let kernel_reports = selection
        .kernel_network
        .is_ok()
        .then(|| net::kernel::KernelInput {
            events: net_rx,
            processes: Some(registry.clone()),
        });
    let network = start_network(&config, &host, kernel_reports, outbound.clone());

    let transport = match (config.key.clone(), transport_rx) {
        (Some(key), Some(rx)) => {
            let mut transport_config = TransportConfig::new(key, host.hostname.clone());
            transport_config.state_dir = config.state_dir.clone();
            transport_config.host_fs = config.host_fs.root().to_path_buf();
            transport_config.tier = selection.tier.name().to_owned();
            Some(
                transport::spawn(transport_config, rx)
                    .map_err(|e| anyhow::anyhow!(error_chain(&e)))?,
            )
        }
        _ => None,
    };

    let stats = Arc::new(Stats::default());
    let connected = connected_record(&host, &selection);
    let hasher = spawn_code_hasher(&outbound, stats.clone())?;
    let enricher = Enricher::new(
        config.host_fs.clone(),
        host.boot_id.clone(),
        host.hostname.clone(),
        containers,
        stats.clone(),
    )
    .with_prefetch(prefetch)
    .with_code_hasher(hasher)
    .with_registry(registry);
    let enrich_thread = std::thread::Builder::new().name("enrich".into()).spawn({
        let stop = stop.clone();
        move || {
            enrich_loop(enricher, rx, connected, outbound);
            // Every output is closed or every tier ended: nothing more
            // can be reported, so the sensor stops.
            stop.store(true, Ordering::Relaxed);
        }
    })?;

    // A transport that ends in error (a revoked or foreign key) stops the
    // sensor, which then exits non-zero.
    let transport = transport.map(|transport| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let result = transport.join.await;
            if !matches!(result, Ok(Ok(_))) {
                stop.store(true, Ordering::Relaxed);
            }
            result
        })
    });

    wait_for_shutdown(&stop, &stats).await;
    tracing::info!("sensor stopping");
    stop.store(true, Ordering::Relaxed);
    drop(selection.guards);
    for thread in selection.threads {
        let _ = thread.join();
    }
    if let Some((handle, forward)) = network {
        let _ = tokio::task::spawn_blocking(move || {
            handle.stop();
            forward.join()
        })
        .await;
    }
    let _ = tokio::task::spawn_blocking(move || enrich_thread.join()).await;
    for sink in sinks {
        if let Ok(Err(e)) = sink.await {
            tracing::warn!(error = %e, "output ended with an error");
        }
    }
    // The exit status is non-zero after a transport failure, so an
    // orchestrator does not record a clean stop.
    let mut failure = None;
    if let Some(transport) = transport {
        match transport.await {
            Ok(Ok(Ok(summary))) => tracing::info!(summary = ?summary, "transport stopped"),
            Ok(Ok(Err(e))) => {
                failure = Some(anyhow::anyhow!("transport failed: {}", error_chain(&e)))
            }
            Ok(Err(e)) | Err(e) => failure = Some(anyhow::anyhow!("transport task failed: {e}")),
        }
    }
    tracing::info!(stats = %stats.to_json(), "sensor stopped");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Starts the worker that hashes executables for `CODE_IDENTITY` and sends
/// its records to the outputs.
fn spawn_code_hasher(outbound: &Outbound, stats: Arc<Stats>) -> anyhow::Result<CodeHasher> {
    let mut outbound = outbound.clone();
    let sink = Box::new(move |record| outbound.send_blocking(record));
    CodeHasher::spawn(sink, code_hash::DEFAULT_SIZE_LIMIT, stats)
        .map_err(|e| anyhow::anyhow!("cannot start the hashing thread: {e}"))
}

fn log_selection(selection: &Selection) {
    let reasons: Vec<String> = selection
        .skipped
        .iter()
        .map(|(t, r)| format!("{}: {r}", t.name()))
        .collect();
    tracing::info!(tier = selection.tier.name(), not_used = %reasons.join("; "), "acquisition tier selected");
    match &selection.kernel_network {
        Ok(()) => tracing::info!(source = "ebpf", "connections reported by kernel hooks"),
        Err(reason) => {
            tracing::info!(source = "procpoll", %reason, "connections reported by socket table polling")
        }
    }
}

fn enrich_loop(
    mut enricher: Enricher,
    rx: Receiver<Fact>,
    connected: Record,
    mut outbound: Outbound,
) {
    if !outbound.send_blocking(connected) {
        return;
    }
    let mut open = true;
    for fact in rx {
        enricher.handle(fact, &mut |record| {
            if open && !outbound.send_blocking(record) {
                open = false;
            }
        });
        if !open {
            tracing::info!("every output closed; enrichment stopped");
            break;
        }
    }
}

/// Interval of the counter log line.
const STATS_INTERVAL: Duration = Duration::from_secs(60);

/// Waits for SIGINT or SIGTERM, or for the stop flag (set when enrichment
/// ends), logging the counters every [`STATS_INTERVAL`].
async fn wait_for_shutdown(stop: &AtomicBool, stats: &Stats) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_stats = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = terminate.recv() => return,
            _ = tick.tick() => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if last_stats.elapsed() >= STATS_INTERVAL {
                    last_stats = tokio::time::Instant::now();
                    tracing::info!(stats = %stats.to_json(), "sensor counters");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::CgroupNs;

    /// Builds a tier context with a 100 ms poll interval.
    fn test_context(
        fs: HostFs,
        pid_ns: NsState,
        tx: SyncSender<Fact>,
        net_tx: Option<SyncSender<KernelNetEvent>>,
        stop: Arc<AtomicBool>,
    ) -> TierContext {
        TierContext {
            fs,
            prefetch: Arc::new(Prefetch::default()),
            host: host(pid_ns),
            poll_interval: Duration::from_millis(100),
            tx,
            net_tx,
            net_unavailable: Default::default(),
            stop,
        }
    }

    fn host(pid_ns: NsState) -> HostFacts {
        HostFacts {
            pid_ns,
            cgroup_ns: CgroupNs::Host,
            boot_id: "b".into(),
            hostname: "h".into(),
            kernel_release: "6.1".into(),
        }
    }

    #[test]
    fn private_pid_namespace_falls_to_procpoll() {
        let (tx, _rx) = sync_channel(1024);
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = test_context(HostFs::new("/"), NsState::Private, tx, None, stop.clone());
        // The eBPF tier may load on this host whatever the PID namespace, so
        // the test starts below it, as the non-eBPF deployment does.
        let selection = select_tier(TierChoice::Netlink, &ctx).unwrap();
        assert_eq!(selection.tier, Tier::ProcPoll);
        assert_eq!(selection.skipped.len(), 2);
        assert_eq!(
            selection.skipped[0],
            (Tier::Ebpf, "not tried: --tier netlink".to_owned())
        );
        assert_eq!(selection.skipped[1].0, Tier::Netlink);
        assert!(
            selection.skipped[1]
                .1
                .contains("not in the host PID namespace"),
            "{}",
            selection.skipped[1].1
        );

        let record = connected_record(&ctx.host, &selection);
        assert_eq!(record.event["ACQUISITION_TIER"], "procpoll");
        assert_eq!(record.event["KERNEL_ACQ_AVAILABLE"], false);
        assert_eq!(record.event["NAMESPACES"]["PID_NAMESPACE"], "private");
        assert!(record.event["TIER_REASONS"]["netlink"]
            .as_str()
            .unwrap()
            .contains("PID namespace"));
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn forced_tier_records_skipped_reason() {
        let (tx, _rx) = sync_channel(1024);
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = test_context(HostFs::new("/"), NsState::Host, tx, None, stop.clone());
        let selection = select_tier(TierChoice::Procpoll, &ctx).unwrap();
        assert_eq!(selection.tier, Tier::ProcPoll);
        assert_eq!(selection.skipped[0].1, "not tried: --tier procpoll");
        assert_eq!(selection.skipped[1].1, "not tried: --tier procpoll");

        let record = connected_record(&ctx.host, &selection);
        assert_eq!(record.event["ACQUISITION_TIER"], "procpoll");
        assert_eq!(
            record.event["TIER_REASONS"]["ebpf"],
            "not tried: --tier procpoll"
        );
        assert_eq!(
            record.event["TIER_REASONS"]["netlink"],
            "not tried: --tier procpoll"
        );
        assert_eq!(record.event["NETWORK_SOURCE"], "procpoll");
        assert_eq!(
            record.event["NETWORK_SOURCE_REASON"],
            "the procpoll tier has no network hooks"
        );
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn ebpf_tier_reports_connections_from_its_hooks() {
        if ebpf::probe(std::path::Path::new("/")).is_err() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("eBPF test prerequisite missing");
            }
            println!("skipped: no eBPF here");
            return;
        }
        let (tx, _rx) = sync_channel(1024);
        let (net_tx, _net_rx) = sync_channel(1024);
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = test_context(
            HostFs::new("/"),
            NsState::Host,
            tx,
            Some(net_tx),
            stop.clone(),
        );
        let selection = select_tier(TierChoice::Ebpf, &ctx).unwrap();
        assert_eq!(selection.tier, Tier::Ebpf);
        assert_eq!(selection.kernel_network, Ok(()));
        let record = connected_record(&ctx.host, &selection);
        assert_eq!(record.event["NETWORK_SOURCE"], "ebpf");
        assert!(record.event.get("NETWORK_SOURCE_REASON").is_none());
        stop.store(true, Ordering::Relaxed);
    }

    #[test]
    fn missing_proc_means_no_tier() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = sync_channel(16);
        let ctx = test_context(
            HostFs::new(dir.path()),
            NsState::Private,
            tx,
            None,
            Arc::new(AtomicBool::new(false)),
        );
        let Err(SensorError::NoTier { reasons }) = select_tier(TierChoice::Netlink, &ctx) else {
            panic!("a tier started without /proc")
        };
        assert!(reasons.contains("procpoll: cannot read"), "{reasons}");
    }
}
