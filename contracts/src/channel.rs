//! Channel types shared by the client, the wallet and callers: stored state, lifecycle, the
//! configuration to open with and close requests.

use alloy::primitives::{Address, B256, U256};

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
