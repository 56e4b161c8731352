//! `POST /v1/chat/completions`: check the body, pick providers, fail over until one sends its
//! first chunk, then relay its response as server-sent events or as one `chat.completion`.
//!
//! The response head is sent only after the first chunk has arrived, so a failover before that
//! is invisible to the client. The client's body is forwarded byte for byte.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};
use spare_gossip::infer::UsageReceipt;
use spare_gossip::{Api, ErrorCode, INFER_PROTOCOL, InferRequest, PeerId};
use tracing::Instrument;

use crate::aggregate::aggregate_chunks;
use crate::error::ApiError;
use crate::provider::{Event, Failure, ProviderStream};
use crate::reputation::{FailureKind, Outcome};
use crate::select::{Candidate, TokenEstimate, find_candidates, rank};
use crate::server::{GatewayState, RequestId};

/// Maximum number of providers tried for one request, so a request fails in bounded time.
const MAX_ATTEMPTS: usize = 8;
/// Maximum time to open a stream, dialling the provider if needed. A dial to a host that
/// drops packets can hang for minutes, and an unreachable provider should cost less than the
/// first-chunk timeout.
const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Range of the random pause before retrying a provider that dropped the stream, in ms.
const RETRY_PAUSE_MS: std::ops::Range<u64> = 10..200;

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

/// A checked event, with chunks parsed as JSON objects.
enum Relayed {
    Chunk { raw: Vec<u8>, json: Value },
    Usage(UsageReceipt),
    Done,
}

/// A provider that has sent its first event; the request is committed to it.
struct StartedStream {
    peer: PeerId,
    stream: ProviderStream<libp2p::Stream>,
    first: Option<Relayed>,
    started_at: Instant,
    first_at: Instant,
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
    let body = read_body(&parts.headers, body, state.config.max_body_bytes).await?;
    let chat = ChatRequest::parse(&body)?;
    tracing::Span::current().record("model", chat.model.as_str());

    let candidates = find_candidates(&state.network, &chat.model, state.config.dht_lookup_timeout).await;
    if candidates.is_empty() {
        return Err(ApiError::ModelNotFound { model: chat.model });
    }
    let estimate = TokenEstimate::from_request(body.len(), &chat.json);
    let ranked = rank(&chat.model, candidates, &state.reputation.snapshot(), estimate);

    let infer = InferRequest { request_id, model: chat.model.clone(), api: Api::OpenAiChat, body: body.to_vec(), voucher: None };
    let provider = start_with_failover(&state, &ranked, &infer).await.map_err(|failures| all_failed_error(chat.model.clone(), &failures))?;

    if chat.stream { Ok(relay_as_events(state, provider, chat)) } else { collect_completion(state, provider, chat).await }
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::BodyTooLarge { limit }),
        Err(e) => Err(ApiError::BodyUnreadable(e.to_string())),
    }
}

/// Tries the candidates in order until one sends its first event; returns every failure if
/// none does. A provider that dropped the stream unread is tried once more, after a random
/// pause so that a burst of dropped requests does not arrive at once again.
async fn start_with_failover(state: &GatewayState, ranked: &[Candidate], request: &InferRequest) -> Result<StartedStream, Vec<Failure>> {
    let mut failures = Vec::new();
    for candidate in ranked.iter().take(MAX_ATTEMPTS) {
        tracing::Span::current().record("peer", tracing::field::display(candidate.peer));
        let mut result = attempt(state, candidate, request).await;
        if let Err(failure) = &result
            && failure.dropped_before_start
        {
            tracing::debug!(peer = %candidate.peer, reason = %failure.message, "Provider dropped the stream; retrying it once");
            tokio::time::sleep(Duration::from_millis(rand::random_range(RETRY_PAUSE_MS))).await;
            result = attempt(state, candidate, request).await;
        }
        match result {
            Ok(provider) => return Ok(provider),
            Err(failure) => {
                tracing::warn!(peer = %candidate.peer, kind = ?failure.kind, reason = %failure.message, "Provider failed before the first chunk; trying the next");
                record_failure(state, candidate.peer, failure.kind, false).await;
                failures.push(failure);
            }
        }
    }
    Err(failures)
}

/// Builds the error for a request that no provider started: 400 when every provider rejected
/// the request itself (as an upstream does with HTTP 4xx, such as a prompt that is too long),
/// 503 otherwise.
fn all_failed_error(model: String, failures: &[Failure]) -> ApiError {
    let all_rejected = !failures.is_empty() && failures.iter().all(|failure| failure.code == Some(ErrorCode::BadRequest));
    match failures.first() {
        Some(first) if all_rejected => ApiError::RejectedByProviders { model, message: first.message.clone() },
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

async fn next_relayed(stream: &mut ProviderStream<libp2p::Stream>, timeout: Duration) -> Result<Relayed, Failure> {
    match stream.next_event(timeout).await? {
        Event::Chunk(raw) => match serde_json::from_slice::<Value>(&raw) {
            Ok(json) if json.is_object() => Ok(Relayed::Chunk { raw, json }),
            _ => Err(Failure::new(FailureKind::Malformed, "chunk is not a JSON object")),
        },
        Event::Usage(receipt) => Ok(Relayed::Usage(receipt)),
        Event::Done => Ok(Relayed::Done),
    }
}

/// Counts a failure in the provider's reputation, and penalises a provider that sent a
/// malformed frame.
async fn record_failure(state: &GatewayState, peer: PeerId, kind: FailureKind, after_first_chunk: bool) {
    let counted = match kind {
        FailureKind::Malformed => FailureKind::Malformed,
        _ if after_first_chunk => FailureKind::MidStream,
        other => other,
    };
    state.reputation.record(peer, Outcome::Failure(counted));

    if counted == FailureKind::Malformed
        && let Err(e) = state.network.penalize(peer, "sent a malformed inference frame").await
    {
        tracing::warn!(%peer, error = %e, "Cannot penalise provider");
    }
}

fn record_success(state: &GatewayState, provider: &StartedStream, output_tokens: Option<u64>) {
    let time_to_first_chunk = provider.first_at.duration_since(provider.started_at);
    let streaming_secs = provider.first_at.elapsed().as_secs_f64();
    let tokens_per_second = output_tokens.filter(|_| streaming_secs > 0.0).map(|tokens| tokens as f64 / streaming_secs);
    tracing::info!(peer = %provider.peer, ttft_ms = time_to_first_chunk.as_millis() as u64, output_tokens, "Provider completed the response");
    state.reputation.record(provider.peer, Outcome::Success { time_to_first_chunk, tokens_per_second });
}

impl StartedStream {
    async fn next(&mut self, timeout: Duration) -> Result<Relayed, Failure> {
        match self.first.take() {
            Some(first) => Ok(first),
            None => next_relayed(&mut self.stream, timeout).await,
        }
    }
}

/// Relays the provider's response as server-sent events, ending with `data: [DONE]`, or with
/// an error event if the provider fails on the way.
fn relay_as_events(state: GatewayState, provider: StartedStream, chat: ChatRequest) -> Response {
    let relay = Relay { state, provider, model: chat.model, include_usage: chat.include_usage, output_tokens: None, finished: false, span: tracing::Span::current() };
    let events = futures::stream::unfold(relay, |mut relay| async move {
        let event = relay.next_event().await?;
        Some((Ok::<_, Infallible>(event), relay))
    });

    let mut response = Response::new(Body::from_stream(events));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct Relay {
    state: GatewayState,
    provider: StartedStream,
    model: String,
    include_usage: bool,
    output_tokens: Option<u64>,
    finished: bool,
    span: tracing::Span,
}

impl Relay {
    /// Returns the next server-sent event for the client, or `None` after the last one.
    async fn next_event(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        let idle = self.state.config.idle_timeout;
        loop {
            match self.provider.next(idle).instrument(self.span.clone()).await {
                Ok(Relayed::Chunk { raw, json }) => {
                    if let Some(event) = chunk_event(raw, json, self.include_usage) {
                        return Some(event);
                    }
                }
                Ok(Relayed::Usage(receipt)) => self.output_tokens = Some(receipt.output_tokens),
                Ok(Relayed::Done) => {
                    self.finished = true;
                    self.span.in_scope(|| record_success(&self.state, &self.provider, self.output_tokens));
                    return Some(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                Err(failure) => {
                    self.finished = true;
                    self.span.in_scope(|| tracing::warn!(peer = %self.provider.peer, kind = ?failure.kind, reason = %failure.message, "Provider failed mid-stream"));
                    record_failure(&self.state, self.provider.peer, failure.kind, true).instrument(self.span.clone()).await;
                    return Some(ApiError::ProviderFailed { model: self.model.clone(), message: failure.message }.sse_event());
                }
            }
        }
    }
}

/// Formats one chunk as a server-sent event, passing the provider's bytes through unless the
/// usage must be taken out. Returns `None` for a usage-only chunk the client did not ask for.
fn chunk_event(raw: Vec<u8>, mut json: Value, include_usage: bool) -> Option<Bytes> {
    let has_usage = json.get("usage").is_some_and(Value::is_object);
    let payload = if has_usage && !include_usage {
        let has_choices = json.get("choices").and_then(Value::as_array).is_some_and(|choices| !choices.is_empty());
        if !has_choices {
            return None;
        }
        // Some servers put usage on the last content chunk; keep the chunk, drop the usage.
        if let Some(object) = json.as_object_mut() {
            object.remove("usage");
        }
        serde_json::to_vec(&json).ok()?
    } else if raw.contains(&b'\n') || raw.contains(&b'\r') {
        // A line break would end the event early; JSON allows them only as whitespace.
        serde_json::to_vec(&json).ok()?
    } else {
        raw
    };

    let mut event = Vec::with_capacity(payload.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&payload);
    event.extend_from_slice(b"\n\n");
    Some(Bytes::from(event))
}

/// Reads the whole response and returns it as one `chat.completion`.
async fn collect_completion(state: GatewayState, mut provider: StartedStream, chat: ChatRequest) -> Result<Response, ApiError> {
    let idle = state.config.idle_timeout;
    let mut chunks = Vec::new();
    let mut receipt = None;
    loop {
        match provider.next(idle).await {
            Ok(Relayed::Chunk { json, .. }) => chunks.push(json),
            Ok(Relayed::Usage(usage)) => receipt = Some(usage),
            Ok(Relayed::Done) => break,
            Err(failure) => {
                tracing::warn!(peer = %provider.peer, kind = ?failure.kind, reason = %failure.message, "Provider failed mid-response");
                record_failure(&state, provider.peer, failure.kind, true).await;
                return Err(ApiError::ProviderFailed { model: chat.model, message: failure.message });
            }
        }
    }
    record_success(&state, &provider, receipt.as_ref().map(|r| r.output_tokens));

    let mut completion = aggregate_chunks(&chunks);
    if completion["usage"].is_null()
        && let Some(receipt) = receipt
    {
        completion["usage"] = json!({
            "prompt_tokens": receipt.input_tokens,
            "completion_tokens": receipt.output_tokens,
            "total_tokens": receipt.input_tokens.saturating_add(receipt.output_tokens),
        });
    }
    Ok((StatusCode::OK, Json(completion)).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
        let refusal = |code, message: &str| Failure { kind: FailureKind::Refused, message: message.into(), code: Some(code), dropped_before_start: false };
        let rejected = refusal(ErrorCode::BadRequest, "prompt too long");
        let busy = refusal(ErrorCode::Busy, "full");
        let timeout = Failure::new(FailureKind::Timeout, "slow");

        let error = all_failed_error("m".into(), &[rejected.clone(), rejected.clone()]);
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(error.body()["error"]["message"].as_str().unwrap().contains("prompt too long"));

        let error = all_failed_error("m".into(), &[rejected.clone(), busy]);
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(all_failed_error("m".into(), &[rejected, timeout]).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(all_failed_error("m".into(), &[]).status(), StatusCode::SERVICE_UNAVAILABLE);
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

    fn event_text(raw: &str, include_usage: bool) -> Option<String> {
        let json: Value = serde_json::from_str(raw).unwrap();
        chunk_event(raw.as_bytes().to_vec(), json, include_usage).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn chunk_bytes_pass_through_unchanged() {
        let raw = r#"{"id":"x","z":1.50,"a":[],"choices":[{"index":0,"delta":{"content":"hi"}}]}"#;
        assert_eq!(event_text(raw, false).unwrap(), format!("data: {raw}\n\n"));
    }

    #[test]
    fn usage_chunk_is_forwarded_only_when_requested() {
        let raw = r#"{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        assert_eq!(event_text(raw, true).unwrap(), format!("data: {raw}\n\n"));
        assert_eq!(event_text(raw, false), None);
    }

    #[test]
    fn content_chunk_usage_removed_unless_requested() {
        let raw = r#"{"id":"x","choices":[{"index":0,"delta":{"content":"!"}}],"usage":{"total_tokens":3},"tail":true}"#;
        let text = event_text(raw, false).unwrap();
        assert_eq!(text, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"}}],\"tail\":true}\n\n");
    }

    #[test]
    fn chunk_with_line_breaks_becomes_one_line() {
        let raw = "{\"id\": \"x\",\n \"choices\": []}";
        assert_eq!(event_text(raw, false).unwrap(), "data: {\"id\":\"x\",\"choices\":[]}\n\n");
    }
}
