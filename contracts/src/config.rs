//! Chain settings (`<data_dir>/chain.toml`) and the wallet key (`<data_dir>/wallet.key`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the chain settings inside the data directory.
pub const CHAIN_CONFIG_FILE: &str = "chain.toml";
/// File name of the EVM wallet key inside the data directory.
pub const WALLET_KEY_FILE: &str = "wallet.key";

/// Chain settings: endpoint, chain id and contract addresses. `scripts/deploy-local.sh` writes them for a local anvil.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainConfig {
    /// JSON-RPC endpoint, for example `http://127.0.0.1:8545`.
    pub rpc_url: String,
    /// Chain id the endpoint must serve (31337 for anvil).
    pub chain_id: u64,
    /// Address of the `PaymentChannels` contract.
    pub channel_contract: Address,
    /// ERC-20 token channels are opened in by default (the test stablecoin on local chains).
    pub token: Address,
    /// Block the contract was deployed in; log scans start here.
    #[serde(default)]
    pub deploy_block: u64,
}

/// Chain settings given on the command line or in the environment; each one overrides the file.
#[derive(Clone, Debug, Default)]
pub struct ChainOverrides {
    /// Overrides `rpc_url`.
    pub rpc_url: Option<String>,
    /// Overrides `chain_id`.
    pub chain_id: Option<u64>,
    /// Overrides `channel_contract`.
    pub channel_contract: Option<Address>,
    /// Overrides `token`.
    pub token: Option<Address>,
}

#[derive(Debug, Default, Deserialize)]
struct PartialChainConfig {
    rpc_url: Option<String>,
    chain_id: Option<u64>,
    channel_contract: Option<Address>,
    token: Option<Address>,
    #[serde(default)]
    deploy_block: u64,
}

impl ChainConfig {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|err| Error::InvalidConfig {
            path: path.to_owned(),
            message: err.to_string(),
        })
    }

    /// Writes the settings to `path`, replacing the file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|err| Error::InvalidConfig {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        let body =
            format!("# Chain settings for spare; written by scripts/deploy-local.sh.\n{text}");
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| Error::Io {
                path: parent.to_owned(),
                source,
            })?;
        }
        let temporary = path.with_extension("toml.tmp");
        fs::write(&temporary, body).map_err(|source| Error::Io {
            path: temporary.clone(),
            source,
        })?;
        fs::rename(&temporary, path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Merges `<data_dir>/chain.toml` (if present) with `overrides`, which win.
    pub fn resolve(data_dir: &Path, overrides: &ChainOverrides) -> Result<Self> {
        let path = data_dir.join(CHAIN_CONFIG_FILE);
        let file = match fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str::<PartialChainConfig>(&text).map_err(|err| Error::InvalidConfig {
                    path: path.clone(),
                    message: err.to_string(),
                })?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => PartialChainConfig::default(),
            Err(source) => return Err(Error::Io { path, source }),
        };

        let missing = |setting, flag, env| Error::MissingSetting {
            setting,
            path: path.clone(),
            flag,
            env,
        };
        Ok(Self {
            rpc_url: overrides
                .rpc_url
                .clone()
                .or(file.rpc_url)
                .ok_or_else(|| missing("rpc_url", "rpc-url", "SPARE_RPC_URL"))?,
            chain_id: overrides
                .chain_id
                .or(file.chain_id)
                .ok_or_else(|| missing("chain_id", "chain-id", "SPARE_CHAIN_ID"))?,
            channel_contract: overrides
                .channel_contract
                .or(file.channel_contract)
                .ok_or_else(|| {
                    missing(
                        "channel_contract",
                        "channel-contract",
                        "SPARE_CHANNEL_CONTRACT",
                    )
                })?,
            token: overrides
                .token
                .or(file.token)
                .ok_or_else(|| missing("token", "token", "SPARE_TOKEN"))?,
            deploy_block: file.deploy_block,
        })
    }
}

/// Returns the path of the wallet key in `data_dir`.
pub fn wallet_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(WALLET_KEY_FILE)
}

/// Loads the wallet key from `<data_dir>/wallet.key`, creating a random one with mode 0600 on
/// first use. The key is stored as 64 hex digits and never logged.
pub fn load_or_create_wallet_key(data_dir: &Path) -> Result<PrivateKeySigner> {
    let path = wallet_key_path(data_dir);
    match fs::read_to_string(&path) {
        Ok(text) => return parse_key(&path, &text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Io { path, source }),
    }

    fs::create_dir_all(data_dir).map_err(|source| Error::Io {
        path: data_dir.to_owned(),
        source,
    })?;
    let signer = PrivateKeySigner::random();
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    let mut file = match created {
        Ok(file) => file,
        // Another process created it first; use its key so both agree.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = fs::read_to_string(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            return parse_key(&path, &text);
        }
        Err(source) => return Err(Error::Io { path, source }),
    };
    let body = format!("{}\n", alloy::hex::encode(signer.to_bytes()));
    file.write_all(body.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    tracing::info!(address = %signer.address(), path = %path.display(), "Created wallet key");
    Ok(signer)
}

fn parse_key(path: &Path, text: &str) -> Result<PrivateKeySigner> {
    warn_if_readable_by_others(path);
    let invalid = |message: String| Error::InvalidKey {
        path: path.to_owned(),
        message,
    };
    let trimmed = text.trim();
    let hex = trimmed.strip_prefix("0x").unwrap_or(trimmed);
    let bytes = alloy::hex::decode(hex).map_err(|_| invalid("not hex".into()))?;
    let key = B256::try_from(bytes.as_slice())
        .map_err(|_| invalid(format!("expected 32 bytes, got {}", bytes.len())))?;
    PrivateKeySigner::from_bytes(&key)
        .map_err(|_| invalid("not a valid secp256k1 private key".into()))
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(metadata) = fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "Wallet key is readable by other users; run chmod 600 on it");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn wallet_key_created_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let signer = load_or_create_wallet_key(dir.path()).unwrap();

        let mode = fs::metadata(wallet_key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_or_create_wallet_key(dir.path()).unwrap().address(),
            signer.address()
        );
    }

    #[test]
    fn wallet_key_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(wallet_key_path(dir.path()), "not a key").unwrap();
        let err = load_or_create_wallet_key(dir.path()).unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    }

    #[test]
    fn chain_config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let config = ChainConfig {
            rpc_url: "http://127.0.0.1:8545".into(),
            chain_id: 31337,
            channel_contract: Address::repeat_byte(1),
            token: Address::repeat_byte(2),
            deploy_block: 3,
        };
        let path = dir.path().join(CHAIN_CONFIG_FILE);
        config.save(&path).unwrap();
        assert_eq!(ChainConfig::load(&path).unwrap(), config);
    }

    #[test]
    fn overrides_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = ChainConfig {
            rpc_url: "http://127.0.0.1:8545".into(),
            chain_id: 31337,
            channel_contract: Address::repeat_byte(1),
            token: Address::repeat_byte(2),
            deploy_block: 0,
        };
        config.save(&dir.path().join(CHAIN_CONFIG_FILE)).unwrap();
        let overrides = ChainOverrides {
            chain_id: Some(5),
            token: Some(Address::repeat_byte(9)),
            ..Default::default()
        };

        let resolved = ChainConfig::resolve(dir.path(), &overrides).unwrap();
        assert_eq!(resolved.chain_id, 5);
        assert_eq!(resolved.token, Address::repeat_byte(9));
        assert_eq!(resolved.rpc_url, config.rpc_url);
    }

    #[test]
    fn missing_setting_names_flag() {
        let dir = tempfile::tempdir().unwrap();
        let err = ChainConfig::resolve(dir.path(), &ChainOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("--rpc-url"), "{err}");
    }
}
