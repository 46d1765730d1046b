//! `unifiedpush-delivery-trace`: the caller's account's last events (`trace.rs`), newest last,
//! so a user can see for themselves what became of the notifications they did not get.

use std::sync::Arc;

use xmpp_parsers::{
    data_forms::{DataForm, DataFormType, Field, FieldType},
    jid::Jid,
    stanza_error::StanzaError,
};

use crate::{
    commands::{AdHoc, own_account},
    trace::Traces,
};

/// The command's node.
pub const NODE: &str = "unifiedpush-delivery-trace";

pub struct DeliveryTrace {
    pub traces: Arc<Traces>,
}

#[async_trait::async_trait]
impl AdHoc for DeliveryTrace {
    fn node(&self) -> &'static str {
        NODE
    }

    fn name(&self) -> &'static str {
        "What became of your recent push notifications"
    }

    /// The caller's own account only: a submitted `account` naming another is `forbidden`.
    async fn run(&self, from: &Jid, form: &DataForm) -> Result<DataForm, StanzaError> {
        let account = own_account(from, form, "you may only read your own account's trace")?;
        let entries = self.traces.of(&account);
        let mut events = Field::new("events", FieldType::TextMulti);
        events.values = entries.iter().map(|entry| entry.line()).collect();
        Ok(DataForm {
            type_: DataFormType::Result_,
            title: Some("Recent push notifications".into()),
            instructions: Some(format!(
                "The last {} things that happened to pushes for {account}, oldest first. \
                 Apps are named by the start of their hashed name; no content is kept.",
                entries.len()
            )),
            fields: vec![
                Field::text_single("count", &entries.len().to_string()),
                events,
            ],
        })
    }
}
