//! The application servers: HTTP POSTs of numbered messages at a fixed concurrency.
//!
//! Each of the C workers keeps one HTTP/1.1 connection alive and sends its requests one after the
//! other, so exactly C requests are in flight until the messages run out. Every request is
//! recorded with its start, end and status; a request that fails below HTTP counts with status 0
//! and the worker reconnects, so a broken provider shows up as errors, never as a hang.
//!
//! The in-flight measurement instead sends everything at once, over HTTP/1.1 with a connection per
//! message or multiplexed over a few HTTP/2 connections ([`Transport`]).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpStream, sync::Semaphore};

use crate::ledger::MessageId;

/// Bound on one request, far above any sane answer: a provider that never answers is a failure,
/// not a benchmark that never ends.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a provider's endpoints are served, and the endpoints themselves.
pub struct Target {
    /// The socket to connect to, whatever host the endpoint URLs name.
    pub addr: SocketAddr,
    /// `Host` header for each request: the endpoints' authority.
    pub host: String,
    /// Endpoint paths; message `seq` goes to `paths[seq % paths.len()]`.
    pub paths: Vec<String>,
    /// VAPID headers, when the run signs: message `seq` carries `authorization[seq % len]`.
    pub authorization: Vec<String>,
    /// When not 0, every request is a Matrix homeserver's notify to the gateway instead, naming
    /// this many endpoints as its devices' pushkeys (the next ones after the last request's).
    pub notify_devices: usize,
}

impl Target {
    /// Build a target from endpoint URLs, all served by `addr`.
    pub fn new(addr: SocketAddr, endpoints: &[String]) -> anyhow::Result<Target> {
        let mut host = None;
        let mut paths = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let rest = url
                .strip_prefix("http://")
                .with_context(|| format!("not an http:// endpoint: {url}"))?;
            let slash = rest.find('/').context("an endpoint without a path")?;
            host.get_or_insert_with(|| rest[..slash].to_owned());
            paths.push(rest[slash..].to_owned());
        }
        Ok(Target {
            addr,
            host: host.context("no endpoints")?,
            paths,
            authorization: Vec::new(),
            notify_devices: 0,
        })
    }

    /// What message `seq` is POSTed to, with its content type and body: the endpoint and `body`
    /// itself, or a Matrix notify whose devices' pushkeys are endpoints (`body` is then only
    /// counted by what arrives, not recognised: the app gets the notification's JSON).
    fn request(&self, seq: u64, body: Vec<u8>) -> (&str, &'static str, Vec<u8>) {
        let paths = self.paths.len() as u64;
        if self.notify_devices == 0 {
            let path = &self.paths[(seq % paths) as usize];
            return (path, "application/octet-stream", body);
        }
        let first = seq * self.notify_devices as u64;
        let devices: Vec<_> = (first..first + self.notify_devices as u64)
            .map(|i| {
                let pushkey = format!("http://{}{}", self.host, self.paths[(i % paths) as usize]);
                serde_json::json!({ "app_id": "org.example.bench", "pushkey": pushkey })
            })
            .collect();
        let notify = serde_json::json!({ "notification": {
            "event_id": format!("$bench{seq}"),
            "room_id": "!bench:localhost",
            "counts": { "unread": 1 },
            "devices": devices,
        }});
        let body = notify.to_string().into_bytes();
        ("/_matrix/push/v1/notify", "application/json", body)
    }
}

/// One HTTP request as the application server saw it; times in nanoseconds after the epoch, from
/// the moment the request could be sent (its connection ready) to the end of the response.
#[derive(Clone, Copy)]
pub struct Sample {
    pub seq: u64,
    pub start: u64,
    pub end: u64,
    /// 0 when the request failed below HTTP.
    pub status: u16,
}

impl Sample {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The settings of one load run.
#[derive(Clone, Copy)]
pub struct Load {
    pub run: u32,
    pub messages: u64,
    pub concurrency: usize,
    pub body_len: usize,
    pub epoch: Instant,
    /// Every n-th message (by sequence number) is sent with `TTL: 0`; 0 for none.
    pub zero_ttl_every: u64,
    /// No request starts after this.
    pub until: Option<Instant>,
}

impl Load {
    /// Whether message `seq` is sent with `TTL: 0` ("now or never").
    pub fn is_now_or_never(&self, seq: u64) -> bool {
        self.zero_ttl_every > 0 && seq.is_multiple_of(self.zero_ttl_every)
    }
}

/// POST `load.messages` messages at `load.concurrency`, each worker on its own connection, the
/// workers spread evenly over `targets` (several instances of one provider).
pub async fn fire(targets: &[Arc<Target>], load: &Load) -> Vec<Sample> {
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..load.concurrency)
        .map(|worker| {
            let target = targets[worker % targets.len()].clone();
            let (next, load) = (next.clone(), *load);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut connection = None;
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= load.messages || load.until.is_some_and(|t| Instant::now() >= t) {
                        return samples;
                    }
                    samples.push(post(&target, &mut connection, seq, &load).await);
                }
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(load.messages as usize);
    for worker in workers {
        samples.extend(worker.await.unwrap_or_default());
    }
    samples
}

/// How the in-flight measurement reaches the provider.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    /// HTTP/1.1 over this many keep-alive connections, each sending its messages one after the
    /// other ([`fire`]): a sender population held to xup's connection cap.
    Http1KeepAlive { connections: usize },
    /// HTTP/1.1, one connection per message, all at once: the worst a sender population can do.
    Http1PerMessage,
    /// HTTP/2 (prior knowledge, RFC 8030's own transport), messages multiplexed over this many
    /// connections.
    Http2 { connections: usize },
}

/// POST all of `load.messages` messages at once, so every one is in flight together until the
/// provider answers. Connecting is throttled (`connecting` at a time) so the listener's accept
/// backlog is not overrun.
pub async fn fire_all_at_once(
    target: Arc<Target>,
    load: &Load,
    transport: Transport,
    connecting: usize,
) -> anyhow::Result<Vec<Sample>> {
    let shared = match transport {
        Transport::Http1PerMessage | Transport::Http1KeepAlive { .. } => Vec::new(),
        Transport::Http2 { connections } => {
            let mut senders = Vec::with_capacity(connections);
            for _ in 0..connections {
                let tcp = TcpStream::connect(target.addr).await?;
                tcp.set_nodelay(true)?;
                let (sender, connection) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
                tokio::spawn(connection);
                senders.push(sender);
            }
            senders
        }
    };
    let gate = Arc::new(Semaphore::new(connecting));
    let tasks: Vec<_> = (0..load.messages)
        .map(|seq| {
            let (target, gate, load) = (target.clone(), gate.clone(), *load);
            let multiplexed =
                (!shared.is_empty()).then(|| shared[seq as usize % shared.len()].clone());
            tokio::spawn(async move {
                let mut connection = match multiplexed {
                    Some(sender) => Some(Connection::Http2(sender)),
                    None => {
                        let _permit = gate.acquire().await;
                        connect(&target).await.ok()
                    }
                };
                post(&target, &mut connection, seq, &load).await
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(task.await?);
    }
    Ok(samples)
}

enum Connection {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

async fn connect(target: &Target) -> anyhow::Result<Connection> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    Ok(Connection::Http1(sender))
}

/// POST message `seq` on `connection` (opened first if there is none; dropped if it failed).
async fn post(
    target: &Target,
    connection: &mut Option<Connection>,
    seq: u64,
    load: &Load,
) -> Sample {
    let body = MessageId { run: load.run, seq }.body(load.body_len);
    // RFC 8030 §5.2: application servers must say how long a message may be kept.
    let ttl = if load.is_now_or_never(seq) {
        "0"
    } else {
        "86400"
    };
    let epoch = load.epoch;
    let mut start = epoch.elapsed().as_nanos() as u64;
    let status = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        exchange(target, connection, seq, body, ttl, epoch),
    )
    .await
    {
        Ok(Ok((status, sent))) => {
            start = sent;
            status
        }
        Ok(Err(_)) | Err(_) => {
            *connection = None;
            0
        }
    };
    Sample {
        seq,
        start,
        end: epoch.elapsed().as_nanos() as u64,
        status,
    }
}

async fn exchange(
    target: &Target,
    connection: &mut Option<Connection>,
    seq: u64,
    body: Vec<u8>,
    ttl: &'static str,
    epoch: Instant,
) -> anyhow::Result<(u16, u64)> {
    let connection = match connection {
        Some(connection) => connection,
        None => connection.insert(connect(target).await?),
    };
    let (path, content_type, body) = target.request(seq, body);
    let mut request = Request::post(path)
        .header(hyper::header::HOST, target.host.as_str())
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header("TTL", ttl);
    if !target.authorization.is_empty() {
        let header = &target.authorization[(seq % target.authorization.len() as u64) as usize];
        request = request.header(hyper::header::AUTHORIZATION, header.as_str());
    }
    let request = request.body(Full::new(Bytes::from(body)))?;
    // The clock starts once the request can go: connecting, and waiting for an HTTP/2 stream the
    // provider's stream limit has not yet freed, are the sender's own queueing.
    let (response, sent) = match connection {
        Connection::Http1(sender) => {
            sender.ready().await?;
            let sent = epoch.elapsed().as_nanos() as u64;
            (sender.send_request(request).await?, sent)
        }
        Connection::Http2(sender) => {
            sender.ready().await?;
            let sent = epoch.elapsed().as_nanos() as u64;
            (sender.send_request(request).await?, sent)
        }
    };
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok((status, sent))
}
