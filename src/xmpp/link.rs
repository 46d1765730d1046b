//! The XEP-0114 component link to the XMPP server, kept up for as long as xup runs.
//!
//! One task owns the connection: it connects, performs the SHA-1 handshake over the stream id and
//! the shared secret, then reads incoming stanzas and writes outgoing ones until the link breaks,
//! and reconnects with capped exponential backoff and jitter, forever. Everyone else holds a
//! cloneable [`Link`] to send stanzas through, so a reconnect is invisible to HTTP handlers: while
//! the link is down, sends fail at once instead of queueing behind a dead socket.
//!
//! Incoming stanzas go to the [`Router`] (`router.rs`), whose answers the link writes back; the
//! link calls into nothing above it.
//!
//! tokio-xmpp's `Component` hides soft read timeouts and single malformed stanzas behind the same
//! "end of stream" as a dead socket, so this module drives tokio-xmpp's XML stream layer itself:
//! a quiet link gets a ping (so a half-open TCP connection is noticed), and a stanza that fails to
//! parse gets a `bad-request` instead of costing us the link.
//!
//! The server is trusted to route, not to be well-behaved: a stanza larger than [`MAX_STANZA`]
//! ends the connection (it would otherwise be buffered without bound), and the link is made anew.
//! XEP-0114 has no TLS, so a `component.server` that is not on loopback is warned about.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Poll, ready},
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use tokio::{
    io::BufStream,
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::xmlstream::{
    self, FallibleStreamElement, RawStanzaHeader, ReadError, StreamElementError, StreamHeader,
    Timeouts, XmppStream, XmppStreamElement,
};
use xmpp_parsers::{
    component::Handshake,
    iq::Iq,
    jid::BareJid,
    ns,
    ping::Ping,
    stanza::Stanza,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
    stream_error,
};

use crate::{
    config::ComponentConfig,
    metrics::METRICS,
    xmpp::router::{Reply, Router},
};

/// Silence on the link after which we ping the server, so a dead peer is found within
/// `QUIET_BEFORE_PING + PEER_RESPONSE_TIMEOUT` rather than at the next TCP retransmit timeout.
const QUIET_BEFORE_PING: Duration = Duration::from_secs(60);
/// How long the server may take to answer anything once we pinged it.
const PEER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);
/// Connecting and handshaking together; a server that takes longer is as good as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect delays double from the first to the cap (the cap is the issue's: 30 s).
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A link that stayed up this long was a success: the next outage starts again at `BACKOFF_FIRST`.
/// A server that accepts and drops us at once keeps backing off instead.
const STABLE_LINK: Duration = Duration::from_secs(10);
/// Stanzas queued for the writer; senders wait when it is full, so memory stays bounded. Sixteen
/// write batches: more than a server routes in a tenth of a second, so the writer never starves.
const OUTGOING_QUEUE: usize = 1024;
/// How many queued stanzas are written before one flush.
const WRITE_BATCH: usize = 64;
/// Bound on sending our stream footer at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest stanza read from the server. Above Prosody's own limits (256 KiB from a client,
/// 512 KiB from another server), so no user can make the link drop by messaging the component;
/// a server that sends more is broken, and buffering it would cost memory without bound.
pub const MAX_STANZA: usize = 1024 * 1024;

/// The sending half of the component link. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    outgoing: mpsc::Sender<Outgoing>,
    up: watch::Receiver<bool>,
}

/// A stanza for the server, and who waits to hear that it was written. Boxed: a stanza is 400
/// bytes inline, and every push waiting to be queued holds one.
struct Outgoing {
    stanza: Box<Stanza>,
    /// Told once the stanza is flushed to the connection; dropped unsent (so its waiter hears
    /// the link went down) when the connection breaks first.
    written: Option<oneshot::Sender<()>>,
}

impl Outgoing {
    fn unawaited(stanza: Box<Stanza>) -> Outgoing {
        Outgoing {
            stanza,
            written: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the component link to the XMPP server is down")]
pub struct LinkDown;

impl Link {
    /// Queue the stanza `make` builds for the server. Fails at once while the link is down; waits
    /// (no internal timeout) only while the outgoing queue is full, and builds the stanza only
    /// once there is room for it, so a burst of pushes waiting for room holds no stanzas
    /// (about a kilobyte each; docs/BENCHMARKS.md, "Clients that never answer").
    /// (Not an `async fn`, which would keep a second copy of `make` while it waits.)
    pub fn send<'a>(
        &'a self,
        make: impl FnOnce() -> Box<Stanza> + 'a,
    ) -> impl Future<Output = Result<(), LinkDown>> + 'a {
        let up = *self.up.borrow();
        async move {
            if !up {
                return Err(LinkDown);
            }
            let room = self.outgoing.reserve().await.map_err(|_| LinkDown)?;
            room.send(Outgoing::unawaited(make()));
            Ok(())
        }
    }

    /// Queue `stanza` and wait until it is written to the connection: for a stanza that nobody
    /// answers (sum7's `<message>`), whose sender must not hear "sent" while it could still be
    /// dropped with the queue when the link breaks. Fails when the link is or goes down first;
    /// no internal timeout.
    pub async fn send_written(&self, stanza: Box<Stanza>) -> Result<(), LinkDown> {
        if !*self.up.borrow() {
            return Err(LinkDown);
        }
        let (written, flushed) = oneshot::channel();
        let outgoing = Outgoing {
            stanza,
            written: Some(written),
        };
        self.outgoing.send(outgoing).await.map_err(|_| LinkDown)?;
        flushed.await.map_err(|_| LinkDown)
    }

    /// Whether the handshake has completed and the link has not broken since.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// The link state, to be told when it changes.
    pub fn watch_up(&self) -> watch::Receiver<bool> {
        self.up.clone()
    }
}

/// The link before its task runs: what the task takes to serve the [`Link`] made with it.
pub struct Unstarted {
    queue: mpsc::Receiver<Outgoing>,
    replies: mpsc::Sender<Outgoing>,
    up: watch::Sender<bool>,
}

/// A link, down until [`start`] runs its task: made first, so that the roles on the router can
/// hold it (a command that pings a client) before the router is handed to the task.
pub fn link() -> (Link, Unstarted) {
    let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
    let (up_sender, up) = watch::channel(false);
    let replies = outgoing.clone();
    let unstarted = Unstarted {
        queue,
        replies,
        up: up_sender,
    };
    (Link { outgoing, up }, unstarted)
}

/// Start the task that keeps the link up until `shutdown` is cancelled, while `permit` is true:
/// always for a single instance, while it leads for one of several (`cluster/`).
pub fn start(
    config: ComponentConfig,
    router: Router,
    unstarted: Unstarted,
    permit: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let Unstarted {
        queue,
        replies,
        up: up_sender,
    } = unstarted;
    tokio::spawn(async move {
        // The answers that wait for something (a store write) are this task's: at shutdown it
        // waits for them, so none is cut off half-way.
        let mut answering = JoinSet::new();
        let channels = Channels {
            queue,
            replies,
            up: up_sender,
            permit,
        };
        keep_connected(config, router, channels, &mut answering, shutdown).await;
        while answering.join_next().await.is_some() {}
    })
}

/// Why a connection attempt failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach {server}: {source}")]
    Unreachable {
        server: String,
        source: std::io::Error,
    },
    #[error("no answer from {} within {:?}", .0, CONNECT_TIMEOUT)]
    Timeout(String),
    #[error("stream setup failed: {0}")]
    Stream(std::io::Error),
    #[error("the server sent no stream id")]
    NoStreamId,
    #[error("{0}")]
    Refused(String),
    #[error("the server closed the connection during the handshake")]
    Closed,
}

/// How a session on an established link ended.
enum Ended {
    Shutdown,
    Lost(String),
}

type Stream = XmppStream<BufStream<Metered>>;

/// What the link task is given besides its config and router.
struct Channels {
    /// What the rest of xup sends.
    queue: mpsc::Receiver<Outgoing>,
    /// Where replies that were not ready at once are queued when they are.
    replies: mpsc::Sender<Outgoing>,
    /// Where the link's state is told.
    up: watch::Sender<bool>,
    /// Whether this instance may hold the link.
    permit: watch::Receiver<bool>,
}

async fn keep_connected(
    config: ComponentConfig,
    router: Router,
    channels: Channels,
    answering: &mut JoinSet<()>,
    shutdown: CancellationToken,
) {
    let Channels {
        mut queue,
        replies,
        up,
        mut permit,
    } = channels;
    warn_if_not_loopback(&config.server).await;
    let mut backoff = Backoff::default();
    let mut last_failure = String::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            permitted = async { permit.wait_for(|may| *may).await.is_ok() } => if !permitted { return },
        }
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(&config)) => attempt
                .unwrap_or_else(|_| Err(ConnectError::Timeout(config.server.clone()))),
        };
        match attempt {
            Ok((stream, read_since_stanza)) => {
                tracing::info!(jid = %config.jid, server = %config.server, "component link up");
                METRICS.link_connected();
                last_failure.clear();
                let since = Instant::now();
                up.send_replace(true);
                let link = Session {
                    router: &router,
                    queue: &mut queue,
                    replies: &replies,
                    permit: &mut permit,
                    answering: &mut *answering,
                };
                let ended = serve(stream, &read_since_stanza, link, &shutdown).await;
                up.send_replace(false);
                // Whatever waits for an answer will not get one on the next connection, and what
                // is still queued was meant for a waiter that has just been failed.
                router.in_flight().clear();
                while queue.try_recv().is_ok() {}
                match ended {
                    Ended::Shutdown => {
                        tracing::info!("component link closed");
                        return;
                    }
                    Ended::Lost(reason) => {
                        tracing::warn!(%reason, "component link down; reconnecting");
                        if since.elapsed() >= STABLE_LINK {
                            backoff = Backoff::default();
                        }
                    }
                }
            }
            Err(error) => {
                let error = error.to_string();
                if error != last_failure {
                    tracing::warn!(%error, "component cannot connect; retrying with backoff");
                } else {
                    tracing::debug!(%error, "component still cannot connect");
                }
                last_failure = error;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Connect and handshake once, then close: what `xup check --connect` does to prove the component
/// settings before xup is started for real.
pub async fn probe(config: &ComponentConfig) -> Result<(), ConnectError> {
    warn_if_not_loopback(&config.server).await;
    let (mut stream, _) = tokio::time::timeout(CONNECT_TIMEOUT, connect(config))
        .await
        .map_err(|_| ConnectError::Timeout(config.server.clone()))??;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::<&Stanza>::close(&mut stream)).await;
    Ok(())
}

/// XEP-0114 has no TLS: the handshake digest and every push cross the network in clear.
async fn warn_if_not_loopback(server: &str) {
    if reaches_beyond_loopback(server).await {
        tracing::warn!(
            server,
            "component.server is not a loopback address: XEP-0114 has no encryption, so pushes \
             and the handshake cross the network in clear; run xup on the XMPP server's host \
             or tunnel the connection"
        );
    }
}

/// Whether `server` resolves to any address off this host. A name that does not resolve is left
/// to the connection attempt to report.
async fn reaches_beyond_loopback(server: &str) -> bool {
    tokio::net::lookup_host(server)
        .await
        .is_ok_and(|mut addresses| addresses.any(|a| !a.ip().to_canonical().is_loopback()))
}

/// The TCP connection to the server, counting what is read since the last complete stanza so
/// one oversized stanza fails the read instead of filling memory. The count is of raw bytes read
/// ahead into the buffer, so a stanza is refused at [`MAX_STANZA`] plus at most one buffer.
struct Metered {
    tcp: TcpStream,
    read_since_stanza: Arc<AtomicUsize>,
}

impl tokio::io::AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if self.read_since_stanza.fetch_add(read, Ordering::Relaxed) + read > MAX_STANZA {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the server sent a stanza larger than {MAX_STANZA} bytes"),
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Open the TCP connection, exchange stream headers and complete the XEP-0114 handshake.
async fn connect(config: &ComponentConfig) -> Result<(Stream, Arc<AtomicUsize>), ConnectError> {
    let tcp =
        TcpStream::connect(&config.server)
            .await
            .map_err(|source| ConnectError::Unreachable {
                server: config.server.clone(),
                source,
            })?;
    // Pushes are small and latency-bound; Nagle would hold each one back for the previous ACK.
    tcp.set_nodelay(true).map_err(ConnectError::Stream)?;
    let timeouts = Timeouts {
        read_timeout: QUIET_BEFORE_PING,
        response_timeout: PEER_RESPONSE_TIMEOUT,
    };
    let header = StreamHeader {
        from: None,
        to: Some(config.jid.as_str().to_owned().into()),
        id: None,
    };
    let read_since_stanza = Arc::new(AtomicUsize::new(0));
    let metered = Metered {
        tcp,
        read_since_stanza: read_since_stanza.clone(),
    };
    let mut pending =
        xmlstream::initiate_stream(BufStream::new(metered), ns::COMPONENT, header, timeouts)
            .await
            .map_err(ConnectError::Stream)?;
    let stream_id = pending.take_header().id.ok_or(ConnectError::NoStreamId)?;
    let mut stream: Stream = pending.skip_features();
    let handshake = Handshake::from_stream_id_and_password(stream_id.into_owned(), &config.secret);
    stream
        .send(&XmppStreamElement::ComponentHandshake(handshake))
        .await
        .map_err(ConnectError::Stream)?;
    loop {
        match stream.next().await {
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::ComponentHandshake(_)))) => {
                read_since_stanza.store(0, Ordering::Relaxed);
                return Ok((stream, read_since_stanza));
            }
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                return Err(ConnectError::Refused(explain_refusal(&e.0)));
            }
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(ReadError::HardError(e))) => return Err(ConnectError::Stream(e)),
            _ => return Err(ConnectError::Closed),
        }
    }
}

/// What a stream error during the handshake most likely means for this config.
fn explain_refusal(error: &stream_error::StreamError) -> String {
    use stream_error::DefinedCondition as C;
    let hint = match error.condition {
        // ejabberd answers this for an unknown component JID too; Prosody says host-unknown.
        C::NotAuthorized => {
            "component.secret does not match the server's component secret \
             (or, on ejabberd, the server has no component configured for component.jid)"
        }
        C::HostUnknown | C::ImproperAddressing => {
            "the server has no component configured for component.jid"
        }
        C::Conflict => "another component is already connected with this JID",
        _ => "the server refused the component",
    };
    format!("{hint} ({error})")
}

/// What one established link works with.
struct Session<'a> {
    router: &'a Router,
    /// What the rest of xup sends.
    queue: &'a mut mpsc::Receiver<Outgoing>,
    /// Where replies that were not ready at once are queued when they are.
    replies: &'a mpsc::Sender<Outgoing>,
    permit: &'a mut watch::Receiver<bool>,
    /// The answers being made that wait for something.
    answering: &'a mut JoinSet<()>,
}

/// Run an established link until it breaks or `shutdown` is cancelled.
async fn serve(
    mut stream: Stream,
    read_since_stanza: &AtomicUsize,
    link: Session<'_>,
    shutdown: &CancellationToken,
) -> Ended {
    let Session {
        router,
        queue,
        replies,
        permit,
        answering,
    } = link;
    let keepalive_ids = AtomicU64::new(0);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::<&Stanza>::close(&mut stream)).await;
                return Ended::Shutdown;
            }
            // A closed permit (a single instance's, whose sender is gone) never changes again.
            true = async { permit.wait_for(|may| !*may).await.is_ok() } => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::<&Stanza>::close(&mut stream)).await;
                return Ended::Lost("this instance no longer leads".into());
            }
            Some(_) = answering.join_next() => {}
            Some(first) = queue.recv() => {
                if let Err(e) = write_batch(&mut stream, first, queue).await {
                    return Ended::Lost(format!("write failed: {e}"));
                }
            }
            item = stream.next() => {
                read_since_stanza.store(0, Ordering::Relaxed);
                let reply = match item {
                    None => return Ended::Lost("connection closed".into()),
                    Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(stanza)))) => {
                        match router.route(stanza) {
                            Some(Reply::Now(reply)) => Some(*reply),
                            Some(Reply::Later(reply)) => {
                                let replies = replies.clone();
                                answering.spawn(async move {
                                    let reply = Outgoing::unawaited(Box::new(reply.await));
                                    let _ = replies.send(reply).await;
                                });
                                None
                            }
                            None => None,
                        }
                    }
                    Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                        return Ended::Lost(format!("stream error from the server: {}", e.0));
                    }
                    // Nonzas mean nothing once the handshake is done.
                    Some(Ok(FallibleStreamElement::Ok(_))) => None,
                    Some(Ok(FallibleStreamElement::Err(error))) => {
                        tracing::debug!(%error, "malformed stanza");
                        match error {
                            StreamElementError::InvalidStanza { header, .. } => refuse_malformed(header),
                            StreamElementError::InvalidNonza { .. } => None,
                        }
                    }
                    Some(Err(ReadError::SoftTimeout)) => {
                        let n = keepalive_ids.fetch_add(1, Ordering::Relaxed);
                        Some(keepalive(router.jid(), n))
                    }
                    Some(Err(ReadError::ParseError(e))) => {
                        tracing::debug!(error = %e, "ignoring an unparsable element");
                        None
                    }
                    Some(Err(ReadError::HardError(e))) => return Ended::Lost(e.to_string()),
                    Some(Err(ReadError::StreamFooterReceived)) => {
                        return Ended::Lost("the server closed the stream".into());
                    }
                };
                if let Some(reply) = reply
                    && let Err(e) = stream.send(&reply).await
                {
                    return Ended::Lost(format!("write failed: {e}"));
                }
            }
        }
    }
}

/// Write `first` and whatever else is already queued (up to a batch), flush once, and then tell
/// whoever waits that theirs was written. On an error, the waiters' senders are dropped untold.
async fn write_batch(
    stream: &mut Stream,
    first: Outgoing,
    queue: &mut mpsc::Receiver<Outgoing>,
) -> std::io::Result<()> {
    let mut batch = vec![first];
    while batch.len() < WRITE_BATCH
        && let Ok(next) = queue.try_recv()
    {
        batch.push(next);
    }
    let mut waiters = Vec::new();
    for Outgoing { stanza, written } in batch {
        stream.feed(&*stanza).await?;
        waiters.extend(written);
    }
    SinkExt::<&Stanza>::flush(stream).await?;
    for waiter in waiters {
        let _ = waiter.send(());
    }
    Ok(())
}

/// A ping to ourselves: the server routes it back, so the link carries traffic both ways, and no
/// other host is ever involved.
fn keepalive(jid: &BareJid, n: u64) -> Stanza {
    Iq::Get {
        from: Some(jid.clone().into()),
        to: Some(jid.clone().into()),
        id: format!("keepalive-{n}"),
        payload: Ping.into(),
    }
    .into()
}

/// An IQ request that did not parse still deserves an answer (RFC 6120 §8.2.3); any other
/// malformed stanza is dropped.
fn refuse_malformed(header: RawStanzaHeader) -> Option<Stanza> {
    if !matches!(header.type_.as_deref(), Some("get" | "set")) {
        return None;
    }
    let id = header.id?;
    let to = header.from.and_then(|j| j.parse().ok());
    let from = header.to.and_then(|j| j.parse().ok());
    let error = StanzaError::new(
        ErrorType::Modify,
        DefinedCondition::BadRequest,
        "en",
        "malformed stanza",
    );
    Some(
        Iq::Error {
            from,
            to,
            id,
            error,
            payload: None,
        }
        .into(),
    )
}

/// Capped exponential backoff with jitter: each delay is drawn from the upper half of the current
/// step, so many xup instances restarted together do not reconnect in lockstep.
struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            step: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_CAP);
        step.mul_f64(rand::random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Metered` reading what a loopback peer writes: `chunks` of `len` bytes, the count reset
    /// between chunks as the serve loop does after each stanza. Returns the first read error.
    async fn read_metered(chunks: usize, len: usize) -> Option<std::io::Error> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let writer = tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.expect("accept");
            for _ in 0..chunks {
                peer.write_all(&vec![b'x'; len]).await.expect("write");
            }
        });
        let count = Arc::new(AtomicUsize::new(0));
        let mut metered = Metered {
            tcp: TcpStream::connect(address).await.expect("connect"),
            read_since_stanza: count.clone(),
        };
        let mut buf = vec![0u8; len];
        for _ in 0..chunks {
            if let Err(e) = metered.read_exact(&mut buf).await {
                return Some(e);
            }
            count.store(0, Ordering::Relaxed);
        }
        writer.await.expect("writer");
        None
    }

    #[tokio::test]
    async fn only_a_server_off_this_host_is_warned_about() {
        for local in ["127.0.0.1:5347", "[::1]:5347", "127.0.0.53:5347"] {
            assert!(!reaches_beyond_loopback(local).await, "{local}");
        }
        for remote in ["192.0.2.1:5347", "[2001:db8::1]:5347"] {
            assert!(reaches_beyond_loopback(remote).await, "{remote}");
        }
    }

    #[tokio::test]
    async fn a_stanza_over_the_bound_fails_the_read_and_many_under_it_do_not() {
        let error = read_metered(1, MAX_STANZA + 1).await.expect("refused");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(read_metered(4, MAX_STANZA / 2).await.is_none());
    }

    #[test]
    fn backoff_grows_to_the_cap_and_stays_there() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= BACKOFF_FIRST);
        assert!(delays.iter().all(|d| *d <= BACKOFF_CAP));
        assert!(delays[11] >= BACKOFF_CAP / 2);
    }

    fn header(type_: &str) -> RawStanzaHeader {
        RawStanzaHeader {
            from: Some("juliet@example.org/phone".into()),
            to: Some("up.example.org".into()),
            type_: Some(type_.into()),
            id: Some("x".into()),
        }
    }

    #[test]
    fn a_malformed_request_gets_bad_request_and_a_malformed_answer_nothing() {
        let Some(Stanza::Iq(Iq::Error { error, to, .. })) = refuse_malformed(header("set")) else {
            panic!("no error reply");
        };
        assert_eq!(error.defined_condition, DefinedCondition::BadRequest);
        assert_eq!(to, Some("juliet@example.org/phone".parse().expect("jid")));
        assert!(refuse_malformed(header("result")).is_none());
        assert!(refuse_malformed(header("error")).is_none());
    }
}
