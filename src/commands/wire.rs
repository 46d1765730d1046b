//! XEP-0050's `<command>` element, as far as xup's one-step commands use it.

use xmpp_parsers::data_forms::DataForm;
use xso::{AsXml, FromXml};

pub const NS: &str = "http://jabber.org/protocol/commands";

/// A command request (`action` `execute`, `complete` or none, maybe with a submitted form), or
/// its answer (`status`, maybe with a result form).
#[derive(FromXml, AsXml, Debug, Clone, PartialEq)]
#[xml(namespace = NS, name = "command")]
pub struct Command {
    #[xml(attribute)]
    pub node: String,
    #[xml(attribute(default))]
    pub action: Option<String>,
    #[xml(attribute(default, name = "sessionid"))]
    pub session_id: Option<String>,
    #[xml(attribute(default))]
    pub status: Option<String>,
    #[xml(child(default))]
    pub form: Option<DataForm>,
}
