//! Deploys the contracts to a local anvil at fixed addresses and writes `<data dir>/chain.toml`.
//! Run through `scripts/deploy-local.sh`, which can also start anvil.

use std::path::PathBuf;

use alloy::network::TransactionBuilder;
use alloy::primitives::U256;
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use anyhow::Context;
use clap::Parser;
use spare_contracts::anvil::Anvil;
use spare_contracts::bindings::TestUSD;
use spare_contracts::config::{CHAIN_CONFIG_FILE, load_or_create_wallet_key};
use spare_contracts::deploy::{DEFAULT_FEE_BPS, deploy_deterministic};
use spare_contracts::rpc::signing_provider;
use spare_contracts::{ChainConfig, ChannelClient};

/// Flags of the local deployment.
#[derive(Debug, Parser)]
struct Args {
    /// JSON-RPC URL of the local anvil.
    #[arg(long, env = "SPARE_RPC_URL", default_value = "http://127.0.0.1:8545")]
    rpc_url: String,

    /// Data directory whose chain.toml and wallet.key `spare` reads.
    #[arg(long, env = "SPARE_DATA_DIR")]
    data_dir: PathBuf,

    /// Give the wallet in the data directory this many ETH for gas (0 to skip).
    #[arg(long, default_value_t = 10)]
    fund_eth: u64,

    /// Mint this many test dollars (tUSD) to the wallet in the data directory (0 to skip).
    #[arg(long, default_value_t = 10_000)]
    fund_usd: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();

    // anvil's first dev account deploys; its fourth is the treasury, as in the crate's tests.
    let deployer = Anvil::dev_signer(0)?;
    let treasury = Anvil::dev_signer(3)?.address();
    let provider = signing_provider(&args.rpc_url, &deployer)?;
    let chain_id = provider.get_chain_id().await.with_context(|| {
        format!(
            "no Ethereum RPC reachable at {}; start anvil or pass --start-anvil",
            args.rpc_url
        )
    })?;

    let deployment = deploy_deterministic(&provider, treasury, DEFAULT_FEE_BPS).await?;
    let config = ChainConfig {
        rpc_url: args.rpc_url.clone(),
        chain_id,
        channel_contract: deployment.channels,
        token: deployment.token,
        deploy_block: 0,
    };
    let config_path = args.data_dir.join(CHAIN_CONFIG_FILE);
    config.save(&config_path)?;
    println!("channel_contract = {}", deployment.channels);
    println!("token            = {}", deployment.token);
    println!("treasury         = {}", deployment.treasury);
    println!("wrote {}", config_path.display());

    let wallet = load_or_create_wallet_key(&args.data_dir)?.address();
    if args.fund_eth > 0 {
        let wei = U256::from(args.fund_eth) * U256::from(10u64).pow(U256::from(18u64));
        let transfer = TransactionRequest::default()
            .with_to(wallet)
            .with_value(wei);
        provider
            .send_transaction(transfer)
            .await?
            .get_receipt()
            .await?;
    }
    if args.fund_usd > 0 {
        let token = TestUSD::new(deployment.token, provider.clone());
        let amount = U256::from(args.fund_usd) * U256::from(1_000_000u64);
        token
            .mint(wallet, amount)
            .send()
            .await?
            .get_receipt()
            .await?;
    }
    if args.fund_eth > 0 || args.fund_usd > 0 {
        println!(
            "wallet {wallet} funded with {} ETH and {} tUSD",
            args.fund_eth, args.fund_usd
        );
    }

    // Connecting checks the written settings the way `spare wallet` will.
    ChannelClient::connect(
        &config.rpc_url,
        config.chain_id,
        config.channel_contract,
        deployer,
    )
    .await?;
    Ok(())
}
