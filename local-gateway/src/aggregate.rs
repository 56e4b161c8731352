//! Assembles the `chat.completion.chunk` events of a streamed response into one
//! `chat.completion` object, for clients that did not ask for a stream.
//!
//! Per choice index, content, refusal and reasoning text are concatenated, and the last
//! non-null `finish_reason` wins. Tool calls are assembled by their own index: id, type and
//! function name come from the first chunk that has them, and arguments are concatenated. The response's id,
//! created, model and system_fingerprint come from the first chunk that carries them, and
//! usage from the last chunk that carries it.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

#[derive(Default)]
struct ChoiceParts {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    reasoning_content: Option<String>,
    tool_calls: BTreeMap<u64, ToolCallParts>,
    finish_reason: Value,
}

#[derive(Default)]
struct ToolCallParts {
    id: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    arguments: String,
}

/// Builds one `chat.completion` from the chunks of a stream, in arrival order.
pub fn aggregate_chunks(chunks: &[Value]) -> Value {
    let mut header = Map::new();
    let mut usage = Value::Null;
    let mut choices: BTreeMap<u64, ChoiceParts> = BTreeMap::new();

    for chunk in chunks {
        for field in ["id", "created", "model", "system_fingerprint"] {
            if let Some(value) = chunk.get(field).filter(|v| !v.is_null()) {
                header.entry(field).or_insert_with(|| value.clone());
            }
        }
        if let Some(chunk_usage) = chunk.get("usage").filter(|v| v.is_object()) {
            usage = chunk_usage.clone();
        }
        for choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            add_choice_delta(choices.entry(index).or_default(), choice);
        }
    }

    let field = |name: &str| header.get(name).cloned().unwrap_or(Value::Null);
    let mut completion = Map::new();
    completion.insert("id".into(), field("id"));
    completion.insert("object".into(), json!("chat.completion"));
    completion.insert("created".into(), field("created"));
    completion.insert("model".into(), field("model"));
    completion.insert("choices".into(), choices.into_iter().map(|(index, parts)| finish_choice(index, parts)).collect());
    completion.insert("usage".into(), usage);
    if let Some(fingerprint) = header.get("system_fingerprint") {
        completion.insert("system_fingerprint".into(), fingerprint.clone());
    }
    Value::Object(completion)
}

fn add_choice_delta(parts: &mut ChoiceParts, choice: &Value) {
    if let Some(reason) = choice.get("finish_reason").filter(|v| !v.is_null()) {
        parts.finish_reason = reason.clone();
    }
    let Some(delta) = choice.get("delta") else {
        return;
    };
    if let Some(role) = delta.get("role").and_then(Value::as_str) {
        parts.role.get_or_insert_with(|| role.to_owned());
    }
    append_text(&mut parts.content, delta.get("content"));
    append_text(&mut parts.refusal, delta.get("refusal"));
    append_text(&mut parts.reasoning_content, delta.get("reasoning_content"));

    for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let tool = parts.tool_calls.entry(index).or_default();
        set_once(&mut tool.id, call.get("id"));
        set_once(&mut tool.kind, call.get("type"));
        if let Some(function) = call.get("function") {
            set_once(&mut tool.name, function.get("name"));
            if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                tool.arguments.push_str(arguments);
            }
        }
    }
}

fn append_text(target: &mut Option<String>, piece: Option<&Value>) {
    if let Some(piece) = piece.and_then(Value::as_str) {
        target.get_or_insert_with(String::new).push_str(piece);
    }
}

/// Keeps the first non-empty string; servers differ in whether they repeat ids and names.
fn set_once(target: &mut Option<String>, value: Option<&Value>) {
    if target.is_none()
        && let Some(value) = value.and_then(Value::as_str).filter(|s| !s.is_empty())
    {
        *target = Some(value.to_owned());
    }
}

fn finish_choice(index: u64, parts: ChoiceParts) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), json!(parts.role.unwrap_or_else(|| "assistant".into())));
    message.insert("content".into(), parts.content.map_or(Value::Null, Value::String));
    if let Some(refusal) = parts.refusal {
        message.insert("refusal".into(), json!(refusal));
    }
    if let Some(reasoning) = parts.reasoning_content {
        message.insert("reasoning_content".into(), json!(reasoning));
    }
    if !parts.tool_calls.is_empty() {
        let calls: Vec<Value> = parts
            .tool_calls
            .into_values()
            .map(|call| {
                json!({
                    "id": call.id,
                    "type": call.kind.unwrap_or_else(|| "function".into()),
                    "function": { "name": call.name, "arguments": call.arguments },
                })
            })
            .collect();
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    json!({ "index": index, "message": message, "logprobs": null, "finish_reason": parts.finish_reason })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chunk(choices: Value) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "gemma", "system_fingerprint": "fp1", "choices": choices})
    }

    #[test]
    fn content_is_concatenated_in_order() {
        let chunks = [
            chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"content": "lo"}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
            json!({"id": "chatcmpl-1", "created": 1700000000, "model": "gemma", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
        ];
        let completion = aggregate_chunks(&chunks);

        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["id"], "chatcmpl-1");
        assert_eq!(completion["created"], 1700000000);
        assert_eq!(completion["model"], "gemma");
        assert_eq!(completion["system_fingerprint"], "fp1");
        assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
        assert_eq!(completion["choices"][0]["message"]["content"], "Hello");
        assert_eq!(completion["choices"][0]["finish_reason"], "stop");
        assert_eq!(completion["usage"]["total_tokens"], 7);
        let keys: Vec<&String> = completion.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "object", "created", "model", "choices", "usage", "system_fingerprint"]);
    }

    #[test]
    fn tool_calls_are_assembled_by_index() {
        let chunks = [
            chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": null, "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]}}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}}])),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
        ];
        let completion = aggregate_chunks(&chunks);
        let message = &completion["choices"][0]["message"];

        assert_eq!(message["content"], Value::Null);
        assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
        let calls = message["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["id"], "call_a");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(calls[1]["id"], "call_b");
        assert_eq!(calls[1]["function"]["name"], "get_time");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
    }

    #[test]
    fn several_choices_stay_apart() {
        let chunks = [
            chunk(json!([{"index": 1, "delta": {"content": "B"}}, {"index": 0, "delta": {"content": "A"}}])),
            chunk(json!([{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}, {"index": 1, "delta": {"content": "b"}, "finish_reason": "length"}])),
        ];
        let completion = aggregate_chunks(&chunks);
        let choices = completion["choices"].as_array().unwrap();

        assert_eq!(choices.len(), 2);
        assert_eq!(choices[0]["index"], 0);
        assert_eq!(choices[0]["message"]["content"], "Aa");
        assert_eq!(choices[0]["finish_reason"], "stop");
        assert_eq!(choices[1]["message"]["content"], "Bb");
        assert_eq!(choices[1]["finish_reason"], "length");
    }

    #[test]
    fn refusal_and_reasoning_are_kept() {
        let chunks = [
            chunk(json!([{"index": 0, "delta": {"reasoning_content": "think"}}])),
            chunk(json!([{"index": 0, "delta": {"refusal": "no"}, "finish_reason": "stop"}])),
        ];
        let message = aggregate_chunks(&chunks)["choices"][0]["message"].clone();
        assert_eq!(message["reasoning_content"], "think");
        assert_eq!(message["refusal"], "no");
        assert_eq!(message["content"], Value::Null);
    }

    #[test]
    fn odd_chunk_shapes_are_skipped() {
        let chunks = [
            json!({"choices": 5}),
            json!({"choices": [7, null, {"index": "x", "delta": "text"}]}),
            json!({"choices": [{"index": 0, "delta": {"content": 5, "role": [], "tool_calls": [{"index": -1, "function": {"arguments": 7, "name": 3}}]}}]}),
            json!({"choices": [{"index": 18446744073709551615u64, "delta": {"content": "far"}}], "usage": "none", "id": 12}),
            json!([1, 2]),
        ];
        let completion = aggregate_chunks(&chunks);
        let choices = completion["choices"].as_array().unwrap();

        assert_eq!(choices.len(), 2);
        assert_eq!(choices[0]["message"]["content"], Value::Null);
        assert_eq!(choices[0]["message"]["tool_calls"][0]["function"]["arguments"], "");
        assert_eq!(choices[1]["message"]["content"], "far");
        assert_eq!(completion["usage"], Value::Null);
        assert_eq!(completion["id"], 12);
    }

    #[test]
    fn no_chunks_give_an_empty_completion() {
        let completion = aggregate_chunks(&[]);
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["choices"], json!([]));
        assert_eq!(completion["usage"], Value::Null);
    }
}
