//! Provider reputation: successes, failures by kind, busy rejections, latency, speed and the
//! cool-down after consecutive failures per peer, kept in memory for ranking and persisted in
//! redb (table [`PEERS_TABLE`]).
//!
//! Requests update the in-memory numbers and mark the peer dirty. One writer thread owns all
//! writes: it wakes on each update and commits every dirty peer in one transaction, so no request
//! waits for disk i/o. An update reaches the disk within one commit after it is made, and
//! [`ReputationStore::close`] commits the last ones before it returns.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use spare_gossip::PeerId;
use spare_gossip::offer::now_ms;
use tokio::sync::{mpsc, oneshot};

use crate::GatewayError;

/// The redb table of per-peer statistics: peer id (base58) → JSON of [`PeerStats`].
pub const PEERS_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("peers-1");

/// Weight of the newest sample in the moving averages.
const EWMA_WEIGHT: f64 = 0.3;
/// Cool-down after one failure; each further consecutive failure doubles it.
pub const BASE_COOLDOWN: Duration = Duration::from_secs(10);
/// Maximum cool-down, reached at [`MAX_COOLDOWN_STRIKES`] consecutive failures.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(600);
/// Consecutive failures at which the cool-down reaches [`MAX_COOLDOWN`]: 10 s × 2^6 > 600 s.
pub const MAX_COOLDOWN_STRIKES: u32 = 7;
/// Pending wake-ups for the writer; one is enough because each write takes every dirty peer.
const WRITER_CHANNEL_CAPACITY: usize = 4;

/// The kind of a failed request to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// No stream could be opened or the connection dropped before the first chunk.
    Unreachable,
    /// The provider sent an error frame before the first chunk.
    Refused,
    /// No first chunk arrived within the timeout.
    Timeout,
    /// A frame could not be decoded, came out of order, was too large, or a receipt was bad.
    Malformed,
    /// The provider failed after the first chunk.
    MidStream,
}

/// Failure counts by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailureCounts {
    /// See [`FailureKind::Unreachable`].
    pub unreachable: u64,
    /// See [`FailureKind::Refused`].
    pub refused: u64,
    /// See [`FailureKind::Timeout`].
    pub timeout: u64,
    /// See [`FailureKind::Malformed`].
    pub malformed: u64,
    /// See [`FailureKind::MidStream`].
    pub mid_stream: u64,
}

impl FailureCounts {
    /// Returns the sum over all kinds.
    pub fn total(&self) -> u64 {
        self.unreachable + self.refused + self.timeout + self.malformed + self.mid_stream
    }

    fn increment(&mut self, kind: FailureKind) {
        let count = match kind {
            FailureKind::Unreachable => &mut self.unreachable,
            FailureKind::Refused => &mut self.refused,
            FailureKind::Timeout => &mut self.timeout,
            FailureKind::Malformed => &mut self.malformed,
            FailureKind::MidStream => &mut self.mid_stream,
        };
        *count = count.saturating_add(1);
    }
}

/// Measured statistics of one provider.
///
/// Fields missing from a stored row take their default, so rows written by older gateways load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStats {
    /// Requests completed with a valid receipt.
    pub successes: u64,
    /// Failed requests by kind.
    pub failures: FailureCounts,
    /// Moving average of the time to first chunk, in milliseconds.
    pub ttft_ms: Option<f64>,
    /// Moving average of output tokens per second after the first chunk.
    pub tokens_per_second: Option<f64>,
    /// Last request outcome, in milliseconds since the Unix epoch.
    pub last_seen_ms: u64,
    /// Requests the provider rejected as busy (at its concurrency limit). Not failures: they
    /// leave the success ratio and the cool-down alone.
    pub busy: u64,
    /// Failures since the last success. A malformed frame sets it to at least
    /// [`MAX_COOLDOWN_STRIKES`], so that one failure earns the maximum cool-down.
    pub consecutive_failures: u32,
    /// Time of the last failure, in milliseconds since the Unix epoch; 0 if none.
    pub last_failure_ms: u64,
}

impl PeerStats {
    /// Share of successful requests, with one success and one failure added as a prior so a
    /// new provider starts at 0.5 rather than at 0 or 1.
    pub fn success_ratio(&self) -> f64 {
        (self.successes as f64 + 1.0) / ((self.successes + self.failures.total()) as f64 + 2.0)
    }

    /// Returns the end of the provider's cool-down in milliseconds since the Unix epoch, or 0
    /// when it has no failure since its last success.
    ///
    /// After n consecutive failures the cool-down lasts [`BASE_COOLDOWN`] × 2^(n−1), at most
    /// [`MAX_COOLDOWN`], counted from the last failure.
    pub fn cooldown_until_ms(&self) -> u64 {
        if self.consecutive_failures == 0 {
            return 0;
        }
        let doublings = (self.consecutive_failures - 1).min(MAX_COOLDOWN_STRIKES - 1);
        let cooldown = BASE_COOLDOWN.saturating_mul(1 << doublings).min(MAX_COOLDOWN);
        self.last_failure_ms.saturating_add(cooldown.as_millis() as u64)
    }

    /// Returns true while the provider is in a cool-down at time `now_ms`.
    pub fn is_cooling_down(&self, now_ms: u64) -> bool {
        now_ms < self.cooldown_until_ms()
    }
}

/// The result of one request to a provider.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The provider sent its whole response.
    Success {
        /// Time from the start of the attempt to the first chunk.
        time_to_first_chunk: Duration,
        /// Output tokens per second after the first chunk, when measurable.
        tokens_per_second: Option<f64>,
    },
    /// The provider failed.
    Failure(FailureKind),
    /// The provider rejected the request because it is at its concurrency limit.
    Busy,
    /// The provider rejected the request as invalid. It counts as a refusal but starts no
    /// cool-down, because the client's request may be at fault rather than the provider.
    RejectedAsInvalid,
}

enum WriterMessage {
    Wake,
    Close(oneshot::Sender<Result<(), GatewayError>>),
}

struct Shared {
    path: PathBuf,
    stats: Mutex<HashMap<PeerId, PeerStats>>,
    dirty: Mutex<HashSet<PeerId>>,
}

/// Reputation numbers in memory, backed by a redb file. Cheap to clone.
#[derive(Clone)]
pub struct ReputationStore {
    shared: Arc<Shared>,
    writer_messages: mpsc::Sender<WriterMessage>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for ReputationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReputationStore").field("path", &self.shared.path).finish_non_exhaustive()
    }
}

impl ReputationStore {
    /// Opens or creates the redb file at `path`, loads every peer and starts the writer thread.
    ///
    /// Blocks on file i/o; call it from a blocking context or at start-up.
    pub fn open(path: &Path) -> Result<Self, GatewayError> {
        let store_error = |reason: String| GatewayError::Store { path: path.to_path_buf(), reason };

        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| store_error(format!("cannot create folder: {e}")))?;
        }
        let db = Database::create(path).map_err(|e| store_error(format!("cannot open: {e}; is another gateway using this data dir?")))?;
        let stats = load_peers(&db).map_err(|e| store_error(format!("cannot read: {e}; move the file away to start with empty reputation")))?;
        tracing::debug!(path = %path.display(), peers = stats.len(), "Opened reputation store");

        let shared = Arc::new(Shared { path: path.to_path_buf(), stats: Mutex::new(stats), dirty: Mutex::new(HashSet::new()) });
        let (writer_messages, receiver) = mpsc::channel(WRITER_CHANNEL_CAPACITY);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("reputation-writer".into())
            .spawn(move || run_writer(db, &writer_shared, receiver))
            .map_err(|e| store_error(format!("cannot start the writer thread: {e}")))?;

        Ok(Self { shared, writer_messages, writer: Arc::new(Mutex::new(Some(writer))) })
    }

    /// Records one outcome for `peer`; the writer commits it in the background.
    pub fn record(&self, peer: PeerId, outcome: Outcome) {
        if let Ok(mut stats) = self.shared.stats.lock() {
            apply(stats.entry(peer).or_default(), outcome, now_ms());
        }
        if let Ok(mut dirty) = self.shared.dirty.lock() {
            dirty.insert(peer);
        }
        // A full channel means a wake-up is already pending, and that write takes this peer too.
        let _ = self.writer_messages.try_send(WriterMessage::Wake);
    }

    /// Returns the statistics of one peer.
    pub fn get(&self, peer: &PeerId) -> Option<PeerStats> {
        self.shared.stats.lock().ok().and_then(|stats| stats.get(peer).cloned())
    }

    /// Returns the statistics of every known peer.
    pub fn snapshot(&self) -> HashMap<PeerId, PeerStats> {
        self.shared.stats.lock().map(|stats| stats.clone()).unwrap_or_default()
    }

    /// Commits every pending update and stops the writer thread.
    ///
    /// Updates recorded after this call stay in memory only.
    pub async fn close(&self) -> Result<(), GatewayError> {
        let (reply, result) = oneshot::channel();
        if self.writer_messages.send(WriterMessage::Close(reply)).await.is_err() {
            return Ok(()); // Already closed.
        }
        let flushed = result.await.unwrap_or(Ok(()));

        let writer = self.writer.lock().ok().and_then(|mut writer| writer.take());
        if let Some(writer) = writer {
            // Joining makes sure the thread has dropped its handle on the database file.
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        flushed
    }
}

fn apply(stats: &mut PeerStats, outcome: Outcome, now_ms: u64) {
    stats.last_seen_ms = now_ms;
    match outcome {
        Outcome::Success { time_to_first_chunk, tokens_per_second } => {
            stats.successes = stats.successes.saturating_add(1);
            stats.consecutive_failures = 0;
            stats.ttft_ms = Some(moving_average(stats.ttft_ms, time_to_first_chunk.as_secs_f64() * 1000.0));
            if let Some(rate) = tokens_per_second.filter(|rate| rate.is_finite() && *rate >= 0.0) {
                stats.tokens_per_second = Some(moving_average(stats.tokens_per_second, rate));
            }
        }
        Outcome::Failure(kind) => {
            stats.failures.increment(kind);
            stats.last_failure_ms = now_ms;
            stats.consecutive_failures = stats.consecutive_failures.saturating_add(1);
            if kind == FailureKind::Malformed {
                stats.consecutive_failures = stats.consecutive_failures.max(MAX_COOLDOWN_STRIKES);
            }
        }
        Outcome::Busy => stats.busy = stats.busy.saturating_add(1),
        Outcome::RejectedAsInvalid => stats.failures.increment(FailureKind::Refused),
    }
}

fn moving_average(previous: Option<f64>, sample: f64) -> f64 {
    match previous {
        Some(previous) => previous + EWMA_WEIGHT * (sample - previous),
        None => sample,
    }
}

fn load_peers(db: &Database) -> Result<HashMap<PeerId, PeerStats>, redb::Error> {
    let transaction = db.begin_write()?;
    let mut peers = HashMap::new();
    {
        let table = transaction.open_table(PEERS_TABLE)?;
        for row in table.iter()? {
            let (key, value) = row?;
            let peer = key.value().parse::<PeerId>();
            let stats = serde_json::from_slice::<PeerStats>(value.value());
            match (peer, stats) {
                (Ok(peer), Ok(stats)) => {
                    peers.insert(peer, stats);
                }
                _ => tracing::warn!(peer = key.value(), "Skipped unreadable reputation row"),
            }
        }
    }
    transaction.commit()?;
    Ok(peers)
}

/// Writes dirty peers on each wake-up until [`ReputationStore::close`], or until every store
/// handle is dropped, in which case it writes once more and stops.
///
/// The thread owns the database, so the file lock is released when it stops, even while
/// clones of the store are still alive (such as in connection tasks that outlive the server).
fn run_writer(db: Database, shared: &Shared, mut messages: mpsc::Receiver<WriterMessage>) {
    while let Some(message) = messages.blocking_recv() {
        let result = write_dirty(&db, shared);
        match message {
            WriterMessage::Wake => {
                if let Err(e) = result {
                    tracing::warn!(path = %shared.path.display(), error = %e, "Cannot write reputation; will retry on the next update");
                }
            }
            WriterMessage::Close(reply) => {
                let _ = reply.send(result);
                return;
            }
        }
    }
    if let Err(e) = write_dirty(&db, shared) {
        tracing::warn!(path = %shared.path.display(), error = %e, "Cannot write reputation before stopping");
    }
}

/// Commits every dirty peer in one durable transaction. On failure they stay dirty.
fn write_dirty(db: &Database, shared: &Shared) -> Result<(), GatewayError> {
    let peers: Vec<PeerId> = match shared.dirty.lock() {
        Ok(mut dirty) => dirty.drain().collect(),
        Err(_) => return Ok(()),
    };
    if peers.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, Vec<u8>)> = {
        let Ok(stats) = shared.stats.lock() else {
            return Ok(());
        };
        peers.iter().filter_map(|peer| Some((peer.to_string(), serde_json::to_vec(stats.get(peer)?).ok()?))).collect()
    };

    let write = || -> Result<(), redb::Error> {
        let transaction = db.begin_write()?;
        {
            let mut table = transaction.open_table(PEERS_TABLE)?;
            for (peer, value) in &rows {
                table.insert(peer.as_str(), value.as_slice())?;
            }
        }
        transaction.commit()?;
        Ok(())
    };
    write().map_err(|e| {
        if let Ok(mut dirty) = shared.dirty.lock() {
            dirty.extend(peers);
        }
        GatewayError::Store { path: shared.path.clone(), reason: format!("cannot write: {e}") }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        spare_gossip::identity::Identity::generate().unwrap().peer_id()
    }

    fn success(ttft_ms: u64, rate: f64) -> Outcome {
        Outcome::Success { time_to_first_chunk: Duration::from_millis(ttft_ms), tokens_per_second: Some(rate) }
    }

    #[test]
    fn outcomes_update_counts_and_averages() {
        let mut stats = PeerStats::default();
        apply(&mut stats, success(100, 50.0), 7);
        apply(&mut stats, success(200, 10.0), 8);
        apply(&mut stats, Outcome::Failure(FailureKind::Timeout), 9);
        apply(&mut stats, Outcome::Failure(FailureKind::Malformed), 10);

        assert_eq!(stats.successes, 2);
        assert_eq!(stats.failures.timeout, 1);
        assert_eq!(stats.failures.malformed, 1);
        assert_eq!(stats.failures.total(), 2);
        assert_eq!(stats.last_seen_ms, 10);
        let ttft = stats.ttft_ms.unwrap();
        assert!((ttft - 130.0).abs() < 1e-9, "{ttft}");
        let rate = stats.tokens_per_second.unwrap();
        assert!((rate - 38.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn success_ratio_starts_at_one_half() {
        let mut stats = PeerStats::default();
        assert!((stats.success_ratio() - 0.5).abs() < 1e-9);
        apply(&mut stats, success(1, 1.0), 1);
        assert!(stats.success_ratio() > 0.5);
        apply(&mut stats, Outcome::Failure(FailureKind::Refused), 1);
        apply(&mut stats, Outcome::Failure(FailureKind::Refused), 1);
        assert!(stats.success_ratio() < 0.5);
    }

    #[test]
    fn cooldown_doubles_and_caps() {
        let mut stats = PeerStats::default();
        assert_eq!(stats.cooldown_until_ms(), 0);
        assert!(!stats.is_cooling_down(0));

        let start = 1_000_000;
        let expected_secs = [10, 20, 40, 80, 160, 320, 600, 600, 600];
        for (failures, secs) in expected_secs.into_iter().enumerate() {
            apply(&mut stats, Outcome::Failure(FailureKind::Timeout), start);
            assert_eq!(stats.consecutive_failures as usize, failures + 1);
            assert_eq!(stats.cooldown_until_ms(), start + secs * 1000, "after {} failures", failures + 1);
        }
        assert!(stats.is_cooling_down(start + 599_999));
        assert!(!stats.is_cooling_down(start + 600_000));

        stats.consecutive_failures = u32::MAX;
        assert_eq!(stats.cooldown_until_ms(), start + 600_000);
    }

    #[test]
    fn success_ends_cooldown() {
        let mut stats = PeerStats::default();
        apply(&mut stats, Outcome::Failure(FailureKind::Refused), 5_000);
        apply(&mut stats, Outcome::Failure(FailureKind::Unreachable), 6_000);
        assert!(stats.is_cooling_down(7_000));

        apply(&mut stats, success(100, 10.0), 7_000);
        assert_eq!(stats.consecutive_failures, 0);
        assert!(!stats.is_cooling_down(7_000));
        assert_eq!(stats.last_failure_ms, 6_000);
    }

    #[test]
    fn malformed_frame_earns_maximum_cooldown() {
        let mut stats = PeerStats::default();
        apply(&mut stats, Outcome::Failure(FailureKind::Malformed), 1_000);
        assert_eq!(stats.cooldown_until_ms(), 1_000 + MAX_COOLDOWN.as_millis() as u64);
    }

    #[test]
    fn busy_is_not_a_failure() {
        let mut stats = PeerStats::default();
        apply(&mut stats, success(100, 10.0), 1);
        let ratio = stats.success_ratio();

        apply(&mut stats, Outcome::Busy, 2);
        apply(&mut stats, Outcome::Busy, 3);
        assert_eq!(stats.busy, 2);
        assert_eq!(stats.failures.total(), 0);
        assert_eq!(stats.success_ratio(), ratio);
        assert!(!stats.is_cooling_down(3));
        assert_eq!(stats.last_seen_ms, 3);
    }

    #[test]
    fn invalid_request_rejection_starts_no_cooldown() {
        let mut stats = PeerStats::default();
        apply(&mut stats, Outcome::RejectedAsInvalid, 1_000);
        assert_eq!(stats.failures.refused, 1);
        assert_eq!(stats.consecutive_failures, 0);
        assert!(!stats.is_cooling_down(1_000));
    }

    #[test]
    fn rows_without_cooldown_fields_load() {
        let old_row = br#"{"successes":3,"failures":{"unreachable":0,"refused":1,"timeout":0,"malformed":0,"mid_stream":0},"ttft_ms":120.0,"tokens_per_second":null,"last_seen_ms":9}"#;
        let stats: PeerStats = serde_json::from_slice(old_row).unwrap();
        assert_eq!(stats.successes, 3);
        assert_eq!(stats.failures.refused, 1);
        assert_eq!(stats.consecutive_failures, 0);
        assert_eq!(stats.busy, 0);
    }

    #[tokio::test]
    async fn close_releases_file_while_clones_live() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        let store = ReputationStore::open(&path).unwrap();
        let clone = store.clone();
        store.record(peer(), Outcome::Busy);
        store.close().await.unwrap();

        let reopened = ReputationStore::open(&path).unwrap();
        assert_eq!(reopened.snapshot().len(), 1);
        reopened.close().await.unwrap();
        drop(clone);
    }

    #[tokio::test]
    async fn reputation_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        let (good, bad) = (peer(), peer());

        let store = ReputationStore::open(&path).unwrap();
        store.record(good, success(120, 40.0));
        store.record(good, success(80, 60.0));
        store.record(bad, Outcome::Failure(FailureKind::Unreachable));
        store.record(bad, Outcome::Failure(FailureKind::MidStream));
        let before = store.snapshot();
        store.close().await.unwrap();
        drop(store);

        let reopened = ReputationStore::open(&path).unwrap();
        assert_eq!(reopened.snapshot(), before);
        assert_eq!(reopened.get(&good).unwrap().successes, 2);
        assert_eq!(reopened.get(&bad).unwrap().failures.unreachable, 1);
        assert_eq!(reopened.get(&bad).unwrap().failures.mid_stream, 1);
        reopened.close().await.unwrap();
    }

    #[tokio::test]
    async fn updates_reach_disk_without_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        let provider = peer();

        let store = ReputationStore::open(&path).unwrap();
        store.record(provider, Outcome::Failure(FailureKind::Refused));
        drop(store);

        // The writer thread ends on its own once the last handle is gone; reopening fails
        // until it has released the file.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let reopened = loop {
            match ReputationStore::open(&path) {
                Ok(store) => break store,
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(reopened.get(&provider).unwrap().failures.refused, 1);
        reopened.close().await.unwrap();
    }

    #[tokio::test]
    async fn second_open_of_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        let store = ReputationStore::open(&path).unwrap();

        let error = ReputationStore::open(&path).unwrap_err().to_string();
        assert!(error.contains("another gateway"), "{error}");
        store.close().await.unwrap();
    }
}
