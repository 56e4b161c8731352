//! `spare`: run a provider node, a buyer gateway, or manage a wallet.
//!
//! This binary only parses arguments, merges them with the config file and starts the
//! library crates; see `spare-node` and `spare-gateway` for the logic.

mod config;
mod gateway;
mod node;
mod wallet;

use std::path::PathBuf;

use std::time::Duration;

use clap::{Parser, Subcommand};
use spare_gossip::identity::Identity;
use spare_gossip::{Multiaddr, Network, NetworkConfig, NetworkHandle};

/// A hubless peer-to-peer market for LLM inference.
#[derive(Debug, Parser)]
#[command(name = "spare", version, about)]
struct Cli {
    /// Folder for keys, stores and the default config file [default: ~/.spare].
    #[arg(long, global = true, env = "SPARE_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Config file (TOML) [default: <data-dir>/config.toml when it exists].
    #[arg(long, global = true, env = "SPARE_CONFIG")]
    config: Option<PathBuf>,

    /// Log filter, such as `info` or `spare_node=debug,info`.
    #[arg(long, global = true, env = "SPARE_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sell inference: serve local model servers to the network.
    Node(node::NodeArgs),
    /// Buy inference: an OpenAI-compatible HTTP server on loopback.
    Gateway(gateway::GatewayArgs),
    /// Manage the EVM wallet and payment channels.
    Wallet(wallet::WalletArgs),
}

/// Peer discovery flags shared by `spare node` and `spare gateway`.
#[derive(Debug, clap::Args)]
struct DiscoveryArgs {
    /// Peer to dial at start (repeatable); a `/p2p/<peer id>` suffix is optional.
    #[arg(long = "bootstrap", value_name = "MULTIADDR", env = "SPARE_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,

    /// Turn off mDNS discovery on the local network [default: mDNS on].
    #[arg(long, env = "SPARE_NO_MDNS")]
    no_mdns: bool,
}

impl DiscoveryArgs {
    /// Builds the swarm settings from these flags, the `[network]` section of the config file
    /// and the listen addresses already picked for the role.
    fn network_config(&self, listen: Vec<Multiaddr>, file: &config::NetworkSection) -> NetworkConfig {
        NetworkConfig {
            listen,
            bootstrap: config::pick_list(self.bootstrap.clone(), file.bootstrap.clone(), Vec::new()),
            mdns: if self.no_mdns { false } else { file.mdns.unwrap_or(true) },
            idle_connection_timeout: Duration::from_secs(60),
        }
    }
}

/// Starts the swarm, runs `role` with its handle, then stops the swarm.
async fn with_network<T, F, Fut>(identity: &Identity, config: NetworkConfig, role: F) -> anyhow::Result<T>
where
    F: FnOnce(NetworkHandle) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let (network, handle) = Network::new(identity, config)?;
    let network_task = tokio::spawn(network.run());
    let result = role(handle.clone()).await;

    handle.shutdown().await;
    let _ = network_task.await;
    Ok(result)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.clone().unwrap_or_else(config::default_data_dir);
    let file = config::ConfigFile::load(cli.config.as_deref(), &data_dir)?;
    match cli.command {
        Command::Node(args) => node::run(args, &data_dir, file).await,
        Command::Gateway(args) => gateway::run(args, &data_dir, file).await,
        Command::Wallet(args) => wallet::run(args, &data_dir).await,
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| anyhow::anyhow!("invalid --log filter {filter:?}: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
