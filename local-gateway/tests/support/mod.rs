//! Helpers for the end-to-end tests: real swarms on 127.0.0.1 (mDNS off, explicit bootstrap),
//! real providers (`spare_node` in front of a scripted upstream), a hand-written provider for
//! protocol violations that a real node never commits, and the gateway itself.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use spare_gateway::{GatewayConfig, GatewayError, serve_on};
use spare_gossip::identity::Identity;
use spare_gossip::infer::{MAX_REQUEST_FRAME_BYTES, MAX_RESPONSE_FRAME_BYTES, UsageReceipt};
use spare_gossip::offer::{OFFER_VERSION, now_ms};
use spare_gossip::{Api, INFER_PROTOCOL, InferRequest, ModelOffer, Multiaddr, Network, NetworkConfig, NetworkHandle, Offer, PeerId, ResponseFrame, framing};
use spare_node::{NodeSettings, Price};
use spare_testkit::{Script, ScriptedUpstream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The model every test provider serves.
pub const MODEL: &str = "test-model";
/// The API key every test gateway uses.
pub const API_KEY: &str = "sk-spare-0000000000000000000000000000000000000000000000000000000000000001";

/// A running swarm peer.
pub struct Peer {
    pub identity: Identity,
    pub handle: NetworkHandle,
    task: JoinHandle<()>,
}

impl Peer {
    pub async fn start(bootstrap: Vec<Multiaddr>) -> Self {
        let identity = Identity::generate().unwrap();
        let config = NetworkConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], bootstrap, mdns: false, ..Default::default() };
        let (network, handle) = Network::new(&identity, config).unwrap();
        let task = tokio::spawn(network.run());
        Self { identity, handle, task }
    }

    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    pub async fn address(&self) -> Multiaddr {
        wait_for("a listen address", || self.handle.listen_addrs().first().cloned()).await
    }

    /// Stops the swarm, closing every connection.
    pub async fn stop(&self) {
        self.handle.shutdown().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.task.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends logs to the test output when `RUST_LOG` is set, for example
/// `RUST_LOG=spare_gateway=debug cargo test -p spare-gateway -- --nocapture`.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    }
}

/// Polls `check` every 50 ms until it returns a value, for at most 20 s.
pub async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real provider: `spare_node::run` in front of a scripted upstream.
pub struct NodeProvider {
    pub peer: Peer,
    pub upstream: ScriptedUpstream,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl NodeProvider {
    pub async fn start(script: Script, price: u64) -> Self {
        Self::start_with(script, price, |_| {}).await
    }

    /// Starts a provider whose settings `configure` may change, for example `max_concurrent`.
    pub async fn start_with(script: Script, price: u64, configure: impl FnOnce(&mut NodeSettings)) -> Self {
        let upstream = ScriptedUpstream::start(script).await.unwrap();
        let peer = Peer::start(vec![]).await;
        peer.address().await;
        let settings = NodeSettings {
            upstreams: vec![upstream.base_url()],
            default_price: Price { input: price, output: price },
            offer_interval: Duration::from_secs(1),
            offer_ttl: Duration::from_secs(30),
            ..Default::default()
        };
        let mut settings = settings;
        configure(&mut settings);
        let (stop, stopped) = oneshot::channel::<()>();
        let key = peer.identity.signing_key.clone();
        let handle = peer.handle.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = spare_node::run(settings, key, handle, shutdown).await {
                panic!("provider failed: {e}");
            }
        });
        Self { peer, upstream, stop: Some(stop), task }
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer.peer_id()
    }

    /// Stops serving and closes the swarm; the offer stays in other peers' books until it expires.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.peer.stop().await;
    }
}

impl Drop for NodeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a hand-written provider does after it reads the request.
#[derive(Debug, Clone, Copy)]
pub enum Manual {
    /// Follows the protocol: `Started`, two chunks, a signed receipt, `Done`.
    Honest,
    /// `Started`, then a frame whose bytes are not CBOR.
    GarbageFrame,
    /// A `Chunk` without `Started` first.
    ChunkBeforeStarted,
}

/// The text the honest hand-written provider streams.
pub const MANUAL_TEXT: &str = "Hello from the DHT";

/// A provider written by hand on the stream protocol, for protocol violations a real node never
/// commits and for an offer that reaches no one by gossip.
pub struct ManualProvider {
    pub peer: Peer,
    task: JoinHandle<()>,
}

impl ManualProvider {
    /// Starts the provider and publishes its offer before it connects to anyone, so peers learn
    /// the offer only by fetching it.
    pub async fn start(behaviour: Manual, price: u64) -> Self {
        let peer = Peer::start(vec![]).await;
        let address = peer.address().await;
        let offer = Offer {
            version: OFFER_VERSION,
            public_key: peer.identity.signing_key.verifying_key().to_bytes(),
            seq: 1,
            issued_at_ms: now_ms(),
            ttl_secs: 60,
            capacity: 4,
            load: 0,
            addresses: vec![serde_bytes::ByteBuf::from(address.to_vec())],
            models: vec![ModelOffer { id: MODEL.into(), input_price: price, output_price: price, apis: vec![Api::OpenAiChat] }],
        };
        peer.handle.publish_offer(offer.sign(&peer.identity.signing_key).unwrap()).await.unwrap();

        let mut incoming = peer.handle.accept(INFER_PROTOCOL).unwrap();
        let key = peer.identity.signing_key.clone();
        let task = tokio::spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                let key = key.clone();
                tokio::spawn(async move {
                    let request: InferRequest = framing::read_frame(&mut stream, MAX_REQUEST_FRAME_BYTES).await.unwrap();
                    let started = ResponseFrame::Started { api: Api::OpenAiChat };
                    let frames = match behaviour {
                        Manual::Honest => {
                            let chunk = |content: &str| ResponseFrame::Chunk {
                                data: serde_json::to_vec(&serde_json::json!({
                                    "id": "chatcmpl-manual", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                                    "choices": [{ "index": 0, "delta": { "content": content }, "finish_reason": null }],
                                }))
                                .unwrap(),
                            };
                            let (first, second) = MANUAL_TEXT.split_at(5);
                            let receipt = UsageReceipt::sign(&key, &request.request_id, MODEL, 3, 2).unwrap();
                            vec![started, chunk(first), chunk(second), ResponseFrame::Usage(receipt), ResponseFrame::Done]
                        }
                        Manual::GarbageFrame => {
                            framing::write_frame(&mut stream, &started, 1024).await.unwrap();
                            futures::AsyncWriteExt::write_all(&mut stream, &[0, 0, 0, 3, 0xff, 0xfe, 0xfd]).await.unwrap();
                            vec![]
                        }
                        Manual::ChunkBeforeStarted => vec![ResponseFrame::Chunk { data: b"{}".to_vec() }],
                    };
                    for frame in frames {
                        framing::write_frame(&mut stream, &frame, MAX_RESPONSE_FRAME_BYTES).await.unwrap();
                    }
                    let _ = futures::AsyncWriteExt::close(&mut stream).await;
                });
            }
        });
        Self { peer, task }
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer.peer_id()
    }
}

impl Drop for ManualProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running gateway and its swarm.
pub struct Gateway {
    pub peer: Peer,
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

impl Gateway {
    /// Starts a gateway that bootstraps to `providers` and keeps reputation under `dir`.
    pub async fn start(providers: &[&Peer], dir: &Path, configure: impl FnOnce(&mut GatewayConfig)) -> Self {
        let mut bootstrap = Vec::new();
        for provider in providers {
            bootstrap.push(provider.address().await.with(libp2p::multiaddr::Protocol::P2p(provider.peer_id())));
        }
        let peer = Peer::start(bootstrap).await;
        init_tracing();

        let mut config = GatewayConfig::new(API_KEY.into(), dir.join("gateway.redb"));
        config.first_chunk_timeout = Duration::from_secs(2);
        config.idle_timeout = Duration::from_secs(5);
        config.dht_lookup_timeout = Duration::from_secs(3);
        configure(&mut config);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve_on(listener, config, peer.handle.clone(), shutdown));
        Self { peer, url, stop: Some(stop), task: Some(task) }
    }

    /// Waits until the gateway has an offer of [`MODEL`] from each of `providers`.
    pub async fn wait_for_offers(&self, providers: &[PeerId]) {
        wait_for("the providers' offers", || {
            let offering: Vec<PeerId> = self.peer.handle.with_book(|book| book.providers_of(MODEL, now_ms())).into_iter().map(|(peer, _)| peer).collect();
            providers.iter().all(|p| offering.contains(p)).then_some(())
        })
        .await;
    }

    /// Stops the HTTP server, which commits the reputation store, and the swarm.
    pub async fn stop(&mut self) {
        self.stop_http().await;
        self.peer.stop().await;
    }

    /// Sends the shutdown signal and waits until `serve_on` has returned.
    pub async fn stop_http(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Opens a raw TCP connection to the gateway, for clients that misbehave below HTTP.
    pub async fn connect(&self) -> tokio::net::TcpStream {
        let addr = self.url.strip_prefix("http://").unwrap();
        tokio::net::TcpStream::connect(addr).await.unwrap()
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    pub fn post_chat(&self, body: &Value) -> reqwest::RequestBuilder {
        Self::client().post(format!("{}/v1/chat/completions", self.url)).bearer_auth(API_KEY).json(body)
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = Self::client().get(format!("{}{path}", self.url)).bearer_auth(API_KEY).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// Returns the entry of `peer` in `GET /spare/v1/providers`.
    pub async fn provider_entry(&self, peer: PeerId) -> Value {
        let providers = self.get_json("/spare/v1/providers").await;
        let id = peer.to_string();
        providers["data"].as_array().unwrap().iter().find(|entry| entry["peer"] == id.as_str()).cloned().unwrap_or(Value::Null)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One server-sent event as the client saw it.
#[derive(Debug)]
pub struct SseEvent {
    pub data: String,
    pub at: Instant,
}

/// Reads a whole SSE response, noting when each event arrived.
pub async fn read_events(response: reqwest::Response) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        buffer.push_str(std::str::from_utf8(&bytes.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data = event.trim_end().strip_prefix("data: ").expect("every event is one data line").to_owned();
            events.push(SseEvent { data, at: Instant::now() });
        }
    }
    assert!(buffer.is_empty(), "incomplete event at the end: {buffer:?}");
    events
}

/// Concatenates `choices[0].delta.content` over the chunks of a stream.
pub fn streamed_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|event| event.data != "[DONE]")
        .filter_map(|event| serde_json::from_str::<Value>(&event.data).ok())
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

/// Builds the head of a chat request that declares a body of `content_length` bytes.
pub fn chat_request_head(content_length: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; returns the status and the body.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> (u16, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(head_end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let length: usize = head.lines().find_map(|line| line.strip_prefix("content-length: ")).unwrap().trim().parse().unwrap();
            if received.len() >= head_end + 4 + length {
                return (status, received[head_end + 4..head_end + 4 + length].to_vec());
            }
        }
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "connection closed before a whole response: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buffer[..read]);
    }
}

/// Builds a minimal chat request for [`MODEL`].
pub fn chat_body(stream: bool) -> Value {
    serde_json::json!({ "model": MODEL, "messages": [{ "role": "user", "content": "Hi" }], "stream": stream })
}
