//! End-to-end tests: an HTTP client, the gateway, real swarms on loopback and real providers
//! (`spare_node` in front of a scripted upstream), plus hand-written providers for protocol
//! violations and for the DHT path. Failing providers are priced lower than good ones, so they are tried first.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use spare_gossip::offer::now_ms;
use spare_testkit::{FailureMode, Script, ToolCallScript};
use support::{
    API_KEY, Gateway, MANUAL_TEXT, MODEL, Manual, ManualProvider, NodeProvider, chat_body, chat_request_head, read_events, read_response, streamed_text,
};
use tokio::io::AsyncWriteExt;

const CHEAP: u64 = 1;
const EXPENSIVE: u64 = 10;

fn script() -> Script {
    Script::new(MODEL).with_chunks(4)
}

fn failing_script(mode: FailureMode) -> Script {
    script().with_mode(mode)
}

async fn error_of(response: reqwest::Response) -> Value {
    let body: Value = response.json().await.unwrap();
    let keys: Vec<&String> = body["error"].as_object().expect("OpenAI error body").keys().collect();
    assert_eq!(keys, ["message", "type", "param", "code"]);
    body["error"].clone()
}

async fn assert_chat_works(gateway: &Gateway, provider: &NodeProvider) {
    let response = gateway.post_chat(&chat_body(false)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["choices"][0]["message"]["content"], provider.upstream.script().full_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chunks_arrive_in_order_and_early() {
    let dir = tempfile::tempdir().unwrap();
    let provider = NodeProvider::start(script().with_chunks(5).with_gap(Duration::from_millis(300)), EXPENSIVE).await;
    let gateway = Gateway::start(&[&provider.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[provider.peer_id()]).await;

    let response = gateway.post_chat(&chat_body(true)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(response.headers()["x-request-id"].to_str().unwrap().starts_with("req-"));
    let events = read_events(response).await;

    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(streamed_text(&events), provider.upstream.script().full_text());
    assert!(events.iter().all(|event| !event.data.contains("prompt_tokens")), "usage chunk sent without include_usage");

    // Five chunks 300 ms apart: the first must reach the client about 1.2 s before the last.
    let first_content = events.iter().find(|event| event.data.contains("tok0")).unwrap().at;
    let last_content = events.iter().find(|event| event.data.contains("tok4")).unwrap().at;
    assert!(last_content.duration_since(first_content) >= Duration::from_millis(900), "chunks were buffered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_chunk_is_relayed_when_requested() {
    let dir = tempfile::tempdir().unwrap();
    let provider = NodeProvider::start(script(), EXPENSIVE).await;
    let gateway = Gateway::start(&[&provider.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[provider.peer_id()]).await;

    let mut body = chat_body(true);
    body["stream_options"] = json!({ "include_usage": true });
    let events = read_events(gateway.post_chat(&body).send().await.unwrap()).await;

    let usage: Vec<Value> = events
        .iter()
        .filter_map(|event| serde_json::from_str::<Value>(&event.data).ok())
        .filter(|chunk| chunk["usage"].is_object())
        .collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["usage"]["completion_tokens"], 4);
    assert_eq!(usage[0]["choices"], json!([]));
    assert_eq!(events.last().unwrap().data, "[DONE]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_chunk_built_from_receipt_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let provider = ManualProvider::start(Manual::Honest, EXPENSIVE).await;
    let gateway = Gateway::start(&[&provider.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[provider.peer_id()]).await;

    let mut body = chat_body(true);
    body["stream_options"] = json!({ "include_usage": true });
    let events = read_events(gateway.post_chat(&body).send().await.unwrap()).await;

    assert_eq!(streamed_text(&events), MANUAL_TEXT);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2].data).unwrap();
    assert_eq!(usage["object"], "chat.completion.chunk");
    assert_eq!(usage["id"], "chatcmpl-manual");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], json!({ "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5 }));

    let events = read_events(gateway.post_chat(&chat_body(true)).send().await.unwrap()).await;
    assert!(events.iter().all(|event| !event.data.contains("total_tokens")), "usage sent without include_usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_response_is_aggregated() {
    let dir = tempfile::tempdir().unwrap();
    let tool = ToolCallScript::new("get_weather", r#"{"city":"Oslo","unit":"celsius"}"#).with_fragment_chars(5);
    let provider = NodeProvider::start(script().with_tool_call(tool), EXPENSIVE).await;
    let gateway = Gateway::start(&[&provider.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[provider.peer_id()]).await;

    let mut body = chat_body(false);
    body["seed"] = json!(7);
    body["temperature"] = json!(0.25);
    body["response_format"] = json!({ "type": "text" });
    body["x_vendor_extension"] = json!({ "nested": [1, 2, 3] });
    let completion: Value = gateway.post_chat(&body).send().await.unwrap().json().await.unwrap();

    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    assert_eq!(completion["choices"][0]["message"]["content"], provider.upstream.script().full_text());
    assert_eq!(completion["usage"]["completion_tokens"], 4);
    assert!(completion["id"].is_string());

    let received = provider.upstream.requests().pop().unwrap();
    assert_eq!(received["seed"], 7);
    assert_eq!(received["temperature"], 0.25);
    assert_eq!(received["response_format"], body["response_format"]);
    assert_eq!(received["x_vendor_extension"], body["x_vendor_extension"]);

    body["tools"] = json!([{ "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object" } } }]);
    body["tool_choice"] = json!("auto");
    let completion: Value = gateway.post_chat(&body).send().await.unwrap().json().await.unwrap();
    let calls = completion["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Oslo","unit":"celsius"}"#);
    assert!(calls[0]["id"].is_string());
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(provider.upstream.requests().pop().unwrap()["tools"], body["tools"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_provider_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let refusing = NodeProvider::start(failing_script(FailureMode::HttpStatus(500)), CHEAP).await;
    let good = NodeProvider::start(script(), EXPENSIVE).await;
    let gateway = Gateway::start(&[&refusing.peer, &good.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[refusing.peer_id(), good.peer_id()]).await;

    let events = read_events(gateway.post_chat(&chat_body(true)).send().await.unwrap()).await;
    assert_eq!(streamed_text(&events), good.upstream.script().full_text());
    assert_eq!(refusing.upstream.chat_request_count(), 1);

    let refused = gateway.provider_entry(refusing.peer_id()).await;
    assert_eq!(refused["reputation"]["failures"]["refused"], 1);
    assert_eq!(refused["reputation"]["successes"], 0);
    let served = gateway.provider_entry(good.peer_id()).await;
    assert_eq!(served["reputation"]["successes"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_provider_sends_no_first_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let silent = NodeProvider::start(failing_script(FailureMode::HangBeforeResponse), CHEAP).await;
    let good = NodeProvider::start(script(), EXPENSIVE).await;
    let gateway = Gateway::start(&[&silent.peer, &good.peer], dir.path(), |config| config.first_chunk_timeout = Duration::from_secs(1)).await;
    gateway.wait_for_offers(&[silent.peer_id(), good.peer_id()]).await;

    let started = Instant::now();
    assert_chat_works(&gateway, &good).await;
    assert!(started.elapsed() < Duration::from_secs(5), "failover took {:?}", started.elapsed());
    assert_eq!(silent.upstream.chat_request_count(), 1);

    let entry = gateway.provider_entry(silent.peer_id()).await;
    assert_eq!(entry["reputation"]["failures"]["timeout"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_provider_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let mut unreachable = NodeProvider::start(script(), CHEAP).await;
    let good = NodeProvider::start(script(), EXPENSIVE).await;
    let gateway = Gateway::start(&[&unreachable.peer, &good.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[unreachable.peer_id(), good.peer_id()]).await;

    unreachable.stop().await;
    support::wait_for("the connection to close", || (!gateway.peer.handle.connected_peers().contains(&unreachable.peer_id())).then_some(())).await;
    assert!(gateway.peer.handle.with_book(|book| book.contains(&unreachable.peer_id(), now_ms())), "offer should outlive the connection");

    assert_chat_works(&gateway, &good).await;
    let entry = gateway.provider_entry(unreachable.peer_id()).await;
    assert_eq!(entry["reputation"]["failures"]["unreachable"], 1);
    assert!(!gateway.peer.handle.with_book(|book| book.contains(&unreachable.peer_id(), now_ms())), "offer of an unreachable provider was kept");

    // With the offer unreachable, the next request goes straight to the good provider.
    assert_chat_works(&gateway, &good).await;
    let entry = gateway.provider_entry(unreachable.peer_id()).await;
    assert_eq!(entry["reputation"]["failures"]["unreachable"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_provider_is_penalised() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = ManualProvider::start(Manual::GarbageFrame, CHEAP).await;
    let disordered = ManualProvider::start(Manual::ChunkBeforeStarted, CHEAP + 1).await;
    let good = NodeProvider::start(script(), EXPENSIVE).await;
    let gateway = Gateway::start(&[&garbage.peer, &disordered.peer, &good.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[garbage.peer_id(), disordered.peer_id(), good.peer_id()]).await;

    let events = read_events(gateway.post_chat(&chat_body(true)).send().await.unwrap()).await;
    assert_eq!(streamed_text(&events), good.upstream.script().full_text());

    for rogue in [garbage.peer_id(), disordered.peer_id()] {
        let entry = gateway.provider_entry(rogue).await;
        assert_eq!(entry["reputation"]["failures"]["malformed"], 1, "{rogue}");
        assert!(!gateway.peer.handle.with_book(|book| book.contains(&rogue, now_ms())), "{rogue} was not banned");
    }

    // Banned providers are not tried again.
    assert_chat_works(&gateway, &good).await;
    let entry = gateway.provider_entry(garbage.peer_id()).await;
    assert_eq!(entry["reputation"]["failures"]["malformed"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_providers_failing_gives_503() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeProvider::start(failing_script(FailureMode::HttpStatus(500)), CHEAP).await;
    let second = NodeProvider::start(failing_script(FailureMode::HttpStatus(503)), EXPENSIVE).await;
    let gateway = Gateway::start(&[&first.peer, &second.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[first.peer_id(), second.peer_id()]).await;

    for stream in [false, true] {
        let response = gateway.post_chat(&chat_body(stream)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "stream: {stream}");
        let error = error_of(response).await;
        assert_eq!(error["code"], "no_provider_available");
        assert!(error["message"].as_str().unwrap().contains(MODEL));
    }
    assert_eq!(first.upstream.chat_request_count(), 2);
    assert_eq!(second.upstream.chat_request_count(), 2);

    second.upstream.set_mode(FailureMode::Normal);
    assert_chat_works(&gateway, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rejected_by_every_provider_gives_400() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeProvider::start(failing_script(FailureMode::HttpStatus(400)), CHEAP).await;
    let second = NodeProvider::start(failing_script(FailureMode::HttpStatus(422)), EXPENSIVE).await;
    let gateway = Gateway::start(&[&first.peer, &second.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[first.peer_id(), second.peer_id()]).await;

    let response = gateway.post_chat(&chat_body(false)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = error_of(response).await;
    assert_eq!(error["code"], "rejected_by_provider");
    assert!(error["message"].as_str().unwrap().contains("HTTP 400"), "{error}");
    assert_eq!(first.upstream.chat_request_count(), 1);
    assert_eq!(second.upstream.chat_request_count(), 1);

    // The client's request was at fault, so neither provider is put in a cool-down.
    for provider in [first.peer_id(), second.peer_id()] {
        let reputation = gateway.provider_entry(provider).await["reputation"].clone();
        assert_eq!(reputation["failures"]["refused"], 1, "{reputation}");
        assert_eq!(reputation["consecutive_failures"], 0, "{reputation}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_failure_reaches_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let provider = NodeProvider::start(failing_script(FailureMode::CloseAfterChunks(2)), EXPENSIVE).await;
    let gateway = Gateway::start(&[&provider.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[provider.peer_id()]).await;

    let response = gateway.post_chat(&chat_body(true)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let events = read_events(response).await;
    assert_eq!(streamed_text(&events), "tok0 tok1 ");
    let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "provider_failed");
    assert!(events.iter().all(|event| event.data != "[DONE]"));

    let response = gateway.post_chat(&chat_body(false)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_of(response).await["code"], "provider_failed");

    let entry = gateway.provider_entry(provider.peer_id()).await;
    assert_eq!(entry["reputation"]["failures"]["mid_stream"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_mid_stream_ends_with_error_event() {
    let dir = tempfile::tempdir().unwrap();
    let provider = NodeProvider::start(script().with_gap(Duration::from_secs(3)), EXPENSIVE).await;
    let gateway = Gateway::start(&[&provider.peer], dir.path(), |config| config.idle_timeout = Duration::from_millis(500)).await;
    gateway.wait_for_offers(&[provider.peer_id()]).await;

    let started = Instant::now();
    let events = read_events(gateway.post_chat(&chat_body(true)).send().await.unwrap()).await;
    assert!(started.elapsed() < Duration::from_secs(3), "the idle timeout did not end the stream");
    assert_eq!(streamed_text(&events), "tok0 ");
    let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["code"], "provider_failed");

    let entry = gateway.provider_entry(provider.peer_id()).await;
    assert_eq!(entry["reputation"]["failures"]["mid_stream"], 1);
    assert_eq!(entry["reputation"]["failures"]["timeout"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_input_gets_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let provider = NodeProvider::start(script(), EXPENSIVE).await;
    let gateway = Gateway::start(&[&provider.peer], dir.path(), |config| config.max_body_bytes = 4096).await;
    gateway.wait_for_offers(&[provider.peer_id()]).await;
    let client = Gateway::client();
    let chat_url = format!("{}/v1/chat/completions", gateway.url);
    let own_origin = gateway.url.clone();

    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        ("missing key", client.post(&chat_url).json(&chat_body(false)), StatusCode::UNAUTHORIZED, "invalid_api_key"),
        ("wrong key", client.post(&chat_url).bearer_auth("sk-spare-wrong").json(&chat_body(false)), StatusCode::UNAUTHORIZED, "invalid_api_key"),
        ("wrong x-api-key", client.post(&chat_url).header("x-api-key", "nope").json(&chat_body(false)), StatusCode::UNAUTHORIZED, "invalid_api_key"),
        (
            "malformed JSON",
            client.post(&chat_url).bearer_auth(API_KEY).header("content-type", "application/json").body("{\"model\": \"test-model\", "),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "missing model",
            client.post(&chat_url).bearer_auth(API_KEY).json(&json!({ "messages": [] })),
            StatusCode::BAD_REQUEST,
            "missing_required_parameter",
        ),
        (
            "unknown model",
            client.post(&chat_url).bearer_auth(API_KEY).json(&json!({ "model": "no-such-model", "messages": [] })),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            "oversized body",
            client.post(&chat_url).bearer_auth(API_KEY).json(&json!({ "model": MODEL, "messages": [{ "role": "user", "content": "x".repeat(5000) }] })),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
        (
            "cross-origin request",
            client.post(&chat_url).bearer_auth(API_KEY).header("origin", "https://evil.example").json(&chat_body(false)),
            StatusCode::FORBIDDEN,
            "cross_origin_forbidden",
        ),
        (
            "cross-origin preflight",
            client.request(reqwest::Method::OPTIONS, &chat_url).header("origin", "http://localhost:1").header("access-control-request-method", "POST"),
            StatusCode::FORBIDDEN,
            "cross_origin_forbidden",
        ),
        (
            "cross-origin health check",
            client.get(format!("{}/health", gateway.url)).header("origin", "null"),
            StatusCode::FORBIDDEN,
            "cross_origin_forbidden",
        ),
        ("unknown path", client.get(format!("{}/v1/nothing", gateway.url)).bearer_auth(API_KEY), StatusCode::NOT_FOUND, "unknown_url"),
        ("wrong method", client.get(&chat_url).bearer_auth(API_KEY), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        ("provider list without key", client.get(format!("{}/spare/v1/providers", gateway.url)), StatusCode::UNAUTHORIZED, "invalid_api_key"),
        ("model list without key", client.get(format!("{}/v1/models", gateway.url)), StatusCode::UNAUTHORIZED, "invalid_api_key"),
    ];

    for (case, request, status, code) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{case}");
        assert_eq!(error_of(response).await["code"], code, "{case}");
        assert_chat_works(&gateway, &provider).await;
    }

    let health = client.get(format!("{}/health", gateway.url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "health needs no key");
    let same_origin = client.get(format!("{}/v1/models", gateway.url)).header("x-api-key", API_KEY).header("origin", own_origin).send().await.unwrap();
    assert_eq!(same_origin.status(), StatusCode::OK, "own origin with x-api-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_health_describe_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let cheap = NodeProvider::start(script(), CHEAP).await;
    let expensive = NodeProvider::start(script(), EXPENSIVE).await;
    let gateway = Gateway::start(&[&cheap.peer, &expensive.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[cheap.peer_id(), expensive.peer_id()]).await;

    let models = gateway.get_json("/v1/models").await;
    assert_eq!(models["object"], "list");
    let data = models["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], MODEL);
    assert_eq!(data[0]["object"], "model");
    assert_eq!(data[0]["owned_by"], "spare");
    assert_eq!(data[0]["providers"], 2);
    assert_eq!(data[0]["pricing"]["input_per_mtok"], CHEAP);

    let health: Value = Gateway::client().get(format!("{}/health", gateway.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["peers"], 2);
    assert_eq!(health["models"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reputation_survives_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let provider = NodeProvider::start(script(), EXPENSIVE).await;
    let mut gateway = Gateway::start(&[&provider.peer], dir.path(), |_| {}).await;
    gateway.wait_for_offers(&[provider.peer_id()]).await;

    assert_chat_works(&gateway, &provider).await;
    assert_chat_works(&gateway, &provider).await;
    let before = gateway.provider_entry(provider.peer_id()).await["reputation"].clone();
    assert_eq!(before["successes"], 2);
    assert!(before["ttft_ms"].as_f64().unwrap() > 0.0);
    gateway.stop().await;

    let restarted = Gateway::start(&[], dir.path(), |_| {}).await;
    let after = restarted.provider_entry(provider.peer_id()).await["reputation"].clone();
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_found_through_the_dht() {
    let dir = tempfile::tempdir().unwrap();
    let relay = support::Peer::start(vec![]).await;
    let relay_addr = relay.address().await.with(libp2p::multiaddr::Protocol::P2p(relay.peer_id()));
    let provider = ManualProvider::start(Manual::Honest, CHEAP).await;
    provider.peer.handle.dial(relay_addr.clone()).await.unwrap();
    support::wait_for("the provider to reach the relay", || relay.handle.connected_peers().contains(&provider.peer_id()).then_some(())).await;
    provider.peer.handle.start_providing(MODEL.into()).await.unwrap();

    let gateway = Gateway::start(&[&relay], dir.path(), |_| {}).await;
    support::wait_for("the gateway to reach the relay", || relay.handle.connected_peers().contains(&gateway.peer.peer_id()).then_some(())).await;
    // Kademlia's bootstrap connects the gateway to the provider, which hands over its offer.
    // Dropping that offer leaves the DHT provider record as the only way to find the model.
    gateway.wait_for_offers(&[provider.peer_id()]).await;
    gateway.peer.handle.with_book(|book| book.remove(&provider.peer_id()));
    assert!(gateway.peer.handle.with_book(|book| book.providers_of(MODEL, now_ms()).is_empty()));

    // The provider record may still be on its way to the relay, so 404 is retried for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    let response = loop {
        let response = gateway.post_chat(&chat_body(false)).send().await.unwrap();
        if response.status() != StatusCode::NOT_FOUND {
            break response;
        }
        assert!(Instant::now() < deadline, "the gateway never found the provider in the DHT");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(response.status(), StatusCode::OK);
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["choices"][0]["message"]["content"], MANUAL_TEXT);
    assert_eq!(completion["usage"]["completion_tokens"], 2, "usage comes from the receipt when no chunk has it");
    assert!(gateway.peer.handle.with_book(|book| book.contains(&provider.peer_id(), now_ms())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let slow = script().with_gap(Duration::from_millis(50));
    let first = NodeProvider::start(slow.clone(), CHEAP).await;
    let second = NodeProvider::start(slow, EXPENSIVE).await;
    let gateway = Gateway::start(&[&first.peer, &second.peer], dir.path(), |config| config.first_chunk_timeout = Duration::from_secs(10)).await;
    gateway.wait_for_offers(&[first.peer_id(), second.peer_id()]).await;

    // 16 requests against two providers that each serve 8 at once (the node's default).
    let requests = (0..16).map(|i| {
        let request = gateway.post_chat(&chat_body(i % 2 == 0));
        async move {
            let response = request.send().await.unwrap();
            if response.status() != StatusCode::OK {
                return format!("request {i} failed: {}", response.text().await.unwrap());
            }
            if i % 2 == 0 {
                streamed_text(&read_events(response).await)
            } else {
                let completion: Value = response.json().await.unwrap();
                completion["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
            }
        }
    });
    let texts = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(requests)).await.expect("requests finished in time");

    let expected = first.upstream.script().full_text();
    let providers = [gateway.provider_entry(first.peer_id()).await, gateway.provider_entry(second.peer_id()).await];
    assert!(texts.iter().all(|text| *text == expected), "{texts:?}\n{providers:?}");
    // A provider refuses a request over its limit before it calls the upstream.
    assert_eq!(first.upstream.chat_request_count() + second.upstream.chat_request_count(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_provider_is_skipped_after_failover() {
    let dir = tempfile::tempdir().unwrap();
    let silent = NodeProvider::start(failing_script(FailureMode::HangBeforeResponse), CHEAP).await;
    let good = NodeProvider::start(script(), EXPENSIVE).await;
    let timeout = Duration::from_secs(3);
    let mut gateway = Gateway::start(&[&silent.peer, &good.peer], dir.path(), |config| config.first_chunk_timeout = timeout).await;
    gateway.wait_for_offers(&[silent.peer_id(), good.peer_id()]).await;

    // The first request waits out the first-chunk timeout on the cheap silent provider.
    let started = Instant::now();
    assert_chat_works(&gateway, &good).await;
    assert!(started.elapsed() >= timeout, "the silent provider was not tried first");
    assert_eq!(silent.upstream.chat_request_count(), 1);

    // The silent provider is in a cool-down, so the next request goes to the good one at once.
    let started = Instant::now();
    assert_chat_works(&gateway, &good).await;
    assert!(started.elapsed() < timeout - Duration::from_secs(1), "second request took {:?}", started.elapsed());
    assert_eq!(silent.upstream.chat_request_count(), 1);
    let entry = gateway.provider_entry(silent.peer_id()).await;
    assert_eq!(entry["reputation"]["consecutive_failures"], 1);
    assert!(entry["reputation"]["cooldown_until_ms"].as_u64().unwrap() > now_ms());

    // The cool-down is stored, so it still applies after a restart.
    gateway.stop().await;
    let restarted = Gateway::start(&[&silent.peer, &good.peer], dir.path(), |config| config.first_chunk_timeout = timeout).await;
    restarted.wait_for_offers(&[silent.peer_id(), good.peer_id()]).await;
    let started = Instant::now();
    assert_chat_works(&restarted, &good).await;
    assert!(started.elapsed() < timeout - Duration::from_secs(1), "request after restart took {:?}", started.elapsed());
    assert_eq!(silent.upstream.chat_request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_providers_are_retried_not_blamed() {
    let dir = tempfile::tempdir().unwrap();
    let slow = script().with_gap(Duration::from_millis(100));
    let first = NodeProvider::start_with(slow.clone(), CHEAP, |settings| settings.max_concurrent = 2).await;
    let second = NodeProvider::start_with(slow, EXPENSIVE, |settings| settings.max_concurrent = 2).await;
    let gateway = Gateway::start(&[&first.peer, &second.peer], dir.path(), |config| config.first_chunk_timeout = Duration::from_secs(10)).await;
    gateway.wait_for_offers(&[first.peer_id(), second.peer_id()]).await;

    // 12 requests of about 0.4 s each against 4 slots in all: most find both providers busy.
    let requests = (0..12).map(|i| {
        let request = gateway.post_chat(&chat_body(false));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.text().await.unwrap(), i)
        }
    });
    let responses = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(requests)).await.expect("requests finished in time");
    for (status, body, i) in &responses {
        assert_eq!(*status, StatusCode::OK, "request {i}: {body}");
    }

    let mut busy = 0;
    let mut successes = 0;
    for provider in [first.peer_id(), second.peer_id()] {
        let reputation = gateway.provider_entry(provider).await["reputation"].clone();
        let failures: u64 = reputation["failures"].as_object().unwrap().values().map(|count| count.as_u64().unwrap()).sum();
        assert_eq!(failures, 0, "{reputation}");
        assert_eq!(reputation["consecutive_failures"], 0, "{reputation}");
        busy += reputation["busy"].as_u64().unwrap();
        successes += reputation["successes"].as_u64().unwrap();
    }
    assert_eq!(successes, 12);
    assert!(busy > 0, "no provider was ever busy, so the test proved nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let provider = NodeProvider::start(script(), EXPENSIVE).await;
    let gateway = Gateway::start(&[&provider.peer], dir.path(), |config| config.body_read_timeout = Duration::from_secs(1)).await;
    gateway.wait_for_offers(&[provider.peer_id()]).await;

    let mut stalled = gateway.connect().await;
    stalled.write_all(format!("{}{{\"model\": ", chat_request_head(1000)).as_bytes()).await.unwrap();
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut stalled)).await.expect("a response to the stalled request");
    assert!(started.elapsed() < Duration::from_secs(3), "408 took {:?}", started.elapsed());
    assert_eq!(status, 408);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "request_timeout");
    assert_eq!(error["error"]["type"], "invalid_request_error");

    assert_chat_works(&gateway, &provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_stalled_client() {
    let dir = tempfile::tempdir().unwrap();
    let provider = NodeProvider::start(script(), EXPENSIVE).await;
    let grace = Duration::from_secs(1);
    let mut gateway = Gateway::start(&[&provider.peer], dir.path(), |config| {
        config.body_read_timeout = Duration::from_secs(60);
        config.shutdown_grace = grace;
    })
    .await;
    gateway.wait_for_offers(&[provider.peer_id()]).await;
    assert_chat_works(&gateway, &provider).await;

    let mut stalled = gateway.connect().await;
    stalled.write_all(format!("{}{{\"model\": ", chat_request_head(1000)).as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), gateway.stop_http()).await.expect("serve returned");
    assert!(started.elapsed() < grace + Duration::from_secs(2), "shutdown took {:?}", started.elapsed());

    // The store was committed and its file released, so a new gateway opens it at once.
    let restarted = Gateway::start(&[], dir.path(), |_| {}).await;
    let entry = restarted.provider_entry(provider.peer_id()).await;
    assert_eq!(entry["reputation"]["successes"], 1);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_model_and_path_are_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&[], dir.path(), |config| config.dht_lookup_timeout = Duration::from_millis(200)).await;

    let model = "m".repeat(100_000);
    let response = gateway.post_chat(&json!({ "model": model, "messages": [] })).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = response.text().await.unwrap();
    assert!(body.len() < 1024, "404 body has {} bytes", body.len());
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");
    assert!(error["error"]["message"].as_str().unwrap().contains("100000 bytes"), "{body}");

    let path = format!("/{}", "p".repeat(60_000));
    let response = Gateway::client().get(format!("{}{path}", gateway.url)).bearer_auth(API_KEY).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = response.text().await.unwrap();
    assert!(body.len() < 1024, "404 body has {} bytes", body.len());
}
