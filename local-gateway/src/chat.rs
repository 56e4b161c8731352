//! `POST /v1/chat/completions`: check the body, pick providers, and fail over until one sends
//! its first chunk. Then [`crate::relay`] relays its response.
//!
//! The response head is sent only after the first chunk has arrived, so a failover before that
//! is invisible to the client. The client's body is forwarded byte for byte.

use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_LENGTH;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use spare_gossip::offer::now_ms;
use spare_gossip::{Api, ErrorCode, INFER_PROTOCOL, InferRequest, PeerId};

use crate::error::{ApiError, truncate_untrusted};
use crate::provider::{Failure, ProviderStream};
use crate::relay::{StartedStream, collect_completion, next_relayed, record_failure, relay_as_events};
use crate::reputation::{FailureKind, Outcome};
use crate::select::{Candidate, TokenEstimate, find_candidates, rank};
use crate::server::{GatewayState, RequestId};

/// Maximum number of providers tried for one request, so a request fails in bounded time.
const MAX_ATTEMPTS: usize = 8;
/// Maximum time to open a stream, dialling the provider if needed. A dial to a host that
/// drops packets can hang for minutes, and an unreachable provider should cost less than the
/// first-chunk timeout.
const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause before the next round when every provider returned busy. It doubles each round.
const BUSY_BACKOFF_START: Duration = Duration::from_millis(50);
/// Maximum pause between two rounds when every provider returned busy.
const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The fields of a chat request that the gateway itself acts on.
#[derive(Debug)]
struct ChatRequest {
    json: Value,
    model: String,
    stream: bool,
    include_usage: bool,
}

impl ChatRequest {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let json: Value = serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        if !json.is_object() {
            return Err(ApiError::InvalidJson("expected a JSON object".into()));
        }

        let model = match json.get("model") {
            None | Some(Value::Null) => return Err(ApiError::MissingModel),
            Some(Value::String(model)) if model.is_empty() => {
                return Err(ApiError::InvalidParameter { param: "model", message: "must not be empty".into() });
            }
            Some(Value::String(model)) => model.clone(),
            Some(_) => return Err(ApiError::InvalidParameter { param: "model", message: "expected a string".into() }),
        };
        let stream = match json.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(stream)) => *stream,
            Some(_) => return Err(ApiError::InvalidParameter { param: "stream", message: "expected a boolean".into() }),
        };
        let include_usage = json.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);

        Ok(Self { json, model, stream, include_usage })
    }
}

/// Handles `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(State(state): State<GatewayState>, Extension(request_id): Extension<RequestId>, request: Request) -> Response {
    match complete(state, request_id.0, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn complete(state: GatewayState, request_id: String, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, state.config.max_body_bytes, state.config.body_read_timeout).await?;
    let chat = ChatRequest::parse(&body)?;
    tracing::Span::current().record("model", truncate_untrusted(&chat.model).as_ref());

    let candidates = find_candidates(&state.network, &chat.model, state.config.dht_lookup_timeout).await;
    if candidates.is_empty() {
        return Err(ApiError::ModelNotFound { model: chat.model });
    }
    let estimate = TokenEstimate::from_request(body.len(), &chat.json);
    let ranked = rank(&chat.model, candidates, &state.reputation.snapshot(), estimate, now_ms());

    let infer = InferRequest { request_id, model: chat.model.clone(), api: Api::OpenAiChat, body: body.to_vec(), voucher: None };
    let provider = start_with_failover(&state, &ranked, &infer).await.map_err(|failures| all_failed_error(chat.model.clone(), &failures))?;

    if chat.stream { Ok(relay_as_events(state, provider, chat.model, chat.include_usage)) } else { collect_completion(state, provider, chat.model).await }
}

/// Reads the whole body, within `limit` bytes and within `timeout` for the whole read, so a
/// client that stops sending mid-body cannot hold the connection open.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::BodyTimeout { timeout }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::BodyTooLarge { limit }),
        Ok(Err(e)) => Err(ApiError::BodyUnreadable(e.to_string())),
    }
}

/// Tries the candidates in order until one sends its first event. When every candidate
/// returned busy, waits a jittered backoff and tries them all again, until the first-chunk
/// timeout has passed. Returns the failures of the last round if no provider started.
async fn start_with_failover(state: &GatewayState, ranked: &[Candidate], request: &InferRequest) -> Result<StartedStream, Vec<Failure>> {
    let deadline = Instant::now() + state.config.first_chunk_timeout;
    let mut backoff = BUSY_BACKOFF_START;
    loop {
        let failures = match try_each_once(state, ranked, request).await {
            Ok(provider) => return Ok(provider),
            Err(failures) => failures,
        };
        let pause = jittered(backoff);
        if !all_busy(&failures) || Instant::now() + pause >= deadline {
            return Err(failures);
        }
        tracing::debug!(attempts = failures.len(), pause_ms = pause.as_millis() as u64, "Every provider is busy; trying again");
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(BUSY_BACKOFF_MAX);
    }
}

/// Tries each candidate once, in order, recording every outcome but success, which the relay
/// records once the response is complete.
async fn try_each_once(state: &GatewayState, ranked: &[Candidate], request: &InferRequest) -> Result<StartedStream, Vec<Failure>> {
    let mut failures = Vec::new();
    for candidate in ranked.iter().take(MAX_ATTEMPTS) {
        tracing::Span::current().record("peer", tracing::field::display(candidate.peer));
        match attempt(state, candidate, request).await {
            Ok(provider) => return Ok(provider),
            // A busy provider is at its concurrency limit, which is no sign of misbehaviour.
            Err(failure) if failure.code == Some(ErrorCode::Busy) => {
                tracing::debug!(peer = %candidate.peer, "Provider is busy; trying the next");
                state.reputation.record(candidate.peer, Outcome::Busy);
                failures.push(failure);
            }
            Err(failure) if failure.code == Some(ErrorCode::BadRequest) => {
                let reason = truncate_untrusted(&failure.message);
                tracing::info!(peer = %candidate.peer, %reason, "Provider rejected the request as invalid; trying the next");
                state.reputation.record(candidate.peer, Outcome::RejectedAsInvalid);
                failures.push(failure);
            }
            Err(failure) => {
                let reason = truncate_untrusted(&failure.message);
                tracing::warn!(peer = %candidate.peer, kind = ?failure.kind, %reason, "Provider failed before the first chunk; trying the next");
                record_failure(state, candidate.peer, failure.kind, false).await;
                failures.push(failure);
            }
        }
    }
    Err(failures)
}

fn all_busy(failures: &[Failure]) -> bool {
    !failures.is_empty() && failures.iter().all(|failure| failure.code == Some(ErrorCode::Busy))
}

/// Returns a random pause between half of `backoff` and all of it, so requests that found
/// every provider busy at the same moment do not all come back at the same moment.
fn jittered(backoff: Duration) -> Duration {
    let max_ms = backoff.as_millis().max(2) as u64;
    Duration::from_millis(rand::Rng::random_range(&mut rand::rng(), max_ms / 2..=max_ms))
}

/// Builds the error for a request that no provider started. It is 400 when every provider
/// rejected the request itself (as an upstream does with HTTP 4xx, such as a prompt that is too
/// long). It is 503 with `Retry-After` when every provider was busy, and 503 otherwise.
fn all_failed_error(model: String, failures: &[Failure]) -> ApiError {
    let all_rejected = !failures.is_empty() && failures.iter().all(|failure| failure.code == Some(ErrorCode::BadRequest));
    match failures.first() {
        Some(first) if all_rejected => ApiError::RejectedByProviders { model, message: first.message.clone() },
        Some(_) if all_busy(failures) => ApiError::ProvidersBusy { model, retry_after: BUSY_BACKOFF_MAX },
        _ => ApiError::NoProviderAvailable { model, attempts: failures.len() },
    }
}

/// Opens a stream, sends the request and waits for the first event, all within the
/// first-chunk timeout.
async fn attempt(state: &GatewayState, candidate: &Candidate, request: &InferRequest) -> Result<StartedStream, Failure> {
    let started_at = Instant::now();
    let timeout = state.config.first_chunk_timeout;
    let first = async {
        let io = match tokio::time::timeout(OPEN_STREAM_TIMEOUT, state.network.open_stream(candidate.peer, INFER_PROTOCOL)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return Err(unreachable(state, candidate.peer, e.to_string())),
            Err(_) => return Err(unreachable(state, candidate.peer, format!("no stream opened within {} s", OPEN_STREAM_TIMEOUT.as_secs()))),
        };
        let mut stream = ProviderStream::send(io, request, candidate.offer.public_key).await?;
        let event = next_relayed(&mut stream, timeout).await?;
        Ok((stream, event))
    };
    match tokio::time::timeout(timeout, first).await {
        Err(_) => Err(Failure::new(FailureKind::Timeout, format!("no first chunk within {} s", timeout.as_secs_f64()))),
        Ok(Err(failure)) => Err(failure),
        Ok(Ok((stream, first))) => Ok(StartedStream { peer: candidate.peer, stream, first: Some(first), started_at, first_at: Instant::now() }),
    }
}

/// Drops the offer of a provider that cannot be reached, so it is not chosen again until it
/// republishes, and returns the failure.
fn unreachable(state: &GatewayState, peer: PeerId, message: String) -> Failure {
    state.network.with_book(|book| book.remove(&peer));
    Failure::new(FailureKind::Unreachable, message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn request_fields_are_checked() {
        let cases: [(&[u8], ApiError); 6] = [
            (b"{\"model\": ", ApiError::InvalidJson(String::new())),
            (b"[1, 2]", ApiError::InvalidJson(String::new())),
            (b"{\"messages\": []}", ApiError::MissingModel),
            (b"{\"model\": 7}", ApiError::InvalidParameter { param: "model", message: String::new() }),
            (b"{\"model\": \"\"}", ApiError::InvalidParameter { param: "model", message: String::new() }),
            (b"{\"model\": \"m\", \"stream\": \"yes\"}", ApiError::InvalidParameter { param: "stream", message: String::new() }),
        ];
        for (body, expected) in cases {
            let error = ChatRequest::parse(body).unwrap_err();
            assert_eq!(std::mem::discriminant(&error), std::mem::discriminant(&expected), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn rejection_by_every_provider_is_a_client_error() {
        let refusal = |code, message: &str| Failure { kind: FailureKind::Refused, message: message.into(), code: Some(code) };
        let rejected = refusal(ErrorCode::BadRequest, "prompt too long");
        let busy = refusal(ErrorCode::Busy, "full");
        let timeout = Failure::new(FailureKind::Timeout, "slow");

        let error = all_failed_error("m".into(), &[rejected.clone(), rejected.clone()]);
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(error.body()["error"]["message"].as_str().unwrap().contains("prompt too long"));

        let error = all_failed_error("m".into(), &[rejected.clone(), busy.clone()]);
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.body()["error"]["code"], "no_provider_available");
        assert_eq!(all_failed_error("m".into(), &[rejected, timeout]).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(all_failed_error("m".into(), &[]).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn every_provider_busy_gives_retry_after() {
        let busy = Failure { kind: FailureKind::Refused, message: "full".into(), code: Some(ErrorCode::Busy) };
        let response = all_failed_error("m".into(), &[busy.clone(), busy]).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
    }

    #[test]
    fn jitter_stays_within_backoff() {
        for backoff in [BUSY_BACKOFF_START, BUSY_BACKOFF_MAX] {
            for _ in 0..100 {
                let pause = jittered(backoff);
                assert!(pause >= backoff / 2, "{pause:?} for {backoff:?}");
                assert!(pause <= backoff, "{pause:?} for {backoff:?}");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser() {
        let samples: [&[u8]; 8] = [b"", b"\xff\xfe", b"null", b"{\"model\": null}", b"{\"model\": \"m\", \"stream_options\": 3}", b"{\"model\": {\"a\": 1}}", b"\"model\"", b"{\"model\": \"m\", \"max_tokens\": -5}"];
        for sample in samples {
            let _ = ChatRequest::parse(sample);
        }
        let deep = "[".repeat(10_000);
        assert!(ChatRequest::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn stream_and_usage_flags_are_read() {
        let chat = ChatRequest::parse(br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(chat.model, "m");
        assert!(chat.stream);
        assert!(chat.include_usage);

        let chat = ChatRequest::parse(br#"{"model":"m"}"#).unwrap();
        assert!(!chat.stream);
        assert!(!chat.include_usage);
    }
}
