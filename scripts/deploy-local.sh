#!/usr/bin/env bash
# Deploys the payment channel contract and the test stablecoin to a local anvil. The addresses
# are the same on every run (CREATE2 with a fixed salt from anvil's first dev account), and are
# written to <data dir>/chain.toml, where `spare wallet` reads them.
set -Eeuo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/deploy-local.sh [-h] [--rpc-url URL] [--data-dir DIR] [--start-anvil] [--no-fund]

  --rpc-url URL   anvil's JSON-RPC URL (default: $SPARE_RPC_URL or http://127.0.0.1:8545)
  --data-dir DIR  where chain.toml and wallet.key live (default: $SPARE_DATA_DIR or ~/.spare)
  --start-anvil   start anvil on the URL's port first unless something already listens there;
                  it runs in the background with its log in <data dir>/anvil.log and its
                  process id in <data dir>/anvil.pid (stop it with: kill "$(cat <data dir>/anvil.pid)")
  --no-fund       do not give the wallet in the data directory 10 ETH and 10000 tUSD

Run scripts/contracts-toolchain.sh once first. Only for local chains: the wallet funding uses
anvil's well-known dev keys.
USAGE
}

rpc_url="${SPARE_RPC_URL:-http://127.0.0.1:8545}"
data_dir="${SPARE_DATA_DIR:-$HOME/.spare}"
start_anvil=false
fund_args=()
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --rpc-url) rpc_url="${2:?--rpc-url needs a URL}"; shift 2 ;;
        --data-dir) data_dir="${2:?--data-dir needs a directory}"; shift 2 ;;
        --start-anvil) start_anvil=true; shift ;;
        --no-fund) fund_args=(--fund-eth 0 --fund-usd 0); shift ;;
        *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$data_dir"

if $start_anvil; then
    host_port="${rpc_url#*://}"
    host_port="${host_port%%/*}"
    host="${host_port%%:*}"
    port="${host_port##*:}"
    if [[ "$host" != "127.0.0.1" && "$host" != "localhost" ]]; then
        echo "error: --start-anvil only starts anvil on 127.0.0.1; got host $host" >&2
        exit 2
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "something already listens on 127.0.0.1:$port; using it"
    else
        anvil="$("$root/contracts/bin/foundry-tool" --path anvil)"
        nohup "$anvil" --host 127.0.0.1 --port "$port" --chain-id 31337 >"$data_dir/anvil.log" 2>&1 &
        echo $! >"$data_dir/anvil.pid"
        for _ in $(seq 1 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                break
            fi
            sleep 0.1
        done
        echo "started anvil (pid $(cat "$data_dir/anvil.pid")) on 127.0.0.1:$port"
    fi
fi

cd "$root"
cargo run --quiet --locked -p spare-contracts --example deploy_local -- \
    --rpc-url "$rpc_url" --data-dir "$data_dir" "${fund_args[@]}"
