//! The ways a client speaks UnifiedPush over XMPP, each a folder behind the same two seams: a
//! [`crate::xmpp::Handler`] for its requests (registering, unregistering) and a
//! [`crate::push::Deliver`] for the pushes its endpoints receive.
//!
//! - `conversations/`: Daniel Gultsch's draft, spoken by Conversations and its forks: an IQ
//!   `<push>` per message, answered by the client, and held until it is taken.
//! - `sum7/`: sum7's `unifiedpush.org`: a `<message>` per push, which nobody answers.
//!
//! A dialect knows the link, the store and the token; no door (HTTP), no other dialect and not
//! the cluster knows it. `lib.rs` registers each one: its handler on the router under its
//! namespace, its deliverer under its [`crate::token::Dialect`].

pub mod conversations;
pub mod sum7;
