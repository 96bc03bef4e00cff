//! The plugin API through which the control plane tells the broker who may
//! do what.
//!
//! The broker knows nothing of SQL, secrets or the admin. The admin (in the
//! same process, or across the network in a later mode) hands it a versioned
//! [`Snapshot`] of everything the data plane needs; the broker compiles it
//! into an indexed [`AccessTable`] and swaps it in atomically, so readers
//! (device hellos, token checks, open streams) never wait on a reload.
//!
//! All identifiers are scoped by tenant: a device id is unique within its
//! tenant only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Everything the broker needs from the control plane, at one version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Strictly increasing with every change the admin makes.
    pub version: u64,
    /// Public keys that may have signed a valid access token.
    pub verification_keys: Vec<VerificationKey>,
    /// Every device of every tenant.
    pub devices: Vec<DeviceEntry>,
    /// Every device group of every tenant.
    pub groups: Vec<GroupEntry>,
    /// Every external application of every tenant.
    pub applications: Vec<ApplicationEntry>,
}

/// An Ed25519 public key that verifies access tokens carrying `kid`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerificationKey {
    /// JWT header `kid`.
    pub kid: String,
    /// The raw 32-byte Ed25519 public key, base64url without padding (the
    /// JWK `x` parameter).
    pub ed25519_x: String,
}

/// A registered device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceEntry {
    /// Owning tenant id.
    pub tenant: String,
    /// Device id, unique within the tenant.
    pub id: String,
    /// Lower-case hex SHA-256 of the device's ingest key. Ingest keys carry
    /// 256 bits of entropy, so a fast hash is safe to store and index by.
    pub key_sha256: String,
    /// A disabled device's sessions are refused.
    pub enabled: bool,
}

/// A device group: the application sees every current member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GroupEntry {
    /// Owning tenant id.
    pub tenant: String,
    /// Group id.
    pub id: String,
    /// Member device ids (same tenant).
    pub devices: Vec<String>,
}

/// An external application.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationEntry {
    /// Owning tenant id.
    pub tenant: String,
    /// Application id (the token's `app` claim).
    pub id: String,
    /// OAuth2 client id (the token's `sub`).
    pub client_id: String,
    /// `false` once the operator disables it.
    pub enabled: bool,
    /// Expiry instant, milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
    /// Whether anomaly events are delivered.
    pub include_anomalies: bool,
    /// Devices named directly.
    pub devices: Vec<String>,
    /// Groups named; their members are resolved at compile time.
    pub groups: Vec<String>,
    /// Bumped on every secret rotation; tokens carry the generation they
    /// were issued under (`sgen`) and older ones stop working.
    pub secret_generation: u64,
}

/// A device's identity inside the broker: tenant plus device id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    /// Tenant id.
    pub tenant: Arc<str>,
    /// Device id within the tenant.
    pub id: Arc<str>,
}

impl DeviceKey {
    /// Builds a key from its parts.
    pub fn new(tenant: &str, id: &str) -> Self {
        DeviceKey {
            tenant: tenant.into(),
            id: id.into(),
        }
    }
}

/// A compiled application: its resolved device set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppAccess {
    /// The snapshot entry it came from.
    pub entry: ApplicationEntry,
    /// Direct devices plus current group members, existing devices only.
    pub devices: HashSet<DeviceKey>,
}

impl AppAccess {
    /// Why the application may not stream now, if it may not.
    pub fn refusal(&self, now_ms: i64) -> Option<&'static str> {
        if !self.entry.enabled {
            Some("application disabled")
        } else if now_ms >= self.entry.expires_at_ms {
            Some("application expired")
        } else {
            None
        }
    }
}

/// The indexed form of a [`Snapshot`]; immutable once built.
#[derive(Default)]
pub struct AccessTable {
    /// The snapshot's version.
    pub version: u64,
    /// `kid` → token verification key.
    pub keys: HashMap<String, jsonwebtoken::DecodingKey>,
    /// Ingest key hash → device.
    pub devices_by_key: HashMap<[u8; 32], DeviceKey>,
    /// Device → enabled.
    pub devices: HashMap<DeviceKey, bool>,
    /// Application id → compiled application.
    pub apps: HashMap<String, AppAccess>,
}

/// Why a snapshot could not be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A verification key is not 32 bytes of base64url.
    #[error("verification key {0} is not a base64url Ed25519 public key")]
    BadKey(String),
    /// A device key hash is not 64 hex characters.
    #[error("device {0} has a malformed key hash")]
    BadKeyHash(String),
}

impl AccessTable {
    /// Indexes a snapshot. Unknown devices named by applications or groups
    /// are ignored (they may have been deleted in the same change).
    pub fn compile(s: &Snapshot) -> Result<Self, SnapshotError> {
        use base64::Engine as _;
        let mut keys = HashMap::new();
        for k in &s.verification_keys {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&k.ed25519_x)
                .ok()
                .filter(|v| v.len() == 32)
                .ok_or_else(|| SnapshotError::BadKey(k.kid.clone()))?;
            keys.insert(k.kid.clone(), jsonwebtoken::DecodingKey::from_ed_der(&raw));
        }
        let mut devices = HashMap::new();
        let mut devices_by_key = HashMap::new();
        for d in &s.devices {
            let key = DeviceKey::new(&d.tenant, &d.id);
            let hash = decode_hex32(&d.key_sha256)
                .ok_or_else(|| SnapshotError::BadKeyHash(d.id.clone()))?;
            devices_by_key.insert(hash, key.clone());
            devices.insert(key, d.enabled);
        }
        let groups: HashMap<(&str, &str), &GroupEntry> = s
            .groups
            .iter()
            .map(|g| ((g.tenant.as_str(), g.id.as_str()), g))
            .collect();
        let mut apps = HashMap::new();
        for a in &s.applications {
            let mut set = HashSet::new();
            let direct = a.devices.iter();
            let via_groups = a
                .groups
                .iter()
                .filter_map(|g| groups.get(&(a.tenant.as_str(), g.as_str())))
                .flat_map(|g| g.devices.iter());
            for id in direct.chain(via_groups) {
                let key = DeviceKey::new(&a.tenant, id);
                if devices.contains_key(&key) {
                    set.insert(key);
                }
            }
            apps.insert(
                a.id.clone(),
                AppAccess {
                    entry: a.clone(),
                    devices: set,
                },
            );
        }
        Ok(AccessTable {
            version: s.version,
            keys,
            devices_by_key,
            devices,
            apps,
        })
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
    }
    Some(out)
}

/// Where the control plane pushes permission state. The broker implements
/// it; the admin holds it without knowing anything else about the broker.
pub trait AccessSink: Send + Sync + 'static {
    /// Installs a new snapshot. Versions not above the current one are ignored.
    fn install(&self, snapshot: Snapshot) -> Result<(), SnapshotError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, devices: &[&str], groups: &[&str]) -> ApplicationEntry {
        ApplicationEntry {
            tenant: "t1".into(),
            id: id.into(),
            client_id: format!("c-{id}"),
            enabled: true,
            expires_at_ms: i64::MAX,
            include_anomalies: false,
            devices: devices.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            secret_generation: 1,
        }
    }

    fn device(tenant: &str, id: &str) -> DeviceEntry {
        DeviceEntry {
            tenant: tenant.into(),
            id: id.into(),
            key_sha256: format!("{:064x}", id.len()),
            enabled: true,
        }
    }

    #[test]
    fn groups_resolve_within_the_tenant_only() {
        let s = Snapshot {
            version: 3,
            devices: vec![device("t1", "a"), device("t1", "b"), device("t2", "c")],
            groups: vec![
                GroupEntry {
                    tenant: "t1".into(),
                    id: "g".into(),
                    devices: vec!["b".into(), "c".into()],
                },
                GroupEntry {
                    tenant: "t2".into(),
                    id: "g".into(),
                    devices: vec!["c".into()],
                },
            ],
            applications: vec![entry("app", &["a", "ghost"], &["g"])],
            ..Default::default()
        };
        let t = AccessTable::compile(&s).unwrap();
        let mut got: Vec<_> = t.apps["app"].devices.iter().map(|d| &*d.id).collect();
        got.sort();
        assert_eq!(got, ["a", "b"]);
        assert_eq!(t.version, 3);
    }

    #[test]
    fn malformed_entries_are_refused() {
        let mut s = Snapshot {
            devices: vec![device("t", "d")],
            ..Default::default()
        };
        s.devices[0].key_sha256 = "zz".into();
        assert!(matches!(
            AccessTable::compile(&s),
            Err(SnapshotError::BadKeyHash(_))
        ));
        let s = Snapshot {
            verification_keys: vec![VerificationKey {
                kid: "k".into(),
                ed25519_x: "AAAA".into(),
            }],
            ..Default::default()
        };
        assert!(matches!(
            AccessTable::compile(&s),
            Err(SnapshotError::BadKey(k)) if k == "k"
        ));
    }

    #[test]
    fn disabled_or_expired_apps_are_refused() {
        let mut a = AppAccess {
            entry: entry("x", &[], &[]),
            devices: HashSet::new(),
        };
        assert_eq!(a.refusal(0), None);
        a.entry.expires_at_ms = 10;
        assert_eq!(a.refusal(10), Some("application expired"));
        a.entry.enabled = false;
        assert_eq!(a.refusal(0), Some("application disabled"));
    }
}
