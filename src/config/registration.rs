//! `registration`: the secrets tokens are sealed with, how long an endpoint lives, who may
//! register, and the Java `up`'s endpoints still honoured.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use xmpp_parsers::jid::{BareJid, Jid};

use crate::config::{ConfigError, duration, invalid, secret};

/// Conversations renews an endpoint once less than 24 h remain, checking hourly; anything at or
/// below a day would re-register (and change the URL) every hour, so two days is the floor.
pub const MIN_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);

/// A week, as the Java `up` provider uses: few renewals, and a revocation is remembered at most this long.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest the Java `up` made its endpoints live (a day in its first releases, a week since):
/// the tokens it issued are honoured until they expire, so their revocations are kept this long.
pub const LEGACY_UP_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct RegistrationConfig {
    /// The first one encrypts new tokens; every one decrypts.
    pub secrets: Vec<String>,
    pub lifetime: Duration,
    pub allow: Vec<AllowEntry>,
    /// The endpoints the Java `up` issued, still honoured after a switch to xup.
    pub legacy_up: Option<LegacyUp>,
    /// Refuse a registration that names no application server key (UnifiedPush's
    /// `VAPID_REQUIRED`): every endpoint is then bound to one.
    pub require_vapid: bool,
}

impl RegistrationConfig {
    /// The longest any token that opens here lives: how long a revocation must be remembered.
    pub fn longest_token_life(&self) -> Duration {
        match self.legacy_up {
            Some(_) => self.lifetime.max(LEGACY_UP_LIFETIME),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistration {
    pub secrets: Option<Vec<String>>,
    pub secrets_file: Option<PathBuf>,
    pub lifetime: Option<String>,
    pub allow: Option<Vec<String>>,
    pub legacy_up_secret: Option<String>,
    pub legacy_up_secret_file: Option<PathBuf>,
    pub legacy_up_uri: Option<String>,
    pub require_vapid: Option<bool>,
}

/// Secrets shorter than this are too easy to guess offline from one captured token.
const MIN_SECRET_LEN: usize = 16;

/// Whitespace-separated, the first encrypting new endpoints.
const REGISTRATION_SECRETS_ENV: &str = "XUP_REGISTRATION_SECRETS";

/// The Java `up`'s `registration.sharedSecret`: 32 bytes in standard base64, as its config holds it.
const LEGACY_UP_SECRET_ENV: &str = "XUP_LEGACY_UP_SECRET";

pub(super) fn validate(
    raw: RawRegistration,
    jid: &BareJid,
    public_url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RegistrationConfig, ConfigError> {
    let secrets: Vec<String> = match raw.secrets {
        Some(list) => {
            if raw.secrets_file.is_some() || env(REGISTRATION_SECRETS_ENV).is_some() {
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
            raw.secrets_file.as_deref(),
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
    let lifetime = match &raw.lifetime {
        Some(text) => duration("registration.lifetime", text)?,
        None => DEFAULT_LIFETIME,
    };
    if lifetime < MIN_LIFETIME {
        return Err(invalid(
            "registration.lifetime",
            "must be at least 2d: Conversations renews endpoints that have less than 24 h left",
        ));
    }
    let allow = match raw.allow {
        Some(entries) => entries
            .iter()
            .enumerate()
            .map(|(i, entry)| allow_entry(&format!("registration.allow[{i}]"), entry))
            .collect::<Result<_, _>>()?,
        None => vec![default_allow(jid)],
    };

    let legacy_secret = match (
        &raw.legacy_up_secret,
        &raw.legacy_up_secret_file,
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
    let legacy_up = match (legacy_secret, &raw.legacy_up_uri) {
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
                    origin_of(public_url).to_owned(),
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

    Ok(RegistrationConfig {
        secrets,
        lifetime,
        allow,
        legacy_up,
        require_vapid: raw.require_vapid.unwrap_or(false),
    })
}

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
