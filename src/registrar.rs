//! Who may register, and the endpoint a registration earns, whatever dialect asked.
//!
//! Registration checks the access list and the account's rate limit, issues a token and bounds
//! the URL. The endpoint is stable: while a registration lives, registering it again returns the
//! same URL with a later expiration (UnifiedPush AND_3: a distributor "SHOULD NOT create a new
//! endpoint if a valid registration exists"). A token cannot be made again byte for byte, so the
//! store keeps the one issued, sealed, and until when renewals keep it alive: one row per live
//! registration, which is what this costs the otherwise stateless tokens (DESIGN.md, "Stable
//! endpoints"). Each dialect reads its own request (`dialects/`) and comes here with a
//! [`Registration`]; the ad-hoc commands and the app server ask [`Registrar::admit`] who may act.

use std::{sync::Arc, time::SystemTime};

use serde::{Deserialize, Serialize};

use xmpp_parsers::{
    jid::Jid,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};

use crate::{
    config::{AllowEntry, Config},
    limits::{Limits, RetryAfter},
    metrics::{METRICS, RegisterOutcome},
    store::{RegistrationKey, Series, Store, key_to_hex, micros, registration_key},
    token::{self, Claims, Dialect, KeyRing, Purpose},
    vapid::KeyDigest,
};

/// The disco#info feature that says a `<register>` may name the application server's key
/// (Conversations' `vapid` attribute, sum7's `<vapid>` child). xup's own.
pub const VAPID_FEATURE: &str = "urn:xup:vapid:0";
/// Also advertised when `registration.require_vapid` is on: a `<register>` without a key is
/// refused (`VAPID_REQUIRED`).
pub const VAPID_REQUIRED_FEATURE: &str = "urn:xup:vapid:0#required";

/// UnifiedPush (AND_3.0.0) lets distributors reject endpoint URLs longer than this.
pub const MAX_ENDPOINT_LEN: usize = 1000;

/// Why a `<register>` was refused; each maps to the stanza error a client expects.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegisterError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("registrations are only accepted from a full JID (a connected client)")]
    NotFullJid,
    #[error("this provider does not serve your account")]
    NotAllowed,
    #[error("the endpoint would be longer than 1000 bytes; use a shorter resource")]
    EndpointTooLong,
    #[error("too many registrations from this account; retry in {} s", .0.secs())]
    TooMany(RetryAfter),
    #[error(
        "this account has unregistered {0} endpoints that have not expired yet; this one \
         expires by itself"
    )]
    TooManyUnregistered(usize),
    /// The AND_3 reason's name leads the text, so a distributor can map it to `VAPID_REQUIRED`.
    #[error(
        "VAPID_REQUIRED: this provider only issues endpoints bound to the application server's \
         key; register with its VAPID public key"
    )]
    VapidRequired,
    #[error("internal error while issuing the endpoint")]
    Internal,
}

impl RegisterError {
    /// The stanza error sent back to the client, with our reason as its text.
    pub fn to_stanza_error(&self) -> StanzaError {
        let (kind, condition) = match self {
            RegisterError::BadRequest(_) => (ErrorType::Modify, DefinedCondition::BadRequest),
            RegisterError::NotFullJid | RegisterError::NotAllowed => {
                (ErrorType::Auth, DefinedCondition::Forbidden)
            }
            RegisterError::EndpointTooLong => (ErrorType::Modify, DefinedCondition::NotAcceptable),
            // Not policy-violation, which fits better: clients built on RFC 3920's list of
            // conditions (slixmpp, for one) drop a stanza that carries it.
            RegisterError::VapidRequired => (ErrorType::Modify, DefinedCondition::NotAcceptable),
            RegisterError::TooMany(_) | RegisterError::TooManyUnregistered(_) => {
                (ErrorType::Wait, DefinedCondition::ResourceConstraint)
            }
            RegisterError::Internal => (ErrorType::Wait, DefinedCondition::InternalServerError),
        };
        StanzaError::new(kind, condition, "en", self.to_string())
    }
}

/// Everything a registration needs, built once from the config.
pub struct Registrar {
    keys: Arc<KeyRing>,
    limits: Arc<Limits>,
    store: Arc<Store>,
    allow: Vec<AllowEntry>,
    lifetime: std::time::Duration,
    require_vapid: bool,
    /// `public_url` + `/push/`.
    endpoint_prefix: String,
}

impl Registrar {
    pub fn new(
        config: &Config,
        keys: Arc<KeyRing>,
        limits: Arc<Limits>,
        store: Arc<Store>,
    ) -> Registrar {
        Registrar {
            keys,
            limits,
            store,
            allow: config.registration.allow.clone(),
            lifetime: config.registration.lifetime,
            require_vapid: config.registration.require_vapid,
            endpoint_prefix: format!("{}/push/", config.http.public_url),
        }
    }

    /// What every dialect's registration adds to disco#info.
    pub fn features(&self) -> Vec<&'static str> {
        match self.require_vapid {
            true => vec![VAPID_FEATURE, VAPID_REQUIRED_FEATURE],
            false => vec![VAPID_FEATURE],
        }
    }

    /// Issue an endpoint for `registration` to `from`, whatever dialect asked: the access list,
    /// the rate limit, the token, the length bound. Counted in the metrics either way; a dialect
    /// that refuses a request before this counts it with [`refused`].
    pub async fn issue(
        &self,
        from: Option<&Jid>,
        registration: Registration,
        now: SystemTime,
    ) -> Result<Issued, RegisterError> {
        let result = self.admit_and_issue(from, registration, now).await;
        METRICS.registration(match result {
            Ok(_) => RegisterOutcome::Registered,
            Err(_) => RegisterOutcome::Refused,
        });
        result
    }

    /// Whether `from` may ask for (or give up) endpoints now: a full JID, on the access list,
    /// within its account's rate limit.
    pub fn admit<'a>(&self, from: Option<&'a Jid>) -> Result<&'a Jid, RegisterError> {
        let from = from.ok_or(RegisterError::NotFullJid)?;
        if from.resource().is_none() {
            return Err(RegisterError::NotFullJid);
        }
        if !self.allow.iter().any(|entry| entry.admits(from)) {
            return Err(RegisterError::NotAllowed);
        }
        // After the access list, so accounts that may not register never get a bucket.
        self.limits
            .registrations
            .check(&from.to_bare())
            .map_err(RegisterError::TooMany)?;
        Ok(from)
    }

    async fn admit_and_issue(
        &self,
        from: Option<&Jid>,
        registration: Registration,
        now: SystemTime,
    ) -> Result<Issued, RegisterError> {
        let from = self.admit(from)?;
        if self.require_vapid && registration.vapid.is_none() {
            return Err(RegisterError::VapidRequired);
        }

        let mut claims = token::claims_for(
            from.as_str(),
            &registration.application,
            &registration.instance,
            now,
            self.lifetime,
        );
        claims.dialect = registration.dialect;
        claims.vapid = registration.vapid;
        let key = registration_key(&claims);
        let token = self.keys.issue(&claims).map_err(internal)?;
        let endpoint = format!("{}{token}", self.endpoint_prefix);
        if endpoint.len() > MAX_ENDPOINT_LEN {
            return Err(RegisterError::EndpointTooLong);
        }

        // The endpoint issued before, if it may be handed out again; else this one from now on.
        let earlier = self.store.series(key).await.map_err(internal)?;
        let earlier = earlier.and_then(|series| self.reusable(key, series, &claims, now));
        let fresh = Series {
            account: from.to_bare().to_string(),
            issued_at_us: micros(now),
            renewed_at_us: micros(now),
            expires_at_us: micros(claims.expires_at),
            kept: self.seal(key, &token).map_err(internal)?,
        };
        let keep = earlier.as_ref().map(|(issued_at_us, _)| *issued_at_us);
        let renewed = self.store.renew(key, keep, fresh).await.map_err(internal)?;
        let endpoint = match earlier {
            Some((_, earlier)) if renewed => earlier,
            _ => endpoint,
        };
        Ok(Issued {
            endpoint,
            expires_at: claims.expires_at,
        })
    }

    /// The endpoint `series` keeps for `key`, and when it was issued, if a client asking for
    /// `wanted` may have it again: alive at `now`, not revoked since, sealed by xup for this very
    /// key, issued under the key that issues now (after a rotation, each registration moves to
    /// the new key at its next renewal), and for the same request, bound to the same application
    /// server key (a client that names another gets an endpoint bound to that one).
    fn reusable(
        &self,
        key: RegistrationKey,
        series: Series,
        wanted: &Claims,
        now: SystemTime,
    ) -> Option<(i64, String)> {
        if series.expires_at_us <= micros(now) {
            return None;
        }
        let (claims, token) = self.open_kept(key, &series)?;
        let same = self.keys.is_current(&token)
            && claims.subject == wanted.subject
            && claims.application == wanted.application
            && claims.instance == wanted.instance
            && claims.dialect == wanted.dialect
            && claims.vapid == wanted.vapid
            && claims.renewable;
        if !same || self.store.is_revoked(&claims) {
            return None;
        }
        Some((
            series.issued_at_us,
            format!("{}{token}", self.endpoint_prefix),
        ))
    }

    /// The claims and token of the endpoint `series` keeps for `key`, if xup sealed it for this
    /// very key, under a secret still configured.
    pub fn open_kept(&self, key: RegistrationKey, series: &Series) -> Option<(Claims, String)> {
        let kept = self.keys.unseal(Purpose::Kept, &series.kept).ok()?;
        let kept: Kept = serde_json::from_str(&kept).ok()?;
        if kept.registration != key_to_hex(&key) {
            return None;
        }
        let claims = self.keys.read(&kept.token).ok()?;
        (micros(claims.issued_at) == series.issued_at_us).then_some((claims, kept.token))
    }

    /// `token` as the store keeps it: sealed, so no one who can read the database can push with
    /// it, and bound to `key`, so no row can be moved to another registration.
    fn seal(&self, key: RegistrationKey, token: &str) -> Result<String, token::TokenError> {
        let kept = serde_json::to_vec(&Kept {
            registration: key_to_hex(&key),
            token: token.to_owned(),
        })
        .map_err(|e| token::TokenError::Create(e.to_string()))?;
        self.keys.seal(Purpose::Kept, &kept)
    }
}

/// An issued token as the store keeps it, inside a [`Purpose::Kept`] seal.
#[derive(Serialize, Deserialize)]
struct Kept {
    #[serde(rename = "reg")]
    registration: String,
    #[serde(rename = "tok")]
    token: String,
}

fn internal(e: impl std::fmt::Display) -> RegisterError {
    tracing::error!(error = %e, "cannot issue an endpoint");
    RegisterError::Internal
}

/// What a client asks an endpoint for, in any dialect.
pub struct Registration {
    pub dialect: Dialect,
    pub application: String,
    pub instance: String,
    /// The application server's key the endpoint is to be bound to (RFC 8292 §4).
    pub vapid: Option<KeyDigest>,
}

/// An endpoint, and when it stops working.
#[derive(Debug, PartialEq)]
pub struct Issued {
    pub endpoint: String,
    pub expires_at: SystemTime,
}

/// Count a request that a dialect refused before it came to [`Registrar::issue`].
pub fn refused() {
    METRICS.registration(RegisterOutcome::Refused);
}
