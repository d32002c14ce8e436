//! In-app consoles: a WebSocket-to-VNC bridge per open console, on a port of
//! the persisted pool (see `vmdesk_core::Core::console_reserve`), bound to
//! 127.0.0.1 only. A WebSocket is accepted only with the console's token
//! (single-use, short-lived) and an allowed `Origin`; each connection's
//! handshake runs on its own and must finish within a few seconds. When the
//! token is redeemed the core checks again that the opener may see the VM and
//! that it runs, and the bridge opens a new connection to the VM's display (a
//! socket handed over by the host, never a TCP port). It speaks the `binary`
//! subprotocol noVNC asks for and relays RFB both ways, the VM's side
//! without copying it through user space (see [`wire`]). When either side
//! closes, or no RFB flows for the idle timeout, the other is closed and the
//! port returned. Every console service also frees, periodically, the ports
//! of consoles whose process is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use vmdesk_core::{ConsoleGrant, ConsoleSettings, Core, Error};

pub mod wire;
use wire::FromViewer;

/// How often, at most, a ping goes to the browser.
const HEARTBEAT: Duration = Duration::from_secs(20);
/// How long a connection may take to finish its WebSocket handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a console service frees the ports of consoles whose process is gone.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

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
    /// No RFB traffic for the idle timeout.
    Idle,
    /// It was closed on purpose.
    Closed,
    /// The viewer came with the token, but the VM could no longer be shown
    /// (it stopped, its display was gone, or the opener lost the right).
    Refused(String),
    /// A transport error.
    Error(String),
}

/// Opens and serves consoles for one process, and frees stale ports (of
/// consoles whose process is gone) while it lives.
pub struct Consoles {
    core: Arc<Core>,
    settings: ConsoleSettings,
    /// Dropped with the service: ends the sweeper thread.
    _sweeper: std::sync::mpsc::Sender<()>,
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

/// Frees stale console ports now and every `every`, until `stop`'s sender is dropped.
fn sweep(core: Arc<Core>, every: Duration, stop: std::sync::mpsc::Receiver<()>) {
    loop {
        match core.console_cleanup() {
            Ok(freed) if !freed.is_empty() => {
                tracing::info!(?freed, "freed the ports of consoles whose process is gone");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.one_line(), "console port sweep"),
        }
        match stop.recv_timeout(every) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

impl Consoles {
    /// Consoles with the pool, token lifetime, idle timeout and origins of
    /// `settings`; stale ports are freed every [`SWEEP_EVERY`].
    pub fn new(core: Arc<Core>, settings: ConsoleSettings) -> Self {
        Self::with_sweep(core, settings, SWEEP_EVERY)
    }

    /// [`Consoles::new`] with stale ports freed every `every`.
    pub fn with_sweep(core: Arc<Core>, settings: ConsoleSettings, every: Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let sweeper = Arc::clone(&core);
        let spawned = std::thread::Builder::new()
            .name("vmdesk-console-sweep".into())
            .spawn(move || sweep(sweeper, every, rx));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the console port sweeper");
        }
        Self {
            core,
            settings,
            _sweeper: tx,
        }
    }

    /// The port range consoles are drawn from.
    pub fn range(&self) -> (u16, u16) {
        (self.settings.port_start, self.settings.port_end)
    }

    /// Opens a console on a running VM the actor may use: reserves a port
    /// that can be bound (probing it; a port in use outside vmdesk is
    /// skipped), checks that the VM's display can be reached, and serves the
    /// bridge. Runs on a multi-threaded tokio runtime.
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
        // The display must be reachable now; the viewer gets a new connection
        // to it when it comes.
        let probe = {
            let (host, machine) = (grant.host.clone(), grant.machine.clone());
            blocking(&self.core, move |c| c.console_stream(&host, &machine)).await
        };
        if let Err(e) = probe {
            let port = grant.port;
            let _ = blocking(&self.core, move |c| {
                c.console_release(port, "the VM's display cannot be reached")
            })
            .await;
            return Err(e);
        }
        let console = OpenConsole {
            url: format!("ws://127.0.0.1:{}/?token={}", grant.port, grant.token),
            grant,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let bridge = Bridge {
            core: Arc::clone(&self.core),
            port: console.grant.port,
            host: console.grant.host.clone(),
            machine: console.grant.machine.clone(),
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
    host: String,
    machine: String,
    origins: Vec<String>,
    ttl: Duration,
    idle: Duration,
}

/// How one connection's handshake ended.
enum Handshake {
    /// A viewer with the token: its socket (the WebSocket handshake done)
    /// and a new connection to the display.
    Viewer(TcpStream, UnixStream),
    /// Refused; the console stays open for the right viewer.
    Refused(String),
    /// The token was right but the VM can no longer be shown: the console is over.
    Gone(String),
}

impl Bridge {
    /// Accepts WebSockets until one passes the checks, relays it, and returns
    /// the port when it ends. Each connection's handshake runs in a task of
    /// its own with a timeout, so a silent connection holds up nothing. Later
    /// connections are still answered (refused: the token is spent) while
    /// the relay runs.
    async fn serve(
        self,
        listener: TcpListener,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Closed {
        let this = Arc::new(self);
        let deadline = tokio::time::sleep(this.ttl.saturating_add(Duration::from_secs(1)));
        tokio::pin!(deadline);
        let mut handshakes = tokio::task::JoinSet::new();
        let mut relay: Option<tokio::task::JoinHandle<Closed>> = None;
        let why = loop {
            tokio::select! {
                _ = stop.changed() => break Closed::Closed,
                () = &mut deadline, if relay.is_none() => break Closed::NeverConnected,
                r = async { relay.as_mut().expect("guarded").await }, if relay.is_some() => {
                    break r.unwrap_or_else(|e| Closed::Error(e.to_string()));
                }
                Some(done) = handshakes.join_next(), if !handshakes.is_empty() => match done {
                    Ok(Handshake::Viewer(ws, vnc)) if relay.is_none() => {
                        let this = Arc::clone(&this);
                        relay = Some(tokio::spawn(async move { this.relay(ws, vnc).await }));
                    }
                    Ok(Handshake::Viewer(..)) => {} // cannot happen: a second handshake finds the token spent
                    Ok(Handshake::Refused(why)) => {
                        tracing::info!(port = this.port, error = %why, "console connection refused");
                    }
                    Ok(Handshake::Gone(why)) => break Closed::Refused(why),
                    Err(e) => tracing::warn!(port = this.port, error = %e, "console handshake task"),
                },
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let this = Arc::clone(&this);
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, this.handshake(tcp)).await {
                            Ok(h) => h,
                            Err(_) => Handshake::Refused("the WebSocket handshake timed out".into()),
                        }
                    });
                }
            }
        };
        handshakes.abort_all();
        if let Some(r) = relay {
            r.abort();
        }
        drop(listener);
        let (core, port, reason) = (Arc::clone(&this.core), this.port, format!("{why:?}"));
        let _ = tokio::task::spawn_blocking(move || core.console_release(port, &reason)).await;
        why
    }

    /// The WebSocket handshake, refused (403) without the console's token,
    /// from a foreign origin, or when the VM can no longer be shown.
    // The callback's error type is tungstenite's.
    #[allow(clippy::result_large_err)]
    async fn handshake(&self, tcp: TcpStream) -> Handshake {
        let _ = tcp.set_nodelay(true);
        // The handshake reads the request and nothing after it: the socket
        // is taken back whole for the relay.
        let tcp = match wire::RequestOnly::new(tcp).await {
            Ok(t) => t,
            Err(e) => return Handshake::Refused(format!("the WebSocket request: {e}")),
        };
        let mut display: Option<std::os::unix::net::UnixStream> = None;
        let mut gone: Option<String> = None;
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
            let opened = tokio::task::block_in_place(|| {
                self.core
                    .console_redeem(self.port, &token)
                    .map_err(|e| (e.code() != "console_refused", e))?;
                self.core
                    .console_stream(&self.host, &self.machine)
                    .map_err(|e| (true, e))
            });
            match opened {
                Ok(stream) => display = Some(stream),
                Err((fatal, e)) => {
                    if fatal {
                        gone = Some(e.one_line());
                    }
                    return Err(refuse(e.one_line()));
                }
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
        let accepted = tokio_tungstenite::accept_hdr_async(tcp, check).await;
        if let Some(why) = gone {
            return Handshake::Gone(why);
        }
        let ws = match accepted {
            Ok(ws) => ws.into_inner().into_inner(),
            Err(e) => return Handshake::Refused(e.to_string()),
        };
        let vnc = display
            .ok_or_else(|| "no display connection".to_owned())
            .and_then(|d| {
                d.set_nonblocking(true).map_err(|e| e.to_string())?;
                UnixStream::from_std(d).map_err(|e| e.to_string())
            });
        match vnc {
            Ok(vnc) => Handshake::Viewer(ws, vnc),
            Err(e) => Handshake::Gone(format!("the VM's display: {e}")),
        }
    }

    /// Relays RFB between the WebSocket and the VM's display until one
    /// closes, or until no RFB has flowed either way for the idle timeout
    /// (pings and pongs do not count). The display's bytes go to the viewer
    /// by `splice` (see [`wire`]); one writer owns the viewer's socket.
    async fn relay(&self, tcp: TcpStream, vnc: UnixStream) -> Closed {
        let pipe = match wire::Pipe::new() {
            Ok(p) => p,
            Err(e) => return Closed::Error(format!("a pipe for the relay: {e}")),
        };
        let (tcp_rx, tcp_tx) = tcp.into_split();
        let (vnc_rx, mut vnc_tx) = vnc.into_split();
        // Frames the reader asks the writer to send (pongs).
        let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let start = Instant::now();
        let since_start = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = AtomicU64::new(0);
        let touch = || last.store(since_start(), Ordering::Relaxed);
        let idle = self.idle;
        // Pings keep the link's middleboxes awake and find dead viewers; they
        // go often enough that a short idle timeout still sees several.
        let ping_every = HEARTBEAT.min(idle / 2);
        let check_every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let to_vm = async {
            let mut frames = wire::Frames::new(tcp_rx);
            loop {
                match frames.next().await {
                    Ok(Some(FromViewer::Data(b))) => {
                        touch();
                        if vnc_tx.write_all(&b).await.is_err() {
                            return Closed::Vm;
                        }
                    }
                    Ok(Some(FromViewer::Ping(p))) => {
                        let _ = ctl_tx.send(wire::control(Control::Pong, &p)).await;
                    }
                    Ok(Some(FromViewer::Ignored)) => {}
                    Ok(Some(FromViewer::Close) | None) => return Closed::Viewer,
                    Err(e) => return Closed::Error(e.to_string()),
                }
            }
        };
        let to_viewer = async {
            let (tcp, vnc) = (tcp_tx.as_ref(), vnc_rx.as_ref());
            let close = wire::control(Control::Close, &[]);
            let mut check = tokio::time::interval(check_every);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            check.tick().await;
            let mut pinged = Instant::now();
            loop {
                tokio::select! {
                    // A splice happens within one poll: nothing is lost
                    // when another branch wins.
                    n = wire::fill(vnc, &pipe) => match n {
                        Ok(0) | Err(_) => {
                            let _ = wire::send_all(tcp, &close, false).await;
                            return Closed::Vm;
                        }
                        Ok(n) => {
                            touch();
                            let head = wire::header(OpCode::Data(Data::Binary), n as u64);
                            if wire::send_all(tcp, &head, true).await.is_err()
                                || wire::drain(&pipe, tcp, n).await.is_err()
                            {
                                return Closed::Viewer;
                            }
                        }
                    },
                    Some(frame) = ctl_rx.recv() => {
                        if wire::send_all(tcp, &frame, false).await.is_err() {
                            return Closed::Viewer;
                        }
                    }
                    _ = check.tick() => {
                        let quiet_ms = since_start().saturating_sub(last.load(Ordering::Relaxed));
                        if Duration::from_millis(quiet_ms) >= idle {
                            let _ = wire::send_all(tcp, &close, false).await;
                            return Closed::Idle;
                        }
                        if pinged.elapsed() >= ping_every {
                            pinged = Instant::now();
                            if wire::send_all(tcp, &wire::control(Control::Ping, &[]), false).await.is_err() {
                                return Closed::Viewer;
                            }
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
