// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {Vm} from "forge-std/Vm.sol";
import {PaymentChannels} from "../../src/PaymentChannels.sol";
import {IPaymentChannels} from "../../src/interfaces/IPaymentChannels.sol";
import {TestUSD} from "../../src/TestUSD.sol";

/// @notice Cheatcodes of forge 1.x that the npm build of forge-std (1.1.2) does not declare.
interface Cheats {
    struct Log {
        bytes32[] topics;
        bytes data;
        address emitter;
    }

    function recordLogs() external;
    function snapshotGasLastCall(string calldata name) external returns (uint256 gasUsed);
    function getRecordedLogs() external returns (Log[] memory logs);
    function assertEq(uint256 left, uint256 right, string calldata message) external pure;
    function assertEq(address left, address right, string calldata message) external pure;
    function assertEq(bytes32 left, bytes32 right, string calldata message) external pure;
    function assertEq(bool left, bool right, string calldata message) external pure;
    function assertTrue(bool condition, string calldata message) external pure;
    function assertFalse(bool condition, string calldata message) external pure;
    function assertLe(uint256 left, uint256 right, string calldata message) external pure;
    function assertGe(uint256 left, uint256 right, string calldata message) external pure;
    function assertNotEq(bytes32 left, bytes32 right, string calldata message) external pure;
}

/// @notice Shared setup for the channel tests: a deployed contract, a 6-decimal test token,
/// known keys and helpers that open channels and sign vouchers.
/// @dev The npm package forge-std 1.1.2 ships Vm.sol but its Test.sol imports ds-test, which is
/// not published on npm, so tests use the cheatcodes directly instead of inheriting Test.
abstract contract ChannelTestBase {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));
    Cheats internal constant check = Cheats(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// secp256k1 group order; a signature with s above half of it is the malleable twin.
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    uint16 internal constant FEE_BPS = 1_000;
    uint32 internal constant DELAY = 1 days;
    uint256 internal constant DEPOSIT = 1_000e6;
    address internal constant ETH = address(0);

    PaymentChannels internal channels;
    TestUSD internal usd;

    uint256 internal payerKey = 0xA11CE;
    uint256 internal payeeKey = 0xB0B;
    uint256 internal strangerKey = 0xBAD;
    address internal payer;
    address internal payee;
    address internal stranger;
    address internal treasury = address(0x7EA5);

    function setUp() public virtual {
        payer = vm.addr(payerKey);
        payee = vm.addr(payeeKey);
        stranger = vm.addr(strangerKey);
        vm.label(payer, "payer");
        vm.label(payee, "payee");
        vm.label(stranger, "stranger");
        vm.label(treasury, "treasury");

        channels = new PaymentChannels(treasury, FEE_BPS);
        usd = new TestUSD();

        usd.mint(payer, 1_000_000e6);
        usd.mint(stranger, 1_000_000e6);
        vm.deal(payer, 1_000 ether);
        vm.deal(stranger, 1_000 ether);
        vm.prank(payer);
        usd.approve(address(channels), type(uint256).max);
        vm.prank(stranger);
        usd.approve(address(channels), type(uint256).max);
    }

    /// @dev Maps any fuzzer input into [min, max] without discarding runs.
    function bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        if (min == 0 && max == type(uint256).max) return x;
        return min + x % (max - min + 1);
    }

    function _openUsd(uint256 amount) internal returns (bytes32 channelId) {
        vm.prank(payer);
        channelId = channels.open(payee, address(usd), DELAY, bytes32(0), amount);
    }

    function _openEth(uint256 amount) internal returns (bytes32 channelId) {
        vm.prank(payer);
        channelId = channels.open{value: amount}(payee, ETH, DELAY, bytes32(0), amount);
    }

    function _sign(uint256 key, bytes32 digest) internal returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _signVoucher(uint256 key, bytes32 channelId, uint256 cumulativeAmount) internal returns (bytes memory) {
        return _sign(key, channels.voucherDigest(channelId, cumulativeAmount));
    }

    function _voucher(bytes32 channelId, uint256 cumulativeAmount)
        internal
        pure
        returns (IPaymentChannels.Voucher memory)
    {
        return IPaymentChannels.Voucher({channelId: channelId, cumulativeAmount: cumulativeAmount});
    }

    /// @dev Signs as `payerKey` and redeems as the payee.
    function _redeemAsPayee(bytes32 channelId, uint256 cumulativeAmount) internal returns (uint256 delta) {
        bytes memory signature = _signVoucher(payerKey, channelId, cumulativeAmount);
        vm.prank(payee);
        delta = channels.redeem(_voucher(channelId, cumulativeAmount), signature);
    }

    /// @dev Turns a canonical signature into its high-s twin, which recovers the same signer.
    function _malleate(bytes memory signature) internal pure returns (bytes memory) {
        (bytes32 r, bytes32 s, uint8 v) = _splitSignature(signature);
        bytes32 highS = bytes32(SECP256K1_N - uint256(s));
        uint8 flippedV = v == 27 ? 28 : 27;
        return abi.encodePacked(r, highS, flippedV);
    }

    /// @dev Splits a 65-byte (r, s, v) signature.
    function _splitSignature(bytes memory signature) internal pure returns (bytes32 r, bytes32 s, uint8 v) {
        assembly {
            r := mload(add(signature, 0x20))
            s := mload(add(signature, 0x40))
            v := byte(0, mload(add(signature, 0x60)))
        }
    }

    /// @dev Requests close as the payer, waits out the delay and finalises.
    function _closeAndFinalise(bytes32 channelId) internal {
        vm.prank(payer);
        channels.requestClose(channelId);
        vm.warp(block.timestamp + DELAY);
        vm.prank(payer);
        channels.finalise(channelId);
    }

    function _status(bytes32 channelId) internal view returns (IPaymentChannels.Status) {
        return channels.getChannel(channelId).status;
    }
}
