//! The image's runtime stage, without a container engine: `deploy/rootfs-check.sh`
//! builds a Debian minbase root with debootstrap (cached in `.cache/rootfs/`),
//! applies the last stage of `deploy/Containerfile` to a copy of it by reading
//! the file, starts ENTRYPOINT + CMD in it as the image's user with the
//! image's environment, imports real photos, asks for similar products, checks
//! the HTTP probes and stops it with SIGTERM. The binary is the one cargo built
//! for this test run.
//!
//! Needs root (debootstrap, chroot, mount), `chroot`, `unshare`, and
//! debootstrap or apt-get to install it. Without them, or with
//! `LOOKBOOK_SKIP_IMAGE_CHECK=1`, the test says SKIPPED; under `CI=true` a
//! missing tool or user fails it instead. `make image-check` runs the script
//! directly.

use std::path::Path;
use std::process::{Command, Stdio};

const TEST: &str = "runtime_filesystem_serves_from_chroot";

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Why the check cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !is_root() {
        return Some("needs root (debootstrap, chroot, mount)".to_owned());
    }
    for tool in ["chroot", "unshare", "mount", "timeout", "python3"] {
        if !on_path(tool) {
            return Some(format!("{tool} not found"));
        }
    }
    if !on_path("debootstrap") && !on_path("apt-get") {
        return Some("neither debootstrap nor apt-get (to install it) found".to_owned());
    }
    None
}

#[test]
fn runtime_filesystem_serves_from_chroot() {
    if std::env::var("LOOKBOOK_SKIP_IMAGE_CHECK").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED {TEST}: LOOKBOOK_SKIP_IMAGE_CHECK=1; run make image-check");
        return;
    }
    if let Some(reason) = missing_prerequisite() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{TEST}: {reason}; the image check is required under CI=true");
        }
        eprintln!("SKIPPED {TEST}: {reason}; run make image-check");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Output is streamed (not captured): a cold run spends minutes in debootstrap.
    let status = Command::new("bash")
        .arg(repo.join("deploy/rootfs-check.sh"))
        .current_dir(repo)
        .env("LOOKBOOK_BIN", env!("CARGO_BIN_EXE_lookbook"))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .expect("running bash deploy/rootfs-check.sh");
    assert!(
        status.success(),
        "deploy/rootfs-check.sh failed ({status}); its output is above"
    );
}
