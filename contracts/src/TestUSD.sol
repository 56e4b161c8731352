// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title TestUSD
/// @notice A stand-in USD stablecoin with 6 decimals for local chains and testnets.
/// @dev Anyone may mint any amount. Never deploy this where the token should have value.
contract TestUSD is ERC20 {
    constructor() ERC20("Spare Test USD", "tUSD") {}

    /// @notice Mints `amount` base units (1e6 per dollar) to `to`.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @inheritdoc ERC20
    function decimals() public pure override returns (uint8) {
        return 6;
    }
}
