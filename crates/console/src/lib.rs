//! In-app consoles: a WebSocket-to-VNC bridge per open console, on a port of
//! the persisted pool (see `vmdesk_core::Core::console_reserve`), bound to
//! 127.0.0.1 only. A WebSocket is accepted only with the console's token
//! (single-use, short-lived) and an allowed `Origin`; it speaks the `binary`
//! subprotocol noVNC asks for and relays RFB both ways to the VM's VNC
//! server. When either side closes (or the link is idle too long), the other
//! is closed and the port returned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use vmdesk_core::{ConsoleGrant, ConsoleSettings, Core, Error};

/// How often a ping goes to the browser.
const HEARTBEAT: Duration = Duration::from_secs(20);
/// Bytes read from the VNC server at once.
const CHUNK: usize = 64 * 1024;

/// An open console, as its opener gets it.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[ts(export)]
pub struct OpenConsole {
    /// The port, the single-use token, the VM.
    #[serde(flatten)]
    #[ts(flatten)]
    pub grant: ConsoleGrant,
    /// The WebSocket URL to give noVNC (the token is in its query).
    pub url: String,
}

/// Why a console closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Closed {
    /// Nobody connected before the token expired.
    NeverConnected,
    /// The viewer closed its side.
    Viewer,
    /// The VM's VNC server closed its side (the VM stopped).
    Vm,
    /// No traffic for the idle timeout.
    Idle,
    /// It was closed on purpose.
    Closed,
    /// A transport error.
    Error(String),
}

/// Opens and serves consoles for one process.
pub struct Consoles {
    core: Arc<Core>,
    settings: ConsoleSettings,
}

/// A console being served; dropping it does not close it, `close` does.
pub struct Handle {
    /// What the opener gets.
    pub console: OpenConsole,
    stop: tokio::sync::watch::Sender<bool>,
    done: tokio::task::JoinHandle<Closed>,
}

impl Handle {
    /// Closes the console (both sides) and waits until its port is returned.
    pub async fn close(self) -> Closed {
        let _ = self.stop.send(true);
        self.done
            .await
            .unwrap_or_else(|e| Closed::Error(e.to_string()))
    }

    /// Whether the console has closed.
    pub fn is_finished(&self) -> bool {
        self.done.is_finished()
    }

    /// Waits until the console closes by itself.
    pub async fn closed(self) -> Closed {
        let _stop = self.stop;
        self.done
            .await
            .unwrap_or_else(|e| Closed::Error(e.to_string()))
    }
}

/// The blocking core call `f` off the async threads.
async fn blocking<T: Send + 'static>(
    core: &Arc<Core>,
    f: impl FnOnce(&Core) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let core = Arc::clone(core);
    tokio::task::spawn_blocking(move || f(&core))
        .await
        .unwrap_or_else(|e| {
            Err(Error::ConsoleUnavailable(format!(
                "the console task failed: {e}"
            )))
        })
}

impl Consoles {
    /// Consoles with the pool, token lifetime, idle timeout and origins of `settings`.
    pub fn new(core: Arc<Core>, settings: ConsoleSettings) -> Self {
        Self { core, settings }
    }

    /// The port range consoles are drawn from.
    pub fn range(&self) -> (u16, u16) {
        (self.settings.port_start, self.settings.port_end)
    }

    /// Opens a console on a running VM the actor may use: reserves a port
    /// that can be bound (probing it; a port in use outside vmdesk is
    /// skipped), finds the VM's VNC server, and serves the bridge. Runs on a
    /// multi-threaded tokio runtime.
    pub async fn open(&self, actor: &str, vm: &str) -> Result<Handle, Error> {
        let range = (self.settings.port_start, self.settings.port_end);
        let ttl = Duration::from_secs(self.settings.token_ttl_secs);
        let mut skip = Vec::new();
        let (grant, listener) = loop {
            let (actor, vm, s) = (actor.to_owned(), vm.to_owned(), skip.clone());
            let grant = blocking(&self.core, move |c| {
                c.console_reserve(&actor, &vm, range, &s, ttl)
            })
            .await?;
            match TcpListener::bind(("127.0.0.1", grant.port)).await {
                Ok(l) => break (grant, l),
                Err(e) => {
                    tracing::info!(port = grant.port, error = %e, "console port in use outside vmdesk; skipping it");
                    let port = grant.port;
                    blocking(&self.core, move |c| {
                        c.console_release(port, "the port is in use outside vmdesk")
                    })
                    .await?;
                    skip.push(port);
                }
            }
        };
        let target = {
            let (host, machine) = (grant.host.clone(), grant.machine.clone());
            blocking(&self.core, move |c| c.console_address(&host, &machine)).await
        };
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                let port = grant.port;
                let _ = blocking(&self.core, move |c| {
                    c.console_release(port, "the VM has no VNC server")
                })
                .await;
                return Err(e);
            }
        };
        let console = OpenConsole {
            url: format!("ws://127.0.0.1:{}/?token={}", grant.port, grant.token),
            grant,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let bridge = Bridge {
            core: Arc::clone(&self.core),
            port: console.grant.port,
            target,
            origins: self.settings.allowed_origins.clone(),
            ttl,
            idle: Duration::from_secs(self.settings.idle_timeout_secs),
        };
        let done = tokio::spawn(bridge.serve(listener, stopped));
        Ok(Handle {
            console,
            stop,
            done,
        })
    }
}

struct Bridge {
    core: Arc<Core>,
    port: u16,
    target: String,
    origins: Vec<String>,
    ttl: Duration,
    idle: Duration,
}

impl Bridge {
    /// Accepts WebSockets until one passes the checks, relays it, and returns
    /// the port when it ends. Later connections are still answered (refused:
    /// the token is spent) while the relay runs.
    async fn serve(
        self,
        listener: TcpListener,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Closed {
        let this = Arc::new(self);
        let deadline = tokio::time::sleep(this.ttl + Duration::from_secs(1));
        tokio::pin!(deadline);
        let mut relay: Option<tokio::task::JoinHandle<Closed>> = None;
        let why = loop {
            tokio::select! {
                _ = stop.changed() => break Closed::Closed,
                () = &mut deadline, if relay.is_none() => break Closed::NeverConnected,
                r = async { relay.as_mut().expect("guarded").await }, if relay.is_some() => {
                    break r.unwrap_or_else(|e| Closed::Error(e.to_string()));
                }
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let this = Arc::clone(&this);
                    match this.handshake(tcp).await {
                        Ok(ws) if relay.is_none() => {
                            relay = Some(tokio::spawn(async move { this.relay(ws).await }));
                        }
                        Ok(_) => {} // cannot happen: a second handshake finds the token spent
                        Err(e) => tracing::info!(port = this.port, error = %e, "console connection refused"),
                    }
                }
            }
        };
        if let Some(r) = relay {
            r.abort();
        }
        drop(listener);
        let (core, port, reason) = (Arc::clone(&this.core), this.port, format!("{why:?}"));
        let _ = tokio::task::spawn_blocking(move || core.console_release(port, &reason)).await;
        why
    }

    /// The WebSocket handshake, refused (403) without the console's token or
    /// from a foreign origin.
    // The callback's error type is tungstenite's.
    #[allow(clippy::result_large_err)]
    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error>
    {
        let _ = tcp.set_nodelay(true);
        let check = |req: &Request, mut rsp: Response| -> Result<Response, ErrorResponse> {
            let refuse = |why: String| {
                let mut r = ErrorResponse::new(Some(why));
                *r.status_mut() = StatusCode::FORBIDDEN;
                r
            };
            let origin = req
                .headers()
                .get("origin")
                .and_then(|o| o.to_str().ok())
                .unwrap_or("");
            if !self.origins.iter().any(|o| o == origin) {
                return Err(refuse(format!("the origin {origin:?} is not allowed")));
            }
            let token = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .unwrap_or("")
                .to_owned();
            let redeemed =
                tokio::task::block_in_place(|| self.core.console_redeem(self.port, &token));
            if let Err(e) = redeemed {
                return Err(refuse(e.one_line()));
            }
            let offers_binary = req
                .headers()
                .get_all("sec-websocket-protocol")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|p| p.trim() == "binary");
            if offers_binary {
                rsp.headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
            }
            Ok(rsp)
        };
        tokio_tungstenite::accept_hdr_async(tcp, check).await
    }

    /// Relays RFB between the WebSocket and the VNC server until one closes.
    async fn relay(&self, ws: tokio_tungstenite::WebSocketStream<TcpStream>) -> Closed {
        let vnc = match TcpStream::connect(&self.target).await {
            Ok(v) => v,
            Err(e) => {
                return Closed::Error(format!(
                    "cannot reach the VM's VNC server {}: {e}",
                    self.target
                ))
            }
        };
        let _ = vnc.set_nodelay(true);
        let (mut vnc_rx, mut vnc_tx) = vnc.into_split();
        let (mut ws_tx, mut ws_rx) = ws.split();
        let start = Instant::now();
        let last = AtomicU64::new(0);
        let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        let to_vm = async {
            while let Some(msg) = ws_rx.next().await {
                touch();
                match msg {
                    Ok(Message::Binary(b)) => {
                        if vnc_tx.write_all(&b).await.is_err() {
                            return Closed::Vm;
                        }
                    }
                    Ok(Message::Close(_)) => return Closed::Viewer,
                    Ok(_) => {}
                    Err(e) => return Closed::Error(e.to_string()),
                }
            }
            Closed::Viewer
        };
        let to_viewer = async {
            // Read into a growing buffer and hand each read to the WebSocket
            // as it is (no copy).
            let mut buf = bytes::BytesMut::with_capacity(CHUNK);
            let mut beat = tokio::time::interval(HEARTBEAT);
            beat.tick().await;
            loop {
                tokio::select! {
                    n = vnc_rx.read_buf(&mut buf) => match n {
                        Ok(0) | Err(_) => {
                            let _ = ws_tx.send(Message::Close(None)).await;
                            return Closed::Vm;
                        }
                        Ok(_) => {
                            touch();
                            let chunk = buf.split().freeze();
                            if buf.capacity() < CHUNK / 4 {
                                buf.reserve(CHUNK);
                            }
                            if ws_tx.send(Message::Binary(chunk)).await.is_err() {
                                return Closed::Viewer;
                            }
                        }
                    },
                    _ = beat.tick() => {
                        let idle_ms = start.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
                        if idle_ms >= self.idle.as_millis() as u64 {
                            let _ = ws_tx.send(Message::Close(None)).await;
                            return Closed::Idle;
                        }
                        if ws_tx.send(Message::Ping(Vec::new().into())).await.is_err() {
                            return Closed::Viewer;
                        }
                    }
                }
            }
        };
        tokio::select! {
            why = to_vm => why,
            why = to_viewer => why,
        }
    }
}
