//! The HTTP server: routes, the request span, the origin and API key checks, the small JSON
//! endpoints, and [`serve`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::http::header::ORIGIN;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::RngCore;
use serde_json::{Value, json};
use spare_gossip::infer::MAX_REQUEST_FRAME_BYTES;
use spare_gossip::offer::now_ms;
use spare_gossip::{NetworkHandle, Offer, PeerId};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::api_key::{key_from_headers, keys_match};
use crate::chat::chat_completions;
use crate::error::{ApiError, truncate_untrusted};
use crate::reputation::ReputationStore;
use crate::{GatewayConfig, GatewayError};

/// Room in a request frame for the fields around the body.
const REQUEST_FRAME_HEADER_ROOM: usize = 64 * 1024;

/// The id of one HTTP request, also sent to the provider and returned as `x-request-id`.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct GatewayState {
    inner: Arc<StateInner>,
}

/// The fields behind [`GatewayState`].
pub struct StateInner {
    /// Settings.
    pub config: GatewayConfig,
    /// The swarm handle.
    pub network: NetworkHandle,
    /// Provider reputation.
    pub reputation: ReputationStore,
    /// `Origin` values of pages served from this gateway's own loopback address.
    allowed_origins: Vec<String>,
}

impl Deref for GatewayState {
    type Target = StateInner;

    fn deref(&self) -> &StateInner {
        &self.inner
    }
}

impl GatewayState {
    /// Creates the state for a gateway whose listener is bound to `local_addr`.
    pub fn new(config: GatewayConfig, network: NetworkHandle, reputation: ReputationStore, local_addr: SocketAddr) -> Self {
        let port = local_addr.port();
        let allowed_origins = ["127.0.0.1", "localhost", "[::1]"].iter().map(|host| format!("http://{host}:{port}")).collect();
        Self { inner: Arc::new(StateInner { config, network, reputation, allowed_origins }) }
    }
}

/// Builds the HTTP routes with the request span, origin check and API key check.
pub fn router(state: GatewayState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/spare/v1/providers", get(providers))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        // The chat handler reads the body itself, to return 413 in OpenAI's error shape.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), check_api_key))
        .layer(middleware::from_fn_with_state(state.clone(), check_origin))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

/// Binds `config.listen` and serves until `shutdown` completes.
pub async fn serve(config: GatewayConfig, network: NetworkHandle, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), GatewayError> {
    let addr = config.listen;
    let listener = TcpListener::bind(addr).await.map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => GatewayError::AddressInUse { addr },
        _ => GatewayError::Bind { addr, source },
    })?;
    serve_on(listener, config, network, shutdown).await
}

/// Sets TCP_NODELAY on every accepted connection. Without it, Nagle's algorithm holds small
/// SSE events until the client's delayed ACK, which adds up to 40 ms per event on Linux.
fn with_nodelay(listener: TcpListener) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "Cannot set TCP_NODELAY");
        }
    })
}

/// Serves on an already bound `listener` until `shutdown` completes, then commits the
/// reputation store. `config.listen` is not used.
pub async fn serve_on(
    listener: TcpListener,
    config: GatewayConfig,
    network: NetworkHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    check_config(&config)?;
    let local_addr = listener.local_addr().map_err(GatewayError::Serve)?;
    if !local_addr.ip().is_loopback() {
        tracing::warn!(addr = %local_addr, "Gateway listens beyond loopback; only the API key protects it");
    }

    let path = config.reputation_path.clone();
    let reputation = tokio::task::spawn_blocking(move || ReputationStore::open(&path))
        .await
        .map_err(|e| GatewayError::Store { path: config.reputation_path.clone(), reason: e.to_string() })??;
    let state = GatewayState::new(config, network, reputation.clone(), local_addr);

    tracing::info!(addr = %local_addr, "Gateway listening");
    let grace = state.config.shutdown_grace;
    let served = serve_until_deadline(listener, router(state), shutdown, grace).await;
    let closed = reputation.close().await;
    tracing::info!(addr = %local_addr, "Gateway stopped");
    served.and(closed)
}

/// Serves until `shutdown` completes, then lets open connections finish for at most `grace`.
///
/// NOTE: axum 0.8's `serve` sets no header-read timeout (hyper 1.x applies its 30 s default
/// only when given a timer). So a client that never finishes its request head keeps its
/// connection open while the gateway runs, and delays shutdown by up to `grace`. Body reads
/// are bounded by `body_read_timeout` in the chat handler.
async fn serve_until_deadline(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), GatewayError> {
    let (signalled, signal_seen) = oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!(grace_secs = grace.as_secs_f64(), "Shutting down; waiting for open connections");
        let _ = signalled.send(());
    };
    let server = axum::serve(with_nodelay(listener), router).with_graceful_shutdown(signal).into_future();
    let deadline = async move {
        match signal_seen.await {
            Ok(()) => tokio::time::sleep(grace).await,
            // The server stopped before the signal; the other branch has finished.
            Err(_) => std::future::pending().await,
        }
    };

    tokio::select! {
        served = server => served.map_err(GatewayError::Serve),
        () = deadline => {
            // Dropping the server future stops accepting and stops waiting. Connection tasks
            // that axum spawned run on until their own timeouts end them.
            tracing::warn!(grace_secs = grace.as_secs_f64(), "Connections still open after the shutdown grace period; stopped waiting");
            Ok(())
        }
    }
}

fn check_config(config: &GatewayConfig) -> Result<(), GatewayError> {
    if config.api_key.is_empty() {
        return Err(GatewayError::Config("the API key is empty; set SPARE_API_KEY or remove it to use the stored key".into()));
    }
    let max = MAX_REQUEST_FRAME_BYTES - REQUEST_FRAME_HEADER_ROOM;
    if config.max_body_bytes == 0 || config.max_body_bytes > max {
        return Err(GatewayError::Config(format!("--max-body-bytes is {}; choose a value from 1 to {max}", config.max_body_bytes)));
    }
    if config.body_read_timeout.is_zero() {
        return Err(GatewayError::Config("the body read timeout is 0, which rejects every request with a body; choose a positive duration".into()));
    }
    Ok(())
}

/// Gives each request an id and a span with `request_id`, `model` and `peer`.
async fn trace_request(mut request: Request, next: Next) -> Response {
    let mut id_bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut id_bytes);
    let request_id = format!("req-{}", hex::encode(id_bytes));
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %truncate_untrusted(request.uri().path()),
        model = tracing::field::Empty,
        peer = tracing::field::Empty,
    );
    request.extensions_mut().insert(RequestId(request_id.clone()));

    let is_health_check = request.uri().path() == "/health";
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        // Health checks are polled by scripts; logging each at info would bury the requests.
        if is_health_check {
            tracing::debug!(status, elapsed_ms, "Sent response");
        } else {
            tracing::info!(status, elapsed_ms, "Sent response");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Rejects browser requests from any origin but the gateway's own loopback address, so a web
/// page cannot use the gateway (and the buyer's money) through the browser.
async fn check_origin(State(state): State<GatewayState>, request: Request, next: Next) -> Response {
    if let Some(origin) = request.headers().get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("<not UTF-8>");
        if !state.allowed_origins.iter().any(|allowed| allowed == origin) {
            tracing::info!(origin = %truncate_untrusted(origin), "Rejected cross-origin request");
            return ApiError::CrossOrigin { origin: origin.to_owned() }.into_response();
        }
    }
    next.run(request).await
}

/// Requires the API key everywhere except `/health`.
async fn check_api_key(State(state): State<GatewayState>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    match key_from_headers(request.headers()) {
        None => ApiError::MissingApiKey.into_response(),
        Some(key) if !keys_match(&state.config.api_key, key) => ApiError::InvalidApiKey.into_response(),
        Some(_) => next.run(request).await,
    }
}

async fn unknown_route(request: Request) -> Response {
    ApiError::UnknownRoute { path: request.uri().path().to_owned() }.into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    ApiError::MethodNotAllowed { method: request.method().to_string(), path: request.uri().path().to_owned() }.into_response()
}

async fn health(State(state): State<GatewayState>) -> axum::Json<Value> {
    let models = state.network.with_book(|book| book.models(now_ms()).len());
    axum::Json(json!({ "status": "ok", "peers": state.network.connected_peers().len(), "models": models }))
}

/// Models heard on the network, in OpenAI's list shape, with lowest prices and provider counts.
async fn models(State(state): State<GatewayState>) -> axum::Json<Value> {
    let summaries = state.network.with_book(|book| book.models(now_ms()));
    let data: Vec<Value> = summaries
        .into_iter()
        .map(|model| {
            json!({
                "id": model.id,
                "object": "model",
                // The network does not record when a model was made; 0 means unknown.
                "created": 0,
                "owned_by": "spare",
                "pricing": { "input_per_mtok": model.min_input_price, "output_per_mtok": model.min_output_price },
                "providers": model.providers,
            })
        })
        .collect();
    axum::Json(json!({ "object": "list", "data": data }))
}

/// Lists every peer with a current offer or stored reputation, with its statistics.
async fn providers(State(state): State<GatewayState>) -> axum::Json<Value> {
    let now = now_ms();
    let offers: HashMap<PeerId, Offer> = state.network.with_book(|book| {
        let models = book.models(now);
        models.iter().flat_map(|model| book.providers_of(&model.id, now)).collect()
    });
    let reputation = state.reputation.snapshot();
    let connected = state.network.connected_peers();

    let mut peers: BTreeMap<String, PeerId> = BTreeMap::new();
    for peer in offers.keys().chain(reputation.keys()) {
        peers.insert(peer.to_string(), *peer);
    }
    let data: Vec<Value> = peers
        .into_iter()
        .map(|(id, peer)| {
            json!({
                "peer": id,
                "connected": connected.contains(&peer),
                "offer": offers.get(&peer).map(offer_json),
                "reputation": reputation.get(&peer).map(|stats| {
                    let mut value = serde_json::to_value(stats).unwrap_or(Value::Null);
                    value["success_ratio"] = json!(stats.success_ratio());
                    value["cooldown_until_ms"] = json!(stats.cooldown_until_ms());
                    value
                }),
            })
        })
        .collect();
    axum::Json(json!({ "object": "list", "data": data }))
}

fn offer_json(offer: &Offer) -> Value {
    let models: Vec<Value> = offer
        .models
        .iter()
        .map(|model| json!({ "id": model.id, "input_per_mtok": model.input_price, "output_per_mtok": model.output_price }))
        .collect();
    json!({ "models": models, "capacity": offer.capacity, "load": offer.load, "expires_at_ms": offer.expires_at_ms() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::serve::Listener;

    use super::*;

    #[test]
    fn zero_body_read_timeout_is_rejected() {
        let mut config = GatewayConfig::new("sk-spare-test".into(), "unused.redb".into());
        assert!(check_config(&config).is_ok());

        config.body_read_timeout = Duration::ZERO;
        let error = check_config(&config).unwrap_err().to_string();
        assert!(error.contains("body read timeout"), "{error}");
    }

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let mut listener = with_nodelay(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();

        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
    }
}
