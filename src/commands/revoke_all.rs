//! `revoke-all-push-endpoints`: for a user who lost a phone, every endpoint ever issued to the
//! account dies at once, and what is held for it is dropped.

use std::{sync::Arc, time::Duration, time::SystemTime};

use xmpp_parsers::{
    data_forms::{DataForm, DataFormType, Field},
    jid::Jid,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};

use crate::{
    commands::AdHoc,
    store::{Store, StoreError, held::HeldMessages},
};

/// The command's node.
pub const NODE: &str = "revoke-all-push-endpoints";

pub struct RevokeAll {
    pub store: Arc<Store>,
    pub held: Arc<HeldMessages>,
    /// How long an account's revocation is kept: as long as the longest token it kills lives.
    pub revocations_live: Duration,
}

#[async_trait::async_trait]
impl AdHoc for RevokeAll {
    fn node(&self) -> &'static str {
        NODE
    }

    fn name(&self) -> &'static str {
        "Revoke every push endpoint issued to your account (a lost phone)"
    }

    /// Every endpoint issued to `from`'s account up to now is dead, on every resource, and what
    /// is held for it is dropped. Stateless: one revocation time per account, compared with each
    /// token's issue time.
    async fn run(&self, from: &Jid, _: &DataForm) -> Result<DataForm, StanzaError> {
        let account = from.to_bare().to_string();
        let internal = |e: StoreError| {
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
