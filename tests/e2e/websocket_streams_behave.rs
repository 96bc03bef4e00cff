//! The same stream over WebSocket: both subprotocols, resume, and the close
//! codes that tell a client why it was closed.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::Server;

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn connect(
    server: &Server,
    token: &str,
    query: &str,
    protocol: Option<&str>,
) -> (Ws, Option<String>) {
    let url = format!(
        "ws://{}/v1/stream/telemetry?access_token={token}{query}",
        server.http
    );
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect");
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, chosen)
}

/// The next data or close message (pings are answered by the library).
pub(crate) async fn next(ws: &mut Ws) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(m))) => return m,
            other => panic!("no message: {other:?}"),
        }
    }
}

fn close_code(m: &Message) -> u16 {
    match m {
        Message::Close(Some(f)) => u16::from(f.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_json_and_rkyv_carry_the_same_events_and_resume() {
    let server = Server::start(&[]);
    let key = server.create_device("d").await;
    let (id, secret) = server.create_app("ws", &["d"], true).await;
    let token = server.token(&id, &secret).await;
    let (mut json_ws, chosen) = connect(&server, &token, "", Some("sensegate.v1.json")).await;
    assert_eq!(chosen.as_deref(), Some("sensegate.v1.json"));
    let (mut rkyv_ws, chosen) = connect(&server, &token, "", Some("sensegate.v1.rkyv")).await;
    assert_eq!(chosen.as_deref(), Some("sensegate.v1.rkyv"));
    let (mut default_ws, chosen) = connect(&server, &token, "", None).await;
    assert_eq!(chosen, None);
    let lines = "{\"ts\":1000,\"readings\":{\"t\":1.5}}\n{\"ts\":2000,\"kind\":\"anomaly\",\"readings\":{\"t\":99.25}}\n";
    assert!(server.publish("d", &key, lines).status.success());

    let mut first_id = String::new();
    for ws in [&mut json_ws, &mut default_ws] {
        let mut got = Vec::new();
        for _ in 0..2 {
            match next(ws).await {
                Message::Text(t) => got.push(serde_json::from_str::<Value>(&t).unwrap()),
                other => panic!("expected text, got {other:?}"),
            }
        }
        assert_eq!(got[0]["event"], "telemetry");
        assert_eq!(got[0]["data"]["readings"]["t"], 1.5);
        assert_eq!(got[1]["event"], "anomaly");
        assert_eq!(got[1]["data"]["deviceId"], "d");
        first_id = got[0]["id"].as_str().unwrap().to_owned();
    }
    for (seq, value) in [(1u64, 1.5f64), (2, 99.25)] {
        match next(&mut rkyv_ws).await {
            Message::Binary(b) => {
                let ev = sensegate_ingest_proto::decode_ws_event(&b).expect("valid rkyv message");
                assert_eq!(ev.device_id, "d");
                assert_eq!(ev.telemetry.seq.to_native(), seq);
                assert_eq!(ev.telemetry.readings[0].value.to_native(), value);
            }
            other => panic!("expected binary, got {other:?}"),
        }
    }
    // Resume after the first event with the query parameter.
    let (mut resumed, _) =
        connect(&server, &token, &format!("&lastEventId={first_id}"), None).await;
    match next(&mut resumed).await {
        Message::Text(t) => {
            assert_eq!(serde_json::from_str::<Value>(&t).unwrap()["data"]["seq"], 2)
        }
        other => panic!("{other:?}"),
    }
    json_ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closes_with_codes_that_say_why() {
    let server = Server::start(&["--token-ttl", "2"]);
    server.create_device("d").await;
    let (id, secret) = server.create_app("ws", &["d"], false).await;
    let token = server.token(&id, &secret).await;

    // Too big: clients only send control messages.
    let (mut ws, _) = connect(&server, &token, "", None).await;
    ws.send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .unwrap();
    assert_eq!(close_code(&next(&mut ws).await), 1009);

    // Protocol error: an unmasked client frame, over a raw socket.
    let mut raw = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let req = format!(
        "GET /v1/stream/telemetry?access_token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.http
    );
    raw.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        raw.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    raw.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let code = loop {
        let mut h = [0u8; 2];
        raw.read_exact(&mut h).await.unwrap();
        let mut payload = vec![0u8; usize::from(h[1] & 0x7f)];
        raw.read_exact(&mut payload).await.unwrap();
        if h[0] & 0x0f == 0x8 {
            break u16::from_be_bytes([payload[0], payload[1]]);
        }
    };
    assert_eq!(code, 1002);

    // Token expiry: the documented code, after a final in-band message.
    let (mut ws, _) = connect(&server, &token, "", None).await;
    let m = next(&mut ws).await;
    let Message::Text(t) = &m else {
        panic!("{m:?}")
    };
    assert_eq!(
        serde_json::from_str::<Value>(t).unwrap()["event"],
        "token-expired"
    );
    assert_eq!(close_code(&next(&mut ws).await), 4001);
}
