//! XEP-0050 ad-hoc commands: how a user manages what xup holds for them from any XMPP client.
//!
//! Every command is one step (`execute`, `complete`, or no action at all: Conversations' older
//! code sends `execute`, newer `complete`) from a full JID that passes the access list and the
//! per-account rate limit, and is answered `completed` with a form. The app server's commands
//! (`register-push-webpush`, `unregister-push-webpush`, `list-push-registrations`) are in
//! `app_server/commands.rs`, there when that role is on; `revoke-all-push-endpoints`, for a user
//! who lost a phone, is the UnifiedPush side's and is always there (`revoke_all.rs`), as is
//! `unifiedpush-delivery-trace` (`trace.rs`), `check-my-push` (`check.rs`) and
//! `list-unifiedpush-registrations` (`registrations.rs`), for one who does not get their
//! notifications.
//!
//! The list and the dispatch come from one table of [`AdHoc`] commands, built at start-up: a role
//! that brings commands (the app server) hands its own in. Nothing here knows what a command
//! does.

use std::sync::Arc;

use xmpp_parsers::{
    data_forms::{DataForm, DataFormType},
    disco::{DiscoItemsResult, Item},
    jid::{BareJid, Jid},
    minidom::Element,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};

use crate::{
    registrar::Registrar,
    xmpp::{Handled, Handler},
};

pub mod check;
pub mod registrations;
pub mod revoke_all;
pub mod trace;
pub mod wire;

use wire::Command;
pub use wire::NS;

/// One command: its node, how the list names it, and what it does for the caller.
#[async_trait::async_trait]
pub trait AdHoc: Send + Sync {
    fn node(&self) -> &'static str;
    fn name(&self) -> &'static str;
    /// Run for `from` (admitted, a full JID) with the submitted `form` (empty if none).
    async fn run(&self, from: &Jid, form: &DataForm) -> Result<DataForm, StanzaError>;
}

/// The commands and who may run them.
pub struct Commands {
    component: BareJid,
    registrar: Arc<Registrar>,
    table: Vec<Arc<dyn AdHoc>>,
}

impl Commands {
    /// The commands in `table`, listed in its order.
    pub fn new(component: BareJid, registrar: Arc<Registrar>, table: Vec<Arc<dyn AdHoc>>) -> Self {
        Commands {
            component,
            registrar,
            table,
        }
    }

    /// The commands, listed under the commands node (XEP-0050 §2.2).
    pub fn list(&self) -> DiscoItemsResult {
        let items = self
            .table
            .iter()
            .map(|command| Item {
                jid: self.component.clone().into(),
                node: Some(command.node().to_owned()),
                name: Some(command.name().to_owned()),
            })
            .collect();
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
        let Some(handler) = self.table.iter().find(|c| c.node() == command.node) else {
            return Err(StanzaError::new(
                ErrorType::Cancel,
                DefinedCondition::ItemNotFound,
                "en",
                "no such command",
            ));
        };
        let result = handler.run(&from, &form).await?;
        Ok(Command {
            node: command.node,
            action: None,
            session_id: command.session_id,
            status: Some("completed".into()),
            form: Some(result),
        }
        .into())
    }
}

/// Commands are IQ sets in XEP-0050's namespace; their list is the items of its node.
pub struct Dispatch(pub Arc<Commands>);

impl Handler for Dispatch {
    fn features(&self) -> Vec<&'static str> {
        vec![NS]
    }

    fn items(&self, node: &str) -> Option<DiscoItemsResult> {
        (node == NS).then(|| self.0.list())
    }

    fn set(&self, from: Option<Jid>, payload: Element) -> Handled {
        let answer = self.0.clone().run(from, payload);
        Handled::Later(Box::pin(async move {
            answer.await.map(Some).map_err(Into::into)
        }))
    }
}

/// The caller's account (a bare JID), which is all a command tells about: a submitted `account`
/// naming another is `forbidden`, with `refusal` as its text.
// The error is what every command answers with (`AdHoc::run`); boxing it here would only unbox it.
#[allow(clippy::result_large_err)]
pub fn own_account(from: &Jid, form: &DataForm, refusal: &str) -> Result<String, StanzaError> {
    let account = from.to_bare().to_string();
    let asked = form
        .fields
        .iter()
        .find(|f| f.var.as_deref() == Some("account"))
        .and_then(|f| f.values.first());
    match asked {
        Some(asked) if *asked != account => Err(StanzaError::new(
            ErrorType::Auth,
            DefinedCondition::Forbidden,
            "en",
            refusal,
        )),
        _ => Ok(account),
    }
}

/// A request that is not what a one-step command takes.
pub fn bad_request(text: &str) -> StanzaError {
    StanzaError::new(ErrorType::Modify, DefinedCondition::BadRequest, "en", text)
}
