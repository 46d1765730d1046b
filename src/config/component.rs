//! `component`: how xup reaches the XMPP server (XEP-0114): its JID, the server's component
//! port, and the shared secret.

use std::path::PathBuf;

use serde::Deserialize;
use xmpp_parsers::jid::BareJid;

use crate::config::{ConfigError, invalid, secret};

#[derive(Clone)]
pub struct ComponentConfig {
    /// The component's domain JID, e.g. `up.example.org`.
    pub jid: BareJid,
    /// `host:port` of the XMPP server's component listener; resolved at every connect so a
    /// server that moves address is followed.
    pub server: String,
    pub secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawComponent {
    pub jid: String,
    #[serde(default = "default_server")]
    pub server: String,
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
}

fn default_server() -> String {
    "127.0.0.1:5347".into()
}

/// Where xup looks for a secret the config file leaves out.
const COMPONENT_SECRET_ENV: &str = "XUP_COMPONENT_SECRET";

pub(super) fn validate(
    raw: RawComponent,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ComponentConfig, ConfigError> {
    let jid =
        BareJid::new(&raw.jid).map_err(|e| invalid("component.jid", format!("not a JID: {e}")))?;
    if jid.node().is_some() {
        return Err(invalid(
            "component.jid",
            "a component is a bare domain such as up.example.org, without a user part",
        ));
    }
    if raw
        .server
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(invalid(
            "component.server",
            "expected host:port, e.g. 127.0.0.1:5347",
        ));
    }
    let component_secret = secret(
        "component.secret",
        raw.secret,
        raw.secret_file.as_deref(),
        env(COMPONENT_SECRET_ENV),
        COMPONENT_SECRET_ENV,
    )?;
    if component_secret.is_empty() {
        return Err(invalid("component.secret", "must not be empty"));
    }

    Ok(ComponentConfig {
        jid,
        server: raw.server,
        secret: component_secret,
    })
}
