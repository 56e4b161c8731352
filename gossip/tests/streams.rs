//! Raw request streams between two real swarms on loopback: bursts reach a slow acceptor,
//! opens fail cleanly for unsupported protocols and unreachable peers, and a full acceptor
//! queue drops streams without stalling the swarm.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::StreamProtocol;
use spare_gossip::identity::Identity;
use spare_gossip::streams::StreamConfig;
use spare_gossip::{Multiaddr, Network, NetworkConfig, NetworkHandle, PeerId};

const BURST_PROTOCOL: StreamProtocol = StreamProtocol::new("/spare/test/burst/1");
const BURST_SIZE: u32 = 200;
const QUEUE_PROTOCOL: StreamProtocol = StreamProtocol::new("/spare/test/queue/1");
const ECHO_PROTOCOL: StreamProtocol = StreamProtocol::new("/spare/test/echo/1");

struct Peer {
    handle: NetworkHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn loopback() -> NetworkConfig {
    NetworkConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], mdns: false, ..Default::default() }
}

fn start_peer() -> Peer {
    start_peer_with(StreamConfig::default())
}

fn start_peer_with(stream_config: StreamConfig) -> Peer {
    let identity = Identity::generate().unwrap();
    let (network, handle) = Network::with_stream_config(&identity, loopback(), stream_config).unwrap();
    let task = tokio::spawn(network.run());
    Peer { handle, task }
}

async fn address_of(peer: &Peer) -> Multiaddr {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(addr) = peer.handle.listen_addrs().first() {
            return addr.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for a listen address");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Dials `to` from `from` and waits until the connection is up.
async fn connect(from: &Peer, to: &Peer) {
    let to_id = to.handle.local_peer_id();
    let addr = address_of(to).await.with(libp2p::multiaddr::Protocol::P2p(to_id));
    from.handle.dial(addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !from.handle.connected_peers().contains(&to_id) {
        assert!(tokio::time::Instant::now() < deadline, "timed out connecting to {to_id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_reaches_slow_acceptor() {
    let provider = start_peer();
    let buyer = start_peer();
    connect(&buyer, &provider).await;
    let provider_id = provider.handle.local_peer_id();
    let mut incoming = provider.handle.accept(BURST_PROTOCOL).unwrap();

    // The acceptor is registered but does not take streams until 200 ms after the burst began.
    let reader = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut seen = HashSet::new();
        let collect = async {
            while let Some((_peer, mut stream)) = incoming.next().await {
                let mut index = [0u8; 4];
                stream.read_exact(&mut index).await.unwrap();
                seen.insert(u32::from_be_bytes(index));
                if seen.len() == BURST_SIZE as usize {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), collect).await;
        seen
    });

    let opens = (0..BURST_SIZE).map(|index| {
        let handle = buyer.handle.clone();
        async move {
            let mut stream = handle.open_stream(provider_id, BURST_PROTOCOL).await?;
            stream.write_all(&index.to_be_bytes()).await?;
            stream.flush().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(stream)
        }
    });
    let results = futures::future::join_all(opens).await;
    let failed: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string())).collect();
    assert!(failed.is_empty(), "{} of {BURST_SIZE} opens failed, first: {:?}", failed.len(), failed.first());

    let seen = reader.await.unwrap();
    assert_eq!(seen.len(), BURST_SIZE as usize, "the acceptor received {} of {BURST_SIZE} streams", seen.len());
    drop(results);
}

#[tokio::test]
async fn open_fails_for_unsupported_protocol() {
    let provider = start_peer();
    let buyer = start_peer();
    connect(&buyer, &provider).await;
    let unsupported = StreamProtocol::new("/spare/test/unsupported/1");

    let started = tokio::time::Instant::now();
    let error = buyer.handle.open_stream(provider.handle.local_peer_id(), unsupported).await.unwrap_err().to_string();

    assert!(error.contains("does not support /spare/test/unsupported/1"), "unexpected error: {error}");
    assert!(started.elapsed() < Duration::from_secs(5), "the rejection took {:?}", started.elapsed());
}

#[tokio::test]
async fn open_fails_after_acceptor_is_dropped() {
    let provider = start_peer();
    let buyer = start_peer();
    connect(&buyer, &provider).await;
    let provider_id = provider.handle.local_peer_id();

    let incoming = provider.handle.accept(ECHO_PROTOCOL).unwrap();
    assert!(provider.handle.accept(ECHO_PROTOCOL).is_err(), "a second acceptor for one protocol was allowed");
    drop(incoming);

    let error = buyer.handle.open_stream(provider_id, ECHO_PROTOCOL).await.unwrap_err().to_string();
    assert!(error.contains("does not support"), "unexpected error: {error}");
    assert!(provider.handle.accept(ECHO_PROTOCOL).is_ok(), "the protocol stayed taken after its acceptor was dropped");
}

#[tokio::test]
async fn open_dials_peer_from_known_address() {
    let provider = start_peer();
    let buyer = start_peer();
    let provider_id = provider.handle.local_peer_id();
    let mut incoming = provider.handle.accept(ECHO_PROTOCOL).unwrap();
    buyer.handle.add_addresses(provider_id, vec![address_of(&provider).await]).await.unwrap();
    assert!(buyer.handle.connected_peers().is_empty(), "the peers connected before any stream was opened");

    let mut stream = buyer.handle.open_stream(provider_id, ECHO_PROTOCOL).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    stream.flush().await.unwrap();

    let (peer, mut inbound) = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await.unwrap().unwrap();
    let mut received = [0u8; 4];
    inbound.read_exact(&mut received).await.unwrap();
    assert_eq!(peer, buyer.handle.local_peer_id());
    assert_eq!(&received, b"ping");
}

#[tokio::test]
async fn open_fails_for_peer_without_address() {
    let buyer = start_peer();
    let unknown = PeerId::random();

    let started = tokio::time::Instant::now();
    let error = buyer.handle.open_stream(unknown, ECHO_PROTOCOL).await.unwrap_err().to_string();

    assert!(error.contains(&format!("dialling peer {unknown} failed")), "unexpected error: {error}");
    assert!(started.elapsed() < Duration::from_secs(5), "the dial failure took {:?}", started.elapsed());
}

#[tokio::test]
async fn open_fails_for_closed_port() {
    let buyer = start_peer();
    let unreachable = PeerId::random();
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{closed_port}").parse().unwrap();
    buyer.handle.add_addresses(unreachable, vec![addr]).await.unwrap();

    let started = tokio::time::Instant::now();
    let error = buyer.handle.open_stream(unreachable, ECHO_PROTOCOL).await.unwrap_err().to_string();

    assert!(error.contains(&format!("dialling peer {unreachable} failed")), "unexpected error: {error}");
    assert!(started.elapsed() < Duration::from_secs(5), "the dial failure took {:?}", started.elapsed());
}

#[tokio::test]
async fn open_times_out_on_silent_peer() {
    let open_timeout = Duration::from_millis(500);
    let buyer = start_peer_with(StreamConfig { open_timeout, ..StreamConfig::default() });

    // A TCP listener that accepts connections but never sends a byte of the security handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let accepting = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let silent_peer = PeerId::random();
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    buyer.handle.add_addresses(silent_peer, vec![addr]).await.unwrap();

    let started = tokio::time::Instant::now();
    let error = buyer.handle.open_stream(silent_peer, ECHO_PROTOCOL).await.unwrap_err().to_string();
    let elapsed = started.elapsed();
    accepting.abort();

    assert!(error.contains("timed out after 500ms"), "unexpected error: {error}");
    assert!(elapsed >= open_timeout, "the open failed after {elapsed:?}, before the timeout");
    assert!(elapsed < Duration::from_secs(3), "the open failed only after {elapsed:?}");
}

#[tokio::test]
async fn open_stream_keeps_idle_connection_alive() {
    let identity = Identity::generate().unwrap();
    let config = NetworkConfig { idle_connection_timeout: Duration::from_millis(200), ..loopback() };
    let (network, handle) = Network::new(&identity, config).unwrap();
    let provider = Peer { handle, task: tokio::spawn(network.run()) };
    let buyer = start_peer();
    let provider_id = provider.handle.local_peer_id();
    let mut incoming = provider.handle.accept(ECHO_PROTOCOL).unwrap();
    connect(&buyer, &provider).await;

    let mut stream = buyer.handle.open_stream(provider_id, ECHO_PROTOCOL).await.unwrap();
    stream.write_all(b"a").await.unwrap();
    stream.flush().await.unwrap();
    let (_, mut inbound) = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await.unwrap().unwrap();

    // Five idle timeouts pass with the stream open but silent.
    tokio::time::sleep(Duration::from_secs(1)).await;

    stream.write_all(b"b").await.unwrap();
    stream.flush().await.unwrap();
    let mut received = [0u8; 2];
    inbound.read_exact(&mut received).await.unwrap();
    assert_eq!(&received, b"ab");
    assert!(provider.handle.connected_peers().contains(&buyer.handle.local_peer_id()), "the connection closed while a stream was open");
}

/// A tracing writer that appends every log line to a shared buffer.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Reads one byte with a deadline: `Some(true)` when the stream is closed or reset,
/// `None` when it stays open and silent.
async fn is_closed(stream: &mut libp2p::Stream) -> Option<bool> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => Some(true),
        Ok(Ok(_)) => Some(false),
        Err(_) => None,
    }
}

// Single-threaded, so the swarm tasks log into this test's thread-local subscriber.
#[tokio::test]
async fn full_queue_drops_streams_with_warning() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_ansi(false).with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let provider = start_peer_with(StreamConfig { accept_queue_capacity: 2, ..StreamConfig::default() });
    let buyer = start_peer();
    connect(&buyer, &provider).await;
    let provider_id = provider.handle.local_peer_id();
    let mut queued = provider.handle.accept(QUEUE_PROTOCOL).unwrap();
    let mut echo = provider.handle.accept(ECHO_PROTOCOL).unwrap();

    // The test does not read `queued` yet, so two streams fill its queue and three are dropped.
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut stream = buyer.handle.open_stream(provider_id, QUEUE_PROTOCOL).await.unwrap();
        let _ = stream.write_all(b"x").await;
        let _ = stream.flush().await;
        streams.push(stream);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while provider.handle.dropped_inbound_streams() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "only {} streams were dropped", provider.handle.dropped_inbound_streams());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(provider.handle.dropped_inbound_streams(), 3);

    let mut closed = 0;
    for stream in &mut streams {
        if is_closed(stream).await == Some(true) {
            closed += 1;
        }
    }
    assert_eq!(closed, 3, "the buyer saw {closed} of 5 streams closed");

    // The swarm still serves other protocols while the full queue waits.
    let mut stream = buyer.handle.open_stream(provider_id, ECHO_PROTOCOL).await.unwrap();
    stream.write_all(b"ok").await.unwrap();
    stream.flush().await.unwrap();
    let (_, mut inbound) = tokio::time::timeout(Duration::from_secs(5), echo.next()).await.unwrap().unwrap();
    let mut received = [0u8; 2];
    inbound.read_exact(&mut received).await.unwrap();
    assert_eq!(&received, b"ok");

    // The two queued streams are still delivered, and nothing else.
    for _ in 0..2 {
        let next = tokio::time::timeout(Duration::from_secs(1), queued.next()).await;
        assert!(matches!(next, Ok(Some(_))), "a queued stream was not delivered");
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), queued.next()).await;
    assert!(extra.is_err(), "a dropped stream was delivered");

    let text = logs.text();
    assert!(text.contains("acceptor queue is full"), "no warning was logged: {text}");
    assert!(text.contains("/spare/test/queue/1"), "the warning does not name the protocol: {text}");
    assert!(text.contains(&buyer.handle.local_peer_id().to_string()), "the warning does not name the peer: {text}");
    assert_eq!(text.matches("acceptor queue is full").count(), 1, "the warning was not rate-limited: {text}");
}
