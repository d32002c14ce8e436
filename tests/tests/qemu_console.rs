//! Consoles of real QEMU VMs through vmdesk's WebSocket-to-VNC bridge
//! (`vmdesk console open`), seen by a WebSocket viewer speaking RFB.
#![allow(missing_docs)]

use std::time::Duration;

use vmdesk_tests::vnc::{connect, Rfb, TEST_ORIGIN};
use vmdesk_tests::{virsh, Vmdesk};

fn allocated(v: &Vmdesk) -> i64 {
    v.json(&["ports"])["allocated"].as_i64().expect("allocated")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

#[test]
fn through_the_bridge_the_rfb_handshake_completes_and_a_framebuffer_update_arrives() {
    let v = Vmdesk::new();
    let (_machine, _cleanup) = v.qemu_pool_vm("c1");
    v.json(&["session", "open", "--project", "lab"]);
    let (mut bridge, console) = v.open_console("c1");
    let url = console["url"].as_str().expect("url").to_owned();
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    assert_eq!(allocated(&v), 1);

    runtime().block_on(async {
        let ws = connect(&url, TEST_ORIGIN).await.expect("accepted");
        let mut rfb = Rfb::new(ws);
        let init = rfb.handshake().await;
        assert!(init.width > 0 && init.height > 0, "{init:?}");
        let rects = rfb.framebuffer_update(init.width, init.height).await;
        assert!(rects > 0);
        let mut ws = rfb.into_inner();
        ws.close(None).await.expect("close");
    });

    // The viewer left: the bridge ends and the port is back in the pool.
    let status = bridge
        .exits_within(Duration::from_millis(5000))
        .expect("the console process ended");
    assert!(status.success());
    assert_eq!(allocated(&v), 0);
}

#[test]
fn the_bridge_refuses_what_it_must_and_the_pool_stays_consistent() {
    let v = Vmdesk::new();
    let (_machine, _cleanup) = v.qemu_pool_vm("c2");
    v.json(&["session", "open", "--project", "lab"]);
    let (mut bridge, console) = v.open_console("c2");
    let url = console["url"].as_str().expect("url").to_owned();
    let port = console["port"].as_i64().expect("port");
    let base = format!("ws://127.0.0.1:{port}/");

    runtime().block_on(async {
        let refused = |r: Result<_, String>| r.map(|_| ()).expect_err("refused");
        let e = refused(connect(&base, TEST_ORIGIN).await);
        assert!(e.contains("403") && e.contains("no token"), "{e}");
        let e = refused(connect(&format!("{base}?token=0000"), TEST_ORIGIN).await);
        assert!(e.contains("the token is wrong"), "{e}");
        let e = refused(connect(&url, "http://evil.test").await);
        assert!(e.contains("origin"), "{e}");
        assert_eq!(allocated(&v), 1, "refusals keep the console");

        // The right one, once.
        let ws = connect(&url, TEST_ORIGIN).await.expect("accepted");
        let e = refused(connect(&url, TEST_ORIGIN).await);
        assert!(e.contains("already used"), "{e}");
        drop(ws);
    });

    // Closed: the bridge is gone, its port free, and the old URL opens nothing
    // (refused, or another test's console on that port refuses the token).
    let status = bridge
        .exits_within(Duration::from_millis(5000))
        .expect("the console process ended");
    assert!(status.success());
    assert_eq!(allocated(&v), 0);
    assert!(runtime().block_on(connect(&url, TEST_ORIGIN)).is_err());
}

#[test]
fn an_expired_token_is_refused_and_the_unused_console_closes() {
    let v = Vmdesk::new();
    v.write_settings("[console]\ntoken_ttl_secs = 1\n");
    let (_machine, _cleanup) = v.qemu_pool_vm("c3");
    v.json(&["session", "open", "--project", "lab"]);
    let (mut bridge, console) = v.open_console("c3");
    let url = console["url"].as_str().expect("url").to_owned();

    std::thread::sleep(Duration::from_millis(1300));
    let e = runtime()
        .block_on(connect(&url, TEST_ORIGIN))
        .map(|_| ())
        .expect_err("refused");
    assert!(e.contains("expired"), "{e}");

    // Nobody connected in time: the console closes and frees its port.
    let status = bridge
        .exits_within(Duration::from_millis(3000))
        .expect("the console closed");
    assert!(status.success());
    assert_eq!(allocated(&v), 0);
}

#[test]
fn ports_of_a_killed_console_process_are_freed_at_the_next_start() {
    let v = Vmdesk::new();
    let (_machine, _cleanup) = v.qemu_pool_vm("c4");
    v.json(&["session", "open", "--project", "lab"]);
    let (mut bridge, _console) = v.open_console("c4");
    assert_eq!(allocated(&v), 1);

    bridge.0.kill().expect("kill -9");
    bridge.0.wait().expect("reaped");
    assert_eq!(allocated(&v), 1, "the row outlives the process");

    // What the app does at start; `vmdesk ports cleanup` does the same.
    v.json(&["recover"]);
    assert_eq!(allocated(&v), 0);
    assert_eq!(
        v.count("SELECT count(*) FROM events WHERE action = 'recovery.console'"),
        1
    );
}

#[test]
fn a_vm_that_is_off_has_no_console() {
    let v = Vmdesk::new();
    let (_machine, _cleanup) = v.qemu_pool_vm("c5");
    let err = v.fails(&["console", "open", "c5"]);
    assert!(err.contains("is STOPPED, not RUNNING"), "{err}");
    assert_eq!(allocated(&v), 0);
}

/// The pid of the QEMU process running `machine`.
fn qemu_pid(machine: &str) -> u32 {
    let guest = format!("guest={machine}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg.starts_with(guest.as_bytes()))
            })
        })
        .unwrap_or_else(|| panic!("no QEMU process runs {machine}"))
}

/// The socket inodes listening on TCP (IPv4 and IPv6) in this network namespace.
fn tcp_listening_inodes() -> Vec<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    // st is the 4th column, 0A = LISTEN; the inode the 10th.
                    (cols.get(3) == Some(&"0A")).then(|| cols.get(9).map(|i| i.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The TCP ports a process listens on (through the socket inodes of its descriptors).
fn tcp_ports_of(pid: u32) -> Vec<String> {
    let listening = tcp_listening_inodes();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            let inode = t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned();
            listening.contains(&inode).then_some(t)
        })
        .collect()
}

#[test]
fn a_running_vms_qemu_process_listens_on_no_tcp_port() {
    let v = Vmdesk::new();
    let (machine, _cleanup) = v.qemu_pool_vm("c6");

    v.json(&["session", "open", "--project", "lab"]);

    let pid = qemu_pid(&machine);
    assert_eq!(tcp_ports_of(pid), Vec::<String>::new(), "QEMU {pid}");
    let xml = virsh(&["dumpxml", &machine]);
    assert!(xml.contains("<listen type='socket'"), "{xml}");
}

#[test]
fn a_machine_defined_with_a_tcp_display_moves_to_a_socket_at_its_next_start() {
    let v = Vmdesk::new();
    let (machine, _cleanup) = v.qemu_pool_vm("c7");
    // Defined as vmdesk used to: VNC on 127.0.0.1, a port from 5900.
    let xml = virsh(&["dumpxml", "--inactive", &machine]);
    let start = xml.find("<graphics").expect("a display");
    let end = xml[start..].find("</graphics>").expect("its end") + start + "</graphics>".len();
    let old = format!(
        "{}<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>{}",
        &xml[..start],
        &xml[end..]
    );
    let file = v.dir.path().join("old.xml");
    std::fs::write(&file, old).expect("write the old definition");
    virsh(&["define", file.to_str().expect("path")]);
    let uuid = virsh(&["domuuid", &machine]);
    assert!(
        virsh(&["dumpxml", "--inactive", &machine]).contains("listen='127.0.0.1'"),
        "defined the old way"
    );

    v.json(&["session", "open", "--project", "lab"]);

    let pid = qemu_pid(&machine);
    assert_eq!(tcp_ports_of(pid), Vec::<String>::new(), "QEMU {pid}");
    let now = virsh(&["dumpxml", "--inactive", &machine]);
    assert!(now.contains("<listen type='socket'"), "{now}");
    assert!(!now.contains("127.0.0.1"), "{now}");
    assert_eq!(virsh(&["domuuid", &machine]), uuid, "the same domain");
}
