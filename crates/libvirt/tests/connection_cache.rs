//! The connection cache: a host that hangs while connecting holds up only its
//! own callers, and host URIs are checked before anything connects.
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use vmdesk_core::provider::ProviderError;
use vmdesk_core::validate::UriPolicy;
use vmdesk_libvirt::LibvirtFactory;

/// A TCP port that accepts connections (the kernel completes the handshake)
/// but never says a word: a libvirt client waits on it for its first reply.
fn silent_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Ends a hung connect: the listener goes, its pending connection is
/// reset, and the thread that waited on it is joined. The process must not
/// exit while libvirt is inside a connect on another thread (its teardown
/// then corrupts the heap: `malloc_consolidate(): invalid chunk size`).
fn end_hung(listener: TcpListener, waiter: std::thread::JoinHandle<()>) {
    drop(listener);
    waiter.join().unwrap();
}

#[test]
fn a_hung_connect_to_one_host_does_not_block_another() {
    let (listener, port) = silent_listener();
    let factory = Arc::new(LibvirtFactory::new().with_policy(UriPolicy { allow_tcp: true }));
    let hung = Arc::clone(&factory);
    let waiter = std::thread::spawn(move || {
        // Does not return while the listener is silent.
        let _ = hung.provider(&format!("qemu+tcp://127.0.0.1:{port}/system"));
    });
    std::thread::sleep(Duration::from_millis(500));

    let (tx, rx) = mpsc::channel();
    let other = Arc::clone(&factory);
    std::thread::spawn(move || {
        let _ = tx.send(other.provider("test:///default").is_ok());
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "the test driver's provider waited for the hung host"
    );
    end_hung(listener, waiter);
}

#[test]
fn a_hung_connect_is_not_reported_as_connected() {
    let (listener, port) = silent_listener();
    let uri = format!("qemu+tcp://127.0.0.1:{port}/system");
    let factory = Arc::new(LibvirtFactory::new().with_policy(UriPolicy { allow_tcp: true }));
    let hung = Arc::clone(&factory);
    let u = uri.clone();
    let waiter = std::thread::spawn(move || {
        let _ = hung.provider(&u);
    });
    std::thread::sleep(Duration::from_millis(500));

    let (tx, rx) = mpsc::channel();
    let f = Arc::clone(&factory);
    std::thread::spawn(move || {
        let _ = tx.send(f.is_connected(&uri));
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(false));
    end_hung(listener, waiter);
}

#[test]
fn a_uri_that_runs_a_program_is_refused_before_connecting() {
    let factory = LibvirtFactory::new();
    let marker = std::env::temp_dir().join(format!("vmdesk-ext-{}", std::process::id()));
    let uri = format!(
        "qemu+ext:///system?command=/usr/bin/touch%20{}",
        marker.display()
    );
    assert!(matches!(
        factory.provider(&uri),
        Err(ProviderError::Refused(_))
    ));
    assert!(!marker.exists(), "the command ran");
}

#[test]
fn tcp_is_refused_without_the_opt_in() {
    let factory = LibvirtFactory::new().with_policy(UriPolicy::default());
    assert!(matches!(
        factory.provider("qemu+tcp://127.0.0.1:1/system"),
        Err(ProviderError::Refused(_))
    ));
}
