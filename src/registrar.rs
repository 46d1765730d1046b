//! Who may register, and the endpoint a registration earns, whatever dialect asked.
//!
//! Registration is pure computation: check the access list and the account's rate limit, issue a
//! token, bound the URL. No state is written, which is what lets xup serve any number of endpoints
//! in constant memory. Each dialect reads its own request (`dialects/`) and comes here with a
//! [`Registration`]; the ad-hoc commands and the app server ask [`Registrar::admit`] who may act.

use std::{sync::Arc, time::SystemTime};

use xmpp_parsers::{
    jid::Jid,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};

use crate::{
    config::{AllowEntry, Config},
    limits::{Limits, RetryAfter},
    metrics::{METRICS, RegisterOutcome},
    token::{self, Dialect, KeyRing},
};

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
    allow: Vec<AllowEntry>,
    lifetime: std::time::Duration,
    /// `public_url` + `/push/`.
    endpoint_prefix: String,
}

impl Registrar {
    pub fn new(config: &Config, keys: Arc<KeyRing>, limits: Arc<Limits>) -> Registrar {
        Registrar {
            keys,
            limits,
            allow: config.registration.allow.clone(),
            lifetime: config.registration.lifetime,
            endpoint_prefix: format!("{}/push/", config.http.public_url),
        }
    }

    /// Issue an endpoint for `registration` to `from`, whatever dialect asked: the access list,
    /// the rate limit, the token, the length bound. Counted in the metrics either way; a dialect
    /// that refuses a request before this counts it with [`refused`].
    pub fn issue(
        &self,
        from: Option<&Jid>,
        registration: Registration,
        now: SystemTime,
    ) -> Result<Issued, RegisterError> {
        let result = self.admit_and_issue(from, registration, now);
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

    fn admit_and_issue(
        &self,
        from: Option<&Jid>,
        registration: Registration,
        now: SystemTime,
    ) -> Result<Issued, RegisterError> {
        let from = self.admit(from)?;

        let mut claims = token::claims_for(
            from.as_str(),
            &registration.application,
            &registration.instance,
            now,
            self.lifetime,
        );
        claims.dialect = registration.dialect;
        let token = self.keys.issue(&claims).map_err(|e| {
            tracing::error!(error = %e, "cannot issue endpoint token");
            RegisterError::Internal
        })?;
        let endpoint = format!("{}{token}", self.endpoint_prefix);
        if endpoint.len() > MAX_ENDPOINT_LEN {
            return Err(RegisterError::EndpointTooLong);
        }
        Ok(Issued {
            endpoint,
            expires_at: claims.expires_at,
        })
    }
}

/// What a client asks an endpoint for, in any dialect.
pub struct Registration {
    pub dialect: Dialect,
    pub application: String,
    pub instance: String,
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
