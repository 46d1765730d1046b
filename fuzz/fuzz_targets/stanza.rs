//! Incoming stanza handling: any bytes the XMPP server could send as one stanza, parsed the way
//! the component link parses them and handed to the router (both dialects, the ad-hoc commands
//! and the app server's publishes; not `register-push-webpush`, which resolves host names).
//! Nothing may panic; a request gets exactly one answer with its id, and an answer (result or
//! error) never gets one (RFC 6120 §8.2.3).

#![no_main]

use std::sync::{Arc, LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use xmpp_parsers::{iq::Iq, stanza::Stanza};
use xup::{
    app_server::{self, AppServer, webpush::WebPush},
    config::Config,
    limits::Limits,
    registrar::Registrar,
    store::{Bounds, Store, held::HeldMessages, sqlite::Sqlite},
    xmpp::{LinkEvent, Reply, Router, pending::InFlight},
};

use xup_fuzz as seeds;

struct World {
    router: Router,
    /// Runs the answers that wait for the store (sum7's `<unregister>`).
    runtime: tokio::runtime::Runtime,
    /// Kept so link events have somewhere to go; emptied after every input.
    events: Mutex<tokio::sync::mpsc::Receiver<LinkEvent>>,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    // The held messages' writer is a task: it is spawned on this runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let entered = runtime.enter();
    let config = Config::parse(&format!(
        r#"{{
          "component":    {{ "jid": "{}", "secret": "s" }},
          "http":         {{ "listen": "127.0.0.1:8080", "public_url": "https://up.localhost" }},
          "registration": {{ "secrets": {:?}, "allow": ["*"] }},
          "limits":       {{ "registrations_per_account": {{ "burst": 4000000000, "every": "1ms" }} }},
          "store":        {{ "path": "/nonexistent" }}
        }}"#,
        seeds::COMPONENT,
        seeds::SECRETS,
    ))
    .expect("config");
    let keys = Arc::new(seeds::key_ring());
    let limits = Arc::new(Limits::new(&config.limits));
    let (keys_for_app_server, limits_for_app_server) = (keys.clone(), limits.clone());
    let (link_events, events) = xup::xmpp::Events::channel();
    let store = std::env::temp_dir().join(format!("xup-fuzz-stanza-{}", std::process::id()));
    let (store, held) = runtime.block_on(async {
        let engine = Sqlite::open(&store).expect("a store in the temporary directory");
        let store = Arc::new(Store::new(Arc::new(engine)).await.expect("store"));
        let held = HeldMessages::open(store.engine(), Bounds::only(100, 1000))
            .await
            .expect("held messages");
        (store, Arc::new(held))
    });
    drop(entered);
    let registrar = Arc::new(Registrar::new(&config, keys, limits, store.clone()));
    // The app server, with nowhere it may send: every endpoint a command submits is checked, and
    // a publish to a node the fuzzer makes up never opens.
    let web_push = WebPush::new(
        &WebPush::new_vapid_secret(),
        "mailto:fuzz@localhost".into(),
        vec![],
        None,
    )
    .expect("web push");
    let app_server = Arc::new(AppServer::new(app_server::Parts {
        component: config.component.jid.clone(),
        keys: keys_for_app_server.clone(),
        store: store.clone(),
        limits: limits_for_app_server.clone(),
        web_push: Arc::new(web_push),
        node_lifetime: config.app_server.node_lifetime,
    }));
    World {
        router: xup::xmpp_router(xup::Roles {
            jid: config.component.jid.clone(),
            registrar,
            store,
            held,
            revocations_live: config.registration.longest_token_life(),
            app_server: Some(app_server),
            awaiting: InFlight::default(),
            presence: Default::default(),
            traces: Default::default(),
            link: xup::xmpp::link().0,
            events: link_events,
        }),
        runtime,
        events: Mutex::new(events),
    }
});

fuzz_target!(|data: &[u8]| {
    // Registering an endpoint resolves its host name; the fuzzer's must not leave the machine.
    if data
        .windows(b"register-push-webpush".len())
        .any(|w| w == b"register-push-webpush")
    {
        return;
    }
    let Ok(stanza) = xso::from_bytes::<Stanza>(data) else {
        return;
    };
    let request_id = match &stanza {
        Stanza::Iq(Iq::Get { id, .. } | Iq::Set { id, .. }) => Some(id.clone()),
        _ => None,
    };
    let reply = WORLD.router.route(stanza).map(|reply| match reply {
        Reply::Now(stanza) => *stanza,
        Reply::Later(answer) => WORLD.runtime.block_on(answer),
    });
    match (request_id, &reply) {
        (
            Some(id),
            Some(Stanza::Iq(Iq::Result { id: answered, .. } | Iq::Error { id: answered, .. })),
        ) => {
            assert_eq!(&id, answered, "the answer carries the request's id");
        }
        (Some(_), other) => panic!("a request got {other:?} instead of one answer"),
        (None, None) => {}
        (None, Some(reply)) => panic!("a stanza that is no request was answered: {reply:?}"),
    }
    if let Some(reply) = reply {
        xso::to_vec(&reply).expect("the answer serialises");
    }
    if let Ok(mut events) = WORLD.events.lock() {
        while events.try_recv().is_ok() {}
    }
});
