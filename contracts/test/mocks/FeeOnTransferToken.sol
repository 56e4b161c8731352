// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice ERC-20 that burns `feePercent`% of every transfer, to check that deposits credit what
/// arrived. With 100% nothing arrives at all.
contract FeeOnTransferToken is ERC20 {
    uint256 public immutable feePercent;

    constructor(uint256 feePercent_) ERC20("Fee On Transfer", "FOT") {
        feePercent = feePercent_;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function _update(address from, address to, uint256 value) internal override {
        if (from == address(0) || to == address(0)) {
            super._update(from, to, value);
            return;
        }
        uint256 burned = value * feePercent / 100;
        super._update(from, address(0), burned);
        super._update(from, to, value - burned);
    }
}
