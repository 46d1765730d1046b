//! The `<register>` IQ: who may register, what a valid request looks like, and the endpoint it earns.
//!
//! Registration is pure computation: validate, check the access list, issue a token, answer. No
//! state is written, which is what lets xup serve any number of endpoints in constant memory.
//! [`Registrar::issue`] is the part every dialect shares; sum7's own request is read in `sum7.rs`.

use std::{sync::Arc, time::SystemTime};

use base64::{Engine, engine::general_purpose::STANDARD};
use xmpp_parsers::{
    jid::Jid,
    minidom::Element,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};

use crate::{
    config::{AllowEntry, Config},
    limits::{Limits, RetryAfter},
    metrics::{METRICS, RegisterOutcome},
    protocol::{self, Register, Registered},
    token::{self, Dialect, KeyRing},
};

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

    /// Answer the `<register>` payload of an IQ-set from `from`, as of `now`.
    pub fn register(
        &self,
        from: Option<&Jid>,
        payload: Element,
        now: SystemTime,
    ) -> Result<Registered, RegisterError> {
        let request = parse(payload).inspect_err(|_| refused())?;
        let issued = self.issue(
            from,
            Registration {
                dialect: Dialect::Conversations,
                application: request.application,
                instance: request.instance,
            },
            now,
        )?;
        Ok(Registered {
            expiration: humantime::format_rfc3339_millis(issued.expires_at).to_string(),
            endpoint: issued.endpoint,
        })
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
        if endpoint.len() > protocol::MAX_ENDPOINT_LEN {
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

/// A Conversations `<register>`: both attributes, each the base64 of a SHA-256 digest.
fn parse(payload: Element) -> Result<Register, RegisterError> {
    let request = Register::try_from(payload).map_err(|_| {
        RegisterError::BadRequest(
            "<register> needs exactly the attributes application and instance",
        )
    })?;
    if !is_digest(&request.application) {
        return Err(RegisterError::BadRequest(
            "application must be padded base64 of 32 bytes (44 characters)",
        ));
    }
    if !is_digest(&request.instance) {
        return Err(RegisterError::BadRequest(
            "instance must be padded base64 of 32 bytes (44 characters)",
        ));
    }
    Ok(request)
}

/// Padded standard base64 of exactly 32 bytes, as a SHA-256 digest is.
fn is_digest(value: &str) -> bool {
    value.len() == protocol::DIGEST_B64_LEN
        && STANDARD.decode(value).is_ok_and(|bytes| bytes.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "bK3sdmrbtj3bf6XA2S12b8jJUA5TT1dhPEyeoZfVSRM=";
    const INS: &str = "EtD/1XPLmoIph7W73CZ/uyv6FAnhEAXY1GySHX17vAw=";

    fn registrar() -> Registrar {
        let config = Config::parse(
            r#"{
              "component":    { "jid": "up.example.org", "secret": "s" },
              "http":         { "listen": "127.0.0.1:8080", "public_url": "https://up.example.org" },
              "registration": { "secrets": ["0123456789abcdef"] },
              "store":        { "path": "/tmp/x" }
            }"#,
        )
        .expect("config");
        let keys = KeyRing::new(&config.registration.secrets, "up.example.org").expect("keys");
        let limits = Limits::new(&config.limits);
        Registrar::new(&config, Arc::new(keys), Arc::new(limits))
    }

    fn request(application: &str, instance: &str) -> Element {
        Element::from(Register {
            application: application.into(),
            instance: instance.into(),
        })
    }

    fn jid(s: &str) -> Jid {
        s.parse().expect("jid")
    }

    #[test]
    fn a_valid_request_earns_an_endpoint_with_a_z_timestamp() {
        let registered = registrar()
            .register(
                Some(&jid("juliet@example.org/phone")),
                request(APP, INS),
                SystemTime::now(),
            )
            .expect("registered");
        assert!(
            registered.expiration.ends_with('Z'),
            "{}",
            registered.expiration
        );
        assert!(
            registered
                .endpoint
                .starts_with("https://up.example.org/push/v4.local.")
        );
        assert!(registered.endpoint.len() <= protocol::MAX_ENDPOINT_LEN);
    }

    #[test]
    fn malformed_digests_are_bad_requests() {
        let from = jid("juliet@example.org/phone");
        let unpadded = APP.trim_end_matches('=');
        let short = STANDARD.encode([0u8; 31]);
        for (app, ins) in [
            (unpadded, INS),
            (APP, short.as_str()),
            ("x", INS),
            (APP, ""),
        ] {
            let e = registrar()
                .register(Some(&from), request(app, ins), SystemTime::now())
                .expect_err("refused");
            assert!(
                matches!(e, RegisterError::BadRequest(_)),
                "{app} {ins}: {e:?}"
            );
        }
    }

    #[test]
    fn strangers_and_bare_jids_are_forbidden() {
        let r = registrar();
        let now = SystemTime::now();
        let stranger = r.register(Some(&jid("eve@example.net/x")), request(APP, INS), now);
        assert_eq!(stranger, Err(RegisterError::NotAllowed));
        let bare = r.register(Some(&jid("juliet@example.org")), request(APP, INS), now);
        assert_eq!(bare, Err(RegisterError::NotFullJid));
    }

    #[test]
    fn a_huge_resource_is_refused_not_truncated() {
        let from = jid(&format!("juliet@example.org/{}", "r".repeat(900)));
        let e = registrar().register(Some(&from), request(APP, INS), SystemTime::now());
        assert_eq!(e, Err(RegisterError::EndpointTooLong));
    }
}
