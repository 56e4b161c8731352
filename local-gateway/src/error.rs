//! Errors of the gateway: [`GatewayError`] for starting and stopping it, and [`ApiError`] for
//! failed HTTP requests.
//!
//! Every HTTP error leaves the gateway through [`ApiError::into_response`] (or
//! [`ApiError::sse_event`] once a stream has started), so clients always see OpenAI's error body:
//! `{"error":{"message","type","param","code"}}`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

/// Maximum characters of a client's or provider's string that go into a log line or an error
/// message; the rest is cut off.
const MAX_UNTRUSTED_CHARS: usize = 256;

/// Shortens a string a client or provider sent to [`MAX_UNTRUSTED_CHARS`] characters, followed by
/// an ellipsis and the original length in bytes, so logs and error bodies stay small.
pub(crate) fn truncate_untrusted(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_UNTRUSTED_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}… ({} bytes in all)", &text[..cut], text.len())),
    }
}

/// An error that stops the gateway from starting or from shutting down cleanly.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Another process already listens on the HTTP address.
    #[error("cannot listen on {addr}: the address is already in use; choose another with --listen")]
    AddressInUse {
        /// The address from the configuration.
        addr: SocketAddr,
    },
    /// Binding the HTTP listener failed for another reason.
    #[error("cannot listen on {addr}: {source}; choose another address with --listen")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server stopped with an error.
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The reputation database cannot be opened, read or written.
    #[error("reputation store {path}: {reason}")]
    Store {
        /// Path of the redb file.
        path: PathBuf,
        /// Cause of the failure and the next step to take.
        reason: String,
    },
    /// The API key file is unusable.
    #[error("API key file {path}: {reason}")]
    ApiKey {
        /// Path of the key file.
        path: PathBuf,
        /// The problem and the next step to take.
        reason: String,
    },
    /// A setting has a value the gateway cannot work with.
    #[error("invalid setting: {0}")]
    Config(String),
}

/// A failed HTTP request, mapped to a status code and an OpenAI error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// No key in `Authorization` or `x-api-key`.
    MissingApiKey,
    /// A key was sent but it is not this gateway's key.
    InvalidApiKey,
    /// A browser request from another origin.
    CrossOrigin {
        /// The `Origin` header value.
        origin: String,
    },
    /// The body is larger than the configured limit.
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read from the connection.
    BodyUnreadable(String),
    /// The client did not send the whole body in time.
    BodyTimeout {
        /// The time allowed for reading the body.
        timeout: Duration,
    },
    /// The body is not a JSON object.
    InvalidJson(String),
    /// The body has no `model` field.
    MissingModel,
    /// A field has the wrong type or value.
    InvalidParameter {
        /// The field name.
        param: &'static str,
        /// The problem with the value.
        message: String,
    },
    /// No provider on the network offers the model.
    ModelNotFound {
        /// The requested model id.
        model: String,
    },
    /// No route matches the path.
    UnknownRoute {
        /// The request path.
        path: String,
    },
    /// Every provider of the model failed before sending the first chunk.
    NoProviderAvailable {
        /// The requested model id.
        model: String,
        /// How many providers were tried.
        attempts: usize,
    },
    /// Every provider returned busy until the first-chunk timeout passed.
    ProvidersBusy {
        /// The requested model id.
        model: String,
        /// The time the client should wait before retrying, sent as `Retry-After`.
        retry_after: Duration,
    },
    /// Every provider rejected the request itself, for example because the upstream found
    /// it invalid.
    RejectedByProviders {
        /// The requested model id.
        model: String,
        /// The first provider's reason.
        message: String,
    },
    /// The route exists but not for this HTTP method.
    MethodNotAllowed {
        /// The request method.
        method: String,
        /// The request path.
        path: String,
    },
    /// The chosen provider failed after its first chunk.
    ProviderFailed {
        /// The requested model id.
        model: String,
        /// The cause.
        message: String,
    },
}

impl ApiError {
    /// Returns the HTTP status code for this error.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::MissingApiKey | Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::CrossOrigin { .. } => StatusCode::FORBIDDEN,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::BodyUnreadable(_) | Self::InvalidJson(_) | Self::MissingModel | Self::InvalidParameter { .. } | Self::RejectedByProviders { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::ModelNotFound { .. } | Self::UnknownRoute { .. } => StatusCode::NOT_FOUND,
            Self::NoProviderAvailable { .. } | Self::ProvidersBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::ProviderFailed { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Builds the OpenAI error body: `{"error":{"message","type","param","code"}}`.
    ///
    /// Strings from the client or a provider are shortened with [`truncate_untrusted`].
    pub(crate) fn body(&self) -> Value {
        let short = truncate_untrusted;
        let (message, kind, param, code) = match self {
            Self::MissingApiKey => (
                "Missing API key. Send it as `Authorization: Bearer KEY` or `x-api-key: KEY`; the key is in the gateway's data dir as `api-key`.".to_owned(),
                "invalid_request_error",
                None,
                "invalid_api_key",
            ),
            Self::InvalidApiKey => (
                "Invalid API key. Use the key from the gateway's data dir (`api-key`) or from SPARE_API_KEY.".to_owned(),
                "invalid_request_error",
                None,
                "invalid_api_key",
            ),
            Self::CrossOrigin { origin } => (
                format!("Cross-origin requests are rejected (Origin: {}). Call the gateway from a local program, not from a web page.", short(origin)),
                "invalid_request_error",
                None,
                "cross_origin_forbidden",
            ),
            Self::BodyTooLarge { limit } => (
                format!("Request body exceeds the limit of {limit} bytes. Send a smaller request or raise --max-body-bytes."),
                "invalid_request_error",
                None,
                "request_too_large",
            ),
            Self::BodyUnreadable(reason) => (format!("Cannot read the request body: {}.", short(reason)), "invalid_request_error", None, "invalid_body"),
            Self::BodyTimeout { timeout } => (
                format!("The request body did not arrive within {} s. Send the whole body without pausing.", timeout.as_secs_f64()),
                "invalid_request_error",
                None,
                "request_timeout",
            ),
            Self::InvalidJson(reason) => (format!("Request body is not valid JSON: {}.", short(reason)), "invalid_request_error", None, "invalid_json"),
            Self::MissingModel => (
                "Missing required parameter: 'model'.".to_owned(),
                "invalid_request_error",
                Some("model"),
                "missing_required_parameter",
            ),
            Self::InvalidParameter { param, message } => (format!("Invalid '{param}': {}.", short(message)), "invalid_request_error", Some(*param), "invalid_value"),
            Self::ModelNotFound { model } => (
                format!("The model '{}' is not offered by any provider on the network. List available models with GET /v1/models.", short(model)),
                "invalid_request_error",
                Some("model"),
                "model_not_found",
            ),
            Self::UnknownRoute { path } => (format!("Unknown request URL: {}.", short(path)), "invalid_request_error", None, "unknown_url"),
            Self::RejectedByProviders { model, message } => (
                format!("Every provider of '{}' rejected the request: {}. Fix the request before retrying.", short(model), short(message)),
                "invalid_request_error",
                None,
                "rejected_by_provider",
            ),
            Self::MethodNotAllowed { method, path } => (format!("Method {} is not allowed on {}.", short(method), short(path)), "invalid_request_error", None, "method_not_allowed"),
            Self::NoProviderAvailable { model, attempts } => (
                format!("No provider could serve the model '{}': all {attempts} tried failed before sending a response. Retry later.", short(model)),
                "server_error",
                None,
                "no_provider_available",
            ),
            Self::ProvidersBusy { model, retry_after } => (
                format!("Every provider of '{}' is at its limit of concurrent requests. Retry after {} s.", short(model), retry_after.as_secs_f64()),
                "server_error",
                None,
                "providers_busy",
            ),
            Self::ProviderFailed { model, message } => (
                format!("The provider serving '{}' failed mid-response: {}.", short(model), short(message)),
                "server_error",
                None,
                "provider_failed",
            ),
        };
        json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })
    }

    /// Formats the error as one server-sent event, for failures after a stream has started.
    pub(crate) fn sse_event(&self) -> Bytes {
        Bytes::from(format!("data: {}\n\n", self.body()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let Self::ProvidersBusy { retry_after, .. } = self {
            // Retry-After takes whole seconds; round up so the client never comes back early.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all_errors() -> Vec<ApiError> {
        vec![
            ApiError::MissingApiKey,
            ApiError::InvalidApiKey,
            ApiError::CrossOrigin { origin: "https://evil.example".into() },
            ApiError::BodyTooLarge { limit: 10 },
            ApiError::BodyUnreadable("reset".into()),
            ApiError::BodyTimeout { timeout: Duration::from_secs(30) },
            ApiError::ProvidersBusy { model: "m".into(), retry_after: Duration::from_secs(1) },
            ApiError::InvalidJson("eof".into()),
            ApiError::MissingModel,
            ApiError::InvalidParameter { param: "stream", message: "expected a boolean".into() },
            ApiError::ModelNotFound { model: "m".into() },
            ApiError::UnknownRoute { path: "/x".into() },
            ApiError::NoProviderAvailable { model: "m".into(), attempts: 2 },
            ApiError::ProviderFailed { model: "m".into(), message: "closed".into() },
            ApiError::RejectedByProviders { model: "m".into(), message: "too long".into() },
            ApiError::MethodNotAllowed { method: "GET".into(), path: "/v1/chat/completions".into() },
        ]
    }

    #[test]
    fn every_error_has_openai_shape() {
        for error in all_errors() {
            let body = error.body();
            let inner = body.get("error").unwrap().as_object().unwrap();
            let keys: Vec<&str> = inner.keys().map(String::as_str).collect();
            assert_eq!(keys, ["message", "type", "param", "code"], "{error:?}");
            assert!(!inner["message"].as_str().unwrap().is_empty(), "{error:?}");
            assert!(inner["code"].is_string(), "{error:?}");
        }
    }

    #[test]
    fn errors_map_to_status_codes() {
        let cases = [
            (ApiError::MissingApiKey, 401),
            (ApiError::InvalidApiKey, 401),
            (ApiError::CrossOrigin { origin: "x".into() }, 403),
            (ApiError::BodyTooLarge { limit: 1 }, 413),
            (ApiError::BodyTimeout { timeout: Duration::from_secs(1) }, 408),
            (ApiError::ProvidersBusy { model: "m".into(), retry_after: Duration::from_secs(1) }, 503),
            (ApiError::InvalidJson("x".into()), 400),
            (ApiError::MissingModel, 400),
            (ApiError::ModelNotFound { model: "m".into() }, 404),
            (ApiError::NoProviderAvailable { model: "m".into(), attempts: 1 }, 503),
            (ApiError::ProviderFailed { model: "m".into(), message: "x".into() }, 502),
            (ApiError::RejectedByProviders { model: "m".into(), message: "x".into() }, 400),
            (ApiError::MethodNotAllowed { method: "GET".into(), path: "/".into() }, 405),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
        }
    }

    #[test]
    fn model_errors_name_the_model_and_param() {
        let body = ApiError::ModelNotFound { model: "llama-9".into() }.body();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        assert!(body["error"]["message"].as_str().unwrap().contains("llama-9"));

        let body = ApiError::NoProviderAvailable { model: "llama-9".into(), attempts: 3 }.body();
        assert!(body["error"]["message"].as_str().unwrap().contains("llama-9"));
    }

    #[test]
    fn long_untrusted_strings_are_truncated() {
        assert_eq!(truncate_untrusted("short"), "short");
        let exact = "é".repeat(MAX_UNTRUSTED_CHARS);
        assert_eq!(truncate_untrusted(&exact), exact);

        let long = "é".repeat(100_000);
        let shortened = truncate_untrusted(&long);
        assert!(shortened.starts_with(&"é".repeat(MAX_UNTRUSTED_CHARS)));
        assert!(shortened.ends_with("… (200000 bytes in all)"), "{shortened}");
        assert_eq!(shortened.chars().count(), MAX_UNTRUSTED_CHARS + "… (200000 bytes in all)".chars().count());
    }

    #[test]
    fn error_bodies_stay_small() {
        let huge = "m".repeat(100_000);
        for error in [
            ApiError::ModelNotFound { model: huge.clone() },
            ApiError::UnknownRoute { path: huge.clone() },
            ApiError::MethodNotAllowed { method: "GET".into(), path: huge.clone() },
            ApiError::CrossOrigin { origin: huge.clone() },
            ApiError::RejectedByProviders { model: huge.clone(), message: huge.clone() },
            ApiError::ProviderFailed { model: huge.clone(), message: huge.clone() },
            ApiError::NoProviderAvailable { model: huge.clone(), attempts: 1 },
            ApiError::ProvidersBusy { model: huge.clone(), retry_after: Duration::from_secs(1) },
        ] {
            let length = error.body().to_string().len();
            assert!(length < 1200, "{length} bytes for {:?}", std::mem::discriminant(&error));
        }
    }

    #[test]
    fn sse_event_is_one_data_line() {
        let event = ApiError::ProviderFailed { model: "m".into(), message: "closed".into() }.sse_event();
        let text = std::str::from_utf8(&event).unwrap();
        assert!(text.starts_with("data: {\"error\":"));
        assert!(text.ends_with("\n\n"));
        assert_eq!(text.matches('\n').count(), 2);
    }
}
