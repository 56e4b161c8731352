# shellcheck shell=bash disable=SC2034
# Shell helpers shared by testnet/run-local.sh and scripts/install-tools.sh.
#
# Source this file from a bash script that runs with `set -Eeuo pipefail`. It sets no
# options itself and starts nothing when sourced.

SPARE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Git-ignored folder for the Python venv, the model file and testnet state.
SPARE_TOOLS_DIR="$SPARE_ROOT/.tools"
SPARE_VENV="$SPARE_TOOLS_DIR/venv"
SPARE_MODEL_FILE="$SPARE_TOOLS_DIR/gemma-3-270m-q4_k_m.gguf"
# Model id that the llama.cpp server announces (its `--alias`).
SPARE_MODEL_ID="gemma-3-270m"

# Process groups started by start_group, with a name and a log file for each.
GROUP_PIDS=()
GROUP_NAMES=()
GROUP_LOGS=()

info() {
  printf '==> %s\n' "$*" >&2
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Fails unless python3 is 3.10 or newer, the oldest version the end-to-end tests are written for.
require_python() {
  command -v python3 >/dev/null 2>&1 || die "python3 not found; install Python 3.10 or newer (Debian: apt-get install python3 python3-venv)"
  python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "python3 is $(python3 -c 'import platform; print(platform.python_version())'); Python 3.10 or newer is required"
}

require_command() {
  local command_name=$1 hint=$2
  command -v "$command_name" >/dev/null 2>&1 || die "$command_name not found; $hint"
}

# Prints the path of the release `spare` binary: $SPARE_BIN if set, else under
# $CARGO_TARGET_DIR (default target/ in the repository).
spare_release_binary() {
  if [[ -n "${SPARE_BIN:-}" ]]; then
    printf '%s\n' "$SPARE_BIN"
    return
  fi
  local target_dir="${CARGO_TARGET_DIR:-$SPARE_ROOT/target}"
  [[ "$target_dir" = /* ]] || target_dir="$SPARE_ROOT/$target_dir"
  printf '%s\n' "$target_dir/release/spare"
}

# Succeeds when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
  local port=$1
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

# Starts a command in a new session, so it leads its own process group and Ctrl-C in the
# terminal does not reach it. stop_groups later signals the whole group, children included.
# The log file is created with mode 0600, because the gateway prints its new API key once.
start_group() {
  local name=$1 log_file=$2
  shift 2
  (umask 077 && : >"$log_file")
  setsid "$@" >"$log_file" 2>&1 </dev/null &
  GROUP_PIDS+=("$!")
  GROUP_NAMES+=("$name")
  GROUP_LOGS+=("$log_file")
}

# Sends SIGTERM to every started process group, newest first, and SIGKILL to those still
# alive after 10 seconds.
stop_groups() {
  local index pid deadline
  for ((index = ${#GROUP_PIDS[@]} - 1; index >= 0; index--)); do
    kill -TERM -- "-${GROUP_PIDS[index]}" 2>/dev/null || true
  done

  deadline=$((SECONDS + 10))
  for pid in "${GROUP_PIDS[@]}"; do
    while kill -0 -- "-$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.2
    done
    if kill -0 -- "-$pid" 2>/dev/null; then
      info "process group $pid did not stop within 10 s; sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  GROUP_PIDS=()
  GROUP_NAMES=()
  GROUP_LOGS=()
}

# Prints the index of the first started process that has exited, or fails if all run.
find_exited_group() {
  local index
  for index in "${!GROUP_PIDS[@]}"; do
    if ! kill -0 "${GROUP_PIDS[index]}" 2>/dev/null; then
      printf '%s\n' "$index"
      return 0
    fi
  done
  return 1
}

# Runs CHECK... every half second until it succeeds. Fails with a pointer to the log when
# TIMEOUT_S seconds pass or the process at INDEX (from start_group) exits first.
wait_until() {
  local index=$1 timeout_s=$2 what=$3
  shift 3
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "${GROUP_PIDS[index]}" 2>/dev/null; then
      die "${GROUP_NAMES[index]} exited before $what; see ${GROUP_LOGS[index]}"
    fi
    if ((SECONDS >= deadline)); then
      die "timed out after ${timeout_s} s waiting for $what; see ${GROUP_LOGS[index]}"
    fi
    sleep 0.5
  done
}

# Succeeds when the OpenAI-compatible server at BASE_URL lists MODEL with at least
# MIN_PROVIDERS providers. Only the spare gateway sends a `providers` count, so pass 0 for others.
model_listed() {
  local base_url=$1 api_key=$2 model=$3 min_providers=$4
  curl -fsS --max-time 5 -H "Authorization: Bearer $api_key" "$base_url/models" | python3 -c '
import json, sys
model, min_providers = sys.argv[1], int(sys.argv[2])
listed = json.load(sys.stdin).get("data", [])
found = [entry for entry in listed if entry.get("id") == model]
sys.exit(0 if found and found[0].get("providers", 0) >= min_providers else 1)
' "$model" "$min_providers"
}
