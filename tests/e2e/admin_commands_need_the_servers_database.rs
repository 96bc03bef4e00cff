//! `sensegate admin tenant|key|signing-key` act on the server's database. A
//! mistyped `--data-dir` must fail, not create and bootstrap a new database
//! whose fresh admin key looks like success.

use std::process::Command;

#[test]
fn a_data_dir_without_a_database_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("admn-data");
    let out = Command::new(env!("CARGO_BIN_EXE_sensegate"))
        .args(["admin", "key", "--data-dir"])
        .arg(&missing)
        .arg("list")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no database at"), "{stderr}");
    assert!(
        !stderr.contains("backtrace"),
        "an operator error, not a crash: {stderr}"
    );
    assert!(!missing.exists(), "the mistyped directory was created");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "no key printed"
    );
}
