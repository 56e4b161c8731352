//! The set of offers a peer has heard, keyed by provider, with expiry and penalties.
//!
//! Only the offer with the highest sequence number is kept per provider. A different offer
//! with the same sequence number is a conflict: the provider signed two versions of one
//! announcement, so the newcomer is rejected and the sender can be penalised.

use std::collections::HashMap;

use libp2p::PeerId;

use crate::offer::{Offer, VerifiedOffer};

/// The result of [`OfferBook::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The offer is new or newer than the one held.
    Accepted,
    /// The offer is the one already held (a duplicate) or older.
    Stale,
    /// Same sequence number as the held offer but different contents.
    Conflicting,
    /// The provider is serving a penalty; its offers are ignored for now.
    Banned,
}

/// One model on the network, summed over its providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSummary {
    /// Model id.
    pub id: String,
    /// Number of providers offering it.
    pub providers: usize,
    /// Lowest input price among them, per million tokens.
    pub min_input_price: u64,
    /// Lowest output price among them, per million tokens.
    pub min_output_price: u64,
}

/// Validated offers by provider, plus providers whose offers are ignored until a deadline.
#[derive(Debug, Default)]
pub struct OfferBook {
    offers: HashMap<PeerId, VerifiedOffer>,
    banned_until_ms: HashMap<PeerId, u64>,
}

impl OfferBook {
    /// Adds a verified offer unless it is stale, conflicting or from a banned provider.
    pub fn insert(&mut self, verified: VerifiedOffer, now_ms: u64) -> InsertOutcome {
        if self.banned_until_ms.get(&verified.peer_id).is_some_and(|until| *until > now_ms) {
            return InsertOutcome::Banned;
        }
        if let Some(held) = self.offers.get(&verified.peer_id) {
            if verified.offer.seq < held.offer.seq || verified.signed == held.signed {
                return InsertOutcome::Stale;
            }
            if verified.offer.seq == held.offer.seq {
                return InsertOutcome::Conflicting;
            }
        }
        self.offers.insert(verified.peer_id, verified);
        InsertOutcome::Accepted
    }

    /// Drops a provider's offer and ignores its offers until `until_ms`.
    pub fn ban(&mut self, peer: PeerId, until_ms: u64) {
        self.offers.remove(&peer);
        self.banned_until_ms.insert(peer, until_ms);
    }

    /// Drops a provider's offer; its next offer is accepted again.
    pub fn remove(&mut self, peer: &PeerId) {
        self.offers.remove(peer);
    }

    /// Returns whether the book contains an unexpired offer from `peer`.
    pub fn contains(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.offers.get(peer).is_some_and(|v| v.offer.expires_at_ms() > now_ms)
    }

    /// Returns the unexpired offer of one provider.
    pub fn get(&self, peer: &PeerId, now_ms: u64) -> Option<&Offer> {
        self.offers.get(peer).map(|v| &v.offer).filter(|o| o.expires_at_ms() > now_ms)
    }

    /// Unexpired offers that include `model`, in no particular order.
    pub fn providers_of(&self, model: &str, now_ms: u64) -> Vec<(PeerId, Offer)> {
        self.offers
            .values()
            .filter(|v| v.offer.expires_at_ms() > now_ms && v.offer.model(model).is_some())
            .map(|v| (v.peer_id, v.offer.clone()))
            .collect()
    }

    /// Returns every model on offer, with its provider count and lowest prices, sorted by id.
    pub fn models(&self, now_ms: u64) -> Vec<ModelSummary> {
        let mut by_id: HashMap<&str, ModelSummary> = HashMap::new();
        for verified in self.offers.values().filter(|v| v.offer.expires_at_ms() > now_ms) {
            for model in &verified.offer.models {
                let summary = by_id.entry(&model.id).or_insert_with(|| ModelSummary {
                    id: model.id.clone(),
                    providers: 0,
                    min_input_price: u64::MAX,
                    min_output_price: u64::MAX,
                });
                summary.providers += 1;
                summary.min_input_price = summary.min_input_price.min(model.input_price);
                summary.min_output_price = summary.min_output_price.min(model.output_price);
            }
        }
        let mut models: Vec<ModelSummary> = by_id.into_values().collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        models
    }

    /// Number of providers with an unexpired offer.
    pub fn provider_count(&self, now_ms: u64) -> usize {
        self.offers.values().filter(|v| v.offer.expires_at_ms() > now_ms).count()
    }

    /// Forgets expired offers and finished bans.
    pub fn prune(&mut self, now_ms: u64) {
        self.offers.retain(|_, v| v.offer.expires_at_ms() > now_ms);
        self.banned_until_ms.retain(|_, until| *until > now_ms);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::offer::tests::sample_offer;
    use crate::offer::now_ms;

    fn verified(identity: &Identity, seq: u64, now: u64, price: u64) -> VerifiedOffer {
        let mut offer = sample_offer(identity, seq, now);
        offer.models[0].input_price = price;
        offer.sign(&identity.signing_key).unwrap().verify(now).unwrap()
    }

    #[test]
    fn newer_offer_replaces_older_and_stale_is_ignored() {
        let id = Identity::generate().unwrap();
        let now = now_ms();
        let mut book = OfferBook::default();

        assert_eq!(book.insert(verified(&id, 2, now, 10), now), InsertOutcome::Accepted);
        assert_eq!(book.insert(verified(&id, 1, now, 5), now), InsertOutcome::Stale);
        assert_eq!(book.insert(verified(&id, 3, now, 7), now), InsertOutcome::Accepted);
        assert_eq!(book.get(&id.peer_id(), now).unwrap().models[0].input_price, 7);
    }

    #[test]
    fn same_sequence_with_other_contents_conflicts() {
        let id = Identity::generate().unwrap();
        let now = now_ms();
        let mut book = OfferBook::default();
        let first = verified(&id, 1, now, 10);

        assert_eq!(book.insert(first.clone(), now), InsertOutcome::Accepted);
        assert_eq!(book.insert(first, now), InsertOutcome::Stale);
        assert_eq!(book.insert(verified(&id, 1, now, 11), now), InsertOutcome::Conflicting);
    }

    #[test]
    fn expired_offers_are_not_candidates() {
        let id = Identity::generate().unwrap();
        let now = now_ms();
        let mut book = OfferBook::default();
        book.insert(verified(&id, 1, now, 10), now);

        assert_eq!(book.providers_of("gemma-3-270m", now).len(), 1);
        assert!(book.providers_of("gemma-3-270m", now + 31_000).is_empty());
        assert!(book.providers_of("other-model", now).is_empty());
        book.prune(now + 31_000);
        assert_eq!(book.provider_count(now), 0);
    }

    #[test]
    fn banned_provider_is_ignored_until_the_ban_ends() {
        let id = Identity::generate().unwrap();
        let now = now_ms();
        let mut book = OfferBook::default();
        book.insert(verified(&id, 1, now, 10), now);
        book.ban(id.peer_id(), now + 1_000);

        assert!(!book.contains(&id.peer_id(), now));
        assert_eq!(book.insert(verified(&id, 2, now, 10), now), InsertOutcome::Banned);
        assert_eq!(book.insert(verified(&id, 3, now, 10), now + 1_001), InsertOutcome::Accepted);
    }

    #[test]
    fn models_summarise_lowest_price_and_provider_count() {
        let now = now_ms();
        let mut book = OfferBook::default();
        for price in [30, 10, 20] {
            let id = Identity::generate().unwrap();
            book.insert(verified(&id, 1, now, price), now);
        }
        let models = book.models(now);
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].providers, 3);
        assert_eq!(models[0].min_input_price, 10);
        assert_eq!(models[0].min_output_price, 200);
    }
}
