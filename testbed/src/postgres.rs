//! A throwaway PostgreSQL cluster, for the store engine that several xup instances share.
//!
//! `initdb` into a temporary directory, then `pg_ctl` on a free loopback port with its socket in
//! that directory, from Debian's `postgresql` package. PostgreSQL refuses to run as root, so when
//! the tests run as root it runs as the package's `postgres` user. A start is awaited on the
//! server's own readiness (`pg_ctl -w`: it accepts connections), for up to 120 s; a start that
//! fails panics with the server's log. The cluster is stopped, immediately, when its handle drops.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tempfile::TempDir;

use crate::free_port;

/// The database and role the tests use; the cluster trusts loopback connections.
pub const DATABASE: &str = "xup";

/// How long `pg_ctl` waits for the server to accept connections.
const START_TIMEOUT_SECS: &str = "120";

pub struct Postgres {
    dir: TempDir,
    pub port: u16,
    bin: PathBuf,
    /// The uid and gid the server runs as, when not the current user's.
    user: Option<(u32, u32)>,
}

/// The newest PostgreSQL's programs Debian installed.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/setup installs it)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// The `postgres` account's uid and gid, when we are root and must hand the server to it.
fn server_user() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let output = Command::new("id").args(args).output().ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    (id(&["-u"])? == 0).then(|| {
        let user = id(&["-u", "postgres"]).expect("a postgres user (Debian's package makes it)");
        let group = id(&["-g", "postgres"]).expect("a postgres group");
        (user, group)
    })
}

impl Postgres {
    pub async fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        let postgres = Postgres {
            port: free_port(),
            bin: bin_dir(),
            user: server_user(),
            dir,
        };
        if let Some((uid, gid)) = postgres.user {
            std::os::unix::fs::chown(postgres.dir.path(), Some(uid), Some(gid))
                .expect("hand the directory to the postgres user");
        }
        let data = postgres.data();
        postgres.run_checked(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                DATABASE,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        postgres.launch().await;
        postgres.run_checked(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &postgres.port.to_string(),
                "-U",
                DATABASE,
                DATABASE,
            ],
        );
        postgres
    }

    /// The URL xup's `store.url` takes.
    pub fn url(&self) -> String {
        format!("postgres://{DATABASE}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// Make another, empty database on this server and return its URL: a fresh store without a
    /// fresh server (the benchmark's growth curves start each point from nothing).
    pub fn create_database(&self, name: &str) -> String {
        self.psql(&format!("CREATE DATABASE \"{name}\""));
        format!("postgres://{DATABASE}@127.0.0.1:{}/{name}", self.port)
    }

    /// Run `sql` through `psql`, and return what it printed (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let output = self.run_checked(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                DATABASE,
                "-d",
                DATABASE,
                "-At",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The postmaster's process id, for measuring what the server costs (its backends are its
    /// children).
    pub fn pid(&self) -> Option<u32> {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// Serve TLS from now on (a restart), with a certificate for 127.0.0.1 signed by a CA of
    /// its own, both made by `openssl`; returns the CA's certificate, for a client to trust.
    pub async fn enable_tls(&mut self) -> PathBuf {
        let data = self.data();
        std::fs::write(
            data.join("server.ext"),
            "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n",
        )
        .expect("write the certificate's extensions");
        let openssl = |args: &[&str]| {
            let mut openssl = Command::new("openssl");
            openssl.args(args).current_dir(&data);
            // The server reads its key as its own user, and refuses one others can read.
            if let Some((uid, gid)) = self.user {
                openssl.uid(uid).gid(gid);
            }
            let made = openssl
                .output()
                .expect("openssl runs (scripts/setup installs it)");
            assert!(
                made.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&made.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=xup test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ]);
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("the key is the server's alone");
        self.psql("ALTER SYSTEM SET ssl = on");
        self.stop("fast");
        self.launch().await;
        data.join("ca.crt")
    }

    /// Stop the server at once, as a crash would, and start it again on the same data.
    pub async fn restart(&mut self) {
        self.stop("immediate");
        self.launch().await;
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    async fn launch(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let (data, log) = (self.data(), self.log());
        let output = self.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-o",
                &options,
                "-w",
                "-t",
                START_TIMEOUT_SECS,
                "start",
            ],
        );
        if !output.status.success() {
            panic!(
                "PostgreSQL did not start: {}\n{}\nits log:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }

    fn stop(&self, mode: &str) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", path(&data), "-m", mode, "-w", "stop"]);
    }

    /// Run one of PostgreSQL's programs as the server's user.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"))
    }

    fn run_checked(&self, program: &str, args: &[&str]) -> Output {
        let output = self.run(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}
