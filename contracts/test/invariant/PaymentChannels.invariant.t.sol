// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {PaymentChannels} from "../../src/PaymentChannels.sol";
import {IPaymentChannels} from "../../src/interfaces/IPaymentChannels.sol";
import {TestUSD} from "../../src/TestUSD.sol";
import {ChannelTestBase} from "../utils/ChannelTestBase.sol";
import {ChannelHandler} from "./ChannelHandler.sol";

/// @notice Invariants over random sequences of open, top-up, redeem, close, finalise,
/// cooperative close and withdraw, in ETH and in the test token.
contract PaymentChannelsInvariantTest is ChannelTestBase {
    ChannelHandler internal handler;

    function setUp() public override {
        super.setUp();
        handler = new ChannelHandler(channels, usd, treasury);
    }

    /// @dev Read by forge: only the handler's functions are called during invariant runs.
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    /// The contract holds exactly the unclaimed deposits of live channels plus every withdrawable balance.
    function invariant_balanceMatchesLiabilities() public view {
        address[2] memory tokens = [ETH, address(usd)];
        for (uint256 t = 0; t < 2; ++t) {
            uint256 liabilities = _withdrawable(tokens[t]);
            for (uint256 i = 0; i < handler.channelCount(); ++i) {
                IPaymentChannels.Channel memory channel = channels.getChannel(handler.channelIds(i));
                if (channel.token != tokens[t] || channel.status == IPaymentChannels.Status.Finalised) continue;
                liabilities += uint256(channel.deposit) - channel.claimed;
            }
            check.assertEq(_held(tokens[t]), liabilities, "balance == open deposits - claimed + withdrawable");
        }
    }

    /// Claimed never goes down and never passes the deposit.
    function invariant_claimedGrowsWithinDeposit() public view {
        check.assertFalse(handler.claimedBroken(), "claimed went down or above the deposit");
        for (uint256 i = 0; i < handler.channelCount(); ++i) {
            IPaymentChannels.Channel memory channel = channels.getChannel(handler.channelIds(i));
            check.assertLe(channel.claimed, channel.deposit, "claimed <= deposit");
        }
    }

    /// Every redeem split its delta into a fee and a net that add up to it exactly.
    function invariant_feePlusNetEqualsDelta() public view {
        check.assertFalse(handler.splitBroken(), "fee + net != delta");
    }

    /// What came in equals what is held plus what went out: no funds are created or lost.
    function invariant_fundsConserved() public view {
        address[2] memory tokens = [ETH, address(usd)];
        for (uint256 t = 0; t < 2; ++t) {
            uint256 out = handler.ghostRefunded(t) + handler.ghostWithdrawn(t);
            check.assertEq(handler.ghostDeposited(t), _held(tokens[t]) + out, "deposited == held + paid out");
        }
    }

    /// A finalised channel stays finalised and its id cannot be opened again.
    function invariant_finalisedNeverReopens() public view {
        check.assertFalse(handler.reopened(), "a finalised channel reopened");
        for (uint256 i = 0; i < handler.channelCount(); ++i) {
            bytes32 channelId = handler.channelIds(i);
            if (!handler.wasFinalised(channelId)) continue;
            check.assertEq(
                uint256(channels.getChannel(channelId).status),
                uint256(IPaymentChannels.Status.Finalised),
                "finalised channel changed status"
            );
        }
    }

    function _held(address token) internal view returns (uint256) {
        return token == ETH ? address(channels).balance : usd.balanceOf(address(channels));
    }

    function _withdrawable(address token) internal view returns (uint256 total) {
        address[] memory holders = handler.balanceHolders();
        for (uint256 i = 0; i < holders.length; ++i) {
            total += channels.balanceOf(token, holders[i]);
        }
    }
}
