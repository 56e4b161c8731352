//! Errors of the provider.

/// An error from the provider's upstreams, configuration or network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An upstream base URL is not usable.
    #[error("invalid upstream URL {url:?}: {reason}")]
    InvalidUpstreamUrl {
        /// The URL as configured.
        url: String,
        /// The reason it is unusable.
        reason: String,
    },
    /// The upstream could not be reached.
    #[error("upstream {url} is unreachable: {reason}; check that the model server is running")]
    UpstreamUnreachable {
        /// The URL that was requested.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The upstream returned an error status.
    #[error("upstream returned HTTP {status}: {body}")]
    UpstreamStatus {
        /// HTTP status code.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// The upstream sent something that is not valid for its API.
    #[error("upstream sent an invalid response: {0}")]
    UpstreamProtocol(String),
    /// The upstream went silent for longer than the idle timeout.
    #[error("upstream sent nothing for {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The protocol layer failed.
    #[error(transparent)]
    Protocol(#[from] spare_gossip::Error),
}
