//! A client for the `PaymentChannels` contract: one account, one deployment, one chain.

use std::sync::Arc;
use std::time::Duration;

use alloy::contract::CallBuilder;
use alloy::network::Ethereum;
use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Eip712Domain, SolValue};
use futures::{Stream, StreamExt};

use crate::bindings::IPaymentChannels;
use crate::bindings::PaymentChannels::{self, PaymentChannelsInstance};
use crate::bindings::TestUSD::TestUSDInstance;
use crate::channel::{ChannelState, ChannelStatus, CloseRequest, ETH, OpenRequest};
use crate::error::{Error, Result};
use crate::rpc::{check_chain, check_code, contract_error, send_call, signing_provider};
use crate::voucher::{self, SignedVoucher};

/// Contract client acting as one account. Every write waits for its receipt.
#[derive(Clone, Debug)]
pub struct ChannelClient {
    provider: DynProvider,
    contract: PaymentChannelsInstance<DynProvider>,
    signer: PrivateKeySigner,
    chain_id: u64,
    rpc_url: String,
    /// Serialises sending across clones, so concurrent writes get consecutive nonces.
    send_lock: Arc<tokio::sync::Mutex<()>>,
    /// Serialises deposits, whose allowance check, approval and transfer must not interleave.
    deposit_lock: Arc<tokio::sync::Mutex<()>>,
}

impl ChannelClient {
    /// Connects to `rpc_url` as `signer` and checks the chain id and that the contract exists.
    pub async fn connect(
        rpc_url: &str,
        expected_chain_id: u64,
        contract: Address,
        signer: PrivateKeySigner,
    ) -> Result<Self> {
        let provider = signing_provider(rpc_url, &signer)?;
        let chain_id = check_chain(&provider, rpc_url, expected_chain_id).await?;
        check_code(&provider, contract, chain_id, "channel_contract").await?;

        Ok(Self {
            contract: PaymentChannels::new(contract, provider.clone()),
            provider,
            signer,
            chain_id,
            rpc_url: rpc_url.to_owned(),
            send_lock: Arc::new(tokio::sync::Mutex::new(())),
            deposit_lock: Arc::new(tokio::sync::Mutex::new(())),
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
        let _deposit = self.deposit_lock.lock().await;
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
        let _deposit = self.deposit_lock.lock().await;
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
        send_call(call, builder, &self.send_lock).await
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
