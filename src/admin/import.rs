//! `xup import-up-config`: a complete xup config from the `config.json` of the Java `up`
//! (iNPUTmice), so an operator switches without their users noticing.
//!
//! What maps is mapped: the component settings, the web server's address, and `up`'s endpoint
//! secret and URI template, which become `registration.legacy_up_secret` and `legacy_up_uri` so
//! every endpoint `up` issued keeps working until it expires. xup gets a fresh secret of its own
//! for new endpoints. Whatever has no counterpart is named in the notes, for stderr.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Map, Value, json};

use crate::config::Config;

/// Where the imported config keeps xup's state: the Debian package's and the unit file's.
const STORE_PATH: &str = "/var/lib/xup";

/// A config written from `up`'s, and what the operator should know about it.
#[derive(Debug)]
pub struct Imported {
    pub config: Value,
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}: missing or not a {1}")]
    Missing(&'static str, &'static str),
    #[error("the config made from it is not valid: {0}")]
    Invalid(#[from] crate::config::ConfigError),
}

/// Read `up`'s config text and write xup's.
pub fn from_up_config(text: &str) -> Result<Imported, ImportError> {
    let up: Value = serde_json::from_str(text)?;
    let mut notes = Vec::new();
    let string = |section: &str, key: &'static str, path: &'static str| {
        up[section][key]
            .as_str()
            .map(str::to_owned)
            .ok_or(ImportError::Missing(path, "string"))
    };
    let number = |section: &str, key: &'static str, path: &'static str| {
        up[section][key]
            .as_u64()
            .ok_or(ImportError::Missing(path, "number"))
    };
    let host_port = |host: &str, port: u64| match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    };

    let server = host_port(
        &string("component", "hostname", "component.hostname")?,
        number("component", "port", "component.port")?,
    );
    let jid = string("component", "jid", "component.jid")?;
    let component_secret = string("component", "sharedSecret", "component.sharedSecret")?;
    let legacy_secret = string("registration", "sharedSecret", "registration.sharedSecret")?;
    let uri = string("registration", "uri", "registration.uri")?;
    let listen = host_port(
        &string("webServer", "ip", "webServer.ip")?,
        number("webServer", "port", "webServer.port")?,
    );
    let public_url = origin(&uri).ok_or(ImportError::Missing("registration.uri", "URL"))?;

    let known = [
        (
            "component",
            &["hostname", "port", "jid", "sharedSecret"][..],
        ),
        ("registration", &["sharedSecret", "uri"][..]),
        ("webServer", &["ip", "port", "messageUri"][..]),
    ];
    for (section, value) in up.as_object().into_iter().flatten() {
        match known.iter().find(|(name, _)| name == section) {
            None => notes.push(format!("{section}: not mapped; xup has no such setting")),
            Some((_, keys)) => {
                for key in value.as_object().map(Map::keys).into_iter().flatten() {
                    if !keys.contains(&key.as_str()) {
                        notes.push(format!(
                            "{section}.{key}: not mapped; xup has no such setting"
                        ));
                    }
                }
            }
        }
    }
    if up["webServer"].get("messageUri").is_some() {
        notes.push(
            "webServer.messageUri: not mapped; xup's Location header is /message/{id} on \
             http.public_url"
                .into(),
        );
    }
    notes.push(format!(
        "http.public_url: {public_url}, the host of up's endpoints; point it (and that host's \
         proxy) at xup's http.listen"
    ));
    notes.push(
        "registration.allow: [\"*\"], as up served every account whose server reached it; \
         narrow it to your domains"
            .into(),
    );
    notes.push(format!(
        "store.path: {STORE_PATH}; xup keeps its revocations and held messages there"
    ));
    notes.push(
        "registration.secrets: a fresh secret for xup's own endpoints; keep it secret and \
         never lose it"
            .into(),
    );

    let config = json!({
        "component": { "jid": jid, "server": server, "secret": component_secret },
        "http": { "listen": listen, "public_url": public_url },
        "registration": {
            "secrets": [STANDARD.encode(rand::random::<[u8; 32]>())],
            "allow": ["*"],
            "legacy_up_secret": legacy_secret,
            "legacy_up_uri": uri,
        },
        "store": { "path": STORE_PATH },
    });
    Config::parse(&config.to_string())?;
    Ok(Imported { config, notes })
}

/// `scheme://host[:port]` of a URL or URI template.
fn origin(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let host = rest.split(['/', '{', '?']).next()?;
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the Java `up`'s own `config.json`.
    const UP: &str = r#"{
      "component": { "hostname": "localhost", "port": 5348, "jid": "up.conversations.im",
                     "sharedSecret": "none" },
      "registration": { "sharedSecret": "7z8XLjkj/8h2T22nd1Z279vT2ONMOgQu8xj0BLps3qA=",
                        "uri": "https://up.conversations.im/push/{token}" },
      "webServer": { "ip": "127.0.0.1", "port": 6677, "messageUri": "https://x/message/{uuid}" },
      "logging": { "level": "debug" }
    }"#;

    #[test]
    fn everything_that_maps_is_mapped_and_the_rest_is_named() {
        let imported = from_up_config(UP).expect("imported");
        let config = &imported.config;
        assert_eq!(config["component"]["server"], "localhost:5348");
        assert_eq!(config["http"]["listen"], "127.0.0.1:6677");
        assert_eq!(config["http"]["public_url"], "https://up.conversations.im");
        assert_eq!(
            config["registration"]["legacy_up_uri"],
            "https://up.conversations.im/push/{token}"
        );
        let notes = imported.notes.join("\n");
        assert!(notes.contains("logging: not mapped"), "{notes}");
        assert!(notes.contains("webServer.messageUri"), "{notes}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let e = from_up_config(&UP.replace(r#""port": 5348,"#, "")).expect_err("refused");
        assert_eq!(e.to_string(), "component.port: missing or not a number");
    }

    #[test]
    fn the_origin_is_scheme_and_host() {
        assert_eq!(
            origin("https://up.example.org:8443/push{?token}").as_deref(),
            Some("https://up.example.org:8443")
        );
        assert_eq!(origin("up.example.org/push"), None);
    }
}
