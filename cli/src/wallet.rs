//! `spare wallet`: the EVM account that pays for inference or earns from it, and its channels.
//!
//! The key is `<data dir>/wallet.key`, created on first use. Chain settings come from
//! `<data dir>/chain.toml` (written by scripts/deploy-local.sh); each flag below overrides one.
//! All logic lives in `spare_contracts::wallet`; this module parses and prints.

use std::path::Path;

use anyhow::Context;
use spare_contracts::config::wallet_key_path;
use spare_contracts::wallet::{Asset, CloseOutcome, Wallet, wallet_signer};
use spare_contracts::{Address, B256, ChainOverrides};

/// Flags and subcommand of `spare wallet`.
#[derive(Debug, clap::Args)]
pub(crate) struct WalletArgs {
    /// JSON-RPC URL of the chain [default: rpc_url in <data dir>/chain.toml].
    #[arg(long, value_name = "URL", env = "SPARE_RPC_URL", global = true)]
    rpc_url: Option<String>,

    /// Chain id the RPC must serve [default: chain_id in <data dir>/chain.toml].
    #[arg(long, env = "SPARE_CHAIN_ID", global = true)]
    chain_id: Option<u64>,

    /// Address of the PaymentChannels contract [default: channel_contract in <data dir>/chain.toml].
    #[arg(
        long,
        value_name = "ADDRESS",
        env = "SPARE_CHANNEL_CONTRACT",
        global = true
    )]
    channel_contract: Option<Address>,

    /// ERC-20 token channels use unless --asset eth is given [default: token in <data dir>/chain.toml].
    #[arg(long, value_name = "ADDRESS", env = "SPARE_TOKEN", global = true)]
    token: Option<Address>,

    #[command(subcommand)]
    command: WalletCommand,
}

/// Asset to pay or withdraw in.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum AssetArg {
    /// The configured ERC-20 token.
    Token,
    /// Native ETH.
    Eth,
}

impl From<AssetArg> for Asset {
    fn from(value: AssetArg) -> Self {
        match value {
            AssetArg::Token => Asset::Token,
            AssetArg::Eth => Asset::Eth,
        }
    }
}

/// Commands of `spare wallet`.
#[derive(Debug, clap::Subcommand)]
enum WalletCommand {
    /// Print the wallet's address, creating the key on first use. Needs no chain.
    Address,

    /// Print ETH and token balances, and the earnings the channel contract holds for withdrawal.
    Balance,

    /// List the channels this wallet pays from or is paid through.
    Channels,

    /// Open a channel to a provider and deposit into it.
    Open {
        /// Provider's EVM address (the payee).
        payee: Address,

        /// Deposit in whole units of the asset, such as 25 or 0.5.
        amount: String,

        /// Asset to deposit [default: token].
        #[arg(long, value_enum, default_value_t = AssetArg::Token, env = "SPARE_WALLET_ASSET")]
        asset: AssetArg,

        /// Seconds the provider has to redeem after you request a close, 3600 to 2592000 [default: 86400].
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 86_400,
            env = "SPARE_CLOSE_DELAY"
        )]
        close_delay: u32,
    },

    /// Add funds to an open channel.
    Deposit {
        /// Channel id (0x followed by 64 hex digits).
        channel: B256,

        /// Amount in whole units of the channel's asset, such as 10.
        amount: String,
    },

    /// Request a close; run it again after the close delay to finalise and get the rest back.
    Close {
        /// Channel id (0x followed by 64 hex digits).
        channel: B256,
    },

    /// Withdraw earnings that redeemed vouchers credited to this wallet.
    Withdraw {
        /// Asset to withdraw [default: token].
        #[arg(long, value_enum, default_value_t = AssetArg::Token, env = "SPARE_WALLET_ASSET")]
        asset: AssetArg,
    },
}

/// Runs one `spare wallet` command with the wallet in `data_dir`.
pub(crate) async fn run(args: WalletArgs, data_dir: &Path) -> anyhow::Result<()> {
    if let WalletCommand::Address = args.command {
        let signer = wallet_signer(data_dir)
            .with_context(|| format!("cannot load {}", wallet_key_path(data_dir).display()))?;
        println!("{}", signer.address());
        return Ok(());
    }

    let overrides = ChainOverrides {
        rpc_url: args.rpc_url,
        chain_id: args.chain_id,
        channel_contract: args.channel_contract,
        token: args.token,
    };
    let wallet = Wallet::connect(data_dir, &overrides).await?;

    match args.command {
        WalletCommand::Address => {}
        WalletCommand::Balance => print_balance(&wallet).await?,
        WalletCommand::Channels => print_channels(&wallet).await?,
        WalletCommand::Open {
            payee,
            amount,
            asset,
            close_delay,
        } => {
            let channel = wallet
                .open(payee, &amount, asset.into(), close_delay)
                .await?;
            println!("opened channel {channel} to {payee}");
        }
        WalletCommand::Deposit { channel, amount } => {
            let added = wallet.deposit(channel, &amount).await?;
            let state = wallet.client().channel(channel).await?;
            println!(
                "deposited {} into {channel}",
                wallet.format_amount(state.token, added)
            );
        }
        WalletCommand::Close { channel } => match wallet.close(channel).await? {
            CloseOutcome::Requested { closes_at } => {
                println!(
                    "close requested; run `spare wallet close {channel}` again at or after unix time {closes_at}"
                );
            }
            CloseOutcome::Waiting { closes_at } => {
                println!("close delay not over; run this again at or after unix time {closes_at}");
            }
            CloseOutcome::Finalised { refund } => {
                let state = wallet.client().channel(channel).await?;
                println!(
                    "channel {channel} finalised; refunded {}",
                    wallet.format_amount(state.token, refund)
                );
            }
        },
        WalletCommand::Withdraw { asset } => {
            let asset = Asset::from(asset);
            let amount = wallet.withdraw(asset).await?;
            let token = match asset {
                Asset::Token => wallet.config().token,
                Asset::Eth => spare_contracts::ETH,
            };
            println!("withdrew {}", wallet.format_amount(token, amount));
        }
    }
    Ok(())
}

async fn print_balance(wallet: &Wallet) -> anyhow::Result<()> {
    let balances = wallet.balances().await?;
    let token = wallet.config().token;
    let eth = spare_contracts::ETH;
    println!("address:              {}", balances.address);
    println!(
        "ETH:                  {}",
        wallet.format_amount(eth, balances.eth)
    );
    println!(
        "token:                {}",
        wallet.format_amount(token, balances.token)
    );
    println!(
        "withdrawable ETH:     {}",
        wallet.format_amount(eth, balances.withdrawable_eth)
    );
    println!(
        "withdrawable token:   {}",
        wallet.format_amount(token, balances.withdrawable_token)
    );
    Ok(())
}

async fn print_channels(wallet: &Wallet) -> anyhow::Result<()> {
    let channels = wallet.channels().await?;
    if channels.is_empty() {
        println!("no channels; open one with `spare wallet open <payee> <amount>`");
        return Ok(());
    }
    let me = wallet.client().address();
    for (id, state) in channels {
        let role = if state.payer == me {
            "paying"
        } else {
            "paid by"
        };
        let peer = if state.payer == me {
            state.payee
        } else {
            state.payer
        };
        println!(
            "{id}  {role} {peer}  {}  deposit {}  claimed {}",
            state.status,
            wallet.format_amount(state.token, state.deposit),
            wallet.format_amount(state.token, state.claimed),
        );
    }
    Ok(())
}
