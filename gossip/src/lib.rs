//! The spare protocol: everything two peers must agree on, and the libp2p swarm that carries it.
//!
//! - [`offer`]: signed provider offers, announced on one gossipsub topic ([`OFFER_TOPIC`]).
//! - [`offer_book`]: the validated, expiring set of offers a peer has heard.
//! - [`infer`]: the inference stream protocol ([`INFER_PROTOCOL`]): one request frame, then
//!   response frames, each length-prefixed CBOR ([`framing`]).
//! - [`network`]: the swarm event loop ([`Network`]) and the cloneable [`NetworkHandle`] that
//!   the provider and the gateway drive it with.
//! - [`streams`]: the libp2p behaviour that opens and accepts the raw request streams.
//! - [`identity`]: the ed25519 key that is both the libp2p identity and the offer signing key.
//!
//! Start reading at [`network`]. This crate has no HTTP or chain code.

pub mod framing;
pub mod identity;
pub mod infer;
pub mod network;
pub mod offer;
pub mod offer_book;
pub mod streams;

mod error;

pub use error::Error;
pub use infer::{ErrorCode, InferRequest, ResponseFrame};
pub use libp2p::{Multiaddr, PeerId};
pub use network::{Network, NetworkConfig, NetworkHandle};
pub use offer::{Api, ModelOffer, Offer, SignedOffer};
pub use offer_book::OfferBook;

/// The gossipsub topic that carries signed offers.
pub const OFFER_TOPIC: &str = "spare/offers/1";

/// The stream protocol for inference: one request, then a stream of response frames.
pub const INFER_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/spare/infer/1");

/// The stream protocol that returns a provider's current signed offer, so that a peer that has
/// just connected does not have to wait for the next gossip round.
pub const OFFER_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/spare/offer/1");

/// The Kademlia protocol name; a private DHT, apart from the public IPFS one.
pub const KAD_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/spare/kad/1");

/// Returns the Kademlia key under which providers of `model` publish provider records.
pub fn model_key(model: &str) -> libp2p::kad::RecordKey {
    libp2p::kad::RecordKey::new(&format!("/spare/model/1/{model}"))
}
