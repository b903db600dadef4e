//! What the browser tests need: Debian's headless `chromium`, node and
//! playwright-core (`npm ci` in `tests/browser`). Without them a test
//! prints `skipped: …`, unless `EMAIL2FA_TEST_BROWSER=1` (CI), where that
//! fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `tests/browser`, or `None` after saying why the browser cannot run
/// (`what` names what then goes untested); panics instead in CI.
pub fn browser_dir_or_skip(what: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let Some(why) = missing_tools(&dir) else {
        return Some(dir);
    };
    assert!(
        std::env::var("EMAIL2FA_TEST_BROWSER").as_deref() != Ok("1"),
        "EMAIL2FA_TEST_BROWSER=1 but {why}"
    );
    eprintln!("skipped: {why}, so {what} was not tested in a browser");
    None
}

/// Why the browser tests cannot run here, if they cannot.
fn missing_tools(browser_dir: &Path) -> Option<String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is not installed".into());
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "{chromium} is missing (apt-get install -y chromium)"
        ));
    }
    if !browser_dir.join("node_modules/playwright-core").exists() {
        return Some("playwright-core is missing (run npm ci in tests/browser)".into());
    }
    None
}
