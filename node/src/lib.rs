//! The spare provider: plugs OpenAI-compatible upstream model servers into the network.
//!
//! [`run`] does the whole job: it learns the upstreams' models ([`upstream`]), prices them
//! ([`catalog`]), announces signed offers and DHT provider records ([`offers`]), and serves
//! `/spare/infer/1` streams ([`serve`]), relaying each upstream event as soon as it arrives.
//! Start reading at [`run`], then [`Provider::handle_stream`].

pub mod catalog;
pub mod offers;
pub mod serve;
pub mod sse;
pub mod upstream;

mod error;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use spare_gossip::{INFER_PROTOCOL, NetworkHandle};
use tokio::sync::Semaphore;

pub use catalog::{Catalog, Price};
pub use error::Error;
use upstream::Upstream;

/// The provider's settings, after config file, environment and flags are merged.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// OpenAI-compatible base URLs, such as `http://127.0.0.1:8081/v1`.
    pub upstreams: Vec<String>,
    /// Requests served at once; more are refused as busy.
    pub max_concurrent: u32,
    /// Price for models with no entry in `prices`.
    pub default_price: Price,
    /// Prices by canonical model id.
    pub prices: BTreeMap<String, Price>,
    /// Upstream model name to canonical id.
    pub aliases: BTreeMap<String, String>,
    /// How often the offer is re-published.
    pub offer_interval: Duration,
    /// How long an offer stays valid; longer than `offer_interval` so offers overlap.
    pub offer_ttl: Duration,
    /// How often the upstreams' model lists are re-read.
    pub model_refresh_interval: Duration,
    /// How long the upstream may stay silent mid-answer.
    pub upstream_idle_timeout: Duration,
    /// How long the buyer may take to send its request frame.
    pub request_read_timeout: Duration,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            max_concurrent: 8,
            default_price: Price { input: 100_000, output: 400_000 },
            prices: BTreeMap::new(),
            aliases: BTreeMap::new(),
            offer_interval: Duration::from_secs(10),
            offer_ttl: Duration::from_secs(30),
            model_refresh_interval: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(120),
            request_read_timeout: serve::DEFAULT_REQUEST_READ_TIMEOUT,
        }
    }
}

impl NodeSettings {
    /// Checks the settings and builds a client per upstream, without contacting any.
    pub fn validate(&self) -> Result<Vec<Upstream>, Error> {
        if self.upstreams.is_empty() {
            return Err(Error::Config("no upstream configured; pass --upstream http://HOST:PORT/v1".into()));
        }
        if self.max_concurrent == 0 {
            return Err(Error::Config("max_concurrent must be at least 1".into()));
        }
        if self.offer_ttl <= self.offer_interval {
            return Err(Error::Config("offer_ttl must be longer than offer_interval, or offers lapse between rounds".into()));
        }
        self.upstreams.iter().map(|url| Upstream::new(url)).collect()
    }
}

/// The provider's shared state: upstreams, the current catalog and the admission limit.
pub struct Provider {
    settings: NodeSettings,
    upstreams: Vec<Upstream>,
    catalog: RwLock<Arc<Catalog>>,
    permits: Arc<Semaphore>,
    /// Request frames being read, per peer; see [`serve::reads_per_peer_limit`].
    reads_in_progress: std::sync::Mutex<std::collections::HashMap<spare_gossip::PeerId, usize>>,
    signing_key: SigningKey,
}

impl Provider {
    /// Checks the settings and creates the provider; no upstream is contacted yet.
    pub fn new(settings: NodeSettings, signing_key: SigningKey) -> Result<Arc<Self>, Error> {
        let upstreams = settings.validate()?;
        let permits = Arc::new(Semaphore::new(settings.max_concurrent as usize));
        Ok(Arc::new(Self { settings, upstreams, catalog: RwLock::default(), permits, reads_in_progress: Default::default(), signing_key }))
    }

    /// Returns the models on sale now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Requests being served now.
    pub fn load(&self) -> u32 {
        self.settings.max_concurrent.saturating_sub(self.permits.available_permits() as u32)
    }

    /// Re-reads every upstream's model list and replaces the catalog.
    ///
    /// An upstream that cannot be reached contributes no models until the next refresh.
    pub async fn refresh_catalog(&self) -> Arc<Catalog> {
        let mut upstream_models = Vec::with_capacity(self.upstreams.len());
        for upstream in &self.upstreams {
            match upstream.list_models().await {
                Ok(models) => upstream_models.push(models),
                Err(e) => {
                    tracing::warn!(upstream = upstream.base_url(), error = %e, "Cannot list upstream models");
                    upstream_models.push(Vec::new());
                }
            }
        }
        let catalog = Arc::new(Catalog::build(&upstream_models, &self.settings.aliases, &self.settings.prices, self.settings.default_price));
        if *catalog != *self.catalog() {
            tracing::info!(models = ?catalog.ids().collect::<Vec<_>>(), "Models on sale");
        }
        if let Ok(mut current) = self.catalog.write() {
            *current = catalog.clone();
        }
        catalog
    }
}

/// Runs the provider until `shutdown` completes: waits for a model, then announces offers
/// and serves inference streams.
pub async fn run(settings: NodeSettings, signing_key: SigningKey, network: NetworkHandle, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let provider = Provider::new(settings, signing_key)?;
    let incoming = network.accept(INFER_PROTOCOL)?;

    let serving = tokio::spawn(serve::accept_loop(provider.clone(), incoming));
    let announcing = tokio::spawn(offers::announce_loop(provider.clone(), network));

    shutdown.await;
    tracing::info!("Provider shutting down");
    announcing.abort();
    serving.abort();
    Ok(())
}
