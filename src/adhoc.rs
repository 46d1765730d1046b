//! XEP-0050 ad-hoc commands: how a user manages what xup holds for them from any XMPP client.
//!
//! Every command is one step (`execute`, `complete`, or no action at all: Conversations' older
//! code sends `execute`, newer `complete`) from a full JID that passes the access list and the
//! per-account rate limit, and is answered `completed` with a form. The app server's commands
//! (`register-push-webpush`, `unregister-push-webpush`, `list-push-registrations`) go to
//! `app_server.rs`, when that role is on; `revoke-all-push-endpoints`, for a user who lost a phone,
//! is the UnifiedPush side's and is always there.

use std::{sync::Arc, time::Duration, time::SystemTime};

use xmpp_parsers::{
    data_forms::{DataForm, DataFormType, Field},
    disco::{DiscoItemsResult, Item},
    jid::{BareJid, Jid},
    minidom::Element,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};

use crate::{
    app_server::{self, AppServer},
    held::HeldMessages,
    protocol::commands::Command,
    register::Registrar,
    store::Store,
};

pub use crate::protocol::commands::NS;

/// The command that revokes every endpoint ever issued to the caller's account.
pub const REVOKE_ALL: &str = "revoke-all-push-endpoints";
/// The app server's, by node.
pub const LIST: &str = "list-push-registrations";

/// The commands and what they work on.
pub struct Commands {
    pub component: BareJid,
    pub registrar: Arc<Registrar>,
    pub app_server: Option<Arc<AppServer>>,
    pub store: Arc<Store>,
    pub held: Arc<HeldMessages>,
    /// How long an account's revocation is kept: as long as the longest token it kills lives.
    pub revocations_live: Duration,
}

impl Commands {
    /// The commands, listed under the commands node (XEP-0050 §2.2).
    pub fn list(&self) -> DiscoItemsResult {
        let item = |node: &str, name: &str| Item {
            jid: self.component.clone().into(),
            node: Some(node.to_owned()),
            name: Some(name.to_owned()),
        };
        let mut items = Vec::new();
        if self.app_server.is_some() {
            items.extend([
                item(
                    app_server::REGISTER,
                    "Register a Web Push endpoint to be woken through",
                ),
                item(app_server::UNREGISTER, "Unregister a Web Push endpoint"),
                item(LIST, "List your Web Push registrations"),
            ]);
        }
        items.push(item(
            REVOKE_ALL,
            "Revoke every push endpoint issued to your account (a lost phone)",
        ));
        DiscoItemsResult {
            node: Some(NS.to_owned()),
            items,
            rsm: None,
        }
    }

    /// Run the command in `payload` for `from`, and answer it.
    pub async fn run(
        self: Arc<Self>,
        from: Option<Jid>,
        payload: Element,
    ) -> Result<Element, StanzaError> {
        let command = Command::try_from(payload)
            .map_err(|_| bad_request("a <command> needs a node, and at most a submitted form"))?;
        if !matches!(
            command.action.as_deref(),
            None | Some("execute" | "complete")
        ) {
            return Err(bad_request(
                "these commands take one step: execute or complete",
            ));
        }
        let from = self
            .registrar
            .admit(from.as_ref())
            .map_err(|e| e.to_stanza_error())?
            .clone();
        let form = command.form.unwrap_or_else(|| DataForm {
            type_: DataFormType::Submit,
            title: None,
            instructions: None,
            fields: Vec::new(),
        });
        let app_server = self.app_server.as_ref();
        let result = match (command.node.as_str(), app_server) {
            (REVOKE_ALL, _) => self.revoke_all(&from).await?,
            (app_server::REGISTER, Some(app)) => app.register(&from, &form).await?,
            (app_server::UNREGISTER, Some(app)) => app.unregister(&from, &form).await?,
            (LIST, Some(app)) => app.list(&from).await?,
            _ => {
                return Err(StanzaError::new(
                    ErrorType::Cancel,
                    DefinedCondition::ItemNotFound,
                    "en",
                    "no such command",
                ));
            }
        };
        Ok(Command {
            node: command.node,
            action: None,
            session_id: command.session_id,
            status: Some("completed".into()),
            form: Some(result),
        }
        .into())
    }

    /// Every endpoint issued to `from`'s account up to now is dead, on every resource, and what
    /// is held for it is dropped. Stateless: one revocation time per account, compared with each
    /// token's issue time.
    async fn revoke_all(&self, from: &Jid) -> Result<DataForm, StanzaError> {
        let account = from.to_bare().to_string();
        let internal = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "cannot revoke an account's endpoints");
            StanzaError::new(
                ErrorType::Wait,
                DefinedCondition::InternalServerError,
                "en",
                "cannot revoke now; try again",
            )
        };
        self.store
            .revoke_account(&account, SystemTime::now(), self.revocations_live)
            .await
            .map_err(internal)?;
        let dropped = self.held.drop_account(&account).await.map_err(internal)?;
        tracing::info!(dropped, "every endpoint of an account revoked by its user");
        Ok(DataForm {
            type_: DataFormType::Result_,
            title: None,
            instructions: Some(format!(
                "Every push endpoint issued to {account} until now is revoked; apps register \
                 again through your clients. {dropped} held messages were dropped."
            )),
            fields: vec![Field::text_single("dropped-messages", &dropped.to_string())],
        })
    }
}

fn bad_request(text: &str) -> StanzaError {
    StanzaError::new(ErrorType::Modify, DefinedCondition::BadRequest, "en", text)
}
