//! Announcing what the provider sells: signed offers on gossipsub, re-published on a timer,
//! and Kademlia provider records keyed by model.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use spare_gossip::offer::{OFFER_VERSION, now_ms};
use spare_gossip::{Multiaddr, NetworkHandle, Offer};

use crate::Provider;

/// How long to wait between attempts while no upstream model is available yet.
const WAIT_FOR_MODELS_INTERVAL: Duration = Duration::from_secs(2);

impl Provider {
    /// Builds the current offer; `seq` must grow with every offer this provider signs.
    pub fn offer(&self, seq: u64, addresses: &[Multiaddr]) -> Offer {
        Offer {
            version: OFFER_VERSION,
            public_key: self.signing_key.verifying_key().to_bytes(),
            seq,
            issued_at_ms: now_ms(),
            ttl_secs: self.settings.offer_ttl.as_secs() as u32,
            capacity: self.settings.max_concurrent,
            load: self.load(),
            addresses: addresses.iter().filter(|a| is_dialable(a)).take(spare_gossip::offer::MAX_ADDRESSES).map(|a| serde_bytes::ByteBuf::from(a.to_vec())).collect(),
            models: self.catalog().model_offers(),
        }
    }
}

/// Keeps the offer fresh: refreshes the catalog, publishes the offer every interval, and
/// announces provider records for new models.
pub(crate) async fn announce_loop(provider: Arc<Provider>, network: NetworkHandle) {
    let mut announced: BTreeSet<String> = BTreeSet::new();
    let mut last_refresh = tokio::time::Instant::now();
    // Starting from the clock makes sequence numbers grow across restarts too.
    let mut seq = now_ms();

    let mut catalog = provider.refresh_catalog().await;
    while catalog.is_empty() {
        tracing::info!("Waiting for an upstream to list a model");
        tokio::time::sleep(WAIT_FOR_MODELS_INTERVAL).await;
        catalog = provider.refresh_catalog().await;
    }

    let mut ticker = tokio::time::interval(provider.settings.offer_interval);
    loop {
        ticker.tick().await;
        if last_refresh.elapsed() >= provider.settings.model_refresh_interval {
            catalog = provider.refresh_catalog().await;
            last_refresh = tokio::time::Instant::now();
        }
        if catalog.is_empty() {
            continue;
        }

        for model in catalog.ids() {
            if announced.insert(model.to_owned())
                && let Err(e) = network.start_providing(model.to_owned()).await
            {
                tracing::warn!(%model, error = %e, "Cannot announce provider record");
            }
        }

        seq += 1;
        let offer = provider.offer(seq, &network.listen_addrs());
        let published = match offer.sign(&provider.signing_key) {
            Ok(signed) => network.publish_offer(signed).await,
            Err(e) => Err(e),
        };
        match published {
            Ok(()) => tracing::debug!(seq, load = offer.load, "Published offer"),
            Err(spare_gossip::Error::NetworkStopped) => return,
            Err(e) => tracing::warn!(error = %e, "Cannot publish offer"),
        }
    }
}

/// Returns whether others can dial an address: not an unspecified (0.0.0.0 or ::) listener.
fn is_dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}
