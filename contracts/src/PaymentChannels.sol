// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {IPaymentChannels} from "./interfaces/IPaymentChannels.sol";

/// @title PaymentChannels
/// @notice Per-token payment channels for the spare inference market. See {IPaymentChannels}.
/// @dev Signatures go through OpenZeppelin's SignatureChecker: EOAs via ECDSA, which rejects
/// high-s (malleable) signatures, and contract wallets via EIP-1271. Every payout path holds the
/// transient reentrancy lock and changes state before it transfers.
contract PaymentChannels is IPaymentChannels, EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /*//////////////////////////////////////////////////////////////
                               CONSTANTS
    //////////////////////////////////////////////////////////////*/

    /// @notice Basis points in one whole.
    uint256 public constant BPS_DENOMINATOR = 10_000;
    /// @notice Highest fee the treasury can set: 20%.
    uint16 public constant MAX_FEE_BPS = 2_000;
    /// @notice Shortest close delay, so a payee that checks the chain hourly can still redeem.
    uint32 public constant MIN_CLOSE_DELAY = 1 hours;
    /// @notice Longest close delay, so a payer's refund is never locked for more than 30 days.
    uint32 public constant MAX_CLOSE_DELAY = 30 days;

    /// @notice EIP-712 type hash of {Voucher}.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint256 cumulativeAmount)");
    /// @notice EIP-712 type hash of the payee's consent to a cooperative close.
    bytes32 public constant COOPERATIVE_CLOSE_TYPEHASH =
        keccak256("CooperativeClose(bytes32 channelId,uint256 cumulativeAmount)");

    /*//////////////////////////////////////////////////////////////
                                STORAGE
    //////////////////////////////////////////////////////////////*/

    /// @notice Receiver of the protocol fee.
    address public immutable treasury;
    /// @notice Fee in basis points copied into each channel at open.
    uint16 public feeBps;

    mapping(bytes32 channelId => Channel) internal _channels;
    mapping(address token => mapping(address account => uint256)) internal _balances;

    /// @notice Whether `redeemer` may redeem vouchers of channels paying `payee`.
    mapping(address payee => mapping(address redeemer => bool)) public isRedeemer;

    /// @param treasury_ Receiver of the protocol fee, and the only account that may change it.
    /// @param feeBps_ Fee for new channels in basis points; deployments use 1000 (10%).
    constructor(address treasury_, uint16 feeBps_) EIP712("SparePaymentChannels", "1") {
        if (treasury_ == address(0)) revert InvalidTreasury(treasury_);
        if (feeBps_ > MAX_FEE_BPS) revert FeeTooHigh(feeBps_, MAX_FEE_BPS);
        treasury = treasury_;
        feeBps = feeBps_;
        emit FeeChanged(0, feeBps_);
    }

    /*//////////////////////////////////////////////////////////////
                              OPEN AND TOP UP
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IPaymentChannels
    function open(address payee, address token, uint32 closeDelay, bytes32 salt, uint256 amount)
        external
        payable
        nonReentrant
        returns (bytes32 channelId)
    {
        if (payee == address(0) || payee == msg.sender) revert InvalidPayee(payee);
        if (closeDelay < MIN_CLOSE_DELAY || closeDelay > MAX_CLOSE_DELAY) {
            revert CloseDelayOutOfRange(closeDelay, MIN_CLOSE_DELAY, MAX_CLOSE_DELAY);
        }
        channelId = channelIdOf(msg.sender, payee, token, closeDelay, salt);
        Channel storage channel = _channels[channelId];
        if (channel.status != Status.None) revert ChannelExists(channelId);

        uint256 received = _receive(token, amount);
        if (received > type(uint128).max) revert DepositTooLarge(received, type(uint128).max);

        channel.payer = msg.sender;
        channel.closeDelay = closeDelay;
        channel.feeBps = feeBps;
        channel.status = Status.Open;
        channel.payee = payee;
        channel.token = token;
        // forge-lint: disable-next-line(unsafe-typecast)
        channel.deposit = uint128(received); // checked against 2^128 - 1 above

        emit ChannelOpened(channelId, msg.sender, payee, token, closeDelay, channel.feeBps, salt, received);
    }

    /// @inheritdoc IPaymentChannels
    /// @dev Only the payer may add funds, and only while the channel is open. A stranger's top-up
    /// could otherwise move the channel's accounting or timers against the payee's expectations,
    /// and a closing channel must keep the deadline the payee is watching.
    function topUp(bytes32 channelId, uint256 amount) external payable nonReentrant {
        Channel storage channel = _channelWithStatus(channelId, Status.Open);
        if (msg.sender != channel.payer) revert NotPayer(channelId, msg.sender);

        uint256 received = _receive(channel.token, amount);
        uint256 deposit = uint256(channel.deposit) + received;
        if (deposit > type(uint128).max) revert DepositTooLarge(deposit, type(uint128).max);
        // forge-lint: disable-next-line(unsafe-typecast)
        channel.deposit = uint128(deposit); // checked against 2^128 - 1 above

        emit ChannelToppedUp(channelId, received, deposit);
    }

    /*//////////////////////////////////////////////////////////////
                                 REDEEM
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IPaymentChannels
    function redeem(Voucher calldata voucher, bytes calldata signature) external returns (uint256 delta) {
        delta = _redeem(voucher, signature);
    }

    /// @inheritdoc IPaymentChannels
    function batchRedeem(Voucher[] calldata vouchers, bytes[] calldata signatures)
        external
        returns (uint256 totalDelta)
    {
        if (vouchers.length != signatures.length) revert LengthMismatch(vouchers.length, signatures.length);
        for (uint256 i = 0; i < vouchers.length; ++i) {
            totalDelta += _redeem(vouchers[i], signatures[i]);
        }
    }

    /*//////////////////////////////////////////////////////////////
                                 CLOSE
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IPaymentChannels
    function requestClose(bytes32 channelId) external {
        Channel storage channel = _channelWithStatus(channelId, Status.Open);
        if (msg.sender != channel.payer) revert NotPayer(channelId, msg.sender);

        uint64 closesAt = uint64(block.timestamp) + channel.closeDelay;
        channel.status = Status.Closing;
        channel.closesAt = closesAt;

        emit CloseRequested(channelId, closesAt);
    }

    /// @inheritdoc IPaymentChannels
    function finalise(bytes32 channelId) external nonReentrant {
        Channel storage channel = _channelWithStatus(channelId, Status.Closing);
        if (msg.sender != channel.payer) revert NotPayer(channelId, msg.sender);
        // Validators can skew the timestamp by seconds, which is small next to a delay of an hour or more.
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp < channel.closesAt) {
            revert CloseDelayNotElapsed(channelId, channel.closesAt, block.timestamp);
        }

        _finalise(channelId, channel, false);
    }

    /// @inheritdoc IPaymentChannels
    /// @dev Only the payer calls this, so the call itself authorises paying `cumulativeAmount`; the
    /// payee's signature authorises closing without a delay at that amount. The channel is then
    /// finalised, so neither signature can be used again.
    function cooperativeClose(bytes32 channelId, uint256 cumulativeAmount, bytes calldata payeeSignature)
        external
        nonReentrant
    {
        Channel storage channel = _channels[channelId];
        if (channel.status == Status.None) revert ChannelNotFound(channelId);
        if (channel.status == Status.Finalised) revert WrongStatus(channelId, Status.Open, Status.Finalised);
        if (msg.sender != channel.payer) revert NotPayer(channelId, msg.sender);

        bytes32 digest = cooperativeCloseDigest(channelId, cumulativeAmount);
        if (!SignatureChecker.isValidSignatureNow(channel.payee, digest, payeeSignature)) {
            revert InvalidSignature(channelId, channel.payee);
        }

        _settle(channelId, channel, cumulativeAmount);
        _finalise(channelId, channel, true);
    }

    /*//////////////////////////////////////////////////////////////
                           BALANCES AND SETTINGS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IPaymentChannels
    function withdraw(address token) external nonReentrant returns (uint256 amount) {
        amount = _balances[token][msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender, token);
        _balances[token][msg.sender] = 0;

        emit Withdrawn(msg.sender, token, amount);
        _send(token, msg.sender, amount);
    }

    /// @inheritdoc IPaymentChannels
    function setRedeemer(address redeemer, bool allowed) external {
        isRedeemer[msg.sender][redeemer] = allowed;
        emit RedeemerSet(msg.sender, redeemer, allowed);
    }

    /// @inheritdoc IPaymentChannels
    function setFeeBps(uint16 newFeeBps) external {
        if (msg.sender != treasury) revert NotTreasury(msg.sender);
        if (newFeeBps > MAX_FEE_BPS) revert FeeTooHigh(newFeeBps, MAX_FEE_BPS);
        uint16 previous = feeBps;
        feeBps = newFeeBps;
        emit FeeChanged(previous, newFeeBps);
    }

    /*//////////////////////////////////////////////////////////////
                                 VIEWS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc IPaymentChannels
    function getChannel(bytes32 channelId) external view returns (Channel memory) {
        return _channels[channelId];
    }

    /// @inheritdoc IPaymentChannels
    function channelIdOf(address payer, address payee, address token, uint32 closeDelay, bytes32 salt)
        public
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(payer, payee, token, closeDelay, salt));
    }

    /// @inheritdoc IPaymentChannels
    function voucherDigest(bytes32 channelId, uint256 cumulativeAmount) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, cumulativeAmount)));
    }

    /// @inheritdoc IPaymentChannels
    function voucherSigner(bytes32 channelId, uint256 cumulativeAmount, bytes calldata signature)
        external
        view
        returns (address)
    {
        (address signer, ECDSA.RecoverError err,) =
            ECDSA.tryRecover(voucherDigest(channelId, cumulativeAmount), signature);
        return err == ECDSA.RecoverError.NoError ? signer : address(0);
    }

    /// @inheritdoc IPaymentChannels
    function cooperativeCloseDigest(bytes32 channelId, uint256 cumulativeAmount) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(COOPERATIVE_CLOSE_TYPEHASH, channelId, cumulativeAmount)));
    }

    /// @notice Returns the EIP-712 domain separator for this chain and contract.
    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @inheritdoc IPaymentChannels
    function balanceOf(address token, address account) external view returns (uint256) {
        return _balances[token][account];
    }

    /*//////////////////////////////////////////////////////////////
                                INTERNAL
    //////////////////////////////////////////////////////////////*/

    function _redeem(Voucher calldata voucher, bytes calldata signature) internal returns (uint256 delta) {
        bytes32 channelId = voucher.channelId;
        Channel storage channel = _channels[channelId];
        Status status = channel.status;
        if (status == Status.None) revert ChannelNotFound(channelId);
        if (status == Status.Finalised) revert WrongStatus(channelId, Status.Open, Status.Finalised);

        address payee = channel.payee;
        if (msg.sender != payee && !isRedeemer[payee][msg.sender]) revert NotRedeemer(channelId, msg.sender);

        bytes32 digest = voucherDigest(channelId, voucher.cumulativeAmount);
        if (!SignatureChecker.isValidSignatureNow(channel.payer, digest, signature)) {
            revert InvalidSignature(channelId, channel.payer);
        }

        delta = _settle(channelId, channel, voucher.cumulativeAmount);
    }

    /// @dev Raises `claimed` to `cumulativeAmount` capped at the deposit and credits the split.
    /// A voucher at or below `claimed` changes nothing and emits nothing.
    function _settle(bytes32 channelId, Channel storage channel, uint256 cumulativeAmount)
        internal
        returns (uint256 delta)
    {
        uint256 deposit = channel.deposit;
        uint256 claimed = channel.claimed;
        uint256 target = cumulativeAmount < deposit ? cumulativeAmount : deposit;
        if (target <= claimed) return 0;

        delta = target - claimed;
        uint256 fee = delta * channel.feeBps / BPS_DENOMINATOR;
        uint256 net = delta - fee;

        // forge-lint: disable-next-line(unsafe-typecast)
        channel.claimed = uint128(target); // target <= deposit, which fits in 128 bits
        address token = channel.token;
        _balances[token][treasury] += fee;
        _balances[token][channel.payee] += net;

        emit Redeemed(channelId, msg.sender, target, delta, fee, net);
    }

    function _finalise(bytes32 channelId, Channel storage channel, bool cooperative) internal {
        uint256 claimed = channel.claimed;
        uint256 refund = channel.deposit - claimed;
        channel.status = Status.Finalised;

        emit ChannelFinalised(channelId, claimed, refund, cooperative);
        if (refund > 0) _send(channel.token, channel.payer, refund);
    }

    function _channelWithStatus(bytes32 channelId, Status expected) internal view returns (Channel storage channel) {
        channel = _channels[channelId];
        Status actual = channel.status;
        if (actual == Status.None) revert ChannelNotFound(channelId);
        if (actual != expected) revert WrongStatus(channelId, expected, actual);
    }

    /// @dev Pulls a deposit and returns what actually arrived, so fee-on-transfer tokens credit
    /// only the balance change.
    function _receive(address token, uint256 amount) internal returns (uint256 received) {
        if (token == address(0)) {
            if (msg.value != amount) revert WrongEthValue(amount, msg.value);
            received = amount;
        } else {
            if (msg.value != 0) revert WrongEthValue(0, msg.value);
            uint256 before = IERC20(token).balanceOf(address(this));
            IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
            received = IERC20(token).balanceOf(address(this)) - before;
        }
        if (received == 0) revert ZeroDeposit(token, amount);
    }

    function _send(address token, address to, uint256 amount) internal {
        if (token == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert EthTransferFailed(to, amount);
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }
}
