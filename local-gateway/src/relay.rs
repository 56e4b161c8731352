//! Relaying a started provider stream to the client: as server-sent events, or collected
//! into one `chat.completion`. Outcomes are recorded in the provider's reputation here.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use spare_gossip::PeerId;
use spare_gossip::infer::UsageReceipt;
use tracing::Instrument;

use crate::aggregate::aggregate_chunks;
use crate::error::{ApiError, truncate_untrusted};
use crate::provider::{Event, Failure, ProviderStream};
use crate::reputation::{FailureKind, Outcome};
use crate::server::GatewayState;

/// Maximum total size of the chunks collected for a non-streaming response, so a provider
/// cannot make the gateway buffer without end. No model output comes near it.
const MAX_COLLECTED_BYTES: usize = 64 * 1024 * 1024;

/// A checked event, with chunks parsed as JSON objects.
pub(crate) enum Relayed {
    Chunk { raw: Vec<u8>, json: Value },
    Usage(UsageReceipt),
    Done,
}

/// A provider that has sent its first event; the request is committed to it.
pub(crate) struct StartedStream {
    pub(crate) peer: PeerId,
    pub(crate) stream: ProviderStream<libp2p::Stream>,
    pub(crate) first: Option<Relayed>,
    pub(crate) started_at: Instant,
    pub(crate) first_at: Instant,
}

/// Reads the next event; a chunk that is not a JSON object counts as malformed.
pub(crate) async fn next_relayed(stream: &mut ProviderStream<libp2p::Stream>, timeout: Duration) -> Result<Relayed, Failure> {
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
pub(crate) async fn record_failure(state: &GatewayState, peer: PeerId, kind: FailureKind, after_first_chunk: bool) {
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
pub(crate) fn relay_as_events(state: GatewayState, provider: StartedStream, model: String, include_usage: bool) -> Response {
    let relay = Relay {
        state,
        provider,
        model,
        include_usage,
        first_chunk: None,
        usage_sent: false,
        receipt: None,
        queued: None,
        finished: false,
        span: tracing::Span::current(),
    };
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
    /// The first chunk, whose id, created and model a synthesized usage chunk copies.
    first_chunk: Option<Value>,
    usage_sent: bool,
    receipt: Option<UsageReceipt>,
    /// An event to send before reading the provider again.
    queued: Option<Bytes>,
    finished: bool,
    span: tracing::Span,
}

impl Relay {
    /// Returns the next server-sent event for the client, or `None` after the last one.
    async fn next_event(&mut self) -> Option<Bytes> {
        if let Some(event) = self.queued.take() {
            return Some(event);
        }
        if self.finished {
            return None;
        }
        let idle = self.state.config.idle_timeout;
        loop {
            match self.provider.next(idle).instrument(self.span.clone()).await {
                Ok(Relayed::Chunk { raw, json }) => {
                    self.usage_sent |= self.include_usage && json.get("usage").is_some_and(Value::is_object);
                    let event = chunk_event(raw, &json, self.include_usage);
                    self.first_chunk.get_or_insert(json);
                    if event.is_some() {
                        return event;
                    }
                }
                Ok(Relayed::Usage(receipt)) => self.receipt = Some(receipt),
                Ok(Relayed::Done) => {
                    self.finished = true;
                    let output_tokens = self.receipt.as_ref().map(|receipt| receipt.output_tokens);
                    self.span.in_scope(|| record_success(&self.state, &self.provider, output_tokens));
                    let done = Bytes::from_static(b"data: [DONE]\n\n");
                    return match self.missing_usage_event() {
                        Some(usage) => {
                            self.queued = Some(done);
                            Some(usage)
                        }
                        None => Some(done),
                    };
                }
                Err(failure) => {
                    self.finished = true;
                    self.span.in_scope(|| tracing::warn!(peer = %self.provider.peer, kind = ?failure.kind, reason = %truncate_untrusted(&failure.message), "Provider failed mid-stream"));
                    record_failure(&self.state, self.provider.peer, failure.kind, true).instrument(self.span.clone()).await;
                    return Some(ApiError::ProviderFailed { model: self.model.clone(), message: failure.message }.sse_event());
                }
            }
        }
    }

    /// Builds a usage chunk from the signed receipt when the client asked for usage but the
    /// upstream sent none, so the client always gets the counts it will be billed for.
    fn missing_usage_event(&self) -> Option<Bytes> {
        if !self.include_usage || self.usage_sent {
            return None;
        }
        let receipt = self.receipt.as_ref()?;
        let field = |name: &str| self.first_chunk.as_ref().and_then(|chunk| chunk.get(name)).cloned().unwrap_or(Value::Null);
        let chunk = json!({
            "id": field("id"),
            "object": "chat.completion.chunk",
            "created": field("created"),
            "model": field("model"),
            "choices": [],
            "usage": usage_from_receipt(receipt),
        });
        Some(Bytes::from(format!("data: {chunk}\n\n")))
    }
}

fn usage_from_receipt(receipt: &UsageReceipt) -> Value {
    json!({
        "prompt_tokens": receipt.input_tokens,
        "completion_tokens": receipt.output_tokens,
        "total_tokens": receipt.input_tokens.saturating_add(receipt.output_tokens),
    })
}

/// Formats one chunk as a server-sent event, passing the provider's bytes through unless the
/// usage must be taken out. Returns `None` for a usage-only chunk the client did not ask for.
fn chunk_event(raw: Vec<u8>, json: &Value, include_usage: bool) -> Option<Bytes> {
    let has_usage = json.get("usage").is_some_and(Value::is_object);
    let payload = if has_usage && !include_usage {
        let has_choices = json.get("choices").and_then(Value::as_array).is_some_and(|choices| !choices.is_empty());
        if !has_choices {
            return None;
        }
        // Some servers put usage on the last content chunk; keep the chunk, drop the usage.
        let mut without_usage = json.clone();
        if let Some(object) = without_usage.as_object_mut() {
            object.remove("usage");
        }
        serde_json::to_vec(&without_usage).ok()?
    } else if raw.contains(&b'\n') || raw.contains(&b'\r') {
        // A line break would end the event early; JSON allows them only as whitespace.
        serde_json::to_vec(json).ok()?
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
pub(crate) async fn collect_completion(state: GatewayState, mut provider: StartedStream, model: String) -> Result<Response, ApiError> {
    let idle = state.config.idle_timeout;
    let mut chunks = Vec::new();
    let mut collected_bytes = 0usize;
    let mut receipt = None;
    loop {
        let event = match provider.next(idle).await {
            Ok(Relayed::Chunk { raw, .. }) if collected_bytes.saturating_add(raw.len()) > MAX_COLLECTED_BYTES => {
                Err(Failure::new(FailureKind::Malformed, format!("response exceeds {MAX_COLLECTED_BYTES} bytes")))
            }
            other => other,
        };
        match event {
            Ok(Relayed::Chunk { raw, json }) => {
                collected_bytes += raw.len();
                chunks.push(json);
            }
            Ok(Relayed::Usage(usage)) => receipt = Some(usage),
            Ok(Relayed::Done) => break,
            Err(failure) => {
                tracing::warn!(peer = %provider.peer, kind = ?failure.kind, reason = %truncate_untrusted(&failure.message), "Provider failed mid-response");
                record_failure(&state, provider.peer, failure.kind, true).await;
                return Err(ApiError::ProviderFailed { model, message: failure.message });
            }
        }
    }
    record_success(&state, &provider, receipt.as_ref().map(|r| r.output_tokens));

    let mut completion = aggregate_chunks(&chunks);
    if completion["usage"].is_null()
        && let Some(receipt) = receipt
    {
        completion["usage"] = usage_from_receipt(&receipt);
    }
    Ok((StatusCode::OK, Json(completion)).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event_text(raw: &str, include_usage: bool) -> Option<String> {
        let json: Value = serde_json::from_str(raw).unwrap();
        chunk_event(raw.as_bytes().to_vec(), &json, include_usage).map(|b| String::from_utf8(b.to_vec()).unwrap())
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
