//! The parts of xup's end-to-end tests beyond the shared testbed (a throwaway Prosody and the
//! `xup` binary, see `testbed/`): scripted XMPP clients (`tests/peer/peer.py`, slixmpp) that play
//! the distributor. Every process is killed when its handle drops, and every wait has a deadline.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
    time::{Instant, timeout},
};
pub use xup_testbed::*;

pub const APP: &str = "bK3sdmrbtj3bf6XA2S12b8jJUA5TT1dhPEyeoZfVSRM=";
pub const INSTANCE: &str = "EtD/1XPLmoIph7W73CZ/uyv6FAnhEAXY1GySHX17vAw=";
pub const UP_NS: &str = "http://gultsch.de/xmpp/drafts/unified-push";

/// A second app on the same device, for "the other app is unaffected".
pub fn other_app() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
}

/// The xup binary under test, as Cargo built it for this test run.
pub fn xup_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xup"))
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
    /// The IQ id, which is also the message id in `Location`.
    pub id: String,
    pub from: String,
    pub to: String,
    pub application: String,
    pub instance: String,
    /// The `<push>`'s `id` and `urgency` attributes, if it had them.
    pub message_id: Option<String>,
    pub urgency: Option<String>,
    pub data: Vec<u8>,
}

/// One `<message>` of sum7's dialect as the client received it.
#[derive(Debug)]
pub struct ReceivedMessage {
    pub id: String,
    pub from: String,
    pub to: String,
    pub type_: String,
    pub subject: String,
    pub body: String,
}

/// What `register-push-webpush` answered: where the client's server is to publish.
#[derive(Debug, Clone)]
pub struct PushNode {
    pub jid: String,
    pub node: String,
    pub secret: String,
    pub vapid_public_key: String,
}

/// sum7's namespace.
pub const SUM7_NS: &str = "unifiedpush.org";

/// How a refused sum7 request looked: the stanza error, and the dialect's own `<error>` text.
#[derive(Debug)]
pub struct Sum7Failure {
    pub failure: IqFailure,
    pub error_text: String,
}

fn received_push(event: &Value) -> ReceivedPush {
    let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
    use base64::Engine;
    ReceivedPush {
        id: text("id"),
        from: text("from"),
        to: text("to"),
        application: text("application"),
        instance: text("instance"),
        message_id: event["message_id"].as_str().map(str::to_owned),
        urgency: event["urgency"].as_str().map(str::to_owned),
        data: base64::engine::general_purpose::STANDARD
            .decode(text("data"))
            .expect("push data is standard base64"),
    }
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
    pub async fn connect(server: &Server, user: &str, domain: &str, resource: &str) -> Peer {
        Peer::start(server, user, domain, resource, &[]).await
    }

    /// [`Peer::connect`], with stream management (XEP-0198) enabled, as Conversations has it.
    pub async fn connect_resumable(
        server: &Server,
        user: &str,
        domain: &str,
        resource: &str,
    ) -> Peer {
        Peer::start(server, user, domain, resource, &["--stream-management"]).await
    }

    async fn start(
        server: &Server,
        user: &str,
        domain: &str,
        resource: &str,
        flags: &[&str],
    ) -> Peer {
        server.add_user(user, domain).await;
        let mut child = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peer/peer.py"))
            .args(["--jid", &format!("{user}@{domain}/{resource}")])
            .args(["--password", PASSWORD])
            .args(["--port", &server.c2s_port().to_string()])
            .args(flags)
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

    /// The features the component advertises (disco#info), asserting it answers.
    pub async fn disco_features(&mut self) -> Vec<String> {
        let disco = self
            .iq(
                "get",
                COMPONENT,
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            )
            .await;
        assert_eq!(disco["type"], "result");
        assert_eq!(disco["payload"]["name"], "query");
        disco["payload"]["children"]
            .as_array()
            .expect("children")
            .iter()
            .filter(|c| c["name"] == "feature")
            .filter_map(|c| c["attrs"]["var"].as_str().map(str::to_owned))
            .collect()
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
        self.register_xml(&xml).await.map_err(|answer| IqFailure {
            condition: answer["condition"].as_str().unwrap_or_default().to_owned(),
            error_type: answer["error_type"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// `<register>` bound to the application server key `vapid`: the endpoint, or the whole
    /// error answer (its `condition`, `error_type` and `text`).
    pub async fn register_vapid(
        &mut self,
        application: &str,
        instance: &str,
        vapid: &str,
    ) -> Result<Registered, Value> {
        let xml = format!(
            "<register xmlns='{UP_NS}' application='{application}' instance='{instance}' \
             vapid='{vapid}'/>"
        );
        self.register_xml(&xml).await
    }

    async fn register_xml(&mut self, xml: &str) -> Result<Registered, Value> {
        let answer = self.iq("set", COMPONENT, xml).await;
        if answer["type"] != "result" {
            return Err(answer);
        }
        let attrs = &answer["payload"]["attrs"];
        assert_eq!(answer["payload"]["name"], "registered");
        assert_eq!(answer["payload"]["ns"], UP_NS);
        Ok(Registered {
            endpoint: attrs["endpoint"].as_str().expect("endpoint").to_owned(),
            expiration: attrs["expiration"].as_str().expect("expiration").to_owned(),
        })
    }

    pub async fn register(&mut self, application: &str, instance: &str) -> Registered {
        self.register_raw(Some(application), Some(instance))
            .await
            .expect("registration succeeds")
    }

    /// sum7's `<register>` (or `<unregister>`, by `element`) with `token`: the text of the answer's
    /// first child (`<endpoint>` or `<success>`), or the refusal.
    async fn sum7(&mut self, element: &str, token: &str) -> Result<(String, String), Sum7Failure> {
        self.sum7_with(element, &format!("<token>{token}</token>"))
            .await
    }

    /// [`Peer::sum7`] with these children.
    async fn sum7_with(
        &mut self,
        element: &str,
        children: &str,
    ) -> Result<(String, String), Sum7Failure> {
        let xml = format!("<{element} xmlns='{SUM7_NS}'>{children}</{element}>");
        let answer = self.iq("set", COMPONENT, &xml).await;
        let payload = &answer["payload"];
        let child = &payload["children"][0];
        let text = child["text"].as_str().unwrap_or_default().to_owned();
        if answer["type"] == "result" {
            assert_eq!(payload["name"], element, "{answer}");
            assert_eq!(payload["ns"], SUM7_NS, "{answer}");
            let name = child["name"].as_str().unwrap_or_default().to_owned();
            Ok((name, text))
        } else {
            assert_eq!(
                payload["name"], element,
                "the refusal carries <{element}>: {answer}"
            );
            assert_eq!(child["name"], "error", "{answer}");
            Err(Sum7Failure {
                failure: IqFailure {
                    condition: answer["condition"].as_str().unwrap_or_default().to_owned(),
                    error_type: answer["error_type"].as_str().unwrap_or_default().to_owned(),
                },
                error_text: text,
            })
        }
    }

    /// sum7's `<register>`: the endpoint, or the refusal.
    pub async fn sum7_register(&mut self, token: &str) -> Result<String, Sum7Failure> {
        let (name, endpoint) = self.sum7("register", token).await?;
        assert_eq!(name, "endpoint");
        Ok(endpoint)
    }

    /// sum7's `<register>` with a `<vapid>` key: the endpoint, or the refusal.
    pub async fn sum7_register_vapid(
        &mut self,
        token: &str,
        vapid: &str,
    ) -> Result<String, Sum7Failure> {
        let children = format!("<token>{token}</token><vapid>{vapid}</vapid>");
        let (name, endpoint) = self.sum7_with("register", &children).await?;
        assert_eq!(name, "endpoint");
        Ok(endpoint)
    }

    /// sum7's `<unregister>`; panics unless it is answered `<success/>`.
    pub async fn sum7_unregister(&mut self, token: &str) {
        self.sum7_try_unregister(token).await.expect("unregistered");
    }

    /// sum7's `<unregister>`: `<success/>`, or the refusal.
    pub async fn sum7_try_unregister(&mut self, token: &str) -> Result<(), Sum7Failure> {
        let (name, _) = self.sum7("unregister", token).await?;
        assert_eq!(name, "success");
        Ok(())
    }

    /// The next `<message>` of sum7's dialect this client receives.
    pub async fn next_message(&mut self) -> ReceivedMessage {
        let event = first_matching(&mut self.events, "a sum7 message", |e| {
            e["event"] == "message"
        })
        .await;
        let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
        ReceivedMessage {
            id: text("id"),
            from: text("from"),
            to: text("to"),
            type_: text("type"),
            subject: text("subject"),
            body: text("body"),
        }
    }

    /// How to answer pushes from now on: "result", "silent", or a stanza error condition.
    pub async fn answer_with(&mut self, mode: &str) {
        let sent = self.command(json!({ "cmd": "answer", "with": mode })).await;
        self.reply_to("ack", sent).await;
    }

    /// How to answer pushes for `application` only, from now on.
    pub async fn answer_for(&mut self, application: &str, mode: &str) {
        let command = json!({ "cmd": "answer", "with": mode, "application": application });
        let sent = self.command(command).await;
        self.reply_to("ack", sent).await;
    }

    /// Lose the TCP connection without closing the stream (needs [`Peer::connect_resumable`]):
    /// the server keeps the session, hibernated, and queues what is sent to it.
    pub async fn drop_connection(&mut self) {
        let sent = self.command(json!({ "cmd": "drop" })).await;
        self.reply_to("ack", sent).await;
    }

    /// Connect again and resume the hibernated session; panics if the server refuses.
    pub async fn resume(&mut self) {
        self.command(json!({ "cmd": "resume" })).await;
        let event = first_matching(&mut self.events, "the session resumed or a new one", |e| {
            e["event"] == "resumed" || e["event"] == "online"
        })
        .await;
        assert_eq!(event["event"], "resumed", "the server resumed the session");
    }

    /// Answer pushes with `result`, but only `delay` after each arrives.
    pub async fn answer_late(&mut self, delay: Duration) {
        let command =
            json!({ "cmd": "answer", "with": "late", "delay_ms": delay.as_millis() as u64 });
        let sent = self.command(command).await;
        self.reply_to("ack", sent).await;
    }

    /// Wait until a late answer to the push with IQ id `id` has been sent.
    pub async fn answered(&mut self, id: &str) {
        let what = format!("a late answer to {id}");
        first_matching(&mut self.events, &what, |e| {
            e["event"] == "answered" && e["id"] == id
        })
        .await;
    }

    /// Run app-server command `node` with the submitted `fields`: the answer's form fields, or
    /// the refusal.
    pub async fn ad_hoc(
        &mut self,
        node: &str,
        fields: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>, IqFailure> {
        self.ad_hoc_as(node, Some("execute"), fields).await
    }

    /// [`Peer::ad_hoc`] with the given `action` (`None` leaves the attribute out, as some clients
    /// do).
    pub async fn ad_hoc_as(
        &mut self,
        node: &str,
        action: Option<&str>,
        fields: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>, IqFailure> {
        let answer = self.ad_hoc_fields(node, action, fields).await?;
        Ok(answer
            .into_iter()
            .map(|(var, values)| (var, values.into_iter().next().unwrap_or_default()))
            .collect())
    }

    /// [`Peer::ad_hoc_as`], with every value of each field (a `text-multi` has many).
    pub async fn ad_hoc_fields(
        &mut self,
        node: &str,
        action: Option<&str>,
        fields: &[(&str, &str)],
    ) -> Result<Vec<(String, Vec<String>)>, IqFailure> {
        let fields: String = fields
            .iter()
            .map(|(var, value)| format!("<field var='{var}'><value>{value}</value></field>"))
            .collect();
        let action = action.map_or(String::new(), |a| format!(" action='{a}'"));
        let xml = format!(
            "<command xmlns='http://jabber.org/protocol/commands' node='{node}'{action}>\
             <x xmlns='jabber:x:data' type='submit'>{fields}</x></command>"
        );
        let answer = self.iq("set", COMPONENT, &xml).await;
        if answer["type"] != "result" {
            return Err(IqFailure {
                condition: answer["condition"].as_str().unwrap_or_default().to_owned(),
                error_type: answer["error_type"].as_str().unwrap_or_default().to_owned(),
            });
        }
        let xml = answer["payload"]["xml"].as_str().expect("the answer's XML");
        let command = xup::commands::wire::Command::try_from(
            xml.parse::<xmpp_parsers::minidom::Element>().expect("XML"),
        )
        .expect("a <command>");
        assert_eq!(command.status.as_deref(), Some("completed"));
        Ok(command
            .form
            .map(|form| {
                form.fields
                    .into_iter()
                    .filter_map(|f| Some((f.var?, f.values)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `register-push-webpush` for `endpoint`, with RFC 8291 keys `(p256dh, auth)` in base64url.
    pub async fn register_web_push(
        &mut self,
        endpoint: &str,
        keys: Option<(&str, &str)>,
    ) -> Result<PushNode, IqFailure> {
        let mut fields = vec![("endpoint", endpoint), ("device-name", "test phone")];
        if let Some((p256dh, auth)) = keys {
            fields.extend([("p256dh", p256dh), ("auth", auth)]);
        }
        let answer = self.ad_hoc("register-push-webpush", &fields).await?;
        let value = |var: &str| {
            answer
                .iter()
                .find(|(v, _)| v == var)
                .map(|(_, value)| value.clone())
                .unwrap_or_else(|| panic!("no {var} in {answer:?}"))
        };
        Ok(PushNode {
            jid: value("jid"),
            node: value("node"),
            secret: value("secret"),
            vapid_public_key: value("vapid-public-key"),
        })
    }

    /// Enable XEP-0357 push on our own server, publishing to `node` (as Conversations does: to
    /// the account itself, where servers take it).
    pub async fn enable_push(&mut self, node: &PushNode) {
        let account = self.jid.split('/').next().expect("account").to_owned();
        let xml = format!(
            "<enable xmlns='urn:xmpp:push:0' jid='{}' node='{}'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='secret'><value>{}</value></field></x></enable>",
            node.jid, node.node, node.secret
        );
        let answer = self.iq("set", &account, &xml).await;
        assert_eq!(answer["type"], "result", "{answer}");
    }

    /// Send a chat message to `to`.
    pub async fn send_message(&mut self, to: &str, body: &str) {
        let sent = self
            .command(json!({ "cmd": "message", "to": to, "body": body }))
            .await;
        self.reply_to("ack", sent).await;
    }

    /// Tell xup we are here, as Conversations does when it comes online: directed presence.
    pub async fn announce(&mut self) {
        let sent = self
            .command(json!({ "cmd": "presence", "to": COMPONENT }))
            .await;
        self.reply_to("ack", sent).await;
    }

    /// [`Peer::announce`], taking only messages at least as urgent as `minimum` for now; returns
    /// once xup has read it (a ping sent after it is answered: the server keeps their order).
    pub async fn announce_minimum_urgency(&mut self, minimum: &str) {
        let sent = self
            .command(json!({ "cmd": "presence", "to": COMPONENT, "minimum_urgency": minimum }))
            .await;
        self.reply_to("ack", sent).await;
        let pong = self
            .iq("get", COMPONENT, "<ping xmlns='urn:xmpp:ping'/>")
            .await;
        assert_eq!(pong["type"], "result", "{pong}");
    }

    /// The next push this client receives.
    pub async fn next_push(&mut self) -> ReceivedPush {
        self.next_push_within(WAIT).await
    }

    /// The next push this client receives; panics if none comes within `deadline`.
    pub async fn next_push_within(&mut self, deadline: Duration) -> ReceivedPush {
        let event = timeout(deadline, self.pushes.recv())
            .await
            .expect("a push arrives in time")
            .expect("peer still running");
        received_push(&event)
    }

    /// Every push this client has received and the test has not taken yet; does not wait.
    pub fn pushes_so_far(&mut self) -> Vec<ReceivedPush> {
        let mut pushes = Vec::new();
        while let Ok(event) = self.pushes.try_recv() {
            pushes.push(received_push(&event));
        }
        pushes
    }

    /// Log out and wait until the client process has ended.
    pub async fn quit(mut self) {
        let _ = self.command(json!({ "cmd": "quit" })).await;
        let _ = timeout(WAIT, self.child.wait()).await;
    }

    /// Quit, and wait until `server` has ended this session too, for a test about what the server
    /// does for an account that is away. A quit is over when the client's side is closed, which
    /// the server may not have acted on yet; once it has, it answers an IQ to this full JID itself,
    /// with `service-unavailable` (RFC 6121 §8.5.3.2.3), instead of passing it on.
    pub async fn leave(self, server: &Server) {
        let jid = self.jid.clone();
        self.quit().await;
        let mut watcher = Peer::connect(server, "watcher", DOMAIN, "watcher").await;
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = watcher
                .iq("get", &jid, "<ping xmlns='urn:xmpp:ping'/>")
                .await;
            if answer["type"] == "error" && answer["condition"] == "service-unavailable" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server still has a session for {jid}: {answer}"
            );
        }
        watcher.quit().await;
    }
}

/// An application server's VAPID key pair, kept and used by py_vapid (`tests/peer/vapid.py`), as
/// a Python application server signs.
pub struct VapidSigner {
    pem: PathBuf,
    /// The public key as it goes in `k=` and in a client's registration.
    pub key: String,
    _dir: tempfile::TempDir,
}

impl VapidSigner {
    pub fn new() -> VapidSigner {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("vapid.pem");
        let key = vapid_py(&["new", pem.to_str().expect("utf-8")]);
        VapidSigner {
            pem,
            key,
            _dir: dir,
        }
    }

    /// `Authorization` for a push to `url`'s origin (or to `audience`, when given), whose JWT
    /// expires `seconds` from now.
    pub fn header(&self, url: &str, seconds: i64) -> String {
        let origin = reqwest::Url::parse(url)
            .expect("a URL")
            .origin()
            .ascii_serialization();
        self.header_for(&origin, seconds)
    }

    pub fn header_for(&self, audience: &str, seconds: i64) -> String {
        let pem = self.pem.to_str().expect("utf-8");
        vapid_py(&["sign", pem, audience, &seconds.to_string()])
    }
}

fn vapid_py(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peer/vapid.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("the test's Python runs");
    assert!(
        out.status.success(),
        "vapid.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// POST `body` to `url` with extra request headers (`TTL`, `Topic`, …).
pub async fn post_with(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("HTTP request to xup")
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

/// GET `url`: the status and the body.
pub async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The value of the sample named exactly `sample` (labels included) in a Prometheus text page.
pub fn sample(page: &str, sample: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{page}"))
}

/// Prosody, one xup and a store that outlives xup restarts: a directory, or a PostgreSQL cluster
/// of its own when `XUP_TEST_STORE=postgres` (the suite's second run, `scripts/test`).
pub struct Stack {
    pub server: Server,
    pub xup: Xup,
    pub settings: XupSettings,
    _store: tempfile::TempDir,
    _postgres: Option<Postgres>,
}

/// Whether this run keeps xup's store in PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("XUP_TEST_STORE").is_ok_and(|store| store == "postgres")
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut XupSettings)) -> Stack {
        let server = Server::start().await;
        let store = tempfile::tempdir().expect("store dir");
        let mut settings = XupSettings::new(store.path());
        let postgres = match on_postgres() {
            true => Some(Postgres::start().await),
            false => None,
        };
        settings.store_url = postgres.as_ref().map(Postgres::url);
        adjust(&mut settings);
        let xup = Xup::start(xup_binary(), server.component_port(), &settings).await;
        Stack {
            server,
            xup,
            settings,
            _store: store,
            _postgres: postgres,
        }
    }

    pub async fn juliet(&self, resource: &str) -> Peer {
        Peer::connect(&self.server, "juliet", DOMAIN, resource).await
    }

    /// Run `statements` on xup's store, whichever it is, beside the running xup: for a test that
    /// must make the store say what no request can.
    pub fn store_sql(&self, statements: &str) {
        match &self._postgres {
            Some(postgres) => {
                postgres.psql(statements);
            }
            None => {
                let file = self.settings.store.join("xup.sqlite3");
                let db = rusqlite::Connection::open(file).expect("the store");
                db.busy_timeout(WAIT).expect("busy timeout");
                db.execute_batch(statements).expect("the statements run");
            }
        }
    }

    /// The value of `sample` on xup's `/metrics` page now.
    pub async fn metric(&self, name: &str) -> f64 {
        let (status, page) = get(&format!("{}/metrics", self.xup.base_url)).await;
        assert_eq!(status, 200, "{page}");
        sample(&page, name)
    }

    /// Stop xup and start it again with (possibly changed) settings and the same store.
    pub async fn restart_xup(&mut self, adjust: impl FnOnce(&mut XupSettings)) {
        adjust(&mut self.settings);
        assert!(self.xup.stop().await.success(), "xup exits 0 on SIGTERM");
        self.xup = Xup::start(xup_binary(), self.server.component_port(), &self.settings).await;
    }
}

/// Push `text` to a sum7 endpoint and check that `peer` receives exactly it, next, as a message.
pub async fn assert_message_sent(endpoint: &str, peer: &mut Peer, text: &str) {
    let response = post(endpoint, text.to_owned()).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["ttl"], "0");
    assert_eq!(peer.next_message().await.body, text);
}

/// Push `body` and check that `peer` receives exactly it, next.
pub async fn assert_delivered(endpoint: &str, peer: &mut Peer, body: &[u8]) {
    let response = post(endpoint, body.to_vec()).await;
    assert_eq!(response.status(), 201);
    let push = peer.next_push().await;
    assert_eq!(push.data, body);
}
