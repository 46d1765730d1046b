//! The real parts xup's end-to-end tests run against: a throwaway Prosody on loopback ports, the
//! `xup` binary itself, and scripted XMPP clients (`tests/peer/peer.py`, slixmpp) that play the
//! distributor. Every process is killed when its handle drops, and every wait has a deadline.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
    time::timeout,
};

pub const DOMAIN: &str = "localhost";
/// A second host on the same server, outside xup's default access list.
pub const OTHER_DOMAIN: &str = "elsewhere.test";
pub const COMPONENT: &str = "up.localhost";
pub const COMPONENT_SECRET: &str = "component-secret-for-tests";
pub const PASSWORD: &str = "password";
pub const SECRET_A: &str = "endpoint-secret-A-0123456789";
pub const SECRET_B: &str = "endpoint-secret-B-0123456789";

pub const APP: &str = "bK3sdmrbtj3bf6XA2S12b8jJUA5TT1dhPEyeoZfVSRM=";
pub const INSTANCE: &str = "EtD/1XPLmoIph7W73CZ/uyv6FAnhEAXY1GySHX17vAw=";
pub const UP_NS: &str = "http://gultsch.de/xmpp/drafts/unified-push";

/// Bound on anything a test waits for: generous for a loaded CI machine, yet no test hangs.
pub const WAIT: Duration = Duration::from_secs(20);

/// A port that was free a moment ago on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A Prosody of its own, on loopback, with accounts made on demand.
pub struct Prosody {
    dir: TempDir,
    pub c2s_port: u16,
    pub component_port: u16,
    child: Option<Child>,
}

impl Prosody {
    pub async fn start() -> Prosody {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut prosody = Prosody {
            c2s_port: free_port(),
            component_port: free_port(),
            dir,
            child: None,
        };
        let template = include_str!("../prosody/prosody.cfg.lua.in");
        let config = template
            .replace("@ROOT@", &prosody.dir.path().display().to_string())
            .replace("@C2S_PORT@", &prosody.c2s_port.to_string())
            .replace("@COMPONENT_PORT@", &prosody.component_port.to_string())
            .replace("@DOMAIN@", DOMAIN)
            .replace("@OTHER_DOMAIN@", OTHER_DOMAIN)
            .replace("@COMPONENT@", COMPONENT)
            .replace("@COMPONENT_SECRET@", COMPONENT_SECRET);
        std::fs::write(prosody.config_path(), config).expect("write prosody config");
        prosody.launch().await;
        prosody
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("prosody.cfg.lua")
    }

    /// Create `user@domain` with the shared test password (Prosody's internal_plain file format).
    pub fn add_user(&self, user: &str, domain: &str) {
        // Prosody stores hosts with '.' encoded as %2e.
        let host_dir = domain.replace('.', "%2e");
        let accounts = self.dir.path().join("data").join(host_dir).join("accounts");
        std::fs::create_dir_all(&accounts).expect("accounts dir");
        std::fs::write(
            accounts.join(format!("{user}.dat")),
            format!("return {{\n\t[\"password\"] = \"{PASSWORD}\";\n}};\n"),
        )
        .expect("write account");
    }

    async fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("prosody.out")).expect("log file");
        let child = Command::new("prosody")
            .arg("--config")
            .arg(self.config_path())
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("prosody is installed (scripts/test installs it)");
        self.child = Some(child);
        for port in [self.c2s_port, self.component_port] {
            wait_for_port(port).await;
        }
    }

    /// Kill Prosody hard, as a crash or an OOM kill would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }
}

/// The first item from `items` that `matches`, skipping the others; panics (naming `what`) if
/// the sender ends or nothing matches within [`WAIT`].
async fn first_matching<T>(
    items: &mut mpsc::UnboundedReceiver<T>,
    what: &str,
    matches: impl Fn(&T) -> bool,
) -> T {
    let found = async {
        while let Some(item) = items.recv().await {
            if matches(&item) {
                return Some(item);
            }
        }
        None
    };
    match timeout(WAIT, found).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("the process ended before {what}"),
        Err(_) => panic!("no {what} within {WAIT:?}"),
    }
}

/// Wait until something accepts connections on `port` (the only readiness signal Prosody gives).
async fn wait_for_port(port: u16) {
    let ready = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(WAIT, ready)
        .await
        .unwrap_or_else(|_| panic!("nothing listens on port {port}"));
}

/// Settings for one xup run; `store` outlives the process so restarts can be tested.
pub struct XupSettings {
    pub component_secret: String,
    pub secrets: Vec<String>,
    pub timeout: &'static str,
    pub allow: Option<Vec<String>>,
    pub http_port: u16,
    pub store: PathBuf,
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
        }
    }

    pub fn config_json(&self, prosody: &Prosody) -> Value {
        let mut registration = json!({ "secrets": self.secrets });
        if let Some(allow) = &self.allow {
            registration["allow"] = json!(allow);
        }
        json!({
            "component": {
                "jid": COMPONENT,
                "server": format!("127.0.0.1:{}", prosody.component_port),
                "secret": self.component_secret,
            },
            "http": {
                "listen": format!("127.0.0.1:{}", self.http_port),
                "public_url": format!("http://127.0.0.1:{}", self.http_port),
            },
            "registration": registration,
            "delivery": { "timeout": self.timeout },
            "store": { "path": self.store },
        })
    }
}

/// A running `xup` binary whose log lines the test can wait for.
pub struct Xup {
    child: Child,
    logs: mpsc::UnboundedReceiver<String>,
    pub base_url: String,
    _config: tempfile::NamedTempFile,
}

impl Xup {
    /// Start xup and return once it serves HTTP and its component link is up.
    pub async fn start(prosody: &Prosody, settings: &XupSettings) -> Xup {
        let mut xup = Xup::spawn(prosody, settings);
        // HTTP and the component link come up concurrently: their lines arrive in either order.
        let mut awaited = vec!["listening for pushes", "component link up"];
        while !awaited.is_empty() {
            let what = format!("xup logging {awaited:?}");
            let line = first_matching(&mut xup.logs, &what, |line| {
                awaited.iter().any(|needle| line.contains(needle))
            })
            .await;
            awaited.retain(|needle| !line.contains(needle));
        }
        xup
    }

    /// Start xup without waiting for anything.
    pub fn spawn(prosody: &Prosody, settings: &XupSettings) -> Xup {
        let config = tempfile::NamedTempFile::new().expect("config file");
        std::fs::write(config.path(), settings.config_json(prosody).to_string())
            .expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_xup"))
            .arg("--config")
            .arg(config.path())
            .env("RUST_LOG", "xup=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("xup binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, logs) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("xup| {line}");
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Xup {
            child,
            logs,
            base_url: format!("http://127.0.0.1:{}", settings.http_port),
            _config: config,
        }
    }

    /// Wait for a log line containing `needle`; lines before it are consumed.
    pub async fn wait_log(&mut self, needle: &str) -> String {
        let what = format!("xup logging {needle:?}");
        first_matching(&mut self.logs, &what, |line| line.contains(needle)).await
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

/// What a successful `<register>` returned.
#[derive(Debug)]
pub struct Registered {
    pub endpoint: String,
    pub expiration: String,
}

/// A stanza error as the client saw it.
#[derive(Debug, PartialEq)]
pub struct IqFailure {
    pub condition: String,
    pub error_type: String,
}

/// One `<push>` as the client received it.
#[derive(Debug)]
pub struct ReceivedPush {
    pub from: String,
    pub to: String,
    pub application: String,
    pub instance: String,
    pub data: Vec<u8>,
}

/// A connected XMPP client playing the distributor.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    pushes: mpsc::UnboundedReceiver<Value>,
    events: mpsc::UnboundedReceiver<Value>,
    pub jid: String,
    next_ref: u64,
}

fn python() -> PathBuf {
    match std::env::var_os("XUP_TEST_PYTHON") {
        Some(path) => path.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3"),
    }
}

impl Peer {
    /// Log in as `user@domain/resource` and return once the session is up.
    pub async fn connect(prosody: &Prosody, user: &str, domain: &str, resource: &str) -> Peer {
        prosody.add_user(user, domain);
        let mut child = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peer/peer.py"))
            .args(["--jid", &format!("{user}@{domain}/{resource}")])
            .args(["--password", PASSWORD])
            .args(["--port", &prosody.c2s_port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the test peer runs (scripts/test installs slixmpp into .venv)");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (push_sender, pushes) = mpsc::unbounded_channel();
        let (event_sender, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("peer| {line}");
                    continue;
                };
                let sender = if event["event"] == "push" {
                    &push_sender
                } else {
                    &event_sender
                };
                if sender.send(event).is_err() {
                    break;
                }
            }
        });
        let mut peer = Peer {
            child,
            stdin,
            pushes,
            events,
            jid: String::new(),
            next_ref: 0,
        };
        let online = peer.next_event("online").await;
        peer.jid = online["jid"].as_str().expect("jid").to_owned();
        peer
    }

    async fn next_event(&mut self, kind: &str) -> Value {
        let what = format!("a {kind:?} event from the peer");
        first_matching(&mut self.events, &what, |e| e["event"] == kind).await
    }

    /// The `kind` event that answers command `sent`.
    async fn reply_to(&mut self, kind: &str, sent: u64) -> Value {
        let what = format!("a {kind:?} event for command {sent}");
        first_matching(&mut self.events, &what, |e| {
            e["event"] == kind && e["ref"] == sent
        })
        .await
    }

    async fn command(&mut self, mut command: Value) -> u64 {
        self.next_ref += 1;
        command["ref"] = json!(self.next_ref);
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("peer stdin");
        self.next_ref
    }

    /// Send an IQ and return the peer's report of its answer.
    pub async fn iq(&mut self, kind: &str, to: &str, xml: &str) -> Value {
        let sent = self
            .command(json!({ "cmd": "iq", "type": kind, "to": to, "xml": xml }))
            .await;
        self.reply_to("iq", sent).await
    }

    /// `<register>` with exactly these attributes (`None` leaves one out).
    pub async fn register_raw(
        &mut self,
        application: Option<&str>,
        instance: Option<&str>,
    ) -> Result<Registered, IqFailure> {
        let mut xml = format!("<register xmlns='{UP_NS}'");
        if let Some(a) = application {
            xml += &format!(" application='{a}'");
        }
        if let Some(i) = instance {
            xml += &format!(" instance='{i}'");
        }
        xml += "/>";
        let answer = self.iq("set", COMPONENT, &xml).await;
        if answer["type"] == "result" {
            let attrs = &answer["payload"]["attrs"];
            assert_eq!(answer["payload"]["name"], "registered");
            assert_eq!(answer["payload"]["ns"], UP_NS);
            Ok(Registered {
                endpoint: attrs["endpoint"].as_str().expect("endpoint").to_owned(),
                expiration: attrs["expiration"].as_str().expect("expiration").to_owned(),
            })
        } else {
            Err(IqFailure {
                condition: answer["condition"].as_str().unwrap_or_default().to_owned(),
                error_type: answer["error_type"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }

    pub async fn register(&mut self, application: &str, instance: &str) -> Registered {
        self.register_raw(Some(application), Some(instance))
            .await
            .expect("registration succeeds")
    }

    /// How to answer pushes from now on: "result", "silent", or a stanza error condition.
    pub async fn answer_with(&mut self, mode: &str) {
        let sent = self.command(json!({ "cmd": "answer", "with": mode })).await;
        loop {
            let event = self.next_event("ack").await;
            if event["ref"] == sent {
                return;
            }
        }
    }

    /// The next push this client receives.
    pub async fn next_push(&mut self) -> ReceivedPush {
        let event = timeout(WAIT, self.pushes.recv())
            .await
            .expect("a push arrives in time")
            .expect("peer still running");
        let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
        use base64::Engine;
        ReceivedPush {
            from: text("from"),
            to: text("to"),
            application: text("application"),
            instance: text("instance"),
            data: base64::engine::general_purpose::STANDARD
                .decode(text("data"))
                .expect("push data is standard base64"),
        }
    }

    /// Log out and wait until the client process has ended.
    pub async fn quit(mut self) {
        let _ = self.command(json!({ "cmd": "quit" })).await;
        let _ = timeout(WAIT, self.child.wait()).await;
    }
}

/// POST `body` to `url`.
pub async fn post(url: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .body(body)
        .send()
        .await
        .expect("HTTP request to xup")
}
