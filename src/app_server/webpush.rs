//! Sending one Web Push message (RFC 8030) to an endpoint somebody else runs: the app server's way
//! out (`app_server/mod.rs`).
//!
//! The endpoint is a URL a client gave us, so it is treated as hostile: it must be `https` (plain
//! `http` only into a network listed in `app_server.allow_private_endpoints`), it must lead only to
//! globally reachable addresses unless the network is listed (`address.rs`; checked for the
//! literal address, and again for every address its name resolves to, at the moment of connecting,
//! so a name that changes its answer gains nothing), redirects are not followed, and the whole
//! exchange is bounded in time. Nothing of the answer but its status is read.
//!
//! Names are looked up by xup itself (`resolve.rs`: bounded, off the store's threads), and never
//! by a proxy from the environment: a proxy resolves and connects behind the address check, so
//! one is used only when `app_server.proxy` names it. What goes back to the XMPP server or into a
//! log says what failed, never the endpoint: it is the user's, and may carry a secret.
//!
//! A message is encrypted per RFC 8291 (`aes128gcm`) when the subscription gave its keys, and
//! always carries a VAPID (RFC 8292) signature under xup's key, so the push service can tell who
//! sends. The crypto is the `web-push-native` crate's (RustCrypto underneath) and the JWT
//! `jwt-simple`'s, which it re-exports.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ipnet::IpNet;
use reqwest::{
    StatusCode, Url,
    dns::{Addrs, Name, Resolve, Resolving},
    header,
};
use web_push_native::{
    Auth,
    jwt_simple::prelude::{
        Claims, Duration as JwtDuration, ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair,
    },
    p256,
};

use crate::{
    app_server::{address::is_global, resolve::Resolver},
    message::Urgency,
};

/// The whole exchange with an endpoint, connecting included: the XMPP server waits for our answer,
/// and ejabberd and Prosody give up on an IQ after about 10 s.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(8);

/// How long a VAPID signature is good for (RFC 8292 §2: at most 24 h).
const VAPID_VALIDITY_HOURS: u64 = 12;

/// The longest endpoint URL accepted, so a node that holds one stays under 1 000 bytes.
pub const MAX_ENDPOINT_LEN: usize = 400;

/// A subscription as a client registered it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub endpoint: Url,
    /// The RFC 8291 keys; without them the message goes out in clear.
    pub keys: Option<Keys>,
}

#[derive(Debug, Clone)]
pub struct Keys {
    pub p256dh: p256::PublicKey,
    pub auth: Auth,
}

impl Keys {
    /// The keys as a subscription gives them: base64url, padded or not.
    pub fn parse(p256dh: &str, auth: &str) -> Result<Keys, EndpointError> {
        let decode = |text: &str| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok();
        Ok(Keys {
            p256dh: decode(p256dh)
                .and_then(|bytes| p256::PublicKey::from_sec1_bytes(&bytes).ok())
                .ok_or(EndpointError::P256dh)?,
            auth: decode(auth)
                .filter(|bytes| bytes.len() == 16)
                .map(|bytes| Auth::clone_from_slice(&bytes))
                .ok_or(EndpointError::Auth)?,
        })
    }
}

/// Why an endpoint or its keys are not acceptable; each names what is wrong, for the client.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint: not an absolute URL")]
    NotUrl,
    #[error("endpoint: longer than 400 bytes")]
    TooLong,
    #[error("endpoint: must be https")]
    NotHttps,
    #[error("endpoint: leads to an address that is not globally reachable")]
    Private,
    #[error("endpoint: its host does not resolve, or not in time")]
    Unresolvable,
    #[error("p256dh: not an uncompressed P-256 public key in base64url")]
    P256dh,
    #[error("auth: not 16 bytes in base64url")]
    Auth,
    #[error("p256dh and auth come together or not at all")]
    HalfKeys,
}

/// How one message went.
#[derive(Debug, PartialEq)]
pub enum Sent {
    /// 2xx: the push service took it.
    Taken,
    /// 404 or 410: the subscription is gone.
    Gone,
    /// 408 or 429: try later.
    Throttled,
    /// 5xx, a timeout, a network failure: try later.
    Failed(String),
    /// Any other status: the push service refuses this message for good.
    Refused(StatusCode),
}

/// xup's way of sending Web Push messages. One per process.
pub struct WebPush {
    client: reqwest::Client,
    vapid: ES256KeyPair,
    contact: String,
    allow_private: Arc<Vec<IpNet>>,
    resolver: Arc<Resolver>,
}

impl WebPush {
    /// `vapid_secret` is the P-256 private key (32 bytes) that signs; `contact` is VAPID's `sub`;
    /// `proxy` is `app_server.proxy`, the only proxy ever used.
    pub fn new(
        vapid_secret: &[u8],
        contact: String,
        allow_private: Vec<IpNet>,
        proxy: Option<&Url>,
    ) -> anyhow::Result<WebPush> {
        let allow_private = Arc::new(allow_private);
        let resolver = Arc::new(Resolver::system());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(SEND_TIMEOUT)
            .dns_resolver(Arc::new(Guarded {
                allow: allow_private.clone(),
                resolver: resolver.clone(),
            }))
            .user_agent(concat!("xup/", env!("CARGO_PKG_VERSION")));
        let client = match proxy {
            // `HTTPS_PROXY` and the like are for the operator's shell, not for a daemon that
            // must check where it connects.
            None => client.no_proxy(),
            Some(proxy) => client.proxy(reqwest::Proxy::all(proxy.clone())?),
        }
        .build()?;
        let vapid = ES256KeyPair::from_bytes(vapid_secret)
            .map_err(|e| anyhow::anyhow!("the stored VAPID key is not a P-256 key: {e}"))?;
        Ok(WebPush {
            client,
            vapid,
            contact,
            allow_private,
            resolver,
        })
    }

    /// A fresh VAPID private key, for the store to keep.
    pub fn new_vapid_secret() -> Vec<u8> {
        ES256KeyPair::generate().to_bytes()
    }

    /// The VAPID public key (an uncompressed point, base64url), which a client hands its push
    /// service as the `applicationServerKey`.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.vapid.public_key().public_key().to_bytes_uncompressed())
    }

    /// Check a subscription a client submits: the URL's shape, where it leads (its name is
    /// resolved once here, to refuse early what would be refused at every send), and the keys.
    pub async fn check(
        &self,
        endpoint: &str,
        p256dh: Option<&str>,
        auth: Option<&str>,
    ) -> Result<Subscription, EndpointError> {
        if endpoint.len() > MAX_ENDPOINT_LEN {
            return Err(EndpointError::TooLong);
        }
        let url = Url::parse(endpoint).map_err(|_| EndpointError::NotUrl)?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(EndpointError::NotHttps);
        }
        let host = url.host_str().ok_or(EndpointError::NotUrl)?;
        let port = url.port_or_known_default().ok_or(EndpointError::NotUrl)?;
        let addresses: Vec<IpAddr> = match literal_address(&url) {
            Some(ip) => vec![ip],
            None => self
                .resolver
                .resolve(host, port)
                .await
                .map_err(|_| EndpointError::Unresolvable)?
                .into_iter()
                .map(|a| a.ip())
                .collect(),
        };
        if addresses.is_empty() {
            return Err(EndpointError::Unresolvable);
        }
        let listed = |ip: &IpAddr| self.allow_private.iter().any(|net| net.contains(ip));
        match url.scheme() {
            "https" if addresses.iter().all(|ip| is_global(ip) || listed(ip)) => {}
            "https" => return Err(EndpointError::Private),
            "http" if addresses.iter().all(listed) => {}
            _ => return Err(EndpointError::NotHttps),
        }
        let keys = match (p256dh, auth) {
            (None, None) => None,
            (Some(p256dh), Some(auth)) => Some(Keys::parse(p256dh, auth)?),
            _ => return Err(EndpointError::HalfKeys),
        };
        Ok(Subscription {
            endpoint: url,
            keys,
        })
    }

    /// Send `body` to `subscription`, to be kept `ttl` by its push service.
    pub async fn send(
        &self,
        subscription: &Subscription,
        body: Vec<u8>,
        urgency: Urgency,
        ttl: Duration,
    ) -> Sent {
        let url = &subscription.endpoint;
        if let Some(ip) = literal_address(url)
            && !is_global(&ip)
            && !self.allow_private.iter().any(|net| net.contains(&ip))
        {
            return Sent::Refused(StatusCode::FORBIDDEN);
        }
        let authorization = match self.vapid_header(url) {
            Ok(value) => value,
            Err(e) => return Sent::Failed(format!("cannot sign VAPID: {e}")),
        };
        let mut request = self
            .client
            .post(url.clone())
            .header("TTL", ttl.as_secs())
            .header("Urgency", urgency.as_str())
            .header(header::AUTHORIZATION, authorization);
        request = match &subscription.keys {
            Some(keys) => match web_push_native::encrypt(body, &keys.p256dh, &keys.auth) {
                Ok(encrypted) => request
                    .header(header::CONTENT_ENCODING, "aes128gcm")
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(encrypted),
                Err(e) => return Sent::Failed(format!("cannot encrypt: {e}")),
            },
            None => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body),
        };
        match request.send().await {
            Ok(response) => match response.status() {
                status if status.is_success() => Sent::Taken,
                StatusCode::NOT_FOUND | StatusCode::GONE => Sent::Gone,
                StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => Sent::Throttled,
                status if status.is_server_error() => Sent::Failed(status.to_string()),
                status => Sent::Refused(status),
            },
            Err(e) if e.is_timeout() => Sent::Failed("no answer in time".into()),
            Err(e) => Sent::Failed(without_endpoint(e)),
        }
    }

    /// RFC 8292's `Authorization: vapid t=JWT, k=KEY`, for the origin of `url`.
    fn vapid_header(&self, url: &Url) -> Result<String, web_push_native::jwt_simple::Error> {
        let claims = Claims::create(JwtDuration::from_hours(VAPID_VALIDITY_HOURS))
            .with_audience(url.origin().ascii_serialization())
            .with_subject(&self.contact);
        let token = self.vapid.sign(claims)?;
        Ok(format!("vapid t={token}, k={}", self.public_key()))
    }
}

/// The address in a URL whose host is one.
fn literal_address(url: &Url) -> Option<IpAddr> {
    url.host_str()?.trim_matches(['[', ']']).parse().ok()
}

/// What went wrong in a send, in words that may go back to the XMPP server and into logs: the
/// chain of causes, without the URL that reqwest's own text puts first.
fn without_endpoint(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(next) = cause {
        text = format!("{text}: {next}");
        cause = next.source();
    }
    text
}

/// The resolver the HTTP client connects through: a name's private addresses are dropped unless
/// listed, so a name cannot lead inside by answering differently at send time than at
/// registration.
struct Guarded {
    allow: Arc<Vec<IpNet>>,
    resolver: Arc<Resolver>,
}

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let (allow, resolver) = (self.allow.clone(), self.resolver.clone());
        Box::pin(async move {
            let found: Vec<SocketAddr> = resolver
                .resolve(name.as_str(), 0)
                .await?
                .into_iter()
                .filter(|a| is_global(&a.ip()) || allow.iter().any(|net| net.contains(&a.ip())))
                .collect();
            if found.is_empty() {
                // Not the name: it is part of the endpoint.
                return Err("the endpoint's host resolves to no address xup may connect to".into());
            }
            let addresses: Addrs = Box::new(found.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web_push(allow: &[&str]) -> WebPush {
        let allow = allow.iter().map(|n| n.parse().expect("net")).collect();
        WebPush::new(
            &WebPush::new_vapid_secret(),
            "mailto:ops@example.org".into(),
            allow,
            None,
        )
        .expect("web push")
    }

    #[tokio::test]
    async fn endpoints_inside_are_refused_unless_listed_and_only_there_may_be_http() {
        let strict = web_push(&[]);
        for (endpoint, error) in [
            ("https://127.0.0.1/push", EndpointError::Private),
            ("https://[::1]:8443/push", EndpointError::Private),
            ("https://169.254.169.254/latest", EndpointError::Private),
            (
                "https://[::ffff:169.254.169.254]/latest",
                EndpointError::Private,
            ),
            (
                "https://[64:ff9b::a9fe:a9fe]/latest",
                EndpointError::Private,
            ),
            ("https://[2002:7f00:1::1]/push", EndpointError::Private),
            ("https://2130706433/push", EndpointError::Private),
            ("https://0x7f.1/push", EndpointError::Private),
            ("https://198.18.0.1/push", EndpointError::Private),
            ("http://127.0.0.1/push", EndpointError::NotHttps),
            ("ftp://example.org/x", EndpointError::NotHttps),
            ("not a url", EndpointError::NotUrl),
        ] {
            let refused = strict
                .check(endpoint, None, None)
                .await
                .expect_err(endpoint);
            assert_eq!(refused, error, "{endpoint}");
        }
        let listed = web_push(&["127.0.0.0/8"]);
        assert!(
            listed
                .check("http://127.0.0.1:9/push", None, None)
                .await
                .is_ok()
        );
        assert_eq!(
            listed
                .check("http://10.0.0.1/push", None, None)
                .await
                .expect_err("not listed"),
            EndpointError::NotHttps
        );
        let long = format!("https://127.0.0.1/{}", "x".repeat(MAX_ENDPOINT_LEN));
        assert_eq!(
            listed.check(&long, None, None).await.expect_err("long"),
            EndpointError::TooLong
        );
    }

    #[tokio::test]
    async fn keys_come_in_pairs_and_must_be_what_rfc_8291_says() {
        let listed = web_push(&["127.0.0.0/8"]);
        let secret =
            p256::SecretKey::random(&mut web_push_native::p256::elliptic_curve::rand_core::OsRng);
        let point = secret.public_key().to_sec1_bytes();
        let p256dh = URL_SAFE_NO_PAD.encode(point);
        let auth = URL_SAFE_NO_PAD.encode([1u8; 16]);
        let endpoint = "http://127.0.0.1/push";
        let keys = listed.check(endpoint, Some(&p256dh), Some(&auth)).await;
        assert!(keys.expect("accepted").keys.is_some());
        let check = |p, a| listed.check(endpoint, p, a);
        assert_eq!(
            check(Some(&p256dh), None).await.expect_err("half"),
            EndpointError::HalfKeys
        );
        assert_eq!(
            check(Some("AAAA"), Some(&auth)).await.expect_err("p256dh"),
            EndpointError::P256dh
        );
        let short = URL_SAFE_NO_PAD.encode([1u8; 15]);
        assert_eq!(
            check(Some(&p256dh), Some(&short)).await.expect_err("auth"),
            EndpointError::Auth
        );
    }

    #[test]
    fn the_vapid_header_names_the_origin_and_the_key() {
        let web_push = web_push(&[]);
        let url = Url::parse("https://push.example.org:8443/x/y").expect("url");
        let header = web_push.vapid_header(&url).expect("signed");
        assert!(header.starts_with("vapid t="), "{header}");
        assert!(header.ends_with(&format!(", k={}", web_push.public_key())));
        let jwt = header["vapid t=".len()..].split(',').next().expect("jwt");
        let claims = jwt.split('.').nth(1).expect("claims");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("b64")).expect("json");
        assert_eq!(claims["aud"], "https://push.example.org:8443");
        assert_eq!(claims["sub"], "mailto:ops@example.org");
    }
}
