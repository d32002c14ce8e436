//! The console's way from a remote host: the bytes of a display's unix
//! socket on the remote test host (scripts/remote-host.sh), read here
//! through the SSH channel vmdesk opens (system ssh, `nc -U` on the host),
//! beside the same socket read directly (the floor of a local display).
//! The source is synthetic (a display sends far less), so the figures are
//! the path's ceiling. Prints MB/s and the CPU of this process per GiB.
//! Run by `make bench` (root: the remote host lives in a network namespace).
#![allow(missing_docs)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmdesk_libvirt::ssh::SshTarget;
use vmdesk_tests::remote::Remote;

const BYTES: u64 = 1 << 30;
const SOCKET: &str = "/var/lib/vmdr/bench-source.sock";

/// The source (`runuser` kept for its kill on drop; its child by name).
struct Source(#[allow(dead_code)] vmdesk_tests::KillOnDrop);

impl Drop for Source {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-u", "vmdesk-remote", "-f", "bench-source.sock"])
            .status();
        let _ = std::fs::remove_file(SOCKET);
    }
}

/// A source on the remote host, as its user: writes BYTES to each client.
fn source() -> Source {
    let _ = std::fs::remove_file(SOCKET);
    let script = format!(
        "import socket,os\n\
         s=socket.socket(socket.AF_UNIX);s.bind('{SOCKET}');s.listen(4)\n\
         buf=b'\\0'*(1<<20)\n\
         while True:\n  c,_=s.accept()\n  left={BYTES}\n  \
         while left>0:\n    n=c.send(buf[:min(left,len(buf))]);left-=n\n  c.close()\n"
    );
    let child = Command::new("runuser")
        .args(["-u", "vmdesk-remote", "--", "python3", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the source");
    let t = Instant::now();
    while !std::path::Path::new(SOCKET).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the source did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Source(vmdesk_tests::KillOnDrop(child))
}

fn cpu_seconds() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// Reads the whole stream; (MB/s, CPU seconds of this process per GiB).
fn drain(mut s: UnixStream) -> (f64, f64) {
    let mut buf = vec![0u8; 1 << 20];
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    assert_eq!(got, BYTES, "the whole GiB came");
    let secs = t.elapsed().as_secs_f64();
    (
        got as f64 / secs / 1e6,
        (cpu_seconds() - cpu) * (1u64 << 30) as f64 / got as f64,
    )
}

fn main() {
    let Some(remote) = Remote::get() else { return };
    let target = SshTarget::of(&remote.uri).expect("an ssh URI");
    let _source = source();
    println!("console path: 1 GiB from a synthetic display socket on the remote host, 3 runs each");
    for run in 1..=3 {
        let (direct, direct_cpu) = drain(UnixStream::connect(SOCKET).expect("connect"));
        let (ssh, ssh_cpu) = drain(target.open(SOCKET).expect("the ssh channel"));
        println!(
            "run {run}: direct socket {direct:.0} MB/s ({direct_cpu:.2} s CPU/GiB here); \
             through ssh {ssh:.0} MB/s ({ssh_cpu:.2} s CPU/GiB here, ssh and sshd not counted); \
             ssh/direct {:.2}",
            ssh / direct
        );
    }
}
