#!/usr/bin/env bash
# Builds the payment channel contracts and runs their forge tests (unit, fuzz, invariant and
# attack tests), then checks both gas snapshots against the committed ones. Runs offline.
set -Eeuo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/test-contracts.sh [-h] [--update-gas]

  --update-gas  rewrite contracts/.gas-snapshot and contracts/snapshots/ instead of checking them;
                commit the result so gas changes show in review.

Run scripts/contracts-toolchain.sh once first.
USAGE
}

update=false
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        --update-gas) update=true ;;
        *) echo "error: unknown argument $arg" >&2; usage >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/contracts"
forge=(bin/foundry-tool forge)
# .gas-snapshot records the gas of whole unit tests. Fuzz and invariant tests are left out because
# their gas is an average over random inputs, which would make every new input show as a change.
snapshot_filter=(--no-match-path 'test/invariant/*' --no-match-test '^testFuzz_')

"${forge[@]}" --version | head -n1
"${forge[@]}" build

if $update; then
    "${forge[@]}" test
    "${forge[@]}" snapshot "${snapshot_filter[@]}"
    echo "gas snapshots updated: contracts/.gas-snapshot contracts/snapshots/"
    exit 0
fi

# forge test rewrites snapshots/ from the snapshotGas cheatcodes, so keep the committed copy to
# compare with.
committed="$(mktemp -d)"
trap 'rm -rf "$committed"' EXIT
cp -r snapshots/. "$committed/"

"${forge[@]}" test

if ! diff -ru "$committed" snapshots; then
    echo "error: per-operation gas in contracts/snapshots/ changed (diff above); run scripts/test-contracts.sh --update-gas and commit the result" >&2
    exit 1
fi
if ! "${forge[@]}" snapshot --check "${snapshot_filter[@]}"; then
    echo "error: contracts/.gas-snapshot differs from this build; run scripts/test-contracts.sh --update-gas and commit the result" >&2
    exit 1
fi
echo "contracts: all forge tests passed and gas matches the snapshots"
