//! One benchmark client: an XMPP session that plays the distributor the way Conversations does.
//!
//! It logs in over c2s, registers endpoints on request, and answers every `<push>` IQ with an
//! empty `result` at once, recording in the [`Ledger`] when each message arrived and how often.
//! For the in-flight measurement it can instead hold its answers until told to release them, and
//! for the run under faults it can leave some apps' pushes unanswered for good, as a phone with a
//! hung app does.
//!
//! It sits on tokio-xmpp's XML stream layer rather than its `Client`, so that the load tool spends
//! as little CPU per push as it can: answers are written as they are made and flushed once per
//! batch of incoming stanzas, much as a phone's event loop would.
//!
//! After login, stanzas are handled as plain `minidom` elements in `jabber:client`, not as
//! xmpp-parsers types: xup builds xmpp-parsers with its `component` feature, which puts every
//! typed stanza in the component namespace, and Cargo unifies that feature across the workspace.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use base64::Engine;
use futures::{FutureExt, SinkExt, StreamExt};
use sasl::common::{ChannelBinding, Credentials};
use tokio::{
    io::BufStream,
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
};
use tokio_xmpp::xmlstream::{
    self, FallibleStreamElement, ReadError, StreamHeader, Timeouts, XmlStream,
};
use xmpp_parsers::{
    minidom::{Element, rxml::NcName},
    ns,
};
use xup::dialects::conversations::wire::{self, Register};

use crate::ledger::{Ledger, MessageId};

/// Incoming stanzas handled before one flush of the answers they caused.
const READ_BATCH: usize = 64;

type Stream = XmlStream<BufStream<TcpStream>, Element>;

/// What the benchmark asks of a session.
enum Command {
    Register {
        provider: String,
        application: String,
        instance: String,
        reply: oneshot::Sender<anyhow::Result<String>>,
    },
    /// Hold answers (true) or answer at once, first answering everything held (false).
    Hold(bool, oneshot::Sender<()>),
    /// Send directed presence to this JID, as Conversations tells its push provider it is back.
    Announce(String, oneshot::Sender<()>),
    /// Never answer (nor record) pushes for these applications from now on.
    Silence(HashSet<String>, oneshot::Sender<()>),
}

/// A handle on one logged-in session; the session ends when the handle drops.
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
}

impl Session {
    /// `count` users named `{prefix}{i}`, made on `server` and logged in at once, each answering
    /// pushes into `ledger`.
    pub async fn connect_many(
        server: &xup_testbed::Server,
        prefix: &str,
        count: usize,
        ledger: &watch::Receiver<Arc<Ledger>>,
    ) -> anyhow::Result<Vec<Session>> {
        futures::future::try_join_all((0..count).map(|i| {
            let user = format!("{prefix}{i}");
            let ledger = ledger.clone();
            async move {
                server.add_user(&user, xup_testbed::DOMAIN).await;
                Session::connect(
                    server.c2s_port(),
                    &user,
                    xup_testbed::DOMAIN,
                    xup_testbed::PASSWORD,
                    ledger,
                )
                .await
            }
        }))
        .await
    }

    /// Log in as `user@domain` on the c2s port and start answering pushes into `ledger`.
    pub async fn connect(
        port: u16,
        user: &str,
        domain: &str,
        password: &str,
        ledger: watch::Receiver<Arc<Ledger>>,
    ) -> anyhow::Result<Session> {
        let stream = login(port, user, domain, password)
            .await
            .with_context(|| format!("logging in {user}@{domain}"))?;
        let (commands, inbox) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut worker = Worker {
                ledger,
                pending: HashMap::new(),
                held: Vec::new(),
                holding: false,
                silent: HashSet::new(),
                next_id: 0,
            };
            if let Err(e) = worker.run(stream, inbox).await {
                eprintln!("xup-bench: a client session ended: {e:#}");
            }
        });
        Ok(Session { commands })
    }

    /// Register (`application`, `instance`) with the provider at JID `provider`; returns the
    /// endpoint URL.
    pub async fn register(
        &self,
        provider: &str,
        application: String,
        instance: String,
    ) -> anyhow::Result<String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Register {
                provider: provider.to_owned(),
                application,
                instance,
                reply,
            })
            .ok()
            .context("the session has ended")?;
        answer.await.context("the session has ended")?
    }

    /// Tell the provider at JID `to` that this client is online (directed presence).
    pub async fn announce(&self, to: &str) -> anyhow::Result<()> {
        let (done, sent) = oneshot::channel();
        self.commands
            .send(Command::Announce(to.to_owned(), done))
            .ok()
            .context("the session has ended")?;
        sent.await.context("the session has ended")
    }

    /// Whether the session is still connected.
    pub fn is_alive(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Leave pushes for `applications` unanswered and unrecorded from now on (an empty set ends
    /// that).
    pub async fn silence(&self, applications: HashSet<String>) -> anyhow::Result<()> {
        let (done, confirmed) = oneshot::channel();
        self.commands
            .send(Command::Silence(applications, done))
            .ok()
            .context("the session has ended")?;
        confirmed.await.context("the session has ended")
    }

    /// Hold answers to pushes from now on, or answer everything held and go back to answering.
    pub async fn hold(&self, hold: bool) -> anyhow::Result<()> {
        let (done, confirmed) = oneshot::channel();
        self.commands
            .send(Command::Hold(hold, done))
            .ok()
            .context("the session has ended")?;
        confirmed.await.context("the session has ended")
    }
}

/// c2s without TLS (loopback only): stream, SASL, stream restart, resource binding.
async fn login(port: u16, user: &str, domain: &str, password: &str) -> anyhow::Result<Stream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let timeouts = Timeouts {
        read_timeout: Duration::from_secs(600),
        response_timeout: Duration::from_secs(60),
    };
    let header = || StreamHeader {
        from: None,
        to: Some(domain.to_owned().into()),
        id: None,
    };
    let pending =
        xmlstream::initiate_stream(BufStream::new(tcp), ns::JABBER_CLIENT, header(), timeouts)
            .await?;
    let (features, stream) = pending
        .recv_features::<FallibleStreamElement>()
        .await
        .context("stream features")?;
    let credentials = Credentials::default()
        .with_username(user)
        .with_password(password)
        .with_channel_binding(ChannelBinding::None);
    let restarted = tokio_xmpp::client_login(stream, features.sasl_mechanisms, credentials)
        .await
        .context("SASL")?;
    let (_, mut stream) = restarted
        .send_header(header())
        .await?
        .recv_features::<Element>()
        .await?;
    let bind = Element::builder("bind", ns::BIND)
        .append(Element::builder("resource", ns::BIND).append("bench"))
        .build();
    let request = Element::builder("iq", ns::JABBER_CLIENT)
        .attr(name("type"), "set")
        .attr(name("id"), "bind")
        .append(bind)
        .build();
    stream.send(&request).await?;
    loop {
        match stream.next().await {
            Some(Ok(iq)) if iq.is("iq", ns::JABBER_CLIENT) && iq.attr("id") == Some("bind") => {
                if iq.attr("type") != Some("result") {
                    bail!("resource binding refused: {}", String::from(&iq));
                }
                return Ok(stream);
            }
            Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => continue,
            other => bail!("resource binding failed: {other:?}"),
        }
    }
}

/// An attribute name known to be valid XML.
fn name(name: &str) -> NcName {
    NcName::try_from(name).expect("a valid XML name")
}

struct Worker {
    ledger: watch::Receiver<Arc<Ledger>>,
    /// Registrations sent, by IQ id.
    pending: HashMap<String, oneshot::Sender<anyhow::Result<String>>>,
    /// Answers withheld while `holding`: (to, id).
    held: Vec<(String, String)>,
    holding: bool,
    /// Applications whose pushes are never answered.
    silent: HashSet<String>,
    next_id: u64,
}

impl Worker {
    async fn run(
        &mut self,
        mut stream: Stream,
        mut inbox: mpsc::UnboundedReceiver<Command>,
    ) -> anyhow::Result<()> {
        let mut out = Vec::new();
        loop {
            tokio::select! {
                command = inbox.recv() => match command {
                    None => return Ok(()),
                    Some(command) => self.command(command, &mut out),
                },
                item = stream.next() => {
                    self.incoming(item, &mut out)?;
                    for _ in 1..READ_BATCH {
                        match stream.next().now_or_never() {
                            Some(item) => self.incoming(item, &mut out)?,
                            None => break,
                        }
                    }
                }
            }
            if !out.is_empty() {
                for stanza in out.drain(..) {
                    stream.feed(&stanza).await?;
                }
                SinkExt::<&Element>::flush(&mut stream).await?;
            }
        }
    }

    fn command(&mut self, command: Command, out: &mut Vec<Element>) {
        match command {
            Command::Register {
                provider,
                application,
                instance,
                reply,
            } => {
                self.next_id += 1;
                let id = format!("reg-{}", self.next_id);
                let register = Register {
                    application,
                    instance,
                    vapid: None,
                };
                out.push(
                    Element::builder("iq", ns::JABBER_CLIENT)
                        .attr(name("type"), "set")
                        .attr(name("id"), id.as_str())
                        .attr(name("to"), provider)
                        .append(Element::from(register))
                        .build(),
                );
                self.pending.insert(id, reply);
            }
            Command::Announce(to, done) => {
                out.push(
                    Element::builder("presence", ns::JABBER_CLIENT)
                        .attr(name("to"), to)
                        .build(),
                );
                let _ = done.send(());
            }
            Command::Silence(applications, done) => {
                self.silent = applications;
                let _ = done.send(());
            }
            Command::Hold(hold, done) => {
                self.holding = hold;
                if !hold {
                    for (to, id) in self.held.drain(..) {
                        out.push(result(to, id));
                    }
                }
                let _ = done.send(());
            }
        }
    }

    fn incoming(
        &mut self,
        item: Option<Result<Element, ReadError>>,
        out: &mut Vec<Element>,
    ) -> anyhow::Result<()> {
        let stanza = match item {
            None => bail!("the server closed the connection"),
            Some(Ok(stanza)) => stanza,
            // An idle stream (a long seeding between two runs) must show the server it is alive,
            // or the read timeout ends it: a ping without `to` is answered by the server itself.
            Some(Err(ReadError::SoftTimeout)) => {
                out.push(
                    Element::builder("iq", ns::JABBER_CLIENT)
                        .attr(name("type"), "get")
                        .attr(name("id"), "keepalive")
                        .append(Element::builder("ping", ns::PING))
                        .build(),
                );
                return Ok(());
            }
            Some(Err(ReadError::ParseError(_))) => return Ok(()),
            Some(Err(e)) => bail!("stream failed: {e}"),
        };
        if !stanza.is("iq", ns::JABBER_CLIENT) {
            return Ok(());
        }
        let id = stanza.attr("id").unwrap_or_default().to_owned();
        match stanza.attr("type") {
            Some("set") => {
                let Some(push) = stanza.get_child("push", wire::NS) else {
                    return Ok(());
                };
                if push
                    .attr("application")
                    .is_some_and(|app| self.silent.contains(app))
                {
                    return Ok(());
                }
                self.ledger.borrow().record(message_id(push));
                let from = stanza.attr("from").unwrap_or_default().to_owned();
                if self.holding {
                    self.held.push((from, id));
                } else {
                    out.push(result(from, id));
                }
            }
            Some("result") => {
                if let Some(reply) = self.pending.remove(&id) {
                    let endpoint = stanza
                        .get_child("registered", wire::NS)
                        .and_then(|r| r.attr("endpoint"))
                        .map(str::to_owned)
                        .context("a result without <registered endpoint=…>");
                    let _ = reply.send(endpoint);
                }
            }
            Some("error") => {
                if let Some(reply) = self.pending.remove(&id) {
                    let _ = reply.send(Err(anyhow::anyhow!(
                        "registration refused: {}",
                        String::from(&stanza)
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The benchmark's message id from a `<push>`'s text; `None` for anything it did not send.
fn message_id(push: &Element) -> Option<MessageId> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(push.text())
        .ok()?;
    MessageId::from_body(&data)
}

/// The empty `result` Conversations answers a push with.
fn result(to: String, id: String) -> Element {
    Element::builder("iq", ns::JABBER_CLIENT)
        .attr(name("type"), "result")
        .attr(name("id"), id)
        .attr(name("to"), to)
        .build()
}
