// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {PaymentChannels} from "../src/PaymentChannels.sol";
import {IPaymentChannels} from "../src/interfaces/IPaymentChannels.sol";
import {ChannelTestBase} from "./utils/ChannelTestBase.sol";
import {ReentrantReceiver} from "./mocks/ReentrantReceiver.sol";

/// @notice Attacks a payer, payee or stranger could try, each shown to fail without moving funds.
contract AttacksTest is ChannelTestBase {
    function test_attack_replayAcrossChannels() public {
        bytes32 first = _openUsd(DEPOSIT);
        vm.prank(payer);
        bytes32 second = channels.open(payee, address(usd), DELAY, bytes32(uint256(1)), DEPOSIT);
        bytes memory signature = _signVoucher(payerKey, first, 100e6);

        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, second, payer));
        channels.redeem(_voucher(second, 100e6), signature);
        check.assertEq(uint256(channels.getChannel(second).claimed), 0, "second channel untouched");
    }

    function test_attack_replayAcrossContracts() public {
        PaymentChannels other = new PaymentChannels(treasury, FEE_BPS);
        vm.prank(payer);
        usd.approve(address(other), type(uint256).max);
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        bytes32 otherId = other.open(payee, address(usd), DELAY, bytes32(0), DEPOSIT);
        check.assertEq(otherId, channelId, "same configuration gives the same id");

        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, otherId, payer));
        other.redeem(_voucher(otherId, 100e6), signature);
    }

    function test_attack_replayAcrossChainIds() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);
        bytes32 domainBefore = channels.DOMAIN_SEPARATOR();

        // The same contract state seen on a fork with another chain id.
        vm.chainId(block.chainid + 1);
        check.assertNotEq(channels.DOMAIN_SEPARATOR(), domainBefore, "domain follows the chain id");

        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, channelId, payer));
        channels.redeem(_voucher(channelId, 100e6), signature);
    }

    function test_attack_malleableSignatureRejected() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);
        bytes memory twin = _malleate(signature);

        // The twin recovers the same signer with the precompile, so only the s check stops it.
        bytes32 digest = channels.voucherDigest(channelId, 100e6);
        (bytes32 r, bytes32 s, uint8 v) = _splitSignature(twin);
        check.assertEq(ecrecover(digest, v, r, s), payer, "twin recovers the payer");

        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, channelId, payer));
        channels.redeem(_voucher(channelId, 100e6), twin);

        vm.prank(payee);
        channels.redeem(_voucher(channelId, 100e6), signature);
        check.assertEq(uint256(channels.getChannel(channelId).claimed), 100e6, "canonical form still works");
    }

    function test_attack_voucherAfterFinalise() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory signature = _signVoucher(payerKey, channelId, DEPOSIT);
        _closeAndFinalise(channelId);
        uint256 contractBalance = usd.balanceOf(address(channels));

        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.WrongStatus.selector,
                channelId,
                IPaymentChannels.Status.Open,
                IPaymentChannels.Status.Finalised
            )
        );
        channels.redeem(_voucher(channelId, DEPOSIT), signature);
        check.assertEq(usd.balanceOf(address(channels)), contractBalance, "no funds moved");
    }

    function test_attack_finaliseBeforeDelay() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        channels.requestClose(channelId);
        uint256 closesAt = block.timestamp + DELAY;

        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.CloseDelayNotElapsed.selector, channelId, closesAt, block.timestamp
            )
        );
        channels.finalise(channelId);

        // The payee can still take what it is owed before the deadline.
        check.assertEq(_redeemAsPayee(channelId, 400e6), 400e6, "payee redeems in time");
    }

    function test_attack_reentrancyOnEthWithdraw() public {
        ReentrantReceiver attacker = new ReentrantReceiver(channels);
        vm.prank(payer);
        bytes32 channelId = channels.open{value: 1 ether}(address(attacker), ETH, DELAY, bytes32(0), 1 ether);
        bytes memory signature = _signVoucher(payerKey, channelId, 1 ether);
        vm.prank(address(attacker));
        channels.redeem(_voucher(channelId, 1 ether), signature);

        attacker.withdrawEth();

        check.assertEq(attacker.reentryAttempts(), 1, "reentered once");
        check.assertFalse(attacker.reentrySucceeded(), "reentry failed");
        check.assertEq(address(attacker).balance, 0.9 ether, "paid once");
        check.assertEq(address(channels).balance, 0.1 ether, "treasury share remains");
    }

    function test_attack_reentrancyOnEthRefund() public {
        ReentrantReceiver attacker = new ReentrantReceiver(channels);
        vm.deal(address(attacker), 0);
        bytes32 channelId = attacker.openEth{value: 1 ether}(payee, DELAY);
        attacker.requestClose();
        vm.warp(block.timestamp + DELAY);

        attacker.finalise();

        check.assertEq(attacker.reentryAttempts(), 1, "reentered once");
        check.assertFalse(attacker.reentrySucceeded(), "reentry failed");
        check.assertEq(address(attacker).balance, 1 ether, "refunded once");
        check.assertEq(uint256(_status(channelId)), uint256(IPaymentChannels.Status.Finalised), "finalised");
    }

    function test_attack_dustTopUpByStranger() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NotPayer.selector, channelId, stranger));
        channels.topUp(channelId, 1);

        vm.prank(payer);
        channels.requestClose(channelId);
        uint64 closesAt = channels.getChannel(channelId).closesAt;

        // Not even the payer can add funds to a closing channel or move its deadline.
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.WrongStatus.selector,
                channelId,
                IPaymentChannels.Status.Open,
                IPaymentChannels.Status.Closing
            )
        );
        channels.topUp(channelId, 1);

        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        check.assertEq(uint256(channel.deposit), DEPOSIT, "deposit unchanged");
        check.assertEq(uint256(channel.closesAt), closesAt, "deadline unchanged");
    }

    function test_attack_redeemByStranger() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);

        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NotRedeemer.selector, channelId, stranger));
        channels.redeem(_voucher(channelId, 100e6), signature);

        IPaymentChannels.Voucher[] memory vouchers = new IPaymentChannels.Voucher[](1);
        bytes[] memory signatures = new bytes[](1);
        vouchers[0] = _voucher(channelId, 100e6);
        signatures[0] = signature;
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NotRedeemer.selector, channelId, stranger));
        channels.batchRedeem(vouchers, signatures);
    }

    function test_attack_closeConsentReplayAfterFinalise() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory consent = _sign(payeeKey, channels.cooperativeCloseDigest(channelId, 0));
        vm.prank(payer);
        channels.cooperativeClose(channelId, 0, consent);

        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelExists.selector, channelId));
        channels.open(payee, address(usd), DELAY, bytes32(0), DEPOSIT);
    }
}
