//! The optional TOML config file and how it merges with flags and environment variables.
//!
//! Precedence, highest first: command-line flag, `SPARE_*` environment variable, config
//! file, built-in default. clap applies the first two; [`pick`] applies the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use spare_gossip::Multiaddr;
use spare_node::Price;

/// The whole config file. Every section and field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) network: NetworkSection,
    #[serde(default)]
    pub(crate) node: NodeSection,
    #[serde(default)]
    pub(crate) gateway: GatewaySection,
}

/// `[network]`: peer discovery shared by the node and the gateway.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkSection {
    pub(crate) bootstrap: Option<Vec<Multiaddr>>,
    pub(crate) mdns: Option<bool>,
}

/// `[node]`: the provider.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSection {
    pub(crate) listen: Option<Vec<Multiaddr>>,
    pub(crate) upstreams: Option<Vec<String>>,
    pub(crate) max_concurrent: Option<u32>,
    pub(crate) default_price: Option<Price>,
    #[serde(default)]
    pub(crate) prices: BTreeMap<String, Price>,
    #[serde(default)]
    pub(crate) aliases: BTreeMap<String, String>,
}

/// `[gateway]`: the buyer's HTTP server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewaySection {
    pub(crate) listen: Option<std::net::SocketAddr>,
    pub(crate) p2p_listen: Option<Vec<Multiaddr>>,
    pub(crate) max_body_bytes: Option<usize>,
    pub(crate) first_chunk_timeout_ms: Option<u64>,
}

impl ConfigFile {
    /// Reads the config file: `explicit` if given (it must exist), else
    /// `<data_dir>/config.toml` if it exists, else an empty config.
    pub(crate) fn load(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<Self> {
        let (path, required) = match explicit {
            Some(path) => (path.to_path_buf(), true),
            None => (data_dir.join("config.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read config file {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Picks the first value that is set: from the command line or environment, then the file,
/// then the default.
pub(crate) fn pick<T>(cli: Option<T>, file: Option<T>, default: T) -> T {
    cli.or(file).unwrap_or(default)
}

/// Like [`pick`] for lists, where an empty list from the command line means unset.
pub(crate) fn pick_list<T>(cli: Vec<T>, file: Option<Vec<T>>, default: Vec<T>) -> Vec<T> {
    if cli.is_empty() { file.unwrap_or(default) } else { cli }
}

/// Returns the default data dir, `~/.spare`.
pub(crate) fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".spare")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn full_config_file_parses() {
        let text = r#"
            [network]
            bootstrap = ["/ip4/127.0.0.1/tcp/4001"]
            mdns = false

            [node]
            listen = ["/ip4/0.0.0.0/tcp/4002"]
            upstreams = ["http://127.0.0.1:8081/v1"]
            max_concurrent = 2
            default_price = { input = 1, output = 2 }
            prices = { "gemma-3-270m" = { input = 3, output = 4 } }
            aliases = { "gemma-3-270m-q4.gguf" = "gemma-3-270m" }

            [gateway]
            listen = "127.0.0.1:9090"
            max_body_bytes = 1024
            first_chunk_timeout_ms = 500
        "#;
        let config: ConfigFile = toml::from_str(text).unwrap();
        assert_eq!(config.network.mdns, Some(false));
        assert_eq!(config.node.max_concurrent, Some(2));
        assert_eq!(config.node.prices["gemma-3-270m"], Price { input: 3, output: 4 });
        assert_eq!(config.gateway.listen.unwrap().port(), 9090);
    }

    #[test]
    fn unknown_key_is_rejected() {
        assert!(toml::from_str::<ConfigFile>("[node]\nmax_concurent = 2\n").is_err());
    }

    #[test]
    fn flag_beats_file_beats_default() {
        assert_eq!(pick(Some(1), Some(2), 3), 1);
        assert_eq!(pick(None, Some(2), 3), 2);
        assert_eq!(pick(None, None, 3), 3);
        assert_eq!(pick_list(vec![], Some(vec![2]), vec![3]), vec![2]);
        assert_eq!(pick_list(vec![1], Some(vec![2]), vec![3]), vec![1]);
    }

    #[test]
    fn missing_explicit_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ConfigFile::load(Some(&dir.path().join("nope.toml")), dir.path()).is_err());
        assert!(ConfigFile::load(None, dir.path()).is_ok());
    }
}
