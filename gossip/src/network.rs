//! The libp2p swarm: one event loop ([`Network`]) owns it, and a cloneable [`NetworkHandle`]
//! drives it over a bounded command channel.
//!
//! The swarm combines gossipsub (offers), Kademlia (provider records keyed by model), mDNS
//! (LAN discovery), identify (learning listen addresses), ping, and a stream behaviour that
//! carries [`crate::INFER_PROTOCOL`] and [`crate::OFFER_PROTOCOL`].
//!
//! Offers heard on gossipsub are verified here and stored in a shared [`OfferBook`]. When a
//! new peer connects, the loop fetches its current offer over [`crate::OFFER_PROTOCOL`], so a
//! provider is routable as soon as it is connected rather than at its next gossip round.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle};
use libp2p::{Multiaddr, PeerId, Stream, Swarm, gossipsub, identify, kad, mdns, multiaddr::Protocol, noise, ping, tcp, yamux};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::identity::Identity;
use crate::offer::{MAX_OFFER_BYTES, SignedOffer, VerifiedOffer, now_ms};
use crate::offer_book::{InsertOutcome, OfferBook};
use crate::streams::{self, IncomingStreams, StreamConfig};
use crate::{Error, KAD_PROTOCOL, OFFER_PROTOCOL, OFFER_TOPIC, framing, model_key};

/// How long a penalised provider's offers are ignored.
pub const PENALTY: Duration = Duration::from_secs(600);
/// How long fetching a peer's offer over [`OFFER_PROTOCOL`] may take.
const OFFER_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a DHT provider lookup may take.
const FIND_PROVIDERS_TIMEOUT: Duration = Duration::from_secs(10);
/// How often expired offers are pruned and bootstrap peers redialled when we are alone.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a Kademlia bootstrap refreshes the routing table.
const KAD_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(60);
/// Concurrent offer requests served before new ones are dropped.
const MAX_OFFER_REQUESTS_IN_FLIGHT: usize = 32;
/// Minimum time between republishing our offer for newly subscribed peers.
const MIN_REPUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// Capacity of the command channel from handles to the event loop.
const COMMAND_CHANNEL_CAPACITY: usize = 64;

/// Settings for the swarm.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start, and again whenever no peer is connected.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// How long a connection with no open streams stays up.
    pub idle_connection_timeout: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec![Multiaddr::empty().with(Protocol::Ip4([127, 0, 0, 1].into())).with(Protocol::Tcp(0))],
            bootstrap: Vec::new(),
            mdns: true,
            idle_connection_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: streams::Behaviour,
}

/// State shared between the event loop and its handles.
#[derive(Default)]
struct Shared {
    book: Mutex<OfferBook>,
    own_offer: RwLock<Option<SignedOffer>>,
    listen_addrs: RwLock<Vec<Multiaddr>>,
    connected: RwLock<HashSet<PeerId>>,
}

enum Command {
    Publish { offer: SignedOffer, reply: oneshot::Sender<Result<(), Error>> },
    StartProviding { model: String },
    FindProviders { model: String, reply: oneshot::Sender<Vec<PeerId>> },
    AddAddresses { peer: PeerId, addrs: Vec<Multiaddr>, done: oneshot::Sender<()> },
    Dial { addr: Multiaddr },
    Disconnect { peer: PeerId },
    Shutdown,
}

/// The swarm event loop. Create it with [`Network::new`] and drive it with [`Network::run`].
pub struct Network {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    control: streams::Control,
    bootstrap: Vec<Multiaddr>,
    topic: gossipsub::IdentTopic,
    tasks: JoinSet<()>,
    /// A sender that does not keep the command channel open, for handles made by the loop.
    weak_commands: mpsc::WeakSender<Command>,
    finds: HashMap<kad::QueryId, (oneshot::Sender<Vec<PeerId>>, HashSet<PeerId>)>,
    offer_requests: Arc<Semaphore>,
    last_republish: Option<tokio::time::Instant>,
}

/// A cloneable handle to the running [`Network`].
#[derive(Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    control: streams::Control,
    shared: Arc<Shared>,
    local_peer_id: PeerId,
}

impl Network {
    /// Builds the swarm with default stream settings, starts listening and dials the
    /// bootstrap peers.
    pub fn new(identity: &Identity, config: NetworkConfig) -> Result<(Self, NetworkHandle), Error> {
        Self::with_stream_config(identity, config, StreamConfig::default())
    }

    /// Builds the swarm like [`Network::new`], with the given acceptor queue capacity and
    /// stream open timeout.
    pub fn with_stream_config(identity: &Identity, config: NetworkConfig, stream_config: StreamConfig) -> Result<(Self, NetworkHandle), Error> {
        let topic = gossipsub::IdentTopic::new(OFFER_TOPIC);
        let mut swarm = build_swarm(identity, &config, &topic, stream_config)?;

        for addr in &config.listen {
            ensure_port_free(addr)?;
            swarm.listen_on(addr.clone()).map_err(|e| Error::Setup(format!("cannot listen on {addr}: {e}; choose another address or port")))?;
        }
        for addr in &config.bootstrap {
            add_bootstrap_address(&mut swarm, addr);
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "Cannot dial bootstrap peer");
            }
        }

        let control = swarm.behaviour().stream.control();
        let shared = Arc::new(Shared::default());
        let (commands_tx, commands) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let handle = NetworkHandle { commands: commands_tx, control: control.clone(), shared: shared.clone(), local_peer_id: *swarm.local_peer_id() };

        let network = Self {
            swarm,
            commands,
            shared,
            control,
            bootstrap: config.bootstrap,
            topic,
            tasks: JoinSet::new(),
            weak_commands: handle.commands.downgrade(),
            finds: HashMap::new(),
            offer_requests: Arc::new(Semaphore::new(MAX_OFFER_REQUESTS_IN_FLIGHT)),
            last_republish: None,
        };
        Ok((network, handle))
    }

    /// Runs the event loop until [`NetworkHandle::shutdown`] or until every handle is dropped.
    pub async fn run(mut self) {
        self.serve_offer_requests();
        let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
        let mut kad_bootstrap = tokio::time::interval(KAD_BOOTSTRAP_INTERVAL);

        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                _ = maintenance.tick() => self.maintain(),
                _ = kad_bootstrap.tick() => {
                    // NoKnownPeers is expected until the first peer connects.
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                Some(result) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "Network task failed");
                    }
                }
            }
        }

        self.tasks.shutdown().await;
        tracing::debug!("Network event loop stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { offer, reply } => {
                let result = self.publish(offer);
                let _ = reply.send(result);
            }
            Command::StartProviding { model } => {
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(model_key(&model)) {
                    tracing::warn!(%model, error = %e, "Cannot store provider record");
                }
            }
            Command::FindProviders { model, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(model_key(&model));
                self.finds.insert(id, (reply, HashSet::new()));
            }
            Command::AddAddresses { peer, addrs, done } => {
                for addr in addrs {
                    self.swarm.add_peer_address(peer, addr.clone());
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
                let _ = done.send(());
            }
            Command::Dial { addr } => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!(%addr, error = %e, "Cannot dial");
                }
            }
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Shutdown => {}
        }
    }

    fn publish(&mut self, offer: SignedOffer) -> Result<(), Error> {
        let bytes = offer.to_bytes()?;
        if let Ok(mut own) = self.shared.own_offer.write() {
            *own = Some(offer);
        }
        match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
            Ok(_) => Ok(()),
            // No subscriber yet is normal at start, because peers fetch the offer when they connect.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
            Err(gossipsub::PublishError::Duplicate) => Ok(()),
            Err(e) => Err(Error::Setup(format!("cannot publish offer: {e}"))),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let peer = *self.swarm.local_peer_id();
                tracing::info!("Listening on {}", address.clone().with(Protocol::P2p(peer)));
                if let Ok(mut addrs) = self.shared.listen_addrs.write() {
                    addrs.push(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if let Ok(mut addrs) = self.shared.listen_addrs.write() {
                    addrs.retain(|a| a != &address);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "Connected");
                if let Ok(mut connected) = self.shared.connected.write() {
                    connected.insert(peer_id);
                }
                self.fetch_offer_in_background(peer_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                tracing::debug!(peer = %peer_id, "Disconnected");
                if let Ok(mut connected) = self.shared.connected.write() {
                    connected.remove(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "Outgoing connection failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => self.on_gossipsub(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer)
                        && let Err(e) = self.swarm.dial(addr.clone())
                    {
                        tracing::debug!(%peer, %addr, error = %e, "Cannot dial peer found by mDNS");
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) if info.protocols.contains(&KAD_PROTOCOL) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            _ => {}
        }
    }

    fn on_gossipsub(&mut self, event: gossipsub::Event) {
        let (propagation_source, message_id, message) = match event {
            gossipsub::Event::Message { propagation_source, message_id, message } => (propagation_source, message_id, message),
            gossipsub::Event::Subscribed { peer_id, .. } => return self.republish_for_new_subscriber(peer_id),
            _ => return,
        };

        let now = now_ms();
        let acceptance = match SignedOffer::verify_bytes(&message.data, now) {
            Ok(verified) if message.source != Some(verified.peer_id) => {
                tracing::debug!(peer = %propagation_source, "Rejected offer whose signer is not its gossip source");
                gossipsub::MessageAcceptance::Reject
            }
            Ok(verified) => match self.insert_offer(verified, now) {
                InsertOutcome::Accepted => gossipsub::MessageAcceptance::Accept,
                InsertOutcome::Stale | InsertOutcome::Banned => gossipsub::MessageAcceptance::Ignore,
                InsertOutcome::Conflicting => gossipsub::MessageAcceptance::Reject,
            },
            Err(e) => {
                tracing::debug!(peer = %propagation_source, error = %e, "Rejected invalid offer");
                gossipsub::MessageAcceptance::Reject
            }
        };
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, acceptance);
    }

    /// Publishes our current offer again when a peer joins the topic, so that it reaches the
    /// rest of the network through that peer within seconds instead of at the next round.
    /// Rate-limited, so peers that subscribe over and over cannot make us flood the topic.
    fn republish_for_new_subscriber(&mut self, peer: PeerId) {
        let Some(offer) = self.shared.own_offer.read().ok().and_then(|own| own.clone()) else {
            return;
        };
        if self.last_republish.is_some_and(|at| at.elapsed() < MIN_REPUBLISH_INTERVAL) {
            return;
        }
        self.last_republish = Some(tokio::time::Instant::now());
        tracing::debug!(%peer, "Republishing offer for a new subscriber");
        if let Err(e) = self.publish(offer) {
            tracing::debug!(error = %e, "Cannot republish offer");
        }
    }

    fn insert_offer(&mut self, verified: VerifiedOffer, now: u64) -> InsertOutcome {
        let peer = verified.peer_id;
        let addrs = verified.offer.multiaddrs();
        let outcome = match self.shared.book.lock() {
            Ok(mut book) => book.insert(verified, now),
            Err(_) => InsertOutcome::Banned,
        };
        if outcome == InsertOutcome::Accepted {
            tracing::debug!(%peer, "Accepted offer");
            for addr in addrs {
                self.swarm.add_peer_address(peer, addr);
            }
        }
        outcome
    }

    fn on_kad(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed { id, result: kad::QueryResult::GetProviders(result), step, .. } = event else {
            return;
        };
        let Some((_, found)) = self.finds.get_mut(&id) else {
            return;
        };
        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
            found.extend(providers);
        }
        if step.last
            && let Some((reply, found)) = self.finds.remove(&id)
        {
            let _ = reply.send(found.into_iter().collect());
        }
    }

    fn maintain(&mut self) {
        let now = now_ms();
        if let Ok(mut book) = self.shared.book.lock() {
            book.prune(now);
        }
        self.finds.retain(|_, (reply, _)| !reply.is_closed());

        if self.swarm.connected_peers().next().is_none() {
            for addr in self.bootstrap.clone() {
                let _ = self.swarm.dial(addr);
            }
        }
    }

    /// Fetches a newly connected peer's offer unless we already hold a current one.
    fn fetch_offer_in_background(&mut self, peer: PeerId) {
        let has_offer = self.shared.book.lock().map(|book| book.contains(&peer, now_ms())).unwrap_or(true);
        let Some(commands) = self.weak_commands.upgrade() else {
            return;
        };
        if has_offer {
            return;
        }
        let handle = NetworkHandle { commands, control: self.control.clone(), shared: self.shared.clone(), local_peer_id: *self.swarm.local_peer_id() };
        self.tasks.spawn(async move {
            match handle.fetch_offer(peer).await {
                Ok(_) => tracing::debug!(%peer, "Fetched offer"),
                Err(e) => tracing::debug!(%peer, error = %e, "No offer from peer"),
            }
        });
    }

    /// Serves `/spare/offer/1` requests with our current offer (or none, for a gateway).
    fn serve_offer_requests(&mut self) {
        let mut incoming = match self.control.accept(OFFER_PROTOCOL) {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::error!(error = %e, "Cannot accept offer requests");
                return;
            }
        };
        let shared = self.shared.clone();
        let permits = self.offer_requests.clone();
        self.tasks.spawn(async move {
            while let Some((peer, mut stream)) = incoming.next().await {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "Dropped offer request: too many in flight");
                    continue;
                };
                let offer = shared.own_offer.read().ok().and_then(|own| own.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let write = framing::write_frame(&mut stream, &offer, MAX_OFFER_BYTES);
                    match tokio::time::timeout(OFFER_FETCH_TIMEOUT, write).await {
                        Ok(Ok(())) => {
                            let _ = stream.close().await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "Cannot send offer"),
                        Err(_) => tracing::debug!(%peer, "Sending offer timed out"),
                    }
                });
            }
        });
    }
}

impl NetworkHandle {
    /// This peer's id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Runs `f` on the offer book.
    pub fn with_book<T>(&self, f: impl FnOnce(&mut OfferBook) -> T) -> T {
        match self.shared.book.lock() {
            Ok(mut book) => f(&mut book),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Returns the addresses the swarm listens on now.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared.listen_addrs.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Peers with at least one open connection.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.shared.connected.read().map(|c| c.iter().copied().collect()).unwrap_or_default()
    }

    /// Publishes our offer on gossipsub and serves it to peers that ask.
    pub async fn publish_offer(&self, offer: SignedOffer) -> Result<(), Error> {
        let (reply, result) = oneshot::channel();
        self.send(Command::Publish { offer, reply }).await?;
        result.await.map_err(|_| Error::NetworkStopped)?
    }

    /// Announces in the DHT that we provide `model`.
    pub async fn start_providing(&self, model: String) -> Result<(), Error> {
        self.send(Command::StartProviding { model }).await
    }

    /// Looks up providers of `model` in the DHT.
    pub async fn find_providers(&self, model: &str) -> Result<Vec<PeerId>, Error> {
        let (reply, result) = oneshot::channel();
        self.send(Command::FindProviders { model: model.to_owned(), reply }).await?;
        match tokio::time::timeout(FIND_PROVIDERS_TIMEOUT, result).await {
            Ok(found) => found.map_err(|_| Error::NetworkStopped),
            Err(_) => Err(Error::Timeout(FIND_PROVIDERS_TIMEOUT)),
        }
    }

    /// Asks `peer` for its current offer, verifies it and adds it to the offer book.
    pub async fn fetch_offer(&self, peer: PeerId) -> Result<VerifiedOffer, Error> {
        let fetch = async {
            let mut stream = self.open_stream(peer, OFFER_PROTOCOL).await?;
            let offer: Option<SignedOffer> = framing::read_frame(&mut stream, MAX_OFFER_BYTES).await?;
            offer.ok_or_else(|| Error::InvalidOffer("peer has no offer".into()))
        };
        let signed = tokio::time::timeout(OFFER_FETCH_TIMEOUT, fetch).await.map_err(|_| Error::Timeout(OFFER_FETCH_TIMEOUT))??;

        let now = now_ms();
        let verified = signed.verify(now)?;
        if verified.peer_id != peer {
            return Err(Error::InvalidOffer(format!("offer from {peer} is signed by {}", verified.peer_id)));
        }
        let outcome = self.with_book(|book| book.insert(verified.clone(), now));
        if outcome == InsertOutcome::Accepted {
            self.add_addresses(peer, verified.offer.multiaddrs()).await?;
        }
        Ok(verified)
    }

    /// Opens a stream to `peer` for `protocol`, dialling it if needed. Fails when the dial
    /// fails, the peer does not support `protocol`, or [`StreamConfig::open_timeout`] passes.
    pub async fn open_stream(&self, peer: PeerId, protocol: libp2p::StreamProtocol) -> Result<Stream, Error> {
        self.control.open_stream(peer, protocol).await.map_err(|e| Error::OpenStream(e.to_string()))
    }

    /// Starts accepting inbound streams for `protocol`. Only one acceptor per protocol may exist.
    pub fn accept(&self, protocol: libp2p::StreamProtocol) -> Result<IncomingStreams, Error> {
        self.control.accept(protocol).map_err(|e| Error::Setup(e.to_string()))
    }

    /// Counts inbound streams dropped since start because an acceptor queue was full.
    pub fn dropped_inbound_streams(&self) -> u64 {
        self.control.dropped_inbound_streams()
    }

    /// Tells the swarm where `peer` can be reached. Returns once the event loop has stored the
    /// addresses, so a following [`NetworkHandle::open_stream`] can dial them.
    pub async fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), Error> {
        if addrs.is_empty() {
            return Ok(());
        }
        let (done, stored) = oneshot::channel();
        self.send(Command::AddAddresses { peer, addrs, done }).await?;
        stored.await.map_err(|_| Error::NetworkStopped)
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), Error> {
        self.send(Command::Dial { addr }).await
    }

    /// Drops a misbehaving peer's offer, ignores its offers for [`PENALTY`] and disconnects it.
    pub async fn penalize(&self, peer: PeerId, reason: &str) -> Result<(), Error> {
        tracing::warn!(%peer, reason, "Penalised peer");
        let until = now_ms().saturating_add(PENALTY.as_millis() as u64);
        self.with_book(|book| book.ban(peer, until));
        self.send(Command::Disconnect { peer }).await
    }

    /// Stops the event loop.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).await.map_err(|_| Error::NetworkStopped)
    }
}

/// Fails if another process already listens on the TCP port of `addr`.
///
/// libp2p-tcp 0.45 sets SO_REUSEPORT on every listening socket, so a second process on the
/// same port would start without error and the kernel would split connections between the
/// two. A plain bind, without that option, detects the conflict first. Port 0 is skipped.
fn ensure_port_free(addr: &Multiaddr) -> Result<(), Error> {
    let mut ip = None;
    let mut port = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(v4) => ip = Some(std::net::IpAddr::V4(v4)),
            Protocol::Ip6(v6) => ip = Some(std::net::IpAddr::V6(v6)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Ok(_probe) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(Error::Setup(format!("cannot listen on {addr}: port {port} is already in use; choose another with --listen")))
        }
        Err(e) => Err(Error::Setup(format!("cannot listen on {addr}: {e}; choose another address or port"))),
    }
}

fn add_bootstrap_address(swarm: &mut Swarm<Behaviour>, addr: &Multiaddr) {
    if let Some(Protocol::P2p(peer)) = addr.iter().last() {
        swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
    }
}

fn build_swarm(identity: &Identity, config: &NetworkConfig, topic: &gossipsub::IdentTopic, stream_config: StreamConfig) -> Result<Swarm<Behaviour>, Error> {
    let setup = |e: &dyn std::fmt::Display| Error::Setup(e.to_string());
    let peer_id = identity.peer_id();

    let gossipsub_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(MAX_OFFER_BYTES + 4096)
        .build()
        .map_err(|e| setup(&e))?;
    let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(identity.keypair.clone()), gossipsub_config).map_err(|e| setup(&e))?;
    gossipsub.with_peer_score(offer_score_params(topic), gossipsub::PeerScoreThresholds::default()).map_err(|e| setup(&e))?;
    gossipsub.subscribe(topic).map_err(|e| setup(&e))?;

    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config.set_query_timeout(FIND_PROVIDERS_TIMEOUT);
    kad_config.set_provider_record_ttl(Some(Duration::from_secs(600)));
    kad_config.set_provider_publication_interval(Some(Duration::from_secs(300)));
    let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
    // Loopback and LAN peers never get a confirmed external address, and Kademlia would then
    // stay in client mode and serve no queries. Every spare peer therefore serves the DHT.
    kad.set_mode(Some(kad::Mode::Server));

    let mdns = if config.mdns { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id).map_err(|e| setup(&e))?) } else { None };

    let behaviour = Behaviour {
        gossipsub,
        kad,
        mdns: Toggle::from(mdns),
        identify: identify::Behaviour::new(identify::Config::new("/spare/id/1".into(), identity.keypair.public())),
        ping: ping::Behaviour::default(),
        stream: streams::Behaviour::new(stream_config),
    };

    let swarm = libp2p::SwarmBuilder::with_existing_identity(identity.keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .build();
    Ok(swarm)
}

/// Peer scoring for the offer topic: invalid offers cost a lot, silence costs nothing, since
/// honest providers publish only every few seconds.
fn offer_score_params(topic: &gossipsub::IdentTopic) -> gossipsub::PeerScoreParams {
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        first_message_deliveries_weight: 0.5,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.5,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams::default();
    params.topics.insert(topic.hash(), topic_params);
    params
}
