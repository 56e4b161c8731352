//! Turns a script and one request into a timed list of body frames, then plays that list
//! into the response body.
//!
//! Planning is pure so that the stream shape can be checked without a socket; playing only
//! waits for each deadline and sends.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::openai::{self, CompletionMeta};
use crate::script::{FailureMode, Script};

/// Invalid JSON sent in place of a chunk by [`FailureMode::MalformedSseAfterChunks`].
const MALFORMED_JSON: &str = "{\"id\": \"chatcmpl-broken\", \"choices\": [{\"delta\": ";

/// One step of a response body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Frame {
    /// Body bytes, sent at `offset` after the request arrived.
    Data { offset: Duration, bytes: Bytes },
    /// Send nothing more until the server shuts down.
    Hang,
    /// Drop the connection without finishing the body.
    Abort,
}

/// The kind of response a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestShape {
    pub(crate) stream: bool,
    pub(crate) tool_call: bool,
}

impl RequestShape {
    /// Reads the request fields that change the response's shape.
    pub(crate) fn of(body: &Value, script: &Script) -> Self {
        let tools_present = body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|tools| !tools.is_empty());
        Self {
            stream: body.get("stream").and_then(Value::as_bool) == Some(true),
            tool_call: tools_present && script.tool_call.is_some(),
        }
    }
}

/// The pieces of a response before they are serialized: each piece's JSON and send time.
struct Pieces {
    first: Value,
    deltas: Vec<(Duration, Value)>,
    finish_reason: &'static str,
    completion_tokens: u64,
    end: Duration,
}

fn deadline(script: &Script, index: usize) -> Duration {
    let gaps = u32::try_from(index).unwrap_or(u32::MAX);
    script.time_to_first_token + script.gap.saturating_mul(gaps)
}

fn text_pieces(script: &Script, header: &CompletionMeta) -> Pieces {
    let deltas: Vec<(Duration, Value)> = (0..script.chunks)
        .map(|index| {
            (
                deadline(script, index),
                header.content_chunk(&script.chunk_text(index)),
            )
        })
        .collect();
    Pieces {
        first: header.role_chunk(),
        end: deadline(script, script.chunks.saturating_sub(1)),
        completion_tokens: u64::try_from(script.chunks).unwrap_or(u64::MAX),
        deltas,
        finish_reason: "stop",
    }
}

fn tool_call_pieces(script: &Script, header: &CompletionMeta) -> Option<Pieces> {
    let tool_call = script.tool_call.as_ref()?;
    let fragments = tool_call.argument_fragments();
    let deltas: Vec<(Duration, Value)> = fragments
        .iter()
        .enumerate()
        .map(|(index, fragment)| {
            (
                deadline(script, index),
                header.tool_call_fragment_chunk(fragment),
            )
        })
        .collect();
    Some(Pieces {
        first: header.tool_call_start_chunk(tool_call),
        end: deadline(script, fragments.len().saturating_sub(1)),
        completion_tokens: u64::try_from(fragments.len()).unwrap_or(u64::MAX),
        deltas,
        finish_reason: "tool_calls",
    })
}

fn event(offset: Duration, data: &str) -> Frame {
    Frame::Data {
        offset,
        bytes: openai::sse_event(data),
    }
}

fn chunk_event(offset: Duration, chunk: &Value) -> Frame {
    event(offset, &chunk.to_string())
}

/// Plans the body frames of one response.
pub(crate) fn plan_frames(
    script: &Script,
    header: &CompletionMeta,
    shape: RequestShape,
) -> Vec<Frame> {
    if script.mode == FailureMode::HangBeforeFirstChunk {
        return vec![Frame::Hang];
    }
    let tool_pieces = if shape.tool_call {
        tool_call_pieces(script, header)
    } else {
        None
    };
    let pieces = tool_pieces.unwrap_or_else(|| text_pieces(script, header));
    if shape.stream {
        plan_stream(script, header, pieces)
    } else {
        plan_completion(script, header, pieces, shape)
    }
}

fn plan_stream(script: &Script, header: &CompletionMeta, pieces: Pieces) -> Vec<Frame> {
    let mut frames = vec![chunk_event(script.time_to_first_token, &pieces.first)];
    let cut_after = match script.mode {
        FailureMode::CloseAfterChunks(count) | FailureMode::MalformedSseAfterChunks(count) => count,
        _ => usize::MAX,
    };
    for (offset, delta) in pieces.deltas.iter().take(cut_after) {
        frames.push(chunk_event(*offset, delta));
    }

    let end = pieces.end;
    match script.mode {
        FailureMode::CloseAfterChunks(_) => frames.push(Frame::Abort),
        FailureMode::MalformedSseAfterChunks(_) => {
            frames.push(event(end, MALFORMED_JSON));
            frames.push(event(end, "[DONE]"));
        }
        _ => {
            frames.push(chunk_event(end, &header.finish_chunk(pieces.finish_reason)));
            if header.include_usage {
                let usage = openai::usage(script.prompt_tokens, pieces.completion_tokens);
                frames.push(chunk_event(end, &header.usage_chunk(usage)));
            }
            frames.push(event(end, "[DONE]"));
        }
    }
    frames
}

fn plan_completion(
    script: &Script,
    header: &CompletionMeta,
    pieces: Pieces,
    shape: RequestShape,
) -> Vec<Frame> {
    let message = match (&script.tool_call, shape.tool_call) {
        (Some(tool_call), true) => openai::tool_call_message(tool_call),
        _ => openai::text_message(&script.full_text()),
    };
    let usage = openai::usage(script.prompt_tokens, pieces.completion_tokens);
    let body = header
        .completion(message, pieces.finish_reason, usage)
        .to_string();

    match script.mode {
        FailureMode::CloseAfterChunks(_) => {
            let half = body.len() / 2;
            vec![
                Frame::Data {
                    offset: pieces.end,
                    bytes: Bytes::copy_from_slice(&body.as_bytes()[..half]),
                },
                Frame::Abort,
            ]
        }
        FailureMode::MalformedSseAfterChunks(_) => vec![Frame::Data {
            offset: pieces.end,
            bytes: Bytes::from_static(MALFORMED_JSON.as_bytes()),
        }],
        _ => vec![Frame::Data {
            offset: pieces.end,
            bytes: Bytes::from(body),
        }],
    }
}

/// Sends `frames` into a response body channel at their deadlines, counted from `start`.
///
/// Stops when the client goes away (the channel closes) and aborts the body when `shutdown`
/// fires, so shutdown does not wait for scripted delays or hangs.
pub(crate) async fn play(
    frames: Vec<Frame>,
    start: Instant,
    body: mpsc::Sender<Result<Bytes, std::io::Error>>,
    shutdown: CancellationToken,
) {
    for frame in frames {
        let outcome = match frame {
            Frame::Data { offset, bytes } => {
                tokio::select! {
                    () = tokio::time::sleep_until(start + offset) => body.send(Ok(bytes)).await.is_ok(),
                    () = shutdown.cancelled() => false,
                }
            }
            Frame::Hang => {
                shutdown.cancelled().await;
                false
            }
            Frame::Abort => {
                wait_until_flushed(&body, &shutdown).await;
                false
            }
        };
        if !outcome {
            let aborted = std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "scripted connection drop",
            );
            // The send fails when the client is already gone, which needs no handling.
            let _ = body.send(Err(aborted)).await;
            return;
        }
    }
}

/// Upper bound on waiting for the connection to take the frames sent before an abort.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Pause after the channel drains, so hyper writes the taken frames to the socket.
const FLUSH_PAUSE: Duration = Duration::from_millis(10);

/// Waits until the connection has taken every queued frame and had time to write them.
///
/// hyper drops bytes still in its write buffer when the body fails, so without this wait a
/// scripted "close after k chunks" could reach the client with fewer than k chunks.
async fn wait_until_flushed(
    body: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    shutdown: &CancellationToken,
) {
    let give_up = Instant::now() + FLUSH_WAIT;
    while body.capacity() < body.max_capacity()
        && Instant::now() < give_up
        && !shutdown.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(FLUSH_PAUSE).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::script::ToolCallScript;

    fn header(include_usage: bool) -> CompletionMeta {
        CompletionMeta {
            id: "chatcmpl-test".to_owned(),
            model: "m".to_owned(),
            created: 0,
            include_usage,
        }
    }

    fn data_frames(frames: &[Frame]) -> Vec<(Duration, String)> {
        frames
            .iter()
            .filter_map(|frame| match frame {
                Frame::Data { offset, bytes } => {
                    Some((*offset, String::from_utf8(bytes.to_vec()).unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    const STREAM: RequestShape = RequestShape {
        stream: true,
        tool_call: false,
    };

    #[test]
    fn stream_deadlines_follow_ttft_and_gap() {
        let script = Script::new("m")
            .with_chunks(3)
            .with_time_to_first_token(Duration::from_millis(100))
            .with_gap(Duration::from_millis(10));
        let frames = data_frames(&plan_frames(&script, &header(false), STREAM));
        let offsets: Vec<u64> = frames
            .iter()
            .map(|(offset, _)| offset.as_millis() as u64)
            .collect();
        // role, 3 content deltas, finish, [DONE]
        assert_eq!(offsets, vec![100, 100, 110, 120, 120, 120]);
        assert!(frames[1].1.contains("\"tok0 \""));
        assert!(frames[3].1.contains("\"tok2 \""));
        assert_eq!(frames[5].1, "data: [DONE]\n\n");
    }

    #[test]
    fn usage_chunk_only_when_requested() {
        let script = Script::new("m").with_chunks(2);
        let without = data_frames(&plan_frames(&script, &header(false), STREAM));
        let with = data_frames(&plan_frames(&script, &header(true), STREAM));
        assert_eq!(without.len() + 1, with.len());
        let usage_event = &with[with.len() - 2].1;
        let usage: Value =
            serde_json::from_str(usage_event.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 2);
    }

    #[test]
    fn close_after_chunks_ends_with_abort() {
        let script = Script::new("m")
            .with_chunks(5)
            .with_mode(FailureMode::CloseAfterChunks(2));
        let frames = plan_frames(&script, &header(false), STREAM);
        assert_eq!(frames.last(), Some(&Frame::Abort));
        // role chunk plus two content deltas
        assert_eq!(data_frames(&frames).len(), 3);
    }

    #[test]
    fn tool_call_fragments_join_to_arguments() {
        let tool = ToolCallScript::new("get_weather", r#"{"city":"Paris","unit":"c"}"#)
            .with_fragment_chars(5);
        let script = Script::new("m").with_tool_call(tool.clone());
        let shape = RequestShape {
            stream: true,
            tool_call: true,
        };
        let frames = data_frames(&plan_frames(&script, &header(false), shape));
        let mut joined = String::new();
        for (_, event) in &frames {
            let data = event.trim_start_matches("data: ").trim();
            if data == "[DONE]" {
                continue;
            }
            let chunk: Value = serde_json::from_str(data).unwrap();
            if let Some(fragment) =
                chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            {
                joined.push_str(fragment);
            }
        }
        assert_eq!(joined, tool.arguments);
    }
}
