//! The Kubernetes manifests (`deploy/k8s`): the base and every overlay
//! render with `kubectl kustomize`, validate against the Kubernetes API
//! schemas and the structural checks of `deploy/validate.sh`, and carry a
//! `lookbook.toml` that the server's own loader accepts.
//!
//! Needs `kubectl` (for its built-in kustomize) and `python3` with `venv`
//! (the script installs its validator from PyPI into `.cache/deploy-venv`
//! on first use). Without kubectl the test says SKIPPED, except under
//! `CI=true`, where that fails it.

use std::path::{Path, PathBuf};
use std::process::Command;

use lookbook::config::{Config, Overrides};

/// What deploy/validate.sh renders: `OUT/<target>/lookbook.toml` for each.
const TARGETS: [&str; 4] = ["base", "dev", "prod", "cluster"];

fn kubectl_available() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// `Config::load` of `path` as the server does it, printing the error when
/// it fails.
fn config_loads(target: &str, path: &Path) -> bool {
    match Config::load(Some(path), &Overrides::default()) {
        Ok(_) => true,
        Err(e) => {
            eprintln!(
                "{target}: Config::load({}) failed: {e}\n  {e:?}",
                path.display()
            );
            false
        }
    }
}

/// The rendered config as the pod sees it. The prod config names files that
/// Kubernetes mounts from Secrets under `/etc/lookbook/` (token files are
/// read when the config loads), so they are laid out the same way under
/// `root` and the config's paths pointed there; other targets load as they
/// are.
fn as_mounted(target: &str, rendered: &Path, root: &Path) -> PathBuf {
    let text = std::fs::read_to_string(rendered)
        .unwrap_or_else(|e| panic!("{target}: reading {}: {e}", rendered.display()));
    if !text.contains("/etc/lookbook/tokens/") && !text.contains("/etc/lookbook/tls/") {
        return rendered.to_path_buf();
    }
    let etc = root.join(target).join("etc/lookbook");
    std::fs::create_dir_all(etc.join("tokens")).expect("creating the tokens mount");
    std::fs::create_dir_all(etc.join("tls")).expect("creating the tls mount");
    // Secrets as `kubectl create secret` would hold them: one token per line.
    std::fs::write(etc.join("tokens/read"), format!("{}\n", "r".repeat(64)))
        .expect("writing the read token");
    std::fs::write(etc.join("tokens/write"), format!("{}\n", "w".repeat(64)))
        .expect("writing the write token");
    let mounted = root.join(target).join("lookbook.toml");
    let etc_prefix = format!("{}/", etc.display());
    std::fs::write(&mounted, text.replace("/etc/lookbook/", &etc_prefix))
        .expect("writing the mounted lookbook.toml");
    mounted
}

#[test]
fn manifests_render_and_validate_for_every_overlay() {
    if !kubectl_available() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "kubectl is required under CI=true (deploy/validate.sh renders with `kubectl kustomize`)"
            );
        }
        eprintln!(
            "SKIPPED manifests_render_and_validate_for_every_overlay: kubectl not found (needed by deploy/validate.sh)"
        );
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("a temporary directory");
    let run = Command::new("bash")
        .arg(repo.join("deploy/validate.sh"))
        .arg(out.path())
        .current_dir(repo)
        .output()
        .expect("running bash deploy/validate.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "deploy/validate.sh failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    eprint!("{stdout}");

    let mounts = tempfile::tempdir().expect("a temporary directory");
    let mut failed = Vec::new();
    for target in TARGETS {
        let rendered = out.path().join(target).join("lookbook.toml");
        assert!(
            rendered.is_file(),
            "{target}: deploy/validate.sh wrote no {}",
            rendered.display()
        );
        assert!(
            out.path().join(format!("{target}.yaml")).is_file(),
            "{target}: deploy/validate.sh wrote no rendered manifests"
        );
        let config = as_mounted(target, &rendered, mounts.path());
        if !config_loads(target, &config) {
            failed.push(target);
        }
    }
    assert!(
        failed.is_empty(),
        "the rendered lookbook.toml of {failed:?} does not load (errors above)"
    );
}
