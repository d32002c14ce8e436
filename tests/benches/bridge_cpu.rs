//! The console bridge's CPU per GiB beside websockify's and a raw splice
//! relay's (the floor: socket → pipe → socket, no framing), each serving in a
//! process of its own, measured from outside (issue 17): the server
//! process's user and system time from /proc (its threads and its reaped
//! children: websockify forks one per connection) over a transfer of 1 GiB
//! from a synthetic VNC source on a unix socket to viewers in this process,
//! with 1 and with 10 streams; the median of 3 runs each.
//!
//! Run: `cargo bench -p vmdesk-tests --bench bridge_cpu` (or `make bench`).
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::Message;
use vmdesk_core::ConsoleSettings;
use vmdesk_tests::source;
use vmdesk_tests::vnc::{connect, TEST_ORIGIN};

/// What each measurement moves in all.
const TOTAL: u64 = 1 << 30;
/// Runs of each measurement (the median is shown).
const RUNS: usize = 3;
/// The kernel's clock ticks per second in /proc (USER_HZ).
const TICKS: f64 = 100.0;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("bridge-serve") => {
            return bridge_serve(
                Path::new(&args[2]),
                args[3].parse().unwrap(),
                Path::new(&args[4]),
            )
        }
        Some("floor-serve") => return floor_serve(Path::new(&args[2])),
        _ => {}
    }
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    run();
}

/// The bridge's process: `n` consoles on the source, their URLs on stdout,
/// served until each has closed.
fn bridge_serve(socket: &Path, n: usize, dir: &Path) {
    runtime().block_on(async {
        let core = source::core(dir, socket);
        let consoles = vmdesk_console::Consoles::new(
            core,
            ConsoleSettings {
                port_start: 46100,
                port_end: 46999,
                allowed_origins: vec![TEST_ORIGIN.into()],
                ..ConsoleSettings::default()
            },
        );
        let mut handles = Vec::new();
        for _ in 0..n {
            let h = consoles.open("admin", "vm").await.unwrap();
            println!("{}", h.console.url);
            handles.push(h);
        }
        for h in handles {
            h.closed().await;
        }
    });
}

/// The floor's process: a raw relay on an ephemeral port (printed), the
/// source's bytes moved by splice through a pipe, nothing added.
fn floor_serve(socket: &Path) {
    runtime().block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", l.local_addr().unwrap());
        while let Ok((tcp, _)) = l.accept().await {
            let socket = socket.to_path_buf();
            tokio::spawn(async move {
                let vnc = UnixStream::connect(&socket).await.unwrap();
                let (mut tcp_rx, tcp_tx) = tcp.into_split();
                let (vnc_rx, mut vnc_tx) = vnc.into_split();
                let up = async {
                    let _ = tokio::io::copy(&mut tcp_rx, &mut vnc_tx).await;
                };
                let down = async {
                    let pipe = vmdesk_console::wire::Pipe::new().unwrap();
                    loop {
                        match vmdesk_console::wire::fill(vnc_rx.as_ref(), &pipe).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if vmdesk_console::wire::drain(&pipe, tcp_tx.as_ref(), n)
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                };
                tokio::select! { () = up => {}, () = down => {} }
            });
        }
    });
}

/// A process's CPU time so far, in seconds: (user, system), its reaped
/// children included.
fn cpu(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime: fields 14-17 of stat, 11-14 after the name.
    ((f[11] + f[13]) / TICKS, (f[12] + f[14]) / TICKS)
}

enum Server {
    Bridge,
    Websockify,
    Floor,
}

/// Starts `server` for `streams` viewers; the child and where each viewer goes.
fn start(server: &Server, streams: usize, socket: &Path, dir: &Path) -> (Child, Vec<String>) {
    let me = std::env::current_exe().unwrap();
    match server {
        Server::Bridge => {
            // A data directory per run.
            static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let data = dir.join(format!("bridge-{n}"));
            let mut child = Command::new(me)
                .args([
                    "bridge-serve",
                    socket.to_str().unwrap(),
                    &streams.to_string(),
                ])
                .arg(&data)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let urls = (0..streams)
                .map(|_| {
                    let mut line = String::new();
                    out.read_line(&mut line).unwrap();
                    line.trim().to_owned()
                })
                .collect();
            (child, urls)
        }
        Server::Floor => {
            let mut child = Command::new(me)
                .args(["floor-serve", socket.to_str().unwrap()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            (child, vec![line.trim().to_owned(); streams])
        }
        Server::Websockify => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("websockify")
                .arg(format!("--unix-target={}", socket.display()))
                .arg(format!("127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("websockify (make bench installs it)");
            let t = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "websockify did not start"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            (child, vec![format!("ws://127.0.0.1:{port}/"); streams])
        }
    }
}

/// One viewer: asks the source for `len` bytes through `to` and reads them.
async fn view(to: String, websocket: bool, len: u64) {
    let mut start = vec![b'T'];
    start.extend_from_slice(&len.to_be_bytes());
    let mut got = 0u64;
    if websocket {
        let mut ws = connect(&to, TEST_ORIGIN).await.unwrap();
        ws.send(Message::Binary(start.into())).await.unwrap();
        while got < len {
            if let Message::Binary(b) = ws.next().await.unwrap().unwrap() {
                got += b.len() as u64;
            }
        }
        let _ = ws.close(None).await;
    } else {
        let mut s = TcpStream::connect(&to).await.unwrap();
        s.write_all(&start).await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while got < len {
            got += s.read(&mut buf).await.unwrap() as u64;
        }
    }
}

struct Figures {
    mb_s: f64,
    user: f64,
    sys: f64,
}

fn measure(server: &Server, streams: usize, socket: &Path, dir: &Path) -> Figures {
    let (mut child, targets) = start(server, streams, socket, dir);
    let websocket = !matches!(server, Server::Floor);
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));
    let (u0, s0) = cpu(pid);
    let t = Instant::now();
    runtime().block_on(async {
        let each = TOTAL / streams as u64;
        let views: Vec<_> = targets
            .into_iter()
            .map(|to| tokio::spawn(view(to, websocket, each)))
            .collect();
        for v in views {
            v.await.unwrap();
        }
    });
    let elapsed = t.elapsed();
    // Let websockify reap its per-connection children.
    std::thread::sleep(Duration::from_millis(1500));
    let (u1, s1) = cpu(pid);
    let _ = child.kill();
    let _ = child.wait();
    let gib = TOTAL as f64 / (1u64 << 30) as f64;
    Figures {
        mb_s: TOTAL as f64 / 1e6 / elapsed.as_secs_f64(),
        user: (u1 - u0) / gib,
        sys: (s1 - s0) / gib,
    }
}

fn run() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("display.sock");
    // The source serves from a thread of this process.
    let sock = socket.clone();
    std::thread::spawn(move || {
        runtime().block_on(async {
            source::serve_unix(tokio::net::UnixListener::bind(&sock).unwrap()).await;
        });
    });
    while !socket.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "CPU per GiB, server in its own process (1 GiB per run, median of {RUNS}, loopback, 2 cores)"
    );
    println!(
        "{:<26} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "server", "streams", "MB/s", "user s", "sys s", "CPU s/GiB"
    );
    for streams in [1usize, 10] {
        let mut wsfy = None;
        for (name, server) in [
            ("splice relay (the floor)", Server::Floor),
            ("websockify (Debian)", Server::Websockify),
            ("vmdesk bridge", Server::Bridge),
        ] {
            // The median of 3 runs (by CPU per GiB).
            let mut runs: Vec<Figures> = (0..RUNS)
                .map(|_| measure(&server, streams, &socket, dir.path()))
                .collect();
            runs.sort_by(|a, b| (a.user + a.sys).total_cmp(&(b.user + b.sys)));
            let f = runs.swap_remove(RUNS / 2);
            println!(
                "{name:<26} {streams:>8} {:>10.0} {:>10.2} {:>10.2} {:>10.2}",
                f.mb_s,
                f.user,
                f.sys,
                f.user + f.sys
            );
            match server {
                Server::Websockify => wsfy = Some(f),
                Server::Bridge => {
                    if let Some(w) = &wsfy {
                        println!(
                            "  vmdesk / websockify ({streams} stream(s)): CPU {:.2}x, throughput {:.2}x",
                            (f.user + f.sys) / (w.user + w.sys),
                            f.mb_s / w.mb_s
                        );
                    }
                }
                Server::Floor => {}
            }
        }
    }
}
