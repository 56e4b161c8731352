//! Serving `/spare/infer/1` streams: admission, validation, forwarding to the upstream and
//! relaying every event back as soon as it arrives.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use serde_json::{Map, Value};
use spare_gossip::infer::{MAX_REQUEST_FRAME_BYTES, MAX_RESPONSE_FRAME_BYTES, UsageReceipt};
use spare_gossip::{Api, ErrorCode, InferRequest, PeerId, ResponseFrame, framing};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::catalog::CatalogEntry;
use crate::sse::SseParser;
use crate::{Error, Provider};

/// Token counts reported by the upstream's final usage chunk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    input_tokens: u64,
    output_tokens: u64,
}

/// The reason a request ended early, as sent to the buyer.
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl Provider {
    /// Serves one inbound inference stream to completion.
    pub async fn handle_stream(self: Arc<Self>, peer: PeerId, mut stream: libp2p::Stream) {
        let span = tracing::info_span!("infer", %peer, request_id = tracing::field::Empty, model = tracing::field::Empty);
        async move {
            let outcome = self.answer(peer, &mut stream).await;
            if let Err(refusal) = outcome {
                tracing::info!(code = ?refusal.code, message = %refusal.message, "Request failed");
                let frame = ResponseFrame::Error { code: refusal.code, message: refusal.message };
                if let Err(e) = framing::write_frame(&mut stream, &frame, MAX_RESPONSE_FRAME_BYTES).await {
                    tracing::debug!(error = %e, "Cannot send the error frame; the buyer has gone");
                }
            }
            let _ = stream.close().await;
        }
        .instrument(span)
        .await
    }

    async fn answer(&self, peer: PeerId, stream: &mut libp2p::Stream) -> Result<(), Refusal> {
        // A peer may have only a few request frames in flight, so one peer that stalls its
        // frames cannot take every slot. An honest buyer sends its frame at once, so its
        // reads finish in a round trip.
        let read_slot = self.take_read_slot(peer)?;

        // The permit comes before the request is read, so at most `max_concurrent` request
        // frames (up to 33 MiB each) are in memory at once, whatever the number of streams.
        let _permit: OwnedSemaphorePermit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::new(ErrorCode::Busy, format!("provider is at its limit of {} concurrent requests", self.settings.max_concurrent)))?;

        let read = framing::read_frame::<_, InferRequest>(stream, MAX_REQUEST_FRAME_BYTES);
        let request = match tokio::time::timeout(self.settings.request_read_timeout, read).await {
            Ok(Ok(request)) => request,
            Ok(Err(e)) => return Err(Refusal::new(ErrorCode::BadRequest, format!("invalid request frame: {e}"))),
            Err(_) => return Err(Refusal::new(ErrorCode::BadRequest, "no request frame arrived in time")),
        };
        drop(read_slot);
        request.validate().map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
        let span = tracing::Span::current();
        span.record("request_id", request.request_id.as_str());
        span.record("model", request.model.as_str());

        let (entry, body) = self.admit(&request)?;
        let upstream = self.upstreams.get(entry.upstream).ok_or_else(|| Refusal::new(ErrorCode::Internal, "catalog names an unknown upstream"))?;
        let response = upstream.chat_completions(body).await.map_err(upstream_refusal)?;
        write(stream, &ResponseFrame::Started { api: Api::OpenAiChat }).await?;

        let usage = self.relay(stream, response, &entry).await?;
        let receipt = UsageReceipt::sign(&self.signing_key, &request.request_id, &entry.id, usage.input_tokens, usage.output_tokens)
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
        write(stream, &ResponseFrame::Usage(receipt)).await?;
        write(stream, &ResponseFrame::Done).await?;
        tracing::info!(input_tokens = usage.input_tokens, output_tokens = usage.output_tokens, "Request served");
        Ok(())
    }

    fn take_read_slot(&self, peer: PeerId) -> Result<ReadSlot<'_>, Refusal> {
        let mut reads = self.reads_in_progress.lock().map_err(|_| Refusal::new(ErrorCode::Internal, "read table poisoned"))?;
        let limit = reads_per_peer_limit(self.settings.max_concurrent);
        let count = reads.entry(peer).or_insert(0);
        if *count >= limit {
            return Err(Refusal::new(ErrorCode::Busy, format!("this peer already has {limit} request frames in flight")));
        }
        *count += 1;
        Ok(ReadSlot { provider: self, peer })
    }

    /// Checks the request header and body and prepares the upstream body.
    fn admit(&self, request: &InferRequest) -> Result<(CatalogEntry, Vec<u8>), Refusal> {
        if request.voucher.is_some() {
            return Err(Refusal::new(ErrorCode::BadRequest, "this provider does not accept payment vouchers yet"));
        }
        if request.api != Api::OpenAiChat {
            return Err(Refusal::new(ErrorCode::BadRequest, format!("unsupported API {:?}; this provider speaks openai-chat", request.api)));
        }
        let entry = self
            .catalog()
            .get(&request.model)
            .cloned()
            .ok_or_else(|| Refusal::new(ErrorCode::ModelNotFound, format!("model {:?} is not served here", request.model)))?;
        let body = upstream_body(&request.body, &entry.upstream_model).map_err(|message| Refusal::new(ErrorCode::BadRequest, message))?;
        Ok((entry, body))
    }

    /// Relays upstream events as chunks until the upstream finishes; returns the usage.
    async fn relay(&self, stream: &mut libp2p::Stream, response: reqwest::Response, entry: &CatalogEntry) -> Result<Usage, Refusal> {
        let idle = self.settings.upstream_idle_timeout;
        let mut body = response.bytes_stream();
        let mut parser = SseParser::default();
        let mut usage = None;
        let mut chunks = 0u64;

        loop {
            let next = match tokio::time::timeout(idle, body.next()).await {
                Ok(next) => next,
                Err(_) => return Err(upstream_refusal(Error::UpstreamTimeout(idle))),
            };
            let finished = match next {
                Some(Ok(bytes)) => {
                    parser.push(&bytes).map_err(upstream_refusal)?;
                    false
                }
                Some(Err(e)) => return Err(Refusal::new(ErrorCode::Upstream, format!("upstream stream broke: {e}"))),
                None => true,
            };

            let mut events = Vec::new();
            while let Some(data) = parser.next_data() {
                events.push(data);
            }
            if finished {
                events.extend(parser.finish());
            }
            for data in events {
                if data.trim() == "[DONE]" {
                    return Ok(usage.unwrap_or_else(|| estimated_usage(chunks)));
                }
                let (data, reported) = prepare_chunk(data, entry);
                if reported.is_some() {
                    usage = reported;
                }
                chunks += 1;
                write(stream, &ResponseFrame::Chunk { data }).await?;
            }
            if finished {
                return Ok(usage.unwrap_or_else(|| estimated_usage(chunks)));
            }
        }
    }
}

async fn write(stream: &mut libp2p::Stream, frame: &ResponseFrame) -> Result<(), Refusal> {
    framing::write_frame(stream, frame, MAX_RESPONSE_FRAME_BYTES).await.map_err(|e| Refusal::new(ErrorCode::Internal, format!("cannot send to the buyer: {e}")))
}

/// Rewrites the client body for the upstream: its own model name, streaming on, usage
/// requested. Every other field passes through untouched and in order.
fn upstream_body(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    let object = value.as_object_mut().ok_or("request body must be a JSON object")?;

    object.insert("model".into(), Value::String(upstream_model.to_owned()));
    object.insert("stream".into(), Value::Bool(true));
    let options = object.entry("stream_options").or_insert_with(|| Value::Object(Map::new()));
    match options.as_object_mut() {
        Some(options) => {
            options.insert("include_usage".into(), Value::Bool(true));
        }
        None => return Err("stream_options must be an object".into()),
    }
    serde_json::to_vec(&value).map_err(|e| e.to_string())
}

/// Prepares one upstream chunk for the buyer and reads the usage it reports, if any.
///
/// When the upstream's model name differs from the canonical id, the chunk's `model` is set
/// to the canonical id, so an alias such as a local file path is not shown to buyers. The
/// chunk is parsed at most once, and not at all when neither applies. A chunk that is not a
/// JSON object passes unchanged, and the buyer's checks reject it.
fn prepare_chunk(data: String, entry: &CatalogEntry) -> (Vec<u8>, Option<Usage>) {
    let rename = entry.upstream_model != entry.id;
    if !rename && !data.contains("\"usage\"") {
        return (data.into_bytes(), None);
    }
    let Ok(mut value) = serde_json::from_str::<Value>(&data) else {
        return (data.into_bytes(), None);
    };
    let usage = usage_in(&value);
    if !rename {
        return (data.into_bytes(), usage);
    }
    match value.get_mut("model") {
        Some(field) => *field = Value::String(entry.id.clone()),
        None => return (data.into_bytes(), usage),
    }
    let bytes = serde_json::to_vec(&value).unwrap_or_else(|_| data.into_bytes());
    (bytes, usage)
}

/// Reads OpenAI's `usage` object from a parsed chunk, if it has a non-null one.
fn usage_in(chunk: &Value) -> Option<Usage> {
    let usage = chunk.get("usage")?.as_object()?;
    Some(Usage {
        input_tokens: usage.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        output_tokens: usage.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// Usage when the upstream reported none: one output token per content chunk.
// NOTE: an estimate; input tokens are unknown without the model's tokenizer, so they count as
// zero and the buyer is never overcharged for them.
fn estimated_usage(chunks: u64) -> Usage {
    Usage { input_tokens: 0, output_tokens: chunks }
}

fn upstream_refusal(error: Error) -> Refusal {
    match error {
        Error::UpstreamStatus { status, body } if (400..500).contains(&status) && status != 429 => {
            Refusal::new(ErrorCode::BadRequest, format!("upstream rejected the request with HTTP {status}: {body}"))
        }
        other => Refusal::new(ErrorCode::Upstream, other.to_string()),
    }
}

/// Accepts inference streams until the acceptor closes, one task per stream.
pub(crate) async fn accept_loop(provider: Arc<Provider>, mut incoming: spare_gossip::streams::IncomingStreams) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.next() => match next {
                Some((peer, stream)) => {
                    tasks.spawn(provider.clone().handle_stream(peer, stream));
                }
                None => break,
            },
            Some(result) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "Stream task failed");
                }
            }
        }
    }
    tasks.shutdown().await;
}

/// Returns how many request frames one peer may have in flight at once: half the
/// concurrency limit, and at least 4. A peer that stalls its frames then takes at most half
/// the slots, while a gateway's burst of requests still fits.
pub fn reads_per_peer_limit(max_concurrent: u32) -> usize {
    (max_concurrent as usize / 2).max(4)
}

/// A peer's claim on one of its reads (see [`reads_per_peer_limit`]), released on drop.
struct ReadSlot<'a> {
    provider: &'a Provider,
    peer: PeerId,
}

impl Drop for ReadSlot<'_> {
    fn drop(&mut self) {
        let Ok(mut reads) = self.provider.reads_in_progress.lock() else {
            return;
        };
        if let Some(count) = reads.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                reads.remove(&self.peer);
            }
        }
    }
}

/// Default time allowed for the buyer's request frame to arrive.
pub(crate) const DEFAULT_REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(id: &str, upstream_model: &str) -> CatalogEntry {
        CatalogEntry { id: id.into(), upstream: 0, upstream_model: upstream_model.into(), price: crate::Price { input: 1, output: 1 }, apis: vec![Api::OpenAiChat] }
    }

    #[test]
    fn upstream_body_keeps_unknown_fields_in_order() {
        let body = br#"{"model":"canonical","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"seed":7,"x_extra":{"a":1},"stream":false}"#;
        let rewritten: Value = serde_json::from_slice(&upstream_body(body, "upstream-name").unwrap()).unwrap();
        let keys: Vec<&str> = rewritten.as_object().unwrap().keys().map(String::as_str).collect();

        assert_eq!(keys, ["model", "messages", "tools", "seed", "x_extra", "stream", "stream_options"]);
        assert_eq!(rewritten["model"], "upstream-name");
        assert_eq!(rewritten["stream"], true);
        assert_eq!(rewritten["stream_options"]["include_usage"], true);
        assert_eq!(rewritten["x_extra"]["a"], 1);
        assert_eq!(rewritten["messages"][0]["content"][0]["text"], "hi");
    }

    #[test]
    fn chunk_model_becomes_the_canonical_id() {
        let aliased = entry("gemma-3-270m", "/models/gemma.gguf");
        let chunk = r#"{"id":"c","model":"/models/gemma.gguf","choices":[]}"#.to_owned();
        assert_eq!(prepare_chunk(chunk, &aliased).0, br#"{"id":"c","model":"gemma-3-270m","choices":[]}"#);
        assert_eq!(prepare_chunk("not json".to_owned(), &aliased).0, b"not json");
    }

    #[test]
    fn upstream_body_rejects_non_objects() {
        assert!(upstream_body(b"[1,2]", "m").is_err());
        assert!(upstream_body(b"{not json", "m").is_err());
        assert!(upstream_body(br#"{"stream_options":3}"#, "m").is_err());
    }

    #[test]
    fn usage_is_read_from_the_usage_chunk_only() {
        let usage_of = |chunk: &str| prepare_chunk(chunk.to_owned(), &entry("m", "m")).1;
        assert_eq!(usage_of(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#), Some(Usage { input_tokens: 3, output_tokens: 5 }));
        assert_eq!(usage_of(r#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#), None);
        assert_eq!(usage_of(r#"{"choices":[{"delta":{"content":"usage"}}]}"#), None);

        // A renamed chunk still reports its usage.
        let renamed = prepare_chunk(r#"{"model":"u","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#.to_owned(), &entry("m", "u"));
        assert_eq!(renamed.1, Some(Usage { input_tokens: 1, output_tokens: 2 }));
    }
}
