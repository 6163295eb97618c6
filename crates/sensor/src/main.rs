//! `picket-sensor`: command line, start-up order and exit codes. The work is
//! in the library; this file only wires it together.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use picket_sensor::config::{Args, Config, Env, TierChoice, DEFAULT_POLL_INTERVAL};
use picket_sensor::enrich::{Enricher, Stats};
use picket_sensor::hostfs::HostFs;
use picket_sensor::namespaces::{self, CgroupNs, HostFacts};
use picket_sensor::sensor;

/// Picket host sensor: reports every process on the host, in containers and
/// out, as EDR events.
///
/// Environment: HOST_FS (where the host's / is mounted, default /), NET_NS
/// (directory of network namespace files), LC_INSTALLATION_KEY (key read by
/// `-d -`), LC_MOD_LOAD_LOC (writable, exec-allowed directory for loadable
/// files).
#[derive(Debug, Parser)]
#[command(
    name = "picket-sensor",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Installation key, or `-` to read it from LC_INSTALLATION_KEY.
    #[arg(short = 'd', value_name = "KEY")]
    key: Option<String>,

    /// Write events to stdout as JSON lines, one record per line.
    #[arg(long)]
    stdout: bool,

    /// Highest acquisition tier to try; lower tiers are the fallback.
    #[arg(long, value_enum, default_value = "auto")]
    tier: TierChoice,

    /// Directory for the sensor's identity and spool (default: the working
    /// directory).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Interval of the /proc polling tier, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_POLL_INTERVAL.as_millis() as u64)]
    poll_interval_ms: u64,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print what the sensor makes of its inputs, as one JSON object.
    #[command(subcommand)]
    Explain(Explain),
    /// Print every TCP and UDP socket of every network namespace on the
    /// host, with its process and container.
    Netstat,
}

#[derive(Debug, Subcommand)]
enum Explain {
    /// Container attribution of a /proc/<pid>/cgroup content (FILE, or - for
    /// stdin).
    Cgroup { file: String },
    /// Everything the sensor would report about a live host process.
    Pid { pid: u32 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    let host_fs = HostFs::new(
        env.get("HOST_FS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/")),
    );

    // setns(CLONE_NEWCGROUP) moves only the calling thread, so it comes
    // before anything starts a thread (the async runtime, collectors).
    let cgroup_ns = if matches!(cli.command, Some(Command::Explain(Explain::Cgroup { .. }))) {
        CgroupNs::Unknown("not checked for explain cgroup".into())
    } else {
        namespaces::join_host_cgroup_ns(&host_fs)
    };
    init_logging();

    let result = match cli.command {
        Some(Command::Explain(Explain::Cgroup { file })) => explain_cgroup(&host_fs, &file),
        Some(Command::Explain(Explain::Pid { pid })) => explain_pid(host_fs, cgroup_ns, pid),
        Some(Command::Netstat) => netstat(&host_fs, &env),
        None => run_sensor(
            cli.key,
            cli.stdout,
            cli.tier,
            cli.state_dir,
            cli.poll_interval_ms,
            &env,
            cgroup_ns,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("picket-sensor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal, not for files or `docker logs`.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run_sensor(
    key: Option<String>,
    stdout: bool,
    tier: TierChoice,
    state_dir: Option<PathBuf>,
    poll_interval_ms: u64,
    env: &Env,
    cgroup_ns: CgroupNs,
) -> anyhow::Result<()> {
    let args = Args {
        key_arg: key,
        stdout,
        tier,
        state_dir,
        poll_interval: std::time::Duration::from_millis(poll_interval_ms.max(1)),
    };
    let resolved = match Config::resolve(args, env) {
        Ok(resolved) => resolved,
        Err(problems) => {
            for problem in &problems {
                eprintln!("picket-sensor: {problem}");
            }
            anyhow::bail!("cannot start: {} configuration problem(s)", problems.len());
        }
    };
    for warning in &resolved.warnings {
        tracing::error!("{warning}");
    }
    let config = resolved.config;

    let host = HostFacts::read(&config.host_fs, cgroup_ns);
    log_host_facts(&host);
    let containers = sensor::container_lookup(&config.host_fs, &host);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(sensor::run(config, host, containers))
}

fn log_host_facts(host: &HostFacts) {
    match &host.pid_ns {
        namespaces::NsState::Host => tracing::info!("in the host PID namespace"),
        namespaces::NsState::Private => {
            tracing::warn!("not in the host PID namespace; host processes are read through HOST_FS/proc and the netlink tier is unavailable")
        }
        namespaces::NsState::Unknown(reason) => {
            tracing::warn!(%reason, "host PID namespace unknown")
        }
    }
    match &host.cgroup_ns {
        CgroupNs::Host => tracing::info!("in the host cgroup namespace"),
        CgroupNs::Joined => tracing::info!("joined the host cgroup namespace"),
        CgroupNs::JoinFailed(reason) => {
            tracing::error!(%reason, "cannot join the host cgroup namespace; container attribution is unavailable")
        }
        CgroupNs::Unknown(reason) => {
            tracing::warn!(%reason, "host cgroup namespace unknown; container attribution may be wrong")
        }
    }
    tracing::info!(hostname = %host.hostname, boot_id = %host.boot_id, kernel = %host.kernel_release, "host identified");
}

/// Prints the socket table. Container attribution needs the host cgroup
/// namespace, which `main` joined before this runs.
fn netstat(host_fs: &HostFs, env: &Env) -> anyhow::Result<()> {
    // The same checks as the sensor's: without the host's /proc the table
    // would be empty or show only this container's sockets.
    let stat = host_fs.path("/proc/1/stat");
    if !stat.exists() {
        anyhow::bail!(picket_sensor::config::ConfigError::HostFsNoProc {
            value: host_fs.root().display().to_string(),
            path: stat.display().to_string(),
        });
    }
    let net_ns = env.get("NET_NS").map(PathBuf::from);
    if let Some(dir) = &net_ns {
        if let Err(e) = std::fs::read_dir(dir) {
            let problem = picket_sensor::config::ConfigError::NetNsUnreadable {
                value: dir.display().to_string(),
                reason: e.to_string(),
            };
            tracing::warn!("{problem}");
        }
    }
    let resolver = picket_sensor::container::ContainerResolver::new(host_fs.root());
    let mut out = std::io::stdout().lock();
    picket_sensor::netstat::run(
        host_fs.root(),
        net_ns.as_deref(),
        std::sync::Arc::new(resolver),
        &mut out,
    )
    .context("cannot write the socket table")
}

fn explain_cgroup(host_fs: &HostFs, file: &str) -> anyhow::Result<()> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    print_line(&sensor::explain_cgroup(host_fs, &text).to_string())
}

fn explain_pid(host_fs: HostFs, cgroup_ns: CgroupNs, pid: u32) -> anyhow::Result<()> {
    if !host_fs.exists("/proc/1/stat") {
        anyhow::bail!(
            "HOST_FS={}: proc/1/stat not found; set HOST_FS to where the host's / is mounted",
            host_fs.root().display()
        );
    }
    let host = HostFacts::read(&host_fs, cgroup_ns);
    let containers = sensor::container_lookup(&host_fs, &host);
    let mut enricher = Enricher::new(
        host_fs.clone(),
        host.boot_id.clone(),
        host.hostname.clone(),
        containers,
        std::sync::Arc::new(Stats::default()),
    );
    let mut report = enricher
        .explain_pid(pid)
        .with_context(|| format!("cannot read process {pid}"))?;
    let cgroup_text = report["cgroup"].as_str().unwrap_or_default().to_owned();
    report["attribution"] = sensor::explain_cgroup(&host_fs, &cgroup_text);
    report["namespaces"] = host.to_json();
    print_line(&report.to_string())
}

/// Prints one line to stdout; a closed pipe (`| head`) is not an error.
fn print_line(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}
