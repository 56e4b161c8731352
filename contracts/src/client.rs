//! A client for the `PaymentChannels` contract: one account, one deployment, one chain.

use std::time::Duration;

use alloy::contract::CallBuilder;
use alloy::network::{Ethereum, EthereumWallet};
use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Eip712Domain, SolValue};
use futures::{Stream, StreamExt};

use crate::bindings::IPaymentChannels;
use crate::bindings::PaymentChannels::{self, PaymentChannelsErrors, PaymentChannelsInstance};
use crate::bindings::TestUSD::TestUSDInstance;
use crate::error::{Error, Result};
use crate::voucher::{self, SignedVoucher};

/// `token` value meaning native ETH.
pub const ETH: Address = Address::ZERO;

/// Lifecycle of a channel, as stored by the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelStatus {
    /// The id was never used.
    None,
    /// Open: the payee may redeem and the payer may top up.
    Open,
    /// Close requested: the payee may redeem until `closes_at`.
    Closing,
    /// Closed for good.
    Finalised,
}

impl From<u8> for ChannelStatus {
    fn from(value: u8) -> Self {
        match value {
            1 => Self::Open,
            2 => Self::Closing,
            3 => Self::Finalised,
            _ => Self::None,
        }
    }
}

/// Stored state of one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelState {
    /// Account that deposited and signs vouchers.
    pub payer: Address,
    /// Account that redeems vouchers.
    pub payee: Address,
    /// Deposit token, [`ETH`] for native ETH.
    pub token: Address,
    /// Seconds between a close request and the earliest finalise.
    pub close_delay: u32,
    /// Protocol fee in basis points, fixed at open.
    pub fee_bps: u16,
    /// Lifecycle state.
    pub status: ChannelStatus,
    /// Unix time from which the payer may finalise; zero until a close is requested.
    pub closes_at: u64,
    /// Total deposited, in base units.
    pub deposit: U256,
    /// Total redeemed so far, in base units.
    pub claimed: U256,
}

impl ChannelState {
    /// Deposit not yet claimed by the payee.
    pub fn remaining(&self) -> U256 {
        self.deposit.saturating_sub(self.claimed)
    }
}

/// Channel to open: the immutable configuration, which also derives the channel id, and the deposit.
#[derive(Clone, Debug)]
pub struct OpenRequest {
    /// Provider that will redeem.
    pub payee: Address,
    /// Deposit token, [`ETH`] for native ETH.
    pub token: Address,
    /// Seconds the payee has to redeem after a close request (1 hour to 30 days).
    pub close_delay: u32,
    /// Any value that makes the id unique among the payer's channels to this payee.
    pub salt: B256,
    /// Deposit in base units.
    pub amount: U256,
}

/// A close request seen on chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseRequest {
    /// The closing channel.
    pub channel_id: B256,
    /// Unix time from which the payer may finalise; redeem before it.
    pub closes_at: u64,
    /// Block the request was mined in, when the node reports it.
    pub block_number: Option<u64>,
}

/// Contract client acting as one account. Every write waits for its receipt.
#[derive(Clone, Debug)]
pub struct ChannelClient {
    provider: DynProvider,
    contract: PaymentChannelsInstance<DynProvider>,
    signer: PrivateKeySigner,
    chain_id: u64,
    rpc_url: String,
}

impl ChannelClient {
    /// Connects to `rpc_url` as `signer` and checks the chain id and that the contract exists.
    pub async fn connect(
        rpc_url: &str,
        expected_chain_id: u64,
        contract: Address,
        signer: PrivateKeySigner,
    ) -> Result<Self> {
        let provider = connect_provider(rpc_url, &signer).await?;
        let chain_id = check_chain(&provider, rpc_url, expected_chain_id).await?;
        check_code(&provider, contract, chain_id, "channel_contract").await?;

        Ok(Self {
            contract: PaymentChannels::new(contract, provider.clone()),
            provider,
            signer,
            chain_id,
            rpc_url: rpc_url.to_owned(),
        })
    }

    /// Account this client signs for.
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// Signer of this client's account.
    pub fn signer(&self) -> &PrivateKeySigner {
        &self.signer
    }

    /// Address of the channel contract.
    pub fn contract_address(&self) -> Address {
        *self.contract.address()
    }

    /// Chain id of the connected chain.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// RPC endpoint this client talks to.
    pub fn rpc_url(&self) -> &str {
        &self.rpc_url
    }

    /// Returns the provider, with this client's wallet attached.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// EIP-712 domain vouchers for this deployment are signed in.
    pub fn domain(&self) -> Eip712Domain {
        voucher::domain(self.chain_id, self.contract_address())
    }

    /// Returns the id a channel opened by this account with `request`'s configuration gets.
    pub fn channel_id(&self, request: &OpenRequest) -> B256 {
        channel_id(
            self.address(),
            request.payee,
            request.token,
            request.close_delay,
            request.salt,
        )
    }

    /// Signs a voucher for `channel_id` as this account (the payer).
    pub fn sign_voucher(&self, channel_id: B256, cumulative_amount: U256) -> Result<SignedVoucher> {
        voucher::sign_voucher(&self.signer, &self.domain(), channel_id, cumulative_amount)
    }

    /// Signs consent to close `channel_id` at once at `cumulative_amount`, as this account (the payee).
    pub fn sign_cooperative_close(
        &self,
        channel_id: B256,
        cumulative_amount: U256,
    ) -> Result<Bytes> {
        voucher::sign_cooperative_close(&self.signer, &self.domain(), channel_id, cumulative_amount)
    }

    /*--------------------------------------------------------------------
     * Writes
     *------------------------------------------------------------------*/

    /// Opens a channel and deposits; for an ERC-20 it first approves the contract if needed.
    pub async fn open(&self, request: &OpenRequest) -> Result<B256> {
        self.ensure_funds(request.token, request.amount).await?;
        let value = if request.token == ETH {
            request.amount
        } else {
            U256::ZERO
        };
        if request.token != ETH {
            self.ensure_allowance(request.token, request.amount).await?;
        }

        let call = self
            .contract
            .open(
                request.payee,
                request.token,
                request.close_delay,
                request.salt,
                request.amount,
            )
            .value(value);
        self.send("open", call).await?;

        let channel_id = self.channel_id(request);
        tracing::info!(%channel_id, payee = %request.payee, token = %request.token, amount = %request.amount, "Opened channel");
        Ok(channel_id)
    }

    /// Adds `amount` to an open channel of this account.
    pub async fn top_up(&self, channel_id: B256, amount: U256) -> Result<()> {
        let channel = self.channel(channel_id).await?;
        self.ensure_funds(channel.token, amount).await?;
        let value = if channel.token == ETH {
            amount
        } else {
            U256::ZERO
        };
        if channel.token != ETH {
            self.ensure_allowance(channel.token, amount).await?;
        }

        self.send(
            "topUp",
            self.contract.topUp(channel_id, amount).value(value),
        )
        .await?;
        tracing::info!(%channel_id, %amount, "Topped up channel");
        Ok(())
    }

    /// Redeems one voucher as the payee or an authorised redeemer; returns the amount newly claimed.
    pub async fn redeem(&self, voucher: &SignedVoucher) -> Result<U256> {
        let call = self
            .contract
            .redeem(to_binding(voucher), voucher.signature.clone());
        let receipt = self.send("redeem", call).await?;
        Ok(redeemed_total(&receipt))
    }

    /// Redeems many vouchers in one transaction; the whole batch fails if one is invalid.
    pub async fn batch_redeem(&self, vouchers: &[SignedVoucher]) -> Result<U256> {
        let bindings = vouchers.iter().map(to_binding).collect::<Vec<_>>();
        let signatures = vouchers
            .iter()
            .map(|voucher| voucher.signature.clone())
            .collect::<Vec<_>>();
        let receipt = self
            .send(
                "batchRedeem",
                self.contract.batchRedeem(bindings, signatures),
            )
            .await?;
        Ok(redeemed_total(&receipt))
    }

    /// Starts the close delay of a channel this account pays from; returns when it may be finalised.
    pub async fn request_close(&self, channel_id: B256) -> Result<u64> {
        let receipt = self
            .send("requestClose", self.contract.requestClose(channel_id))
            .await?;
        let closes_at = receipt
            .decoded_log::<PaymentChannels::CloseRequested>()
            .map(|log| u64::try_from(log.data.closesAt).unwrap_or(u64::MAX))
            .unwrap_or_default();
        tracing::info!(%channel_id, closes_at, "Requested channel close");
        Ok(closes_at)
    }

    /// Finalises a closing channel after its delay; returns the refund sent to this account.
    pub async fn finalise(&self, channel_id: B256) -> Result<U256> {
        let receipt = self
            .send("finalise", self.contract.finalise(channel_id))
            .await?;
        Ok(refund_of(&receipt))
    }

    /// Settles `cumulative_amount` and closes at once with the payee's signed consent; returns the refund.
    pub async fn cooperative_close(
        &self,
        channel_id: B256,
        cumulative_amount: U256,
        payee_signature: Bytes,
    ) -> Result<U256> {
        let call = self
            .contract
            .cooperativeClose(channel_id, cumulative_amount, payee_signature);
        let receipt = self.send("cooperativeClose", call).await?;
        Ok(refund_of(&receipt))
    }

    /// Withdraws this account's whole balance of `token` held by the contract; returns the amount.
    pub async fn withdraw(&self, token: Address) -> Result<U256> {
        let receipt = self.send("withdraw", self.contract.withdraw(token)).await?;
        let amount = receipt
            .decoded_log::<PaymentChannels::Withdrawn>()
            .map(|log| log.data.amount)
            .unwrap_or_default();
        tracing::info!(%token, %amount, "Withdrew balance");
        Ok(amount)
    }

    /// Allows or disallows `redeemer` to redeem this account's channels.
    pub async fn set_redeemer(&self, redeemer: Address, allowed: bool) -> Result<()> {
        self.send("setRedeemer", self.contract.setRedeemer(redeemer, allowed))
            .await?;
        Ok(())
    }

    /*--------------------------------------------------------------------
     * Reads
     *------------------------------------------------------------------*/

    /// Reads a channel; fails with [`Error::ChannelNotFound`] for an unused id.
    pub async fn channel(&self, channel_id: B256) -> Result<ChannelState> {
        let stored = self
            .contract
            .getChannel(channel_id)
            .call()
            .await
            .map_err(|err| contract_error("getChannel", err))?;
        let state = ChannelState {
            payer: stored.payer,
            payee: stored.payee,
            token: stored.token,
            close_delay: stored.closeDelay,
            fee_bps: stored.feeBps,
            status: ChannelStatus::from(stored.status),
            closes_at: stored.closesAt,
            deposit: U256::from(stored.deposit),
            claimed: U256::from(stored.claimed),
        };
        if state.status == ChannelStatus::None {
            return Err(Error::ChannelNotFound(channel_id));
        }
        Ok(state)
    }

    /// Balance of `token` the contract holds for `account` to withdraw.
    pub async fn withdrawable(&self, token: Address, account: Address) -> Result<U256> {
        self.contract
            .balanceOf(token, account)
            .call()
            .await
            .map_err(|err| contract_error("balanceOf", err))
    }

    /// Reads the contract's digest for a voucher, for cross-checking [`voucher::voucher_digest`].
    pub async fn contract_voucher_digest(
        &self,
        channel_id: B256,
        cumulative_amount: U256,
    ) -> Result<B256> {
        self.contract
            .voucherDigest(channel_id, cumulative_amount)
            .call()
            .await
            .map_err(|err| contract_error("voucherDigest", err))
    }

    /// Reads the EOA the contract recovers from a voucher, `Address::ZERO` if it rejects the signature.
    pub async fn contract_voucher_signer(&self, voucher: &SignedVoucher) -> Result<Address> {
        self.contract
            .voucherSigner(
                voucher.channel_id,
                voucher.cumulative_amount,
                voucher.signature.clone(),
            )
            .call()
            .await
            .map_err(|err| contract_error("voucherSigner", err))
    }

    /// Ids of channels with `payer` (if given) and `payee` (if given), from `ChannelOpened` logs
    /// since `from_block`.
    pub async fn channel_ids(
        &self,
        payer: Option<Address>,
        payee: Option<Address>,
        from_block: u64,
    ) -> Result<Vec<B256>> {
        let mut filter = self.contract.ChannelOpened_filter().from_block(from_block);
        if let Some(payer) = payer {
            filter = filter.topic2(payer);
        }
        if let Some(payee) = payee {
            filter = filter.topic3(payee);
        }
        let logs = filter
            .query()
            .await
            .map_err(|err| contract_error("ChannelOpened logs", err))?;
        Ok(logs.into_iter().map(|(event, _)| event.channelId).collect())
    }

    /// Close requests mined since `from_block`.
    pub async fn close_requests(&self, from_block: u64) -> Result<Vec<CloseRequest>> {
        let logs = self
            .contract
            .CloseRequested_filter()
            .from_block(from_block)
            .query()
            .await
            .map_err(|err| contract_error("CloseRequested logs", err))?;
        Ok(logs
            .into_iter()
            .map(|(event, log)| close_request(event, log.block_number))
            .collect())
    }

    /// Streams close requests mined from now on, polling every `poll_interval`. A payee's node
    /// watches this and redeems its newest voucher before `closes_at`.
    pub async fn watch_close_requests(
        &self,
        poll_interval: Duration,
    ) -> Result<impl Stream<Item = Result<CloseRequest>> + Unpin + use<>> {
        let mut poller = self
            .contract
            .CloseRequested_filter()
            .watch()
            .await
            .map_err(|err| Error::Rpc {
                call: "watch CloseRequested",
                source: Box::new(err),
            })?;
        poller.poller = poller.poller.with_poll_interval(poll_interval);
        Ok(poller.into_stream().map(|item| {
            item.map(|(event, log)| close_request(event, log.block_number))
                .map_err(|err| Error::Rpc {
                    call: "decode CloseRequested",
                    source: Box::new(err),
                })
        }))
    }

    /*--------------------------------------------------------------------
     * Helpers
     *------------------------------------------------------------------*/

    /// Fails with [`Error::InsufficientFunds`] when this account cannot pay `amount` of `token`.
    pub async fn ensure_funds(&self, token: Address, amount: U256) -> Result<()> {
        let (available, asset) = if token == ETH {
            (self.eth_balance(self.address()).await?, "ETH".to_owned())
        } else {
            let erc20 = TestUSDInstance::new(token, self.provider.clone());
            let balance = erc20
                .balanceOf(self.address())
                .call()
                .await
                .map_err(|err| contract_error("balanceOf", err))?;
            let symbol = erc20
                .symbol()
                .call()
                .await
                .unwrap_or_else(|_| token.to_string());
            (balance, symbol)
        };
        if available < amount {
            return Err(Error::InsufficientFunds {
                account: self.address(),
                asset,
                needed: amount,
                available,
            });
        }
        if token != ETH && self.eth_balance(self.address()).await?.is_zero() {
            return Err(Error::InsufficientFunds {
                account: self.address(),
                asset: "ETH (for gas)".to_owned(),
                needed: U256::from(1u64),
                available: U256::ZERO,
            });
        }
        Ok(())
    }

    /// ETH balance of `account` in wei.
    pub async fn eth_balance(&self, account: Address) -> Result<U256> {
        self.provider
            .get_balance(account)
            .await
            .map_err(|err| Error::Rpc {
                call: "eth_getBalance",
                source: Box::new(err),
            })
    }

    async fn ensure_allowance(&self, token: Address, amount: U256) -> Result<()> {
        let erc20 = TestUSDInstance::new(token, self.provider.clone());
        let allowance = erc20
            .allowance(self.address(), self.contract_address())
            .call()
            .await
            .map_err(|err| contract_error("allowance", err))?;
        if allowance < amount {
            self.send("approve", erc20.approve(self.contract_address(), amount))
                .await?;
        }
        Ok(())
    }

    async fn send<D>(
        &self,
        call: &'static str,
        builder: CallBuilder<&DynProvider, D, Ethereum>,
    ) -> Result<TransactionReceipt>
    where
        D: alloy::contract::CallDecoder,
    {
        send_call(call, builder).await
    }
}

/// Computes the id the contract derives for a channel: keccak256 of the ABI-encoded
/// (payer, payee, token, closeDelay, salt).
pub fn channel_id(
    payer: Address,
    payee: Address,
    token: Address,
    close_delay: u32,
    salt: B256,
) -> B256 {
    keccak256((payer, payee, token, close_delay, salt).abi_encode())
}

/// Builds an HTTP provider that signs with `signer`.
pub(crate) async fn connect_provider(
    rpc_url: &str,
    signer: &PrivateKeySigner,
) -> Result<DynProvider> {
    let url = rpc_url
        .parse::<alloy::transports::http::reqwest::Url>()
        .map_err(|err| Error::InvalidRpcUrl {
            url: rpc_url.to_owned(),
            message: err.to_string(),
        })?;
    // The default cached nonce manager advances its nonce even when gas estimation then fails
    // (for example on a revert), which leaves every later transaction stuck behind a nonce gap.
    // The simple manager requests the pending nonce from the node of each transaction instead.
    // NOTE: two transactions sent at once from one account can therefore get the same nonce.
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
pub(crate) async fn send_call<P, D>(
    call: &'static str,
    builder: CallBuilder<P, D, Ethereum>,
) -> Result<TransactionReceipt>
where
    P: Provider<Ethereum>,
    D: alloy::contract::CallDecoder,
{
    let pending = builder
        .send()
        .await
        .map_err(|err| contract_error(call, err))?;
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

/// Maps a contract error: reverts become [`Error::Reverted`] with the decoded custom error, a node's
/// "insufficient funds" becomes [`Error::InsufficientFunds`]-style text, anything else [`Error::Rpc`].
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

fn to_binding(voucher: &SignedVoucher) -> IPaymentChannels::Voucher {
    IPaymentChannels::Voucher {
        channelId: voucher.channel_id,
        cumulativeAmount: voucher.cumulative_amount,
    }
}

fn redeemed_total(receipt: &TransactionReceipt) -> U256 {
    receipt
        .logs()
        .iter()
        .filter_map(|log| log.log_decode::<PaymentChannels::Redeemed>().ok())
        .map(|log| log.inner.data.delta)
        .fold(U256::ZERO, |total, delta| total + delta)
}

fn refund_of(receipt: &TransactionReceipt) -> U256 {
    receipt
        .logs()
        .iter()
        .filter_map(|log| log.log_decode::<PaymentChannels::ChannelFinalised>().ok())
        .map(|log| log.inner.data.refund)
        .fold(U256::ZERO, |total, refund| total + refund)
}

fn close_request(
    event: PaymentChannels::CloseRequested,
    block_number: Option<u64>,
) -> CloseRequest {
    CloseRequest {
        channel_id: event.channelId,
        closes_at: u64::try_from(event.closesAt).unwrap_or(u64::MAX),
        block_number,
    }
}
