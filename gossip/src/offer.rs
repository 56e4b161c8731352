//! Signed provider offers: what a provider sells, at what price, and how to reach it.
//!
//! An [`Offer`] is encoded as CBOR and signed with the provider's ed25519 identity key over
//! `OFFER_SIGNING_CONTEXT || cbor`. The signed bytes travel as they are, so a receiver checks
//! the signature over exactly what the provider signed. See `docs/protocol.md` for the layout.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::{Error, framing};

/// Domain separation prefix for offer signatures.
pub const OFFER_SIGNING_CONTEXT: &[u8] = b"spare-offer-v1\0";
/// Maximum size of a signed offer on the wire.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Maximum number of models in one offer.
pub const MAX_MODELS: usize = 256;
/// Maximum length of a model id, in bytes.
pub const MAX_MODEL_ID_BYTES: usize = 256;
/// Maximum number of addresses in one offer.
pub const MAX_ADDRESSES: usize = 16;
/// Maximum lifetime an offer may claim.
pub const MAX_TTL: Duration = Duration::from_secs(600);
/// How far in the future an offer's issue time may be, to allow for clock skew.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// The only offer format version this implementation reads.
pub const OFFER_VERSION: u16 = 1;

/// An API dialect an upstream speaks or a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Api {
    /// OpenAI chat completions (`POST /v1/chat/completions`).
    #[serde(rename = "openai-chat")]
    OpenAiChat,
    /// A dialect this implementation does not know; kept so newer offers still parse.
    #[serde(other, rename = "unknown")]
    Unknown,
}

/// One model a provider sells, with its prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOffer {
    /// Canonical model id that buyers request.
    pub id: String,
    /// Price of input tokens, in token base units per million tokens.
    pub input_price: u64,
    /// Price of output tokens, in token base units per million tokens.
    pub output_price: u64,
    /// The APIs the upstream behind this model speaks.
    pub apis: Vec<Api>,
}

/// A provider's announcement of what it sells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Format version, [`OFFER_VERSION`].
    pub version: u16,
    /// The provider's ed25519 public key; its libp2p peer id is derived from it.
    #[serde(with = "serde_bytes")]
    pub public_key: [u8; 32],
    /// Sequence number; a receiver keeps only the highest it has seen per provider.
    pub seq: u64,
    /// When the offer was made, in milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    /// How long the offer stays valid after `issued_at_ms`, in seconds.
    pub ttl_secs: u32,
    /// Maximum concurrent requests the provider accepts.
    pub capacity: u32,
    /// Requests in flight when the offer was made.
    pub load: u32,
    /// Multiaddrs (binary form) where the provider listens.
    pub addresses: Vec<serde_bytes::ByteBuf>,
    /// The models on sale.
    pub models: Vec<ModelOffer>,
}

/// An offer as sent on the wire: the CBOR bytes of an [`Offer`] and their signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOffer {
    /// CBOR encoding of the [`Offer`].
    #[serde(with = "serde_bytes")]
    pub offer: Vec<u8>,
    /// ed25519 signature over `OFFER_SIGNING_CONTEXT || offer`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// An offer whose signature, sender, size and freshness have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedOffer {
    /// The provider that signed it.
    pub peer_id: PeerId,
    /// The decoded offer.
    pub offer: Offer,
    /// The signed form, for forwarding.
    pub signed: SignedOffer,
}

impl Offer {
    /// When the offer stops being valid, in milliseconds since the Unix epoch.
    pub fn expires_at_ms(&self) -> u64 {
        self.issued_at_ms.saturating_add(u64::from(self.ttl_secs) * 1000)
    }

    /// Returns the addresses that parse as multiaddrs, skipping the rest.
    pub fn multiaddrs(&self) -> Vec<Multiaddr> {
        self.addresses.iter().filter_map(|bytes| Multiaddr::try_from(bytes.to_vec()).ok()).collect()
    }

    /// Looks up a model by id.
    pub fn model(&self, id: &str) -> Option<&ModelOffer> {
        self.models.iter().find(|m| m.id == id)
    }

    /// Encodes and signs the offer.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedOffer, Error> {
        let offer = framing::encode(self)?;
        let signature = key.sign(&signing_input(&offer)).to_bytes().to_vec();
        Ok(SignedOffer { offer, signature })
    }
}

impl SignedOffer {
    /// Encodes the signed offer for the wire.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        framing::encode(self)
    }

    /// Decodes, verifies and validates an offer received from the network at `now_ms`.
    pub fn verify_bytes(bytes: &[u8], now_ms: u64) -> Result<VerifiedOffer, Error> {
        if bytes.len() > MAX_OFFER_BYTES {
            return Err(Error::InvalidOffer(format!("{} bytes exceeds the limit of {MAX_OFFER_BYTES}", bytes.len())));
        }
        let signed: SignedOffer = framing::decode(bytes)?;
        signed.verify(now_ms)
    }

    /// Verifies the signature and validates the offer's contents at `now_ms`.
    pub fn verify(self, now_ms: u64) -> Result<VerifiedOffer, Error> {
        let offer: Offer = framing::decode(&self.offer)?;
        if offer.version != OFFER_VERSION {
            return Err(Error::InvalidOffer(format!("unsupported version {}", offer.version)));
        }

        let key = VerifyingKey::from_bytes(&offer.public_key).map_err(|_| Error::InvalidOffer("public key is not a valid ed25519 point".into()))?;
        let signature = Signature::from_slice(&self.signature).map_err(|_| Error::InvalidOffer("signature is not 64 bytes".into()))?;
        key.verify(&signing_input(&self.offer), &signature).map_err(|_| Error::InvalidOffer("bad signature".into()))?;

        validate_contents(&offer, now_ms)?;
        let peer_id = peer_id_of(&offer.public_key)?;
        Ok(VerifiedOffer { peer_id, offer, signed: self })
    }
}

/// Returns the libp2p peer id for an ed25519 public key.
pub fn peer_id_of(public_key: &[u8; 32]) -> Result<PeerId, Error> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(public_key)
        .map_err(|_| Error::InvalidOffer("public key is not a valid ed25519 key".into()))?;
    Ok(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// Returns the current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn signing_input(offer: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(OFFER_SIGNING_CONTEXT.len() + offer.len());
    input.extend_from_slice(OFFER_SIGNING_CONTEXT);
    input.extend_from_slice(offer);
    input
}

fn validate_contents(offer: &Offer, now_ms: u64) -> Result<(), Error> {
    let invalid = |reason: String| Err(Error::InvalidOffer(reason));

    if u64::from(offer.ttl_secs) > MAX_TTL.as_secs() || offer.ttl_secs == 0 {
        return invalid(format!("ttl of {} s is outside 1..={}", offer.ttl_secs, MAX_TTL.as_secs()));
    }
    if offer.issued_at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW.as_millis() as u64) {
        return invalid("issued in the future".into());
    }
    if offer.expires_at_ms() <= now_ms {
        return invalid("expired".into());
    }
    if offer.models.is_empty() || offer.models.len() > MAX_MODELS {
        return invalid(format!("{} models is outside 1..={MAX_MODELS}", offer.models.len()));
    }
    if offer.addresses.len() > MAX_ADDRESSES {
        return invalid(format!("{} addresses exceeds {MAX_ADDRESSES}", offer.addresses.len()));
    }
    for model in &offer.models {
        if model.id.is_empty() || model.id.len() > MAX_MODEL_ID_BYTES || model.id.chars().any(char::is_control) {
            return invalid("model id is empty, too long or has control characters".into());
        }
    }
    let mut ids: Vec<&str> = offer.models.iter().map(|m| m.id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|pair| pair[0] == pair[1]) {
        return invalid("a model id appears twice".into());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::Identity;

    pub(crate) fn sample_offer(identity: &Identity, seq: u64, now_ms: u64) -> Offer {
        Offer {
            version: OFFER_VERSION,
            public_key: identity.signing_key.verifying_key().to_bytes(),
            seq,
            issued_at_ms: now_ms,
            ttl_secs: 30,
            capacity: 4,
            load: 0,
            addresses: vec![serde_bytes::ByteBuf::from("/ip4/127.0.0.1/tcp/4001".parse::<Multiaddr>().unwrap().to_vec())],
            models: vec![ModelOffer { id: "gemma-3-270m".into(), input_price: 100, output_price: 200, apis: vec![Api::OpenAiChat] }],
        }
    }

    #[test]
    fn signed_offer_verifies_and_names_its_peer() {
        let identity = Identity::generate().unwrap();
        let now = now_ms();
        let bytes = sample_offer(&identity, 1, now).sign(&identity.signing_key).unwrap().to_bytes().unwrap();

        let verified = SignedOffer::verify_bytes(&bytes, now).unwrap();
        assert_eq!(verified.peer_id, identity.peer_id());
        assert_eq!(verified.offer.models[0].id, "gemma-3-270m");
        assert_eq!(verified.offer.multiaddrs().len(), 1);
    }

    #[test]
    fn tampered_offer_is_rejected() {
        let identity = Identity::generate().unwrap();
        let now = now_ms();
        let mut signed = sample_offer(&identity, 1, now).sign(&identity.signing_key).unwrap();
        let mut offer: Offer = framing::decode(&signed.offer).unwrap();
        offer.models[0].input_price = 0;
        signed.offer = framing::encode(&offer).unwrap();

        let err = signed.verify(now).unwrap_err().to_string();
        assert!(err.contains("bad signature"), "{err}");
    }

    #[test]
    fn offer_signed_by_another_key_is_rejected() {
        let provider = Identity::generate().unwrap();
        let forger = Identity::generate().unwrap();
        let now = now_ms();
        let signed = sample_offer(&provider, 1, now).sign(&forger.signing_key).unwrap();
        assert!(signed.verify(now).is_err());
    }

    #[test]
    fn expired_and_future_offers_are_rejected() {
        let identity = Identity::generate().unwrap();
        let now = now_ms();
        let expired = sample_offer(&identity, 1, now - 31_000).sign(&identity.signing_key).unwrap();
        assert!(expired.verify(now).unwrap_err().to_string().contains("expired"));

        let future = sample_offer(&identity, 1, now + 60_000).sign(&identity.signing_key).unwrap();
        assert!(future.verify(now).unwrap_err().to_string().contains("future"));
    }

    #[test]
    fn offer_with_duplicate_models_is_rejected() {
        let identity = Identity::generate().unwrap();
        let now = now_ms();
        let mut offer = sample_offer(&identity, 1, now);
        offer.models.push(offer.models[0].clone());
        let signed = offer.sign(&identity.signing_key).unwrap();
        assert!(signed.verify(now).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn oversized_and_garbage_bytes_are_rejected() {
        assert!(SignedOffer::verify_bytes(&vec![0u8; MAX_OFFER_BYTES + 1], 0).is_err());
        assert!(SignedOffer::verify_bytes(&[0xa1, 0xff, 0x00], 0).is_err());
        assert!(SignedOffer::verify_bytes(&[], 0).is_err());
    }

    #[test]
    fn unknown_api_parses_as_unknown() {
        let bytes = framing::encode(&"openai-responses-v9").unwrap();
        let api: Api = framing::decode(&bytes).unwrap();
        assert_eq!(api, Api::Unknown);
    }
}
