//! JSON bodies in the OpenAI chat completions format: stream chunks, the final completion
//! object, the model list and error bodies.

use serde_json::{Value, json};

use crate::script::{Script, ToolCallScript};

/// Fields shared by every chunk or completion object of one response.
#[derive(Debug, Clone)]
pub(crate) struct CompletionMeta {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) created: u64,
    /// Whether the client set `stream_options.include_usage`, in which case OpenAI adds
    /// `"usage": null` to every chunk before the usage chunk.
    pub(crate) include_usage: bool,
}

impl CompletionMeta {
    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn delta_chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        self.chunk(json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        }]))
    }

    /// Builds the first chunk, which carries the role and empty content.
    pub(crate) fn role_chunk(&self) -> Value {
        self.delta_chunk(json!({"role": "assistant", "content": ""}), None)
    }

    /// Builds a content delta chunk.
    pub(crate) fn content_chunk(&self, text: &str) -> Value {
        self.delta_chunk(json!({"content": text}), None)
    }

    /// Builds the first tool call chunk: role, index, id, type and function name.
    pub(crate) fn tool_call_start_chunk(&self, tool_call: &ToolCallScript) -> Value {
        self.delta_chunk(
            json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "index": 0,
                    "id": tool_call.id,
                    "type": "function",
                    "function": {"name": tool_call.name, "arguments": ""},
                }],
            }),
            None,
        )
    }

    /// Builds a chunk carrying one fragment of the tool call arguments.
    pub(crate) fn tool_call_fragment_chunk(&self, fragment: &str) -> Value {
        self.delta_chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
            None,
        )
    }

    /// Builds the chunk with an empty delta and the finish reason.
    pub(crate) fn finish_chunk(&self, finish_reason: &str) -> Value {
        self.delta_chunk(json!({}), Some(finish_reason))
    }

    /// Builds the usage chunk, which has an empty `choices` array.
    pub(crate) fn usage_chunk(&self, usage: Value) -> Value {
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = usage;
        chunk
    }

    /// Builds a non-streaming `chat.completion` object.
    pub(crate) fn completion(&self, message: Value, finish_reason: &str, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage,
        })
    }
}

/// Builds a `usage` object.
pub(crate) fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Builds the assistant message of a non-streaming text response.
pub(crate) fn text_message(text: &str) -> Value {
    json!({"role": "assistant", "content": text, "refusal": null})
}

/// Builds the assistant message of a non-streaming tool call response.
pub(crate) fn tool_call_message(tool_call: &ToolCallScript) -> Value {
    json!({
        "role": "assistant",
        "content": null,
        "refusal": null,
        "tool_calls": [{
            "id": tool_call.id,
            "type": "function",
            "function": {"name": tool_call.name, "arguments": tool_call.arguments},
        }],
    })
}

/// Builds the `GET /v1/models` list.
pub(crate) fn model_list(script: &Script) -> Value {
    let data: Vec<Value> = script
        .models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "spare-testkit"}))
        .collect();
    json!({"object": "list", "data": data})
}

/// Builds an OpenAI error body.
pub(crate) fn error_body(message: &str, error_type: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": error_type, "param": null, "code": code}})
}

/// Formats one server-sent event carrying `data`.
pub(crate) fn sse_event(data: &str) -> bytes::Bytes {
    bytes::Bytes::from(format!("data: {data}\n\n"))
}
