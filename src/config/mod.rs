//! The JSON configuration file: its shape, its defaults, and validation whose every error names the
//! field at fault.
//!
//! Each section of the file is a file here (`component.rs`, `http.rs`, `registration.rs`,
//! `delivery.rs`, `limits.rs`, `app_server.rs`, `metrics.rs`, `store.rs`) with its typed settings,
//! its defaults and the reason for each, and its checks; this file reads the whole and holds the
//! checks every section shares.
//!
//! Parsing happens in two steps. Serde reads the file into [`RawConfig`] (unknown keys are refused,
//! so a typo such as `"lifetme"` is an error, not a silently ignored setting); [`Config::validate`]
//! then checks meaning and produces the typed [`Config`] the rest of xup uses. `xup check` runs the
//! same code, so what it accepts is exactly what the daemon accepts.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

mod app_server;
mod component;
mod delivery;
mod http;
mod limits;
mod metrics;
mod registration;
mod store;

pub use app_server::AppServerConfig;
pub use component::ComponentConfig;
pub use delivery::DeliveryConfig;
pub use http::HttpConfig;
pub use limits::{LimitsConfig, Rate};
pub use metrics::MetricsConfig;
pub use registration::{AllowEntry, LegacyRoute, LegacyUp, RegistrationConfig, legacy_route};
pub use store::StoreConfig;
use {
    app_server::RawAppServer, component::RawComponent, delivery::RawDelivery, http::RawHttp,
    limits::RawLimits, metrics::RawMetrics, registration::RawRegistration, store::RawStore,
};

/// The validated configuration.
pub struct Config {
    pub component: ComponentConfig,
    pub http: HttpConfig,
    pub registration: RegistrationConfig,
    pub app_server: AppServerConfig,
    pub delivery: DeliveryConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub store: StoreConfig,
}

/// A config that cannot be used, and where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// serde's words for a value of the wrong type or form quote the value, and a config holds secrets
/// (a secret written as a number, a URL with its password in the wrong field): keep what was
/// expected and where, never what was found.
fn without_value(error: &serde_json::Error) -> String {
    let full = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&position).unwrap_or(&full);
    let quoted = ["invalid type", "invalid value", "unknown variant"]
        .into_iter()
        .find(|kind| message.starts_with(kind));
    let Some(kind) = quoted else {
        return full;
    };
    // The expectation is serde's own text and comes last; the value, before it, may hold anything,
    // even these words.
    match message.rsplit_once(", expected ") {
        Some((_, expected)) => format!("{kind}, expected {expected}{position}"),
        None => format!("{kind}{position}"),
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The file as written; every field optional that has a sensible default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    component: RawComponent,
    http: RawHttp,
    registration: RawRegistration,
    #[serde(default)]
    app_server: RawAppServer,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    metrics: RawMetrics,
    store: RawStore,
}

impl Config {
    /// What an operator must know when `/metrics` shares the public listener: it tells anyone who
    /// reaches the push doors how busy the provider is and whether its link is up. `None` when
    /// `metrics.listen` serves it apart.
    pub fn metrics_exposure(&self) -> Option<String> {
        self.metrics.listen.is_none().then(|| {
            format!(
                "/metrics and /health are served on http.listen ({}), beside the pushes: whoever \
                 reaches the push endpoints reads them too, unless the reverse proxy forwards \
                 only /push/ and /_matrix/push/; set metrics.listen (e.g. 127.0.0.1:9090) to \
                 serve them apart",
                self.http.listen
            )
        })
    }

    /// Read and validate the file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        Config::parse_at(&text, dir, |name| std::env::var(name).ok()).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate config text, taking secrets left out of it from the environment.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, |name| std::env::var(name).ok())
    }

    /// [`Config::parse`], with `env` standing in for the process environment.
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::parse_at(text, std::path::Path::new("."), env)
    }

    /// Parse and validate the text of a config file in `dir`. The text is JSON with comments
    /// (`//`, `/* */` and `#`, outside strings), so a shipped config can explain itself; comments
    /// become spaces, so an error's line and column stay true.
    ///
    /// A relative `*_file` path names a file in systemd's `$CREDENTIALS_DIRECTORY` when xup runs
    /// with credentials (`LoadCredential=`), and in `dir` otherwise: the packaged config's
    /// `"secret_file": "component.secret"` is the credential under systemd, and
    /// `/etc/xup/component.secret` when an operator runs `xup check` by hand.
    pub fn parse_at(
        text: &str,
        dir: &std::path::Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut json = String::with_capacity(text.len());
        std::io::Read::read_to_string(
            &mut json_comments::StripComments::new(text.as_bytes()),
            &mut json,
        )
        .map_err(|e| ConfigError::Syntax {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let deserializer = &mut serde_json::Deserializer::from_str(&json);
        let mut raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let message = if path == "." {
                without_value(e.inner())
            } else {
                format!("{path}: {}", without_value(e.inner()))
            };
            ConfigError::Syntax {
                path: PathBuf::new(),
                message,
            }
        })?;
        let base = env("CREDENTIALS_DIRECTORY").map_or_else(|| dir.to_owned(), PathBuf::from);
        for file in [
            &mut raw.component.secret_file,
            &mut raw.registration.secrets_file,
            &mut raw.registration.legacy_up_secret_file,
            &mut raw.store.url_file,
        ] {
            // Joining an absolute path gives that path.
            *file = file.take().map(|file| base.join(file));
        }
        Config::validate(raw, &env)
    }

    fn validate(
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let component = component::validate(raw.component, env)?;
        let http = http::validate(raw.http)?;
        let registration =
            registration::validate(raw.registration, &component.jid, &http.public_url, env)?;
        let delivery = delivery::validate(raw.delivery)?;
        let limits = limits::validate(raw.limits)?;
        let app_server = app_server::validate(raw.app_server, &http.public_url)?;
        let metrics = metrics::validate(raw.metrics, http.listen)?;
        let store = store::validate(raw.store, env)?;
        Ok(Config {
            component,
            http,
            registration,
            app_server,
            delivery,
            limits,
            metrics,
            store,
        })
    }
}

fn duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| {
        invalid(
            field,
            format!("{e}; write durations like \"15s\" or \"7d\""),
        )
    })
}

/// A secret from exactly one of: the file's `field`, the file named by `field`_file, or the
/// environment variable `env_name` (already looked up as `from_env`), so secrets need not sit in
/// a config file that is world-readable or kept in version control.
fn secret(
    field: &str,
    inline: Option<String>,
    file: Option<&Path>,
    from_env: Option<String>,
    env_name: &str,
) -> Result<String, ConfigError> {
    let file_field = format!("{field}_file");
    match (inline, file, from_env) {
        (Some(value), None, None) => Ok(value),
        (None, Some(path), None) => std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|e| invalid(file_field, format!("cannot read {}: {e}", path.display()))),
        (None, None, Some(value)) => Ok(value.trim().to_owned()),
        (None, None, None) => Err(invalid(
            field,
            format!("missing: give {field}, {file_field} or the environment variable {env_name}"),
        )),
        _ => Err(invalid(
            field,
            format!("given more than once: keep one of {field}, {file_field} and {env_name}"),
        )),
    }
}

/// A duration that must not be zero, or `default` when the field is absent.
fn positive_duration(
    field: &str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let value = text.map_or(Ok(default), |text| duration(field, text))?;
    if value.is_zero() {
        return Err(invalid(field, "must be more than 0s"));
    }
    Ok(value)
}

fn proxy_entry(field: &str, entry: &str) -> Result<IpNet, ConfigError> {
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            invalid(
                field,
                format!("{entry:?} is not an IP address or network such as 10.0.0.0/8"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::DEFAULT_MAX_CONNECTIONS;
    use registration::LEGACY_UP_LIFETIME;
    use xmpp_parsers::jid::Jid;

    const GOOD: &str = r#"{
      "component":    { "jid": "up.example.org", "server": "127.0.0.1:5347", "secret": "s" },
      "http":         { "listen": "127.0.0.1:8080", "public_url": "https://up.example.org/" },
      "registration": { "secrets": ["0123456789abcdef"], "lifetime": "7d", "allow": ["example.org"] },
      "delivery":     { "timeout": "15s" },
      "store":        { "path": "/var/lib/xup" }
    }"#;

    fn error_of(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_field_without_echoing_it() {
        for (from, to, field) in [
            (
                r#""secret": "s""#,
                r#""secret": 9876543210987654321"#,
                "component.secret",
            ),
            (
                r#""secret": "s""#,
                r#""secret": 98765.4321"#,
                "component.secret",
            ),
            (
                r#""secret": "s""#,
                r#""secret": ["9876543210"]"#,
                "component.secret",
            ),
            (
                r#""secrets": ["0123456789abcdef"]"#,
                r#""secrets": "9876543210, expected a wrong thing""#,
                "registration.secrets",
            ),
            (
                r#""secrets": ["0123456789abcdef"]"#,
                r#""secrets": [9876543210]"#,
                "registration.secrets[0]",
            ),
            (
                r#""path": "/var/lib/xup""#,
                r#""url": 9876543210"#,
                "store.url",
            ),
            (
                r#""timeout": "15s""#,
                r#""timeout": false"#,
                "delivery.timeout",
            ),
        ] {
            let e = error_of(&GOOD.replace(from, to));
            assert!(e.contains(field), "{to}: {e}");
            assert!(e.contains("expected"), "{to}: says what was expected: {e}");
            assert!(!e.contains("98765"), "{to}: echoes the value: {e}");
        }
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.http.public_url, "https://up.example.org");
        assert_eq!(config.registration.lifetime, Duration::from_secs(7 * 86400));
        assert_eq!(config.delivery.timeout, Duration::from_secs(15));
    }

    #[test]
    fn allow_defaults_to_the_parent_domain() {
        let text = GOOD.replace(r#", "allow": ["example.org"]"#, "");
        let config = Config::parse(&text).expect("valid");
        assert_eq!(
            config.registration.allow,
            vec![AllowEntry::Domain("example.org".into())]
        );
    }

    #[test]
    fn a_short_lifetime_is_refused_naming_the_field() {
        let e = error_of(&GOOD.replace(r#""7d""#, r#""1d""#));
        assert!(e.starts_with("registration.lifetime:"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_path() {
        let e = error_of(&GOOD.replace(r#""timeout""#, r#""timeot""#));
        assert!(e.contains("delivery") && e.contains("timeot"), "{e}");
    }

    #[test]
    fn answer_within_defaults_to_3s_and_never_exceeds_the_timeout() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.delivery.answer_within, Duration::from_secs(3));
        let short = Config::parse(&GOOD.replace(r#""15s""#, r#""1s""#)).expect("valid");
        assert_eq!(short.delivery.answer_within, Duration::from_secs(1));
        let e = error_of(&GOOD.replace(r#""timeout""#, r#""answer_within": "20s", "timeout""#));
        assert!(e.starts_with("delivery.answer_within:"), "{e}");
    }

    #[test]
    fn a_bad_duration_names_the_field() {
        let e = error_of(&GOOD.replace(r#""15s""#, r#""soon""#));
        assert!(e.starts_with("delivery.timeout:"), "{e}");
    }

    #[test]
    fn a_short_secret_names_its_index() {
        let e = error_of(&GOOD.replace(
            r#"["0123456789abcdef"]"#,
            r#"["0123456789abcdef", "short"]"#,
        ));
        assert!(e.starts_with("registration.secrets[1]:"), "{e}");
    }

    #[test]
    fn allow_entries_are_typed() {
        let text = GOOD.replace(
            r#"["example.org"]"#,
            r#"["*", "example.org", "juliet@example.org"]"#,
        );
        let allow = Config::parse(&text).expect("valid").registration.allow;
        let romeo: Jid = "romeo@example.net/phone".parse().expect("jid");
        let juliet: Jid = "juliet@example.org/phone".parse().expect("jid");
        assert!(allow[0].admits(&romeo));
        assert!(!allow[1].admits(&romeo) && allow[1].admits(&juliet));
        assert!(allow[2].admits(&juliet));
    }

    #[test]
    fn a_relative_secret_file_is_a_credential_under_systemd_and_beside_the_config_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (etc, credentials) = (dir.path().join("etc"), dir.path().join("credentials"));
        for (place, secret) in [(&etc, "from etc"), (&credentials, "from systemd")] {
            std::fs::create_dir(place).expect("mkdir");
            std::fs::write(place.join("component.secret"), secret).expect("write");
        }
        let text = GOOD.replace(r#""secret": "s""#, r#""secret_file": "component.secret""#);
        let by_hand = Config::parse_at(&text, &etc, no_env).expect("valid");
        assert_eq!(by_hand.component.secret, "from etc");
        let credentials_env = |name: &str| {
            (name == "CREDENTIALS_DIRECTORY").then(|| credentials.display().to_string())
        };
        let under_systemd = Config::parse_at(&text, &etc, credentials_env).expect("valid");
        assert_eq!(under_systemd.component.secret, "from systemd");
    }

    #[test]
    fn comments_are_allowed_and_errors_keep_their_place() {
        let commented = GOOD
            .replacen('{', "{ // what xup is\n  /* the XMPP side: */", 1)
            .replace(r#""delivery""#, "# how long to wait\n      \"delivery\"");
        let config = Config::parse(&commented).expect("comments are not content");
        assert_eq!(config.delivery.timeout, Duration::from_secs(15));
        assert_eq!(
            config.http.public_url, "https://up.example.org",
            "// inside a string is not a comment"
        );
        // The line of a mistake below the comments is the line in the file.
        let e = error_of(&commented.replace(r#""15s" }"#, r#""15s" "#));
        assert!(e.contains("line 8"), "{e}");
    }

    #[test]
    fn the_store_is_sqlite_or_postgresql_and_each_refuses_the_others_settings() {
        let with_store = |store: &str| GOOD.replace(r#"{ "path": "/var/lib/xup" }"#, store);
        let postgres = Config::parse(&with_store(r#"{ "url": "postgres://xup:pw@db/xup" }"#));
        assert!(matches!(
            postgres.expect("valid").store,
            StoreConfig::Postgres {
                pool_size: 16,
                ca_file: None,
                ..
            }
        ));
        for (store, field) in [
            (r#"{ "path": "/x", "url": "postgres://db/xup" }"#, "store:"),
            (r#"{ "path": "/x", "pool_size": 4 }"#, "store.pool_size:"),
            (
                r#"{ "path": "/x", "ca_file": "/etc/ssl/ca.pem" }"#,
                "store.ca_file:",
            ),
            (
                r#"{ "url": "postgres://db/xup", "pool_size": 0 }"#,
                "store.pool_size:",
            ),
            (r#"{ "url": "mysql://db/xup" }"#, "store.url:"),
            (
                r#"{ "url": "postgres://db/xup", "ca_file": "/etc/hostname" }"#,
                "store.ca_file: is used only with TLS",
            ),
            (
                r#"{ "url": "postgres://db/xup?sslmode=require", "ca_file": "/nonexistent" }"#,
                "store.ca_file: cannot read",
            ),
            (r#"{}"#, "store.path:"),
        ] {
            let e = error_of(&with_store(store));
            assert!(e.starts_with(field), "{store}: {e}");
        }
    }

    #[test]
    fn a_component_jid_with_a_user_part_is_refused() {
        let e = error_of(&GOOD.replace(r#""up.example.org""#, r#""up@example.org""#));
        assert!(e.starts_with("component.jid:"), "{e}");
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().expect("dir");
        let component = dir.path().join("component");
        let endpoints = dir.path().join("endpoints");
        std::fs::write(&component, "from a file\n").expect("write");
        std::fs::write(&endpoints, "0123456789abcdef-new\n0123456789abcdef-old\n").expect("write");
        let text = GOOD
            .replace(
                r#""secret": "s""#,
                &format!(r#""secret_file": {:?}"#, component.display().to_string()),
            )
            .replace(
                r#""secrets": ["0123456789abcdef"]"#,
                &format!(r#""secrets_file": {:?}"#, endpoints.display().to_string()),
            );
        let config = Config::parse_with_env(&text, no_env).expect("valid");
        assert_eq!(config.component.secret, "from a file");
        assert_eq!(
            config.registration.secrets,
            ["0123456789abcdef-new", "0123456789abcdef-old"]
        );
    }

    #[test]
    fn secrets_can_come_from_the_environment() {
        let text = GOOD
            .replace(r#", "secret": "s""#, "")
            .replace(r#""secrets": ["0123456789abcdef"], "#, "");
        let env = |name: &str| match name {
            "XUP_COMPONENT_SECRET" => Some("from the environment".to_owned()),
            "XUP_REGISTRATION_SECRETS" => Some("0123456789abcdef-1 0123456789abcdef-2".to_owned()),
            _ => None,
        };
        let config = Config::parse_with_env(&text, env).expect("valid");
        assert_eq!(config.component.secret, "from the environment");
        assert_eq!(config.registration.secrets.len(), 2);

        let e = Config::parse_with_env(&text, no_env)
            .err()
            .expect("refused");
        assert!(
            e.to_string().starts_with("component.secret: missing")
                && e.to_string().contains("XUP_COMPONENT_SECRET"),
            "{e}"
        );
    }

    #[test]
    fn a_secret_given_twice_is_refused() {
        let env = |name: &str| (name == "XUP_COMPONENT_SECRET").then(|| "other".to_owned());
        let e = Config::parse_with_env(GOOD, env).err().expect("refused");
        assert!(
            e.to_string()
                .starts_with("component.secret: given more than once"),
            "{e}"
        );
        let env = |name: &str| (name == "XUP_REGISTRATION_SECRETS").then(|| "x".repeat(20));
        let e = Config::parse_with_env(GOOD, env).err().expect("refused");
        assert!(
            e.to_string()
                .starts_with("registration.secrets: given more than once"),
            "{e}"
        );
    }

    #[test]
    fn an_unreadable_secret_file_names_the_field() {
        let text = GOOD.replace(
            r#""secret": "s""#,
            r#""secret_file": "/nonexistent/secret""#,
        );
        let e = Config::parse_with_env(&text, no_env)
            .err()
            .expect("refused");
        assert!(
            e.to_string()
                .starts_with("component.secret_file: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn limits_have_defaults_and_bad_ones_name_their_field() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.limits.per_endpoint.burst.get(), 240);
        assert_eq!(config.limits.per_endpoint.every, Duration::from_millis(250));
        assert_eq!(config.http.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(config.http.trusted_proxies.len(), 2);

        let with = |limits: &str| GOOD.replace(r#""delivery""#, &format!("{limits}, \"delivery\""));
        let e = error_of(&with(
            r#""limits": { "per_endpoint": { "burst": 0, "every": "1s" } }"#,
        ));
        assert!(e.starts_with("limits.per_endpoint.burst:"), "{e}");
        let e = error_of(&with(
            r#""limits": { "per_address": { "burst": 5, "every": "0s" } }"#,
        ));
        assert!(e.starts_with("limits.per_address.every:"), "{e}");
        let e = error_of(&with(
            r#""limits": { "per_address": { "burst": 5, "every": "often" } }"#,
        ));
        assert!(e.starts_with("limits.per_address.every:"), "{e}");
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks() {
        let text = GOOD.replace(
            r#""public_url": "https://up.example.org/""#,
            r#""public_url": "https://up.example.org/", "trusted_proxies": ["10.0.0.0/8", "::1"]"#,
        );
        let proxies = Config::parse(&text).expect("valid").http.trusted_proxies;
        assert!(proxies[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().expect("ip")));
        assert!(proxies[1].contains(&"::1".parse::<std::net::IpAddr>().expect("ip")));

        let e = error_of(&text.replace("10.0.0.0/8", "proxy.example.org"));
        assert!(e.starts_with("http.trusted_proxies[0]:"), "{e}");
        let e = error_of(&text.replace(
            r#""trusted_proxies""#,
            r#""max_in_flight": 0, "trusted_proxies""#,
        ));
        assert!(e.starts_with("http.max_in_flight:"), "{e}");
    }

    #[test]
    fn the_java_ups_secret_and_template_are_checked() {
        let with = |extra: &str| {
            GOOD.replace(
                r#""lifetime": "7d""#,
                &format!(r#""lifetime": "7d", {extra}"#),
            )
        };
        let secret = r#""legacy_up_secret": "7z8XLjkj/8h2T22nd1Z279vT2ONMOgQu8xj0BLps3qA=""#;
        let config = Config::parse(&with(secret)).expect("valid");
        let legacy = config.registration.legacy_up.as_ref().expect("legacy");
        assert_eq!(legacy.route, LegacyRoute::Path("/push/".into()));
        assert_eq!(legacy.origin, "https://up.example.org");
        assert_eq!(config.registration.longest_token_life(), LEGACY_UP_LIFETIME);
        let e = error_of(&with(r#""legacy_up_secret": "c2hvcnQ=""#));
        assert!(e.starts_with("registration.legacy_up_secret:"), "{e}");
        let e = error_of(&with(
            r#""legacy_up_uri": "https://up.example.org/push/{token}""#,
        ));
        assert!(e.starts_with("registration.legacy_up_uri:"), "{e}");
        let query = format!(r#"{secret}, "legacy_up_uri": "https://old.example.org/up{{?token}}""#);
        let legacy = Config::parse(&with(&query))
            .expect("valid")
            .registration
            .legacy_up
            .expect("legacy");
        assert_eq!(legacy.route, LegacyRoute::Query("/up".into()));
        assert_eq!(legacy.origin, "https://old.example.org");
        for bad in [
            "https://up.example.org/metrics{?token}",
            "https://up.example.org/{token}",
            "https://up.example.org/push/{token}/x",
            "up.example.org/push/{token}",
        ] {
            let e = error_of(&with(&format!(r#"{secret}, "legacy_up_uri": "{bad}""#)));
            assert!(e.starts_with("registration.legacy_up_uri:"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_app_server_has_defaults_and_bad_values_name_their_field() {
        let config = Config::parse(GOOD).expect("valid");
        assert!(config.app_server.enabled);
        assert_eq!(config.app_server.vapid_contact, "https://up.example.org");
        assert!(config.app_server.allow_private_endpoints.is_empty());
        let with = |section: &str| {
            GOOD.replace(
                r#""delivery":"#,
                &format!(r#""app_server": {section}, "delivery":"#),
            )
        };
        let e = error_of(&with(r#"{ "vapid_contact": "admin@example.org" }"#));
        assert!(e.starts_with("app_server.vapid_contact:"), "{e}");
        let e = error_of(&with(
            r#"{ "allow_private_endpoints": ["127.0.0.0/8", "nonsense"] }"#,
        ));
        assert!(
            e.starts_with("app_server.allow_private_endpoints[1]:"),
            "{e}"
        );
        let e = error_of(&with(r#"{ "node_lifetime": "0s" }"#));
        assert!(e.starts_with("app_server.node_lifetime:"), "{e}");
        let off = Config::parse(&with(r#"{ "enabled": false }"#)).expect("valid");
        assert!(!off.app_server.enabled);
    }
}
