//! A real provider node on loopback, in front of a scripted upstream, driven by a buyer peer
//! that speaks `/spare/infer/1` directly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use serde_json::{Value, json};
use spare_gossip::identity::Identity;
use spare_gossip::infer::{MAX_REQUEST_FRAME_BYTES, MAX_RESPONSE_FRAME_BYTES};
use spare_gossip::offer::now_ms;
use spare_gossip::{Api, ErrorCode, INFER_PROTOCOL, InferRequest, Network, NetworkConfig, NetworkHandle, PeerId, ResponseFrame, framing};
use spare_node::NodeSettings;
use spare_testkit::{FailureMode, Script, ScriptedUpstream};

struct Setup {
    upstream: ScriptedUpstream,
    provider: PeerId,
    provider_key: [u8; 32],
    buyer: NetworkHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn loopback() -> NetworkConfig {
    NetworkConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], mdns: false, ..Default::default() }
}

async fn setup(script: Script, max_concurrent: u32) -> Setup {
    setup_with(script, |settings| settings.max_concurrent = max_concurrent).await
}

async fn setup_with(script: Script, configure: impl FnOnce(&mut NodeSettings)) -> Setup {
    let upstream = ScriptedUpstream::start(script).await.unwrap();
    let node_identity = Identity::generate().unwrap();
    let (node_network, node_handle) = Network::new(&node_identity, loopback()).unwrap();
    let mut tasks = vec![tokio::spawn(node_network.run())];
    let mut settings = NodeSettings { upstreams: vec![upstream.base_url()], offer_interval: Duration::from_millis(300), offer_ttl: Duration::from_secs(5), ..Default::default() };
    configure(&mut settings);
    let key = node_identity.signing_key.clone();
    let handle = node_handle.clone();
    tasks.push(tokio::spawn(async move {
        spare_node::run(settings, key, handle, std::future::pending()).await.unwrap();
    }));

    let node_addr = wait_for(|| node_handle.listen_addrs().first().cloned()).await;
    let buyer_identity = Identity::generate().unwrap();
    let (buyer_network, buyer) = Network::new(&buyer_identity, NetworkConfig { bootstrap: vec![node_addr], ..loopback() }).unwrap();
    tasks.push(tokio::spawn(buyer_network.run()));

    let provider = node_identity.peer_id();
    wait_for(|| buyer.with_book(|book| book.contains(&provider, now_ms())).then_some(())).await;
    Setup { upstream, provider, provider_key: node_identity.signing_key.verifying_key().to_bytes(), buyer, tasks }
}

async fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn request(model: &str, body: &Value) -> InferRequest {
    InferRequest { request_id: format!("req-{}", rand_suffix()), model: model.into(), api: Api::OpenAiChat, body: serde_json::to_vec(body).unwrap(), voucher: None }
}

fn rand_suffix() -> u64 {
    now_ms() ^ u64::from(std::process::id())
}

/// Sends one request and collects every response frame with its arrival time.
async fn call(setup: &Setup, request: &InferRequest) -> Vec<(Instant, ResponseFrame)> {
    let mut stream = setup.buyer.open_stream(setup.provider, INFER_PROTOCOL).await.unwrap();
    framing::write_frame(&mut stream, request, MAX_REQUEST_FRAME_BYTES).await.unwrap();
    read_all(&mut stream).await
}

async fn read_all(stream: &mut libp2p::Stream) -> Vec<(Instant, ResponseFrame)> {
    let mut frames = Vec::new();
    loop {
        match framing::read_frame::<_, ResponseFrame>(stream, MAX_RESPONSE_FRAME_BYTES).await {
            Ok(frame) => {
                let last = matches!(frame, ResponseFrame::Done | ResponseFrame::Error { .. });
                frames.push((Instant::now(), frame));
                if last {
                    return frames;
                }
            }
            Err(spare_gossip::Error::Closed) => return frames,
            Err(e) => panic!("bad frame from provider: {e}"),
        }
    }
}

fn content_of(frames: &[(Instant, ResponseFrame)]) -> String {
    let mut text = String::new();
    for (_, frame) in frames {
        if let ResponseFrame::Chunk { data } = frame {
            let chunk: Value = serde_json::from_slice(data).unwrap();
            if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str() {
                text.push_str(content);
            }
        }
    }
    text
}

fn error_code(frames: &[(Instant, ResponseFrame)]) -> Option<ErrorCode> {
    frames.iter().find_map(|(_, f)| match f {
        ResponseFrame::Error { code, .. } => Some(*code),
        _ => None,
    })
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test]
async fn chunks_stream_back_before_the_answer_ends() {
    let script = Script::new("m").with_chunks(5).with_gap(Duration::from_millis(200)).with_prompt_tokens(11);
    let setup = setup(script.clone(), 4).await;

    let frames = call(&setup, &request("m", &chat("m"))).await;

    assert!(matches!(frames.first(), Some((_, ResponseFrame::Started { api: Api::OpenAiChat }))));
    assert!(matches!(frames.last(), Some((_, ResponseFrame::Done))));
    assert_eq!(content_of(&frames), script.full_text());
    let first_chunk = frames.iter().find(|(_, f)| matches!(f, ResponseFrame::Chunk { .. })).unwrap().0;
    let done = frames.last().unwrap().0;
    assert!(done - first_chunk >= Duration::from_millis(600), "the first chunk waited for the whole answer");

    let receipt = frames.iter().find_map(|(_, f)| if let ResponseFrame::Usage(r) = f { Some(r.clone()) } else { None }).unwrap();
    receipt.verify(&setup.provider_key).unwrap();
    assert_eq!(receipt.input_tokens, 11);
    assert_eq!(receipt.output_tokens, 5);
    assert_eq!(receipt.model, "m");
}

#[tokio::test]
async fn request_body_passes_through_intact() {
    let setup = setup(Script::new("m"), 4).await;
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "stop": ["\n\n", "END"],
        "seed": 42,
        "temperature": 0.0,
        "x_vendor_extension": {"nested": [1, 2, 3]},
        "stream": false
    });

    let frames = call(&setup, &request("m", &body)).await;
    assert!(matches!(frames.last(), Some((_, ResponseFrame::Done))));

    let received = setup.upstream.requests().pop().unwrap();
    let mut expected = body.clone();
    expected["stream"] = json!(true);
    expected["stream_options"] = json!({"include_usage": true});
    assert_eq!(received, expected);
}

#[tokio::test]
async fn busy_provider_refuses_beyond_its_limit() {
    let script = Script::new("m").with_time_to_first_token(Duration::from_millis(1500));
    let setup = setup(script, 1).await;

    let first_request = request("m", &chat("m"));
    let first = call(&setup, &first_request);
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        call(&setup, &request("m", &chat("m"))).await
    };
    let (first, second) = tokio::join!(first, second);

    assert!(matches!(first.last(), Some((_, ResponseFrame::Done))));
    assert_eq!(error_code(&second), Some(ErrorCode::Busy));
}

#[tokio::test]
async fn bad_requests_get_error_frames_and_serving_continues() {
    let setup = setup(Script::new("m"), 4).await;

    let unknown = call(&setup, &request("not-served", &chat("not-served"))).await;
    assert_eq!(error_code(&unknown), Some(ErrorCode::ModelNotFound));

    let mut with_voucher = request("m", &chat("m"));
    with_voucher.voucher = Some(vec![1, 2, 3]);
    assert_eq!(error_code(&call(&setup, &with_voucher).await), Some(ErrorCode::BadRequest));

    let mut not_json = request("m", &chat("m"));
    not_json.body = b"{not json".to_vec();
    assert_eq!(error_code(&call(&setup, &not_json).await), Some(ErrorCode::BadRequest));

    let mut garbage = setup.buyer.open_stream(setup.provider, INFER_PROTOCOL).await.unwrap();
    garbage.write_all(&[0, 0, 0, 4, 0xff, 0xfe, 0xfd, 0xfc]).await.unwrap();
    garbage.flush().await.unwrap();
    assert_eq!(error_code(&read_all(&mut garbage).await), Some(ErrorCode::BadRequest));

    let mut oversized = setup.buyer.open_stream(setup.provider, INFER_PROTOCOL).await.unwrap();
    oversized.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    oversized.flush().await.unwrap();
    assert_eq!(error_code(&read_all(&mut oversized).await), Some(ErrorCode::BadRequest));

    let good = call(&setup, &request("m", &chat("m"))).await;
    assert!(matches!(good.last(), Some((_, ResponseFrame::Done))));
}

#[tokio::test]
async fn upstream_failures_map_to_error_codes() {
    let setup = setup(Script::new("m"), 4).await;

    setup.upstream.set_mode(FailureMode::HttpStatus(500));
    assert_eq!(error_code(&call(&setup, &request("m", &chat("m"))).await), Some(ErrorCode::Upstream));

    setup.upstream.set_mode(FailureMode::HttpStatus(400));
    assert_eq!(error_code(&call(&setup, &request("m", &chat("m"))).await), Some(ErrorCode::BadRequest));

    setup.upstream.set_mode(FailureMode::CloseAfterChunks(2));
    let broken = call(&setup, &request("m", &chat("m"))).await;
    assert_eq!(error_code(&broken), Some(ErrorCode::Upstream));
    assert!(broken.iter().any(|(_, f)| matches!(f, ResponseFrame::Chunk { .. })));

    setup.upstream.set_mode(FailureMode::Normal);
    let good = call(&setup, &request("m", &chat("m"))).await;
    assert!(matches!(good.last(), Some((_, ResponseFrame::Done))));
}

#[tokio::test]
async fn stalled_request_frames_hold_permits_not_memory() {
    let setup = setup_with(Script::new("m"), |settings| {
        settings.max_concurrent = 2;
        settings.request_read_timeout = Duration::from_secs(2);
    })
    .await;

    // Two streams announce 30 MiB request frames, send 1 MiB of them and stall.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = setup.buyer.open_stream(setup.provider, INFER_PROTOCOL).await.unwrap();
        stream.write_all(&(30u32 << 20).to_be_bytes()).await.unwrap();
        stream.write_all(&vec![0u8; 1 << 20]).await.unwrap();
        stream.flush().await.unwrap();
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Each stalled frame holds a permit, so a third request is refused without being read.
    let refused = call(&setup, &request("m", &chat("m"))).await;
    assert_eq!(error_code(&refused), Some(ErrorCode::Busy));

    // Once the stalled reads time out, their permits return.
    for stream in &mut stalled {
        assert_eq!(error_code(&read_all(stream).await), Some(ErrorCode::BadRequest));
    }
    let good = call(&setup, &request("m", &chat("m"))).await;
    assert!(matches!(good.last(), Some((_, ResponseFrame::Done))));
}

#[tokio::test]
async fn aliased_model_is_served_under_its_canonical_id() {
    let setup = setup_with(Script::new("/models/gemma.gguf"), |settings| {
        settings.aliases.insert("/models/gemma.gguf".into(), "gemma".into());
    })
    .await;

    let frames = call(&setup, &request("gemma", &chat("gemma"))).await;
    assert!(matches!(frames.last(), Some((_, ResponseFrame::Done))));

    assert_eq!(setup.upstream.requests()[0]["model"], "/models/gemma.gguf");
    for (_, frame) in &frames {
        if let ResponseFrame::Chunk { data } = frame {
            let chunk: Value = serde_json::from_slice(data).unwrap();
            assert_eq!(chunk["model"], "gemma");
        }
    }
    let unknown = call(&setup, &request("/models/gemma.gguf", &chat("x"))).await;
    assert_eq!(error_code(&unknown), Some(ErrorCode::ModelNotFound));
}

#[tokio::test]
async fn one_peer_cannot_stall_every_slot() {
    let setup = setup_with(Script::new("m"), |settings| {
        settings.max_concurrent = 8;
        settings.request_read_timeout = Duration::from_secs(5);
    })
    .await;
    let limit = spare_node::serve::reads_per_peer_limit(8);

    // The buyer stalls more request frames than it may have in flight.
    let mut stalled = Vec::new();
    for _ in 0..limit + 2 {
        let mut stream = setup.buyer.open_stream(setup.provider, INFER_PROTOCOL).await.unwrap();
        stream.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for stream in stalled.iter_mut().skip(limit) {
        assert_eq!(error_code(&read_all(stream).await), Some(ErrorCode::Busy));
    }

    // Another peer still finds free slots.
    let other_identity = Identity::generate().unwrap();
    let node_addr = setup.buyer.with_book(|book| book.get(&setup.provider, now_ms()).unwrap().multiaddrs()[0].clone());
    let (other_network, other) = Network::new(&other_identity, NetworkConfig { bootstrap: vec![node_addr], ..loopback() }).unwrap();
    let other_task = tokio::spawn(other_network.run());
    wait_for(|| other.with_book(|book| book.contains(&setup.provider, now_ms())).then_some(())).await;

    let mut stream = other.open_stream(setup.provider, INFER_PROTOCOL).await.unwrap();
    framing::write_frame(&mut stream, &request("m", &chat("m")), MAX_REQUEST_FRAME_BYTES).await.unwrap();
    let frames = read_all(&mut stream).await;
    assert!(matches!(frames.last(), Some((_, ResponseFrame::Done))), "{frames:?}");
    other_task.abort();
}
