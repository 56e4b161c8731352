//! `spare node`: the provider.

use std::path::Path;

use anyhow::Context;
use spare_gossip::identity::Identity;
use spare_gossip::Multiaddr;
use spare_node::{NodeSettings, Price};

use crate::config::{ConfigFile, pick, pick_list};
use crate::{DiscoveryArgs, shutdown_signal, with_network};

/// Flags of `spare node`.
#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// Address to listen on for peers (repeatable) [default: /ip4/0.0.0.0/tcp/4001].
    #[arg(long = "listen", value_name = "MULTIADDR", env = "SPARE_LISTEN", value_delimiter = ',')]
    listen: Vec<Multiaddr>,

    /// OpenAI-compatible upstream base URL, such as http://127.0.0.1:8081/v1 (repeatable).
    #[arg(long = "upstream", value_name = "URL", env = "SPARE_UPSTREAM", value_delimiter = ',')]
    upstreams: Vec<String>,

    /// Requests served at once; more are refused as busy [default: 8].
    #[arg(long, env = "SPARE_MAX_CONCURRENT")]
    max_concurrent: Option<u32>,

    /// Default input price, in token base units per million tokens [default: 100000].
    #[arg(long, env = "SPARE_PRICE_INPUT")]
    price_input: Option<u64>,

    /// Default output price, in token base units per million tokens [default: 400000].
    #[arg(long, env = "SPARE_PRICE_OUTPUT")]
    price_output: Option<u64>,

    #[command(flatten)]
    discovery: DiscoveryArgs,
}

pub(crate) async fn run(args: NodeArgs, data_dir: &Path, file: ConfigFile) -> anyhow::Result<()> {
    let defaults = NodeSettings::default();
    let file_price = file.node.default_price.unwrap_or(defaults.default_price);
    let settings = NodeSettings {
        upstreams: pick_list(args.upstreams, file.node.upstreams, Vec::new()),
        max_concurrent: pick(args.max_concurrent, file.node.max_concurrent, defaults.max_concurrent),
        default_price: Price { input: args.price_input.unwrap_or(file_price.input), output: args.price_output.unwrap_or(file_price.output) },
        prices: file.node.prices,
        aliases: file.node.aliases,
        ..defaults
    };

    // Reject bad settings before anything is written to the data dir.
    settings.validate()?;
    let identity = Identity::load_or_create(&data_dir.join("node").join("identity.key")).context("cannot load the node identity")?;
    let default_listen: Multiaddr = "/ip4/0.0.0.0/tcp/4001".parse()?;
    let network_config = args.discovery.network_config(pick_list(args.listen, file.node.listen, vec![default_listen]), &file.network);
    tracing::info!(peer = %identity.peer_id(), upstreams = ?settings.upstreams, "Starting provider node");

    let signing_key = identity.signing_key.clone();
    let result = with_network(&identity, network_config, |handle| spare_node::run(settings, signing_key, handle, shutdown_signal())).await?;
    result.context("provider node failed")
}
