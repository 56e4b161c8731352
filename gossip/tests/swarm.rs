//! Multi-peer tests over real libp2p swarms on loopback: offers propagate over gossipsub,
//! are fetched on connect, DHT lookups find providers, and hostile offers are rejected.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use spare_gossip::identity::Identity;
use spare_gossip::offer::{OFFER_VERSION, now_ms};
use spare_gossip::{Api, ModelOffer, Multiaddr, Network, NetworkConfig, NetworkHandle, Offer};

struct Peer {
    identity: Identity,
    handle: NetworkHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_peer(bootstrap: Vec<Multiaddr>) -> Peer {
    let identity = Identity::generate().unwrap();
    let config = NetworkConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], bootstrap, mdns: false, ..Default::default() };
    let (network, handle) = Network::new(&identity, config).unwrap();
    let task = tokio::spawn(network.run());
    Peer { identity, handle, task }
}

async fn address_of(peer: &Peer) -> Multiaddr {
    wait_for("a listen address", || peer.handle.listen_addrs().first().cloned()).await
}

async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn offer_for(peer: &Peer, seq: u64, model: &str, price: u64) -> spare_gossip::SignedOffer {
    let offer = Offer {
        version: OFFER_VERSION,
        public_key: peer.identity.signing_key.verifying_key().to_bytes(),
        seq,
        issued_at_ms: now_ms(),
        ttl_secs: 30,
        capacity: 2,
        load: 0,
        addresses: peer.handle.listen_addrs().into_iter().map(|a| serde_bytes::ByteBuf::from(a.to_vec())).collect(),
        models: vec![ModelOffer { id: model.into(), input_price: price, output_price: price, apis: vec![Api::OpenAiChat] }],
    };
    offer.sign(&peer.identity.signing_key).unwrap()
}

fn price_seen(observer: &Peer, provider: &Peer, model: &str) -> Option<u64> {
    observer.handle.with_book(|book| book.get(&provider.identity.peer_id(), now_ms()).and_then(|o| o.model(model).map(|m| m.input_price)))
}

#[tokio::test]
async fn offer_is_fetched_when_a_peer_connects() {
    let provider = start_peer(vec![]).await;
    let provider_addr = address_of(&provider).await;
    provider.handle.publish_offer(offer_for(&provider, 1, "m1", 5)).await.unwrap();

    let gateway = start_peer(vec![provider_addr]).await;
    let price = wait_for("the provider's offer", || price_seen(&gateway, &provider, "m1")).await;
    assert_eq!(price, 5);
}

#[tokio::test]
async fn offer_updates_propagate_over_gossip() {
    let relay = start_peer(vec![]).await;
    let relay_addr = address_of(&relay).await;
    let provider = start_peer(vec![relay_addr.clone()]).await;
    let gateway = start_peer(vec![relay_addr]).await;
    address_of(&provider).await;
    wait_for("both peers connected to the relay", || (relay.handle.connected_peers().len() == 2).then_some(())).await;
    // Let gossipsub exchange subscriptions and form its mesh (heartbeat is 1 s).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The offer fetch on connect happens once per peer, so only gossip can deliver each new
    // sequence number.
    for seq in 1..=3 {
        provider.handle.publish_offer(offer_for(&provider, seq, "m2", seq * 10)).await.unwrap();
        let expected = seq * 10;
        wait_for("the updated offer", || (price_seen(&gateway, &provider, "m2") == Some(expected)).then_some(())).await;
    }
}

#[tokio::test]
async fn dht_lookup_finds_a_provider_two_hops_away() {
    let relay = start_peer(vec![]).await;
    let relay_addr = address_of(&relay).await;
    let relay_id = relay.identity.peer_id();
    let with_id = relay_addr.with(libp2p::multiaddr::Protocol::P2p(relay_id));
    let provider = start_peer(vec![with_id.clone()]).await;
    let gateway = start_peer(vec![with_id]).await;
    wait_for("both peers connected to the relay", || (relay.handle.connected_peers().len() == 2).then_some(())).await;

    provider.handle.start_providing("m3".into()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = gateway.handle.find_providers("m3").await.unwrap_or_default();
        if found.contains(&provider.identity.peer_id()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the DHT never returned the provider; found {found:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(gateway.handle.find_providers("no-such-model").await.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn forged_offer_is_not_accepted() {
    let victim = start_peer(vec![]).await;
    let victim_addr = address_of(&victim).await;
    let forger = start_peer(vec![victim_addr.clone()]).await;
    let gateway = start_peer(vec![victim_addr]).await;
    wait_for("peers connected", || (victim.handle.connected_peers().len() == 2).then_some(())).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The forger publishes an offer naming the victim's key but signed with its own.
    let mut forged = offer_for(&victim, 7, "m4", 1);
    let honest_signature = forged.signature.clone();
    forged.signature = offer_for(&forger, 7, "m4", 1).signature;
    assert_ne!(forged.signature, honest_signature);
    forger.handle.publish_offer(forged).await.unwrap();
    // A valid offer from the forger itself still goes through, so the path works.
    forger.handle.publish_offer(offer_for(&forger, 8, "m5", 3)).await.unwrap();

    wait_for("the forger's own offer", || price_seen(&gateway, &forger, "m5")).await;
    assert_eq!(price_seen(&gateway, &victim, "m4"), None);
}

#[tokio::test]
async fn late_joining_provider_is_seen_within_seconds() {
    let relay = start_peer(vec![]).await;
    let relay_addr = address_of(&relay).await;
    let gateway = start_peer(vec![relay_addr.clone()]).await;
    wait_for("the gateway connected to the relay", || (!relay.handle.connected_peers().is_empty()).then_some(())).await;

    // The provider signs its offer before it has any peer, as a node does at start.
    let provider = start_peer(vec![]).await;
    address_of(&provider).await;
    provider.handle.publish_offer(offer_for(&provider, 1, "m6", 9)).await.unwrap();
    let joined = std::time::Instant::now();
    provider.handle.dial(relay_addr).await.unwrap();

    wait_for("the late provider's offer", || price_seen(&gateway, &provider, "m6")).await;
    assert!(joined.elapsed() < Duration::from_secs(5), "took {:?}", joined.elapsed());
}

#[tokio::test]
async fn second_listener_on_a_busy_port_is_rejected() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let config = NetworkConfig { listen: vec![addr], mdns: false, ..Default::default() };

    let (first, _first_handle) = Network::new(&Identity::generate().unwrap(), config.clone()).unwrap();
    let first_task = tokio::spawn(first.run());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let err = Network::new(&Identity::generate().unwrap(), config).err().expect("second listener must fail").to_string();
    assert!(err.contains("already in use"), "{err}");
    first_task.abort();
}
