//! Provider selection: finding the providers of a model and ranking them.
//!
//! Candidates come from the offer book; when it has none for the model, from a DHT lookup
//! followed by fetching each found peer's offer. Ranking puts providers in a cool-down after
//! recent failures last, then providers at capacity, then orders by expected cost, then by
//! expected latency adjusted for reliability.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use spare_gossip::offer::now_ms;
use spare_gossip::{NetworkHandle, Offer, PeerId};

use crate::reputation::PeerStats;

/// Maximum number of peers found in the DHT whose offers are fetched for one request.
const MAX_DHT_PEERS: usize = 8;
/// Output tokens assumed when the request sets no `max_tokens`.
const DEFAULT_OUTPUT_TOKENS: u64 = 1024;
/// Bytes per input token when estimating the prompt size from the body size. An estimate: it
/// is close for English text and overestimates bodies that carry images or tool schemas.
const BYTES_PER_TOKEN: u64 = 4;
/// Time to first chunk assumed for a provider the gateway has not measured yet, in ms.
const UNMEASURED_TTFT_MS: f64 = 1000.0;

/// A provider that offers the requested model.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The provider.
    pub peer: PeerId,
    /// Its current offer.
    pub offer: Offer,
}

/// Token counts used to compare prices before the request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEstimate {
    /// Estimated input tokens.
    pub input: u64,
    /// Output tokens the request may produce.
    pub output: u64,
}

impl TokenEstimate {
    /// Estimates tokens from the body size and its `max_completion_tokens` or `max_tokens`.
    pub fn from_request(body_len: usize, body: &Value) -> Self {
        let max_tokens = ["max_completion_tokens", "max_tokens"].iter().find_map(|field| body.get(field).and_then(Value::as_u64));
        Self { input: body_len as u64 / BYTES_PER_TOKEN, output: max_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS) }
    }
}

/// Finds the providers of `model`: from the offer book, or from the DHT when the book has none.
pub async fn find_candidates(network: &NetworkHandle, model: &str, lookup_timeout: Duration) -> Vec<Candidate> {
    let from_book = book_candidates(network, model);
    if !from_book.is_empty() {
        return from_book;
    }

    let lookup = async {
        let peers = match network.find_providers(model).await {
            Ok(peers) => peers,
            Err(e) => {
                tracing::debug!(%model, error = %e, "DHT provider lookup failed");
                return;
            }
        };
        let local = network.local_peer_id();
        let fetches = peers.into_iter().filter(|peer| *peer != local).take(MAX_DHT_PEERS).map(|peer| async move {
            if let Err(e) = network.fetch_offer(peer).await {
                tracing::debug!(%peer, error = %e, "Cannot fetch offer of a peer found in the DHT");
            }
        });
        futures::future::join_all(fetches).await;
    };
    if tokio::time::timeout(lookup_timeout, lookup).await.is_err() {
        tracing::debug!(%model, "DHT provider lookup timed out");
    }

    // Fetched offers went into the book, where bans and expiry apply.
    book_candidates(network, model)
}

fn book_candidates(network: &NetworkHandle, model: &str) -> Vec<Candidate> {
    let local = network.local_peer_id();
    network
        .with_book(|book| book.providers_of(model, now_ms()))
        .into_iter()
        .filter(|(peer, _)| *peer != local)
        .map(|(peer, offer)| Candidate { peer, offer })
        .collect()
}

/// Orders candidates best first, as of `now_ms` (milliseconds since the Unix epoch).
///
/// 1. Providers not in a cool-down come before those that are (see
///    [`PeerStats::cooldown_until_ms`]), which stay in the list as a last resort.
/// 2. Providers below capacity come before those at capacity (also kept as a last resort).
/// 3. Lower expected cost: input price × estimated input tokens + output price × output tokens.
/// 4. Lower expected latency: the measured time to first chunk divided by the square of the
///    success ratio, so unreliability weighs more than speed and a provider that mostly fails
///    ranks below one never measured.
pub fn rank(
    model: &str,
    mut candidates: Vec<Candidate>,
    reputation: &HashMap<PeerId, PeerStats>,
    estimate: TokenEstimate,
    now_ms: u64,
) -> Vec<Candidate> {
    let unmeasured = PeerStats::default();
    candidates.sort_by_cached_key(|candidate| {
        let stats = reputation.get(&candidate.peer).unwrap_or(&unmeasured);
        // NOTE: `load` is as of the offer's issue time, up to one republish interval old.
        let at_capacity = candidate.offer.load >= candidate.offer.capacity;
        (stats.is_cooling_down(now_ms), at_capacity, expected_cost(&candidate.offer, model, estimate), latency_score(stats))
    });
    candidates
}

fn expected_cost(offer: &Offer, model: &str, estimate: TokenEstimate) -> u128 {
    match offer.model(model) {
        Some(prices) => u128::from(prices.input_price) * u128::from(estimate.input) + u128::from(prices.output_price) * u128::from(estimate.output),
        None => u128::MAX,
    }
}

/// Expected latency in microseconds, as an integer so it can be a sort key.
fn latency_score(stats: &PeerStats) -> u64 {
    let ttft_ms = stats.ttft_ms.unwrap_or(UNMEASURED_TTFT_MS);
    let ratio = stats.success_ratio();
    (ttft_ms * 1000.0 / (ratio * ratio)) as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;
    use spare_gossip::identity::Identity;
    use spare_gossip::offer::OFFER_VERSION;
    use spare_gossip::{Api, ModelOffer};

    use super::*;
    use crate::reputation::FailureCounts;

    const MODEL: &str = "gemma-3-270m";
    const ESTIMATE: TokenEstimate = TokenEstimate { input: 1000, output: 100 };

    fn candidate(input_price: u64, output_price: u64, load: u32, capacity: u32) -> Candidate {
        let identity = Identity::generate().unwrap();
        let offer = Offer {
            version: OFFER_VERSION,
            public_key: identity.signing_key.verifying_key().to_bytes(),
            seq: 1,
            issued_at_ms: now_ms(),
            ttl_secs: 60,
            capacity,
            load,
            addresses: vec![],
            models: vec![ModelOffer { id: MODEL.into(), input_price, output_price, apis: vec![Api::OpenAiChat] }],
        };
        Candidate { peer: identity.peer_id(), offer }
    }

    fn order(ranked: &[Candidate]) -> Vec<PeerId> {
        ranked.iter().map(|c| c.peer).collect()
    }

    #[test]
    fn cheaper_provider_ranks_first() {
        let expensive = candidate(10, 10, 0, 4);
        let cheap = candidate(1, 10, 0, 4);
        let ranked = rank(MODEL, vec![expensive.clone(), cheap.clone()], &HashMap::new(), ESTIMATE, now_ms());
        assert_eq!(order(&ranked), [cheap.peer, expensive.peer]);
    }

    #[test]
    fn output_price_weighs_by_max_tokens() {
        // 1000 input tokens and 100 output: 5×1000 + 1×100 < 1×1000 + 50×100.
        let cheap_output = candidate(5, 1, 0, 4);
        let cheap_input = candidate(1, 50, 0, 4);
        let ranked = rank(MODEL, vec![cheap_input.clone(), cheap_output.clone()], &HashMap::new(), ESTIMATE, now_ms());
        assert_eq!(order(&ranked), [cheap_output.peer, cheap_input.peer]);
    }

    #[test]
    fn provider_at_capacity_ranks_last_but_stays() {
        let busy_cheap = candidate(1, 1, 4, 4);
        let free_expensive = candidate(100, 100, 3, 4);
        let ranked = rank(MODEL, vec![busy_cheap.clone(), free_expensive.clone()], &HashMap::new(), ESTIMATE, now_ms());
        assert_eq!(order(&ranked), [free_expensive.peer, busy_cheap.peer]);
    }

    #[test]
    fn equal_price_prefers_faster_and_more_reliable() {
        let fast = candidate(1, 1, 0, 4);
        let slow = candidate(1, 1, 0, 4);
        let flaky = candidate(1, 1, 0, 4);
        let unmeasured = candidate(1, 1, 0, 4);

        let mut reputation = HashMap::new();
        reputation.insert(fast.peer, PeerStats { successes: 10, ttft_ms: Some(100.0), ..Default::default() });
        reputation.insert(slow.peer, PeerStats { successes: 10, ttft_ms: Some(600.0), ..Default::default() });
        let flaky_failures = FailureCounts { timeout: 30, ..Default::default() };
        reputation.insert(flaky.peer, PeerStats { successes: 1, failures: flaky_failures, ttft_ms: Some(100.0), ..Default::default() });

        let ranked = rank(MODEL, vec![flaky.clone(), unmeasured.clone(), slow.clone(), fast.clone()], &reputation, ESTIMATE, now_ms());
        assert_eq!(order(&ranked), [fast.peer, slow.peer, unmeasured.peer, flaky.peer]);
    }

    #[test]
    fn provider_in_cooldown_ranks_after_all_others() {
        let failing_cheap = candidate(1, 1, 0, 4);
        let busy_expensive = candidate(100, 100, 4, 4);
        let expensive = candidate(50, 50, 0, 4);
        let now = now_ms();

        let mut reputation = HashMap::new();
        let failing_stats = PeerStats { successes: 100, consecutive_failures: 1, last_failure_ms: now - 1000, ..Default::default() };
        reputation.insert(failing_cheap.peer, failing_stats.clone());

        let candidates = vec![failing_cheap.clone(), busy_expensive.clone(), expensive.clone()];
        let ranked = rank(MODEL, candidates.clone(), &reputation, ESTIMATE, now);
        assert_eq!(order(&ranked), [expensive.peer, busy_expensive.peer, failing_cheap.peer]);

        // Once the 10 s cool-down has passed, the cheap provider is first again.
        let ranked = rank(MODEL, candidates, &reputation, ESTIMATE, now + 9_001);
        assert_eq!(order(&ranked)[0], failing_cheap.peer);
    }

    #[test]
    fn providers_in_cooldown_keep_price_order() {
        let cheap = candidate(1, 1, 0, 4);
        let expensive = candidate(10, 10, 0, 4);
        let now = now_ms();
        let cooling = PeerStats { consecutive_failures: 2, last_failure_ms: now, ..Default::default() };
        let reputation = HashMap::from([(cheap.peer, cooling.clone()), (expensive.peer, cooling)]);

        let ranked = rank(MODEL, vec![expensive.clone(), cheap.clone()], &reputation, ESTIMATE, now);
        assert_eq!(order(&ranked), [cheap.peer, expensive.peer]);
    }

    #[test]
    fn estimate_uses_max_tokens_fields() {
        let body = json!({"model": "m", "max_tokens": 50});
        assert_eq!(TokenEstimate::from_request(400, &body), TokenEstimate { input: 100, output: 50 });

        let body = json!({"model": "m", "max_completion_tokens": 70, "max_tokens": 50});
        assert_eq!(TokenEstimate::from_request(400, &body).output, 70);

        let body = json!({"model": "m"});
        assert_eq!(TokenEstimate::from_request(0, &body).output, DEFAULT_OUTPUT_TOKENS);
    }
}
