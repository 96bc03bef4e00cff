//! The demo setup of `sensegate serve --demo`.

use sqlx::Row;

use crate::apps::{self, NewApp};
use crate::audit::{self, Event};
use crate::devices::{self, NewDevice};
use crate::error::AdminError;
use crate::groups::{self, NewGroup};
use crate::tenants::DEFAULT_TENANT;
use crate::validate;
use crate::{Admin, DemoSeed};

/// `(id, name)` of the demo devices.
const DEVICES: [(&str, &str); 3] = [
    ("demo-press-1", "Press 1"),
    ("demo-press-2", "Press 2"),
    ("demo-oven-1", "Oven 1"),
];
const GROUP_ID: &str = "presses";
const GROUP_NAME: &str = "Presses";
const APP_NAME: &str = "Demo dashboard";
/// The demo application's lifetime.
const APP_LIFETIME_MS: i64 = 365 * 24 * 3600 * 1000;
const ACTOR: &str = "demo";

impl Admin {
    /// Seeds the demo in tenant `default` (idempotent): devices
    /// `demo-press-1`, `demo-press-2`, `demo-oven-1`; group `presses` with the
    /// two presses; application "Demo dashboard" (one year, anomalies
    /// included, devices `[demo-oven-1]`, groups `[presses]`).
    ///
    /// Secrets are stored hashed, so on a second run the demo application's
    /// secret and the demo devices' keys are rotated to have fresh ones to
    /// print. Objects the operator changed are left as they are.
    pub async fn seed_demo(&self) -> Result<DemoSeed, AdminError> {
        let now = self.now_ms();
        let mut change = self.change().await?;
        let tenant = DEFAULT_TENANT;
        let mut device_keys = Vec::new();
        for (id, name) in DEVICES {
            let exists =
                sqlx::query("SELECT COUNT(*) FROM devices WHERE tenant_id = $1 AND id = $2")
                    .bind(tenant)
                    .bind(id)
                    .fetch_one(change.conn())
                    .await?
                    .try_get::<i64, _>(0)?
                    > 0;
            let key = if exists {
                devices::rotate_key(change.conn(), tenant, id, now).await?
            } else {
                let d = NewDevice {
                    id: id.to_string(),
                    name: validate::name("name", name)?,
                    metadata: serde_json::json!({ "demo": true }),
                };
                devices::insert(change.conn(), tenant, &d, now).await?
            };
            device_keys.push((id.to_string(), key));
        }
        let group_exists =
            sqlx::query("SELECT COUNT(*) FROM device_groups WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(GROUP_ID)
                .fetch_one(change.conn())
                .await?
                .try_get::<i64, _>(0)?
                > 0;
        if !group_exists {
            let g = NewGroup {
                id: Some(GROUP_ID.to_string()),
                name: validate::name("name", GROUP_NAME)?,
                devices: vec!["demo-press-1".into(), "demo-press-2".into()],
            };
            groups::insert(change.conn(), tenant, &g, now).await?;
        }
        let name = validate::name("name", APP_NAME)?;
        let (app_id, client_id, client_secret) =
            match apps::find_by_name(change.conn(), tenant, &name.key).await? {
                Some(id) => {
                    let secret = apps::rotate_secret(change.conn(), tenant, &id, now).await?;
                    let client_id: String =
                        sqlx::query("SELECT client_id FROM applications WHERE id = $1")
                            .bind(&id)
                            .fetch_one(change.conn())
                            .await?
                            .try_get(0)?;
                    (id, client_id, secret)
                }
                None => {
                    let a = NewApp {
                        name,
                        expires_at_ms: now + APP_LIFETIME_MS,
                        include_anomalies: true,
                        devices: vec!["demo-oven-1".into()],
                        groups: vec![GROUP_ID.into()],
                    };
                    apps::insert(change.conn(), tenant, &a, now).await?
                }
            };
        audit::record(
            change.conn(),
            &Event::new(tenant, ACTOR.into(), "demo.seed", "application", &app_id),
        )
        .await?;
        change.commit().await?;
        Ok(DemoSeed {
            client_id,
            client_secret,
            devices: device_keys,
        })
    }
}
