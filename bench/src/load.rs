//! The load generator: a fixed number of streamed chat completions at a fixed concurrency,
//! timed from the client.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use crate::stats::Sample;

/// An OpenAI-compatible endpoint under test.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Path name shown in the results, such as `direct`.
    pub(crate) name: String,
    /// Full URL of `POST /v1/chat/completions`.
    pub(crate) chat_url: String,
    /// Bearer token sent with every request, if the endpoint needs one.
    pub(crate) api_key: Option<String>,
}

/// How many requests to send and how.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadPlan {
    /// Requests to send in total.
    pub(crate) requests: usize,
    /// Requests in flight at once.
    pub(crate) concurrency: usize,
    /// No new request starts after this much time; requests in flight still finish.
    pub(crate) time_limit: Duration,
    /// A request that has not finished after this long counts as failed.
    pub(crate) request_timeout: Duration,
    /// Content deltas a complete response has; a different count is an error.
    pub(crate) expected_chunks: usize,
}

/// Samples of one run and its wall-clock time from first send to last byte.
#[derive(Debug)]
pub(crate) struct LoadResult {
    pub(crate) samples: Vec<Sample>,
    pub(crate) wall: Duration,
}

/// Builds the streamed chat completion request body sent on every path.
pub(crate) fn request_body(model: &str) -> Bytes {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Count to sixteen."}],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    Bytes::from(body.to_string())
}

/// Sends `plan.requests` requests from `plan.concurrency` workers and records each one.
pub(crate) async fn run_load(
    client: &reqwest::Client,
    target: &Target,
    body: &Bytes,
    plan: LoadPlan,
) -> LoadResult {
    let next_request = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop_starting_at = started + plan.time_limit;

    let mut workers = Vec::with_capacity(plan.concurrency);
    for _ in 0..plan.concurrency.max(1) {
        let client = client.clone();
        let target = target.clone();
        let body = body.clone();
        let next_request = Arc::clone(&next_request);
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while next_request.fetch_add(1, Ordering::Relaxed) < plan.requests
                && Instant::now() < stop_starting_at
            {
                let request = send_one(&client, &target, body.clone(), plan.expected_chunks);
                let sample = match tokio::time::timeout(plan.request_timeout, request).await {
                    Ok(sample) => sample,
                    Err(_elapsed) => Sample {
                        time_to_first_token: None,
                        content_chunks: 0,
                        error: Some(format!("timed out after {:?}", plan.request_timeout)),
                    },
                };
                samples.push(sample);
            }
            samples
        }));
    }

    let mut samples = Vec::with_capacity(plan.requests);
    for worker in workers {
        match worker.await {
            Ok(worker_samples) => samples.extend(worker_samples),
            Err(join_error) => samples.push(Sample {
                time_to_first_token: None,
                content_chunks: 0,
                error: Some(format!("load worker failed: {join_error}")),
            }),
        }
    }
    LoadResult {
        samples,
        wall: started.elapsed(),
    }
}

/// Sends one streamed request and times its first content delta.
async fn send_one(
    client: &reqwest::Client,
    target: &Target,
    body: Bytes,
    expected_chunks: usize,
) -> Sample {
    let started = Instant::now();
    let mut sample = Sample {
        time_to_first_token: None,
        content_chunks: 0,
        error: None,
    };

    let mut request = client
        .post(&target.chat_url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(api_key) = &target.api_key {
        request = request.bearer_auth(api_key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            sample.error = Some(format!("request failed: {error}"));
            return sample;
        }
    };
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        sample.error = Some(format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
        return sample;
    }

    let mut parser = spare_node::sse::SseParser::default();
    let mut done = false;
    let mut body = response.bytes_stream();
    while let Some(item) = body.next().await {
        let bytes = match item {
            Ok(bytes) => bytes,
            Err(error) => {
                sample.error = Some(format!("response body failed: {error}"));
                return sample;
            }
        };
        if let Err(error) = parser.push(&bytes) {
            sample.error = Some(error.to_string());
            return sample;
        }
        while let Some(data) = parser.next_data() {
            if data == "[DONE]" {
                done = true;
            } else if has_content(&data) {
                sample.content_chunks += 1;
                sample
                    .time_to_first_token
                    .get_or_insert_with(|| started.elapsed());
            }
        }
    }

    if !done {
        sample.error = Some("stream ended without data: [DONE]".to_owned());
    } else if sample.content_chunks != expected_chunks {
        sample.error = Some(format!(
            "received {} content chunks, expected {expected_chunks}",
            sample.content_chunks
        ));
    }
    sample
}

/// Returns whether an SSE `data` payload is a chunk with a non-empty content delta.
fn has_content(data: &str) -> bool {
    let Ok(chunk) = serde_json::from_str::<Value>(data) else {
        return false;
    };
    chunk
        .pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
        .is_some_and(|content| !content.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    use spare_testkit::{FailureMode, Script, ScriptedUpstream};

    async fn load_against(script: Script, requests: usize, concurrency: usize) -> LoadResult {
        let upstream = ScriptedUpstream::start(script.clone()).await.unwrap();
        let target = Target {
            name: "direct".to_owned(),
            chat_url: format!("{}/chat/completions", upstream.base_url()),
            api_key: Some("unused".to_owned()),
        };
        let plan = LoadPlan {
            requests,
            concurrency,
            time_limit: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            expected_chunks: script.chunks,
        };
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let body = request_body(&script.models[0]);
        let result = run_load(&client, &target, &body, plan).await;
        assert_eq!(upstream.chat_request_count(), requests);
        result
    }

    #[tokio::test]
    async fn load_times_first_token_and_counts_chunks() {
        let ttft = Duration::from_millis(20);
        let script = Script::new("m")
            .with_chunks(4)
            .with_time_to_first_token(ttft);
        let result = load_against(script, 6, 3).await;

        assert_eq!(result.samples.len(), 6);
        for sample in &result.samples {
            assert_eq!(sample.error, None);
            assert_eq!(sample.content_chunks, 4);
            let measured = sample.time_to_first_token.unwrap();
            assert!(
                measured >= ttft,
                "time to first token {measured:?} is below the scripted {ttft:?}"
            );
        }
        assert!(
            result.wall >= ttft * 2,
            "6 requests on 3 clients take two waves"
        );
    }

    #[tokio::test]
    async fn load_marks_broken_streams_failed() {
        let script = Script::new("m")
            .with_chunks(6)
            .with_mode(FailureMode::CloseAfterChunks(2));
        let result = load_against(script, 2, 1).await;
        for sample in &result.samples {
            assert_eq!(sample.content_chunks, 2);
            let error = sample.error.as_deref().unwrap();
            assert!(error.contains("response body failed"), "{error}");
        }
    }

    #[tokio::test]
    async fn load_marks_http_errors_and_short_streams_failed() {
        let failing = load_against(
            Script::new("m").with_mode(FailureMode::HttpStatus(500)),
            2,
            2,
        )
        .await;
        for sample in &failing.samples {
            assert!(sample.error.as_deref().unwrap().starts_with("HTTP 500"));
            assert_eq!(sample.time_to_first_token, None);
        }

        let malformed = Script::new("m")
            .with_chunks(3)
            .with_mode(FailureMode::MalformedSseAfterChunks(1));
        let short = load_against(malformed, 1, 1).await;
        assert_eq!(
            short.samples[0].error.as_deref(),
            Some("received 1 content chunks, expected 3")
        );
    }

    #[test]
    fn content_detection_skips_role_and_usage_chunks() {
        assert!(!has_content(
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(has_content(
            r#"{"choices":[{"delta":{"content":"tok0 "}}]}"#
        ));
        assert!(!has_content(
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(!has_content("not json"));
    }
}
