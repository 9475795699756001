//! Records what the version block of a report says about this build: git revision and branch
//! (when built from this crate's own checkout), the compiler's version and the build date.
//! Never the user or host that built it, nor the revision of a repository it is vendored in.
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Git's answer about this crate's own checkout: only when the repository's top level is the
/// package itself. Built as a path dependency inside a service's repository, or vendored, the
/// repository is the service's, and its revision and branch name are not ours to report.
fn git(args: &[&str]) -> Option<String> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let top = run("git", &["-C", &manifest, "rev-parse", "--show-toplevel"])?;
    let same = std::fs::canonicalize(&top).ok()? == std::fs::canonicalize(&manifest).ok()?;
    let mut full = vec!["-C", manifest.as_str()];
    full.extend_from_slice(args);
    if same {
        run("git", &full)
    } else {
        None
    }
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let rust_version = run(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    let revision = std::env::var("REPORTER_BUILD_REVISION")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=10", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    let branch = std::env::var("REPORTER_BUILD_BRANCH")
        .ok()
        .or_else(|| git(&["rev-parse", "--abbrev-ref", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| {
            run(
                "date",
                &["-u", "-d", &format!("@{s}"), "+%Y-%m-%dT%H:%M:%SZ"],
            )
        })
        .or_else(|| run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
        .unwrap_or_default();
    println!("cargo:rustc-env=REPORTER_RUST_VERSION={rust_version}");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!(
        "cargo:rustc-env=REPORTER_VERSION_LONG={version} (revision {revision}, {rust_version})"
    );
    println!("cargo:rustc-env=REPORTER_REVISION={revision}");
    println!("cargo:rustc-env=REPORTER_BRANCH={branch}");
    println!("cargo:rustc-env=REPORTER_BUILD_DATE={date}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=REPORTER_BUILD_REVISION");
    println!("cargo:rerun-if-env-changed=REPORTER_BUILD_BRANCH");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
