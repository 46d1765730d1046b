//! The app server's ad-hoc commands, and its place on the router: registering a Web Push endpoint
//! to be woken through, unregistering it, listing the caller's own; and the pubsub publish an XMPP
//! server sends (XEP-0357 §6). Each is a thin door to [`AppServer`]; the dispatch is the commands'
//! table (`commands/`) and the router's (`xmpp/router.rs`).

use std::sync::Arc;

use xmpp_parsers::{
    data_forms::DataForm, disco::Identity, jid::Jid, minidom::Element, stanza_error::StanzaError,
};

use crate::{
    app_server::{AppServer, NS_PUSH},
    commands::AdHoc,
    xmpp::{Handled, Handler},
};

/// The commands, by node.
pub const REGISTER: &str = "register-push-webpush";
pub const UNREGISTER: &str = "unregister-push-webpush";
pub const LIST: &str = "list-push-registrations";

/// The app server's commands, in the order they are listed.
pub fn all(app_server: &Arc<AppServer>) -> Vec<Arc<dyn AdHoc>> {
    vec![
        Arc::new(Register(app_server.clone())),
        Arc::new(Unregister(app_server.clone())),
        Arc::new(List(app_server.clone())),
    ]
}

struct Register(Arc<AppServer>);
struct Unregister(Arc<AppServer>);
struct List(Arc<AppServer>);

#[async_trait::async_trait]
impl AdHoc for Register {
    fn node(&self) -> &'static str {
        REGISTER
    }

    fn name(&self) -> &'static str {
        "Register a Web Push endpoint to be woken through"
    }

    async fn run(&self, from: &Jid, form: &DataForm) -> Result<DataForm, StanzaError> {
        self.0.register(from, form).await
    }
}

#[async_trait::async_trait]
impl AdHoc for Unregister {
    fn node(&self) -> &'static str {
        UNREGISTER
    }

    fn name(&self) -> &'static str {
        "Unregister a Web Push endpoint"
    }

    async fn run(&self, from: &Jid, form: &DataForm) -> Result<DataForm, StanzaError> {
        self.0.unregister(from, form).await
    }
}

#[async_trait::async_trait]
impl AdHoc for List {
    fn node(&self) -> &'static str {
        LIST
    }

    fn name(&self) -> &'static str {
        "List your Web Push registrations"
    }

    async fn run(&self, from: &Jid, _: &DataForm) -> Result<DataForm, StanzaError> {
        self.0.list(from).await
    }
}

/// Publishes (`<pubsub>`), and what the app server adds to disco#info.
pub struct Publishes(pub Arc<AppServer>);

impl Handler for Publishes {
    fn features(&self) -> Vec<&'static str> {
        vec![NS_PUSH]
    }

    fn identities(&self) -> Vec<Identity> {
        vec![AppServer::identity()]
    }

    fn set(&self, from: Option<Jid>, payload: Element) -> Handled {
        let answer = self.0.clone().publish(from, payload);
        Handled::Later(Box::pin(async move {
            answer.await.map(|()| None).map_err(Into::into)
        }))
    }
}
