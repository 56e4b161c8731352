//! The inference stream protocol, `/spare/infer/1`.
//!
//! The buyer opens a stream and writes one [`InferRequest`] frame. The provider replies with
//! [`ResponseFrame`]s: `Started`, then any number of `Chunk`s, then `Usage` and `Done`; or an
//! `Error` at any point, after which it closes the stream. Frames use [`crate::framing`].

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{Api, Error, framing};

/// Maximum size of a request frame: room for a 32 MiB body plus the header fields.
pub const MAX_REQUEST_FRAME_BYTES: usize = 33 * 1024 * 1024;
/// Maximum size of a response frame.
pub const MAX_RESPONSE_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Maximum length of a request id, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 64;
/// Domain separation prefix for usage receipt signatures.
pub const RECEIPT_SIGNING_CONTEXT: &[u8] = b"spare-receipt-v1\0";

/// The first and only frame the buyer sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Unique id chosen by the buyer, echoed in logs and in the usage receipt.
    pub request_id: String,
    /// Canonical model id from the provider's offer.
    pub model: String,
    /// The dialect of `body`.
    pub api: Api,
    /// The client's request body (JSON), passed through to the upstream.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// A payment voucher covering the input. Reserved for the payment protocol; providers
    /// reject requests that carry one until they support it.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub voucher: Option<Vec<u8>>,
}

/// The reason a provider refused or failed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or not acceptable (bad body, wrong dialect, voucher).
    #[serde(rename = "bad-request")]
    BadRequest,
    /// The provider does not serve this model.
    #[serde(rename = "model-not-found")]
    ModelNotFound,
    /// The provider is at capacity; try another.
    #[serde(rename = "busy")]
    Busy,
    /// The upstream model server failed or returned an error.
    #[serde(rename = "upstream")]
    Upstream,
    /// Any other failure inside the provider.
    #[serde(rename = "internal")]
    Internal,
    /// A code this implementation does not know.
    #[serde(other, rename = "unknown")]
    Unknown,
}

/// A frame from the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ResponseFrame {
    /// The provider accepted the request and the upstream responded.
    Started {
        /// The dialect the chunks are in.
        api: Api,
    },
    /// One streamed event's payload, as the upstream sent it (for OpenAI chat, the JSON
    /// after `data: `).
    Chunk {
        /// Event payload bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Token counts for the whole request, signed by the provider.
    Usage(UsageReceipt),
    /// The response is complete, and no frame follows.
    Done,
    /// The request failed; no frame follows.
    Error {
        /// Machine-readable kind.
        code: ErrorCode,
        /// Human-readable detail, safe to show to the buyer.
        message: String,
    },
}

/// A provider's signed statement of how many tokens a request used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReceipt {
    /// The request this receipt is for.
    pub request_id: String,
    /// Canonical model id.
    pub model: String,
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// ed25519 signature over `RECEIPT_SIGNING_CONTEXT || cbor([request_id, model, input_tokens, output_tokens])`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl UsageReceipt {
    /// Creates a receipt signed with the provider's key.
    pub fn sign(key: &SigningKey, request_id: &str, model: &str, input_tokens: u64, output_tokens: u64) -> Result<Self, Error> {
        let message = receipt_signing_input(request_id, model, input_tokens, output_tokens)?;
        Ok(Self {
            request_id: request_id.to_owned(),
            model: model.to_owned(),
            input_tokens,
            output_tokens,
            signature: key.sign(&message).to_bytes().to_vec(),
        })
    }

    /// Checks the signature against the provider's public key.
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<(), Error> {
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| Error::Malformed("provider key is not a valid ed25519 point".into()))?;
        let signature = Signature::from_slice(&self.signature).map_err(|_| Error::Malformed("receipt signature is not 64 bytes".into()))?;
        let message = receipt_signing_input(&self.request_id, &self.model, self.input_tokens, self.output_tokens)?;
        key.verify(&message, &signature).map_err(|_| Error::Malformed("bad receipt signature".into()))
    }
}

fn receipt_signing_input(request_id: &str, model: &str, input_tokens: u64, output_tokens: u64) -> Result<Vec<u8>, Error> {
    let mut message = RECEIPT_SIGNING_CONTEXT.to_vec();
    message.extend(framing::encode(&(request_id, model, input_tokens, output_tokens))?);
    Ok(message)
}

impl InferRequest {
    /// Checks the header fields a provider relies on; the body is checked by the provider.
    pub fn validate(&self) -> Result<(), Error> {
        if self.request_id.is_empty() || self.request_id.len() > MAX_REQUEST_ID_BYTES || self.request_id.chars().any(char::is_control) {
            return Err(Error::Malformed("request id is empty, too long or has control characters".into()));
        }
        if self.model.is_empty() || self.model.len() > crate::offer::MAX_MODEL_ID_BYTES {
            return Err(Error::Malformed("model id is empty or too long".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn response_frames_round_trip() {
        let frames = [
            ResponseFrame::Started { api: Api::OpenAiChat },
            ResponseFrame::Chunk { data: b"{\"x\":1}".to_vec() },
            ResponseFrame::Done,
            ResponseFrame::Error { code: ErrorCode::Busy, message: "at capacity".into() },
        ];
        for frame in frames {
            let bytes = framing::encode(&frame).unwrap();
            assert_eq!(framing::decode::<ResponseFrame>(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn receipt_verifies_and_detects_tampering() {
        let identity = Identity::generate().unwrap();
        let public = identity.signing_key.verifying_key().to_bytes();
        let mut receipt = UsageReceipt::sign(&identity.signing_key, "r1", "m", 10, 20).unwrap();
        receipt.verify(&public).unwrap();

        receipt.output_tokens = 2;
        assert!(receipt.verify(&public).is_err());
    }

    #[test]
    fn request_with_bad_id_is_invalid() {
        let mut request = InferRequest { request_id: String::new(), model: "m".into(), api: Api::OpenAiChat, body: vec![], voucher: None };
        assert!(request.validate().is_err());
        request.request_id = "x".repeat(MAX_REQUEST_ID_BYTES + 1);
        assert!(request.validate().is_err());
        request.request_id = "abc".into();
        request.validate().unwrap();
    }

    #[test]
    fn request_without_voucher_field_decodes() {
        let request = InferRequest { request_id: "a".into(), model: "m".into(), api: Api::OpenAiChat, body: b"{}".to_vec(), voucher: None };
        let bytes = framing::encode(&request).unwrap();
        assert_eq!(framing::decode::<InferRequest>(&bytes).unwrap(), request);
    }

    /// Keys of a CBOR map, in order, for checking the layout that docs/protocol.md specifies.
    fn map_keys(bytes: &[u8]) -> Vec<String> {
        let value: ciborium::Value = framing::decode(bytes).unwrap();
        value.as_map().unwrap().iter().map(|(k, _)| k.as_text().unwrap().to_owned()).collect()
    }

    #[test]
    fn wire_layout_matches_the_protocol_spec() {
        let done = framing::encode(&ResponseFrame::Done).unwrap();
        assert_eq!(done, [&[0xa1, 0x64][..], b"type", &[0x64], b"done"].concat());

        let error = framing::encode(&ResponseFrame::Error { code: ErrorCode::Busy, message: "m".into() }).unwrap();
        assert_eq!(map_keys(&error), ["type", "code", "message"]);
        let value: ciborium::Value = framing::decode(&error).unwrap();
        assert_eq!(value.as_map().unwrap()[1].1.as_text(), Some("busy"));

        let chunk = framing::encode(&ResponseFrame::Chunk { data: vec![1, 2] }).unwrap();
        let value: ciborium::Value = framing::decode(&chunk).unwrap();
        assert!(value.as_map().unwrap()[1].1.is_bytes(), "chunk data must be a CBOR byte string");

        let identity = Identity::generate().unwrap();
        let receipt = UsageReceipt::sign(&identity.signing_key, "r", "m", 1, 2).unwrap();
        let usage = framing::encode(&ResponseFrame::Usage(receipt)).unwrap();
        assert_eq!(map_keys(&usage), ["type", "request_id", "model", "input_tokens", "output_tokens", "signature"]);

        let request = InferRequest { request_id: "a".into(), model: "m".into(), api: Api::OpenAiChat, body: b"{}".to_vec(), voucher: None };
        assert_eq!(map_keys(&framing::encode(&request).unwrap()), ["request_id", "model", "api", "body"]);
    }
}
