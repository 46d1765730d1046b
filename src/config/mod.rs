//! The JSON configuration file: its shape, its defaults, and validation whose every error names the
//! field at fault.
//!
//! Parsing happens in two steps. Serde reads the file into [`RawConfig`] (unknown keys are refused,
//! so a typo such as `"lifetme"` is an error, not a silently ignored setting); [`Config::validate`]
//! then checks meaning and produces the typed [`Config`] the rest of xup uses. `xup check` runs the
//! same code, so what it accepts is exactly what the daemon accepts.

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use xmpp_parsers::jid::{BareJid, Jid};

mod defaults;
pub use defaults::*;

/// The validated configuration.
pub struct Config {
    pub component: ComponentConfig,
    pub http: HttpConfig,
    pub registration: RegistrationConfig,
    pub app_server: AppServerConfig,
    pub delivery: DeliveryConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub store: StoreConfig,
}

pub struct MetricsConfig {
    /// Where `/health` and `/metrics` are served; `None` puts them on `http.listen`.
    pub listen: Option<SocketAddr>,
}

#[derive(Clone)]
pub struct ComponentConfig {
    /// The component's domain JID, e.g. `up.example.org`.
    pub jid: BareJid,
    /// `host:port` of the XMPP server's component listener; resolved at every connect so a
    /// server that moves address is followed.
    pub server: String,
    pub secret: String,
}

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

pub struct RegistrationConfig {
    /// The first one encrypts new tokens; every one decrypts.
    pub secrets: Vec<String>,
    pub lifetime: Duration,
    pub allow: Vec<AllowEntry>,
    /// The endpoints the Java `up` issued, still honoured after a switch to xup.
    pub legacy_up: Option<LegacyUp>,
}

impl RegistrationConfig {
    /// The longest any token that opens here lives: how long a revocation must be remembered.
    pub fn longest_token_life(&self) -> Duration {
        match self.legacy_up {
            Some(_) => self.lifetime.max(defaults::LEGACY_UP_LIFETIME),
            None => self.lifetime,
        }
    }
}

/// What xup needs to honour the endpoints the Java `up` issued.
pub struct LegacyUp {
    /// `up`'s `registration.sharedSecret`, decoded.
    pub secret: [u8; 32],
    /// The scheme and host of `up`'s endpoints (`https://up.example.org`), which now lead to xup;
    /// `http.public_url`'s when no template is given.
    pub origin: String,
    /// Where `up`'s URI template put the token.
    pub route: LegacyRoute,
}

/// Where a token sits in an endpoint URL that the Java `up` made from its `registration.uri`.
#[derive(Debug, Clone, PartialEq)]
pub enum LegacyRoute {
    /// As the last path segment after this prefix (which ends in `/`): `…/push/{token}`.
    Path(String),
    /// As the query parameter `token` of this path: `…/push{?token}`.
    Query(String),
}

pub struct DeliveryConfig {
    /// How long a push waits for the client's answer before the sender is answered anyway (the
    /// message held, `201`); at most `timeout`.
    pub answer_within: Duration,
    /// How long the client's answer to a push is awaited at all; a later one still counts if it
    /// is a `result`.
    pub timeout: Duration,
    /// How long a message is held for an unreachable client when the sender gave no `TTL`.
    pub default_ttl: Duration,
    /// The longest a message is ever held, whatever the sender asked for.
    pub max_ttl: Duration,
    /// Held messages per registration; past it the oldest is dropped for the newest.
    pub max_held_per_registration: usize,
    /// Held messages in all; past it new ones are refused (`503`) rather than held.
    pub max_held: usize,
    /// Held messages for one account (bare JID), over all its resources and apps; past it, `503`.
    pub max_held_per_account: usize,
    /// Held messages for one domain's accounts; past it, `503`.
    pub max_held_per_domain: usize,
    /// The longest wait before a held message that was not taken is offered again (the wait
    /// starts at 30 s and doubles), and how often every registration that is due is looked at.
    pub retry_interval: Duration,
}

/// The XEP-0357 app server (`app_server.rs`).
pub struct AppServerConfig {
    /// Whether xup takes the role at all (advertises it, answers its commands and publishes).
    pub enabled: bool,
    /// Networks an endpoint may resolve into although they are private, loopback or link-local;
    /// only there may an endpoint be plain `http`.
    pub allow_private_endpoints: Vec<IpNet>,
    /// How long a registered node lives.
    pub node_lifetime: Duration,
    /// The VAPID `sub` claim: how a push service reaches the operator (`mailto:` or `https:`).
    pub vapid_contact: String,
    /// The one proxy the outbound client may use (`app_server.proxy`); the environment's
    /// `HTTPS_PROXY` and the like are ignored, since a proxy connects behind the address check.
    pub proxy: Option<reqwest::Url>,
    /// Which VAPID key signs; a new number makes (and keeps) a new key in the store.
    pub vapid_key_generation: u32,
}

/// Rate limits, each a token bucket: `burst` at once, then one more every `every`.
pub struct LimitsConfig {
    /// Pushes to one endpoint (one registration).
    pub per_endpoint: Rate,
    /// Requests from one sender address (an IPv4 address or an IPv6 /64).
    pub per_address: Rate,
    /// Tokens from one sender address that fail to decrypt.
    pub forged_tokens_per_address: Rate,
    /// `<register>` requests from one account (bare JID).
    pub registrations_per_account: Rate,
    /// XEP-0357 publishes to one app-server node.
    pub publishes_per_node: Rate,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: NonZeroU32,
    /// Never zero.
    pub every: Duration,
}

/// Where xup keeps what it remembers (`store.rs`). Its `Debug` never shows the URL, which may
/// hold a password.
#[derive(Clone)]
pub enum StoreConfig {
    /// `store.path`: a directory; xup keeps its SQLite file inside. One instance.
    Sqlite { path: PathBuf },
    /// `store.url`: a PostgreSQL database, which several instances may share (`cluster.rs`);
    /// `ca_file` is trusted besides the system's roots when the URL asks for TLS.
    Postgres {
        url: String,
        pool_size: usize,
        ca_file: Option<PathBuf>,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StoreConfig {
    /// The store in words for an operator: the directory, or PostgreSQL's host and database
    /// (never the URL, which may hold a password).
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Sqlite { path } => path.display().to_string(),
            StoreConfig::Postgres { url, .. } => {
                let Ok(config) = url.parse::<tokio_postgres::Config>() else {
                    return "PostgreSQL".into();
                };
                let hosts: Vec<String> = config
                    .get_hosts()
                    .iter()
                    .map(|host| match host {
                        tokio_postgres::config::Host::Tcp(name) => name.clone(),
                        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                    })
                    .collect();
                format!(
                    "PostgreSQL database {} on {}",
                    config.get_dbname().unwrap_or("(default)"),
                    hosts.join(",")
                )
            }
        }
    }
}

/// One entry of `registration.allow`.
#[derive(Debug, Clone, PartialEq)]
pub enum AllowEntry {
    /// `"*"`: anyone whose server routes to us.
    Anyone,
    /// `"example.org"`: every account on that domain.
    Domain(String),
    /// `"juliet@example.org"`: that account, from any of its clients.
    Account(BareJid),
}

impl AllowEntry {
    /// Whether the sender of a `<register>` falls under this entry.
    pub fn admits(&self, sender: &Jid) -> bool {
        match self {
            AllowEntry::Anyone => true,
            AllowEntry::Domain(domain) => sender.domain().as_str() == domain,
            AllowEntry::Account(bare) => sender.to_bare() == *bare,
        }
    }
}

/// A config that cannot be used, and where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// serde's words for a value of the wrong type or form quote the value, and a config holds secrets
/// (a secret written as a number, a URL with its password in the wrong field): keep what was
/// expected and where, never what was found.
fn without_value(error: &serde_json::Error) -> String {
    let full = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&position).unwrap_or(&full);
    let quoted = ["invalid type", "invalid value", "unknown variant"]
        .into_iter()
        .find(|kind| message.starts_with(kind));
    let Some(kind) = quoted else {
        return full;
    };
    // The expectation is serde's own text and comes last; the value, before it, may hold anything,
    // even these words.
    match message.rsplit_once(", expected ") {
        Some((_, expected)) => format!("{kind}, expected {expected}{position}"),
        None => format!("{kind}{position}"),
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The file as written; every field optional that has a sensible default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    component: RawComponent,
    http: RawHttp,
    registration: RawRegistration,
    #[serde(default)]
    app_server: RawAppServer,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    metrics: RawMetrics,
    store: RawStore,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    jid: String,
    #[serde(default = "default_server")]
    server: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
}

fn default_server() -> String {
    "127.0.0.1:5347".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
    public_url: String,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    max_in_flight: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    secrets: Option<Vec<String>>,
    secrets_file: Option<PathBuf>,
    lifetime: Option<String>,
    allow: Option<Vec<String>>,
    legacy_up_secret: Option<String>,
    legacy_up_secret_file: Option<PathBuf>,
    legacy_up_uri: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAppServer {
    enabled: Option<bool>,
    allow_private_endpoints: Option<Vec<String>>,
    node_lifetime: Option<String>,
    vapid_contact: Option<String>,
    vapid_key_generation: Option<u32>,
    proxy: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    answer_within: Option<String>,
    timeout: Option<String>,
    default_ttl: Option<String>,
    max_ttl: Option<String>,
    max_held_per_registration: Option<usize>,
    max_held: Option<usize>,
    max_held_per_account: Option<usize>,
    max_held_per_domain: Option<usize>,
    retry_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    per_endpoint: Option<RawRate>,
    per_address: Option<RawRate>,
    forged_tokens_per_address: Option<RawRate>,
    registrations_per_account: Option<RawRate>,
    publishes_per_node: Option<RawRate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    burst: u32,
    every: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<PathBuf>,
    url: Option<String>,
    url_file: Option<PathBuf>,
    pool_size: Option<usize>,
    ca_file: Option<PathBuf>,
}

/// Secrets shorter than this are too easy to guess offline from one captured token.
const MIN_SECRET_LEN: usize = 16;

/// Retries more often than this would mostly bounce off clients that are still offline.
const MIN_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// No HTTP request should wait longer than this for a phone; senders time out around here.
const MAX_DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

impl Config {
    /// What an operator must know when `/metrics` shares the public listener: it tells anyone who
    /// reaches the push doors how busy the provider is and whether its link is up. `None` when
    /// `metrics.listen` serves it apart.
    pub fn metrics_exposure(&self) -> Option<String> {
        self.metrics.listen.is_none().then(|| {
            format!(
                "/metrics and /health are served on http.listen ({}), beside the pushes: whoever \
                 reaches the push endpoints reads them too, unless the reverse proxy forwards \
                 only /push/ and /_matrix/push/; set metrics.listen (e.g. 127.0.0.1:9090) to \
                 serve them apart",
                self.http.listen
            )
        })
    }

    /// Read and validate the file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        Config::parse_at(&text, dir, |name| std::env::var(name).ok()).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate config text, taking secrets left out of it from the environment.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, |name| std::env::var(name).ok())
    }

    /// [`Config::parse`], with `env` standing in for the process environment.
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse_at(text, std::path::Path::new("."), env)
    }

    /// Parse and validate the text of a config file in `dir`. The text is JSON with comments
    /// (`//`, `/* */` and `#`, outside strings), so a shipped config can explain itself; comments
    /// become spaces, so an error's line and column stay true.
    ///
    /// A relative `*_file` path names a file in systemd's `$CREDENTIALS_DIRECTORY` when xup runs
    /// with credentials (`LoadCredential=`), and in `dir` otherwise: the packaged config's
    /// `"secret_file": "component.secret"` is the credential under systemd, and
    /// `/etc/xup/component.secret` when an operator runs `xup check` by hand.
    pub fn parse_at(
        text: &str,
        dir: &std::path::Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut json = String::with_capacity(text.len());
        std::io::Read::read_to_string(
            &mut json_comments::StripComments::new(text.as_bytes()),
            &mut json,
        )
        .map_err(|e| ConfigError::Syntax {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let deserializer = &mut serde_json::Deserializer::from_str(&json);
        let mut raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let message = if path == "." {
                without_value(e.inner())
            } else {
                format!("{path}: {}", without_value(e.inner()))
            };
            ConfigError::Syntax {
                path: PathBuf::new(),
                message,
            }
        })?;
        let base = env("CREDENTIALS_DIRECTORY").map_or_else(|| dir.to_owned(), PathBuf::from);
        for file in [
            &mut raw.component.secret_file,
            &mut raw.registration.secrets_file,
            &mut raw.registration.legacy_up_secret_file,
            &mut raw.store.url_file,
        ] {
            // Joining an absolute path gives that path.
            *file = file.take().map(|file| base.join(file));
        }
        Config::validate(raw, &env)
    }

    fn validate(
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let jid = BareJid::new(&raw.component.jid)
            .map_err(|e| invalid("component.jid", format!("not a JID: {e}")))?;
        if jid.node().is_some() {
            return Err(invalid(
                "component.jid",
                "a component is a bare domain such as up.example.org, without a user part",
            ));
        }
        if raw
            .component
            .server
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(invalid(
                "component.server",
                "expected host:port, e.g. 127.0.0.1:5347",
            ));
        }
        let component_secret = secret(
            "component.secret",
            raw.component.secret,
            raw.component.secret_file.as_deref(),
            env(COMPONENT_SECRET_ENV),
            COMPONENT_SECRET_ENV,
        )?;
        if component_secret.is_empty() {
            return Err(invalid("component.secret", "must not be empty"));
        }

        let listen = raw.http.listen.parse().map_err(|_| {
            invalid(
                "http.listen",
                "expected an IP address and port, e.g. 127.0.0.1:8080",
            )
        })?;
        let public_url = raw.http.public_url.trim_end_matches('/').to_owned();
        if !(public_url.starts_with("https://") || public_url.starts_with("http://"))
            || public_url.contains(['?', '#'])
        {
            return Err(invalid(
                "http.public_url",
                "expected an http(s) URL without query or fragment, e.g. https://up.example.org",
            ));
        }

        let secrets: Vec<String> = match raw.registration.secrets {
            Some(list) => {
                if raw.registration.secrets_file.is_some()
                    || env(REGISTRATION_SECRETS_ENV).is_some()
                {
                    return Err(invalid(
                        "registration.secrets",
                        format!(
                            "given more than once: keep one of registration.secrets, \
                             registration.secrets_file and {REGISTRATION_SECRETS_ENV}"
                        ),
                    ));
                }
                list
            }
            // One secret per line or word, so a file can be made with `openssl rand -base64 32`.
            None => secret(
                "registration.secrets",
                None,
                raw.registration.secrets_file.as_deref(),
                env(REGISTRATION_SECRETS_ENV),
                REGISTRATION_SECRETS_ENV,
            )?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        };
        if secrets.is_empty() {
            return Err(invalid(
                "registration.secrets",
                "needs at least one secret (the first encrypts new endpoints)",
            ));
        }
        for (i, secret) in secrets.iter().enumerate() {
            if secret.len() < MIN_SECRET_LEN {
                return Err(invalid(
                    format!("registration.secrets[{i}]"),
                    format!("must be at least {MIN_SECRET_LEN} characters long"),
                ));
            }
        }
        let lifetime = match &raw.registration.lifetime {
            Some(text) => duration("registration.lifetime", text)?,
            None => defaults::DEFAULT_LIFETIME,
        };
        if lifetime < defaults::MIN_LIFETIME {
            return Err(invalid(
                "registration.lifetime",
                "must be at least 2d: Conversations renews endpoints that have less than 24 h left",
            ));
        }
        let allow = match raw.registration.allow {
            Some(entries) => entries
                .iter()
                .enumerate()
                .map(|(i, entry)| allow_entry(&format!("registration.allow[{i}]"), entry))
                .collect::<Result<_, _>>()?,
            None => vec![default_allow(&jid)],
        };

        let legacy_secret = match (
            &raw.registration.legacy_up_secret,
            &raw.registration.legacy_up_secret_file,
            env(LEGACY_UP_SECRET_ENV),
        ) {
            (None, None, None) => None,
            (inline, file, from_env) => Some(secret(
                "registration.legacy_up_secret",
                inline.clone(),
                file.as_deref(),
                from_env,
                LEGACY_UP_SECRET_ENV,
            )?),
        };
        let legacy_up = match (legacy_secret, &raw.registration.legacy_up_uri) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(
                    "registration.legacy_up_uri",
                    "means nothing without registration.legacy_up_secret",
                ));
            }
            (Some(secret), uri) => {
                let (origin, route) = match uri {
                    Some(uri) => legacy_route(uri)?,
                    None => (
                        origin_of(&public_url).to_owned(),
                        LegacyRoute::Path("/push/".into()),
                    ),
                };
                Some(LegacyUp {
                    secret: legacy_key(&secret)?,
                    origin,
                    route,
                })
            }
        };

        let timeout = match &raw.delivery.timeout {
            Some(text) => duration("delivery.timeout", text)?,
            None => defaults::DEFAULT_DELIVERY_TIMEOUT,
        };
        if timeout.is_zero() || timeout > MAX_DELIVERY_TIMEOUT {
            return Err(invalid(
                "delivery.timeout",
                "must be more than 0s and at most 120s",
            ));
        }

        // Left out, it follows a shorter `timeout` down rather than make that config invalid.
        let answer_within = match &raw.delivery.answer_within {
            Some(text) => duration("delivery.answer_within", text)?,
            None => defaults::DEFAULT_ANSWER_WITHIN.min(timeout),
        };
        if answer_within.is_zero() || answer_within > timeout {
            return Err(invalid(
                "delivery.answer_within",
                "must be more than 0s and at most delivery.timeout",
            ));
        }

        let default_ttl = match &raw.delivery.default_ttl {
            Some(text) => duration("delivery.default_ttl", text)?,
            None => defaults::DEFAULT_TTL,
        };
        let max_ttl = match &raw.delivery.max_ttl {
            Some(text) => duration("delivery.max_ttl", text)?,
            None => defaults::DEFAULT_MAX_TTL,
        };
        if default_ttl > max_ttl {
            return Err(invalid(
                "delivery.default_ttl",
                "must not be longer than delivery.max_ttl",
            ));
        }
        let max_held_per_registration = raw
            .delivery
            .max_held_per_registration
            .unwrap_or(defaults::DEFAULT_MAX_HELD_PER_REGISTRATION);
        if max_held_per_registration == 0 {
            return Err(invalid(
                "delivery.max_held_per_registration",
                "must be at least 1 (set delivery.max_ttl to 0s to hold nothing)",
            ));
        }
        let max_held = raw.delivery.max_held.unwrap_or(defaults::DEFAULT_MAX_HELD);
        let share = |field: &str, given: Option<usize>, divisor: usize| match given {
            None => Ok((max_held / divisor).max(1)),
            Some(n) if (1..=max_held).contains(&n) => Ok(n),
            Some(_) => Err(invalid(
                field,
                "must be at least 1 and at most delivery.max_held",
            )),
        };
        let max_held_per_account = share(
            "delivery.max_held_per_account",
            raw.delivery.max_held_per_account,
            defaults::HELD_SHARE_OF_ACCOUNT,
        )?;
        let max_held_per_domain = share(
            "delivery.max_held_per_domain",
            raw.delivery.max_held_per_domain,
            defaults::HELD_SHARE_OF_DOMAIN,
        )?;
        let retry_interval = match &raw.delivery.retry_interval {
            Some(text) => duration("delivery.retry_interval", text)?,
            None => defaults::DEFAULT_RETRY_INTERVAL,
        };
        if retry_interval < MIN_RETRY_INTERVAL {
            return Err(invalid(
                "delivery.retry_interval",
                "must be at least 10s: every retry offers each waiting client a message",
            ));
        }

        let http = raw.http;
        let max_connections = http
            .max_connections
            .unwrap_or(defaults::DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        let max_connections_per_address = match http.max_connections_per_address {
            None => (max_connections / defaults::CONNECTION_SHARE_OF_ADDRESS).max(1),
            Some(n) if (1..=max_connections).contains(&n) => n,
            Some(_) => {
                return Err(invalid(
                    "http.max_connections_per_address",
                    "must be at least 1 and at most http.max_connections",
                ));
            }
        };
        let max_in_flight = http
            .max_in_flight
            .unwrap_or(defaults::DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(invalid("http.max_in_flight", "must be at least 1"));
        }
        let header_timeout = positive_duration(
            "http.header_timeout",
            http.header_timeout.as_deref(),
            defaults::DEFAULT_HEADER_TIMEOUT,
        )?;
        let body_timeout = positive_duration(
            "http.body_timeout",
            http.body_timeout.as_deref(),
            defaults::DEFAULT_BODY_TIMEOUT,
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

        let limits = raw.limits;
        let limits = LimitsConfig {
            per_endpoint: rate(
                "limits.per_endpoint",
                limits.per_endpoint,
                defaults::DEFAULT_PER_ENDPOINT,
            )?,
            per_address: rate(
                "limits.per_address",
                limits.per_address,
                defaults::DEFAULT_PER_ADDRESS,
            )?,
            forged_tokens_per_address: rate(
                "limits.forged_tokens_per_address",
                limits.forged_tokens_per_address,
                defaults::DEFAULT_FORGED_PER_ADDRESS,
            )?,
            registrations_per_account: rate(
                "limits.registrations_per_account",
                limits.registrations_per_account,
                defaults::DEFAULT_REGISTRATIONS_PER_ACCOUNT,
            )?,
            publishes_per_node: rate(
                "limits.publishes_per_node",
                limits.publishes_per_node,
                defaults::DEFAULT_PUBLISHES_PER_NODE,
            )?,
        };

        let raw_app = raw.app_server;
        let app_server = AppServerConfig {
            enabled: raw_app.enabled.unwrap_or(true),
            allow_private_endpoints: raw_app
                .allow_private_endpoints
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    proxy_entry(&format!("app_server.allow_private_endpoints[{i}]"), entry)
                })
                .collect::<Result<_, _>>()?,
            node_lifetime: positive_duration(
                "app_server.node_lifetime",
                raw_app.node_lifetime.as_deref(),
                defaults::DEFAULT_NODE_LIFETIME,
            )?,
            vapid_contact: match raw_app.vapid_contact {
                Some(contact)
                    if contact.starts_with("mailto:") || contact.starts_with("https://") =>
                {
                    contact
                }
                Some(_) => {
                    return Err(invalid(
                        "app_server.vapid_contact",
                        "expected a mailto: or https: URI (RFC 8292 §2.1)",
                    ));
                }
                None => public_url.clone(),
            },
            vapid_key_generation: raw_app.vapid_key_generation.unwrap_or(1),
            proxy: raw_app
                .proxy
                .map(|text| match reqwest::Url::parse(&text) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                        Ok(url)
                    }
                    _ => Err(invalid(
                        "app_server.proxy",
                        "expected an http:// or https:// URL of a proxy, e.g. http://127.0.0.1:3128",
                    )),
                })
                .transpose()?,
        };

        let metrics = MetricsConfig {
            listen: raw
                .metrics
                .listen
                .map(|text| {
                    text.parse().map_err(|_| {
                        invalid(
                            "metrics.listen",
                            "expected an IP address and port, e.g. 127.0.0.1:9090",
                        )
                    })
                })
                .transpose()?,
        };
        if metrics.listen.is_some_and(|address| address == listen) {
            return Err(invalid(
                "metrics.listen",
                "must differ from http.listen; leave it out to serve /metrics there",
            ));
        }

        let store = store(raw.store, env)?;

        Ok(Config {
            component: ComponentConfig {
                jid,
                server: raw.component.server,
                secret: component_secret,
            },
            http: HttpConfig {
                listen,
                public_url,
                max_connections,
                max_connections_per_address,
                max_in_flight,
                header_timeout,
                body_timeout,
                trusted_proxies,
            },
            registration: RegistrationConfig {
                secrets,
                lifetime,
                allow,
                legacy_up,
            },
            app_server,
            delivery: DeliveryConfig {
                answer_within,
                timeout,
                default_ttl,
                max_ttl,
                max_held_per_registration,
                max_held,
                max_held_per_account,
                max_held_per_domain,
                retry_interval,
            },
            limits,
            metrics,
            store,
        })
    }
}

fn duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| {
        invalid(
            field,
            format!("{e}; write durations like \"15s\" or \"7d\""),
        )
    })
}

/// Where xup looks for a secret the config file leaves out.
const COMPONENT_SECRET_ENV: &str = "XUP_COMPONENT_SECRET";
/// Whitespace-separated, the first encrypting new endpoints.
const REGISTRATION_SECRETS_ENV: &str = "XUP_REGISTRATION_SECRETS";

/// A PostgreSQL URL, which holds a password: a secret like the others.
const STORE_URL_ENV: &str = "XUP_STORE_URL";

/// Connections to PostgreSQL per instance, unless `store.pool_size` says otherwise.
const DEFAULT_POOL_SIZE: usize = 16;

/// `store.path` (SQLite) or `store.url` (PostgreSQL, also from `url_file` or the environment).
fn store(raw: RawStore, env: &dyn Fn(&str) -> Option<String>) -> Result<StoreConfig, ConfigError> {
    let from_env = env(STORE_URL_ENV);
    let url_given = raw.url.is_some() || raw.url_file.is_some() || from_env.is_some();
    if !url_given {
        for (field, given) in [
            ("store.pool_size", raw.pool_size.is_some()),
            ("store.ca_file", raw.ca_file.is_some()),
        ] {
            if given {
                return Err(invalid(
                    field,
                    "is for PostgreSQL: give store.url with it, or leave it out",
                ));
            }
        }
        return match raw.path {
            Some(path) if !path.as_os_str().is_empty() => Ok(StoreConfig::Sqlite { path }),
            _ => Err(invalid(
                "store.path",
                format!(
                    "must name a directory (or give store.url, or {STORE_URL_ENV}, for PostgreSQL)"
                ),
            )),
        };
    }
    if raw.path.is_some() {
        return Err(invalid(
            "store",
            "both store.path (SQLite) and store.url (PostgreSQL) are given; keep the one xup \
             should use",
        ));
    }
    let url = secret(
        "store.url",
        raw.url,
        raw.url_file.as_deref(),
        from_env,
        STORE_URL_ENV,
    )?;
    let parsed = url.parse::<tokio_postgres::Config>().map_err(|e| {
        invalid(
            "store.url",
            format!(
                "is not a PostgreSQL connection URL ({e}); write \
                 postgres://user:password@host/database"
            ),
        )
    })?;
    if let Some(file) = &raw.ca_file {
        if parsed.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
            return Err(invalid(
                "store.ca_file",
                "is used only with TLS: add ?sslmode=require to store.url, or leave it out",
            ));
        }
        if let Err(e) = std::fs::File::open(file) {
            return Err(invalid(
                "store.ca_file",
                format!("cannot read {}: {e}", file.display()),
            ));
        }
    }
    let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
    if pool_size == 0 {
        return Err(invalid("store.pool_size", "must be at least 1"));
    }
    Ok(StoreConfig::Postgres {
        url,
        pool_size,
        ca_file: raw.ca_file,
    })
}

/// The Java `up`'s `registration.sharedSecret`: 32 bytes in standard base64, as its config holds it.
const LEGACY_UP_SECRET_ENV: &str = "XUP_LEGACY_UP_SECRET";

fn legacy_key(text: &str) -> Result<[u8; 32], ConfigError> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| {
            invalid(
                "registration.legacy_up_secret",
                "expected up's registration.sharedSecret as it stands in its config.json: \
                 32 bytes in base64",
            )
        })
}

/// The scheme and host of an absolute URL: everything before its path.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

/// The origin and route of `up`'s `registration.uri` template, e.g.
/// `https://up.example.org/push/{token}` or `https://up.example.org/push{?token}`. Routes xup
/// serves itself cannot be taken.
pub fn legacy_route(uri: &str) -> Result<(String, LegacyRoute), ConfigError> {
    const FIELD: &str = "registration.legacy_up_uri";
    if !(uri.starts_with("https://") || uri.starts_with("http://")) {
        return Err(invalid(FIELD, "expected an absolute http(s) URI template"));
    }
    let origin = origin_of(uri);
    let path = &uri[origin.len()..];
    let route = if let Some(prefix) = path.strip_suffix("{token}")
        && prefix.ends_with('/')
    {
        LegacyRoute::Path(prefix.to_owned())
    } else if let Some(path) = path.strip_suffix("{?token}") {
        LegacyRoute::Query(path.to_owned())
    } else {
        return Err(invalid(
            FIELD,
            "expected the token at the end, as in https://up.example.org/push/{token} or \
             https://up.example.org/push{?token}",
        ));
    };
    let (LegacyRoute::Path(path) | LegacyRoute::Query(path)) = &route;
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-._~".contains(c);
    if !path.starts_with('/') || !path.chars().all(plain) || path.contains("//") {
        return Err(invalid(
            FIELD,
            "the path before the token may only hold letters, digits and - . _ ~ /",
        ));
    }
    let taken = ["/health", "/metrics", "/_matrix/"];
    if path.is_empty()
        || path == "/"
        || taken
            .iter()
            .any(|t| path.starts_with(t) || t.starts_with(path.as_str()))
    {
        return Err(invalid(
            FIELD,
            "the token's path collides with a path xup serves itself (/health, /metrics, \
             /_matrix/); put xup behind a proxy that rewrites it",
        ));
    }
    Ok((origin.to_owned(), route))
}

/// A secret from exactly one of: the file's `field`, the file named by `field`_file, or the
/// environment variable `env_name` (already looked up as `from_env`), so secrets need not sit in
/// a config file that is world-readable or kept in version control.
fn secret(
    field: &str,
    inline: Option<String>,
    file: Option<&Path>,
    from_env: Option<String>,
    env_name: &str,
) -> Result<String, ConfigError> {
    let file_field = format!("{field}_file");
    match (inline, file, from_env) {
        (Some(value), None, None) => Ok(value),
        (None, Some(path), None) => std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|e| invalid(file_field, format!("cannot read {}: {e}", path.display()))),
        (None, None, Some(value)) => Ok(value.trim().to_owned()),
        (None, None, None) => Err(invalid(
            field,
            format!("missing: give {field}, {file_field} or the environment variable {env_name}"),
        )),
        _ => Err(invalid(
            field,
            format!("given more than once: keep one of {field}, {file_field} and {env_name}"),
        )),
    }
}

/// A duration that must not be zero, or `default` when the field is absent.
fn positive_duration(
    field: &str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let value = text.map_or(Ok(default), |text| duration(field, text))?;
    if value.is_zero() {
        return Err(invalid(field, "must be more than 0s"));
    }
    Ok(value)
}

fn rate(field: &str, raw: Option<RawRate>, default: (u32, Duration)) -> Result<Rate, ConfigError> {
    let (burst, every) = match raw {
        Some(raw) => (raw.burst, duration(&format!("{field}.every"), &raw.every)?),
        None => default,
    };
    let burst = NonZeroU32::new(burst)
        .ok_or_else(|| invalid(format!("{field}.burst"), "must be at least 1"))?;
    if every.is_zero() {
        return Err(invalid(format!("{field}.every"), "must be more than 0s"));
    }
    Ok(Rate { burst, every })
}

fn proxy_entry(field: &str, entry: &str) -> Result<IpNet, ConfigError> {
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            invalid(
                field,
                format!("{entry:?} is not an IP address or network such as 10.0.0.0/8"),
            )
        })
}

fn allow_entry(field: &str, entry: &str) -> Result<AllowEntry, ConfigError> {
    if entry == "*" {
        return Ok(AllowEntry::Anyone);
    }
    let jid = BareJid::new(entry).map_err(|e| {
        invalid(
            field,
            format!("{entry:?} is neither \"*\", a domain nor a bare JID: {e}"),
        )
    })?;
    Ok(match jid.node() {
        Some(_) => AllowEntry::Account(jid),
        None => AllowEntry::Domain(jid.domain().to_string()),
    })
}

/// Users of the server the component hangs off: `example.org` for `up.example.org`.
fn default_allow(component: &BareJid) -> AllowEntry {
    let domain = component.domain().as_str();
    let parent = domain.split_once('.').map_or(domain, |(_, rest)| rest);
    AllowEntry::Domain(parent.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "component":    { "jid": "up.example.org", "server": "127.0.0.1:5347", "secret": "s" },
      "http":         { "listen": "127.0.0.1:8080", "public_url": "https://up.example.org/" },
      "registration": { "secrets": ["0123456789abcdef"], "lifetime": "7d", "allow": ["example.org"] },
      "delivery":     { "timeout": "15s" },
      "store":        { "path": "/var/lib/xup" }
    }"#;

    fn error_of(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_field_without_echoing_it() {
        for (from, to, field) in [
            (
                r#""secret": "s""#,
                r#""secret": 9876543210987654321"#,
                "component.secret",
            ),
            (
                r#""secret": "s""#,
                r#""secret": 98765.4321"#,
                "component.secret",
            ),
            (
                r#""secret": "s""#,
                r#""secret": ["9876543210"]"#,
                "component.secret",
            ),
            (
                r#""secrets": ["0123456789abcdef"]"#,
                r#""secrets": "9876543210, expected a wrong thing""#,
                "registration.secrets",
            ),
            (
                r#""secrets": ["0123456789abcdef"]"#,
                r#""secrets": [9876543210]"#,
                "registration.secrets[0]",
            ),
            (
                r#""path": "/var/lib/xup""#,
                r#""url": 9876543210"#,
                "store.url",
            ),
            (
                r#""timeout": "15s""#,
                r#""timeout": false"#,
                "delivery.timeout",
            ),
        ] {
            let e = error_of(&GOOD.replace(from, to));
            assert!(e.contains(field), "{to}: {e}");
            assert!(e.contains("expected"), "{to}: says what was expected: {e}");
            assert!(!e.contains("98765"), "{to}: echoes the value: {e}");
        }
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.http.public_url, "https://up.example.org");
        assert_eq!(config.registration.lifetime, Duration::from_secs(7 * 86400));
        assert_eq!(config.delivery.timeout, Duration::from_secs(15));
    }

    #[test]
    fn allow_defaults_to_the_parent_domain() {
        let text = GOOD.replace(r#", "allow": ["example.org"]"#, "");
        let config = Config::parse(&text).expect("valid");
        assert_eq!(
            config.registration.allow,
            vec![AllowEntry::Domain("example.org".into())]
        );
    }

    #[test]
    fn a_short_lifetime_is_refused_naming_the_field() {
        let e = error_of(&GOOD.replace(r#""7d""#, r#""1d""#));
        assert!(e.starts_with("registration.lifetime:"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_path() {
        let e = error_of(&GOOD.replace(r#""timeout""#, r#""timeot""#));
        assert!(e.contains("delivery") && e.contains("timeot"), "{e}");
    }

    #[test]
    fn answer_within_defaults_to_3s_and_never_exceeds_the_timeout() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.delivery.answer_within, Duration::from_secs(3));
        let short = Config::parse(&GOOD.replace(r#""15s""#, r#""1s""#)).expect("valid");
        assert_eq!(short.delivery.answer_within, Duration::from_secs(1));
        let e = error_of(&GOOD.replace(r#""timeout""#, r#""answer_within": "20s", "timeout""#));
        assert!(e.starts_with("delivery.answer_within:"), "{e}");
    }

    #[test]
    fn a_bad_duration_names_the_field() {
        let e = error_of(&GOOD.replace(r#""15s""#, r#""soon""#));
        assert!(e.starts_with("delivery.timeout:"), "{e}");
    }

    #[test]
    fn a_short_secret_names_its_index() {
        let e = error_of(&GOOD.replace(
            r#"["0123456789abcdef"]"#,
            r#"["0123456789abcdef", "short"]"#,
        ));
        assert!(e.starts_with("registration.secrets[1]:"), "{e}");
    }

    #[test]
    fn allow_entries_are_typed() {
        let text = GOOD.replace(
            r#"["example.org"]"#,
            r#"["*", "example.org", "juliet@example.org"]"#,
        );
        let allow = Config::parse(&text).expect("valid").registration.allow;
        let romeo: Jid = "romeo@example.net/phone".parse().expect("jid");
        let juliet: Jid = "juliet@example.org/phone".parse().expect("jid");
        assert!(allow[0].admits(&romeo));
        assert!(!allow[1].admits(&romeo) && allow[1].admits(&juliet));
        assert!(allow[2].admits(&juliet));
    }

    #[test]
    fn a_relative_secret_file_is_a_credential_under_systemd_and_beside_the_config_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (etc, credentials) = (dir.path().join("etc"), dir.path().join("credentials"));
        for (place, secret) in [(&etc, "from etc"), (&credentials, "from systemd")] {
            std::fs::create_dir(place).expect("mkdir");
            std::fs::write(place.join("component.secret"), secret).expect("write");
        }
        let text = GOOD.replace(r#""secret": "s""#, r#""secret_file": "component.secret""#);
        let by_hand = Config::parse_at(&text, &etc, no_env).expect("valid");
        assert_eq!(by_hand.component.secret, "from etc");
        let credentials_env = |name: &str| {
            (name == "CREDENTIALS_DIRECTORY").then(|| credentials.display().to_string())
        };
        let under_systemd = Config::parse_at(&text, &etc, credentials_env).expect("valid");
        assert_eq!(under_systemd.component.secret, "from systemd");
    }

    #[test]
    fn comments_are_allowed_and_errors_keep_their_place() {
        let commented = GOOD
            .replacen('{', "{ // what xup is\n  /* the XMPP side: */", 1)
            .replace(r#""delivery""#, "# how long to wait\n      \"delivery\"");
        let config = Config::parse(&commented).expect("comments are not content");
        assert_eq!(config.delivery.timeout, Duration::from_secs(15));
        assert_eq!(
            config.http.public_url, "https://up.example.org",
            "// inside a string is not a comment"
        );
        // The line of a mistake below the comments is the line in the file.
        let e = error_of(&commented.replace(r#""15s" }"#, r#""15s" "#));
        assert!(e.contains("line 8"), "{e}");
    }

    #[test]
    fn the_store_is_sqlite_or_postgresql_and_each_refuses_the_others_settings() {
        let with_store = |store: &str| GOOD.replace(r#"{ "path": "/var/lib/xup" }"#, store);
        let postgres = Config::parse(&with_store(r#"{ "url": "postgres://xup:pw@db/xup" }"#));
        assert!(matches!(
            postgres.expect("valid").store,
            StoreConfig::Postgres {
                pool_size: 16,
                ca_file: None,
                ..
            }
        ));
        for (store, field) in [
            (r#"{ "path": "/x", "url": "postgres://db/xup" }"#, "store:"),
            (r#"{ "path": "/x", "pool_size": 4 }"#, "store.pool_size:"),
            (
                r#"{ "path": "/x", "ca_file": "/etc/ssl/ca.pem" }"#,
                "store.ca_file:",
            ),
            (
                r#"{ "url": "postgres://db/xup", "pool_size": 0 }"#,
                "store.pool_size:",
            ),
            (r#"{ "url": "mysql://db/xup" }"#, "store.url:"),
            (
                r#"{ "url": "postgres://db/xup", "ca_file": "/etc/hostname" }"#,
                "store.ca_file: is used only with TLS",
            ),
            (
                r#"{ "url": "postgres://db/xup?sslmode=require", "ca_file": "/nonexistent" }"#,
                "store.ca_file: cannot read",
            ),
            (r#"{}"#, "store.path:"),
        ] {
            let e = error_of(&with_store(store));
            assert!(e.starts_with(field), "{store}: {e}");
        }
    }

    #[test]
    fn a_component_jid_with_a_user_part_is_refused() {
        let e = error_of(&GOOD.replace(r#""up.example.org""#, r#""up@example.org""#));
        assert!(e.starts_with("component.jid:"), "{e}");
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().expect("dir");
        let component = dir.path().join("component");
        let endpoints = dir.path().join("endpoints");
        std::fs::write(&component, "from a file\n").expect("write");
        std::fs::write(&endpoints, "0123456789abcdef-new\n0123456789abcdef-old\n").expect("write");
        let text = GOOD
            .replace(
                r#""secret": "s""#,
                &format!(r#""secret_file": {:?}"#, component.display().to_string()),
            )
            .replace(
                r#""secrets": ["0123456789abcdef"]"#,
                &format!(r#""secrets_file": {:?}"#, endpoints.display().to_string()),
            );
        let config = Config::parse_with_env(&text, no_env).expect("valid");
        assert_eq!(config.component.secret, "from a file");
        assert_eq!(
            config.registration.secrets,
            ["0123456789abcdef-new", "0123456789abcdef-old"]
        );
    }

    #[test]
    fn secrets_can_come_from_the_environment() {
        let text = GOOD
            .replace(r#", "secret": "s""#, "")
            .replace(r#""secrets": ["0123456789abcdef"], "#, "");
        let env = |name: &str| match name {
            "XUP_COMPONENT_SECRET" => Some("from the environment".to_owned()),
            "XUP_REGISTRATION_SECRETS" => Some("0123456789abcdef-1 0123456789abcdef-2".to_owned()),
            _ => None,
        };
        let config = Config::parse_with_env(&text, env).expect("valid");
        assert_eq!(config.component.secret, "from the environment");
        assert_eq!(config.registration.secrets.len(), 2);

        let e = Config::parse_with_env(&text, no_env)
            .err()
            .expect("refused");
        assert!(
            e.to_string().starts_with("component.secret: missing")
                && e.to_string().contains("XUP_COMPONENT_SECRET"),
            "{e}"
        );
    }

    #[test]
    fn a_secret_given_twice_is_refused() {
        let env = |name: &str| (name == "XUP_COMPONENT_SECRET").then(|| "other".to_owned());
        let e = Config::parse_with_env(GOOD, env).err().expect("refused");
        assert!(
            e.to_string()
                .starts_with("component.secret: given more than once"),
            "{e}"
        );
        let env = |name: &str| (name == "XUP_REGISTRATION_SECRETS").then(|| "x".repeat(20));
        let e = Config::parse_with_env(GOOD, env).err().expect("refused");
        assert!(
            e.to_string()
                .starts_with("registration.secrets: given more than once"),
            "{e}"
        );
    }

    #[test]
    fn an_unreadable_secret_file_names_the_field() {
        let text = GOOD.replace(
            r#""secret": "s""#,
            r#""secret_file": "/nonexistent/secret""#,
        );
        let e = Config::parse_with_env(&text, no_env)
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .starts_with("component.secret_file: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn limits_have_defaults_and_bad_ones_name_their_field() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.limits.per_endpoint.burst.get(), 240);
        assert_eq!(config.limits.per_endpoint.every, Duration::from_millis(250));
        assert_eq!(
            config.http.max_connections,
            defaults::DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(config.http.trusted_proxies.len(), 2);

        let with = |limits: &str| GOOD.replace(r#""delivery""#, &format!("{limits}, \"delivery\""));
        let e = error_of(&with(
            r#""limits": { "per_endpoint": { "burst": 0, "every": "1s" } }"#,
        ));
        assert!(e.starts_with("limits.per_endpoint.burst:"), "{e}");
        let e = error_of(&with(
            r#""limits": { "per_address": { "burst": 5, "every": "0s" } }"#,
        ));
        assert!(e.starts_with("limits.per_address.every:"), "{e}");
        let e = error_of(&with(
            r#""limits": { "per_address": { "burst": 5, "every": "often" } }"#,
        ));
        assert!(e.starts_with("limits.per_address.every:"), "{e}");
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks() {
        let text = GOOD.replace(
            r#""public_url": "https://up.example.org/""#,
            r#""public_url": "https://up.example.org/", "trusted_proxies": ["10.0.0.0/8", "::1"]"#,
        );
        let proxies = Config::parse(&text).expect("valid").http.trusted_proxies;
        assert!(proxies[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().expect("ip")));
        assert!(proxies[1].contains(&"::1".parse::<std::net::IpAddr>().expect("ip")));

        let e = error_of(&text.replace("10.0.0.0/8", "proxy.example.org"));
        assert!(e.starts_with("http.trusted_proxies[0]:"), "{e}");
        let e = error_of(&text.replace(
            r#""trusted_proxies""#,
            r#""max_in_flight": 0, "trusted_proxies""#,
        ));
        assert!(e.starts_with("http.max_in_flight:"), "{e}");
    }

    #[test]
    fn the_java_ups_secret_and_template_are_checked() {
        let with = |extra: &str| {
            GOOD.replace(
                r#""lifetime": "7d""#,
                &format!(r#""lifetime": "7d", {extra}"#),
            )
        };
        let secret = r#""legacy_up_secret": "7z8XLjkj/8h2T22nd1Z279vT2ONMOgQu8xj0BLps3qA=""#;
        let config = Config::parse(&with(secret)).expect("valid");
        let legacy = config.registration.legacy_up.as_ref().expect("legacy");
        assert_eq!(legacy.route, LegacyRoute::Path("/push/".into()));
        assert_eq!(legacy.origin, "https://up.example.org");
        assert_eq!(
            config.registration.longest_token_life(),
            defaults::LEGACY_UP_LIFETIME
        );
        let e = error_of(&with(r#""legacy_up_secret": "c2hvcnQ=""#));
        assert!(e.starts_with("registration.legacy_up_secret:"), "{e}");
        let e = error_of(&with(
            r#""legacy_up_uri": "https://up.example.org/push/{token}""#,
        ));
        assert!(e.starts_with("registration.legacy_up_uri:"), "{e}");
        let query = format!(r#"{secret}, "legacy_up_uri": "https://old.example.org/up{{?token}}""#);
        let legacy = Config::parse(&with(&query))
            .expect("valid")
            .registration
            .legacy_up
            .expect("legacy");
        assert_eq!(legacy.route, LegacyRoute::Query("/up".into()));
        assert_eq!(legacy.origin, "https://old.example.org");
        for bad in [
            "https://up.example.org/metrics{?token}",
            "https://up.example.org/{token}",
            "https://up.example.org/push/{token}/x",
            "up.example.org/push/{token}",
        ] {
            let e = error_of(&with(&format!(r#"{secret}, "legacy_up_uri": "{bad}""#)));
            assert!(e.starts_with("registration.legacy_up_uri:"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_app_server_has_defaults_and_bad_values_name_their_field() {
        let config = Config::parse(GOOD).expect("valid");
        assert!(config.app_server.enabled);
        assert_eq!(config.app_server.vapid_contact, "https://up.example.org");
        assert!(config.app_server.allow_private_endpoints.is_empty());
        let with = |section: &str| {
            GOOD.replace(
                r#""delivery":"#,
                &format!(r#""app_server": {section}, "delivery":"#),
            )
        };
        let e = error_of(&with(r#"{ "vapid_contact": "admin@example.org" }"#));
        assert!(e.starts_with("app_server.vapid_contact:"), "{e}");
        let e = error_of(&with(
            r#"{ "allow_private_endpoints": ["127.0.0.0/8", "nonsense"] }"#,
        ));
        assert!(
            e.starts_with("app_server.allow_private_endpoints[1]:"),
            "{e}"
        );
        let e = error_of(&with(r#"{ "node_lifetime": "0s" }"#));
        assert!(e.starts_with("app_server.node_lifetime:"), "{e}");
        let off = Config::parse(&with(r#"{ "enabled": false }"#)).expect("valid");
        assert!(!off.app_server.enabled);
    }
}
