//! Gateway settings, with defaults that work for one buyer on one machine.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

/// Default HTTP listen address: loopback only, so no other host can reach the gateway.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Default maximum request body size, in bytes (32 MiB, room for images as data URLs).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Default time a provider has to send its first chunk, from the start of the attempt.
pub const DEFAULT_FIRST_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default maximum silence between two frames after a provider's first chunk.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default time a client has to send the whole request body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time open connections get to finish after the shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default time allowed for finding providers in the DHT and fetching their offers.
pub const DEFAULT_DHT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings for [`crate::serve`].
#[derive(Clone)]
pub struct GatewayConfig {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// The local API key clients must send.
    pub api_key: String,
    /// Maximum request body size, in bytes.
    pub max_body_bytes: usize,
    /// Time a provider has to send its first chunk before the next one is tried.
    pub first_chunk_timeout: Duration,
    /// Maximum silence between two frames after the first chunk.
    pub idle_timeout: Duration,
    /// Time allowed for a DHT provider lookup plus the offer fetches that follow it.
    pub dht_lookup_timeout: Duration,
    /// Time a client has to send the whole request body before it gets 408.
    pub body_read_timeout: Duration,
    /// Time open connections get to finish after the shutdown signal; then the server stops
    /// waiting for them.
    pub shutdown_grace: Duration,
    /// Path of the redb file that stores provider reputation.
    pub reputation_path: PathBuf,
}

impl GatewayConfig {
    /// Creates a configuration with the default address, limits and timeouts.
    pub fn new(api_key: String, reputation_path: PathBuf) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            api_key,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            first_chunk_timeout: DEFAULT_FIRST_CHUNK_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            dht_lookup_timeout: DEFAULT_DHT_LOOKUP_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            reputation_path,
        }
    }
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("api_key", &"<redacted>")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("first_chunk_timeout", &self.first_chunk_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("dht_lookup_timeout", &self.dht_lookup_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("reputation_path", &self.reputation_path)
            .finish()
    }
}
