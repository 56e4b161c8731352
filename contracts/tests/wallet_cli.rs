//! `spare wallet` end to end against anvil. The CLI module is compiled in here from
//! cli/src/wallet.rs so its argument parsing and output paths run with the real client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[path = "../../cli/src/wallet.rs"]
#[allow(dead_code)]
mod wallet;

use alloy::network::TransactionBuilder;
use alloy::primitives::U256;
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use clap::Parser;
use spare_contracts::config::{CHAIN_CONFIG_FILE, load_or_create_wallet_key};
use spare_contracts::{ChainConfig, ChannelStatus};

use common::{CHAIN_ID, Chain, client_provider};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    wallet: wallet::WalletArgs,
}

async fn spare_wallet(data_dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(std::iter::once("wallet").chain(args.iter().copied()))?;
    wallet::run(cli.wallet, data_dir).await
}

#[tokio::test]
async fn wallet_commands_run_against_anvil() {
    let chain = Chain::start().await;
    let data_dir = tempfile::tempdir().unwrap();
    ChainConfig {
        rpc_url: chain.anvil.endpoint(),
        chain_id: CHAIN_ID,
        channel_contract: chain.deployment.channels,
        token: chain.deployment.token,
        deploy_block: 0,
    }
    .save(&data_dir.path().join(CHAIN_CONFIG_FILE))
    .unwrap();

    // `address` creates the key; fund that account with ETH for gas and 100 tUSD.
    spare_wallet(data_dir.path(), &["address"]).await.unwrap();
    let me = load_or_create_wallet_key(data_dir.path())
        .unwrap()
        .address();
    let funder = client_provider(&chain.anvil, 0).await;
    let gas_money = TransactionRequest::default()
        .with_to(me)
        .with_value(U256::from(10u64).pow(U256::from(18u64)));
    funder
        .send_transaction(gas_money)
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    chain.mint(me, U256::from(100_000_000u64)).await;

    // Open with 25 tUSD, top up 5, list, and close in two steps around the delay.
    let payee = chain.payee.address().to_string();
    spare_wallet(
        data_dir.path(),
        &["open", &payee, "25", "--close-delay", "3600"],
    )
    .await
    .unwrap();
    let ids = chain.payee.channel_ids(Some(me), None, 0).await.unwrap();
    assert_eq!(ids.len(), 1);
    let channel = ids[0].to_string();
    spare_wallet(data_dir.path(), &["deposit", &channel, "5"])
        .await
        .unwrap();
    assert_eq!(
        chain.payee.channel(ids[0]).await.unwrap().deposit,
        U256::from(30_000_000u64)
    );
    spare_wallet(data_dir.path(), &["channels"]).await.unwrap();
    spare_wallet(data_dir.path(), &["balance"]).await.unwrap();

    spare_wallet(data_dir.path(), &["close", &channel])
        .await
        .unwrap();
    assert_eq!(
        chain.payee.channel(ids[0]).await.unwrap().status,
        ChannelStatus::Closing
    );
    spare_wallet(data_dir.path(), &["close", &channel])
        .await
        .unwrap();
    assert_eq!(
        chain.payee.channel(ids[0]).await.unwrap().status,
        ChannelStatus::Closing,
        "delay not over yet"
    );
    chain.advance_time(3600).await;
    spare_wallet(data_dir.path(), &["close", &channel])
        .await
        .unwrap();
    assert_eq!(
        chain.payee.channel(ids[0]).await.unwrap().status,
        ChannelStatus::Finalised
    );
    assert_eq!(chain.token_balance(me).await, U256::from(100_000_000u64));

    // Nothing was redeemed, so there is nothing to withdraw, and the error says so.
    let err = spare_wallet(data_dir.path(), &["withdraw"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has no"), "{err}");
}

#[tokio::test]
async fn wallet_errors_say_what_to_do() {
    let chain = Chain::start().await;
    let data_dir = tempfile::tempdir().unwrap();
    let endpoint = chain.anvil.endpoint();
    let channels = chain.deployment.channels.to_string();
    let token = chain.deployment.token.to_string();
    let base = [
        "--rpc-url",
        endpoint.as_str(),
        "--channel-contract",
        channels.as_str(),
        "--token",
        token.as_str(),
    ];

    let wrong_chain = [&base[..], &["--chain-id", "1", "balance"]].concat();
    let err = spare_wallet(data_dir.path(), &wrong_chain)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wrong chain"), "{err}");

    let payee = chain.payee.address().to_string();
    let broke = [
        &base[..],
        &["--chain-id", "31337", "open", payee.as_str(), "10"],
    ]
    .concat();
    let err = spare_wallet(data_dir.path(), &broke).await.unwrap_err();
    assert!(err.to_string().contains("insufficient funds"), "{err}");

    let unreachable = [
        "--rpc-url",
        "http://127.0.0.1:9",
        "--chain-id",
        "31337",
        "--channel-contract",
        channels.as_str(),
        "--token",
        token.as_str(),
        "balance",
    ];
    let err = spare_wallet(data_dir.path(), &unreachable)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no Ethereum RPC reachable"),
        "{err}"
    );

    let missing = spare_wallet(tempfile::tempdir().unwrap().path(), &["balance"])
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("missing rpc_url"), "{missing}");
}
