"""testnet/run-local.sh as a user runs it: it starts the network, the curl command and the
openai snippet it prints work, and Ctrl-C leaves no process behind."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from local_network import READY_TIMEOUT_S, REPO_ROOT, STOP_TIMEOUT_S, VENV_BIN, free_port

SCRIPT = REPO_ROOT / "testnet" / "run-local.sh"


def default_sigint() -> None:
    """Gives the script the default SIGINT action, as a terminal's shell does. A runner that
    started this test in the background (SIGINT ignored) would otherwise pass that on, and a
    shell cannot trap a signal that was ignored when it started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_until(process: subprocess.Popen, marker: str, timeout_s: float) -> str:
    """Read the script's output until a line contains `marker`, and return all of it."""
    output = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if marker in line:
            return "".join(output)
    raise AssertionError(f"run-local.sh printed no {marker!r} line:\n{''.join(output)}")


def processes_mentioning(text: str) -> list[str]:
    """Return the command lines of running processes whose arguments contain `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command)
    return found


@pytest.fixture
def run_local(spare_bin, tmp_path):
    """run-local.sh on free ports with a fresh data dir, in its own process group like a
    terminal's foreground job."""
    llama_port = free_port()
    env = dict(
        os.environ,
        SPARE_BIN=str(spare_bin),
        TESTNET_GATEWAY_PORT=str(free_port()),
        TESTNET_LLAMA_PORT=str(llama_port),
        TESTNET_NODE_PORTS=f"{free_port()} {free_port()}",
        TESTNET_DATA_DIR=str(tmp_path / "testnet"),
    )
    env.pop("SPARE_API_KEY", None)
    process = subprocess.Popen(
        ["bash", str(SCRIPT)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env, start_new_session=True, preexec_fn=default_sigint,
    )
    try:
        yield process, tmp_path / "testnet", llama_port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        process.stdout.close()


def test_run_local_serves_and_cleans_up(run_local):
    process, data_dir, llama_port = run_local
    output = read_until(process, "Press Ctrl-C", READY_TIMEOUT_S * 2)

    api_key = re.search(r"API key\s+(sk-spare-\w+)", output).group(1)
    assert (data_dir / "gateway" / "gateway" / "api-key").read_text().strip() == api_key

    curl_command = re.search(r"^  (curl .*?)\n\n", output, re.S | re.M).group(1)
    curl = subprocess.run(["bash", "-c", curl_command], capture_output=True, text=True, timeout=120)
    assert curl.returncode == 0, curl.stderr
    assert "data: [DONE]" in curl.stdout, curl.stdout
    assert '"chat.completion.chunk"' in curl.stdout, curl.stdout

    snippet = re.search(r"<<'PY'\n(.*?)\n  PY\n", output, re.S).group(1)
    snippet = "\n".join(line.removeprefix("  ") for line in snippet.splitlines())
    python = subprocess.run([str(VENV_BIN / "python"), "-c", snippet], capture_output=True, text=True, timeout=120)
    assert python.returncode == 0, python.stderr
    assert python.stdout.strip(), python

    llama_argument = f"--port {llama_port} "
    assert len(processes_mentioning(str(data_dir))) == 3, "expected two nodes and a gateway"
    assert len(processes_mentioning(llama_argument)) == 2, "expected llama-cpp-server and llama-server"

    # Ctrl-C in a terminal sends SIGINT to the foreground process group, here the script's own.
    # The network's processes run in sessions of their own, so only the script's cleanup stops them.
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=STOP_TIMEOUT_S + 5) == 130
    assert processes_mentioning(str(data_dir)) == []
    assert processes_mentioning(llama_argument) == []
