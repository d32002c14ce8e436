//! A viewer's side of a console, for tests: a WebSocket client that opens a
//! vmdesk console (with an Origin and the `binary` subprotocol, as noVNC
//! does) and speaks enough RFB to see the handshake through and receive a
//! framebuffer update.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The origin the tests' viewers come from (pass it to `console open --origin`).
pub const TEST_ORIGIN: &str = "http://viewer.test";

/// A WebSocket to a console.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the WebSocket at `url` from `origin`; the error text on a refusal
/// (the HTTP status and the bridge's reason).
pub async fn connect(url: &str, origin: &str) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    h.insert(
        "origin",
        HeaderValue::from_str(origin).map_err(|e| e.to_string())?,
    );
    h.insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, rsp)) => {
            let proto = rsp.headers().get("sec-websocket-protocol").cloned();
            assert_eq!(proto.as_ref().and_then(|p| p.to_str().ok()), Some("binary"));
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(rsp)) => Err(format!(
            "{} {}",
            rsp.status(),
            rsp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// RFB bytes from a WebSocket, however the bridge cut them into messages.
pub struct Rfb {
    ws: Ws,
    buf: Vec<u8>,
}

/// What the server said in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInit {
    /// The protocol version line.
    pub version: String,
    /// Framebuffer width.
    pub width: u16,
    /// Framebuffer height.
    pub height: u16,
    /// The desktop name.
    pub name: String,
}

impl Rfb {
    /// Wraps an open console WebSocket.
    pub fn new(ws: Ws) -> Self {
        Self {
            ws,
            buf: Vec::new(),
        }
    }

    async fn read(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("the VNC server answered in time")
                .expect("the WebSocket is open")
                .expect("a message");
            if let Message::Binary(b) = msg {
                self.buf.extend_from_slice(&b);
            }
        }
        self.buf.drain(..n).collect()
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .expect("send");
    }

    /// Version, security "None", ClientInit, ServerInit.
    pub async fn handshake(&mut self) -> ServerInit {
        let version = String::from_utf8(self.read(12).await).expect("version");
        assert!(version.starts_with("RFB 003."), "{version:?}");
        self.write(b"RFB 003.008\n").await;
        let n = self.read(1).await[0] as usize;
        assert!(n > 0, "the server refused: no security types");
        let types = self.read(n).await;
        assert!(types.contains(&1), "no security type None: {types:?}");
        self.write(&[1]).await;
        assert_eq!(self.read(4).await, [0, 0, 0, 0], "security result");
        self.write(&[1]).await; // ClientInit, shared
        let head = self.read(24).await;
        let width = u16::from_be_bytes([head[0], head[1]]);
        let height = u16::from_be_bytes([head[2], head[3]]);
        let len = u32::from_be_bytes([head[20], head[21], head[22], head[23]]) as usize;
        let name = String::from_utf8_lossy(&self.read(len).await).into_owned();
        ServerInit {
            version: version.trim().to_owned(),
            width,
            height,
            name,
        }
    }

    /// Asks for the whole screen and waits for the FramebufferUpdate header;
    /// returns its number of rectangles.
    pub async fn framebuffer_update(&mut self, width: u16, height: u16) -> u16 {
        let mut req = vec![3, 0, 0, 0, 0, 0];
        req.extend_from_slice(&width.to_be_bytes());
        req.extend_from_slice(&height.to_be_bytes());
        self.write(&req).await;
        loop {
            let t = self.read(1).await[0];
            match t {
                0 => {
                    let h = self.read(3).await;
                    return u16::from_be_bytes([h[1], h[2]]);
                }
                2 => {} // Bell
                other => panic!("unexpected server message type {other} before the update"),
            }
        }
    }

    /// The WebSocket, to close it or watch it close.
    pub fn into_inner(self) -> Ws {
        self.ws
    }
}
