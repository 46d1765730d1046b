//! An ejabberd of its own (Debian's package), configured from `ejabberd.yml.in` beside this crate,
//! on free loopback ports, with accounts created through its HTTP API.
//!
//! ejabberd runs as the `ejabberd` user (it refuses to run as root), in its own process group so
//! that a kill reaches the Erlang VM itself and not only the script that started it.
//!
//! A start is awaited on ejabberd's own readiness signal, the log line that says it "is started in
//! the node", with a generous bound: its first start on a fresh machine creates its database and
//! the Erlang cookie, and can take far longer than later ones. If it does not come, the panic
//! carries ejabberd's real logs (its console output, `ejabberd.log`, `error.log`, `crash.log`).

use std::{path::Path, process::Stdio, time::Duration};

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::{PASSWORD, fill_template, free_port, listening};

/// How long ejabberd may take to say it has started: its first start on a fresh machine, on a
/// loaded 2-core CI machine, has taken over 20 s.
const STARTUP: Duration = Duration::from_secs(120);

/// ejabberd's own readiness signal in its log: "ejabberd 23.01 is started in the node …".
const STARTED: &str = "is started in the node";

pub struct Ejabberd {
    dir: TempDir,
    pub c2s_port: u16,
    pub component_port: u16,
    api_port: u16,
    child: Option<Child>,
    user: (u32, u32),
}

/// The uid and gid of the `ejabberd` account that Debian's package creates.
fn ejabberd_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = std::process::Command::new("id")
            .args([flag, "ejabberd"])
            .output()
            .expect("id runs");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("an ejabberd user (scripts/setup installs ejabberd)")
    };
    (id("-u"), id("-g"))
}

impl Ejabberd {
    pub async fn start() -> Ejabberd {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ejabberd = Ejabberd {
            c2s_port: free_port(),
            component_port: free_port(),
            api_port: free_port(),
            dir,
            child: None,
            user: ejabberd_user(),
        };
        let config = fill_template(
            include_str!("../ejabberd.yml.in"),
            &[
                ("C2S_PORT", ejabberd.c2s_port.to_string()),
                ("COMPONENT_PORT", ejabberd.component_port.to_string()),
                ("API_PORT", ejabberd.api_port.to_string()),
            ],
        );
        let root = ejabberd.dir.path();
        for sub in ["logs", "spool"] {
            std::fs::create_dir(root.join(sub)).expect("ejabberd dir");
        }
        std::fs::write(root.join("ejabberd.yml"), config).expect("write ejabberd config");
        std::fs::write(root.join("ejabberdctl.cfg"), "").expect("write ejabberdctl config");
        for path in [
            root.to_owned(),
            root.join("logs"),
            root.join("spool"),
            root.join("ejabberd.yml"),
            root.join("ejabberdctl.cfg"),
        ] {
            std::os::unix::fs::chown(&path, Some(ejabberd.user.0), Some(ejabberd.user.1))
                .expect("hand the directory to the ejabberd user");
        }
        ejabberd.launch().await;
        ejabberd
    }

    /// Create `user@domain` with the shared test password.
    pub async fn add_user(&self, user: &str, domain: &str) {
        let answer = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/api/register", self.api_port))
            .body(
                serde_json::json!({ "user": user, "host": domain, "password": PASSWORD })
                    .to_string(),
            )
            .send()
            .await
            .expect("ejabberd's HTTP API answers");
        let text = answer.text().await.unwrap_or_default();
        assert!(
            text.contains("successfully registered") || text.contains("already registered"),
            "ejabberd did not register {user}@{domain}: {text}"
        );
    }

    async fn launch(&mut self) {
        let root = self.dir.path();
        // A restart appends to the same log: wait for one more start than there was.
        let starts_before = started_count(root);
        let log = std::fs::File::create(root.join("ejabberd.out")).expect("log file");
        let child = Command::new("/usr/sbin/ejabberdctl")
            .arg("--config-dir")
            .arg(root)
            .arg("--config")
            .arg(root.join("ejabberd.yml"))
            .arg("--ctl-config")
            .arg(root.join("ejabberdctl.cfg"))
            .arg("--logs")
            .arg(root.join("logs"))
            .arg("--spool")
            .arg(root.join("spool"))
            .arg("--node")
            .arg(format!("xuptest{}@localhost", self.component_port))
            .arg("foreground")
            .uid(self.user.0)
            .gid(self.user.1)
            // The Erlang cookie lives in $HOME; the ejabberd user's is its state directory.
            .env("HOME", "/var/lib/ejabberd")
            // The Erlang port mapper that the VM starts listens on loopback only.
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("ejabberd is installed (scripts/setup installs it)");
        self.child = Some(child);
        let started = async {
            loop {
                if started_count(root) > starts_before {
                    return Ok(());
                }
                if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                    return Err(format!("ejabberd exited ({status}) before it started"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        match tokio::time::timeout(STARTUP, started).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => panic!("{why}\n{}", logs(root)),
            Err(_) => panic!(
                "ejabberd did not say it started within {STARTUP:?}\n{}",
                logs(root)
            ),
        }
        for port in [self.c2s_port, self.component_port, self.api_port] {
            if !listening(port).await {
                panic!(
                    "ejabberd started but does not listen on port {port}\n{}",
                    logs(root)
                );
            }
        }
    }

    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.path().join("logs").join("ejabberd.log")
    }

    /// The Erlang VM's process id, for reading ejabberd's CPU time and memory from `/proc`: the
    /// process started is `ejabberdctl`, a shell script whose child `beam.smp` does the work.
    pub fn pid(&self) -> Option<u32> {
        let group = self.child.as_ref()?.id()?;
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // stat(5): the fields after the name's closing ')' are state, ppid, pgrp, …
                let pgrp = stat.rsplit_once(')')?.1.split_whitespace().nth(2)?;
                (comm.trim() == "beam.smp" && pgrp == group.to_string()).then_some(pid)
            })
    }

    /// Kill ejabberd hard, as a crash or an OOM kill would: the whole process group, so the Erlang
    /// VM goes too.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&child);
            let _ = child.wait().await;
        }
    }

    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }
}

/// How many times the log in `root` says ejabberd started.
fn started_count(root: &Path) -> usize {
    std::fs::read_to_string(root.join("logs").join("ejabberd.log"))
        .map(|log| log.matches(STARTED).count())
        .unwrap_or(0)
}

/// Everything ejabberd wrote, for a failure report: the console and each log file's last lines.
fn logs(root: &Path) -> String {
    let files = [
        root.join("ejabberd.out"),
        root.join("logs").join("ejabberd.log"),
        root.join("logs").join("error.log"),
        root.join("logs").join("crash.log"),
    ];
    let mut report = String::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| format!("({e})"));
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        report += &format!("--- {} ---\n{}\n", file.display(), tail.join("\n"));
    }
    report
}

fn kill_group(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            kill_group(child);
        }
    }
}
