// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

/// @title IPaymentChannels
/// @notice Unidirectional payment channels from a payer (a buyer of inference) to a payee (a
/// provider). The payer deposits once and signs EIP-712 vouchers for a cumulative amount; the
/// payee redeems the newest voucher whenever it likes. Each redeemed amount is split between the
/// payee and the protocol treasury and credited to balances that each party withdraws itself.
interface IPaymentChannels {
    /*//////////////////////////////////////////////////////////////
                                 TYPES
    //////////////////////////////////////////////////////////////*/

    /// @notice Lifecycle of a channel. `None` means the id was never used.
    enum Status {
        None,
        Open,
        Closing,
        Finalised
    }

    /// @notice Stored state of one channel. `token` is `address(0)` for native ETH.
    /// @dev Packed into four storage slots: (payer, closeDelay, feeBps, status),
    /// (payee, closesAt), (token), (deposit, claimed).
    struct Channel {
        address payer;
        uint32 closeDelay;
        uint16 feeBps;
        Status status;
        address payee;
        uint64 closesAt;
        address token;
        uint128 deposit;
        uint128 claimed;
    }

    /// @notice A payer's promise that the payee may claim up to `cumulativeAmount` in total.
    struct Voucher {
        bytes32 channelId;
        uint256 cumulativeAmount;
    }

    /*//////////////////////////////////////////////////////////////
                                 ERRORS
    //////////////////////////////////////////////////////////////*/

    /// @notice A channel with this id was opened before; ids are never reused, so pick another salt.
    error ChannelExists(bytes32 channelId);
    /// @notice No channel has this id.
    error ChannelNotFound(bytes32 channelId);
    /// @notice The channel is in `actual` state but the call needs `expected`.
    error WrongStatus(bytes32 channelId, Status expected, Status actual);
    /// @notice Only the channel's payer may make this call.
    error NotPayer(bytes32 channelId, address caller);
    /// @notice Only the payee or an address it authorised may redeem.
    error NotRedeemer(bytes32 channelId, address caller);
    /// @notice The signature does not belong to `expectedSigner` (bad, malleable or for another domain).
    error InvalidSignature(bytes32 channelId, address expectedSigner);
    /// @notice The close delay must lie within [minDelay, maxDelay] seconds.
    error CloseDelayOutOfRange(uint256 closeDelay, uint256 minDelay, uint256 maxDelay);
    /// @notice The close delay has not elapsed; finalise at or after `closesAt`.
    error CloseDelayNotElapsed(bytes32 channelId, uint256 closesAt, uint256 currentTime);
    /// @notice The payee is the zero address or the payer itself.
    error InvalidPayee(address payee);
    /// @notice A deposit or top-up of `amount` of `token` credited nothing (zero amount, or a token
    /// that delivered nothing).
    error ZeroDeposit(address token, uint256 amount);
    /// @notice The channel's deposit would exceed `maxDeposit` (2^128 - 1 base units).
    error DepositTooLarge(uint256 deposit, uint256 maxDeposit);
    /// @notice ETH was sent with an ERC-20 deposit, or `msg.value` differs from the ETH amount.
    error WrongEthValue(uint256 expected, uint256 actual);
    /// @notice `account` has no balance of `token` to withdraw.
    error NothingToWithdraw(address account, address token);
    /// @notice Sending `amount` wei to `to` failed.
    error EthTransferFailed(address to, uint256 amount);
    /// @notice The fee must not exceed `maxFeeBps` basis points.
    error FeeTooHigh(uint256 feeBps, uint256 maxFeeBps);
    /// @notice Only the treasury may change the protocol fee.
    error NotTreasury(address caller);
    /// @notice The treasury is the zero address.
    error InvalidTreasury(address treasury);
    /// @notice Batch arrays must have the same length.
    error LengthMismatch(uint256 vouchers, uint256 signatures);

    /*//////////////////////////////////////////////////////////////
                                 EVENTS
    //////////////////////////////////////////////////////////////*/

    /// @notice A channel was opened with `deposit` credited.
    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        address token,
        uint32 closeDelay,
        uint16 feeBps,
        bytes32 salt,
        uint256 deposit
    );
    /// @notice The payer added `amount` to the channel, which now holds `deposit`.
    event ChannelToppedUp(bytes32 indexed channelId, uint256 amount, uint256 deposit);
    /// @notice A voucher moved `claimed` up by `delta`, split into `fee` for the treasury and `net` for the payee.
    event Redeemed(
        bytes32 indexed channelId,
        address indexed redeemer,
        uint256 claimed,
        uint256 delta,
        uint256 fee,
        uint256 net
    );
    /// @notice The payer asked to close; the payee may redeem until `closesAt`.
    event CloseRequested(bytes32 indexed channelId, uint256 closesAt);
    /// @notice The channel is closed for good and `refund` went back to the payer.
    event ChannelFinalised(bytes32 indexed channelId, uint256 claimed, uint256 refund, bool cooperative);
    /// @notice `account` withdrew `amount` of `token` (`address(0)` for ETH).
    event Withdrawn(address indexed account, address indexed token, uint256 amount);
    /// @notice `payee` allowed or disallowed `redeemer` to redeem its channels.
    event RedeemerSet(address indexed payee, address indexed redeemer, bool allowed);
    /// @notice The fee for channels opened from now on changed.
    event FeeChanged(uint16 previousFeeBps, uint16 feeBps);

    /*//////////////////////////////////////////////////////////////
                               FUNCTIONS
    //////////////////////////////////////////////////////////////*/

    /// @notice Opens a channel to `payee` and deposits `amount` of `token` (`address(0)` for ETH).
    /// @return channelId The id derived from (payer, payee, token, closeDelay, salt).
    function open(address payee, address token, uint32 closeDelay, bytes32 salt, uint256 amount)
        external
        payable
        returns (bytes32 channelId);

    /// @notice Adds `amount` to an open channel. Only the payer may top up.
    function topUp(bytes32 channelId, uint256 amount) external payable;

    /// @notice Redeems one voucher; returns the amount newly claimed (zero for a stale voucher).
    function redeem(Voucher calldata voucher, bytes calldata signature) external returns (uint256 delta);

    /// @notice Redeems many vouchers in one transaction; reverts as a whole if any is invalid.
    function batchRedeem(Voucher[] calldata vouchers, bytes[] calldata signatures)
        external
        returns (uint256 totalDelta);

    /// @notice Starts the close delay. Only the payer may call.
    function requestClose(bytes32 channelId) external;

    /// @notice Ends a closing channel after its delay and refunds the unclaimed deposit to the payer.
    function finalise(bytes32 channelId) external;

    /// @notice Settles `cumulativeAmount` and closes at once, with the payee's signed consent.
    function cooperativeClose(bytes32 channelId, uint256 cumulativeAmount, bytes calldata payeeSignature) external;

    /// @notice Sends the caller its whole withdrawable balance of `token`.
    function withdraw(address token) external returns (uint256 amount);

    /// @notice Allows or disallows `redeemer` to redeem the caller's channels.
    function setRedeemer(address redeemer, bool allowed) external;

    /// @notice Sets the fee for channels opened from now on. Only the treasury may call.
    function setFeeBps(uint16 feeBps) external;

    /// @notice Returns the stored state of a channel.
    function getChannel(bytes32 channelId) external view returns (Channel memory);

    /// @notice Returns the id a channel with this configuration has.
    function channelIdOf(address payer, address payee, address token, uint32 closeDelay, bytes32 salt)
        external
        pure
        returns (bytes32);

    /// @notice Returns the EIP-712 digest the payer signs for a voucher.
    function voucherDigest(bytes32 channelId, uint256 cumulativeAmount) external view returns (bytes32);

    /// @notice Returns the EOA that signed a voucher, or `address(0)` if the signature is malformed
    /// or malleable (high s). Lets a payee check a voucher with `eth_call` exactly as redeem would
    /// for an EOA payer; contract wallet payers are checked with EIP-1271 instead.
    function voucherSigner(bytes32 channelId, uint256 cumulativeAmount, bytes calldata signature)
        external
        view
        returns (address);

    /// @notice Returns the EIP-712 digest the payee signs to agree to a cooperative close.
    function cooperativeCloseDigest(bytes32 channelId, uint256 cumulativeAmount) external view returns (bytes32);

    /// @notice Returns `account`'s withdrawable balance of `token`.
    function balanceOf(address token, address account) external view returns (uint256);
}
