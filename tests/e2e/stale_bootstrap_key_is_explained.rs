//! `SENSEGATE_BOOTSTRAP_ADMIN_KEY` only takes effect on an empty database.
//! Set against a data directory bootstrapped earlier (with another key), it
//! must not be silently ignored: the operator would see nothing but 401s.

use crate::harness::{Server, ADMIN_KEY};

const OTHER_KEY: &str = "sg-test-other-admin-key-fedcba9876543210fedcba98765";
const WARNING: &str = "SENSEGATE_BOOTSTRAP_ADMIN_KEY is ignored";

#[tokio::test]
async fn a_bootstrap_key_set_on_a_bootstrapped_database_is_warned_about() {
    let first = Server::start(&[]);
    assert!(!first.output.lock().unwrap().contains(WARNING));

    // The same key on restart is one of the database's keys: no warning.
    let same = first.restart(&[]);
    let (status, _) = same
        .admin(reqwest::Method::GET, "/api/v1/devices", None)
        .await;
    assert_eq!(status, 200);
    assert!(!same.output.lock().unwrap().contains(WARNING));

    // Another key: the database keeps its keys, and says why the new one fails.
    let other = same.restart_with_admin_key(OTHER_KEY, &[]);
    let status = other
        .client
        .get(other.url("/api/v1/devices"))
        .bearer_auth(OTHER_KEY)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "the stale bootstrap key is not an admin key");
    let (status, _) = other
        .admin(reqwest::Method::GET, "/api/v1/devices", None)
        .await;
    assert_eq!(status, 200, "the key of the first start still works");
    let output = other.output.lock().unwrap().clone();
    assert!(output.contains(WARNING), "no warning; output:\n{output}");
    assert!(!output.contains(OTHER_KEY), "the key itself was logged");
    assert!(!output.contains(ADMIN_KEY), "an admin key was logged");
}
