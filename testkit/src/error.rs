//! Errors raised while starting or stopping a test double.

use std::net::SocketAddr;

/// Errors of the test doubles in this crate.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// The listening socket could not be bound.
    #[error(
        "failed to bind the scripted upstream to {addr}: {source}; pick a free port or use port 0"
    )]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The bound socket could not report its address.
    #[error("failed to read the local address of the scripted upstream: {0}")]
    LocalAddr(std::io::Error),
    /// The server task ended with an error or was cancelled.
    #[error("the scripted upstream server failed: {0}")]
    Serve(String),
}
