//! The command line: the shipped example config and `xup check` stay in step with the code, and
//! `xup --version` says which source it was built from.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Run xup with `args` and `--config config`: whether it succeeded, and all it printed.
fn xup_with_config(args: &[&str], config: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_xup"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("xup runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// The example config with its `store` section replaced by `store` (JSON), written into `dir`.
fn example_config_with_store(dir: &Path, store: &serde_json::Value) -> PathBuf {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.json"))
            .expect("example");
    let shipped = "{ \"path\": \"/var/lib/xup\" }";
    assert!(
        example.contains(shipped),
        "the example's store section moved"
    );
    let config = dir.join("config.json");
    std::fs::write(&config, example.replace(shipped, &store.to_string())).expect("write");
    config
}

#[test]
fn the_example_config_passes_xup_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.json");
    let output = Command::new(env!("CARGO_BIN_EXE_xup"))
        .args(["check", "--config", example])
        .output()
        .expect("xup runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_reader_that_stops_early_is_not_a_failure() {
    // `xup check | head -1`, with `head` already gone: a pipe whose reading end is closed.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.json");
    let output = Command::new(env!("CARGO_BIN_EXE_xup"))
        .args(["check", "--config", example])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("xup runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn xup_check_says_when_metrics_share_the_public_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.json"))
            .expect("example");
    let apart = r#""metrics":      { "listen": "127.0.0.1:9090" },"#;
    assert!(example.contains(apart), "the example's metrics line moved");
    for (config, public) in [(example.clone(), false), (example.replace(apart, ""), true)] {
        let path = dir.path().join("config.json");
        std::fs::write(&path, config).expect("write");
        let (ok, said) = xup_with_config(&["check"], &path);
        assert!(ok, "{said}");
        assert_eq!(
            said.contains("/metrics and /health are served on http.listen"),
            public,
            "{said}"
        );
    }
}

#[test]
fn xup_check_names_the_field_at_fault_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.json"))
            .expect("example");
    std::fs::write(&path, example.replace("\"7d\"", "\"1d\"")).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_xup"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("xup runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("registration.lifetime"), "{stderr}");
}

#[test]
fn version_names_the_git_revision_it_was_built_from() {
    let output = Command::new(env!("CARGO_BIN_EXE_xup"))
        .arg("--version")
        .output()
        .expect("xup runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    let expected = format!("xup {} (", env!("CARGO_PKG_VERSION"));
    assert!(printed.starts_with(&expected), "{printed}");
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        // Built from this checkout: its revision, marked if the tree had changes.
        Some(head) => assert!(
            printed.contains(&format!("({head}")),
            "{printed} is not at {head}"
        ),
        None => assert!(printed.contains("(unknown)"), "{printed}"),
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    let config = serde_json::json!({
        // Nothing listens on the discard port: xup logs that it cannot connect, and keeps trying.
        "component": { "jid": "up.localhost", "server": "127.0.0.1:9", "secret": "s" },
        "http": { "listen": "127.0.0.1:0", "public_url": "http://127.0.0.1" },
        "registration": { "secrets": ["0123456789abcdef"] },
        "store": { "path": dir.path().join("store") },
    });
    std::fs::write(&path, config.to_string()).expect("write");
    let mut xup = Command::new(env!("CARGO_BIN_EXE_xup"))
        .args(["--log-format", "json", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xup runs");
    let stderr = xup.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().expect("a log line").expect("readable");
    let _ = xup.kill();
    let _ = xup.wait();
    let line: serde_json::Value = serde_json::from_str(&first).expect("a JSON object");
    assert!(line["level"].is_string(), "{line}");
    assert!(line["fields"]["message"].is_string(), "{line}");
}

/// A config of the Java `up`, the shape its README and its own `config.json` have.
const UP_CONFIG: &str = r#"{
  "component": {
    "hostname": "localhost",
    "port": 5348,
    "jid": "up.conversations.im",
    "sharedSecret": "the component secret"
  },
  "registration": {
    "sharedSecret": "7z8XLjkj/8h2T22nd1Z279vT2ONMOgQu8xj0BLps3qA=",
    "uri": "https://up.conversations.im/push/{token}"
  },
  "webServer": {
    "ip": "127.0.0.1",
    "port": 6677
  }
}"#;

#[test]
fn import_up_config_writes_a_config_xup_check_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = dir.path().join("up-config.json");
    std::fs::write(&up, UP_CONFIG.replace("6677\n", "6677, \"threads\": 4\n")).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_xup"))
        .arg("import-up-config")
        .arg(&up)
        .output()
        .expect("xup runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("webServer.threads: not mapped"), "{stderr}");

    let written: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(written["component"]["jid"], "up.conversations.im");
    assert_eq!(written["component"]["server"], "localhost:5348");
    assert_eq!(written["component"]["secret"], "the component secret");
    assert_eq!(written["http"]["listen"], "127.0.0.1:6677");
    assert_eq!(written["http"]["public_url"], "https://up.conversations.im");
    let registration = &written["registration"];
    assert_eq!(
        registration["legacy_up_secret"],
        "7z8XLjkj/8h2T22nd1Z279vT2ONMOgQu8xj0BLps3qA="
    );
    assert_eq!(
        registration["legacy_up_uri"],
        "https://up.conversations.im/push/{token}"
    );
    let fresh = registration["secrets"][0].as_str().expect("a fresh secret");
    assert!(fresh.len() >= 32 && !UP_CONFIG.contains(fresh));

    let config = dir.path().join("xup.json");
    std::fs::write(&config, &output.stdout).expect("write");
    let check = Command::new(env!("CARGO_BIN_EXE_xup"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("xup runs");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn import_up_config_names_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let up = dir.path().join("up-config.json");
    std::fs::write(
        &up,
        UP_CONFIG.replace("\"jid\": \"up.conversations.im\",", ""),
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_xup"))
        .arg("import-up-config")
        .arg(&up)
        .output()
        .expect("xup runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("component.jid: missing"), "{stderr}");
}

#[test]
fn xup_check_says_where_the_store_stands_and_refuses_a_newer_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let config = example_config_with_store(dir.path(), &serde_json::json!({ "path": store }));
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_xup"))
            .arg("check")
            .arg("--config")
            .arg(&config)
            .output()
            .expect("xup runs")
    };
    let fresh = check();
    assert!(fresh.status.success());
    assert!(String::from_utf8_lossy(&fresh.stdout).contains("no store yet"));

    std::fs::create_dir(&store).expect("store dir");
    let db = rusqlite::Connection::open(store.join("xup.sqlite3")).expect("db");
    db.pragma_update(None, "user_version", xup::store::SCHEMA_VERSION + 1)
        .expect("a store from a newer xup");
    drop(db);
    let newer = check();
    assert!(!newer.status.success());
    let stderr = String::from_utf8_lossy(&newer.stderr);
    assert!(stderr.contains("newer than this xup"), "{stderr}");
}

#[tokio::test]
async fn xup_check_says_where_a_postgresql_store_stands_without_showing_its_password() {
    let postgres = xup_testbed::Postgres::start().await;
    let url = postgres.url().replace("://xup@", "://xup:not-to-be-shown@");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = example_config_with_store(dir.path(), &serde_json::json!({ "url": url }));
    let check = || {
        let (ok, text) = xup_with_config(&["check"], &config);
        assert!(!text.contains("not-to-be-shown"), "{text}");
        (ok, text)
    };
    let (ok, fresh) = check();
    assert!(ok, "{fresh}");
    assert!(
        fresh.contains("PostgreSQL database xup on 127.0.0.1"),
        "{fresh}"
    );
    assert!(fresh.contains("no store yet"), "{fresh}");

    let store = xup::config::StoreConfig::Postgres {
        url: postgres.url(),
        pool_size: 1,
        ca_file: None,
    };
    drop(xup::store::engines::open(&store).await.expect("migrated"));
    let (ok, current) = check();
    assert!(ok && current.contains("this xup's"), "{current}");

    postgres.psql("UPDATE xup_schema SET version = 1");
    let (ok, older) = check();
    assert!(
        ok && older.contains("the next start upgrades it"),
        "{older}"
    );

    let newer = xup::store::SCHEMA_VERSION + 1;
    postgres.psql(&format!("UPDATE xup_schema SET version = {newer}"));
    let (ok, refused) = check();
    assert!(!ok && refused.contains("newer than this xup"), "{refused}");
    assert!(matches!(
        xup::store::engines::open(&store).await.map(|_| ()),
        Err(xup::store::StoreError::Newer { found, .. }) if found == newer
    ));
}

#[tokio::test]
async fn copy_store_moves_everything_from_sqlite_to_postgresql_once() {
    use std::time::{Duration, SystemTime};
    use xup::{
        message::Urgency,
        store::{
            Bounds, Message, PushNode, Series, Store,
            held::HeldMessages,
            postgres::{Postgres, Target},
            sqlite::Sqlite,
        },
        token::claims_for,
    };
    const DAY: Duration = Duration::from_secs(86400);
    let series = |now: SystemTime| Series {
        account: "juliet@localhost".into(),
        issued_at_us: xup::store::micros(now),
        renewed_at_us: xup::store::micros(now),
        expires_at_us: xup::store::micros(now + DAY),
        kept: "sealed".into(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let now = SystemTime::now();
    let revoked = claims_for("juliet@localhost/phone", "app", "ins", now, DAY);
    {
        let engine = std::sync::Arc::new(Sqlite::open(&store_dir).expect("sqlite"));
        let store = Store::new(engine.clone()).await.expect("store");
        store.revoke(&revoked, now, DAY).await.expect("revoke");
        store.vapid_key(1, || vec![7; 32]).await.expect("vapid");
        let node = PushNode {
            node_id: "node".into(),
            device_id: Some("phone".into()),
            device_name: None,
            expires_at: now + DAY,
        };
        store
            .index_node("juliet@localhost", node)
            .await
            .expect("node");
        store
            .renew([3; 32], None, series(now))
            .await
            .expect("registration");
        let held = HeldMessages::open(engine, Bounds::only(10, 10))
            .await
            .expect("held");
        for id in ["m1", "m2"] {
            let message = Message {
                id: id.into(),
                subject: "romeo@localhost/laptop".into(),
                application: "app".into(),
                instance: "ins".into(),
                body: id.as_bytes().to_vec(),
                topic: None,
                urgency: Urgency::Normal,
                expires_at: now + DAY,
                accepted_at: SystemTime::now(),
            };
            held.hold(message).await.expect("hold");
        }
    }
    let config = example_config_with_store(dir.path(), &serde_json::json!({ "path": store_dir }));
    let postgres = xup_testbed::Postgres::start().await;
    // A URL with a password is taken from a file or the environment, never from an argument.
    let with_password = postgres.url().replacen("xup@", "xup:hunter2hunter2@", 1);
    let (ok, refused) = xup_with_config(&["copy-store", "--to", &with_password], &config);
    assert!(!ok, "{refused}");
    assert!(
        refused.contains("--to-file") && !refused.contains("hunter2"),
        "{refused}"
    );
    assert_eq!(
        postgres.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'held'"),
        "0",
        "nothing was copied"
    );
    let url_file = dir.path().join("target.url");
    std::fs::write(&url_file, format!("{with_password}\n")).expect("write");
    let url_file = url_file.to_str().expect("utf-8");
    let copy = || xup_with_config(&["copy-store", "--to-file", url_file], &config);
    let (ok, first) = copy();
    assert!(ok, "{first}");
    assert!(
        first.contains(
            "1 revocations, 2 held messages (0 there already), 1 VAPID keys, 1 app-server nodes, \
             1 registrations"
        ),
        "{first}"
    );
    let again = Command::new(env!("CARGO_BIN_EXE_xup"))
        .args(["copy-store", "--config"])
        .arg(&config)
        .env("XUP_COPY_TO", &with_password)
        .output()
        .expect("xup runs");
    let (ok, again) = (
        again.status.success(),
        String::from_utf8_lossy(&again.stdout).into_owned()
            + &String::from_utf8_lossy(&again.stderr),
    );
    assert!(ok, "{again}");
    assert!(!again.contains("hunter2"), "{again}");
    assert!(
        again.contains("0 held messages (2 there already)"),
        "{again}"
    );
    assert_eq!(postgres.psql("SELECT count(*) FROM held"), "2");

    // What xup on PostgreSQL now reads.
    let engine = std::sync::Arc::new(
        Postgres::connect(&Target::new(&postgres.url(), None).expect("target"), 2)
            .await
            .expect("pg"),
    );
    let store = Store::new(engine.clone()).await.expect("store");
    assert!(
        store.is_revoked(&revoked),
        "the revoked endpoint stays dead"
    );
    assert_eq!(
        store.series([3; 32]).await.expect("series"),
        Some(series(now)),
        "a renewed endpoint outlives its first lifetime on the new store too"
    );
    assert_eq!(
        store.vapid_key(1, || vec![9; 32]).await.expect("vapid"),
        vec![7; 32]
    );
    assert_eq!(
        store
            .nodes_of("juliet@localhost")
            .await
            .expect("nodes")
            .len(),
        1
    );
    let held = xup::store::held::HeldMessages::open(engine, xup::store::Bounds::only(10, 10))
        .await
        .expect("held");
    assert_eq!(held.total(), 2);

    // A target with another key of the same generation keeps it, and says so.
    postgres.psql("UPDATE vapid_keys SET secret = '\\x09'");
    let (ok, conflict) = copy();
    assert!(
        !ok && conflict.contains("different VAPID key for generation(s) [1]"),
        "{conflict}"
    );
}

#[test]
fn the_manual_and_completions_are_made_from_the_command_line_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = Command::new(env!("CARGO_BIN_EXE_xup"))
        .arg("generate-docs")
        .arg(dir.path())
        .status()
        .expect("xup runs");
    assert!(made.success());
    let read = |name: &str| {
        std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let help = Command::new(env!("CARGO_BIN_EXE_xup"))
        .arg("--help")
        .output()
        .expect("xup runs");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    // Every subcommand `--help` lists has its page and its completion, and nothing else does.
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert!(subcommands.contains(&"copy-store"), "{help}");
    let manual = read("xup.1");
    assert!(manual.contains(".TH xup 1"), "{manual}");
    for subcommand in &subcommands {
        assert!(
            manual.contains(&subcommand.replace('-', "\\-")),
            "{subcommand}"
        );
        read(&format!("xup-{subcommand}.1"));
        for completion in ["xup.bash", "_xup", "xup.fish"] {
            assert!(
                read(completion).contains(subcommand),
                "{completion}: {subcommand}"
            );
        }
    }
    assert!(
        !manual.contains("generate\\-docs"),
        "the packaging helper stays out of sight"
    );
    assert!(
        manual.contains("XUP_STORE_URL"),
        "the environment is in the manual"
    );
}
