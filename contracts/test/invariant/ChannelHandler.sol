// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {Vm} from "forge-std/Vm.sol";
import {PaymentChannels} from "../../src/PaymentChannels.sol";
import {IPaymentChannels} from "../../src/interfaces/IPaymentChannels.sol";
import {TestUSD} from "../../src/TestUSD.sol";

/// @notice Drives random sequences of channel actions for the invariant tests and keeps ghost
/// variables: every id opened, every account that may hold a balance, and totals of what entered
/// and left the contract.
contract ChannelHandler {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    PaymentChannels public immutable channels;
    TestUSD public immutable usd;
    address public immutable treasury;

    uint256[] internal payerKeys;
    address[] internal payers;
    uint256[] internal payeeKeys;
    address[] internal payees;

    bytes32[] public channelIds;
    mapping(bytes32 channelId => bool) public wasFinalised;
    mapping(bytes32 channelId => uint256) public lastClaimed;
    mapping(bytes32 channelId => bytes32) public saltOf;

    /// Ghost totals per token (index 0 is ETH, 1 is the test token).
    uint256[2] public ghostDeposited;
    uint256[2] public ghostRefunded;
    uint256[2] public ghostWithdrawn;

    /// Set when a redeem's fee plus net differed from its delta, or claimed went down or past the deposit.
    bool public splitBroken;
    bool public claimedBroken;
    bool public reopened;

    uint256 public redeemCalls;
    uint256 internal saltCounter;

    constructor(PaymentChannels channels_, TestUSD usd_, address treasury_) {
        channels = channels_;
        usd = usd_;
        treasury = treasury_;
        for (uint256 i = 1; i <= 3; ++i) {
            uint256 key = 0xC0FFEE + i;
            address account = vm.addr(key);
            payerKeys.push(key);
            payers.push(account);
            payeeKeys.push(0xFEE0 + i);
            payees.push(vm.addr(0xFEE0 + i));
            vm.deal(account, 1e30);
            usd.mint(account, 1e30);
            vm.prank(account);
            usd.approve(address(channels), type(uint256).max);
        }
    }

    /*//////////////////////////////////////////////////////////////
                                ACTIONS
    //////////////////////////////////////////////////////////////*/

    function open(uint256 payerSeed, uint256 payeeSeed, bool useEth, uint256 amount) external {
        uint256 p = payerSeed % payers.length;
        address payer = payers[p];
        address payee = payees[payeeSeed % payees.length];
        address token = useEth ? address(0) : address(usd);
        amount = 1 + amount % 1e24;
        bytes32 salt = bytes32(++saltCounter);

        vm.prank(payer);
        bytes32 channelId = useEth
            ? channels.open{value: amount}(payee, token, 1 hours, salt, amount)
            : channels.open(payee, token, 1 hours, salt, amount);

        channelIds.push(channelId);
        saltOf[channelId] = salt;
        ghostDeposited[_index(token)] += amount;
    }

    function reopenFinalised(uint256 seed) external {
        bytes32 channelId = _pick(seed);
        if (channelId == bytes32(0) || !wasFinalised[channelId]) return;
        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);

        vm.prank(channel.payer);
        if (channel.token == address(0)) {
            try channels.open{value: 1}(channel.payee, channel.token, channel.closeDelay, saltOf[channelId], 1) {
                reopened = true;
            } catch {}
        } else {
            try channels.open(channel.payee, channel.token, channel.closeDelay, saltOf[channelId], 1) {
                reopened = true;
            } catch {}
        }
        if (channels.getChannel(channelId).status != IPaymentChannels.Status.Finalised) reopened = true;
    }

    function topUp(uint256 seed, uint256 amount) external {
        bytes32 channelId = _pick(seed);
        if (channelId == bytes32(0)) return;
        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        if (channel.status != IPaymentChannels.Status.Open) return;
        amount = 1 + amount % 1e24;

        vm.prank(channel.payer);
        if (channel.token == address(0)) channels.topUp{value: amount}(channelId, amount);
        else channels.topUp(channelId, amount);
        ghostDeposited[_index(channel.token)] += amount;
    }

    function redeem(uint256 seed, uint256 cumulativeAmount) external {
        bytes32 channelId = _pick(seed);
        if (channelId == bytes32(0)) return;
        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        if (channel.status == IPaymentChannels.Status.Finalised) return;
        cumulativeAmount = cumulativeAmount % (uint256(channel.deposit) * 2 + 1);
        bytes memory signature = _signVoucher(channel.payer, channelId, cumulativeAmount);

        uint256 payeeBefore = channels.balanceOf(channel.token, channel.payee);
        uint256 treasuryBefore = channels.balanceOf(channel.token, treasury);
        vm.prank(channel.payee);
        uint256 delta =
            channels.redeem(IPaymentChannels.Voucher({channelId: channelId, cumulativeAmount: cumulativeAmount}), signature);
        redeemCalls += 1;

        uint256 net = channels.balanceOf(channel.token, channel.payee) - payeeBefore;
        uint256 fee = channels.balanceOf(channel.token, treasury) - treasuryBefore;
        if (fee + net != delta) splitBroken = true;
        _recordClaimed(channelId);
    }

    function requestClose(uint256 seed) external {
        bytes32 channelId = _pick(seed);
        if (channelId == bytes32(0)) return;
        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        if (channel.status != IPaymentChannels.Status.Open) return;

        vm.prank(channel.payer);
        channels.requestClose(channelId);
    }

    function finalise(uint256 seed, uint256 wait) external {
        bytes32 channelId = _pick(seed);
        if (channelId == bytes32(0)) return;
        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        if (channel.status != IPaymentChannels.Status.Closing) return;
        vm.warp(block.timestamp + wait % (2 * uint256(channel.closeDelay)));
        if (block.timestamp < channel.closesAt) return;

        uint256 refund = uint256(channel.deposit) - channel.claimed;
        vm.prank(channel.payer);
        channels.finalise(channelId);
        ghostRefunded[_index(channel.token)] += refund;
        wasFinalised[channelId] = true;
    }

    function cooperativeClose(uint256 seed, uint256 cumulativeAmount) external {
        bytes32 channelId = _pick(seed);
        if (channelId == bytes32(0)) return;
        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        if (channel.status == IPaymentChannels.Status.Finalised) return;
        cumulativeAmount = cumulativeAmount % (uint256(channel.deposit) + 1);
        bytes memory consent =
            _sign(_keyOf(payees, payeeKeys, channel.payee), channels.cooperativeCloseDigest(channelId, cumulativeAmount));

        vm.prank(channel.payer);
        channels.cooperativeClose(channelId, cumulativeAmount, consent);
        IPaymentChannels.Channel memory closed = channels.getChannel(channelId);
        ghostRefunded[_index(channel.token)] += uint256(closed.deposit) - closed.claimed;
        wasFinalised[channelId] = true;
        _recordClaimed(channelId);
    }

    function withdraw(uint256 accountSeed, bool useEth) external {
        address token = useEth ? address(0) : address(usd);
        uint256 which = accountSeed % (payees.length + 1);
        address account = which == payees.length ? treasury : payees[which];
        uint256 amount = channels.balanceOf(token, account);
        if (amount == 0) return;

        vm.prank(account);
        channels.withdraw(token);
        ghostWithdrawn[_index(token)] += amount;
    }

    /*//////////////////////////////////////////////////////////////
                                 VIEWS
    //////////////////////////////////////////////////////////////*/

    function channelCount() external view returns (uint256) {
        return channelIds.length;
    }

    function balanceHolders() external view returns (address[] memory holders) {
        holders = new address[](payees.length + 1);
        for (uint256 i = 0; i < payees.length; ++i) {
            holders[i] = payees[i];
        }
        holders[payees.length] = treasury;
    }

    /*//////////////////////////////////////////////////////////////
                                INTERNAL
    //////////////////////////////////////////////////////////////*/

    function _recordClaimed(bytes32 channelId) internal {
        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        if (channel.claimed < lastClaimed[channelId] || channel.claimed > channel.deposit) claimedBroken = true;
        lastClaimed[channelId] = channel.claimed;
    }

    function _pick(uint256 seed) internal view returns (bytes32) {
        if (channelIds.length == 0) return bytes32(0);
        return channelIds[seed % channelIds.length];
    }

    function _signVoucher(address payer, bytes32 channelId, uint256 cumulativeAmount)
        internal
        returns (bytes memory)
    {
        return _sign(_keyOf(payers, payerKeys, payer), channels.voucherDigest(channelId, cumulativeAmount));
    }

    function _keyOf(address[] storage accounts, uint256[] storage keys, address account)
        internal
        view
        returns (uint256 key)
    {
        for (uint256 i = 0; i < accounts.length; ++i) {
            if (accounts[i] == account) key = keys[i];
        }
    }

    function _sign(uint256 key, bytes32 digest) internal returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _index(address token) internal pure returns (uint256) {
        return token == address(0) ? 0 : 1;
    }
}
