//! `picket-server`: command-line entry point. Parses arguments and calls the
//! library; see `picket_server::serve` and `picket_server::admin`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use picket_server::admin::{self, Format};
use picket_server::filter::FilterArgs;
use picket_server::serve::{self, ServeConfig};

#[derive(Parser)]
#[command(
    name = "picket-server",
    version,
    about = "Picket platform: enrollment, ingest, storage and search"
)]
struct Cli {
    /// Data directory holding the database, the certificate and its key.
    #[arg(
        long,
        global = true,
        env = "PICKET_DATA",
        default_value = "picket-data"
    )]
    data: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC (sensors) and HTTP (API) listeners.
    Serve(ServeArgs),
    /// Manage organisations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Manage installation keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// List sensors.
    #[command(subcommand)]
    Sensors(SensorsCommand),
    /// Search events.
    #[command(subcommand)]
    Events(EventsCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// Address of the gRPC listener for sensors (TLS 1.3).
    #[arg(long, default_value = "127.0.0.1:4443")]
    grpc_listen: SocketAddr,
    /// Address of the HTTP API listener (plain HTTP; keep it on loopback or
    /// behind a TLS proxy).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_listen: SocketAddr,
    /// URL sensors use to reach the gRPC listener, written into installation keys.
    #[arg(long)]
    advertise_url: Option<String>,
    /// Extra DNS name or IP address for the self-signed certificate created on first start.
    #[arg(long = "cert-san")]
    cert_sans: Vec<String>,
    /// Reject new events while the data directory's file system has less free space than this, in MiB.
    #[arg(long, default_value_t = 256)]
    min_free_mb: u64,
}

#[derive(Args)]
struct OutputArgs {
    /// Print JSON lines (the default when stdout is not a terminal).
    #[arg(long, conflicts_with = "table")]
    json: bool,
    /// Print an aligned table (the default on a terminal).
    #[arg(long)]
    table: bool,
}

impl OutputArgs {
    fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else if self.table || std::io::stdout().is_terminal() {
            Format::Table
        } else {
            Format::Json
        }
    }
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an organisation and print its id.
    Create { name: String },
    /// List organisations.
    List(#[command(flatten)] OutputArgs),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create an installation key and print it.
    Create {
        /// Organisation id or name.
        #[arg(long)]
        org: String,
        /// Comma-separated tags applied to sensors that enroll with the key.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Free-text description.
        #[arg(long, default_value = "")]
        desc: String,
        /// Server URL for sensors; defaults to the URL `serve` advertises.
        #[arg(long)]
        url: Option<String>,
        /// Extra certificate name, used only if the certificate does not exist yet.
        #[arg(long = "cert-san")]
        cert_sans: Vec<String>,
    },
    /// List installation keys.
    List {
        /// Organisation id or name.
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke an installation key; enrolled sensors keep streaming.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Create an API key for the HTTP API and print it.
    Create {
        /// Organisation id or name.
        #[arg(long)]
        org: String,
    },
}

#[derive(Subcommand)]
enum SensorsCommand {
    /// List sensors with their tier, tags, last contact and state.
    List {
        /// Organisation id or name.
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print stored events matching the filters, oldest first.
    Query(EventsArgs),
    /// Print matching events as they are stored, until interrupted.
    Follow(EventsArgs),
}

#[derive(Args)]
struct EventsArgs {
    /// Organisation id or name.
    #[arg(long)]
    org: Option<String>,
    #[command(flatten)]
    filters: FilterArgs,
    #[command(flatten)]
    output: OutputArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    init_logging(serving);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(serving: bool) {
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data = cli.data.as_path();
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Serve(args) => run_serve(cli.data.clone(), args),
        Command::Org(OrgCommand::Create { name }) => admin::org_create(data, &name, &mut out),
        Command::Org(OrgCommand::List(output)) => admin::org_list(data, output.format(), &mut out),
        Command::Key(KeyCommand::Create {
            org,
            tags,
            desc,
            url,
            cert_sans,
        }) => admin::key_create(
            data,
            admin::KeyCreate {
                org: &org,
                tags,
                description: &desc,
                url: url.as_deref(),
                cert_sans: &cert_sans,
            },
            &mut out,
        ),
        Command::Key(KeyCommand::List { org, output }) => {
            admin::key_list(data, org.as_deref(), output.format(), &mut out)
        }
        Command::Key(KeyCommand::Revoke { id }) => admin::key_revoke(data, &id, &mut out),
        Command::Apikey(ApikeyCommand::Create { org }) => {
            admin::apikey_create(data, &org, &mut out)
        }
        Command::Sensors(SensorsCommand::List { org, output }) => {
            admin::sensors_list(data, org.as_deref(), output.format(), &mut out)
        }
        Command::Events(EventsCommand::Query(args)) => admin::events_query(
            data,
            args.org.as_deref(),
            &args.filters,
            args.output.format(),
            &mut out,
        ),
        Command::Events(EventsCommand::Follow(args)) => admin::events_follow(
            data,
            args.org.as_deref(),
            &args.filters,
            args.output.format(),
            &mut out,
        ),
    }
}

fn run_serve(data_dir: PathBuf, args: ServeArgs) -> anyhow::Result<()> {
    let advertise_url = args
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("https://{}", args.grpc_listen));
    let config = ServeConfig {
        data_dir: data_dir.clone(),
        grpc_listen: args.grpc_listen,
        http_listen: args.http_listen,
        advertise_url: args.advertise_url,
        cert_sans: args.cert_sans,
        min_free_bytes: args.min_free_mb << 20,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let running = serve::start(config).await?;
        admin::write_server_info(&data_dir, &advertise_url)?;
        tracing::info!(url = %advertise_url, "sensors use this URL; create installation keys with `picket-server key create`");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}
