//! Errors of the protocol layer.

use std::io;

/// An error from decoding, validating or carrying protocol messages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame announced a length above the limit for its kind.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Limit for this frame kind.
        max: usize,
    },
    /// A frame or offer could not be decoded as the expected CBOR structure.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// An offer failed validation (signature, freshness, size or sender).
    #[error("invalid offer: {0}")]
    InvalidOffer(String),
    /// The stream closed before a complete frame arrived.
    #[error("stream closed by the peer")]
    Closed,
    /// Reading or writing the stream failed.
    #[error("stream i/o failed: {0}")]
    Io(#[from] io::Error),
    /// The peer sent nothing within the allowed time.
    #[error("peer sent nothing for {0:?}")]
    Timeout(std::time::Duration),
    /// The network event loop has stopped.
    #[error("the network event loop has stopped")]
    NetworkStopped,
    /// A stream could not be opened to the peer.
    #[error("could not open a stream to the peer: {0}")]
    OpenStream(String),
    /// The identity key file is unusable.
    #[error("identity key {path}: {reason}")]
    Identity {
        /// Key file path.
        path: std::path::PathBuf,
        /// The problem and how to fix it.
        reason: String,
    },
    /// Building or starting the swarm failed.
    #[error("network setup failed: {0}")]
    Setup(String),
}
