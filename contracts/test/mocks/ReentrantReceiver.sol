// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {IPaymentChannels} from "../../src/interfaces/IPaymentChannels.sol";

/// @notice Payee or payer contract that calls back into the channel contract when it receives ETH,
/// trying to withdraw or finalise twice.
contract ReentrantReceiver {
    IPaymentChannels public immutable channels;
    uint256 public reentryAttempts;
    bool public reentrySucceeded;
    bytes public reentryError;
    bytes32 public channelToFinalise;

    constructor(IPaymentChannels channels_) {
        channels = channels_;
    }

    function openEth(address payee, uint32 delay) external payable returns (bytes32 channelId) {
        channelId = channels.open{value: msg.value}(payee, address(0), delay, bytes32(0), msg.value);
        channelToFinalise = channelId;
    }

    function requestClose() external {
        channels.requestClose(channelToFinalise);
    }

    function finalise() external {
        channels.finalise(channelToFinalise);
    }

    function withdrawEth() external {
        channels.withdraw(address(0));
    }

    receive() external payable {
        reentryAttempts += 1;
        bytes memory call = channelToFinalise == bytes32(0)
            ? abi.encodeCall(IPaymentChannels.withdraw, (address(0)))
            : abi.encodeCall(IPaymentChannels.finalise, (channelToFinalise));
        (bool ok, bytes memory err) = address(channels).call(call);
        reentrySucceeded = reentrySucceeded || ok;
        reentryError = err;
    }
}

/// @notice Receiver that rejects every ETH transfer.
contract EthRejecter {
    IPaymentChannels public immutable channels;

    constructor(IPaymentChannels channels_) {
        channels = channels_;
    }

    function withdrawEth() external {
        channels.withdraw(address(0));
    }
}
