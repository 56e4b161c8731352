//! The crate's error type. Messages name the failing value and what to do about it.

use std::path::PathBuf;

use alloy::primitives::{Address, B256, U256};

/// Errors from the channel client, voucher checks, configuration and the local anvil harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The RPC endpoint at the configured URL could not be reached.
    #[error(
        "no Ethereum RPC reachable at {url} ({source}); start the node (for a local chain: \
         scripts/deploy-local.sh --start-anvil) or pass --rpc-url / set SPARE_RPC_URL"
    )]
    RpcUnreachable {
        /// The configured RPC URL.
        url: String,
        /// The transport error of the first request.
        #[source]
        source: alloy::transports::TransportError,
    },

    /// The RPC URL is not a valid URL.
    #[error("invalid RPC URL {url:?}: {message}; pass a URL such as http://127.0.0.1:8545")]
    InvalidRpcUrl {
        /// The rejected URL.
        url: String,
        /// The parser's message.
        message: String,
    },

    /// The endpoint serves another chain than the configuration names.
    #[error(
        "wrong chain: the RPC at {url} serves chain id {actual} but chain id {expected} is configured; \
         point --rpc-url at the right chain or fix chain_id in chain.toml"
    )]
    WrongChain {
        /// The RPC URL.
        url: String,
        /// Configured chain id.
        expected: u64,
        /// Chain id the endpoint returned.
        actual: u64,
    },

    /// No contract code at a configured address.
    #[error(
        "no contract code at {address} on chain {chain_id}; deploy the contracts \
         (scripts/deploy-local.sh for a local chain) or fix the {setting} address"
    )]
    NoContractCode {
        /// The configured address.
        address: Address,
        /// Chain the lookup ran on.
        chain_id: u64,
        /// Setting that contains the address (`channel_contract` or `token`).
        setting: &'static str,
    },

    /// The account has less than an operation needs.
    #[error(
        "insufficient funds: {account} has {available} {asset} base units but needs {needed}; \
         fund the account and retry"
    )]
    InsufficientFunds {
        /// The account that pays.
        account: Address,
        /// Asset that is short: `ETH` or the token's symbol.
        asset: String,
        /// Base units required.
        needed: U256,
        /// Base units held.
        available: U256,
    },

    /// A contract call reverted; `reason` is the decoded custom error when known.
    #[error("{call} reverted: {reason}")]
    Reverted {
        /// Contract function that reverted.
        call: &'static str,
        /// Decoded revert reason.
        reason: String,
    },

    /// A sent transaction was mined but failed.
    #[error(
        "{call} transaction {tx_hash} was mined but failed; inspect it with the node's trace API"
    )]
    TransactionFailed {
        /// Contract function called.
        call: &'static str,
        /// Hash of the failed transaction.
        tx_hash: B256,
    },

    /// A sent transaction was not mined in time.
    #[error(
        "{call} transaction {tx_hash} was not mined within {waited:?}; check the node is mining and the gas price is high enough"
    )]
    ReceiptTimeout {
        /// Contract function called.
        call: &'static str,
        /// Hash of the pending transaction.
        tx_hash: B256,
        /// How long the client waited.
        waited: std::time::Duration,
    },

    /// A deployment transaction succeeded but left no code at the expected address.
    #[error(
        "deployment left no code at {address}; the init code reverted or the CREATE2 deployer differs"
    )]
    DeploymentMissing {
        /// Address the contract was expected at.
        address: Address,
    },

    /// An RPC request failed for a reason other than a revert.
    #[error("{call} failed: {source}")]
    Rpc {
        /// Operation that failed.
        call: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A channel id is not known to the contract.
    #[error("channel {0} not found; check the id with `spare wallet channels`")]
    ChannelNotFound(B256),

    /// A signature is malformed, malleable (high s) or from another signer.
    #[error("invalid signature: {0}")]
    InvalidSignature(String),

    /// Reading or writing a file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The chain config file is not valid TOML for [`crate::ChainConfig`].
    #[error("invalid chain config {path}: {message}")]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// Reason the value is invalid.
        message: String,
    },

    /// A required chain setting is neither in the config file nor given as a flag.
    #[error(
        "missing {setting}: set it in {path} (scripts/deploy-local.sh writes it for a local chain) \
         or pass --{flag} / set {env}"
    )]
    MissingSetting {
        /// Setting name in chain.toml.
        setting: &'static str,
        /// The config file looked at.
        path: PathBuf,
        /// Command-line flag that sets it.
        flag: &'static str,
        /// Environment variable that sets it.
        env: &'static str,
    },

    /// The wallet key file does not hold a 32-byte hex private key.
    #[error(
        "invalid wallet key in {path}: {message}; restore the file from a backup or move it away to create a new key"
    )]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// Reason the value is invalid.
        message: String,
    },

    /// An amount given by the user cannot be read.
    #[error(
        "invalid amount {input:?}: {message}; write a decimal number of whole units such as 12.5"
    )]
    InvalidAmount {
        /// The rejected text.
        input: String,
        /// Reason the value is invalid.
        message: String,
    },

    /// The anvil binary was not found.
    #[error(
        "anvil not found at {path}; run scripts/contracts-toolchain.sh or set SPARE_ANVIL to an anvil binary"
    )]
    AnvilMissing {
        /// Path that was checked.
        path: PathBuf,
    },

    /// anvil did not start or did not accept connections in time.
    #[error("anvil failed to start: {0}")]
    AnvilStart(String),

    /// The chain has no CREATE2 deployer, so deterministic deployment is impossible.
    #[error(
        "no CREATE2 deployer at {0} on this chain; anvil has it by default, other chains need it deployed first"
    )]
    NoCreate2Deployer(Address),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
