//! Payment channels for spare on an EVM chain: contract bindings, EIP-712 vouchers, a channel
//! client and the operations behind `spare wallet`.
//!
//! Buyers pay providers per token through unidirectional channels of the `PaymentChannels`
//! contract (Solidity sources in `src/*.sol`, tests in `test/`). Start with [`ChannelClient`] for
//! on-chain calls and [`voucher`] for signing and checking vouchers off-chain; [`anvil`] runs a
//! local chain for tests and [`deploy`] puts the contracts at fixed addresses on it.

pub mod anvil;
pub mod bindings;
pub mod channel;
pub mod client;
pub mod config;
pub mod deploy;
pub mod error;
pub mod rpc;
pub mod voucher;
pub mod wallet;

/// Primitive types used throughout the API, re-exported so callers need not depend on alloy.
pub use alloy::primitives::{Address, B256, U256};
pub use channel::{ChannelState, ChannelStatus, CloseRequest, ETH, OpenRequest};
pub use client::{ChannelClient, channel_id};
pub use config::{ChainConfig, ChainOverrides};
pub use error::{Error, Result};
pub use voucher::SignedVoucher;
