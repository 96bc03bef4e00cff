//! The archived message types.

use rkyv::{Archive, Deserialize, Serialize};

/// Most readings one telemetry event may carry.
pub const MAX_READINGS: usize = 64;
/// Longest reading name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// First frame a device sends: who it is and how it proves it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// The device id, as registered by the operator.
    pub device_id: String,
    /// The device's ingest key (shown once at registration).
    pub key: String,
    /// [`crate::PROTOCOL_VERSION`] of the sender.
    pub version: u16,
}

/// What a telemetry event is.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum Kind {
    /// An ordinary reading.
    Reading,
    /// A reading the device flagged as anomalous.
    Anomaly,
}

impl Kind {
    /// The name used in JSON (`kind`) and as the SSE `event:` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reading => "reading",
            Kind::Anomaly => "anomaly",
        }
    }

    /// The SSE / WebSocket event name for this kind.
    pub fn event_name(self) -> &'static str {
        match self {
            Kind::Reading => "telemetry",
            Kind::Anomaly => "anomaly",
        }
    }
}

impl ArchivedKind {
    /// The native kind.
    pub fn to_native(self) -> Kind {
        match self {
            ArchivedKind::Reading => Kind::Reading,
            ArchivedKind::Anomaly => Kind::Anomaly,
        }
    }
}

/// One named numeric value.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Reading {
    /// Reading name, e.g. `temperature`.
    pub name: String,
    /// Finite value.
    pub value: f64,
}

/// One telemetry event, one archive per event.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Telemetry {
    /// Device-assigned sequence number; strictly increasing per device. The
    /// broker acknowledges cumulatively by it and drops anything not above
    /// the last accepted one as a duplicate.
    pub seq: u64,
    /// Measurement time, milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    /// Reading or anomaly.
    pub kind: Kind,
    /// The values.
    pub readings: Vec<Reading>,
}

/// Why the broker refused a session. Also used, as `u32`, as the QUIC
/// application close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectCode {
    /// Unknown device, wrong key, or device disabled.
    Unauthorized,
    /// The device sent bytes that are not a valid frame.
    Malformed,
    /// The device speaks a protocol version this broker does not.
    UnsupportedVersion,
    /// Another session of the same device took over.
    Replaced,
    /// The broker is shutting down.
    ShuttingDown,
    /// The device was disabled or its key rotated while connected.
    CredentialsRevoked,
}

impl RejectCode {
    /// The code as sent in [`ServerMsg::Reject`] and as the QUIC close code.
    pub fn as_u32(self) -> u32 {
        match self {
            RejectCode::Unauthorized => 1,
            RejectCode::Malformed => 2,
            RejectCode::UnsupportedVersion => 3,
            RejectCode::Replaced => 4,
            RejectCode::ShuttingDown => 5,
            RejectCode::CredentialsRevoked => 6,
        }
    }

    /// The inverse of [`RejectCode::as_u32`].
    pub fn from_u32(code: u32) -> Option<Self> {
        Some(match code {
            1 => RejectCode::Unauthorized,
            2 => RejectCode::Malformed,
            3 => RejectCode::UnsupportedVersion,
            4 => RejectCode::Replaced,
            5 => RejectCode::ShuttingDown,
            6 => RejectCode::CredentialsRevoked,
            _ => return None,
        })
    }
}

/// Broker → device messages.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ServerMsg {
    /// The session is accepted. `last_seq` is the highest sequence number the
    /// broker already holds for this device (0 if none): a reconnecting device
    /// resends only what lies above it.
    HelloAck {
        /// Highest sequence already accepted.
        last_seq: u64,
    },
    /// Everything up to and including `up_to_seq` is accepted (or was a duplicate).
    Ack {
        /// Cumulative acknowledgement.
        up_to_seq: u64,
    },
    /// The session is refused or ended; the connection closes with `code`.
    Reject {
        /// [`RejectCode::as_u32`].
        code: u32,
        /// Human-readable reason.
        reason: String,
    },
}
