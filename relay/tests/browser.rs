//! The browser client (`clients/js`) and the demo pages, in headless Chromium
//! against this build's relay binary: runs the `node --test` suites in
//! `clients/js/test/` and the TypeScript declarations' strict type check.
//! Needs Node.js, Debian's `chromium` and `npm ci` in `clients/js`
//! (`.ci/run` installs all three).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
}

fn node_modules(dir: &Path) {
    assert!(
        dir.join("node_modules/playwright-core").is_dir() && dir.join("node_modules/typescript").is_dir(),
        "{}: run `npm ci` there first (.ci/run does)",
        dir.display()
    );
}

fn report(what: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown on failure, or with --nocapture (the suites print measured sync latencies).
    println!("{what}:\n{stdout}\n{stderr}");
    assert!(out.status.success(), "{what} failed ({}); output above", out.status);
}

#[test]
fn browser_client_and_demos_in_chromium() {
    let dir = js_dir();
    node_modules(&dir);
    let mut suites: Vec<PathBuf> = std::fs::read_dir(dir.join("test"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    suites.sort();
    assert!(suites.len() >= 4, "the client, React and demo suites: {suites:?}");
    let out = Command::new("node")
        // A hung test fails (after 5 minutes) instead of hanging the run.
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec", "--test-timeout=300000"])
        .args(&suites)
        .current_dir(&dir)
        .env("AETHER_RELAY_BIN", env!("CARGO_BIN_EXE_aether-relay"))
        .env_remove("AETHER_WEB_ASSETS_DIR") // test the pages built into the binary
        .output()
        .expect("running node (install Node.js)");
    report("node --test clients/js/test", &out);
}

#[test]
fn typescript_declarations_pass_a_strict_type_check() {
    let dir = js_dir();
    node_modules(&dir);
    let out = Command::new("node")
        .args(["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"])
        .current_dir(&dir)
        .output()
        .expect("running node (install Node.js)");
    report("tsc --strict --noEmit (clients/js/tsconfig.json)", &out);
}
