//! The console bridge side by side with websockify (Debian package) and a raw
//! TCP relay, in one run: throughput of one stream and of 10 parallel
//! streams, added round-trip latency, and memory per open console.
//!
//! The "VNC server" is a local TCP source: after a `T` it sends 64 MiB as
//! fast as it can; after an `E` it echoes. vmdesk's bridge is the real one
//! (`vmdesk_console::Consoles`, tokens, origin check) over a core whose host
//! hands it a connection to that source over a unix socket (as libvirt hands
//! over a VM's display).
//!
//! Run: `cargo bench -p vmdesk-tests --bench console` (or `make bench`).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use vmdesk_core::ConsoleSettings;
use vmdesk_tests::source;
use vmdesk_tests::vnc::{connect, TEST_ORIGIN};

const STREAM: usize = 64 << 20;

async fn source(listener: TcpListener) {
    loop {
        let (s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        tokio::spawn(source::serve(s));
    }
}

async fn relay(listener: TcpListener, target: String) {
    loop {
        let (mut a, _) = listener.accept().await.unwrap();
        a.set_nodelay(true).unwrap();
        let target = target.clone();
        tokio::spawn(async move {
            let mut b = TcpStream::connect(&target).await.unwrap();
            b.set_nodelay(true).unwrap();
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
    }
}

/// One path a viewer can take to the source.
enum Path {
    Raw(String),
    WebSocket(String),
}

enum Conn {
    Raw(TcpStream),
    Ws(Box<vmdesk_tests::vnc::Ws>),
}

impl Conn {
    async fn open(path: &Path) -> Conn {
        match path {
            Path::Raw(addr) => {
                let s = TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                Conn::Raw(s)
            }
            Path::WebSocket(url) => Conn::Ws(Box::new(connect(url, TEST_ORIGIN).await.unwrap())),
        }
    }

    async fn send(&mut self, b: u8) {
        self.send_all(&[b]).await;
    }

    async fn send_all(&mut self, b: &[u8]) {
        match self {
            Conn::Raw(s) => s.write_all(b).await.unwrap(),
            Conn::Ws(ws) => ws.send(Message::Binary(b.to_vec().into())).await.unwrap(),
        }
    }

    /// Reads until `n` bytes came.
    async fn drain(&mut self, n: usize) {
        let mut got = 0;
        match self {
            Conn::Raw(s) => {
                let mut buf = vec![0u8; 64 << 10];
                while got < n {
                    got += s.read(&mut buf).await.unwrap();
                }
            }
            Conn::Ws(ws) => {
                while got < n {
                    if let Message::Binary(b) = ws.next().await.unwrap().unwrap() {
                        got += b.len();
                    }
                }
            }
        }
    }
}

/// Throughput in MB/s of `streams` parallel streams through fresh paths.
async fn throughput(paths: Vec<Path>) -> f64 {
    let streams = paths.len();
    let mut conns = Vec::new();
    for p in &paths {
        conns.push(Conn::open(p).await);
    }
    let t = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut start = vec![b'T'];
                start.extend_from_slice(&(STREAM as u64).to_be_bytes());
                c.send_all(&start).await;
                c.drain(STREAM).await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (streams * STREAM) as f64 / 1e6 / t.elapsed().as_secs_f64()
}

/// Median round trip of one byte, in µs.
async fn round_trip(path: Path) -> f64 {
    let mut c = Conn::open(&path).await;
    c.send(b'E').await;
    let mut times = Vec::new();
    for i in 0..2000 {
        let t = Instant::now();
        c.send(b'x').await;
        c.drain(1).await;
        if i >= 100 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e6
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let src = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let src_addr = src.local_addr().unwrap().to_string();
    tokio::spawn(source(src));
    let dir = tempfile::tempdir().unwrap();
    let src_sock = dir.path().join("display.sock");
    tokio::spawn(source::serve_unix(
        tokio::net::UnixListener::bind(&src_sock).unwrap(),
    ));
    let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap().to_string();
    tokio::spawn(relay(raw, src_addr.clone()));

    let ws_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let websockify = std::process::Command::new("websockify")
        .arg(format!("127.0.0.1:{ws_port}"))
        .arg(&src_addr)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut websockify = websockify.ok().map(vmdesk_tests::KillOnDrop);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let wsfy_url = format!("ws://127.0.0.1:{ws_port}/");

    let core = source::core(dir.path(), &src_sock);
    let consoles = vmdesk_console::Consoles::new(
        Arc::clone(&core),
        ConsoleSettings {
            port_start: 46100,
            port_end: 46999,
            allowed_origins: vec![TEST_ORIGIN.into()],
            ..ConsoleSettings::default()
        },
    );
    let bridge = |n: usize| {
        let consoles = &consoles;
        async move {
            let mut paths = Vec::new();
            let mut handles = Vec::new();
            for _ in 0..n {
                let h = consoles.open("admin", "vm").await.unwrap();
                paths.push(Path::WebSocket(h.console.url.clone()));
                handles.push(h);
            }
            (paths, handles)
        }
    };

    println!(
        "console bridge vs websockify vs raw TCP relay (64 MiB per stream, loopback, 2 cores)"
    );
    println!(
        "{:<28} {:>12} {:>14} {:>16}",
        "path", "1 stream", "10 streams", "added latency"
    );
    let direct = round_trip(Path::Raw(src_addr.clone())).await;
    let row = |name: &str, one: f64, ten: f64, rtt: f64| {
        println!(
            "{name:<28} {:>8.0} MB/s {:>10.0} MB/s {:>13.1} µs",
            one,
            ten,
            rtt - direct
        );
    };
    let raw_rtt = round_trip(Path::Raw(raw_addr.clone())).await;
    let raw1 = throughput(vec![Path::Raw(raw_addr.clone())]).await;
    let raw10 = throughput((0..10).map(|_| Path::Raw(raw_addr.clone())).collect()).await;
    row("raw TCP relay (tokio)", raw1, raw10, raw_rtt);

    let (p, _h) = bridge(1).await;
    let one = throughput(p).await;
    let (p, _h) = bridge(10).await;
    let ten = throughput(p).await;
    let (mut p, _h) = bridge(1).await;
    let rtt = round_trip(p.remove(0)).await;
    row("vmdesk bridge", one, ten, rtt);
    let vmdesk_one = one;

    if websockify.is_some() {
        let one = throughput(vec![Path::WebSocket(wsfy_url.clone())]).await;
        let ten = throughput((0..10).map(|_| Path::WebSocket(wsfy_url.clone())).collect()).await;
        let rtt = round_trip(Path::WebSocket(wsfy_url.clone())).await;
        row("websockify 0.10 (Debian)", one, ten, rtt);
        println!("vmdesk / websockify, one stream: {:.1}x", vmdesk_one / one);
    } else {
        println!("websockify: not installed (apt install websockify)");
    }
    websockify.take();

    // Memory: 200 open consoles, each with a viewer connected and relaying.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib();
    let (paths, handles) = bridge(200).await;
    let mut conns = Vec::new();
    for p in &paths {
        let mut c = Conn::open(p).await;
        c.send(b'E').await;
        c.send(b'x').await;
        c.drain(1).await;
        conns.push(c);
    }
    let after = rss_kib();
    println!(
        "memory: 200 open consoles (viewer connected, both sides in this process): +{} KiB, {:.0} KiB per console",
        after - before,
        (after - before) as f64 / 200.0
    );
    drop(conns);
    for h in handles {
        h.close().await;
    }
}
