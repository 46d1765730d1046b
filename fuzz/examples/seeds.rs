//! Write the seed corpus: sealed tokens for `token_open`, typical stanzas for `stanza`.
//! Run from `fuzz/` with `cargo +nightly run --example seeds`.

use std::{fs, path::Path};

fn main() -> std::io::Result<()> {
    let tokens = Path::new("corpus/token_open");
    fs::create_dir_all(tokens)?;
    let keys = xup_fuzz::key_ring();
    let token = keys.issue(&xup_fuzz::claims()).expect("token");
    fs::write(tokens.join("sealed"), &token)?;
    fs::write(tokens.join("truncated"), &token[..token.len() / 2])?;
    fs::write(
        tokens.join("other-version"),
        token.replacen("v4.local.", "v3.local.", 1),
    )?;

    let stanzas = Path::new("corpus/stanza");
    fs::create_dir_all(stanzas)?;
    let (app, ins, component) = (xup_fuzz::APP, xup_fuzz::INSTANCE, xup_fuzz::COMPONENT);
    let ns = "xmlns='jabber:component:accept'";
    let from = "from='juliet@localhost/phone'";
    let to = format!("to='{component}'");
    let seeds = [
        (
            "register",
            format!(
                "<iq {ns} type='set' id='r1' {from} {to}><register xmlns='http://gultsch.de/xmpp/drafts/unified-push' application='{app}' instance='{ins}'/></iq>"
            ),
        ),
        (
            "ping",
            format!("<iq {ns} type='get' id='p1' {from} {to}><ping xmlns='urn:xmpp:ping'/></iq>"),
        ),
        (
            "disco",
            format!(
                "<iq {ns} type='get' id='d1' {from} {to}><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            ),
        ),
        (
            "unknown",
            format!(
                "<iq {ns} type='get' id='u1' {from} {to}><query xmlns='jabber:iq:version'/></iq>"
            ),
        ),
        (
            "result",
            format!("<iq {ns} type='result' id='p-0000000a-1' {from} {to}/>"),
        ),
        (
            "error",
            format!(
                "<iq {ns} type='error' id='p-0000000a-2' {from} {to}><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            ),
        ),
        (
            "sum7-register",
            format!(
                "<iq {ns} type='set' id='s1' {from} {to}><register xmlns='unifiedpush.org'><token>0b5bdf3d-5ea5-4bba-9f5c-0ab5a8f3d2d0</token></register></iq>"
            ),
        ),
        (
            "sum7-unregister",
            format!(
                "<iq {ns} type='set' id='s2' {from} {to}><unregister xmlns='unifiedpush.org'><token>x</token></unregister></iq>"
            ),
        ),
        (
            "commands",
            format!(
                "<iq {ns} type='get' id='c1' {from} {to}><query xmlns='http://jabber.org/protocol/disco#items' node='http://jabber.org/protocol/commands'/></iq>"
            ),
        ),
        (
            "list",
            format!(
                "<iq {ns} type='set' id='c2' {from} {to}><command xmlns='http://jabber.org/protocol/commands' node='list-push-registrations' action='execute'/></iq>"
            ),
        ),
        (
            "unregister-device",
            format!(
                "<iq {ns} type='set' id='c3' {from} {to}><command xmlns='http://jabber.org/protocol/commands' node='unregister-push-webpush' action='complete'><x xmlns='jabber:x:data' type='submit'><field var='device-id'><value>phone</value></field></x></command></iq>"
            ),
        ),
        (
            "publish",
            format!(
                "<iq {ns} type='set' id='b1' from='example.org' {to}><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='v4.local.x'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field><field var='message-count'><value>1</value></field></x></notification></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s</value></field></x></publish-options></pubsub></iq>"
            ),
        ),
        ("presence", format!("<presence {ns} {from} {to}/>")),
        (
            "message",
            format!("<message {ns} {from} {to}><body>hello</body></message>"),
        ),
    ];
    for (name, xml) in seeds {
        fs::write(stanzas.join(name), xml)?;
    }
    Ok(())
}
