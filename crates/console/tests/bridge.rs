//! The bridge over a real SQLite core and a fake host whose displays are
//! socket pairs (as libvirt hands them over): a viewer's WebSocket, silent
//! connections, idle links, re-checks at redemption, saturating lifetimes
//! and the periodic sweep of stale ports.
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use vmdesk_console::{Closed, Consoles, Handle};
use vmdesk_core::provider::{Compliant, OneProvider};
use vmdesk_core::{ConsoleSettings, Core, NewVm, OpenOptions};

const ORIGIN: &str = "http://viewer.test";
const VERSION: &[u8] = b"RFB 003.008\n";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A display connection: it says the RFB version, then echoes what it gets.
fn display() -> std::io::Result<UnixStream> {
    let (ours, mut vm) = UnixStream::pair()?;
    std::thread::spawn(move || {
        if vm.write_all(VERSION).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = vm.read(&mut buf) {
            if vm.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    Ok(ours)
}

/// A core with one RUNNING pool VM `vm`.
fn core() -> (tempfile::TempDir, Arc<Core>) {
    let dir = tempfile::tempdir().unwrap();
    // A host whose machines all run, each display as above.
    let host = Arc::new(Compliant::running(display));
    let core = Core::open(OpenOptions::new(dir.path(), Arc::new(OneProvider(host)))).unwrap();
    core.host_add("admin", "h", "test:///default").unwrap();
    core.project_create("admin", "p").unwrap();
    core.vm_add(
        "admin",
        &NewVm {
            name: "vm".into(),
            pool: "p".into(),
            host: "h".into(),
            ram_mb: 64,
            disk_gb: 1,
            cpu_cores: 1,
            vm_type: "t".into(),
            os_type: "blank".into(),
        },
    )
    .unwrap();
    sql(dir.path(), "UPDATE vms SET status = 'RUNNING'");
    (dir, Arc::new(core))
}

fn sql(dir: &Path, statement: &str) {
    rusqlite::Connection::open(dir.join("vmdesk.db"))
        .unwrap()
        .execute(statement, [])
        .unwrap();
}

/// Console settings on ports `start..start+9` (each test its own range).
fn settings(start: u16) -> ConsoleSettings {
    ConsoleSettings {
        port_start: start,
        port_end: start + 9,
        allowed_origins: vec![ORIGIN.into()],
        ..ConsoleSettings::default()
    }
}

fn allocated(core: &Core, start: u16) -> u32 {
    core.console_stats((start, start + 9)).unwrap().allocated
}

/// A viewer's WebSocket (Origin and subprotocol as noVNC sends them), or the refusal.
async fn viewer(url: &str) -> Result<Ws, String> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", HeaderValue::from_static(ORIGIN));
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(rsp)) => Err(format!(
            "{} {}",
            rsp.status(),
            String::from_utf8_lossy(rsp.body().as_deref().unwrap_or_default())
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The next binary message.
async fn binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("a message");
        if let Message::Binary(b) = msg {
            return b.to_vec();
        }
    }
}

/// A TCP connection to the console's port that never says anything.
async fn silent(handle: &Handle) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", handle.console.grant.port))
        .await
        .unwrap();
    // Let the bridge accept it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn rfb_flows_both_ways_through_the_bridge() {
    let (_dir, core) = core();
    let consoles = Consoles::new(Arc::clone(&core), settings(47100));
    let handle = consoles.open("admin", "vm").await.unwrap();
    let mut ws = viewer(&handle.console.url).await.unwrap();
    assert_eq!(binary(&mut ws).await, VERSION);
    ws.send(Message::Binary(b"RFB 003.008\n".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(binary(&mut ws).await, VERSION);
    assert_eq!(handle.close().await, Closed::Closed);
    assert_eq!(allocated(&core, 47100), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_connection_does_not_keep_the_viewer_out() {
    let (_dir, core) = core();
    let consoles = Consoles::new(Arc::clone(&core), settings(47110));
    let handle = consoles.open("admin", "vm").await.unwrap();
    let _silent = silent(&handle).await;

    let ws = tokio::time::timeout(Duration::from_secs(3), viewer(&handle.console.url)).await;

    let mut ws = ws.expect("the viewer got through in time").unwrap();
    assert_eq!(binary(&mut ws).await, VERSION);
}

#[tokio::test(flavor = "multi_thread")]
async fn close_returns_within_a_second_while_a_connection_is_silent() {
    let (_dir, core) = core();
    let consoles = Consoles::new(Arc::clone(&core), settings(47120));
    let handle = consoles.open("admin", "vm").await.unwrap();
    let _silent = silent(&handle).await;

    let closed = tokio::time::timeout(Duration::from_secs(1), handle.close()).await;

    assert_eq!(closed.expect("closed in time"), Closed::Closed);
    assert_eq!(allocated(&core, 47120), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unused_console_is_freed_at_its_ttl_despite_a_silent_connection() {
    let (_dir, core) = core();
    let mut s = settings(47130);
    s.token_ttl_secs = 1;
    let consoles = Consoles::new(Arc::clone(&core), s);
    let handle = consoles.open("admin", "vm").await.unwrap();
    let _silent = silent(&handle).await;

    let closed = tokio::time::timeout(Duration::from_secs(4), handle.closed()).await;

    assert_eq!(closed.expect("closed in time"), Closed::NeverConnected);
    assert_eq!(allocated(&core, 47130), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_that_only_answers_pings_is_closed_when_idle() {
    let (_dir, core) = core();
    let mut s = settings(47140);
    s.idle_timeout_secs = 1;
    let consoles = Consoles::new(Arc::clone(&core), s);
    let handle = consoles.open("admin", "vm").await.unwrap();
    let mut ws = viewer(&handle.console.url).await.unwrap();
    assert_eq!(binary(&mut ws).await, VERSION);

    // Read (tungstenite answers each ping with a pong) until the bridge closes.
    let t = Instant::now();
    let mut pings = 0;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Ping(_) => pings += 1,
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
    .await;

    assert!(ended.is_ok(), "still open after {:?}", t.elapsed());
    assert!(pings >= 1, "the bridge pinged, and was answered");
    assert_eq!(handle.closed().await, Closed::Idle);
    assert_eq!(allocated(&core, 47140), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rfb_from_the_viewer_keeps_a_console_open() {
    let (_dir, core) = core();
    let mut s = settings(47150);
    s.idle_timeout_secs = 1;
    let consoles = Consoles::new(Arc::clone(&core), s);
    let handle = consoles.open("admin", "vm").await.unwrap();
    let mut ws = viewer(&handle.console.url).await.unwrap();
    assert_eq!(binary(&mut ws).await, VERSION);

    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ws.send(Message::Binary(vec![0u8].into())).await.unwrap();
        assert_eq!(binary(&mut ws).await, [0u8]);
    }

    assert!(!handle.is_finished(), "closed although RFB flowed");
    assert_eq!(handle.close().await, Closed::Closed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_coming_after_the_vm_stopped_is_refused_and_the_port_freed() {
    let (dir, core) = core();
    let consoles = Consoles::new(Arc::clone(&core), settings(47160));
    let handle = consoles.open("admin", "vm").await.unwrap();
    sql(dir.path(), "UPDATE vms SET status = 'STOPPED'");

    let refused = viewer(&handle.console.url).await.map(|_| ()).unwrap_err();

    assert!(
        refused.contains("403") && refused.contains("not RUNNING"),
        "{refused}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(2), handle.closed()).await;
    assert!(
        matches!(closed, Ok(Closed::Refused(ref why)) if why.contains("not RUNNING")),
        "{closed:?}"
    );
    assert_eq!(allocated(&core, 47160), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_token_lifetime_and_idle_timeout_saturate_instead_of_panicking() {
    let (_dir, core) = core();
    let mut s = settings(47170);
    s.token_ttl_secs = u64::MAX;
    s.idle_timeout_secs = u64::MAX;
    let consoles = Consoles::new(Arc::clone(&core), s);
    let handle = consoles.open("admin", "vm").await.unwrap();

    let mut ws = viewer(&handle.console.url).await.unwrap();

    assert_eq!(binary(&mut ws).await, VERSION);
    assert!(!handle.is_finished());
    assert_eq!(handle.close().await, Closed::Closed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_console_service_frees_the_ports_of_dead_processes_periodically() {
    let (dir, core) = core();
    let _service = Consoles::with_sweep(
        Arc::clone(&core),
        settings(47180),
        Duration::from_millis(200),
    );
    // A console of a process that died after the service started.
    tokio::time::sleep(Duration::from_millis(100)).await;
    core.console_reserve("admin", "vm", (47180, 47189), &[], Duration::from_secs(60))
        .unwrap();
    sql(dir.path(), "UPDATE consoles SET worker = '4242-deadbeef'");
    assert_eq!(allocated(&core, 47180), 1);

    let t = Instant::now();
    while allocated(&core, 47180) > 0 && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(allocated(&core, 47180), 0, "freed by the sweep");
}

/// The bytes of the binary messages that arrive until `n` of them came, and
/// the pongs seen meanwhile.
async fn collect(ws: &mut Ws, n: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (mut got, mut pongs) = (Vec::new(), Vec::new());
    while got.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("a message");
        match msg {
            Message::Binary(b) => got.extend_from_slice(&b),
            Message::Pong(p) => pongs.push(p.to_vec()),
            _ => {}
        }
    }
    (got, pongs)
}

#[tokio::test(flavor = "multi_thread")]
async fn large_transfers_arrive_intact_and_pings_are_answered_between_frames() {
    let (_dir, core) = core();
    let consoles = Consoles::new(Arc::clone(&core), settings(47180));
    let handle = consoles.open("admin", "vm").await.unwrap();
    let mut ws = viewer(&handle.console.url).await.unwrap();
    assert_eq!(binary(&mut ws).await, VERSION);
    // 3 MiB in 900 KiB messages, echoed back by the display: more than the
    // relay's pipe holds, so the VM's side arrives in several spliced frames.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for part in data.chunks(900 * 1024) {
        ws.send(Message::Binary(part.to_vec().into()))
            .await
            .unwrap();
    }
    ws.send(Message::Ping(b"between".to_vec().into()))
        .await
        .unwrap();
    let (echoed, mut pongs) = collect(&mut ws, data.len()).await;
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "the echo differs from what was sent");
    // The pong comes whole, between frames (a pong inside a frame would
    // have broken the stream above).
    if pongs.is_empty() {
        ws.send(Message::Binary(b"x".to_vec().into()))
            .await
            .unwrap();
        pongs = collect(&mut ws, 1).await.1;
    }
    assert_eq!(pongs, [b"between".to_vec()]);
    assert_eq!(handle.close().await, Closed::Closed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_frame_over_the_limit_ends_the_console() {
    let (_dir, core) = core();
    let consoles = Consoles::new(Arc::clone(&core), settings(47190));
    let handle = consoles.open("admin", "vm").await.unwrap();
    let mut ws = viewer(&handle.console.url).await.unwrap();
    assert_eq!(binary(&mut ws).await, VERSION);
    let _ = ws.send(Message::Binary(vec![0u8; 2 << 20].into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), handle.closed())
        .await
        .expect("closed in time");
    assert!(
        matches!(&closed, Closed::Error(e) if e.contains("viewer frame")),
        "{closed:?}"
    );
    assert_eq!(allocated(&core, 47190), 0);
}
