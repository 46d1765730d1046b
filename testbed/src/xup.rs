//! The `xup` binary, started with a config written from [`XupSettings`], whose log lines can be
//! awaited.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
    time::timeout,
};

use crate::{
    COMPONENT, COMPONENT_SECRET, SECRET_A, WAIT, first_matching, first_matching_within, free_port,
};

/// The longest xup waits between two attempts to connect to the XMPP server.
const RECONNECT_CAP: std::time::Duration = std::time::Duration::from_secs(30);

/// Settings for one xup run; `store` outlives the process so restarts can be tested.
#[derive(Clone)]
pub struct XupSettings {
    pub component_secret: String,
    pub secrets: Vec<String>,
    pub timeout: &'static str,
    pub allow: Option<Vec<String>>,
    pub http_port: u16,
    pub store: PathBuf,
    /// `store.url`: PostgreSQL instead of the SQLite file in `store`.
    pub store_url: Option<String>,
    /// `store.ca_file`, with `store_url`.
    pub store_ca_file: Option<PathBuf>,
    /// `RUST_LOG` for the process: tests want every debug line, the benchmark only info.
    pub log_filter: &'static str,
    /// More `registration` settings, e.g. `("legacy_up_secret", json!("…"))`.
    pub registration: Vec<(&'static str, Value)>,
    /// More `delivery` settings, e.g. `("max_held", json!(1))`.
    pub delivery: Vec<(&'static str, Value)>,
    /// More `http` settings, e.g. `("max_connections", json!(10))`.
    pub http: Vec<(&'static str, Value)>,
    /// The `limits` section, e.g. `("per_endpoint", json!({"burst": 2, "every": "1h"}))`.
    pub limits: Vec<(&'static str, Value)>,
    /// The `metrics` section, e.g. `("listen", json!("127.0.0.1:9090"))`.
    pub metrics: Vec<(&'static str, Value)>,
    /// More environment for the process, e.g. `("HTTPS_PROXY", "http://127.0.0.1:1".into())`.
    pub env: Vec<(&'static str, String)>,
}

impl XupSettings {
    pub fn new(store: &Path) -> XupSettings {
        XupSettings {
            component_secret: COMPONENT_SECRET.into(),
            secrets: vec![SECRET_A.into()],
            timeout: "3s",
            allow: None,
            http_port: free_port(),
            store: store.to_owned(),
            store_url: None,
            store_ca_file: None,
            log_filter: "xup=debug",
            registration: Vec::new(),
            delivery: Vec::new(),
            http: Vec::new(),
            limits: Vec::new(),
            metrics: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Rate limits so high that a load test never meets them: for measuring xup, not its limits.
    pub fn without_rate_limits(&mut self) {
        let unlimited = json!({ "burst": u32::MAX, "every": "1ms" });
        self.limits = [
            "per_endpoint",
            "per_address",
            "forged_tokens_per_address",
            "registrations_per_account",
        ]
        .into_iter()
        .map(|name| (name, unlimited.clone()))
        .collect();
    }

    /// The config for an xup whose XMPP server takes components on `component_port`.
    pub fn config_json(&self, component_port: u16) -> Value {
        let mut registration = json!({ "secrets": self.secrets });
        if let Some(allow) = &self.allow {
            registration["allow"] = json!(allow);
        }
        // A section's base settings, with the test's own on top.
        let section = |mut base: Value, entries: &[(&str, Value)]| {
            for (key, value) in entries {
                base[*key] = value.clone();
            }
            base
        };
        let registration = section(registration, &self.registration);
        let delivery = section(json!({ "timeout": self.timeout }), &self.delivery);
        let http = section(
            json!({
                "listen": format!("127.0.0.1:{}", self.http_port),
                "public_url": format!("http://127.0.0.1:{}", self.http_port),
            }),
            &self.http,
        );
        json!({
            "component": {
                "jid": COMPONENT,
                "server": format!("127.0.0.1:{component_port}"),
                "secret": self.component_secret,
            },
            "http": http,
            "registration": registration,
            "delivery": delivery,
            // The tests' Web Push receivers listen on loopback.
            "app_server": { "allow_private_endpoints": ["127.0.0.0/8"] },
            "limits": section(json!({}), &self.limits),
            "metrics": section(json!({}), &self.metrics),
            "store": match &self.store_url {
                Some(url) => match &self.store_ca_file {
                    Some(ca_file) => json!({ "url": url, "ca_file": ca_file }),
                    None => json!({ "url": url }),
                },
                None => json!({ "path": self.store }),
            },
        })
    }
}

/// A running `xup` binary whose log lines can be waited for.
pub struct Xup {
    child: Child,
    logs: mpsc::UnboundedReceiver<String>,
    history: Arc<Mutex<Vec<String>>>,
    /// The task that reads xup's stderr; aborting it closes the pipe's reading end.
    reader: tokio::task::JoinHandle<()>,
    pub base_url: String,
    _config: tempfile::NamedTempFile,
}

impl Xup {
    /// Start the xup at `binary` and return once it serves HTTP and its component link is up.
    pub async fn start(binary: &Path, component_port: u16, settings: &XupSettings) -> Xup {
        let mut xup = Xup::spawn(binary, component_port, settings);
        xup.wait_logs(vec!["listening for pushes", "component link up"])
            .await;
        xup
    }

    /// Start one more xup on a PostgreSQL store that another already leads, and return once it
    /// serves HTTP and stands by.
    pub async fn start_standby(binary: &Path, component_port: u16, settings: &XupSettings) -> Xup {
        let mut xup = Xup::spawn(binary, component_port, settings);
        xup.wait_logs(vec!["listening for pushes", "standing by"])
            .await;
        xup
    }

    /// Wait for a log line containing each of `awaited`. Parts of xup come up concurrently, so
    /// their lines arrive in any order.
    async fn wait_logs(&mut self, mut awaited: Vec<&str>) {
        while !awaited.is_empty() {
            let what = format!("xup logging {awaited:?}");
            let line = first_matching(&mut self.logs, &what, |line| {
                awaited.iter().any(|needle| line.contains(needle))
            })
            .await;
            awaited.retain(|needle| !line.contains(needle));
        }
    }

    /// Start xup without waiting for anything.
    pub fn spawn(binary: &Path, component_port: u16, settings: &XupSettings) -> Xup {
        let config = tempfile::NamedTempFile::new().expect("config file");
        std::fs::write(
            config.path(),
            settings.config_json(component_port).to_string(),
        )
        .expect("write config");
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config.path())
            .env("RUST_LOG", settings.log_filter)
            .envs(settings.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, logs) = mpsc::unbounded_channel();
        let history = Arc::new(Mutex::new(Vec::new()));
        let written = history.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("xup| {line}");
                if let Ok(mut written) = written.lock() {
                    written.push(line.clone());
                }
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Xup {
            child,
            logs,
            history,
            reader,
            base_url: format!("http://127.0.0.1:{}", settings.http_port),
            _config: config,
        }
    }

    /// The config file xup runs with, for running its other commands (`xup status`) beside it.
    pub fn config_path(&self) -> &Path {
        self._config.path()
    }

    /// The process id, for reading xup's CPU time and memory from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Wait for a log line containing `needle`; lines before it are consumed.
    pub async fn wait_log(&mut self, needle: &str) -> String {
        let what = format!("xup logging {needle:?}");
        first_matching(&mut self.logs, &what, |line| line.contains(needle)).await
    }

    /// Wait until xup has its component link again after the XMPP server came back. Its
    /// reconnect backoff is capped at 30 s (`component.rs`), so after a slow restart the next
    /// attempt may be that far off: the bound is the cap and [`WAIT`] more.
    pub async fn wait_reconnected(&mut self) -> String {
        first_matching_within(
            &mut self.logs,
            "xup logging \"component link up\" again",
            |line| line.contains("component link up"),
            RECONNECT_CAP + WAIT,
        )
        .await
    }

    /// Every log line xup has written so far, awaited or not.
    pub fn logs_so_far(&self) -> Vec<String> {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Stop reading xup's stderr and close the pipe, as a log collector that dies does: from
    /// now on every line xup writes fails. No log line can be awaited after this.
    pub async fn close_logs(&mut self) {
        self.reader.abort();
        let _ = (&mut self.reader).await;
    }

    /// Kill xup hard (SIGKILL), as a crash or an OOM kill would, and wait until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Stop xup the way systemd does (SIGTERM) and wait for it to exit.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        timeout(WAIT, self.child.wait())
            .await
            .expect("xup exits after SIGTERM")
            .expect("xup exit status")
    }
}
