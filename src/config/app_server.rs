//! `app_server`: the XEP-0357 app server role, and how its Web Push client reaches the outside.

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::config::{ConfigError, invalid, positive_duration, proxy_entry};

/// How long an app-server node lives. Clients do not renew a node (p2 and mod_push nodes live
/// forever); a month bounds what a leaked node is worth, and a client that enables push at each
/// login registers again long before.
pub const DEFAULT_NODE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// The XEP-0357 app server (`app_server/`).
pub struct AppServerConfig {
    /// Whether xup takes the role at all (advertises it, answers its commands and publishes).
    pub enabled: bool,
    /// Networks an endpoint may resolve into although they are private, loopback or link-local;
    /// only there may an endpoint be plain `http`.
    pub allow_private_endpoints: Vec<IpNet>,
    /// How long a registered node lives.
    pub node_lifetime: Duration,
    /// The VAPID `sub` claim: how a push service reaches the operator (`mailto:` or `https:`).
    pub vapid_contact: String,
    /// The one proxy the outbound client may use (`app_server.proxy`); the environment's
    /// `HTTPS_PROXY` and the like are ignored, since a proxy connects behind the address check.
    pub proxy: Option<reqwest::Url>,
    /// Which VAPID key signs; a new number makes (and keeps) a new key in the store.
    pub vapid_key_generation: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAppServer {
    pub enabled: Option<bool>,
    pub allow_private_endpoints: Option<Vec<String>>,
    pub node_lifetime: Option<String>,
    pub vapid_contact: Option<String>,
    pub vapid_key_generation: Option<u32>,
    pub proxy: Option<String>,
}

pub(super) fn validate(
    raw_app: RawAppServer,
    public_url: &str,
) -> Result<AppServerConfig, ConfigError> {
    Ok(AppServerConfig {
        enabled: raw_app.enabled.unwrap_or(true),
        allow_private_endpoints: raw_app
            .allow_private_endpoints
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                proxy_entry(&format!("app_server.allow_private_endpoints[{i}]"), entry)
            })
            .collect::<Result<_, _>>()?,
        node_lifetime: positive_duration(
            "app_server.node_lifetime",
            raw_app.node_lifetime.as_deref(),
            DEFAULT_NODE_LIFETIME,
        )?,
        vapid_contact: match raw_app.vapid_contact {
            Some(contact) if contact.starts_with("mailto:") || contact.starts_with("https://") => {
                contact
            }
            Some(_) => {
                return Err(invalid(
                    "app_server.vapid_contact",
                    "expected a mailto: or https: URI (RFC 8292 §2.1)",
                ));
            }
            None => public_url.to_owned(),
        },
        vapid_key_generation: raw_app.vapid_key_generation.unwrap_or(1),
        proxy: raw_app
            .proxy
            .map(|text| match reqwest::Url::parse(&text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
                _ => Err(invalid(
                    "app_server.proxy",
                    "expected an http:// or https:// URL of a proxy, e.g. http://127.0.0.1:3128",
                )),
            })
            .transpose()?,
    })
}
