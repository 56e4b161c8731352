// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {PaymentChannels} from "../src/PaymentChannels.sol";
import {IPaymentChannels} from "../src/interfaces/IPaymentChannels.sol";
import {TestUSD} from "../src/TestUSD.sol";
import {ChannelTestBase} from "./utils/ChannelTestBase.sol";
import {FeeOnTransferToken} from "./mocks/FeeOnTransferToken.sol";
import {ContractWallet} from "./mocks/ContractWallet.sol";
import {EthRejecter} from "./mocks/ReentrantReceiver.sol";

/// @notice Unit tests: every external function of PaymentChannels and every revert path.
contract PaymentChannelsTest is ChannelTestBase {
    /*//////////////////////////////////////////////////////////////
                              CONSTRUCTOR
    //////////////////////////////////////////////////////////////*/

    function test_constructor_setsTreasuryAndFee() public view {
        check.assertEq(channels.treasury(), treasury, "treasury");
        check.assertEq(uint256(channels.feeBps()), FEE_BPS, "fee");
    }

    function test_constructor_revertsIfTreasuryIsZero() public {
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidTreasury.selector, address(0)));
        new PaymentChannels(address(0), FEE_BPS);
    }

    function test_constructor_revertsIfFeeTooHigh() public {
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.FeeTooHigh.selector, 2_001, 2_000));
        new PaymentChannels(treasury, 2_001);
    }

    /*//////////////////////////////////////////////////////////////
                                  OPEN
    //////////////////////////////////////////////////////////////*/

    function test_open_storesTokenChannel() public {
        bytes32 channelId = _openUsd(DEPOSIT);

        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        check.assertEq(channel.payer, payer, "payer");
        check.assertEq(channel.payee, payee, "payee");
        check.assertEq(channel.token, address(usd), "token");
        check.assertEq(uint256(channel.closeDelay), DELAY, "delay");
        check.assertEq(uint256(channel.feeBps), FEE_BPS, "fee");
        check.assertEq(uint256(channel.status), uint256(IPaymentChannels.Status.Open), "status");
        check.assertEq(uint256(channel.deposit), DEPOSIT, "deposit");
        check.assertEq(uint256(channel.claimed), 0, "claimed");
        check.assertEq(usd.balanceOf(address(channels)), DEPOSIT, "contract balance");
    }

    function test_open_storesEthChannel() public {
        uint256 before = payer.balance;
        bytes32 channelId = _openEth(1 ether);

        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        check.assertEq(channel.token, ETH, "token");
        check.assertEq(uint256(channel.deposit), 1 ether, "deposit");
        check.assertEq(address(channels).balance, 1 ether, "contract balance");
        check.assertEq(payer.balance, before - 1 ether, "payer balance");
    }

    function test_open_idDerivesFromConfiguration() public {
        bytes32 salt = keccak256("salt");
        vm.prank(payer);
        bytes32 channelId = channels.open(payee, address(usd), DELAY, salt, DEPOSIT);

        bytes32 expected = keccak256(abi.encode(payer, payee, address(usd), DELAY, salt));
        check.assertEq(channelId, expected, "id");
        check.assertEq(channels.channelIdOf(payer, payee, address(usd), DELAY, salt), expected, "channelIdOf");
    }

    function test_open_emitsChannelOpened() public {
        bytes32 channelId = channels.channelIdOf(payer, payee, address(usd), DELAY, bytes32(0));
        vm.expectEmit(true, true, true, true, address(channels));
        emit IPaymentChannels.ChannelOpened(channelId, payer, payee, address(usd), DELAY, FEE_BPS, bytes32(0), DEPOSIT);
        _openUsd(DEPOSIT);
    }

    function test_open_revertsIfPayeeIsZero() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidPayee.selector, address(0)));
        channels.open(address(0), address(usd), DELAY, bytes32(0), DEPOSIT);
    }

    function test_open_revertsIfPayeeIsPayer() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidPayee.selector, payer));
        channels.open(payer, address(usd), DELAY, bytes32(0), DEPOSIT);
    }

    function test_open_revertsIfDelayTooShort() public {
        uint32 delay = channels.MIN_CLOSE_DELAY() - 1;
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.CloseDelayOutOfRange.selector, delay, 1 hours, 30 days)
        );
        channels.open(payee, address(usd), delay, bytes32(0), DEPOSIT);
    }

    function test_open_revertsIfDelayTooLong() public {
        uint32 delay = channels.MAX_CLOSE_DELAY() + 1;
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.CloseDelayOutOfRange.selector, delay, 1 hours, 30 days)
        );
        channels.open(payee, address(usd), delay, bytes32(0), DEPOSIT);
    }

    function test_open_revertsIfIdInUse() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelExists.selector, channelId));
        channels.open(payee, address(usd), DELAY, bytes32(0), DEPOSIT);
    }

    function test_open_revertsIfFinalisedIdReused() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _closeAndFinalise(channelId);

        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelExists.selector, channelId));
        channels.open(payee, address(usd), DELAY, bytes32(0), DEPOSIT);
        check.assertEq(uint256(_status(channelId)), uint256(IPaymentChannels.Status.Finalised), "still finalised");
    }

    function test_open_revertsIfAmountIsZero() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ZeroDeposit.selector, address(usd), 0));
        channels.open(payee, address(usd), DELAY, bytes32(0), 0);
    }

    function test_open_revertsIfEthSentWithToken() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.WrongEthValue.selector, 0, 1));
        channels.open{value: 1}(payee, address(usd), DELAY, bytes32(0), DEPOSIT);
    }

    function test_open_revertsIfEthValueDiffers() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.WrongEthValue.selector, 2 ether, 1 ether));
        channels.open{value: 1 ether}(payee, ETH, DELAY, bytes32(0), 2 ether);
    }

    function test_open_revertsIfDepositTooLarge() public {
        uint256 tooMuch = uint256(type(uint128).max) + 1;
        usd.mint(payer, tooMuch);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.DepositTooLarge.selector, tooMuch, type(uint128).max)
        );
        channels.open(payee, address(usd), DELAY, bytes32(0), tooMuch);
    }

    function test_open_revertsIfAllowanceMissing() public {
        vm.prank(payer);
        usd.approve(address(channels), 0);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(channels), 0, DEPOSIT)
        );
        channels.open(payee, address(usd), DELAY, bytes32(0), DEPOSIT);
    }

    function test_open_creditsOnlyWhatArrives() public {
        FeeOnTransferToken fot = new FeeOnTransferToken(1);
        fot.mint(payer, DEPOSIT);
        vm.prank(payer);
        fot.approve(address(channels), DEPOSIT);

        vm.prank(payer);
        bytes32 channelId = channels.open(payee, address(fot), DELAY, bytes32(0), DEPOSIT);

        uint256 arrived = DEPOSIT - DEPOSIT / 100;
        check.assertEq(uint256(channels.getChannel(channelId).deposit), arrived, "deposit");
        check.assertEq(fot.balanceOf(address(channels)), arrived, "contract balance");
    }

    function test_open_revertsIfTokenDeliversNothing() public {
        FeeOnTransferToken burnsAll = new FeeOnTransferToken(100);
        burnsAll.mint(payer, DEPOSIT);
        vm.prank(payer);
        burnsAll.approve(address(channels), DEPOSIT);

        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ZeroDeposit.selector, address(burnsAll), DEPOSIT));
        channels.open(payee, address(burnsAll), DELAY, bytes32(0), DEPOSIT);
    }

    function test_open_fixesFeeForChannel() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(treasury);
        channels.setFeeBps(500);

        vm.prank(payer);
        bytes32 later = channels.open(payee, address(usd), DELAY, bytes32(uint256(1)), DEPOSIT);
        check.assertEq(uint256(channels.getChannel(channelId).feeBps), FEE_BPS, "old channel keeps its fee");
        check.assertEq(uint256(channels.getChannel(later).feeBps), 500, "new channel takes the new fee");

        _redeemAsPayee(channelId, 100e6);
        check.assertEq(channels.balanceOf(address(usd), treasury), 10e6, "fee at the channel's rate");
    }

    /*//////////////////////////////////////////////////////////////
                                 TOP UP
    //////////////////////////////////////////////////////////////*/

    function test_topUp_addsTokenDeposit() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.expectEmit(true, true, true, true, address(channels));
        emit IPaymentChannels.ChannelToppedUp(channelId, 5e6, DEPOSIT + 5e6);
        vm.prank(payer);
        channels.topUp(channelId, 5e6);

        check.assertEq(uint256(channels.getChannel(channelId).deposit), DEPOSIT + 5e6, "deposit");
        check.assertEq(usd.balanceOf(address(channels)), DEPOSIT + 5e6, "contract balance");
    }

    function test_topUp_addsEthDeposit() public {
        bytes32 channelId = _openEth(1 ether);
        vm.prank(payer);
        channels.topUp{value: 0.5 ether}(channelId, 0.5 ether);

        check.assertEq(uint256(channels.getChannel(channelId).deposit), 1.5 ether, "deposit");
        check.assertEq(address(channels).balance, 1.5 ether, "contract balance");
    }

    function test_topUp_revertsIfNotPayer() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NotPayer.selector, channelId, stranger));
        channels.topUp(channelId, 1);
    }

    function test_topUp_revertsIfClosing() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        channels.requestClose(channelId);

        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.WrongStatus.selector,
                channelId,
                IPaymentChannels.Status.Open,
                IPaymentChannels.Status.Closing
            )
        );
        channels.topUp(channelId, 1e6);
    }

    function test_topUp_revertsIfChannelUnknown() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelNotFound.selector, bytes32(uint256(7))));
        channels.topUp(bytes32(uint256(7)), 1e6);
    }

    function test_topUp_revertsIfAmountIsZero() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ZeroDeposit.selector, address(usd), 0));
        channels.topUp(channelId, 0);
    }

    function test_topUp_revertsIfEthValueDiffers() public {
        bytes32 channelId = _openEth(1 ether);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.WrongEthValue.selector, 2, 1));
        channels.topUp{value: 1}(channelId, 2);
    }

    function test_topUp_revertsIfDepositTooLarge() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        uint256 rest = uint256(type(uint128).max) - DEPOSIT + 1;
        usd.mint(payer, rest);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.DepositTooLarge.selector, uint256(type(uint128).max) + 1, type(uint128).max
            )
        );
        channels.topUp(channelId, rest);
    }

    /*//////////////////////////////////////////////////////////////
                                 REDEEM
    //////////////////////////////////////////////////////////////*/

    function test_redeem_splitsDeltaIntoFeeAndNet() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        uint256 delta = _redeemAsPayee(channelId, 100e6);

        check.assertEq(delta, 100e6, "delta");
        check.assertEq(uint256(channels.getChannel(channelId).claimed), 100e6, "claimed");
        check.assertEq(channels.balanceOf(address(usd), treasury), 10e6, "fee");
        check.assertEq(channels.balanceOf(address(usd), payee), 90e6, "net");
    }

    function test_redeem_paysOnlyTheDifference() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _redeemAsPayee(channelId, 100e6);
        uint256 delta = _redeemAsPayee(channelId, 250e6);

        check.assertEq(delta, 150e6, "delta");
        check.assertEq(uint256(channels.getChannel(channelId).claimed), 250e6, "claimed");
        check.assertEq(channels.balanceOf(address(usd), payee), 225e6, "net");
        check.assertEq(channels.balanceOf(address(usd), treasury), 25e6, "fee");
    }

    function test_redeem_olderVoucherIsNoop() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory older = _signVoucher(payerKey, channelId, 50e6);
        _redeemAsPayee(channelId, 100e6);

        check.recordLogs();
        vm.prank(payee);
        uint256 delta = channels.redeem(_voucher(channelId, 50e6), older);

        check.assertEq(delta, 0, "delta");
        check.assertEq(check.getRecordedLogs().length, 0, "no event for a no-op");
        check.assertEq(uint256(channels.getChannel(channelId).claimed), 100e6, "claimed");
    }

    function test_redeem_equalVoucherIsNoop() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _redeemAsPayee(channelId, 100e6);
        uint256 delta = _redeemAsPayee(channelId, 100e6);

        check.assertEq(delta, 0, "delta");
        check.assertEq(channels.balanceOf(address(usd), payee), 90e6, "net unchanged");
    }

    function test_redeem_capsAtDeposit() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        uint256 delta = _redeemAsPayee(channelId, DEPOSIT * 5);

        check.assertEq(delta, DEPOSIT, "delta");
        check.assertEq(uint256(channels.getChannel(channelId).claimed), DEPOSIT, "claimed");

        // After a top-up the same voucher claims the rest of what it promised, up to the new deposit.
        vm.prank(payer);
        channels.topUp(channelId, 10e6);
        check.assertEq(_redeemAsPayee(channelId, DEPOSIT * 5), 10e6, "delta after top-up");
    }

    function test_redeem_emitsRedeemed() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);
        vm.expectEmit(true, true, true, true, address(channels));
        emit IPaymentChannels.Redeemed(channelId, payee, 100e6, 100e6, 10e6, 90e6);
        vm.prank(payee);
        channels.redeem(_voucher(channelId, 100e6), signature);
    }

    function test_redeem_roundsFeeDown() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _redeemAsPayee(channelId, 19);

        check.assertEq(channels.balanceOf(address(usd), treasury), 1, "fee rounds down");
        check.assertEq(channels.balanceOf(address(usd), payee), 18, "payee gets the remainder");
    }

    function test_redeem_worksForAuthorisedRedeemer() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        address relayer = address(0xBEEF);
        vm.prank(payee);
        channels.setRedeemer(relayer, true);

        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);
        vm.prank(relayer);
        channels.redeem(_voucher(channelId, 100e6), signature);

        check.assertEq(channels.balanceOf(address(usd), payee), 90e6, "net goes to the payee");
        check.assertEq(channels.balanceOf(address(usd), relayer), 0, "nothing to the relayer");
    }

    function test_redeem_revertsIfRedeemerRevoked() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        address relayer = address(0xBEEF);
        vm.prank(payee);
        channels.setRedeemer(relayer, true);
        vm.prank(payee);
        channels.setRedeemer(relayer, false);

        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);
        vm.prank(relayer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NotRedeemer.selector, channelId, relayer));
        channels.redeem(_voucher(channelId, 100e6), signature);
    }

    function test_redeem_revertsIfCallerIsPayer() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NotRedeemer.selector, channelId, payer));
        channels.redeem(_voucher(channelId, 100e6), signature);
    }

    function test_redeem_revertsIfSignerIsNotPayer() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory signature = _signVoucher(strangerKey, channelId, 100e6);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, channelId, payer));
        channels.redeem(_voucher(channelId, 100e6), signature);
    }

    function test_redeem_revertsIfAmountAltered() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, channelId, payer));
        channels.redeem(_voucher(channelId, 101e6), signature);
    }

    function test_redeem_revertsIfSignatureMalformed() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, channelId, payer));
        channels.redeem(_voucher(channelId, 100e6), hex"1234");
    }

    function test_redeem_revertsIfChannelUnknown() public {
        bytes32 channelId = bytes32(uint256(42));
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelNotFound.selector, channelId));
        channels.redeem(_voucher(channelId, 1), hex"");
    }

    function test_redeem_worksWhileClosing() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        channels.requestClose(channelId);
        vm.warp(block.timestamp + DELAY - 1);

        check.assertEq(_redeemAsPayee(channelId, 100e6), 100e6, "delta");
    }

    function test_redeem_revertsIfFinalised() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);
        _closeAndFinalise(channelId);

        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.WrongStatus.selector,
                channelId,
                IPaymentChannels.Status.Open,
                IPaymentChannels.Status.Finalised
            )
        );
        channels.redeem(_voucher(channelId, 100e6), signature);
    }

    function test_redeem_acceptsContractWalletSignature() public {
        ContractWallet wallet = new ContractWallet(payer);
        usd.mint(address(wallet), DEPOSIT);
        bytes32 channelId = wallet.openChannel(channels, usd, payee, DELAY, DEPOSIT);

        bytes memory signature = _signVoucher(payerKey, channelId, 100e6);
        vm.prank(payee);
        uint256 delta = channels.redeem(_voucher(channelId, 100e6), signature);
        check.assertEq(delta, 100e6, "delta");
    }

    function test_redeem_rejectsContractWalletForgery() public {
        ContractWallet wallet = new ContractWallet(payer);
        usd.mint(address(wallet), DEPOSIT);
        bytes32 channelId = wallet.openChannel(channels, usd, payee, DELAY, DEPOSIT);

        bytes memory signature = _signVoucher(strangerKey, channelId, 100e6);
        vm.prank(payee);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, channelId, address(wallet))
        );
        channels.redeem(_voucher(channelId, 100e6), signature);
    }

    function testFuzz_redeem_feePlusNetEqualsDelta(uint128 deposit, uint256 first, uint256 second, uint16 fee)
        public
    {
        deposit = uint128(bound(deposit, 1, type(uint128).max));
        fee = uint16(bound(fee, 0, channels.MAX_FEE_BPS()));
        vm.prank(treasury);
        channels.setFeeBps(fee);
        usd.mint(payer, deposit);
        bytes32 channelId = _openUsd(deposit);

        uint256 claimed = _redeemAndCheckSplit(channelId, first, fee, 0);
        _redeemAndCheckSplit(channelId, second, fee, claimed);
    }

    function _redeemAndCheckSplit(bytes32 channelId, uint256 amount, uint16 fee, uint256 claimedBefore)
        internal
        returns (uint256 claimed)
    {
        uint256 payeeBefore = channels.balanceOf(address(usd), payee);
        uint256 treasuryBefore = channels.balanceOf(address(usd), treasury);

        uint256 delta = _redeemAsPayee(channelId, amount);

        claimed = channels.getChannel(channelId).claimed;
        uint256 net = channels.balanceOf(address(usd), payee) - payeeBefore;
        uint256 feePaid = channels.balanceOf(address(usd), treasury) - treasuryBefore;
        check.assertEq(feePaid + net, delta, "fee + net == delta");
        check.assertEq(feePaid, delta * fee / 10_000, "fee rate");
        check.assertEq(claimed - claimedBefore, delta, "claimed grows by delta");
        check.assertLe(claimed, channels.getChannel(channelId).deposit, "claimed <= deposit");
        check.assertGe(claimed, claimedBefore, "claimed never shrinks");
    }

    function testFuzz_open_creditsDepositForAnyDelay(uint256 amount, uint32 delay, bytes32 salt) public {
        amount = bound(amount, 1, usd.balanceOf(payer));
        delay = uint32(bound(delay, channels.MIN_CLOSE_DELAY(), channels.MAX_CLOSE_DELAY()));

        vm.prank(payer);
        bytes32 channelId = channels.open(payee, address(usd), delay, salt, amount);

        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        check.assertEq(channelId, channels.channelIdOf(payer, payee, address(usd), delay, salt), "id");
        check.assertEq(uint256(channel.deposit), amount, "deposit");
        check.assertEq(uint256(channel.closeDelay), delay, "delay");
        check.assertEq(usd.balanceOf(address(channels)), amount, "contract balance");
    }

    function testFuzz_finalise_refundsDepositMinusClaimed(uint256 deposit, uint256 voucherAmount, uint256 wait)
        public
    {
        deposit = bound(deposit, 1, 1e30);
        voucherAmount = bound(voucherAmount, 0, 2 * deposit);
        wait = bound(wait, DELAY, 365 days);
        usd.mint(payer, deposit);
        bytes32 channelId = _openUsd(deposit);
        _redeemAsPayee(channelId, voucherAmount);
        uint256 claimed = voucherAmount < deposit ? voucherAmount : deposit;
        uint256 before = usd.balanceOf(payer);

        vm.prank(payer);
        channels.requestClose(channelId);
        vm.warp(block.timestamp + wait);
        vm.prank(payer);
        channels.finalise(channelId);

        check.assertEq(usd.balanceOf(payer) - before, deposit - claimed, "refund");
        check.assertEq(
            channels.balanceOf(address(usd), payee) + channels.balanceOf(address(usd), treasury),
            claimed,
            "claimed stays withdrawable"
        );
    }

    function testFuzz_redeem_rejectsAnyOtherSigner(uint256 key, uint256 amount) public {
        key = bound(key, 1, SECP256K1_N - 1);
        vm.assume(key != payerKey);
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory signature = _signVoucher(key, channelId, amount);

        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, channelId, payer));
        channels.redeem(_voucher(channelId, amount), signature);
    }

    /*//////////////////////////////////////////////////////////////
                              BATCH REDEEM
    //////////////////////////////////////////////////////////////*/

    function test_batchRedeem_redeemsManyChannels() public {
        IPaymentChannels.Voucher[] memory vouchers = new IPaymentChannels.Voucher[](3);
        bytes[] memory signatures = new bytes[](3);
        for (uint256 i = 0; i < 3; ++i) {
            vm.prank(payer);
            bytes32 channelId = channels.open(payee, address(usd), DELAY, bytes32(i), DEPOSIT);
            vouchers[i] = _voucher(channelId, (i + 1) * 10e6);
            signatures[i] = _signVoucher(payerKey, channelId, (i + 1) * 10e6);
        }

        vm.prank(payee);
        uint256 total = channels.batchRedeem(vouchers, signatures);

        check.assertEq(total, 60e6, "total");
        check.assertEq(channels.balanceOf(address(usd), payee), 54e6, "net");
        check.assertEq(channels.balanceOf(address(usd), treasury), 6e6, "fee");
        for (uint256 i = 0; i < 3; ++i) {
            check.assertEq(uint256(channels.getChannel(vouchers[i].channelId).claimed), (i + 1) * 10e6, "claimed");
        }
    }

    function test_batchRedeem_revertsIfLengthsDiffer() public {
        IPaymentChannels.Voucher[] memory vouchers = new IPaymentChannels.Voucher[](2);
        bytes[] memory signatures = new bytes[](1);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.LengthMismatch.selector, 2, 1));
        channels.batchRedeem(vouchers, signatures);
    }

    function test_batchRedeem_revertsWholeBatchOnBadVoucher() public {
        bytes32 good = _openUsd(DEPOSIT);
        vm.prank(payer);
        bytes32 bad = channels.open(payee, address(usd), DELAY, bytes32(uint256(1)), DEPOSIT);

        IPaymentChannels.Voucher[] memory vouchers = new IPaymentChannels.Voucher[](2);
        bytes[] memory signatures = new bytes[](2);
        vouchers[0] = _voucher(good, 10e6);
        signatures[0] = _signVoucher(payerKey, good, 10e6);
        vouchers[1] = _voucher(bad, 10e6);
        signatures[1] = _signVoucher(strangerKey, bad, 10e6);

        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, bad, payer));
        channels.batchRedeem(vouchers, signatures);
        check.assertEq(uint256(channels.getChannel(good).claimed), 0, "good voucher rolled back");
    }

    /*//////////////////////////////////////////////////////////////
                             REQUEST CLOSE
    //////////////////////////////////////////////////////////////*/

    function test_requestClose_startsDelay() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        uint256 closesAt = block.timestamp + DELAY;
        vm.expectEmit(true, true, true, true, address(channels));
        emit IPaymentChannels.CloseRequested(channelId, closesAt);
        vm.prank(payer);
        channels.requestClose(channelId);

        IPaymentChannels.Channel memory channel = channels.getChannel(channelId);
        check.assertEq(uint256(channel.status), uint256(IPaymentChannels.Status.Closing), "status");
        check.assertEq(uint256(channel.closesAt), closesAt, "closesAt");
    }

    function test_requestClose_revertsIfNotPayer() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payee);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NotPayer.selector, channelId, payee));
        channels.requestClose(channelId);
    }

    function test_requestClose_revertsIfAlreadyClosing() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        channels.requestClose(channelId);

        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.WrongStatus.selector,
                channelId,
                IPaymentChannels.Status.Open,
                IPaymentChannels.Status.Closing
            )
        );
        channels.requestClose(channelId);
    }

    function test_requestClose_revertsIfChannelUnknown() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelNotFound.selector, bytes32(uint256(3))));
        channels.requestClose(bytes32(uint256(3)));
    }

    /*//////////////////////////////////////////////////////////////
                                FINALISE
    //////////////////////////////////////////////////////////////*/

    function test_finalise_refundsUnclaimedTokens() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _redeemAsPayee(channelId, 100e6);
        vm.prank(payer);
        channels.requestClose(channelId);
        vm.warp(block.timestamp + DELAY);
        uint256 before = usd.balanceOf(payer);

        vm.expectEmit(true, true, true, true, address(channels));
        emit IPaymentChannels.ChannelFinalised(channelId, 100e6, DEPOSIT - 100e6, false);
        vm.prank(payer);
        channels.finalise(channelId);

        check.assertEq(usd.balanceOf(payer), before + DEPOSIT - 100e6, "refund");
        check.assertEq(uint256(_status(channelId)), uint256(IPaymentChannels.Status.Finalised), "status");
        check.assertEq(usd.balanceOf(address(channels)), 100e6, "claimed stays for withdrawal");
    }

    function test_finalise_refundsUnclaimedEth() public {
        bytes32 channelId = _openEth(1 ether);
        _redeemAsPayee(channelId, 0.25 ether);
        vm.prank(payer);
        channels.requestClose(channelId);
        vm.warp(block.timestamp + DELAY);
        uint256 before = payer.balance;

        vm.prank(payer);
        channels.finalise(channelId);

        check.assertEq(payer.balance, before + 0.75 ether, "refund");
        check.assertEq(address(channels).balance, 0.25 ether, "claimed stays for withdrawal");
    }

    function test_finalise_fullyClaimedRefundsNothing() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _redeemAsPayee(channelId, DEPOSIT);
        vm.prank(payer);
        channels.requestClose(channelId);
        vm.warp(block.timestamp + DELAY);
        uint256 before = usd.balanceOf(payer);

        vm.prank(payer);
        channels.finalise(channelId);
        check.assertEq(usd.balanceOf(payer), before, "no refund");
    }

    function test_finalise_revertsBeforeDelay() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        channels.requestClose(channelId);
        uint256 closesAt = block.timestamp + DELAY;
        vm.warp(closesAt - 1);

        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.CloseDelayNotElapsed.selector, channelId, closesAt, closesAt - 1)
        );
        channels.finalise(channelId);
    }

    function test_finalise_revertsIfNotPayer() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        channels.requestClose(channelId);
        vm.warp(block.timestamp + DELAY);

        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NotPayer.selector, channelId, stranger));
        channels.finalise(channelId);
    }

    function test_finalise_revertsIfCloseNotRequested() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.WrongStatus.selector,
                channelId,
                IPaymentChannels.Status.Closing,
                IPaymentChannels.Status.Open
            )
        );
        channels.finalise(channelId);
    }

    function test_finalise_revertsIfAlreadyFinalised() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _closeAndFinalise(channelId);

        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.WrongStatus.selector,
                channelId,
                IPaymentChannels.Status.Closing,
                IPaymentChannels.Status.Finalised
            )
        );
        channels.finalise(channelId);
    }

    function test_finalise_revertsIfChannelUnknown() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelNotFound.selector, bytes32(uint256(9))));
        channels.finalise(bytes32(uint256(9)));
    }

    function test_finalise_revertsIfPayerRejectsEth() public {
        EthRejecter rejecter = new EthRejecter(channels);
        vm.deal(address(rejecter), 1 ether);
        vm.prank(address(rejecter));
        bytes32 channelId = channels.open{value: 1 ether}(payee, ETH, DELAY, bytes32(0), 1 ether);
        vm.prank(address(rejecter));
        channels.requestClose(channelId);
        vm.warp(block.timestamp + DELAY);

        vm.prank(address(rejecter));
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.EthTransferFailed.selector, address(rejecter), 1 ether)
        );
        channels.finalise(channelId);
        check.assertEq(uint256(_status(channelId)), uint256(IPaymentChannels.Status.Closing), "still closing");
    }

    /*//////////////////////////////////////////////////////////////
                           COOPERATIVE CLOSE
    //////////////////////////////////////////////////////////////*/

    function test_cooperativeClose_settlesAndRefundsAtOnce() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _redeemAsPayee(channelId, 100e6);
        bytes memory consent = _sign(payeeKey, channels.cooperativeCloseDigest(channelId, 300e6));
        uint256 before = usd.balanceOf(payer);

        vm.expectEmit(true, true, true, true, address(channels));
        emit IPaymentChannels.Redeemed(channelId, payer, 300e6, 200e6, 20e6, 180e6);
        vm.expectEmit(true, true, true, true, address(channels));
        emit IPaymentChannels.ChannelFinalised(channelId, 300e6, DEPOSIT - 300e6, true);
        vm.prank(payer);
        channels.cooperativeClose(channelId, 300e6, consent);

        check.assertEq(usd.balanceOf(payer), before + DEPOSIT - 300e6, "refund");
        check.assertEq(channels.balanceOf(address(usd), payee), 270e6, "net");
        check.assertEq(channels.balanceOf(address(usd), treasury), 30e6, "fee");
        check.assertEq(uint256(_status(channelId)), uint256(IPaymentChannels.Status.Finalised), "status");
    }

    function test_cooperativeClose_worksWhileClosing() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        vm.prank(payer);
        channels.requestClose(channelId);
        bytes memory consent = _sign(payeeKey, channels.cooperativeCloseDigest(channelId, 0));

        vm.prank(payer);
        channels.cooperativeClose(channelId, 0, consent);
        check.assertEq(uint256(_status(channelId)), uint256(IPaymentChannels.Status.Finalised), "status");
    }

    function test_cooperativeClose_keepsHigherClaim() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _redeemAsPayee(channelId, 500e6);
        bytes memory consent = _sign(payeeKey, channels.cooperativeCloseDigest(channelId, 100e6));
        uint256 before = usd.balanceOf(payer);

        vm.prank(payer);
        channels.cooperativeClose(channelId, 100e6, consent);
        check.assertEq(usd.balanceOf(payer), before + DEPOSIT - 500e6, "refund excludes what was claimed");
    }

    function test_cooperativeClose_revertsIfPayeeDidNotSign() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory forged = _sign(payerKey, channels.cooperativeCloseDigest(channelId, 0));
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, channelId, payee));
        channels.cooperativeClose(channelId, 0, forged);
    }

    function test_cooperativeClose_revertsIfVoucherSignatureUsed() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        // A payee signature over the voucher type must not pass as consent to close.
        bytes memory wrongType = _sign(payeeKey, channels.voucherDigest(channelId, 0));
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.InvalidSignature.selector, channelId, payee));
        channels.cooperativeClose(channelId, 0, wrongType);
    }

    function test_cooperativeClose_revertsIfNotPayer() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory consent = _sign(payeeKey, channels.cooperativeCloseDigest(channelId, 0));
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NotPayer.selector, channelId, stranger));
        channels.cooperativeClose(channelId, 0, consent);
    }

    function test_cooperativeClose_revertsIfFinalised() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        bytes memory consent = _sign(payeeKey, channels.cooperativeCloseDigest(channelId, 0));
        vm.prank(payer);
        channels.cooperativeClose(channelId, 0, consent);

        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentChannels.WrongStatus.selector,
                channelId,
                IPaymentChannels.Status.Open,
                IPaymentChannels.Status.Finalised
            )
        );
        channels.cooperativeClose(channelId, 0, consent);
    }

    function test_cooperativeClose_revertsIfChannelUnknown() public {
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.ChannelNotFound.selector, bytes32(uint256(5))));
        channels.cooperativeClose(bytes32(uint256(5)), 0, hex"");
    }

    /*//////////////////////////////////////////////////////////////
                                WITHDRAW
    //////////////////////////////////////////////////////////////*/

    function test_withdraw_paysPayeeAndTreasury() public {
        bytes32 channelId = _openUsd(DEPOSIT);
        _redeemAsPayee(channelId, 100e6);

        vm.expectEmit(true, true, true, true, address(channels));
        emit IPaymentChannels.Withdrawn(payee, address(usd), 90e6);
        vm.prank(payee);
        uint256 paid = channels.withdraw(address(usd));
        vm.prank(treasury);
        uint256 fee = channels.withdraw(address(usd));

        check.assertEq(paid, 90e6, "payee amount");
        check.assertEq(fee, 10e6, "treasury amount");
        check.assertEq(usd.balanceOf(payee), 90e6, "payee tokens");
        check.assertEq(usd.balanceOf(treasury), 10e6, "treasury tokens");
        check.assertEq(channels.balanceOf(address(usd), payee), 0, "payee balance cleared");
    }

    function test_withdraw_paysEth() public {
        bytes32 channelId = _openEth(1 ether);
        _redeemAsPayee(channelId, 1 ether);
        uint256 before = payee.balance;

        vm.prank(payee);
        channels.withdraw(ETH);
        check.assertEq(payee.balance, before + 0.9 ether, "payee ETH");
    }

    function test_withdraw_revertsIfNothingOwed() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NothingToWithdraw.selector, stranger, address(usd)));
        channels.withdraw(address(usd));
    }

    function test_withdraw_revertsIfReceiverRejectsEth() public {
        EthRejecter rejecter = new EthRejecter(channels);
        vm.prank(payer);
        bytes32 channelId = channels.open{value: 1 ether}(address(rejecter), ETH, DELAY, bytes32(0), 1 ether);
        bytes memory signature = _signVoucher(payerKey, channelId, 1 ether);
        vm.prank(address(rejecter));
        channels.redeem(_voucher(channelId, 1 ether), signature);

        vm.expectRevert(
            abi.encodeWithSelector(IPaymentChannels.EthTransferFailed.selector, address(rejecter), 0.9 ether)
        );
        rejecter.withdrawEth();
        check.assertEq(channels.balanceOf(ETH, address(rejecter)), 0.9 ether, "balance kept");
    }

    /*//////////////////////////////////////////////////////////////
                                SETTINGS
    //////////////////////////////////////////////////////////////*/

    function test_setRedeemer_emitsAndStores() public {
        vm.expectEmit(true, true, true, true, address(channels));
        emit IPaymentChannels.RedeemerSet(payee, stranger, true);
        vm.prank(payee);
        channels.setRedeemer(stranger, true);

        check.assertTrue(channels.isRedeemer(payee, stranger), "allowed");
        check.assertFalse(channels.isRedeemer(payer, stranger), "only for the caller's channels");
    }

    function test_setFeeBps_changesFeeForNewChannels() public {
        vm.expectEmit(true, true, true, true, address(channels));
        emit IPaymentChannels.FeeChanged(FEE_BPS, 250);
        vm.prank(treasury);
        channels.setFeeBps(250);
        check.assertEq(uint256(channels.feeBps()), 250, "fee");
    }

    function test_setFeeBps_revertsIfNotTreasury() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.NotTreasury.selector, stranger));
        channels.setFeeBps(0);
    }

    function test_setFeeBps_revertsIfTooHigh() public {
        vm.prank(treasury);
        vm.expectRevert(abi.encodeWithSelector(IPaymentChannels.FeeTooHigh.selector, 2_001, 2_000));
        channels.setFeeBps(2_001);
    }

    /*//////////////////////////////////////////////////////////////
                                 VIEWS
    //////////////////////////////////////////////////////////////*/

    function test_voucherDigest_followsEip712() public view {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("SparePaymentChannels"),
                keccak256("1"),
                block.chainid,
                address(channels)
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(keccak256("Voucher(bytes32 channelId,uint256 cumulativeAmount)"), bytes32(uint256(1)), 2)
        );

        check.assertEq(channels.DOMAIN_SEPARATOR(), domain, "domain separator");
        check.assertEq(
            channels.voucherDigest(bytes32(uint256(1)), 2),
            keccak256(abi.encodePacked("\x19\x01", domain, structHash)),
            "digest"
        );
    }

    function test_voucherSigner_recoversPayer() public {
        bytes32 channelId = bytes32(uint256(77));
        bytes memory signature = _signVoucher(payerKey, channelId, 5);

        check.assertEq(channels.voucherSigner(channelId, 5, signature), payer, "signer");
        check.assertTrue(channels.voucherSigner(channelId, 6, signature) != payer, "other amount recovers someone else");
        check.assertEq(channels.voucherSigner(channelId, 5, _malleate(signature)), address(0), "high s rejected");
        check.assertEq(channels.voucherSigner(channelId, 5, hex"00"), address(0), "malformed rejected");
    }

    function test_getChannel_unknownIsEmpty() public view {
        IPaymentChannels.Channel memory channel = channels.getChannel(bytes32(uint256(1)));
        check.assertEq(uint256(channel.status), uint256(IPaymentChannels.Status.None), "status");
        check.assertEq(channel.payer, address(0), "payer");
    }

    /*//////////////////////////////////////////////////////////////
                               TEST TOKEN
    //////////////////////////////////////////////////////////////*/

    function test_testUsd_hasSixDecimalsAndOpenMint() public {
        TestUSD token = new TestUSD();
        vm.prank(stranger);
        token.mint(stranger, 5e6);

        check.assertEq(uint256(token.decimals()), 6, "decimals");
        check.assertEq(token.balanceOf(stranger), 5e6, "minted");
    }
}
