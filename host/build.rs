//! Records the commit downsync is built from, for `downsync --version`: `DOWNSYNC_COMMIT` from
//! the environment (a source tarball or an image build has no `.git`), else `git rev-parse`,
//! else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=DOWNSYNC_COMMIT");
    let given = std::env::var("DOWNSYNC_COMMIT").ok().filter(|c| !c.trim().is_empty());
    let commit = given.or_else(|| {
        // Rebuilt when HEAD moves: HEAD itself, the branch it names, and packed refs (the
        // paths `git` gives also hold in a worktree, whose `.git` is a file).
        for path in ["HEAD", "packed-refs"] {
            if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", path]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
            && let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &branch])
        {
            println!("cargo:rerun-if-changed={p}");
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!("cargo:rustc-env=DOWNSYNC_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
