"""Fixtures that start the real processes on free loopback ports, with fresh data dirs, and
stop them (whole process groups) after the tests, failed ones included."""

from __future__ import annotations

import signal
from pathlib import Path

import openai
import pytest

from local_network import (
    INSTALL_HINT, MODEL_FILE, SMALL_MAX_BODY_BYTES, VENV_BIN, LlamaServer, LocalNetwork, find_spare_binary, sdk_client,
)


def pytest_configure(config):
    # pytest stops on SIGINT but not on SIGTERM; turning SIGTERM into KeyboardInterrupt makes a
    # terminated run still tear down its fixtures, so no model server or node outlives it.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"received signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture(scope="session")
def spare_bin() -> Path:
    try:
        return find_spare_binary()
    except FileNotFoundError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> LlamaServer:
    for needed in (MODEL_FILE, VENV_BIN / "llama-cpp-server"):
        if not needed.exists():
            pytest.fail(f"{needed} is missing; {INSTALL_HINT}", pytrace=False)
    # The GGUF's own template drops tool definitions; this one renders them into the prompt.
    server = LlamaServer(tmp_path_factory.mktemp("llama"), chat_template=Path(__file__).parent / "chat_template.jinja")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def start_network(spare_bin: Path, llama: LlamaServer, work_dir: Path, **options) -> LocalNetwork:
    network = LocalNetwork(spare_bin, llama, work_dir, **options)
    try:
        network.start()
    except BaseException:
        network.stop()
        raise
    return network


@pytest.fixture(scope="session")
def network(spare_bin, llama, tmp_path_factory) -> LocalNetwork:
    """Two nodes and a gateway that tests must leave running."""
    started = start_network(spare_bin, llama, tmp_path_factory.mktemp("network"), max_body_bytes=SMALL_MAX_BODY_BYTES)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def disposable_network(spare_bin, llama, tmp_path_factory) -> LocalNetwork:
    """Two nodes and a gateway of the module's own, which its tests may kill and restart."""
    started = start_network(spare_bin, llama, tmp_path_factory.mktemp("disposable-network"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def client(network) -> openai.OpenAI:
    return sdk_client(network.gateway.base_url, network.api_key)


@pytest.fixture
def direct_client(llama) -> openai.OpenAI:
    """A client of the llama.cpp server itself, bypassing the network."""
    return sdk_client(llama.base_url, "unused")
