//! A client for one OpenAI-compatible upstream model server (llama.cpp server, Ollama, vLLM,
//! LM Studio, or a hosted API).

use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long listing models may take in total.
const LIST_MODELS_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an upstream error body is kept for the error message.
const ERROR_BODY_EXCERPT_BYTES: usize = 512;

/// One upstream, identified by its base URL (for example `http://127.0.0.1:8081/v1`).
#[derive(Debug, Clone)]
pub struct Upstream {
    base_url: String,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

impl Upstream {
    /// Creates a client for `base_url`, which must be an `http` URL ending before `/models`.
    pub fn new(base_url: &str) -> Result<Self, Error> {
        let trimmed = base_url.trim_end_matches('/');
        let invalid = |reason: &str| Error::InvalidUpstreamUrl { url: base_url.to_owned(), reason: reason.to_owned() };
        let url = reqwest::Url::parse(trimmed).map_err(|e| invalid(&e.to_string()))?;
        match url.scheme() {
            "http" => {}
            "https" => return Err(invalid("https upstreams are not supported yet; use a local http model server")),
            other => return Err(invalid(&format!("scheme {other:?} is not http"))),
        }

        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| invalid(&e.to_string()))?;
        Ok(Self { base_url: trimmed.to_owned(), client })
    }

    /// Returns the base URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Lists the upstream's model ids with `GET {base}/models`.
    pub async fn list_models(&self) -> Result<Vec<String>, Error> {
        let url = format!("{}/models", self.base_url);
        let response = self.client.get(&url).timeout(LIST_MODELS_TIMEOUT).send().await.map_err(|e| unreachable(&url, &e))?;
        let response = check_status(response).await?;
        let list: ModelList = response.json().await.map_err(|e| Error::UpstreamProtocol(format!("GET {url}: {e}")))?;
        Ok(list.data.into_iter().map(|m| m.id).collect())
    }

    /// Sends a chat completion request and returns the response once its head arrived.
    ///
    /// Dropping the returned response closes the connection, which cancels generation on
    /// servers that watch for it (llama.cpp server does).
    pub async fn chat_completions(&self, body: Vec<u8>) -> Result<reqwest::Response, Error> {
        let url = format!("{}/chat/completions", self.base_url);
        let response = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        check_status(response).await
    }
}

fn unreachable(url: &str, error: &reqwest::Error) -> Error {
    Error::UpstreamUnreachable { url: url.to_owned(), reason: error.to_string() }
}

async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, Error> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    let excerpt = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_EXCERPT_BYTES)]).into_owned();
    Err(Error::UpstreamStatus { status: status.as_u16(), body: excerpt })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_validated_and_trimmed() {
        assert_eq!(Upstream::new("http://127.0.0.1:8081/v1/").unwrap().base_url(), "http://127.0.0.1:8081/v1");
        assert!(Upstream::new("not a url").is_err());
        assert!(Upstream::new("ftp://127.0.0.1/v1").is_err());
    }

    #[tokio::test]
    async fn unreachable_upstream_names_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = Upstream::new(&format!("http://127.0.0.1:{port}/v1")).unwrap().list_models().await.unwrap_err().to_string();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }
}
