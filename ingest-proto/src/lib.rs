//! The SenseGate device wire format.
//!
//! A device talks to the broker over one QUIC connection (ALPN [`ALPN`],
//! TLS 1.3) and its first bidirectional stream. Everything on that stream is a
//! sequence of **frames**: a little-endian `u32` payload length followed by
//! that many bytes of an [rkyv] archive. The rkyv build uses the `unaligned`
//! format, so an archive is valid at any byte offset: the broker validates a
//! frame in place and forwards the very same bytes, untouched, to zero-copy
//! consumers.
//!
//! ```text
//! device → broker   Frame(Hello) Frame(Telemetry) Frame(Telemetry) …
//! broker → device   Frame(ServerMsg::HelloAck) Frame(ServerMsg::Ack) …
//! ```
//!
//! A batch is nothing more than several telemetry frames written together;
//! each event is its own archive so that each can be validated, stored and
//! forwarded alone.
//!
//! This crate is a pure codec (no runtime, no sockets) except for the optional
//! `client` feature, which adds the QUIC device client used by
//! `sensegate publish` and the load tester, so that there is exactly one
//! encoder of the protocol.
//!
//! # Invariants
//! - [`decode_frame`] never allocates and never reads past the declared length.
//! - A frame longer than the caller's limit is rejected before its payload is read.
//! - [`validate_telemetry`] accepts only archives whose every byte checks out
//!   (bytecheck) *and* whose values are meaningful (finite numbers, bounded
//!   names and counts), so nothing downstream has to re-check.

#![warn(missing_docs)]

#[cfg(feature = "client")]
pub mod client;
mod egress;
mod frame;
mod json;
mod schema;

pub use egress::{decode_ws_event, encode_ws_event_header, WsEvent};
pub use frame::{
    decode_frame, encode_frame, validate_hello, validate_server_msg, validate_telemetry,
    FrameError, FRAME_HEADER_LEN, MAX_CONTROL_FRAME_LEN, MAX_SEQ, MAX_TELEMETRY_FRAME_LEN,
};
pub use json::{render_event_json, write_rfc3339_millis};
pub use schema::{
    ArchivedHello, ArchivedKind, ArchivedReading, ArchivedServerMsg, ArchivedTelemetry, Hello,
    Kind, Reading, RejectCode, ServerMsg, Telemetry, MAX_NAME_LEN, MAX_READINGS,
};

/// The ALPN protocol id a device must offer.
pub const ALPN: &[u8] = b"sensegate/1";

/// The protocol version a [`Hello`] carries.
pub const PROTOCOL_VERSION: u16 = 1;
