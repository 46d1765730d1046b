//! The `<register>` IQ of Conversations' dialect: what a valid request looks like, and the
//! `<registered>` it earns (the endpoint and when it expires).

#[cfg(test)]
use std::time::Duration;
use std::{sync::Arc, time::SystemTime};

use base64::{Engine, engine::general_purpose::STANDARD};
use xmpp_parsers::{jid::Jid, minidom::Element};

use crate::{
    dialects::conversations::wire::{DIGEST_B64_LEN, NS, Register, Registered},
    registrar::{self, RegisterError, Registrar, Registration},
    token::Dialect,
    vapid::{self, KeyDigest},
    xmpp::{Events, Handled, Handler, LinkEvent, presence::URGENCY_NS, router::unsupported},
};

/// Answers `<register>`.
pub struct Registry {
    pub registrar: Arc<Registrar>,
    /// A client that registers is there: the deliverer hears so.
    pub events: Events,
}

impl Handler for Registry {
    /// The draft's namespace, xup's minimum-urgency presence (`xmpp/presence.rs`), which only
    /// this dialect's pushes follow, and what registration adds (VAPID).
    fn features(&self) -> Vec<&'static str> {
        let mut features = vec![NS, URGENCY_NS];
        features.extend(self.registrar.features());
        features
    }

    fn set(&self, from: Option<Jid>, payload: Element) -> Handled {
        if !payload.is("register", NS) {
            return Handled::Now(Err(unsupported().into()));
        }
        let (registrar, events) = (self.registrar.clone(), self.events.clone());
        Handled::Later(Box::pin(async move {
            match register(&registrar, from.as_ref(), payload, SystemTime::now()).await {
                Ok(registered) => {
                    if let Some(from) = from {
                        events.tell(LinkEvent::Alive(from));
                    }
                    Ok(Some(registered.into()))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "register refused");
                    Err(e.to_stanza_error().into())
                }
            }
        }))
    }
}

/// Answer the `<register>` payload of an IQ-set from `from`, as of `now`.
pub async fn register(
    registrar: &Registrar,
    from: Option<&Jid>,
    payload: Element,
    now: SystemTime,
) -> Result<Registered, RegisterError> {
    let request = parse(payload).inspect_err(|_| registrar::refused())?;
    let issued = registrar
        .issue(
            from,
            Registration {
                dialect: Dialect::Conversations,
                application: request.application,
                instance: request.instance,
                vapid: request.vapid,
            },
            now,
        )
        .await?;
    Ok(Registered {
        expiration: humantime::format_rfc3339_millis(issued.expires_at).to_string(),
        endpoint: issued.endpoint,
    })
}

/// What a Conversations `<register>` asks for.
struct Request {
    application: String,
    instance: String,
    vapid: Option<KeyDigest>,
}

/// A Conversations `<register>`: both attributes, each the base64 of a SHA-256 digest, and
/// maybe the application server's key.
fn parse(payload: Element) -> Result<Request, RegisterError> {
    let request = Register::try_from(payload).map_err(|_| {
        RegisterError::BadRequest(
            "<register> needs the attributes application and instance, and may have vapid",
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
    let vapid = match &request.vapid {
        Some(key) => Some(vapid::key_digest(key).ok_or(RegisterError::BadRequest(
            "vapid must be the application server's P-256 public key, base64url of its \
             65-byte uncompressed point (87 characters)",
        ))?),
        None => None,
    };
    Ok(Request {
        application: request.application,
        instance: request.instance,
        vapid,
    })
}

/// Padded standard base64 of exactly 32 bytes, as a SHA-256 digest is.
fn is_digest(value: &str) -> bool {
    value.len() == DIGEST_B64_LEN && STANDARD.decode(value).is_ok_and(|bytes| bytes.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        limits::Limits,
        registrar::MAX_ENDPOINT_LEN,
        store::{Store, sqlite::Sqlite},
        token::KeyRing,
    };

    const APP: &str = "bK3sdmrbtj3bf6XA2S12b8jJUA5TT1dhPEyeoZfVSRM=";
    const INS: &str = "EtD/1XPLmoIph7W73CZ/uyv6FAnhEAXY1GySHX17vAw=";

    /// A registrar on a store of its own, which lives as long as the directory returned.
    async fn registrar() -> (Registrar, tempfile::TempDir) {
        let (registrar, _, _, dir) = registrar_and_store().await;
        (registrar, dir)
    }

    async fn registrar_and_store() -> (Registrar, Arc<Store>, Arc<KeyRing>, tempfile::TempDir) {
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
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Sqlite::open(dir.path()).expect("sqlite");
        let store = Arc::new(Store::new(Arc::new(engine)).await.expect("store"));
        let keys = Arc::new(keys);
        let registrar = Registrar::new(&config, keys.clone(), Arc::new(limits), store.clone());
        (registrar, store, keys, dir)
    }

    fn request(application: &str, instance: &str) -> Element {
        Element::from(Register {
            application: application.into(),
            instance: instance.into(),
            vapid: None,
        })
    }

    fn jid(s: &str) -> Jid {
        s.parse().expect("jid")
    }

    #[tokio::test]
    async fn a_valid_request_earns_an_endpoint_with_a_z_timestamp() {
        let registered = register(
            &registrar().await.0,
            Some(&jid("juliet@example.org/phone")),
            request(APP, INS),
            SystemTime::now(),
        )
        .await
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
        assert!(registered.endpoint.len() <= MAX_ENDPOINT_LEN);
    }

    #[tokio::test]
    async fn malformed_digests_are_bad_requests() {
        let (registrar, _dir) = registrar().await;
        let from = jid("juliet@example.org/phone");
        let unpadded = APP.trim_end_matches('=');
        let short = STANDARD.encode([0u8; 31]);
        for (app, ins) in [
            (unpadded, INS),
            (APP, short.as_str()),
            ("x", INS),
            (APP, ""),
        ] {
            let e = register(
                &registrar,
                Some(&from),
                request(app, ins),
                SystemTime::now(),
            )
            .await
            .expect_err("refused");
            assert!(
                matches!(e, RegisterError::BadRequest(_)),
                "{app} {ins}: {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn strangers_and_bare_jids_are_forbidden() {
        let (r, _dir) = registrar().await;
        let now = SystemTime::now();
        let stranger = register(&r, Some(&jid("eve@example.net/x")), request(APP, INS), now).await;
        assert_eq!(stranger, Err(RegisterError::NotAllowed));
        let bare = register(&r, Some(&jid("juliet@example.org")), request(APP, INS), now).await;
        assert_eq!(bare, Err(RegisterError::NotFullJid));
    }

    #[tokio::test]
    async fn a_huge_resource_is_refused_not_truncated() {
        let from = jid(&format!("juliet@example.org/{}", "r".repeat(900)));
        let e = register(
            &registrar().await.0,
            Some(&from),
            request(APP, INS),
            SystemTime::now(),
        )
        .await;
        assert_eq!(e, Err(RegisterError::EndpointTooLong));
    }

    #[tokio::test]
    async fn a_renewal_keeps_the_endpoint_alive_past_its_first_lifetime_and_no_longer() {
        const DAY: Duration = Duration::from_secs(86400);
        let (registrar, store, keys, _dir) = registrar_and_store().await;
        let from = jid("juliet@example.org/phone");
        let t0 = SystemTime::now();
        let at = |at: SystemTime| register(&registrar, Some(&from), request(APP, INS), at);
        let first = at(t0).await.expect("registered");
        let renewed = at(t0 + DAY).await.expect("renewed");
        assert_eq!(renewed.endpoint, first.endpoint, "the same endpoint");
        assert!(
            renewed.expiration > first.expiration,
            "{renewed:?} {first:?}"
        );

        let token = first.endpoint.rsplit('/').next().expect("token");
        let lifetime = Duration::from_secs(7 * 86400);
        let lapsed = match keys.open(token, t0 + lifetime + DAY / 2) {
            Err(crate::token::TokenError::Lapsed(claims)) => *claims,
            other => panic!("{other:?}"),
        };
        let alive = |at| store.renewed_until(&lapsed, at);
        assert_eq!(
            alive(t0 + lifetime + DAY / 2).await.expect("read"),
            Some(t0 + DAY + lifetime).map(|t| crate::store::from_micros(crate::store::micros(t)))
        );
        assert_eq!(alive(t0 + DAY + lifetime).await.expect("read"), None);

        let other = register(&registrar, Some(&from), request(APP, APP), t0 + DAY)
            .await
            .expect("registered");
        assert_ne!(other.endpoint, first.endpoint, "another instance");
        let later = at(t0 + 2 * DAY + lifetime).await.expect("registered");
        assert_ne!(later.endpoint, first.endpoint, "expired without renewal");
        store
            .revoke(&lapsed, t0 + 2 * DAY + lifetime, lifetime)
            .await
            .expect("revoke");
        let revoked = at(t0 + 3 * DAY + lifetime).await.expect("registered");
        assert_ne!(revoked.endpoint, later.endpoint, "revoked");
    }
}
