//! `spare gateway`: the buyer's OpenAI-compatible HTTP server.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use spare_gateway::{GatewayConfig, GatewayError, load_or_create_api_key};
use spare_gossip::identity::Identity;
use spare_gossip::Multiaddr;

use crate::config::{ConfigFile, pick, pick_list};
use crate::{DiscoveryArgs, shutdown_signal, with_network};

/// Flags of `spare gateway`.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewayArgs {
    /// HTTP address to serve the OpenAI-compatible API on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR", env = "SPARE_GATEWAY_LISTEN")]
    listen: Option<SocketAddr>,

    /// Address to listen on for peers (repeatable) [default: /ip4/127.0.0.1/tcp/0].
    #[arg(long = "p2p-listen", value_name = "MULTIADDR", env = "SPARE_P2P_LISTEN", value_delimiter = ',')]
    p2p_listen: Vec<Multiaddr>,

    /// Largest request body accepted, in bytes [default: 33554432 (32 MiB)].
    #[arg(long, env = "SPARE_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,

    /// Time a provider has to send its first chunk before the next one is tried, in
    /// milliseconds [default: 30000].
    #[arg(long, env = "SPARE_FIRST_CHUNK_TIMEOUT_MS")]
    first_chunk_timeout_ms: Option<u64>,

    #[command(flatten)]
    discovery: DiscoveryArgs,
}

pub(crate) async fn run(args: GatewayArgs, data_dir: &Path, file: ConfigFile) -> anyhow::Result<()> {
    // Bind first, so a busy port fails before a key or identity is created.
    let listen = pick(args.listen, file.gateway.listen, spare_gateway::config::DEFAULT_LISTEN);
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => GatewayError::AddressInUse { addr: listen },
        _ => GatewayError::Bind { addr: listen, source },
    })?;

    let gateway_dir = data_dir.join("gateway");
    let api_key = match std::env::var("SPARE_API_KEY") {
        Ok(key) if !key.is_empty() => key,
        _ => {
            let path = gateway_dir.join("api-key");
            let (key, created) = load_or_create_api_key(&path).context("cannot load the gateway API key")?;
            if created {
                println!("Created the gateway API key (stored in {}, shown only this once):\n{key}", path.display());
            }
            key
        }
    };

    let mut config = GatewayConfig::new(api_key, gateway_dir.join("reputation.redb"));
    config.listen = listen;
    config.max_body_bytes = pick(args.max_body_bytes, file.gateway.max_body_bytes, config.max_body_bytes);
    let default_timeout = config.first_chunk_timeout.as_millis() as u64;
    config.first_chunk_timeout = Duration::from_millis(pick(args.first_chunk_timeout_ms, file.gateway.first_chunk_timeout_ms, default_timeout));

    let identity = Identity::load_or_create(&gateway_dir.join("identity.key")).context("cannot load the gateway identity")?;
    let default_listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let network_config = args.discovery.network_config(pick_list(args.p2p_listen, file.gateway.p2p_listen, vec![default_listen]), &file.network);
    tracing::info!(peer = %identity.peer_id(), http = %config.listen, "Starting gateway");

    let result = with_network(&identity, network_config, |handle| spare_gateway::serve_on(listener, config, handle, shutdown_signal())).await?;
    result.context("gateway failed")
}
