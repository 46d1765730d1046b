//! The XMPP side of xup: the XEP-0114 link to the server and what comes in over it.
//!
//! This folder owns the connection (`link.rs`: handshake, reconnects, the outgoing queue), the
//! table that routes an incoming IQ request to the role registered for its namespace
//! (`router.rs`), the pushes sent and not yet answered (`pending.rs`), and which clients are known
//! to be offline (`presence.rs`). It knows no role: no dialect, command or app server is named
//! here. Roles reach it in two ways only: a [`router::Handler`] registered at start-up for what
//! comes in, and a [`Link`] to send through for what goes out.

pub mod link;
pub mod pending;
pub mod presence;
pub mod router;

pub use link::{ConnectError, Link, LinkDown, MAX_STANZA, Unstarted, link, probe, start};
pub use router::{Events, Handled, Handler, LinkEvent, Outcome, Refusal, Reply, Router};
