//! Runs the Kubernetes manifest checks (`scripts/test-manifests.sh`), so
//! that `cargo test` covers them: schema validation with the bundled
//! Kubernetes schemas, and the sensor's host-access requirements.

use std::process::Command;

use picket_e2e::{prerequisite, repo_root};

#[test]
fn manifests_pass_schema_and_contract_checks() {
    let python = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .output();
    let has_venv = python
        .map(|output| output.status.success())
        .unwrap_or(false);
    if !prerequisite(
        has_venv,
        "python3 with the venv module is not installed (Debian: python3-venv)",
    ) {
        return;
    }

    let script = repo_root().join("scripts/test-manifests.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|error| panic!("failed to run {}: {error}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(
        output.status.success(),
        "manifest checks failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(" passed"),
        "pytest reported no passed test:\n{stdout}"
    );
    assert!(
        !stdout.contains(" failed"),
        "pytest reported failures:\n{stdout}"
    );
}
