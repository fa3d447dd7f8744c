//! The Python client's test suite (`clients/python/tests`, pytest) and the web console's browser
//! tests (`tests/console`, pytest with Selenium driving Debian's headless Chromium), each against
//! a real `veil serve` on loopback. scripts/test.sh installs the venv, Chromium and ChromeDriver.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// The venv scripts/test.sh installs beside the build (`VEIL_CLIENT_TOOLS` overrides it).
fn client_tools() -> PathBuf {
    let dir = match std::env::var("VEIL_CLIENT_TOOLS") {
        Ok(p) => PathBuf::from(p),
        Err(_) => {
            let exe = std::env::current_exe().expect("test binary path");
            exe.ancestors()
                .nth(3)
                .expect("target dir")
                .join("client-tools")
        }
    };
    assert!(
        dir.join("bin/python").exists(),
        "the client test tools are not at {}: run scripts/test.sh (it installs them) or set \
         VEIL_CLIENT_TOOLS",
        dir.display()
    );
    dir
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs pytest on `suite` against a fresh server whose admin token the suite gets in
/// `VEIL_ADMIN_TOKEN`; fails with pytest's output.
fn pytest_against_a_server(suite: &Path) {
    let python = client_tools().join("bin/python");
    let env = Env::new();
    env.ok(&["init"]);
    let admin = token_for(&env, "ops", "admin");
    let server = Server::start(&env.data_dir(), &[]);
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(suite)
        .current_dir(workspace())
        .env("PYTHONPATH", workspace().join("clients/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("VEIL_URL", server.url())
        .env("VEIL_ADMIN_TOKEN", admin)
        .env("VEIL_MODULES", env.path().join("modules"))
        .output()
        .expect("run pytest");
    assert!(
        out.status.success(),
        "pytest {} failed:\n{}\n{}",
        suite.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn the_python_client_passes_its_suite_against_a_real_server() {
    pytest_against_a_server(&workspace().join("clients/python/tests"));
}

/// The web console in headless Chromium: a holder approves a job, a consumer reads the release
/// with its intervals, a reviewer verifies the checkpoint in the page and sees a tampered one
/// rejected, and a consumer's pages never show another consumer's job (DOM and network).
#[test]
fn the_web_console_works_for_each_party_in_a_real_browser() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run scripts/test.sh (it installs Debian's chromium and \
             chromium-driver)"
        );
    }
    pytest_against_a_server(&workspace().join("tests/console"));
}
