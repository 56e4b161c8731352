//! Raw request streams over libp2p: a [`Behaviour`] that hands every negotiated inbound stream
//! to the acceptor registered for its protocol, and a cloneable [`Control`] that opens outbound
//! streams, dialling the peer first when no connection exists.
//!
//! Each acceptor gets a bounded queue ([`StreamConfig::accept_queue_capacity`]). A stream that
//! arrives while its acceptor's queue is full is dropped with a rate-limited warning, so an
//! overloaded application sheds load instead of stalling the swarm. Only protocols with a live
//! acceptor are offered during negotiation, so a remote asking for any other protocol gets a
//! clean negotiation failure.
//!
//! A connection stays open while any of its streams is open, including streams that wait in an
//! acceptor queue, because libp2p-swarm 0.48 counts live [`Stream`]s for keep-alive.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::handler::{ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, DialError, FromSwarm, NetworkBehaviour, NotifyHandler, Stream,
    StreamProtocol, StreamUpgradeError, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

/// Default number of inbound streams that may wait for one acceptor before new ones are dropped.
pub const DEFAULT_ACCEPT_QUEUE_CAPACITY: usize = 256;
/// Default time allowed for dialling, connecting and negotiating one outbound stream.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of the channel that carries open requests from [`Control`]s to the behaviour.
const OPEN_REQUEST_CHANNEL_CAPACITY: usize = 256;
/// Minimum time between two warnings about dropped inbound streams. Drops in between are counted.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Settings for the stream behaviour.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Inbound streams that may wait for one acceptor before further ones are dropped. Values
    /// below 1 count as 1.
    pub accept_queue_capacity: usize,
    /// Time allowed for [`Control::open_stream`], including any dial.
    pub open_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self { accept_queue_capacity: DEFAULT_ACCEPT_QUEUE_CAPACITY, open_timeout: DEFAULT_OPEN_TIMEOUT }
    }
}

/// An error from opening or accepting streams.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer rejected every protocol we proposed.
    #[error("peer {peer} does not support {protocol}; check that it runs a compatible version and serves this protocol")]
    UnsupportedProtocol {
        /// The remote peer.
        peer: PeerId,
        /// The protocol we asked for.
        protocol: StreamProtocol,
    },
    /// No connection to the peer could be established.
    #[error("dialling peer {peer} failed: {reason}; check that it is running and that its address is known")]
    DialFailed {
        /// The remote peer.
        peer: PeerId,
        /// The dial error.
        reason: String,
    },
    /// The stream was not open within the configured time.
    #[error("opening a {protocol} stream to peer {peer} timed out after {timeout:?}")]
    Timeout {
        /// The remote peer.
        peer: PeerId,
        /// The protocol we asked for.
        protocol: StreamProtocol,
        /// The configured open timeout.
        timeout: Duration,
    },
    /// The connection closed or failed before the stream was negotiated.
    #[error("opening a {protocol} stream to peer {peer} failed: {reason}")]
    Io {
        /// The remote peer.
        peer: PeerId,
        /// The protocol we asked for.
        protocol: StreamProtocol,
        /// What failed.
        reason: String,
    },
    /// Another acceptor is registered for the protocol.
    #[error("{0} already has an acceptor; drop the existing IncomingStreams before accepting again")]
    AlreadyAccepting(StreamProtocol),
    /// The swarm that runs the behaviour has stopped.
    #[error("the network event loop has stopped")]
    Stopped,
}

/// A request from a [`Control`] to open one outbound stream.
#[derive(Debug)]
pub struct OpenRequest {
    peer: PeerId,
    protocol: StreamProtocol,
    reply: oneshot::Sender<Result<Stream, StreamError>>,
}

impl OpenRequest {
    fn fail(self, error: StreamError) {
        // A caller that timed out has dropped the receiver, so the error has no recipient.
        let _ = self.reply.send(Err(error));
    }
}

/// A registered acceptor: the sending end of its queue and an id unique to this registration.
struct Acceptor {
    id: u64,
    queue: mpsc::Sender<(PeerId, Stream)>,
}

/// Inbound streams dropped since the last warning, and when that warning was logged.
#[derive(Default)]
struct DropLog {
    last_warning: Option<Instant>,
    since_last_warning: u64,
}

/// State shared by the behaviour, its connection handlers, its controls and the acceptors.
struct Shared {
    acceptors: Mutex<HashMap<StreamProtocol, Acceptor>>,
    next_acceptor_id: AtomicU64,
    dropped_inbound: AtomicU64,
    drop_log: Mutex<DropLog>,
    accept_queue_capacity: usize,
}

impl Shared {
    fn acceptors(&self) -> MutexGuard<'_, HashMap<StreamProtocol, Acceptor>> {
        // A panic while holding this lock cannot leave the map half-updated, so keep using it.
        self.acceptors.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn accepted_protocols(&self) -> Vec<StreamProtocol> {
        self.acceptors().keys().cloned().collect()
    }

    /// Queues an inbound stream for its acceptor, or drops it when the queue is full or gone.
    fn deliver(&self, peer: PeerId, protocol: StreamProtocol, stream: Stream) {
        let Some(queue) = self.acceptors().get(&protocol).map(|acceptor| acceptor.queue.clone()) else {
            tracing::debug!(%peer, %protocol, "Dropped inbound stream because its protocol no longer has an acceptor");
            return;
        };
        match queue.try_send((peer, stream)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.record_drop(peer, &protocol),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(%peer, %protocol, "Dropped inbound stream because its protocol no longer has an acceptor");
            }
        }
    }

    fn record_drop(&self, peer: PeerId, protocol: &StreamProtocol) {
        self.dropped_inbound.fetch_add(1, Ordering::Relaxed);
        let mut log = self.drop_log.lock().unwrap_or_else(PoisonError::into_inner);
        log.since_last_warning += 1;
        let due = log.last_warning.is_none_or(|at| at.elapsed() >= DROP_WARNING_INTERVAL);
        if due {
            tracing::warn!(
                %peer,
                %protocol,
                capacity = self.accept_queue_capacity,
                dropped = log.since_last_warning,
                "Dropped inbound streams because the acceptor queue is full; the application is not keeping up",
            );
            log.last_warning = Some(Instant::now());
            log.since_last_warning = 0;
        } else {
            tracing::debug!(%peer, %protocol, "Dropped inbound stream because the acceptor queue is full");
        }
    }
}

/// The stream [`NetworkBehaviour`]. Create it with [`Behaviour::new`], take a [`Control`] from
/// [`Behaviour::control`] and add the behaviour to the swarm.
pub struct Behaviour {
    shared: Arc<Shared>,
    control: Control,
    open_requests: mpsc::Receiver<OpenRequest>,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Requests for peers without a connection, waiting for a dial to finish.
    waiting_for_dial: HashMap<PeerId, Vec<OpenRequest>>,
    actions: VecDeque<ToSwarm<Infallible, OpenRequest>>,
}

impl Behaviour {
    /// Creates the behaviour with no acceptors.
    pub fn new(config: StreamConfig) -> Self {
        let shared = Arc::new(Shared {
            acceptors: Mutex::new(HashMap::new()),
            next_acceptor_id: AtomicU64::new(0),
            dropped_inbound: AtomicU64::new(0),
            drop_log: Mutex::new(DropLog::default()),
            accept_queue_capacity: config.accept_queue_capacity.max(1),
        });
        let (requests, open_requests) = mpsc::channel(OPEN_REQUEST_CHANNEL_CAPACITY);
        let control = Control { requests, shared: shared.clone(), open_timeout: config.open_timeout };
        Self { shared, control, open_requests, connections: HashMap::new(), waiting_for_dial: HashMap::new(), actions: VecDeque::new() }
    }

    /// Returns a handle that opens streams and registers acceptors.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    fn new_handler(&self, peer: PeerId) -> Handler {
        Handler { peer, shared: self.shared.clone(), pending: VecDeque::new() }
    }

    /// Sends a request to an open connection, or queues it and dials the peer.
    fn route(&mut self, request: OpenRequest) {
        if request.reply.is_closed() {
            return;
        }
        let peer = request.peer;
        if let Some(connection) = self.connections.get(&peer).and_then(|ids| ids.first()) {
            self.actions.push_back(ToSwarm::NotifyHandler { peer_id: peer, handler: NotifyHandler::One(*connection), event: request });
            return;
        }

        let waiting = self.waiting_for_dial.entry(peer).or_default();
        waiting.retain(|queued| !queued.reply.is_closed());
        let dial_needed = waiting.is_empty();
        waiting.push(request);
        if dial_needed {
            // An ongoing dial by another behaviour satisfies this condition too; its outcome
            // arrives as ConnectionEstablished or DialFailure all the same.
            let opts = DialOpts::peer_id(peer).condition(PeerCondition::DisconnectedAndNotDialing).build();
            self.actions.push_back(ToSwarm::Dial { opts });
        }
    }

    fn on_connection_established(&mut self, peer: PeerId, connection: ConnectionId) {
        self.connections.entry(peer).or_default().push(connection);
        for request in self.waiting_for_dial.remove(&peer).unwrap_or_default() {
            self.actions.push_back(ToSwarm::NotifyHandler { peer_id: peer, handler: NotifyHandler::One(connection), event: request });
        }
    }

    fn on_connection_closed(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(ids) = self.connections.get_mut(&peer) {
            ids.retain(|id| *id != connection);
            if ids.is_empty() {
                self.connections.remove(&peer);
            }
        }
    }

    fn on_dial_failure(&mut self, peer: PeerId, error: &DialError) {
        // The condition is false when a dial to the peer is already running. That dial reports
        // its own outcome, so the waiting requests stay.
        if matches!(error, DialError::DialPeerConditionFalse(_)) {
            return;
        }
        for request in self.waiting_for_dial.remove(&peer).unwrap_or_default() {
            request.fail(StreamError::DialFailed { peer, reason: error.to_string() });
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(&mut self, _: ConnectionId, peer: PeerId, _: &Multiaddr, _: &Multiaddr) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.new_handler(peer))
    }

    fn handle_established_outbound_connection(&mut self, _: ConnectionId, peer: PeerId, _: &Multiaddr, _: Endpoint, _: PortUse) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.new_handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(established) => self.on_connection_established(established.peer_id, established.connection_id),
            FromSwarm::ConnectionClosed(closed) => self.on_connection_closed(closed.peer_id, closed.connection_id),
            FromSwarm::DialFailure(failure) => {
                if let Some(peer) = failure.peer_id {
                    self.on_dial_failure(peer, failure.error);
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some(request)) = self.open_requests.poll_recv(cx) {
            self.route(request);
        }
        match self.actions.pop_front() {
            Some(action) => Poll::Ready(action),
            None => Poll::Pending,
        }
    }
}

/// A cloneable handle that opens outbound streams and registers acceptors for inbound ones.
#[derive(Clone)]
pub struct Control {
    requests: mpsc::Sender<OpenRequest>,
    shared: Arc<Shared>,
    open_timeout: Duration,
}

// StreamError names the peer and protocol in every variant, which makes it larger than clippy's
// limit. Errors are built once per failed open or accept, so boxing them would gain nothing.
#[allow(clippy::result_large_err)]
impl Control {
    /// Opens a stream to `peer` for `protocol`, dialling the peer if no connection is open.
    ///
    /// Fails when the dial fails, when the peer does not support `protocol`, or when the whole
    /// attempt takes longer than [`StreamConfig::open_timeout`].
    pub async fn open_stream(&self, peer: PeerId, protocol: StreamProtocol) -> Result<Stream, StreamError> {
        let (reply, result) = oneshot::channel();
        let request = OpenRequest { peer, protocol: protocol.clone(), reply };
        let open = async {
            self.requests.send(request).await.map_err(|_| StreamError::Stopped)?;
            match result.await {
                Ok(opened) => opened,
                Err(_) => Err(StreamError::Io { peer, protocol: protocol.clone(), reason: "the connection closed before the stream was open".into() }),
            }
        };
        match tokio::time::timeout(self.open_timeout, open).await {
            Ok(opened) => opened,
            Err(_) => Err(StreamError::Timeout { peer, protocol, timeout: self.open_timeout }),
        }
    }

    /// Registers the acceptor for `protocol` and starts offering it to remote peers.
    ///
    /// Only one acceptor per protocol may exist. Dropping the returned [`IncomingStreams`]
    /// unregisters it and drops the streams still in its queue.
    ///
    /// NOTE: negotiation reads the registered protocols for every inbound stream, but the list
    /// that identify reports to peers is refreshed only when each connection is next polled.
    pub fn accept(&self, protocol: StreamProtocol) -> Result<IncomingStreams, StreamError> {
        let mut acceptors = self.shared.acceptors();
        if acceptors.get(&protocol).is_some_and(|acceptor| !acceptor.queue.is_closed()) {
            return Err(StreamError::AlreadyAccepting(protocol));
        }
        let id = self.shared.next_acceptor_id.fetch_add(1, Ordering::Relaxed);
        let (queue, receiver) = mpsc::channel(self.shared.accept_queue_capacity);
        acceptors.insert(protocol.clone(), Acceptor { id, queue });
        Ok(IncomingStreams { protocol, id, receiver, shared: self.shared.clone() })
    }

    /// Counts inbound streams dropped since start because an acceptor queue was full.
    pub fn dropped_inbound_streams(&self) -> u64 {
        self.shared.dropped_inbound.load(Ordering::Relaxed)
    }
}

/// The inbound streams of one protocol, as `(remote peer, stream)` pairs, in arrival order.
pub struct IncomingStreams {
    protocol: StreamProtocol,
    id: u64,
    receiver: mpsc::Receiver<(PeerId, Stream)>,
    shared: Arc<Shared>,
}

impl futures::Stream for IncomingStreams {
    type Item = (PeerId, Stream);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for IncomingStreams {
    fn drop(&mut self) {
        let mut acceptors = self.shared.acceptors();
        if acceptors.get(&self.protocol).is_some_and(|acceptor| acceptor.id == self.id) {
            acceptors.remove(&self.protocol);
        }
    }
}

/// The [`ConnectionHandler`] of one connection: negotiates outbound streams requested by the
/// behaviour and passes inbound ones to the acceptors.
pub struct Handler {
    peer: PeerId,
    shared: Arc<Shared>,
    /// Open requests not yet handed to the connection as outbound stream requests.
    pending: VecDeque<OpenRequest>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = OpenRequest;
    type ToBehaviour = Infallible;
    type InboundProtocol = Protocols;
    type OutboundProtocol = Protocols;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = OpenRequest;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        SubstreamProtocol::new(Protocols(self.shared.accepted_protocols()), ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.pending.is_empty()
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>> {
        while let Some(request) = self.pending.pop_front() {
            if request.reply.is_closed() {
                continue;
            }
            let upgrade = Protocols(vec![request.protocol.clone()]);
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol: SubstreamProtocol::new(upgrade, request) });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, request: OpenRequest) {
        self.pending.push_back(request);
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, Self::InboundOpenInfo, Self::OutboundOpenInfo>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol: (stream, protocol), .. }) => {
                self.shared.deliver(self.peer, protocol, stream);
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol: (stream, _), info: request }) => {
                // A caller that timed out has dropped its receiver; the stream then closes here.
                let _ = request.reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: request, error }) => {
                let peer = request.peer;
                let protocol = request.protocol.clone();
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => StreamError::UnsupportedProtocol { peer, protocol },
                    StreamUpgradeError::Timeout => StreamError::Io { peer, protocol, reason: "stream negotiation timed out".into() },
                    StreamUpgradeError::Io(e) => StreamError::Io { peer, protocol, reason: e.to_string() },
                    StreamUpgradeError::Apply(never) => match never {},
                };
                request.fail(error);
            }
            _ => {}
        }
    }
}

/// The upgrade for raw streams: negotiates one of a list of protocols and returns the stream
/// untouched, with the protocol that was agreed on.
#[derive(Debug, Clone)]
pub struct Protocols(Vec<StreamProtocol>);

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        futures::future::ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        futures::future::ready(Ok((stream, protocol)))
    }
}
