//! `list-unifiedpush-registrations`: the caller's account's live registrations, so a user can see
//! which apps can reach them, since when, and what waits for each; and unregister one that should
//! not (a field `unregister` naming its id, in the same one step as every command here).
//!
//! What is listed comes from the store's registrations (`registrar.rs`): those made since stable
//! endpoints, that live, and that were not revoked. When each was last pushed, and by which
//! application server (its VAPID contact), comes from the delivery trace, so it reaches back as
//! far as the trace does and no further than xup's start.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use xmpp_parsers::{
    data_forms::{DataForm, DataFormType, Field, FieldType},
    jid::Jid,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};

use crate::{
    commands::{AdHoc, bad_request, own_account},
    registrar::Registrar,
    store::{RegistrationKey, Series, Store, StoreError, from_micros, held::HeldMessages},
    token::{Claims, Dialect},
    trace::{Traces, app_hint},
};

/// The command's node.
pub const NODE: &str = "list-unifiedpush-registrations";

/// Registrations listed at most: more than any phone has apps.
const MAX_LISTED: usize = 100;

/// How many hex digits of a registration's key name it in the list: enough to pick one out.
const ID_LEN: usize = 16;

pub struct Registrations {
    pub store: Arc<Store>,
    pub registrar: Arc<Registrar>,
    pub held: Arc<HeldMessages>,
    pub traces: Arc<Traces>,
    /// How long a revocation is kept: as long as the longest token it kills lives.
    pub revocations_live: Duration,
}

/// One live registration of the caller's account.
struct Listed {
    key: RegistrationKey,
    id: String,
    claims: Claims,
    series: Series,
}

impl Registrations {
    /// The account's live registrations, as far as [`MAX_LISTED`].
    async fn listed(&self, account: &str, now: SystemTime) -> Result<Vec<Listed>, StoreError> {
        let rows = self.store.series_of(account, now, MAX_LISTED).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, series)| {
                let (claims, _) = self.registrar.open_kept(key, &series)?;
                (!self.store.is_revoked(&claims)).then(|| Listed {
                    key,
                    id: id_of(&key),
                    claims,
                    series,
                })
            })
            .collect())
    }

    /// One line a user can read about `listed`.
    async fn line(&self, account: &str, listed: &Listed, now: SystemTime) -> String {
        let Listed {
            key,
            id,
            claims,
            series,
        } = listed;
        let resource = claims.subject.split_once('/').map_or("", |(_, r)| r);
        let app = match claims.dialect {
            Dialect::Conversations => format!(
                "app {} instance {}",
                app_hint(&claims.application),
                app_hint(&claims.instance)
            ),
            Dialect::Sum7 => format!("app {} (unifiedpush.org)", app_hint(&claims.application)),
        };
        let time = |us: i64| humantime::format_rfc3339_seconds(from_micros(us)).to_string();
        let pushed = match self
            .traces
            .last_push(account, resource, &claims.application)
        {
            Some((at, Some(sender))) => format!(
                "last pushed {} by {sender}",
                humantime::format_rfc3339_seconds(at)
            ),
            Some((at, None)) => format!("last pushed {}", humantime::format_rfc3339_seconds(at)),
            None => "not pushed lately".into(),
        };
        let held = match self.held.waiting_in(*key, now).await {
            Ok(waiting) => format!("{} held", waiting.len()),
            Err(_) => "held messages unreadable now".into(),
        };
        let bound = match claims.vapid {
            Some(_) => ", only for its application server's key",
            None => "",
        };
        format!(
            "{id}: {app} on {resource}: registered {}, renewed {}, lives until {}; {pushed}; \
             {held}{bound}",
            time(series.issued_at_us),
            time(series.renewed_at_us),
            time(series.expires_at_us),
        )
    }
}

/// How the list names a registration: the start of its key, in hex.
fn id_of(key: &RegistrationKey) -> String {
    crate::store::key_to_hex(key)[..ID_LEN].to_owned()
}

#[async_trait::async_trait]
impl AdHoc for Registrations {
    fn node(&self) -> &'static str {
        NODE
    }

    fn name(&self) -> &'static str {
        "List your apps' push registrations, or unregister one"
    }

    /// The caller's own account only: a submitted `account` naming another is `forbidden`. A
    /// submitted `unregister` names registrations (by the ids listed) to revoke first.
    async fn run(&self, from: &Jid, form: &DataForm) -> Result<DataForm, StanzaError> {
        let account = own_account(
            from,
            form,
            "you may only list your own account's registrations",
        )?;
        let internal = |e: StoreError| {
            tracing::error!(error = %e, "cannot list an account's registrations");
            StanzaError::new(
                ErrorType::Wait,
                DefinedCondition::InternalServerError,
                "en",
                "cannot read the registrations now; try again",
            )
        };
        let now = SystemTime::now();
        let mut listed = self.listed(&account, now).await.map_err(internal)?;
        let unregister = form
            .fields
            .iter()
            .find(|f| f.var.as_deref() == Some("unregister"))
            .map_or(&[][..], |f| &f.values[..]);
        let mut unregistered = 0;
        for id in unregister {
            let Some(at) = listed.iter().position(|l| l.id == *id) else {
                return Err(bad_request(
                    "unregister must name a registration of yours by its listed id",
                ));
            };
            let gone = listed.remove(at);
            self.store
                .revoke(&gone.claims, now, self.revocations_live)
                .await
                .map_err(internal)?;
            self.held
                .drop_registration(&gone.claims)
                .await
                .map_err(internal)?;
            unregistered += 1;
        }
        if unregistered > 0 {
            tracing::info!(unregistered, "registrations unregistered by their user");
        }
        let mut lines = Field::new("registrations", FieldType::TextMulti);
        for one in &listed {
            lines.values.push(self.line(&account, one, now).await);
        }
        Ok(DataForm {
            type_: DataFormType::Result_,
            title: Some("Your push registrations".into()),
            instructions: Some(format!(
                "The live push registrations of {account}, oldest first (at most {MAX_LISTED}). \
                 Apps are named by the start of their hashed name. To unregister one, run this \
                 command again with the field unregister set to its id (the text before the \
                 colon); its app then has to register again."
            )),
            fields: vec![
                Field::text_single("count", &listed.len().to_string()),
                Field::text_single("unregistered", &unregistered.to_string()),
                lines,
            ],
        })
    }
}
