//! Bakes the git revision into the binary for `xup --version`, so a running xup can be traced to
//! the exact source it was built from. Outside a git checkout (a source tarball) it says "unknown".

use std::process::Command;

fn main() {
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=XUP_GIT_REVISION={revision}");
    // A new commit moves HEAD or the branch it points to.
    // Watching a missing file would run this script at every build, so each is watched only if
    // it is there (a fresh clone has packed-refs, a repository with new commits refs/heads).
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
