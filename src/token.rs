//! Endpoint tokens: PASETO v4.local tokens that carry a whole registration, so xup keeps no state
//! per live endpoint.
//!
//! A token says who registered (the full JID), for which application and instance, when, and until
//! when. It is encrypted, not just signed, so an application server never learns the user's JID.
//! The implicit assertion is the component's JID: a token is only good at the provider that issued it.
//!
//! Keys form a ring: the first secret encrypts, every secret decrypts, and the token's footer names
//! the key by a short id, so an operator can rotate the secret without killing live endpoints.
//! Keys are derived from the configured secrets with HKDF-SHA256 under a fixed label, so a secret
//! of any length and alphabet becomes a uniform 32-byte key, and the key id (derived under another
//! label) says nothing about the key.
//!
//! The ring also opens, read-only, the endpoints the Java `up` issued before an operator switched
//! to xup (`registration.legacy_up_secret`): PASETO v2.local under that 32-byte key, no footer,
//! claims `sub`, `application`, `instance` and `exp` in epoch milliseconds. xup never issues such
//! a token; clients move to xup's own at their next renewal.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use pasetors::{
    keys::SymmetricKey,
    token::{Local, UntrustedToken},
    version2::{self, V2},
    version4::{LocalToken, V4},
};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// HKDF labels; changing one invalidates every endpoint ever issued.
const KEY_LABEL: &[u8] = b"xup endpoint token key v1";
const KEY_ID_LABEL: &[u8] = b"xup endpoint token key id v1";
/// Changing it changes every secret [`KeyRing::secret_of`] derives.
const SECRET_LABEL: &[u8] = b"xup token secret v1";

/// What a token is for; each has its own implicit assertion, so none opens as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A push endpoint (`/push/{token}`).
    Endpoint,
    /// A node of the XEP-0357 app server (`app_server/`).
    Node,
    /// A notice one instance sends another through PostgreSQL (`cluster/notice.rs`).
    Cluster,
    /// An issued endpoint token as the store keeps it, so a renewal can return it again
    /// (`store/`, the registrations table): no other database role can read the endpoint there.
    Kept,
}

/// Longer strings are not tokens xup made; refuse them before any base64 or crypto work. The
/// largest claims RFC 7622 allows (three 1023-byte JID parts, a resource of `"` escaped to twice
/// its length) make a token of about 6 KB; endpoints are capped far lower, at registration.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// What a token proves once it has been opened.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// The full JID that registered: pushes go there and nowhere else.
    pub subject: String,
    /// For sum7's dialect, the distributor's public token; `instance` is then empty, which no
    /// Conversations registration can be, so the two never share a registration.
    pub application: String,
    pub instance: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// How the client that registered wants its pushes.
    pub dialect: Dialect,
    /// Whether the token outlives `expires_at` while its registration is renewed: the store then
    /// says until when (`Store::renewed_until`). Tokens issued before stable endpoints are not.
    pub renewable: bool,
    /// The digest of the application server's key the endpoint is bound to (RFC 8292 §4), if the
    /// client named one: only a push signed with it is taken.
    pub vapid: Option<[u8; 32]>,
}

/// The two XMPP dialects of UnifiedPush that xup speaks to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// Daniel Gultsch's draft (Conversations and its forks): an IQ `<push>` per message, answered.
    #[default]
    Conversations,
    /// sum7's `unifiedpush.org` (its Go gateway and Linux distributor): a `<message>`, unanswered.
    Sum7,
}

/// The JSON inside the token; times as RFC 3339, as PASETO's registered claims are. `dia` is
/// left out for Conversations, so tokens issued before sum7's dialect existed still open.
#[derive(Serialize, Deserialize)]
struct Payload {
    sub: String,
    app: String,
    ins: String,
    iat: String,
    exp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dia: Option<String>,
    /// Renewable: `exp` is then the end of the first lifetime, not of the endpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ren: bool,
    /// The bound VAPID key's digest, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vap: Option<String>,
}

/// The JSON inside a token the Java `up` issued.
#[derive(Deserialize)]
struct LegacyPayload {
    sub: String,
    application: String,
    instance: String,
    /// Epoch milliseconds.
    exp: u64,
}

/// The label of sum7's dialect in a token.
const SUM7: &str = "sum7";

#[derive(Serialize, Deserialize)]
struct Footer {
    kid: String,
}

/// Why a token was not accepted. Every one of these is a dead endpoint to the outside (404); the
/// distinction is for logs and tests.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("not a token issued by this provider")]
    Malformed,
    #[error("token names a key that is no longer configured")]
    UnknownKey,
    #[error("token failed authentication")]
    Forged,
    #[error("token expired")]
    Expired,
    /// A renewable token past its first lifetime: alive only if its registration was renewed,
    /// which only the store knows.
    #[error("token past its first lifetime")]
    Lapsed(Box<Claims>),
    #[error("token could not be created: {0}")]
    Create(String),
}

struct Key {
    id: String,
    key: SymmetricKey<V4>,
}

/// The configured keys. Deliberately not `Debug`: it holds secrets.
pub struct KeyRing {
    keys: Vec<Key>,
    /// The component JID, bound into every token as PASETO's implicit assertion.
    audience: String,
    /// The Java `up`'s key, when its endpoints are still honoured.
    legacy: Option<SymmetricKey<V2>>,
}

impl KeyRing {
    /// The ids of the keys, as tokens' footers name them; the first issues new tokens. An id is
    /// derived from its secret and tells nothing about it.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|key| key.id.as_str()).collect()
    }

    /// Derive one key per secret; the first one issues new tokens. `secrets` must not be empty.
    pub fn new(secrets: &[String], audience: &str) -> Result<KeyRing, TokenError> {
        if secrets.is_empty() {
            return Err(TokenError::Create("no secret configured".into()));
        }
        let keys = secrets
            .iter()
            .map(|secret| {
                let hkdf = Hkdf::<Sha256>::new(None, secret.as_bytes());
                let mut key = [0u8; 32];
                let mut id = [0u8; 6];
                hkdf.expand(KEY_LABEL, &mut key)
                    .and_then(|()| hkdf.expand(KEY_ID_LABEL, &mut id))
                    .map_err(|e| TokenError::Create(e.to_string()))?;
                let key =
                    SymmetricKey::from(&key).map_err(|e| TokenError::Create(e.to_string()))?;
                Ok(Key {
                    id: URL_SAFE_NO_PAD.encode(id),
                    key,
                })
            })
            .collect::<Result<_, TokenError>>()?;
        Ok(KeyRing {
            keys,
            audience: audience.to_owned(),
            legacy: None,
        })
    }

    /// Also open the tokens the Java `up` issued with `secret` (its `registration.sharedSecret`,
    /// decoded: 32 bytes).
    pub fn with_legacy_up_secret(mut self, secret: &[u8]) -> Result<KeyRing, TokenError> {
        let key =
            SymmetricKey::<V2>::from(secret).map_err(|e| TokenError::Create(e.to_string()))?;
        self.legacy = Some(key);
        Ok(self)
    }

    /// Encrypt `claims` under the first key.
    pub fn issue(&self, claims: &Claims) -> Result<String, TokenError> {
        let payload = serde_json::to_vec(&Payload {
            sub: claims.subject.clone(),
            app: claims.application.clone(),
            ins: claims.instance.clone(),
            iat: humantime::format_rfc3339_micros(claims.issued_at).to_string(),
            exp: humantime::format_rfc3339_millis(claims.expires_at).to_string(),
            dia: match claims.dialect {
                Dialect::Conversations => None,
                Dialect::Sum7 => Some(SUM7.to_owned()),
            },
            ren: claims.renewable,
            vap: claims.vapid.map(|digest| URL_SAFE_NO_PAD.encode(digest)),
        })
        .map_err(|e| TokenError::Create(e.to_string()))?;
        self.seal(Purpose::Endpoint, &payload)
    }

    /// Encrypt `payload` under the first key, bound to `purpose`: a token sealed for one purpose
    /// never opens for another.
    pub fn seal(&self, purpose: Purpose, payload: &[u8]) -> Result<String, TokenError> {
        let key = &self.keys[0];
        let footer = serde_json::to_vec(&Footer {
            kid: key.id.clone(),
        })
        .map_err(|e| TokenError::Create(e.to_string()))?;
        LocalToken::encrypt(
            &key.key,
            payload,
            Some(&footer),
            Some(&self.assertion(purpose)),
        )
        .map_err(|e| TokenError::Create(e.to_string()))
    }

    /// The payload of a token [`KeyRing::seal`] made for `purpose`, authenticated.
    pub fn unseal(&self, purpose: Purpose, token: &str) -> Result<String, TokenError> {
        if token.len() > MAX_TOKEN_LEN || !token.starts_with("v4.local.") {
            return Err(TokenError::Malformed);
        }
        let untrusted =
            UntrustedToken::<Local, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
        let key = self.key_of(&untrusted)?;
        let trusted =
            LocalToken::decrypt(&key.key, &untrusted, None, Some(&self.assertion(purpose)))
                .map_err(|_| TokenError::Forged)?;
        Ok(trusted.payload().to_owned())
    }

    /// A secret only xup can compute from `token`, under the key that sealed it: so a token and
    /// its secret can be handed out together without storing either.
    pub fn secret_of(&self, token: &str) -> Result<String, TokenError> {
        let untrusted =
            UntrustedToken::<Local, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
        let key = self.key_of(&untrusted)?;
        let hkdf = Hkdf::<Sha256>::new(Some(token.as_bytes()), key.key.as_bytes());
        let mut secret = [0u8; 24];
        hkdf.expand(SECRET_LABEL, &mut secret)
            .map_err(|e| TokenError::Create(e.to_string()))?;
        Ok(URL_SAFE_NO_PAD.encode(secret))
    }

    /// Whether `token` was sealed under the key that issues tokens now: a renewal hands out the
    /// same endpoint only then, so that a rotated secret can be removed one lifetime later.
    pub fn is_current(&self, token: &str) -> bool {
        UntrustedToken::<Local, V4>::try_from(token)
            .ok()
            .and_then(|untrusted| self.key_of(&untrusted).ok())
            .is_some_and(|key| key.id == self.keys[0].id)
    }

    /// The key a token's footer names.
    fn key_of(&self, untrusted: &UntrustedToken<Local, V4>) -> Result<&Key, TokenError> {
        let footer: Footer = serde_json::from_slice(untrusted.untrusted_footer())
            .map_err(|_| TokenError::Malformed)?;
        self.keys
            .iter()
            .find(|k| k.id == footer.kid)
            .ok_or(TokenError::UnknownKey)
    }

    /// PASETO's implicit assertion: the component's JID, and for anything but an endpoint what
    /// the token is for.
    fn assertion(&self, purpose: Purpose) -> Vec<u8> {
        match purpose {
            Purpose::Endpoint => self.audience.as_bytes().to_vec(),
            Purpose::Node => format!("{} app-server node", self.audience).into_bytes(),
            Purpose::Cluster => format!("{} cluster notice", self.audience).into_bytes(),
            Purpose::Kept => format!("{} kept endpoint", self.audience).into_bytes(),
        }
    }

    /// Decrypt and check a token as of `now`. Costs one decryption at most, and nothing at all for
    /// strings that cannot be tokens.
    pub fn open(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        alive(self.authenticate(token)?, now)
    }

    /// The claims of any token this ring opens (its own, or the Java `up`'s), whether or not
    /// they have expired.
    fn authenticate(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        if token.starts_with("v4.local.") {
            self.read(token)
        } else if token.starts_with("v2.local.")
            && let Some(key) = &self.legacy
        {
            open_legacy(key, token)
        } else {
            Err(TokenError::Malformed)
        }
    }

    /// The claims of a token xup issued, authenticated, whether or not it has expired: for
    /// listing a registration the store keeps.
    pub fn read(&self, token: &str) -> Result<Claims, TokenError> {
        let payload = self.unseal(Purpose::Endpoint, token)?;
        // Authenticated from here on: a payload that does not parse is our own bug, not an attack.
        let payload: Payload = serde_json::from_str(&payload).map_err(|_| TokenError::Malformed)?;
        let time = |s: &str| humantime::parse_rfc3339(s).map_err(|_| TokenError::Malformed);
        Ok(Claims {
            issued_at: time(&payload.iat)?,
            expires_at: time(&payload.exp)?,
            subject: payload.sub,
            application: payload.app,
            instance: payload.ins,
            dialect: match payload.dia.as_deref() {
                None => Dialect::Conversations,
                Some(SUM7) => Dialect::Sum7,
                Some(_) => return Err(TokenError::Malformed),
            },
            renewable: payload.ren,
            vapid: match payload.vap {
                Some(digest) => Some(
                    URL_SAFE_NO_PAD
                        .decode(digest)
                        .ok()
                        .and_then(|digest| digest.try_into().ok())
                        .ok_or(TokenError::Malformed)?,
                ),
                None => None,
            },
        })
    }
}

/// `claims` if they are alive at `now`; else why not.
fn alive(claims: Claims, now: SystemTime) -> Result<Claims, TokenError> {
    if claims.expires_at > now {
        return Ok(claims);
    }
    Err(match claims.renewable {
        true => TokenError::Lapsed(Box::new(claims)),
        false => TokenError::Expired,
    })
}

/// What the endpoint tokens pushed to lately opened to, so that a push to an endpoint pushed to
/// before costs a lookup, not a decryption (`docs/BENCHMARKS.md`: opening a token was the largest
/// cost of a push that is xup's alone). Only tokens that authenticated are kept, by the whole
/// token, so nothing forged or altered can be found here; expiry is checked at every push as
/// before. Bounded: two generations of [`OPENED_REMEMBERED`] tokens each, the older dropped whole
/// when the newer fills, so an endpoint pushed to lately is always there.
#[derive(Default)]
pub struct Opened {
    generations: Mutex<(HashMap<String, Claims>, HashMap<String, Claims>)>,
}

/// Tokens per generation: a token and its claims take under a kilobyte, so both generations
/// together stay under about 8 MiB.
pub const OPENED_REMEMBERED: usize = 4096;

impl Opened {
    /// [`KeyRing::open`], remembering what `keys` opened.
    pub fn open(&self, keys: &KeyRing, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if let Some(claims) = self.remembered(token) {
            return alive(claims, now);
        }
        let claims = keys.authenticate(token)?;
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let (current, previous) = &mut *generations;
        if current.len() >= OPENED_REMEMBERED {
            *previous = std::mem::take(current);
        }
        current.insert(token.to_owned(), claims.clone());
        drop(generations);
        alive(claims, now)
    }

    fn remembered(&self, token: &str) -> Option<Claims> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let (current, previous) = &mut *generations;
        if let Some(claims) = current.get(token) {
            return Some(claims.clone());
        }
        // Lately pushed to again: into the current generation, so it outlives the previous one.
        let (token, claims) = previous.remove_entry(token)?;
        if current.len() < OPENED_REMEMBERED {
            current.insert(token, claims.clone());
        }
        Some(claims)
    }
}

/// Open a token the Java `up` issued. It says when it expires but not when it was issued; it is
/// taken as issued at the epoch, so any revocation of its registration kills it, which is right:
/// no new one can ever be issued.
fn open_legacy(key: &SymmetricKey<V2>, token: &str) -> Result<Claims, TokenError> {
    let untrusted =
        UntrustedToken::<Local, V2>::try_from(token).map_err(|_| TokenError::Malformed)?;
    let trusted =
        version2::LocalToken::decrypt(key, &untrusted, None).map_err(|_| TokenError::Forged)?;
    let payload: LegacyPayload =
        serde_json::from_str(trusted.payload()).map_err(|_| TokenError::Malformed)?;
    Ok(Claims {
        subject: payload.sub,
        application: payload.application,
        instance: payload.instance,
        issued_at: SystemTime::UNIX_EPOCH,
        expires_at: SystemTime::UNIX_EPOCH + Duration::from_millis(payload.exp),
        dialect: Dialect::Conversations,
        renewable: false,
        vapid: None,
    })
}

/// Claims for a registration made `now` that lives `lifetime` unless renewed.
pub fn claims_for(
    subject: &str,
    application: &str,
    instance: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Claims {
    Claims {
        subject: subject.to_owned(),
        application: application.to_owned(),
        instance: instance.to_owned(),
        issued_at: now,
        expires_at: now + lifetime,
        dialect: Dialect::Conversations,
        renewable: true,
        vapid: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "bK3sdmrbtj3bf6XA2S12b8jJUA5TT1dhPEyeoZfVSRM=";
    const INS: &str = "EtD/1XPLmoIph7W73CZ/uyv6FAnhEAXY1GySHX17vAw=";

    fn ring(secrets: &[&str]) -> KeyRing {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        KeyRing::new(&secrets, "up.example.org").expect("ring")
    }

    fn sample(now: SystemTime) -> Claims {
        claims_for(
            "juliet@example.org/Conversations.r4nD",
            APP,
            INS,
            now,
            Duration::from_secs(7 * 86400),
        )
    }

    #[test]
    fn a_token_opens_to_its_claims() {
        let now = SystemTime::now();
        let keys = ring(&["first secret 0123"]);
        let token = keys.issue(&sample(now)).expect("issued");
        let claims = keys.open(&token, now).expect("opens");
        assert_eq!(claims.subject, "juliet@example.org/Conversations.r4nD");
        assert_eq!(claims.application, APP);
        let micros = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after epoch")
                .as_micros()
        };
        assert_eq!(micros(claims.issued_at), micros(now));
    }

    #[test]
    fn a_token_does_not_leak_the_jid() {
        let token = ring(&["first secret 0123"])
            .issue(&sample(SystemTime::now()))
            .expect("issued");
        assert!(!token.contains("juliet"));
    }

    #[test]
    fn an_expired_token_is_refused_and_a_renewable_one_lapses() {
        let now = SystemTime::now();
        let keys = ring(&["first secret 0123"]);
        let later = now + Duration::from_secs(7 * 86400);
        let mut claims = sample(now);
        claims.renewable = false;
        let token = keys.issue(&claims).expect("issued");
        assert_eq!(keys.open(&token, later), Err(TokenError::Expired));
        let renewable = keys.issue(&sample(now)).expect("issued");
        assert!(matches!(
            keys.open(&renewable, later),
            Err(TokenError::Lapsed(claims)) if claims.renewable && claims.issued_at <= now
        ));
    }

    #[test]
    fn a_flipped_character_is_refused() {
        let now = SystemTime::now();
        let keys = ring(&["first secret 0123"]);
        let token = keys.issue(&sample(now)).expect("issued");
        let mut bytes = token.into_bytes();
        bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert_eq!(keys.open(&tampered, now), Err(TokenError::Forged));
    }

    #[test]
    fn another_providers_token_is_refused() {
        let now = SystemTime::now();
        let secrets = vec!["first secret 0123".to_string()];
        let ours = KeyRing::new(&secrets, "up.example.org").expect("ring");
        let theirs = KeyRing::new(&secrets, "up.example.net").expect("ring");
        let token = theirs.issue(&sample(now)).expect("issued");
        assert_eq!(ours.open(&token, now), Err(TokenError::Forged));
    }

    #[test]
    fn rotation_keeps_old_tokens_until_the_old_secret_goes() {
        let now = SystemTime::now();
        let old = ring(&["old secret 012345"]);
        let token = old.issue(&sample(now)).expect("issued");
        let rotated = ring(&["new secret 012345", "old secret 012345"]);
        assert!(rotated.open(&token, now).is_ok());
        let fresh = rotated.issue(&sample(now)).expect("issued");
        assert_eq!(old.open(&fresh, now), Err(TokenError::UnknownKey));
        let retired = ring(&["new secret 012345"]);
        assert_eq!(retired.open(&token, now), Err(TokenError::UnknownKey));
    }

    #[test]
    fn garbage_is_malformed() {
        let keys = ring(&["first secret 0123"]);
        for garbage in [
            "",
            "v4.local.",
            "v4.local.!!!",
            "v2.local.AAAA",
            "x".repeat(5000).as_str(),
        ] {
            assert_eq!(
                keys.open(garbage, SystemTime::now()),
                Err(TokenError::Malformed),
                "{garbage:.20}"
            );
        }
    }

    #[test]
    fn a_sum7_token_says_so_and_an_older_token_is_conversations() {
        let now = SystemTime::now();
        let keys = ring(&["first secret 0123"]);
        let mut claims = sample(now);
        claims.dialect = Dialect::Sum7;
        let token = keys.issue(&claims).expect("issued");
        assert_eq!(
            keys.open(&token, now).expect("opens").dialect,
            Dialect::Sum7
        );
        let plain = keys.issue(&sample(now)).expect("issued");
        assert_eq!(
            keys.open(&plain, now).expect("opens").dialect,
            Dialect::Conversations
        );
    }

    #[test]
    fn an_opened_token_is_remembered_and_still_expires() {
        let now = SystemTime::now();
        let keys = ring(&["first secret 0123"]);
        let opened = Opened::default();
        let token = keys.issue(&sample(now)).expect("issued");
        let first = opened.open(&keys, &token, now).expect("opens");
        // Another ring cannot open it: a second open that succeeds came from memory.
        let stranger = ring(&["another secret 0123"]);
        assert_eq!(opened.open(&stranger, &token, now), Ok(first));
        let later = now + Duration::from_secs(7 * 86400);
        assert!(matches!(
            opened.open(&stranger, &token, later),
            Err(TokenError::Lapsed(_))
        ));
        // What does not open is not remembered.
        assert_eq!(
            opened.open(&keys, "v4.local.AAAA", now),
            Err(TokenError::Malformed)
        );
        let mut tampered = token.clone().into_bytes();
        tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        for _ in 0..2 {
            assert_eq!(opened.open(&keys, &tampered, now), Err(TokenError::Forged));
        }
    }

    #[test]
    fn remembered_tokens_are_bounded_and_the_latest_kept() {
        let now = SystemTime::now();
        let keys = ring(&["first secret 0123"]);
        let opened = Opened::default();
        let first = keys.issue(&sample(now)).expect("issued");
        opened.open(&keys, &first, now).expect("opens");
        for _ in 0..2 * OPENED_REMEMBERED {
            let token = keys.issue(&sample(now)).expect("issued");
            opened.open(&keys, &token, now).expect("opens");
        }
        let generations = opened.generations.lock().expect("lock");
        assert!(generations.0.len() + generations.1.len() <= 2 * OPENED_REMEMBERED);
        assert!(!generations.0.contains_key(&first) && !generations.1.contains_key(&first));
    }

    /// A token as the Java `up` makes it: v2.local, no footer, `exp` in epoch milliseconds.
    fn up_token(secret: &[u8; 32], exp: SystemTime) -> String {
        let key = SymmetricKey::<V2>::from(secret).expect("key");
        let millis = exp
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch")
            .as_millis() as u64;
        let claims = serde_json::json!({
            "sub": "juliet@example.org/Conversations.r4nD",
            "exp": millis,
            "application": APP,
            "instance": INS,
        });
        version2::LocalToken::encrypt(&key, claims.to_string().as_bytes(), None).expect("token")
    }

    #[test]
    fn the_java_ups_tokens_open_only_with_its_secret_and_until_they_expire() {
        let now = SystemTime::now();
        let secret = [7u8; 32];
        let token = up_token(&secret, now + Duration::from_secs(86400));
        let plain = ring(&["first secret 0123"]);
        assert_eq!(plain.open(&token, now), Err(TokenError::Malformed));
        let keys = ring(&["first secret 0123"])
            .with_legacy_up_secret(&secret)
            .expect("ring");
        let claims = keys.open(&token, now).expect("opens");
        assert_eq!(claims.subject, "juliet@example.org/Conversations.r4nD");
        assert_eq!(
            (claims.application.as_str(), claims.instance.as_str()),
            (APP, INS)
        );
        assert_eq!(claims.dialect, Dialect::Conversations);
        let expired = up_token(&secret, now - Duration::from_secs(1));
        assert_eq!(keys.open(&expired, now), Err(TokenError::Expired));
        let other = up_token(&[8u8; 32], now + Duration::from_secs(86400));
        assert_eq!(keys.open(&other, now), Err(TokenError::Forged));
    }
}
