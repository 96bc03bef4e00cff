//! The admin's error type.

use sensegate_broker::access::SnapshotError;

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The configuration cannot work (e.g. a zero token TTL).
    #[error("configuration: {0}")]
    Config(String),
    /// The database failed or refused a statement.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The embedded migrations could not be applied.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A request field is missing or invalid (HTTP 400, naming the field).
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field, as named in the request.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The object does not exist in the caller's tenant (HTTP 404).
    #[error("{0} not found")]
    NotFound(String),
    /// The change clashes with an existing object (HTTP 409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The broker refused the permission snapshot: a bug in the admin.
    #[error("permission feed: {0}")]
    Feed(#[from] SnapshotError),
    /// A stored signing key is unusable, or signing failed.
    #[error("signing key: {0}")]
    Signing(String),
    /// The background audit writer is gone (it stops only when the admin
    /// is dropped).
    #[error("audit log: {0}")]
    Audit(String),
}

impl AdminError {
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        AdminError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Maps a unique-constraint violation to [`AdminError::Conflict`]; any other
/// error passes through.
pub(crate) fn conflict_on_unique(e: sqlx::Error, message: &str) -> AdminError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            AdminError::Conflict(message.to_string())
        }
        _ => AdminError::Database(e),
    }
}
