//! A Prosody of its own (Debian's package), configured from `prosody.cfg.lua.in` beside this
//! crate, on free loopback ports, with accounts written straight into its data directory.

use std::{path::PathBuf, process::Stdio};

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::{PASSWORD, fill_template, free_port, wait_for_port};

pub struct Prosody {
    dir: TempDir,
    pub c2s_port: u16,
    pub component_port: u16,
    /// Served only when a module needs HTTP (the benchmark's `mod_unified_push`).
    pub http_port: u16,
    child: Option<Child>,
}

impl Prosody {
    pub async fn start() -> Prosody {
        Prosody::start_with("").await
    }

    /// Start Prosody with `extra` appended to the config: more `Component` sections, say.
    /// Placeholders such as `@HTTP_PORT@` are filled in there too.
    pub async fn start_with(extra: &str) -> Prosody {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut prosody = Prosody {
            c2s_port: free_port(),
            component_port: free_port(),
            http_port: free_port(),
            dir,
            child: None,
        };
        let template = include_str!("../prosody.cfg.lua.in");
        let config = fill_template(
            &format!("{template}\n{extra}\n"),
            &[
                ("ROOT", prosody.dir.path().display().to_string()),
                ("C2S_PORT", prosody.c2s_port.to_string()),
                ("COMPONENT_PORT", prosody.component_port.to_string()),
                ("HTTP_PORT", prosody.http_port.to_string()),
            ],
        );
        std::fs::write(prosody.config_path(), config).expect("write prosody config");
        prosody.launch().await;
        prosody
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prosody.log")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("prosody.cfg.lua")
    }

    /// The running server's process id, for reading its CPU time and memory from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Create `user@domain` with the shared test password (Prosody's internal_plain file format).
    pub fn add_user(&self, user: &str, domain: &str) {
        // Prosody stores hosts with '.' encoded as %2e.
        let host_dir = domain.replace('.', "%2e");
        let accounts = self.dir.path().join("data").join(host_dir).join("accounts");
        std::fs::create_dir_all(&accounts).expect("accounts dir");
        std::fs::write(
            accounts.join(format!("{user}.dat")),
            format!("return {{\n\t[\"password\"] = \"{PASSWORD}\";\n}};\n"),
        )
        .expect("write account");
    }

    async fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("prosody.out")).expect("log file");
        let child = Command::new("prosody")
            .arg("--config")
            .arg(self.config_path())
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("prosody is installed (scripts/setup installs it)");
        self.child = Some(child);
        for port in [self.c2s_port, self.component_port] {
            wait_for_port(port).await;
        }
    }

    /// Kill Prosody hard, as a crash or an OOM kill would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }
}
