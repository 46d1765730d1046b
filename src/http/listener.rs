//! The HTTP listener: accepts connections and bounds what each one may cost.
//!
//! axum's own `serve` installs no timer, so hyper's header timeout never fires and a socket that
//! connects and says nothing is kept for ever. xup's port faces the whole internet, so here:
//!
//! - at most `http.max_connections` are open at once, and at most
//!   `http.max_connections_per_address` from one address (an IPv6 /64; the trusted proxies, behind
//!   which many senders share an address, are exempt); one more is closed as soon as it is
//!   accepted, so a flood of sockets costs a descriptor for an instant, not a queue, and one
//!   address cannot take every connection;
//! - a connection has `http.header_timeout` to send the head of its first request, whatever the
//!   protocol (this also covers HTTP/2's preface and the sniffing that tells the two apart);
//! - over HTTP/1.1, hyper's own header timeout then bounds every later head, and so the idle time
//!   between requests on a kept-alive connection;
//! - over HTTP/2, a quiet connection is pinged and closed when the ping goes unanswered;
//! - request heads are capped in size (16 KiB), and bodies in time and size by `http`.
//!
//! Every request carries its peer's address (axum's `ConnectInfo`) for the per-address limits.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use ipnet::IpNet;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::{config::HttpConfig, limits::address_key};

/// A request head larger than this is refused; an RFC 8030 request needs a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

/// Streams one HTTP/2 connection may have open; each is a push in flight.
const MAX_STREAMS: u32 = 128;

/// A quiet HTTP/2 connection is pinged this often, and closed if the answer takes longer than
/// [`H2_PING_TIMEOUT`].
const H2_PING_INTERVAL: Duration = Duration::from_secs(60);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Serve `router` on `listener` until `shutdown` is cancelled, then let open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let per_address = Arc::new(PerAddress {
        open: Mutex::default(),
        cap: config.max_connections_per_address,
        exempt: config.trusted_proxies.clone(),
    });
    let connections = TaskTracker::new();
    let builder = Arc::new(builder(config.header_timeout));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    pause_after(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("connection closed at once: http.max_connections are open");
            continue;
        };
        let Some(address_slot) = PerAddress::admit(&per_address, peer.ip()) else {
            tracing::debug!("connection closed at once: its address holds its share");
            continue;
        };
        let connection = serve_connection(
            builder.clone(),
            stream,
            peer,
            router.clone(),
            config.header_timeout,
            shutdown.clone(),
        );
        connections.spawn(async move {
            connection.await;
            drop((slot, address_slot));
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The connections open per address, for `http.max_connections_per_address`.
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
    cap: usize,
    exempt: Vec<IpNet>,
}

/// One connection counted against its address until dropped; `None` for an exempt one.
struct AddressSlot(Option<(Arc<PerAddress>, IpAddr)>);

impl PerAddress {
    /// A slot for a connection from `peer`, unless its address holds its share already.
    fn admit(this: &Arc<PerAddress>, peer: IpAddr) -> Option<AddressSlot> {
        let peer = peer.to_canonical();
        if this.exempt.iter().any(|net| net.contains(&peer)) {
            return Some(AddressSlot(None));
        }
        let key = address_key(peer);
        let mut open = this.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_default();
        if *count >= this.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot(Some((this.clone(), key))))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some((per_address, key)) = self.0.take() else {
            return;
        };
        let mut open = per_address.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

fn builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD as u32)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// Serve one connection until it ends, is closed for sending no request head within
/// `header_timeout`, or is shut down gracefully with the rest.
async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let first_head = Arc::new(Notify::new());
    let service = {
        let first_head = first_head.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            first_head.notify_one();
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        })
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let deadline = tokio::time::sleep(header_timeout);
    tokio::pin!(deadline);
    let mut awaiting_first_head = true;
    let mut shutting_down = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut deadline, if awaiting_first_head => {
                tracing::debug!("connection closed: no request within http.header_timeout");
                return;
            }
            () = first_head.notified(), if awaiting_first_head => awaiting_first_head = false,
            () = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// After a failed accept: a connection that died in the backlog costs nothing, but running out of
/// descriptors would fail every accept at once, so that pauses the loop instead of spinning.
async fn pause_after(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %error, "cannot accept HTTP connections; pausing for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
