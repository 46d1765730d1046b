//! The Debian package, as `scripts/package` built it: unpacked (`dpkg-deb -x`, nothing is
//! installed on the machine), its parts checked, and its binary run: `--version`, `check` on the
//! packaged config once the secrets are filled in, and a push end to end.

use std::path::{Path, PathBuf};

use crate::harness::*;

/// The newest package in target/debian.
fn package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let mut packages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    packages.sort_by_key(|path| path.metadata().and_then(|m| m.modified()).ok());
    packages.pop().unwrap_or_else(|| {
        panic!(
            "no package in {}: run scripts/package first (scripts/test does)",
            dir.display()
        )
    })
}

fn dpkg_deb(args: &[&str], package: &Path, into: &Path) {
    let status = std::process::Command::new("dpkg-deb")
        .args(args)
        .arg(package)
        .arg(into)
        .status()
        .expect("dpkg-deb runs");
    assert!(status.success(), "dpkg-deb {args:?} failed");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn the_package_holds_what_an_operator_needs_and_its_binary_pushes() {
    let package = package();
    let root = tempfile::tempdir().expect("tempdir");
    let (files, control) = (root.path().join("files"), root.path().join("control"));
    dpkg_deb(&["-x"], &package, &files);
    dpkg_deb(&["-e"], &package, &control);

    let conffiles = read(&control.join("conffiles"));
    assert!(
        conffiles.lines().any(|l| l == "/etc/xup/config.json"),
        "{conffiles}"
    );
    let postinst = read(&control.join("postinst"));
    assert!(postinst.contains("xup check --connect --config /etc/xup/config.json"));
    assert!(
        !postinst.contains("enable --now xup.service") && !postinst.contains("systemctl start"),
        "a service with no secrets is not started: {postinst}"
    );
    let unit = read(&files.join("lib/systemd/system/xup.service"));
    for line in [
        "ExecStart=/usr/bin/xup --config /etc/xup/config.json",
        "LoadCredential=component.secret:/etc/xup/component.secret",
        "DynamicUser=yes",
        "StateDirectory=xup",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in\n{unit}");
    }
    for part in [
        "usr/share/man/man1/xup.1.gz",
        "usr/share/man/man1/xup-status.1.gz",
        "usr/share/bash-completion/completions/xup",
        "usr/share/zsh/vendor-completions/_xup",
        "usr/share/fish/vendor_completions.d/xup.fish",
        "usr/share/doc/xup/README.md",
        "usr/share/doc/xup/CONFIGURE.md",
        "usr/share/doc/xup/copyright",
        "usr/share/doc/xup/changelog.Debian.gz",
        "usr/share/doc/xup/LICENSE-MIT",
        "usr/share/doc/xup/LICENSE-APACHE",
    ] {
        assert!(files.join(part).is_file(), "{part} is in the package");
    }

    let xup = files.join("usr/bin/xup");
    let version = std::process::Command::new(&xup)
        .arg("--version")
        .output()
        .expect("the packaged xup runs");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.starts_with(&format!("xup {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    // The packaged config as the postinst says to finish it: the secrets in files beside it
    // (in /etc/xup; here the state directory moves too, as nothing is installed).
    let etc = files.join("etc/xup");
    std::fs::write(etc.join("component.secret"), COMPONENT_SECRET).expect("write");
    std::fs::write(etc.join("registration.secrets"), SECRET_A).expect("write");
    let state = root.path().join("state");
    let edited = etc.join("config.json");
    let config = read(&edited).replace("/var/lib/xup", state.to_str().expect("UTF-8"));
    std::fs::write(&edited, config).expect("write");
    let check = std::process::Command::new(&xup)
        .env_remove("CREDENTIALS_DIRECTORY")
        .args(["check", "--config"])
        .arg(&edited)
        .output()
        .expect("xup check runs");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let server = Server::start().await;
    let store = tempfile::tempdir().expect("store");
    let running = Xup::start(
        &xup,
        server.component_port(),
        &XupSettings::new(store.path()),
    )
    .await;
    let mut phone = Peer::connect(&server, "juliet", DOMAIN, "phone").await;
    let endpoint = phone.register(APP, INSTANCE).await.endpoint;
    assert!(endpoint.starts_with(&running.base_url), "{endpoint}");
    assert_delivered(&endpoint, &mut phone, b"from the packaged xup").await;
}
