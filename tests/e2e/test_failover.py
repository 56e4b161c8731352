"""Failover after a node dies by SIGKILL, and reputation kept across a gateway restart.

The tests share one network of their own and run in file order, so the second one restarts a
gateway whose reputation store the first one has filled."""

import time

from local_network import MODEL_ID, sdk_client

MESSAGES = [{"role": "user", "content": "Count to five."}]


def reputation_counts(network) -> dict[str, dict]:
    """Return the learned counts per peer from GET /spare/v1/providers, once two reads in a
    row agree (the gateway records an outcome just after the response ends)."""
    previous = None
    for _ in range(20):
        current = {
            entry["peer"]: {
                "successes": entry["reputation"]["successes"],
                "failures": entry["reputation"]["failures"],
                "last_seen_ms": entry["reputation"]["last_seen_ms"],
            }
            for entry in network.gateway.providers()
            if entry["reputation"] is not None
        }
        if current == previous:
            return current
        previous = current
        time.sleep(0.25)
    raise AssertionError(f"reputation kept changing without requests: {previous}")


def successes(counts: dict[str, dict], peer: str) -> int:
    return counts.get(peer, {}).get("successes", 0)


def complete(client, stream: bool) -> str:
    """Send one chat completion and return its text, checking that it finished."""
    if stream:
        chunks = list(client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=8, stream=True))
        finish_reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
        assert finish_reasons in (["stop"], ["length"]), chunks
        return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    completion = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=8)
    assert completion.choices[0].finish_reason in ("stop", "length"), completion
    return completion.choices[0].message.content


def test_requests_survive_node_sigkill(disposable_network):
    network = disposable_network
    client = sdk_client(network.gateway.base_url, network.api_key)
    before = reputation_counts(network)
    complete(client, stream=False)
    served = reputation_counts(network)
    preferred = [node for node in network.nodes if successes(served, node.peer_id) > successes(before, node.peer_id)]
    assert len(preferred) == 1, served
    victim = preferred[0]
    survivor = next(node for node in network.nodes if node is not victim)

    # Kill the node the gateway picked last, so the next request most likely tries it first.
    victim.kill()
    assert not victim.is_running()

    for stream in (False, True, False, True):
        assert complete(client, stream)
    after = reputation_counts(network)
    victim_entry = next(entry for entry in network.gateway.providers() if entry["peer"] == victim.peer_id)
    assert victim_entry["connected"] is False, victim_entry
    assert successes(after, survivor.peer_id) == successes(served, survivor.peer_id) + 4, after
    assert successes(after, victim.peer_id) == successes(served, victim.peer_id), after


def test_reputation_survives_gateway_restart(disposable_network):
    network = disposable_network
    client = sdk_client(network.gateway.base_url, network.api_key)
    assert complete(client, stream=False)
    learned = reputation_counts(network)
    assert any(counts["successes"] > 0 for counts in learned.values()), learned

    port = network.gateway.port
    assert network.gateway.stop() == 0, network.gateway.log_tail()
    network.start_gateway(port)

    restored = reputation_counts(network)
    for peer, counts in learned.items():
        assert restored.get(peer) == counts, f"peer {peer}: before restart {counts}, after {restored.get(peer)}"
    assert complete(sdk_client(network.gateway.base_url, network.api_key), stream=True)
