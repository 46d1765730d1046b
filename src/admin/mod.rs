//! What an operator runs beside the service, on the same config: `xup status` (what the store
//! holds, `overview.rs`) and `xup import-up-config` (a config from the Java `up`'s, `import.rs`).
//! Neither touches the XMPP link or serves HTTP.

pub mod import;
pub mod overview;
