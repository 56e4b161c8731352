#!/usr/bin/env bash
# Compiles the contracts and writes the ABI and bytecode that the Rust bindings (crate
# spare-contracts) are generated from to contracts/artifacts/<Contract>.json. Commit the result.
# The crate's test `committed_artifacts_match_fresh_compile` fails when they drift from the sources.
set -Eeuo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    echo "Usage: scripts/contracts-artifacts.sh   (run scripts/contracts-toolchain.sh once first)"
    exit 0
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/contracts"
bin/foundry-tool forge build --skip test --skip script

mkdir -p artifacts
for contract in PaymentChannels TestUSD; do
    node -e '
        const fs = require("node:fs");
        const [source, target] = process.argv.slice(1);
        const built = JSON.parse(fs.readFileSync(source, "utf8"));
        const artifact = {
            abi: built.abi,
            bytecode: { object: built.bytecode.object },
            deployedBytecode: { object: built.deployedBytecode.object },
        };
        fs.writeFileSync(target, JSON.stringify(artifact, null, 2) + "\n");
    ' "out/$contract.sol/$contract.json" "artifacts/$contract.json"
    echo "wrote contracts/artifacts/$contract.json"
done
