//! What an operator runs beside the service, on the same config: `xup status` (what the store
//! holds, `overview.rs`) and `xup import` (endpoints issued by another provider, `import.rs`).
//! Neither touches the XMPP link or serves HTTP.

pub mod import;
pub mod overview;
