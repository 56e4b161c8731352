#!/usr/bin/env bash
# Installs the pinned Solidity toolchain for contracts/ from the npm registry: the JavaScript
# build of solc, forge, anvil, forge-std and OpenZeppelin Contracts, as locked in
# contracts/package-lock.json. Safe to run again; it reinstalls only when the lockfile changed.
set -Eeuo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/contracts-toolchain.sh [-h]

Runs `npm ci` in contracts/ (npm's cache stays in ~/.npm, outside the clone) and prints where
forge, anvil and the solc wrapper are. Needs node >= 18 and npm.
USAGE
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
contracts="$root/contracts"

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is not installed; install Node.js 18 or newer (for example: apt-get install nodejs npm)" >&2
        exit 1
    fi
done

# npm ci wipes node_modules, so skip it when the installed tree already matches the lockfile.
stamp="$contracts/node_modules/.spare-lock.sha256"
want="$(sha256sum "$contracts/package-lock.json" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$contracts/bin/foundry-tool" --path forge >/dev/null 2>&1 \
    && "$contracts/bin/foundry-tool" --path anvil >/dev/null 2>&1; then
    echo "contracts toolchain is up to date"
else
    # The forge and anvil commands are node launchers that run the binary from the platform
    # package npm picked (for example @foundry-rs/forge-linux-amd64), so their install scripts
    # need not run.
    (cd "$contracts" && npm ci --no-audit --no-fund)
    echo "$want" >"$stamp"
fi

# Scripts and tests run the platform binaries directly (see contracts/bin/foundry-tool).
forge="$("$contracts/bin/foundry-tool" --path forge)"
anvil="$("$contracts/bin/foundry-tool" --path anvil)"
echo "forge: $forge ($("$forge" --version | head -n1))"
echo "anvil: $anvil ($("$anvil" --version | head -n1))"
echo "solc:  $contracts/bin/solc ($("$contracts/bin/solc" --version | tail -n1))"
