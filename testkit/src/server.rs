//! The HTTP server behind [`ScriptedUpstream`]: routes, request recording and the handle
//! that owns the server task.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::TestkitError;
use crate::openai::{self, CompletionMeta};
use crate::plan::{self, RequestShape};
use crate::script::{FailureMode, Script};

/// Largest accepted request body; above what a gateway forwards by default (32 MiB).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Response body frames buffered ahead of the socket.
const BODY_CHANNEL_CAPACITY: usize = 16;

/// How long [`ScriptedUpstream::shutdown`] waits for the server task before aborting it.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by the handle and the request handlers.
#[derive(Debug)]
struct Shared {
    script: Mutex<Script>,
    bodies: Mutex<Vec<Value>>,
    headers: Mutex<Vec<HeaderMap>>,
    chat_requests: AtomicUsize,
    model_requests: AtomicUsize,
    completion_sequence: AtomicU64,
    shutdown: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning means some thread panicked while locked. The guarded values have no
    // invariant that a half-done update breaks, so the data is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A test double of an OpenAI-compatible model server that responds as a [`Script`] sets.
///
/// It serves `GET /v1/models` and `POST /v1/chat/completions` on loopback, records every
/// chat completion request, and can be switched into a [`FailureMode`] while running.
/// Dropping the handle stops the server without waiting; [`ScriptedUpstream::shutdown`]
/// stops it and waits.
#[derive(Debug)]
pub struct ScriptedUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl ScriptedUpstream {
    /// Starts a server on 127.0.0.1 with a port chosen by the OS.
    pub async fn start(script: Script) -> Result<Self, TestkitError> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), script).await
    }

    /// Starts a server on `addr`.
    pub async fn start_on(addr: SocketAddr, script: Script) -> Result<Self, TestkitError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| TestkitError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(TestkitError::LocalAddr)?;

        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            bodies: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
            chat_requests: AtomicUsize::new(0),
            model_requests: AtomicUsize::new(0),
            completion_sequence: AtomicU64::new(0),
            shutdown: shutdown.clone(),
        });
        let router = Router::new()
            .route("/v1/models", get(list_models))
            .route("/v1/chat/completions", post(chat_completions))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(Arc::clone(&shared));

        // Without TCP_NODELAY, Nagle's algorithm holds each small SSE write until the client
        // ACKs the one before, and delayed ACKs turn that into about 40 ms per hold on Linux.
        let listener = listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "Failed to set TCP_NODELAY on an accepted connection");
            }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        tracing::debug!(addr = %local_addr, "Scripted upstream started");
        Ok(Self {
            addr: local_addr,
            shared,
            task: Some(task),
        })
    }

    /// Returns the bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the OpenAI base URL, such as `http://127.0.0.1:41234/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Returns a copy of the current script.
    pub fn script(&self) -> Script {
        lock(&self.shared.script).clone()
    }

    /// Replaces the script; requests that already started keep the old one.
    pub fn set_script(&self, script: Script) {
        *lock(&self.shared.script) = script;
    }

    /// Changes the failure mode; requests that already started keep the old one.
    pub fn set_mode(&self, mode: FailureMode) {
        lock(&self.shared.script).mode = mode;
    }

    /// Returns the body of every chat completion request that was valid JSON, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.bodies).clone()
    }

    /// Returns the headers of the requests in [`ScriptedUpstream::requests`], in the same order.
    pub fn request_headers(&self) -> Vec<HeaderMap> {
        lock(&self.shared.headers).clone()
    }

    /// Returns the number of `POST /v1/chat/completions` requests, including invalid ones.
    pub fn chat_request_count(&self) -> usize {
        self.shared.chat_requests.load(Ordering::SeqCst)
    }

    /// Returns the number of `GET /v1/models` requests.
    pub fn models_request_count(&self) -> usize {
        self.shared.model_requests.load(Ordering::SeqCst)
    }

    /// Stops the server and waits for it, ending open streams and hanging requests at once.
    pub async fn shutdown(mut self) -> Result<(), TestkitError> {
        self.shared.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let abort = task.abort_handle();
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(TestkitError::Serve(error.to_string())),
            Ok(Err(join_error)) => Err(TestkitError::Serve(join_error.to_string())),
            Err(_elapsed) => {
                abort.abort();
                Err(TestkitError::Serve(format!(
                    "server did not stop within {SHUTDOWN_TIMEOUT:?} and was aborted"
                )))
            }
        }
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

async fn list_models(State(shared): State<Arc<Shared>>) -> Response {
    shared.model_requests.fetch_add(1, Ordering::SeqCst);
    let models = openai::model_list(&lock(&shared.script));
    axum::Json(models).into_response()
}

fn error_response(
    status: StatusCode,
    message: &str,
    error_type: &str,
    code: Option<&str>,
) -> Response {
    (
        status,
        axum::Json(openai::error_body(message, error_type, code)),
    )
        .into_response()
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Instant::now();
    shared.chat_requests.fetch_add(1, Ordering::SeqCst);

    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            let message = format!("request body is not valid JSON: {error}");
            return error_response(
                StatusCode::BAD_REQUEST,
                &message,
                "invalid_request_error",
                None,
            );
        }
    };
    let script = lock(&shared.script).clone();
    if script.record_requests {
        lock(&shared.bodies).push(request.clone());
        lock(&shared.headers).push(headers);
    }

    match script.mode {
        FailureMode::HttpStatus(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error_response(status, "scripted upstream failure", "server_error", None);
        }
        FailureMode::HangBeforeResponse => {
            shared.shutdown.cancelled().await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        _ => {}
    }

    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !script.serves(model) {
        let message = format!(
            "The model `{model}` does not exist; served models: {:?}",
            script.models
        );
        return error_response(
            StatusCode::NOT_FOUND,
            &message,
            "invalid_request_error",
            Some("model_not_found"),
        );
    }

    let shape = RequestShape::of(&request, &script);
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let sequence = shared.completion_sequence.fetch_add(1, Ordering::SeqCst);
    let meta = CompletionMeta {
        id: format!("chatcmpl-scripted-{sequence}"),
        model: model.to_owned(),
        created: unix_seconds(),
        include_usage,
    };
    let frames = plan::plan_frames(&script, &meta, shape);

    let (sender, receiver) = mpsc::channel(BODY_CHANNEL_CAPACITY);
    tokio::spawn(plan::play(
        frames,
        received_at,
        sender,
        shared.shutdown.clone(),
    ));
    let body_stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });

    let content_type = if shape.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let mut response = Response::new(Body::from_stream(body_stream));
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}
