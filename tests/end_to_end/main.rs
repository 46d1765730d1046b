//! xup end to end: a real Prosody, the real `xup` binary, real XMPP clients and real HTTP requests,
//! all on loopback. One test binary, so the harness is compiled once and every part of it is used.

mod app_server;
mod basics;
mod cluster;
mod diagnostics;
mod dialects;
mod fairness;
mod harness;
mod holding;
mod operations;
mod package;
mod protection;
mod stable;
mod urgency;
mod vapid;
