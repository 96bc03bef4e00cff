//! The MQTT 3.1.1 subset the baseline needs: CONNECT, SUBSCRIBE and QoS 0
//! PUBLISH out; CONNACK, SUBACK and PUBLISH in.
//!
//! Hand-rolled rather than a client library so that the subscriber side
//! costs the same per message for every target (a slice of the read buffer,
//! no allocation, no per-message channel hop) and the comparison measures
//! the brokers, not the clients.

use anyhow::{bail, Result};

use crate::framing::{Frame, Framer};
use crate::tally::Tally;

const CONNECT: u8 = 0x10;
const CONNACK: u8 = 0x20;
const PUBLISH: u8 = 0x30;
const SUBSCRIBE: u8 = 0x82;
const SUBACK: u8 = 0x90;
const PINGRESP: u8 = 0xd0;

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT with a clean session and keep-alive off (runs are short).
pub(crate) fn connect(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]);
    put_str(&mut body, client_id.as_bytes());
    let mut out = vec![CONNECT];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// SUBSCRIBE at QoS 0 to `topics`.
pub(crate) fn subscribe(packet_id: u16, topics: &[String]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for t in topics {
        put_str(&mut body, t.as_bytes());
        body.push(0);
    }
    let mut out = vec![SUBSCRIBE];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Appends a QoS 0 PUBLISH of `payload` on `topic`.
pub(crate) fn publish(out: &mut Vec<u8>, topic: &str, payload: &[u8]) {
    out.push(PUBLISH);
    put_len(out, 2 + topic.len() + payload.len());
    put_str(out, topic.as_bytes());
    out.extend_from_slice(payload);
}

/// Splits incoming packets and counts PUBLISH payloads.
#[derive(Debug)]
pub(crate) struct MqttFramer {
    /// What has been counted so far.
    pub(crate) tally: Tally,
    /// A CONNACK accepted the session.
    pub(crate) connected: bool,
    /// SUBACKs received.
    pub(crate) subacks: u32,
}

impl MqttFramer {
    /// A framer counting into `tally`.
    pub(crate) fn new(tally: Tally) -> MqttFramer {
        MqttFramer {
            tally,
            connected: false,
            subacks: 0,
        }
    }
}

impl Framer for MqttFramer {
    fn measure(&mut self, buf: &[u8]) -> Result<Frame> {
        let mut len = 0usize;
        for i in 0..4 {
            let Some(&b) = buf.get(1 + i) else {
                return Ok(Frame::NeedBytes(2 + i));
            };
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                let total = 2 + i + len;
                return Ok(if buf.len() >= total {
                    Frame::Complete(total)
                } else {
                    Frame::NeedBytes(total)
                });
            }
        }
        bail!("malformed MQTT remaining length")
    }

    fn frame(&mut self, p: &[u8]) -> Result<()> {
        let header = p[0];
        let at = 1 + p[1..].iter().position(|b| b & 0x80 == 0).unwrap_or(0) + 1;
        let body = &p[at..];
        match header & 0xf0 {
            PUBLISH => {
                if body.len() < 2 {
                    bail!("short PUBLISH");
                }
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let qos = (header >> 1) & 3;
                let skip = 2 + topic_len + if qos > 0 { 2 } else { 0 };
                let Some(payload) = body.get(skip..) else {
                    bail!("short PUBLISH");
                };
                self.tally.event(payload);
            }
            CONNACK => match body.get(1) {
                Some(0) => self.connected = true,
                rc => bail!("broker refused the MQTT connection (return code {rc:?})"),
            },
            SUBACK => {
                if body.get(2..).unwrap_or_default().contains(&0x80) {
                    bail!("broker refused a subscription");
                }
                self.subacks += 1;
            }
            PINGRESP => self.tally.controls += 1,
            other => bail!("unexpected MQTT packet type {other:#04x}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{tests::every_split, Reassembler};
    use crate::tally::STAMP_BASE;

    #[test]
    fn encodes_like_the_spec_examples() {
        assert_eq!(
            connect("ab"),
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 2, b'a', b'b']
        );
        assert_eq!(
            subscribe(7, &["t/1".into()]),
            [0x82, 8, 0, 7, 0, 3, b't', b'/', b'1', 0]
        );
        let mut p = Vec::new();
        publish(&mut p, "t", &[b'x'; 200]);
        assert_eq!(&p[..5], &[0x30, 0xcb, 0x01, 0, 1], "two-byte length 203");
        assert_eq!(p.len(), 3 + 203);
    }

    #[test]
    fn splits_packets_across_every_boundary() {
        let payload = format!("{{\"sent_ns\":{}}}", STAMP_BASE + 42);
        let mut stream = vec![0x20, 2, 0, 0, 0x90, 3, 0, 1, 0];
        publish(&mut stream, "sensegate-lt/d0", payload.as_bytes());
        publish(&mut stream, "sensegate-lt/d0", &[b'y'; 300]);
        every_split(
            &stream,
            || MqttFramer::new(Tally::new(1)),
            |f| {
                (
                    f.connected,
                    f.subacks,
                    f.tally.events,
                    f.tally.stamps.clone(),
                )
            },
        );
        let mut f = MqttFramer::new(Tally::new(1));
        Reassembler::default().feed(&stream, &mut f).unwrap();
        assert!(f.connected);
        assert_eq!((f.subacks, f.tally.events), (1, 2));
        assert_eq!(f.tally.stamps, vec![42]);
    }

    #[test]
    fn refusals_are_errors() {
        let mut f = MqttFramer::new(Tally::new(1));
        assert!(Reassembler::default()
            .feed(&[0x20, 2, 0, 5], &mut f)
            .is_err());
        let mut f = MqttFramer::new(Tally::new(1));
        assert!(Reassembler::default()
            .feed(&[0x90, 3, 0, 1, 0x80], &mut f)
            .is_err());
        let mut f = MqttFramer::new(Tally::new(1));
        assert!(f.measure(&[0x30, 0xff, 0xff, 0xff, 0xff, 0]).is_err());
    }
}
