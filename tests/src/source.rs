//! A synthetic VNC source for the console benchmarks: a core whose one pool
//! VM runs and whose display is a unix socket served here (as libvirt hands
//! a VM's display over), and that socket's server: after a `T` and a length
//! (8 bytes, big endian) it sends that many bytes as fast as it can; after
//! an `E` it echoes.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmdesk_core::provider::{Compliant, OneProvider};
use vmdesk_core::{Core, NewVm, OpenOptions};

/// A core in `dir` with one RUNNING pool VM `vm` whose display is `socket`.
pub fn core(dir: &Path, socket: &Path) -> Arc<Core> {
    let core = Arc::new(
        Core::open(OpenOptions::new(
            dir,
            Arc::new(OneProvider(Arc::new({
                let socket = socket.to_path_buf();
                Compliant::running(move || std::os::unix::net::UnixStream::connect(&socket))
            }))),
        ))
        .expect("a core"),
    );
    core.host_add("admin", "h", "test:///default")
        .expect("a host");
    core.project_create("admin", "p").expect("a project");
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
    .expect("a VM");
    rusqlite::Connection::open(dir.join("vmdesk.db"))
        .expect("the database")
        .execute("UPDATE vms SET status = 'RUNNING'", [])
        .expect("running");
    core
}

/// Serves the source on `listener` for ever.
pub async fn serve_unix(listener: tokio::net::UnixListener) {
    while let Ok((s, _)) = listener.accept().await {
        tokio::spawn(serve(s));
    }
}

/// Serves one connection.
pub async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    let mut mode = [0u8; 1];
    if s.read_exact(&mut mode).await.is_err() {
        return;
    }
    if mode[0] == b'T' {
        let mut len = [0u8; 8];
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut left = u64::from_be_bytes(len);
        let chunk = vec![7u8; 256 << 10];
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            if s.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n as u64;
        }
        // Stay open until the viewer leaves (a relay may not flush what it
        // holds when the source closes first).
        let _ = s.read(&mut mode).await;
    } else {
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).await.is_ok() {
            if s.write_all(&b).await.is_err() {
                return;
            }
        }
    }
}
