//! sum7's "UnifiedPush over XMPP" (its Go gateway and Linux D-Bus distributor): the client names
//! each registration by a public token of its own, and pushes arrive as `<message>`s.

// xso's derive converts each extracted text `String` into itself, which clippy flags.
#![allow(clippy::useless_conversion)]

use xso::{AsXml, FromXml};

pub const NS: &str = "unifiedpush.org";

/// The longest public token accepted. The distributor sends a UUID (36 characters); the token
/// travels inside the endpoint, which must stay under [`crate::registrar::MAX_ENDPOINT_LEN`].
pub const MAX_TOKEN_LEN: usize = 256;

/// `<register><token>PUBLIC</token></register>`: an endpoint for one app of the distributor.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "register")]
pub struct Register {
    #[xml(extract(default, name = "token", fields(text)))]
    pub token: String,
    /// `<vapid>KEY</vapid>`: the application server's VAPID public key (base64url), to bind the
    /// endpoint to (RFC 8292 §4). xup's own extension; empty or left out means none.
    #[xml(extract(default, name = "vapid", fields(text)))]
    pub vapid: String,
}

/// The answer to [`Register`]: `<register><endpoint>URL</endpoint></register>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "register")]
pub struct Registered {
    #[xml(extract(name = "endpoint", fields(text)))]
    pub endpoint: String,
}

/// Inside a refusal of [`Register`], beside the stanza error: `<register><error>why</error>`,
/// which is all sum7's distributor reads.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "register")]
pub struct Refused {
    #[xml(extract(name = "error", fields(text)))]
    pub error: String,
}

/// `<unregister><token>PUBLIC</token></unregister>`: every endpoint of that app is revoked.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "unregister")]
pub struct Unregister {
    #[xml(extract(default, name = "token", fields(text)))]
    pub token: String,
}

/// Inside a refusal of [`Unregister`], beside the stanza error.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "unregister")]
pub struct UnregisterRefused {
    #[xml(extract(name = "error", fields(text)))]
    pub error: String,
}

/// The answer to [`Unregister`]: `<unregister><success/></unregister>`.
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "unregister")]
pub struct Unregistered {
    #[xml(child)]
    pub success: Success,
}

#[derive(FromXml, AsXml, Debug, Clone, PartialEq, Default)]
#[xml(namespace = NS, name = "success")]
pub struct Success;
