//! Operations behind `spare wallet`: resolve the chain settings, load the key and run one command.
//! The CLI only parses arguments and prints the values these functions return.

use std::fmt;
use std::path::Path;

use alloy::primitives::utils::{ParseUnits, format_units, parse_units};
use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;

use crate::bindings::TestUSD::TestUSDInstance;
use crate::channel::{ChannelState, ChannelStatus, ETH, OpenRequest};
use crate::client::ChannelClient;
use crate::config::{ChainConfig, ChainOverrides, load_or_create_wallet_key};
use crate::error::{Error, Result};
use crate::rpc::check_code;

/// Decimals of native ETH.
const ETH_DECIMALS: u8 = 18;

/// Asset a channel or withdrawal is paid in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asset {
    /// The configured ERC-20 token.
    Token,
    /// Native ETH.
    Eth,
}

/// Balances of the wallet's account.
#[derive(Clone, Debug)]
pub struct Balances {
    /// The account.
    pub address: Address,
    /// ETH in the account, in wei.
    pub eth: U256,
    /// Configured token in the account, in base units.
    pub token: U256,
    /// ETH the channel contract holds for the account to withdraw, in wei.
    pub withdrawable_eth: U256,
    /// Token the channel contract holds for the account to withdraw, in base units.
    pub withdrawable_token: U256,
}

/// Result of `spare wallet close`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The close delay started; run close again at or after `closes_at` (unix time).
    Requested {
        /// Unix time from which the channel can be finalised.
        closes_at: u64,
    },
    /// The delay has not elapsed yet.
    Waiting {
        /// Unix time from which the channel can be finalised.
        closes_at: u64,
    },
    /// The channel is finalised and `refund` went back to the account.
    Finalised {
        /// Refunded base units.
        refund: U256,
    },
}

/// A connected wallet: the account from `<data_dir>/wallet.key` on the configured chain.
#[derive(Debug)]
pub struct Wallet {
    client: ChannelClient,
    config: ChainConfig,
    token_symbol: String,
    token_decimals: u8,
}

/// Returns the wallet's account without touching the chain, creating the key on first use.
pub fn wallet_signer(data_dir: &Path) -> Result<PrivateKeySigner> {
    load_or_create_wallet_key(data_dir)
}

impl Wallet {
    /// Loads the key and the chain settings (`chain.toml` merged with `overrides`) and connects.
    pub async fn connect(data_dir: &Path, overrides: &ChainOverrides) -> Result<Self> {
        let config = ChainConfig::resolve(data_dir, overrides)?;
        let signer = load_or_create_wallet_key(data_dir)?;
        let client = ChannelClient::connect(
            &config.rpc_url,
            config.chain_id,
            config.channel_contract,
            signer,
        )
        .await?;
        check_code(client.provider(), config.token, config.chain_id, "token").await?;

        let token = TestUSDInstance::new(config.token, client.provider().clone());
        let token_symbol = token
            .symbol()
            .call()
            .await
            .unwrap_or_else(|_| "tokens".to_owned());
        let token_decimals = token.decimals().call().await.map_err(|err| Error::Rpc {
            call: "decimals",
            source: Box::new(err),
        })?;
        Ok(Self {
            client,
            config,
            token_symbol,
            token_decimals,
        })
    }

    /// Returns the underlying channel client.
    pub fn client(&self) -> &ChannelClient {
        &self.client
    }

    /// Returns the resolved chain settings.
    pub fn config(&self) -> &ChainConfig {
        &self.config
    }

    /// Reads the account's ETH and token balances and what the contract holds for it.
    pub async fn balances(&self) -> Result<Balances> {
        let address = self.client.address();
        let token = TestUSDInstance::new(self.config.token, self.client.provider().clone());
        Ok(Balances {
            address,
            eth: self.client.eth_balance(address).await?,
            token: token
                .balanceOf(address)
                .call()
                .await
                .map_err(|err| Error::Rpc {
                    call: "balanceOf",
                    source: Box::new(err),
                })?,
            withdrawable_eth: self.client.withdrawable(ETH, address).await?,
            withdrawable_token: self.client.withdrawable(self.config.token, address).await?,
        })
    }

    /// Lists the channels the account pays from, then those it is paid through, each in opening order.
    ///
    /// NOTE: this scans `ChannelOpened` logs from the deploy block in one request, which public RPC
    /// providers that cap log ranges will reject on a long chain.
    pub async fn channels(&self) -> Result<Vec<(B256, ChannelState)>> {
        let address = self.client.address();
        let from = self.config.deploy_block;
        let mut ids = self.client.channel_ids(Some(address), None, from).await?;
        ids.extend(self.client.channel_ids(None, Some(address), from).await?);

        let mut channels = Vec::with_capacity(ids.len());
        for id in ids {
            channels.push((id, self.client.channel(id).await?));
        }
        Ok(channels)
    }

    /// Opens a channel to `payee` with a deposit of `amount` whole units (for example `12.5`).
    pub async fn open(
        &self,
        payee: Address,
        amount: &str,
        asset: Asset,
        close_delay: u32,
    ) -> Result<B256> {
        let token = self.token_address(asset);
        let request = OpenRequest {
            payee,
            token,
            close_delay,
            salt: B256::from(rand::random::<[u8; 32]>()),
            amount: self.parse_amount(amount, token)?,
        };
        self.client.open(&request).await
    }

    /// Adds `amount` whole units to an open channel.
    pub async fn deposit(&self, channel_id: B256, amount: &str) -> Result<U256> {
        let channel = self.client.channel(channel_id).await?;
        let amount = self.parse_amount(amount, channel.token)?;
        self.client.top_up(channel_id, amount).await?;
        Ok(amount)
    }

    /// Requests a close, or finalises when the delay has passed.
    pub async fn close(&self, channel_id: B256) -> Result<CloseOutcome> {
        let channel = self.client.channel(channel_id).await?;
        match channel.status {
            ChannelStatus::Open => Ok(CloseOutcome::Requested {
                closes_at: self.client.request_close(channel_id).await?,
            }),
            ChannelStatus::Closing => {
                let now = self.chain_time().await?;
                if now < channel.closes_at {
                    return Ok(CloseOutcome::Waiting {
                        closes_at: channel.closes_at,
                    });
                }
                Ok(CloseOutcome::Finalised {
                    refund: self.client.finalise(channel_id).await?,
                })
            }
            ChannelStatus::Finalised | ChannelStatus::None => Err(Error::Reverted {
                call: "close",
                reason: format!("channel {channel_id} is already finalised"),
            }),
        }
    }

    /// Withdraws what the contract holds for the account in `asset`.
    pub async fn withdraw(&self, asset: Asset) -> Result<U256> {
        self.client.withdraw(self.token_address(asset)).await
    }

    /// Formats base units of `token` as whole units with its symbol, for example `12.5 tUSD`.
    pub fn format_amount(&self, token: Address, amount: U256) -> String {
        let (decimals, symbol) = self.units_of(token);
        match format_units(amount, decimals) {
            Ok(text) => format!("{} {symbol}", trim_zeros(&text)),
            Err(_) => format!("{amount} base units of {symbol}"),
        }
    }

    fn token_address(&self, asset: Asset) -> Address {
        match asset {
            Asset::Token => self.config.token,
            Asset::Eth => ETH,
        }
    }

    fn units_of(&self, token: Address) -> (u8, &str) {
        if token == ETH {
            (ETH_DECIMALS, "ETH")
        } else {
            (self.token_decimals, self.token_symbol.as_str())
        }
    }

    fn parse_amount(&self, text: &str, token: Address) -> Result<U256> {
        parse_amount(text, self.units_of(token).0)
    }

    async fn chain_time(&self) -> Result<u64> {
        use alloy::providers::Provider;
        let block = self
            .client
            .provider()
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|err| Error::Rpc {
                call: "eth_getBlockByNumber",
                source: Box::new(err),
            })?;
        Ok(block
            .map(|block| block.header.timestamp)
            .unwrap_or_default())
    }
}

/// Parses a positive decimal amount of whole units into base units with `decimals` places.
pub fn parse_amount(text: &str, decimals: u8) -> Result<U256> {
    let invalid = |message: String| Error::InvalidAmount {
        input: text.to_owned(),
        message,
    };
    if text.trim_start().starts_with('-') {
        return Err(invalid("amounts must be positive".into()));
    }
    // parse_units drops digits past `decimals` without an error, so reject them here.
    if let Some((_, fraction)) = text.trim().split_once('.')
        && fraction.len() > usize::from(decimals)
    {
        return Err(invalid(format!(
            "at most {decimals} decimal places are allowed"
        )));
    }
    let amount = match parse_units(text.trim(), decimals).map_err(|err| invalid(err.to_string()))? {
        ParseUnits::U256(amount) => amount,
        ParseUnits::I256(_) => return Err(invalid("amounts must be positive".into())),
    };
    if amount.is_zero() {
        return Err(invalid("amounts must be above zero".into()));
    }
    Ok(amount)
}

fn trim_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

impl fmt::Display for ChannelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::None => "unknown",
            Self::Open => "open",
            Self::Closing => "closing",
            Self::Finalised => "finalised",
        };
        f.write_str(name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_amount_reads_decimals() {
        assert_eq!(parse_amount("12.5", 6).unwrap(), U256::from(12_500_000u64));
        assert_eq!(
            parse_amount("1", 18).unwrap(),
            U256::from(10u64).pow(U256::from(18u64))
        );
    }

    #[test]
    fn parse_amount_rejects_bad_input() {
        for input in ["-1", "0", "abc", "1.0000001"] {
            assert!(
                parse_amount(input, 6).is_err(),
                "{input} should be rejected"
            );
        }
    }
}
