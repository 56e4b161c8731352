// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {IPaymentChannels} from "../src/interfaces/IPaymentChannels.sol";
import {ChannelTestBase} from "./utils/ChannelTestBase.sol";

/// @notice Records the gas of each channel operation, one call per entry, in
/// snapshots/PaymentChannelsGas.json. scripts/test-contracts.sh fails when the numbers change
/// and the file was not regenerated.
contract PaymentChannelsGasTest is ChannelTestBase {
    function test_gas_openToken() public {
        vm.prank(payer);
        channels.open(payee, address(usd), DELAY, bytes32(0), DEPOSIT);
        check.snapshotGasLastCall("open (ERC-20)");
    }

    function test_gas_openEth() public {
        vm.prank(payer);
        channels.open{value: 1 ether}(payee, ETH, DELAY, bytes32(0), 1 ether);
        check.snapshotGasLastCall("open (ETH)");
    }

    function test_gas_topUp() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        channels.topUp(channelId, DEPOSIT);
        check.snapshotGasLastCall("topUp (ERC-20)");
    }

    function test_gas_redeem() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory first = _signVoucher(payerKey, channelId, 1e6);
        bytes memory second = _signVoucher(payerKey, channelId, 2e6);

        vm.prank(payee);
        channels.redeem(_voucher(channelId, 1e6), first);
        check.snapshotGasLastCall("redeem (first for this payee and token)");

        vm.prank(payee);
        channels.redeem(_voucher(channelId, 2e6), second);
        check.snapshotGasLastCall("redeem (later)");

        vm.prank(payee);
        channels.redeem(_voucher(channelId, 1e6), first);
        check.snapshotGasLastCall("redeem (stale voucher, no-op)");
    }

    function test_gas_batchRedeemTen() public {
        // One earlier redeem, so the payee's and treasury's balance slots are warm as in steady use.
        bytes32 warm = _openUsd(DEPOSIT);
        _redeemAsPayee(warm, 1);

        uint256 count = 10;
        IPaymentChannels.Voucher[] memory vouchers = new IPaymentChannels.Voucher[](count);
        bytes[] memory signatures = new bytes[](count);
        for (uint256 i = 0; i < count; ++i) {
            vm.prank(payer);
            bytes32 channelId = channels.open(payee, address(usd), DELAY, bytes32(i + 1), DEPOSIT);
            vouchers[i] = _voucher(channelId, 1e6);
            signatures[i] = _signVoucher(payerKey, channelId, 1e6);
        }

        vm.prank(payee);
        channels.batchRedeem(vouchers, signatures);
        check.snapshotGasLastCall("batchRedeem (10 channels)");
    }

    function test_gas_close() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _redeemAsPayee(channelId, 1e6);

        vm.prank(payer);
        channels.requestClose(channelId);
        check.snapshotGasLastCall("requestClose");

        vm.warp(block.timestamp + DELAY);
        vm.prank(payer);
        channels.finalise(channelId);
        check.snapshotGasLastCall("finalise (ERC-20 refund)");
    }

    function test_gas_cooperativeClose() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory consent = _sign(payeeKey, channels.cooperativeCloseDigest(channelId, 1e6));

        vm.prank(payer);
        channels.cooperativeClose(channelId, 1e6, consent);
        check.snapshotGasLastCall("cooperativeClose (ERC-20)");
    }

    function test_gas_withdraw() public {
        bytes32 usdChannel = _openUsd(DEPOSIT);
        _redeemAsPayee(usdChannel, 1e6);
        bytes32 ethChannel = _openEth(1 ether);
        _redeemAsPayee(ethChannel, 1 ether);

        vm.prank(payee);
        channels.withdraw(address(usd));
        check.snapshotGasLastCall("withdraw (ERC-20)");

        vm.prank(payee);
        channels.withdraw(ETH);
        check.snapshotGasLastCall("withdraw (ETH)");
    }
}
