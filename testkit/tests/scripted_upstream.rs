//! Drives the scripted upstream over real HTTP with reqwest and checks what a client receives.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use spare_testkit::{FailureMode, Script, ScriptedUpstream, ToolCallScript};

const MODEL: &str = "test-model";

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn chat_url(upstream: &ScriptedUpstream) -> String {
    format!("{}/chat/completions", upstream.base_url())
}

async fn post_chat(upstream: &ScriptedUpstream, body: &Value) -> reqwest::Response {
    client()
        .post(chat_url(upstream))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn post_chat_text(upstream: &ScriptedUpstream, body: &Value) -> String {
    post_chat(upstream, body).await.text().await.unwrap()
}

fn stream_request() -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

/// Splits an SSE body into the `data` payloads of its events.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
        .collect()
}

fn parsed_chunks(data: &[String]) -> Vec<Value> {
    data.iter()
        .filter(|payload| payload.as_str() != "[DONE]")
        .map(|payload| serde_json::from_str(payload).unwrap())
        .collect()
}

#[tokio::test]
async fn models_endpoint_lists_scripted_ids() {
    let upstream = ScriptedUpstream::start(Script::new(MODEL).with_model("second"))
        .await
        .unwrap();
    let list: Value = client()
        .get(format!("{}/models", upstream.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![MODEL, "second"]);
    assert_eq!(upstream.models_request_count(), 1);
    assert_eq!(upstream.chat_request_count(), 0);
}

#[tokio::test]
async fn stream_has_role_content_finish_usage_done() {
    let upstream = ScriptedUpstream::start(Script::new(MODEL).with_chunks(3))
        .await
        .unwrap();
    let response = post_chat(&upstream, &stream_request()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");

    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks = parsed_chunks(&data);
    assert_eq!(
        chunks.len(),
        6,
        "role, 3 content, finish, usage: {chunks:?}"
    );

    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..4]
        .iter()
        .map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 ");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11})
    );
    for chunk in &chunks {
        assert_eq!(chunk["model"], MODEL);
        assert_eq!(chunk["id"], chunks[0]["id"]);
    }
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk() {
    let upstream = ScriptedUpstream::start(Script::new(MODEL).with_chunks(2))
        .await
        .unwrap();
    let mut request = stream_request();
    request.as_object_mut().unwrap().remove("stream_options");
    let body = post_chat_text(&upstream, &request).await;
    let chunks = parsed_chunks(&sse_data(&body));
    assert_eq!(chunks.len(), 4, "role, 2 content, finish: {chunks:?}");
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
}

#[tokio::test]
async fn non_stream_returns_full_text_and_usage() {
    let upstream =
        ScriptedUpstream::start(Script::new(MODEL).with_chunks(4).with_prompt_tokens(21))
            .await
            .unwrap();
    let request = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let response = post_chat(&upstream, &request).await;
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 "
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["prompt_tokens"], 21);
    assert_eq!(completion["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn custom_chunk_texts_are_streamed_in_order() {
    let script = Script::new(MODEL).with_chunk_texts(["Hel", "lo", " wörld"]);
    let upstream = ScriptedUpstream::start(script).await.unwrap();
    let body = post_chat_text(&upstream, &stream_request()).await;
    let text: String = parsed_chunks(&sse_data(&body))
        .iter()
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "Hello wörld");
}

#[tokio::test]
async fn request_bodies_are_recorded_intact() {
    let upstream = ScriptedUpstream::start(Script::new(MODEL)).await.unwrap();
    let first = json!({
        "model": MODEL,
        "zeta_vendor_field": {"b": 1, "a": [1, 2]},
        "messages": [{"role": "user", "content": "first"}],
        "temperature": 0.25,
    });
    let second = json!({"model": MODEL, "messages": [{"role": "user", "content": "second"}], "stream": true});
    for body in [&first, &second] {
        client()
            .post(chat_url(&upstream))
            .header("authorization", "Bearer upstream-key")
            .json(body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }

    let recorded = upstream.requests();
    assert_eq!(recorded, vec![first.clone(), second]);
    let keys: Vec<&String> = recorded[0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        vec!["model", "zeta_vendor_field", "messages", "temperature"]
    );
    assert_eq!(upstream.chat_request_count(), 2);
    assert_eq!(
        upstream.request_headers()[0]["authorization"],
        "Bearer upstream-key"
    );
}

#[tokio::test]
async fn invalid_json_is_rejected_and_counted() {
    let upstream = ScriptedUpstream::start(Script::new(MODEL)).await.unwrap();
    let response = client()
        .post(chat_url(&upstream))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(upstream.chat_request_count(), 1);
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn unknown_model_gets_404_model_not_found() {
    let upstream = ScriptedUpstream::start(Script::new(MODEL)).await.unwrap();
    let request = json!({"model": "other", "messages": []});
    let response = post_chat(&upstream, &request).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn stream_follows_ttft_and_gap() {
    let ttft = Duration::from_millis(150);
    let gap = Duration::from_millis(40);
    let script = Script::new(MODEL)
        .with_chunks(4)
        .with_time_to_first_token(ttft)
        .with_gap(gap);
    let upstream = ScriptedUpstream::start(script).await.unwrap();

    let started = Instant::now();
    let response = post_chat(&upstream, &stream_request()).await;
    let mut body = response.bytes_stream();
    let mut received = String::new();
    let mut first_content_at = None;
    while let Some(bytes) = body.next().await {
        received.push_str(std::str::from_utf8(&bytes.unwrap()).unwrap());
        if first_content_at.is_none() && received.contains("tok0 ") {
            first_content_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();

    let first_content_at = first_content_at.unwrap();
    assert!(
        first_content_at >= ttft,
        "first content after {first_content_at:?}, before ttft"
    );
    assert!(
        first_content_at < ttft + Duration::from_millis(500),
        "first content after {first_content_at:?}"
    );
    let expected_total = ttft + gap * 3;
    assert!(
        total >= expected_total,
        "stream ended after {total:?}, expected at least {expected_total:?}"
    );
}

#[tokio::test]
async fn http_status_mode_returns_openai_error() {
    let upstream =
        ScriptedUpstream::start(Script::new(MODEL).with_mode(FailureMode::HttpStatus(500)))
            .await
            .unwrap();
    let response = post_chat(&upstream, &stream_request()).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(
        upstream.requests().len(),
        1,
        "failed requests are still recorded"
    );
}

#[tokio::test]
async fn hang_before_response_sends_no_status_until_shutdown() {
    let upstream =
        ScriptedUpstream::start(Script::new(MODEL).with_mode(FailureMode::HangBeforeResponse))
            .await
            .unwrap();
    let pending = client()
        .post(chat_url(&upstream))
        .timeout(Duration::from_millis(300))
        .json(&stream_request())
        .send()
        .await;
    let error = pending.unwrap_err();
    assert!(error.is_timeout(), "expected a timeout, got {error}");

    let stopped = Instant::now();
    upstream.shutdown().await.unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "shutdown waited on the hanging request"
    );
}

#[tokio::test]
async fn hang_before_first_chunk_sends_headers_only() {
    let upstream =
        ScriptedUpstream::start(Script::new(MODEL).with_mode(FailureMode::HangBeforeFirstChunk))
            .await
            .unwrap();
    let response = post_chat(&upstream, &stream_request()).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let next = tokio::time::timeout(Duration::from_millis(300), body.next()).await;
    assert!(next.is_err(), "expected no body bytes, got {next:?}");
    upstream.shutdown().await.unwrap();
}

#[tokio::test]
async fn close_after_chunks_breaks_the_body() {
    let script = Script::new(MODEL)
        .with_chunks(10)
        .with_mode(FailureMode::CloseAfterChunks(2));
    let upstream = ScriptedUpstream::start(script).await.unwrap();
    let response = post_chat(&upstream, &stream_request()).await;
    assert_eq!(response.status(), 200);

    let mut body = response.bytes_stream();
    let mut received = String::new();
    let mut body_error = None;
    while let Some(item) = body.next().await {
        match item {
            Ok(bytes) => received.push_str(std::str::from_utf8(&bytes).unwrap()),
            Err(error) => body_error = Some(error),
        }
    }
    assert!(body_error.is_some(), "the body ended cleanly: {received}");
    assert!(received.contains("tok1 "));
    assert!(!received.contains("tok2 "));
    assert!(!received.contains("[DONE]"));
}

#[tokio::test]
async fn malformed_sse_sends_invalid_json_event() {
    let script = Script::new(MODEL)
        .with_chunks(5)
        .with_mode(FailureMode::MalformedSseAfterChunks(1));
    let upstream = ScriptedUpstream::start(script).await.unwrap();
    let body = post_chat_text(&upstream, &stream_request()).await;
    let data = sse_data(&body);
    assert_eq!(
        data.len(),
        4,
        "role, 1 content, malformed, [DONE]: {data:?}"
    );
    assert!(serde_json::from_str::<Value>(&data[1]).is_ok());
    assert!(serde_json::from_str::<Value>(&data[2]).is_err());
    assert_eq!(data[3], "[DONE]");
}

#[tokio::test]
async fn set_mode_changes_behaviour_while_running() {
    let upstream = ScriptedUpstream::start(Script::new(MODEL)).await.unwrap();
    let ok = post_chat(&upstream, &stream_request()).await;
    assert_eq!(ok.status(), 200);
    ok.bytes().await.unwrap();

    upstream.set_mode(FailureMode::HttpStatus(503));
    let failed = post_chat(&upstream, &stream_request()).await;
    assert_eq!(failed.status(), 503);

    upstream.set_mode(FailureMode::Normal);
    let recovered = post_chat(&upstream, &stream_request()).await;
    assert_eq!(recovered.status(), 200);
    assert_eq!(upstream.chat_request_count(), 3);
}

#[tokio::test]
async fn tool_call_streams_name_then_argument_fragments() {
    let arguments = r#"{"location":"Paris","unit":"celsius"}"#;
    let tool = ToolCallScript::new("get_weather", arguments).with_fragment_chars(6);
    let upstream = ScriptedUpstream::start(Script::new(MODEL).with_tool_call(tool))
        .await
        .unwrap();
    let mut request = stream_request();
    request["tools"] =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]);

    let body = post_chat_text(&upstream, &request).await;
    let chunks = parsed_chunks(&sse_data(&body));
    let first_call = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first_call["index"], 0);
    assert_eq!(first_call["id"], "call_scripted_0");
    assert_eq!(first_call["function"]["name"], "get_weather");

    let mut joined = String::new();
    for chunk in &chunks[1..] {
        if let Some(fragment) =
            chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        {
            assert!(
                chunk["choices"][0]["delta"]["tool_calls"][0]
                    .get("id")
                    .is_none()
            );
            joined.push_str(fragment);
        }
    }
    assert_eq!(joined, arguments);
    let finish = chunks
        .iter()
        .find_map(|chunk| chunk["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
}

#[tokio::test]
async fn tool_call_needs_tools_in_request() {
    let tool = ToolCallScript::new("get_weather", "{}");
    let upstream = ScriptedUpstream::start(Script::new(MODEL).with_chunks(1).with_tool_call(tool))
        .await
        .unwrap();
    let body = post_chat_text(&upstream, &stream_request()).await;
    assert!(body.contains("tok0 "));
    assert!(!body.contains("tool_calls"));
}

#[tokio::test]
async fn non_stream_tool_call_has_whole_arguments() {
    let tool = ToolCallScript::new("lookup", r#"{"q":"x"}"#);
    let upstream = ScriptedUpstream::start(Script::new(MODEL).with_tool_call(tool))
        .await
        .unwrap();
    let request = json!({"model": MODEL, "messages": [], "tools": [{"type": "function", "function": {"name": "lookup"}}]});
    let completion: Value = post_chat(&upstream, &request).await.json().await.unwrap();
    let call = &completion["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(call["function"]["arguments"], r#"{"q":"x"}"#);
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let upstream = ScriptedUpstream::start(Script::new(MODEL)).await.unwrap();
    let models_url = format!("{}/models", upstream.base_url());
    drop(upstream);

    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if client().get(&models_url).send().await.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server still responds after drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn binary_prints_its_url_and_serves() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_spare-scripted-upstream"))
        .args([
            "--model",
            MODEL,
            "--chunks",
            "2",
            "--ttft-ms",
            "1",
            "--gap-ms",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let base_url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        base_url.starts_with("http://127.0.0.1:") && base_url.ends_with("/v1"),
        "{base_url}"
    );

    let body = client()
        .post(format!("{base_url}/chat/completions"))
        .json(&stream_request())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("tok1 "));
    child.kill().await.unwrap();
}

#[tokio::test]
async fn first_chunk_arrives_without_ack_delay() {
    // Regression: without TCP_NODELAY the first chunk waited for the client's delayed ACK
    // of the response headers, so it arrived about 40 ms after the request on Linux.
    let ttft = Duration::from_millis(5);
    let upstream = ScriptedUpstream::start(Script::new(MODEL).with_time_to_first_token(ttft))
        .await
        .unwrap();
    let client = client();

    let mut delays = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let response = client
            .post(chat_url(&upstream))
            .json(&stream_request())
            .send()
            .await
            .unwrap();
        let mut body = response.bytes_stream();
        let mut received = String::new();
        while !received.contains("tok0 ") {
            let bytes = body.next().await.unwrap().unwrap();
            received.push_str(std::str::from_utf8(&bytes).unwrap());
        }
        delays.push(started.elapsed());
        while body.next().await.is_some() {}
    }
    delays.sort();

    let median = delays[delays.len() / 2];
    assert!(
        median < ttft + Duration::from_millis(20),
        "median time to first token {median:?}: {delays:?}"
    );
}

#[tokio::test]
async fn recording_off_still_counts_requests() {
    let upstream = ScriptedUpstream::start(Script::new(MODEL).with_request_recording(false))
        .await
        .unwrap();
    let body = post_chat_text(&upstream, &stream_request()).await;
    assert!(body.contains("[DONE]"));
    assert_eq!(upstream.chat_request_count(), 1);
    assert!(upstream.requests().is_empty());
    assert!(upstream.request_headers().is_empty());
}
