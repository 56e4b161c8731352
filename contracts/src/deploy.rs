//! Deterministic deployment through the CREATE2 deployer, so a fresh local chain always gets the
//! contracts at the same addresses.

use alloy::primitives::{Address, B256, Bytes, U256, address, b256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolValue;

use crate::bindings::{PaymentChannels, TestUSD};
use crate::error::{Error, Result};
use crate::rpc::{has_code, wait_for_receipt};

/// The deterministic CREATE2 deployer that anvil (and most public chains) has at this address.
/// Calldata is a 32-byte salt followed by the init code.
pub const CREATE2_DEPLOYER: Address = address!("4e59b44847b379578588920ca78fbf26c0b4956c");

/// Salt for every spare deployment; changing it moves every address.
pub const DEPLOY_SALT: B256 =
    b256!("5350415245000000000000000000000000000000000000000000000000000001");

/// Default protocol fee: 1000 basis points (10%).
pub const DEFAULT_FEE_BPS: u16 = 1_000;

/// Addresses of one deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// The `PaymentChannels` contract.
    pub channels: Address,
    /// The `TestUSD` token.
    pub token: Address,
    /// Fee receiver the channel contract was built with.
    pub treasury: Address,
}

/// Returns where [`deploy_deterministic`] puts the contracts for `treasury` and `fee_bps`.
pub fn deterministic_addresses(treasury: Address, fee_bps: u16) -> Deployment {
    Deployment {
        channels: CREATE2_DEPLOYER
            .create2_from_code(DEPLOY_SALT, channels_init_code(treasury, fee_bps)),
        token: CREATE2_DEPLOYER.create2_from_code(DEPLOY_SALT, TestUSD::BYTECODE.clone()),
        treasury,
    }
}

/// Deploys `PaymentChannels(treasury, fee_bps)` and `TestUSD` through [`CREATE2_DEPLOYER`], skipping
/// any that is already there. `provider` must carry a funded wallet.
pub async fn deploy_deterministic(
    provider: &DynProvider,
    treasury: Address,
    fee_bps: u16,
) -> Result<Deployment> {
    if !has_code(provider, CREATE2_DEPLOYER).await? {
        return Err(Error::NoCreate2Deployer(CREATE2_DEPLOYER));
    }

    let deployment = deterministic_addresses(treasury, fee_bps);
    create2(
        provider,
        deployment.channels,
        channels_init_code(treasury, fee_bps),
    )
    .await?;
    create2(provider, deployment.token, TestUSD::BYTECODE.clone()).await?;
    Ok(deployment)
}

fn channels_init_code(treasury: Address, fee_bps: u16) -> Bytes {
    let mut code = PaymentChannels::BYTECODE.to_vec();
    code.extend_from_slice(&(treasury, fee_bps).abi_encode_params());
    code.into()
}

async fn create2(provider: &DynProvider, expected: Address, init_code: Bytes) -> Result<()> {
    if has_code(provider, expected).await? {
        tracing::info!(address = %expected, "Contract already deployed");
        return Ok(());
    }

    let mut input = DEPLOY_SALT.to_vec();
    input.extend_from_slice(&init_code);
    let request = TransactionRequest::default()
        .to(CREATE2_DEPLOYER)
        .input(Bytes::from(input).into())
        .value(U256::ZERO);
    let pending = provider
        .send_transaction(request)
        .await
        .map_err(|err| Error::Rpc {
            call: "CREATE2 deploy",
            source: Box::new(err),
        })?;
    let receipt = wait_for_receipt("CREATE2 deploy", provider, *pending.tx_hash()).await?;
    if !receipt.status() {
        return Err(Error::TransactionFailed {
            call: "CREATE2 deploy",
            tx_hash: receipt.transaction_hash,
        });
    }

    if !has_code(provider, expected).await? {
        return Err(Error::DeploymentMissing { address: expected });
    }
    tracing::info!(address = %expected, tx_hash = %receipt.transaction_hash, "Deployed contract");
    Ok(())
}
