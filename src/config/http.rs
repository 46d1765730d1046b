//! `http`: where the doors listen, the public URL endpoints are made of, and the bounds on what a
//! connection may hold.

use std::{net::SocketAddr, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::{ConfigError, invalid, positive_duration, proxy_entry};

/// Open HTTP connections at once. Each costs a file descriptor and hyper's buffers (about 16 KB
/// over HTTP/1.1); systemd's default soft limit on descriptors is 1024.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;

/// One address may hold at most this fraction (1/10) of `http.max_connections` unless told
/// otherwise: a busy homeserver needs a few connections (HTTP/2 multiplexes), and no one address
/// can take them all.
pub const CONNECTION_SHARE_OF_ADDRESS: usize = 10;

/// Pushes waiting for a client's answer at once: each keeps its body and a request's state (about
/// 6 KB over HTTP/2, see docs/BENCHMARKS.md), so this bounds the memory a slow client population
/// can pin. Past it a push gets `503` with `Retry-After`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// How long a connection may take to send a request's head, and how long an idle HTTP/1.1
/// connection is kept open between requests.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may take to send its body (at most 4096 bytes).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct HttpConfig {
    pub listen: SocketAddr,
    /// The public base URL, without a trailing slash.
    pub public_url: String,
    /// Connections past this are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Connections one address (an IPv6 /64) may hold of them; trusted proxies are exempt.
    pub max_connections_per_address: usize,
    /// Pushes waiting for a client's answer; past this a push gets `503`.
    pub max_in_flight: usize,
    /// For a request's head, and for an idle HTTP/1.1 connection between requests.
    pub header_timeout: Duration,
    /// For a request's body.
    pub body_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is believed: the reverse proxies in front of xup.
    pub trusted_proxies: Vec<IpNet>,
}

impl HttpConfig {
    /// The origin of `public_url` (RFC 6454: scheme, host, and the port unless it is the
    /// scheme's own), as an application server puts it in its VAPID JWT's `aud`.
    pub fn origin(&self) -> String {
        let (scheme, rest) = self.public_url.split_once("://").unwrap_or(("https", ""));
        let host = rest
            .split('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let default_port = if scheme == "https" { ":443" } else { ":80" };
        let host = host.strip_suffix(default_port).unwrap_or(&host);
        format!("{scheme}://{host}")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: String,
    pub public_url: String,
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
}

pub(super) fn validate(http: RawHttp) -> Result<HttpConfig, ConfigError> {
    let listen = http.listen.parse().map_err(|_| {
        invalid(
            "http.listen",
            "expected an IP address and port, e.g. 127.0.0.1:8080",
        )
    })?;
    let public_url = http.public_url.trim_end_matches('/').to_owned();
    if !(public_url.starts_with("https://") || public_url.starts_with("http://"))
        || public_url.contains(['?', '#'])
    {
        return Err(invalid(
            "http.public_url",
            "expected an http(s) URL without query or fragment, e.g. https://up.example.org",
        ));
    }

    let max_connections = http.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(invalid("http.max_connections", "must be at least 1"));
    }
    let max_connections_per_address = match http.max_connections_per_address {
        None => (max_connections / CONNECTION_SHARE_OF_ADDRESS).max(1),
        Some(n) if (1..=max_connections).contains(&n) => n,
        Some(_) => {
            return Err(invalid(
                "http.max_connections_per_address",
                "must be at least 1 and at most http.max_connections",
            ));
        }
    };
    let max_in_flight = http.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if max_in_flight == 0 {
        return Err(invalid("http.max_in_flight", "must be at least 1"));
    }
    let header_timeout = positive_duration(
        "http.header_timeout",
        http.header_timeout.as_deref(),
        DEFAULT_HEADER_TIMEOUT,
    )?;
    let body_timeout = positive_duration(
        "http.body_timeout",
        http.body_timeout.as_deref(),
        DEFAULT_BODY_TIMEOUT,
    )?;
    let trusted_proxies = match http.trusted_proxies {
        Some(entries) => entries
            .iter()
            .enumerate()
            .map(|(i, entry)| proxy_entry(&format!("http.trusted_proxies[{i}]"), entry))
            .collect::<Result<_, _>>()?,
        None => vec![
            IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)),
            IpNet::from(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        ],
    };

    Ok(HttpConfig {
        listen,
        public_url,
        max_connections,
        max_connections_per_address,
        max_in_flight,
        header_timeout,
        body_timeout,
        trusted_proxies,
    })
}
