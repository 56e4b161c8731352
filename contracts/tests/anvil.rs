//! Tests of the Rust side against a real anvil chain running the compiled contracts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use futures::StreamExt;
use spare_contracts::anvil::Anvil;
use spare_contracts::deploy::{DEFAULT_FEE_BPS, deploy_deterministic, deterministic_addresses};
use spare_contracts::voucher::{self, SignedVoucher};
use spare_contracts::{ChannelClient, ChannelStatus, ETH, Error, OpenRequest};

use common::{CHAIN_ID, Chain, client_provider};

const DAY: u32 = 86_400;

fn usd(dollars: u64) -> U256 {
    U256::from(dollars * 1_000_000)
}

fn open_request(chain: &Chain, token: Address, amount: U256, salt: u8) -> OpenRequest {
    OpenRequest {
        payee: chain.payee.address(),
        token,
        close_delay: DAY,
        salt: B256::repeat_byte(salt),
        amount,
    }
}

#[tokio::test]
async fn voucher_digest_and_signer_match_contract() {
    let chain = Chain::start().await;
    let domain = chain.payer.domain();

    for round in 0..48u64 {
        let signer = PrivateKeySigner::random();
        let channel_id = B256::from(rand::random::<[u8; 32]>());
        // Mix small amounts, amounts near the 128-bit cap and any 256-bit value.
        let amount = match round % 3 {
            0 => U256::from(rand::random::<u32>()),
            1 => U256::from(u128::MAX) - U256::from(rand::random::<u16>()),
            _ => U256::from_be_bytes(rand::random::<[u8; 32]>()),
        };

        let rust_digest = voucher::voucher_digest(&domain, channel_id, amount);
        let contract_digest = chain
            .payer
            .contract_voucher_digest(channel_id, amount)
            .await
            .unwrap();
        assert_eq!(rust_digest, contract_digest, "digest for round {round}");

        let signed = voucher::sign_voucher(&signer, &domain, channel_id, amount).unwrap();
        let rust_signer = voucher::recover_voucher_signer(&domain, &signed).unwrap();
        let contract_signer = chain.payer.contract_voucher_signer(&signed).await.unwrap();
        assert_eq!(
            rust_signer,
            signer.address(),
            "Rust signer for round {round}"
        );
        assert_eq!(
            contract_signer,
            signer.address(),
            "contract signer for round {round}"
        );
    }
}

#[tokio::test]
async fn token_channel_full_lifecycle() {
    let chain = Chain::start().await;
    let payer_start = chain.token_balance(chain.payer.address()).await;

    // Open and top up.
    let channel_id = chain
        .payer
        .open(&open_request(&chain, chain.deployment.token, usd(100), 1))
        .await
        .unwrap();
    chain.payer.top_up(channel_id, usd(50)).await.unwrap();
    let state = chain.payer.channel(channel_id).await.unwrap();
    assert_eq!(state.status, ChannelStatus::Open);
    assert_eq!(state.deposit, usd(150));
    assert_eq!(state.payer, chain.payer.address());
    assert_eq!(state.fee_bps, DEFAULT_FEE_BPS);

    // Redeem, then a stale voucher is a no-op.
    let ten = chain.payer.sign_voucher(channel_id, usd(10)).unwrap();
    let thirty = chain.payer.sign_voucher(channel_id, usd(30)).unwrap();
    assert_eq!(chain.payee.redeem(&ten).await.unwrap(), usd(10));
    assert_eq!(chain.payee.redeem(&thirty).await.unwrap(), usd(20));
    assert_eq!(chain.payee.redeem(&ten).await.unwrap(), U256::ZERO);
    assert_eq!(
        chain.payer.channel(channel_id).await.unwrap().claimed,
        usd(30)
    );

    // Watch for the close request the payer is about to make.
    let mut close_requests = chain
        .payee
        .watch_close_requests(Duration::from_millis(50))
        .await
        .unwrap();
    let closes_at = chain.payer.request_close(channel_id).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), close_requests.next())
        .await
        .expect("close request seen within 10 s")
        .expect("stream open")
        .unwrap();
    assert_eq!(seen.channel_id, channel_id);
    assert_eq!(seen.closes_at, closes_at);
    assert_eq!(chain.payee.close_requests(0).await.unwrap().len(), 1);

    // The payee can still redeem during the delay; the payer cannot finalise yet.
    let forty = chain.payer.sign_voucher(channel_id, usd(40)).unwrap();
    assert_eq!(chain.payee.redeem(&forty).await.unwrap(), usd(10));
    let early = chain.payer.finalise(channel_id).await.unwrap_err();
    assert!(
        matches!(&early, Error::Reverted { reason, .. } if reason.contains("not elapsed")),
        "{early}"
    );

    // After the delay the payer gets the rest back.
    chain.advance_time(u64::from(DAY)).await;
    assert_eq!(chain.payer.finalise(channel_id).await.unwrap(), usd(110));
    assert_eq!(
        chain.payer.channel(channel_id).await.unwrap().status,
        ChannelStatus::Finalised
    );
    assert_eq!(
        chain.token_balance(chain.payer.address()).await,
        payer_start - usd(40)
    );
    let late = chain.payee.redeem(&forty).await.unwrap_err();
    assert!(matches!(late, Error::Reverted { .. }), "{late}");

    // Pull payments: 90% to the payee, 10% to the treasury.
    assert_eq!(
        chain
            .payee
            .withdrawable(chain.deployment.token, chain.payee.address())
            .await
            .unwrap(),
        usd(36)
    );
    assert_eq!(
        chain.payee.withdraw(chain.deployment.token).await.unwrap(),
        usd(36)
    );
    assert_eq!(
        chain
            .treasury
            .withdraw(chain.deployment.token)
            .await
            .unwrap(),
        usd(4)
    );
    assert_eq!(chain.token_balance(chain.payee.address()).await, usd(36));
    assert_eq!(
        chain.token_balance(chain.deployment.channels).await,
        U256::ZERO
    );
}

#[tokio::test]
async fn concurrent_writes_from_one_client_succeed() {
    let chain = Chain::start().await;
    let channel_id = chain
        .payer
        .open(&open_request(&chain, chain.deployment.token, usd(1), 7))
        .await
        .unwrap();

    // Top-ups of different sizes race on the allowance and on the nonce.
    let top_ups = (1..=4u64).map(|dollars| chain.payer.top_up(channel_id, usd(dollars)));
    for result in futures::future::join_all(top_ups).await {
        result.unwrap();
    }
    assert_eq!(
        chain.payer.channel(channel_id).await.unwrap().deposit,
        usd(11)
    );
}

#[tokio::test]
async fn batch_redeem_pays_many_channels() {
    let chain = Chain::start().await;
    let mut vouchers = Vec::new();
    for salt in 1..=3u8 {
        let channel_id = chain
            .payer
            .open(&open_request(&chain, chain.deployment.token, usd(10), salt))
            .await
            .unwrap();
        vouchers.push(
            chain
                .payer
                .sign_voucher(channel_id, usd(u64::from(salt)))
                .unwrap(),
        );
    }

    assert_eq!(chain.payee.batch_redeem(&vouchers).await.unwrap(), usd(6));
    for voucher in &vouchers {
        let state = chain.payee.channel(voucher.channel_id).await.unwrap();
        assert_eq!(state.claimed, voucher.cumulative_amount);
    }
    let listed = chain
        .payee
        .channel_ids(None, Some(chain.payee.address()), 0)
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
}

#[tokio::test]
async fn eth_channel_cooperative_close() {
    let chain = Chain::start().await;
    let one_eth = U256::from(10u64).pow(U256::from(18u64));
    let channel_id = chain
        .payer
        .open(&open_request(&chain, ETH, one_eth, 9))
        .await
        .unwrap();
    let quarter = one_eth / U256::from(4u64);

    let consent = chain
        .payee
        .sign_cooperative_close(channel_id, quarter)
        .unwrap();
    let refund = chain
        .payer
        .cooperative_close(channel_id, quarter, consent)
        .await
        .unwrap();

    assert_eq!(refund, one_eth - quarter);
    assert_eq!(
        chain.payer.channel(channel_id).await.unwrap().status,
        ChannelStatus::Finalised
    );
    let net = quarter - quarter / U256::from(10u64);
    assert_eq!(
        chain
            .payee
            .withdrawable(ETH, chain.payee.address())
            .await
            .unwrap(),
        net
    );
}

#[tokio::test]
async fn authorised_redeemer_redeems_for_payee() {
    let chain = Chain::start().await;
    let channel_id = chain
        .payer
        .open(&open_request(&chain, chain.deployment.token, usd(10), 4))
        .await
        .unwrap();
    let relayer = chain.client_for(Anvil::dev_signer(0).unwrap()).await;
    let voucher = chain.payer.sign_voucher(channel_id, usd(5)).unwrap();

    let rejected = relayer.redeem(&voucher).await.unwrap_err();
    assert!(
        matches!(&rejected, Error::Reverted { reason, .. } if reason.contains("may not redeem")),
        "{rejected}"
    );

    chain
        .payee
        .set_redeemer(relayer.address(), true)
        .await
        .unwrap();
    assert_eq!(relayer.redeem(&voucher).await.unwrap(), usd(5));
}

#[tokio::test]
async fn forged_voucher_is_rejected_on_chain() {
    let chain = Chain::start().await;
    let channel_id = chain
        .payer
        .open(&open_request(&chain, chain.deployment.token, usd(10), 5))
        .await
        .unwrap();
    let forger = PrivateKeySigner::random();
    let forged: SignedVoucher =
        voucher::sign_voucher(&forger, &chain.payer.domain(), channel_id, usd(10)).unwrap();

    let err = chain.payee.redeem(&forged).await.unwrap_err();
    assert!(
        matches!(&err, Error::Reverted { reason, .. } if reason.contains("signature")),
        "{err}"
    );
}

#[tokio::test]
async fn deployment_addresses_are_fixed() {
    let first = Chain::start().await;
    let second_anvil = Anvil::spawn().unwrap();
    let provider = client_provider(&second_anvil, 0).await;
    let second = deploy_deterministic(&provider, first.deployment.treasury, DEFAULT_FEE_BPS)
        .await
        .unwrap();
    let again = deploy_deterministic(&provider, first.deployment.treasury, DEFAULT_FEE_BPS)
        .await
        .unwrap();

    assert_eq!(first.deployment, second);
    assert_eq!(second, again);
    assert_eq!(
        second,
        deterministic_addresses(first.deployment.treasury, DEFAULT_FEE_BPS)
    );
}

#[tokio::test]
async fn connect_rejects_wrong_chain() {
    let chain = Chain::start().await;
    let err = ChannelClient::connect(
        &chain.anvil.endpoint(),
        1,
        chain.deployment.channels,
        PrivateKeySigner::random(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongChain {
                expected: 1,
                actual: CHAIN_ID,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--rpc-url"), "{err}");
}

#[tokio::test]
async fn connect_reports_unreachable_rpc() {
    // Bind a port and close it again, so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let err = ChannelClient::connect(&url, CHAIN_ID, Address::ZERO, PrivateKeySigner::random())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RpcUnreachable { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

#[tokio::test]
async fn connect_rejects_missing_contract() {
    let chain = Chain::start().await;
    let err = ChannelClient::connect(
        &chain.anvil.endpoint(),
        CHAIN_ID,
        Address::repeat_byte(0x42),
        PrivateKeySigner::random(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::NoContractCode { .. }), "{err}");
}

#[tokio::test]
async fn open_without_funds_says_so() {
    let chain = Chain::start().await;
    let broke = chain.client_for(PrivateKeySigner::random()).await;
    let request = open_request(&chain, chain.deployment.token, usd(10), 6);

    let err = broke.open(&request).await.unwrap_err();
    assert!(
        matches!(&err, Error::InsufficientFunds { asset, .. } if asset == "tUSD"),
        "{err}"
    );

    let eth_request = OpenRequest {
        token: ETH,
        ..request
    };
    let err = broke.open(&eth_request).await.unwrap_err();
    assert!(
        matches!(&err, Error::InsufficientFunds { asset, .. } if asset == "ETH"),
        "{err}"
    );
}
