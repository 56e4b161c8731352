//! Shared setup for the anvil tests: a fresh chain with the contracts deployed and funded
//! payer, payee and treasury accounts.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::signers::local::PrivateKeySigner;
use spare_contracts::ChannelClient;
use spare_contracts::anvil::Anvil;
use spare_contracts::bindings::TestUSD;
use spare_contracts::deploy::{DEFAULT_FEE_BPS, Deployment, deploy_deterministic};
use spare_contracts::rpc::signing_provider;

pub const CHAIN_ID: u64 = 31337;
/// One million test dollars in base units (6 decimals).
pub const MINTED: u64 = 1_000_000_000_000;

pub struct Chain {
    pub anvil: Anvil,
    pub deployment: Deployment,
    pub payer: ChannelClient,
    pub payee: ChannelClient,
    pub treasury: ChannelClient,
}

impl Chain {
    pub async fn start() -> Self {
        let anvil = Anvil::spawn().unwrap_or_else(|err| panic!("{err}"));
        let deployer = client_provider(&anvil, 0).await;
        let treasury_signer = Anvil::dev_signer(3).unwrap();
        let deployment =
            deploy_deterministic(&deployer, treasury_signer.address(), DEFAULT_FEE_BPS)
                .await
                .unwrap();

        let payer = connect(&anvil, &deployment, Anvil::dev_signer(1).unwrap()).await;
        let payee = connect(&anvil, &deployment, Anvil::dev_signer(2).unwrap()).await;
        let treasury = connect(&anvil, &deployment, treasury_signer).await;
        let chain = Self {
            anvil,
            deployment,
            payer,
            payee,
            treasury,
        };
        chain.mint(chain.payer.address(), U256::from(MINTED)).await;
        chain
    }

    pub async fn mint(&self, to: Address, amount: U256) {
        let token = TestUSD::new(self.deployment.token, self.payer.provider().clone());
        token
            .mint(to, amount)
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
    }

    pub async fn token_balance(&self, account: Address) -> U256 {
        let token = TestUSD::new(self.deployment.token, self.payer.provider().clone());
        token.balanceOf(account).call().await.unwrap()
    }

    /// Moves the chain's clock forward and mines a block at the new time.
    pub async fn advance_time(&self, seconds: u64) {
        let provider = self.payer.provider();
        let _: serde_json::Value = provider
            .raw_request("evm_increaseTime".into(), (seconds,))
            .await
            .unwrap();
        let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await.unwrap();
    }

    pub async fn client_for(&self, signer: PrivateKeySigner) -> ChannelClient {
        connect(&self.anvil, &self.deployment, signer).await
    }
}

pub async fn client_provider(anvil: &Anvil, index: usize) -> DynProvider {
    signing_provider(&anvil.endpoint(), &Anvil::dev_signer(index).unwrap()).unwrap()
}

async fn connect(
    anvil: &Anvil,
    deployment: &Deployment,
    signer: PrivateKeySigner,
) -> ChannelClient {
    ChannelClient::connect(&anvil.endpoint(), CHAIN_ID, deployment.channels, signer)
        .await
        .unwrap()
}
