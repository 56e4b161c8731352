//! RPC plumbing shared by the channel client and the deployer: building a signing provider,
//! checking the chain, sending transactions and turning reverts into readable errors.

use std::time::Duration;

use alloy::contract::CallBuilder;
use alloy::network::{Ethereum, EthereumWallet};
use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;

use crate::bindings::PaymentChannels::PaymentChannelsErrors;
use crate::channel::ChannelStatus;
use crate::error::{Error, Result};

/// Builds an HTTP provider that signs with `signer`. Nothing is sent until the first request.
pub fn signing_provider(rpc_url: &str, signer: &PrivateKeySigner) -> Result<DynProvider> {
    let url = rpc_url
        .parse::<alloy::transports::http::reqwest::Url>()
        .map_err(|err| Error::InvalidRpcUrl {
            url: rpc_url.to_owned(),
            message: err.to_string(),
        })?;
    // The default cached nonce manager advances its nonce even when gas estimation then fails
    // (for example on a revert), which leaves every later transaction stuck behind a nonce gap.
    // The simple manager requests the pending nonce from the node for each transaction instead.
    // Two transactions sent at once could then get the same nonce, so ChannelClient sends one at a
    // time. NOTE: separate clients or processes using one key can still collide.
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(signer.clone()))
        .connect_http(url)
        .erased();
    Ok(provider)
}

/// Checks the endpoint is reachable and serves `expected` as its chain id.
pub(crate) async fn check_chain(
    provider: &DynProvider,
    rpc_url: &str,
    expected: u64,
) -> Result<u64> {
    let actual = provider
        .get_chain_id()
        .await
        .map_err(|source| Error::RpcUnreachable {
            url: rpc_url.to_owned(),
            source,
        })?;
    if actual != expected {
        return Err(Error::WrongChain {
            url: rpc_url.to_owned(),
            expected,
            actual,
        });
    }
    Ok(actual)
}

/// Returns whether there is contract code at `address`.
pub(crate) async fn has_code(provider: &DynProvider, address: Address) -> Result<bool> {
    let code = provider
        .get_code_at(address)
        .await
        .map_err(|err| Error::Rpc {
            call: "eth_getCode",
            source: Box::new(err),
        })?;
    Ok(!code.is_empty())
}

/// Checks there is contract code at `address`.
pub(crate) async fn check_code(
    provider: &DynProvider,
    address: Address,
    chain_id: u64,
    setting: &'static str,
) -> Result<()> {
    if !has_code(provider, address).await? {
        return Err(Error::NoContractCode {
            address,
            chain_id,
            setting,
        });
    }
    Ok(())
}

/// Sends a contract call, waits for the receipt and maps reverts to decoded custom errors.
///
/// `send_lock` is held until the node has accepted the transaction, so the next transaction from
/// the same account sees it in the pending nonce.
pub(crate) async fn send_call<P, D>(
    call: &'static str,
    builder: CallBuilder<P, D, Ethereum>,
    send_lock: &tokio::sync::Mutex<()>,
) -> Result<TransactionReceipt>
where
    P: Provider<Ethereum>,
    D: alloy::contract::CallDecoder,
{
    let pending = {
        let _guard = send_lock.lock().await;
        builder
            .send()
            .await
            .map_err(|err| contract_error(call, err))?
    };
    let receipt = wait_for_receipt(call, pending.provider(), *pending.tx_hash()).await?;
    if !receipt.status() {
        return Err(Error::TransactionFailed {
            call,
            tx_hash: receipt.transaction_hash,
        });
    }
    tracing::debug!(call, tx_hash = %receipt.transaction_hash, gas_used = receipt.gas_used, "Transaction mined");
    Ok(receipt)
}

/// How long to wait for a sent transaction to be mined.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often to ask for the receipt of a sent transaction.
const RECEIPT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls for the receipt of `tx_hash` until [`RECEIPT_TIMEOUT`]. alloy's own `get_receipt` waits
/// without a limit, so a transaction stuck in the pool would hang the caller.
pub(crate) async fn wait_for_receipt<P: Provider<Ethereum>>(
    call: &'static str,
    provider: &P,
    tx_hash: B256,
) -> Result<TransactionReceipt> {
    let started = std::time::Instant::now();
    loop {
        let receipt = provider
            .get_transaction_receipt(tx_hash)
            .await
            .map_err(|err| Error::Rpc {
                call,
                source: Box::new(err),
            })?;
        if let Some(receipt) = receipt {
            return Ok(receipt);
        }
        if started.elapsed() > RECEIPT_TIMEOUT {
            return Err(Error::ReceiptTimeout {
                call,
                tx_hash,
                waited: RECEIPT_TIMEOUT,
            });
        }
        tokio::time::sleep(RECEIPT_POLL_INTERVAL).await;
    }
}

/// Maps a contract error. Reverts become [`Error::Reverted`] with the decoded custom error, and so
/// does a node's "insufficient funds" rejection, with a hint to fund the account. Anything else
/// becomes [`Error::Rpc`].
pub(crate) fn contract_error(call: &'static str, err: alloy::contract::Error) -> Error {
    if let Some(decoded) = err.as_decoded_interface_error::<PaymentChannelsErrors>() {
        return Error::Reverted {
            call,
            reason: describe_revert(&decoded),
        };
    }
    if let Some(data) = err.as_revert_data() {
        return Error::Reverted {
            call,
            reason: format!("undecoded revert data 0x{}", alloy::hex::encode(&data)),
        };
    }
    let text = err.to_string();
    if text.contains("insufficient funds") {
        return Error::Reverted {
            call,
            reason: format!(
                "insufficient funds for value plus gas ({text}); fund the account with ETH and retry"
            ),
        };
    }
    Error::Rpc {
        call,
        source: Box::new(err),
    }
}

fn describe_revert(error: &PaymentChannelsErrors) -> String {
    use PaymentChannelsErrors as E;
    match error {
        E::ChannelExists(e) => format!("channel {} already exists; use another salt", e.channelId),
        E::ChannelNotFound(e) => format!("channel {} not found", e.channelId),
        E::WrongStatus(e) => format!(
            "channel {} is {:?} but the call needs {:?}",
            e.channelId,
            ChannelStatus::from(e.actual),
            ChannelStatus::from(e.expected)
        ),
        E::NotPayer(e) => format!("{} is not the payer of channel {}", e.caller, e.channelId),
        E::NotRedeemer(e) => format!("{} may not redeem channel {}", e.caller, e.channelId),
        E::InvalidSignature(e) => {
            format!(
                "signature for channel {} is not from {}",
                e.channelId, e.expectedSigner
            )
        }
        E::CloseDelayNotElapsed(e) => format!(
            "close delay of channel {} not elapsed: finalise at or after unix time {} (now {})",
            e.channelId, e.closesAt, e.currentTime
        ),
        E::CloseDelayOutOfRange(e) => {
            format!(
                "close delay {}s outside [{}s, {}s]",
                e.closeDelay, e.minDelay, e.maxDelay
            )
        }
        E::NothingToWithdraw(e) => format!("{} has no {} balance to withdraw", e.account, e.token),
        other => format!("{other:?}"),
    }
}
