//! Azure hosts do not leak their credentials and survive hostile answers: the
//! bearer token goes only to the ARM endpoint's origin, `http://` endpoints
//! need an explicit flag, and an absurd `Retry-After` is saturated. The real
//! `vmdesk` binary against the ARM test server (tests/src/arm.rs).
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use vmdesk_tests::arm::{ArmServer, Fault, Power};
use vmdesk_tests::Vmdesk;

const SUB: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const RG: &str = "Lab-RG";

/// A data directory on the server: its settings (with `azure` set as given),
/// its service principal in the environment.
fn vmdesk_with(server: &ArmServer, azure: &str) -> Vmdesk {
    let mut v = Vmdesk::new();
    v.write_settings(&format!(
        "[azure]\n{azure}endpoint = \"{url}\"\nauthority_host = \"{url}\"\npoll_interval_ms = 50\nmax_retry_after_secs = 5\n",
        url = server.url()
    ));
    v.env = server.env();
    v
}

/// Adds the subscription as host `az`, a project `lab`, and imports its VMs.
fn imported(server: &ArmServer) -> Vmdesk {
    let v = vmdesk_with(server, "allow_insecure_endpoints = true\n");
    v.json(&["host", "add", "az", "--azure-subscription", SUB]);
    v.json(&["project", "create", "lab"]);
    v.json(&["host", "import", "az", "--project", "lab"]);
    v
}

#[test]
fn an_operation_on_another_origin_never_receives_the_token() {
    let server = ArmServer::start();
    let foreign = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Deallocated);
    let v = imported(&server);
    server.set_operation_base(Some(foreign.url()));

    let err = v.fails(&["session", "open", "--project", "lab"]);

    assert_eq!(foreign.calls().authorized, 0, "{:#?}", foreign.log());
    assert!(
        err.contains("another origin") && err.contains(&foreign.url()),
        "{err}"
    );
}

#[test]
fn an_http_endpoint_without_the_flag_is_refused() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Running);
    let v = vmdesk_with(&server, "");

    let err = v.fails(&["host", "add", "az", "--azure-subscription", SUB]);

    assert!(
        err.contains("https") && err.contains("allow_insecure_endpoints"),
        "{err}"
    );
    let calls = server.calls();
    assert_eq!((calls.token, calls.arm()), (0, 0), "{calls:?}");
}

#[test]
fn an_http_authority_host_from_the_environment_is_refused_without_the_flag() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Running);
    let mut v = Vmdesk::new();
    v.env = server.env();

    let err = v.fails(&["host", "add", "az", "--azure-subscription", SUB]);

    assert!(err.contains("allow_insecure_endpoints"), "{err}");
    assert_eq!(server.calls().token, 0);
}

#[test]
fn the_largest_retry_after_neither_panics_nor_blocks_the_sync() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Deallocated);
    let v = imported(&server);
    server.fail_next(
        1,
        Fault::Throttle {
            retry_after_secs: u64::MAX,
        },
    );

    let t = Instant::now();
    let out = v.run(&["--json", "sync", "--once"]);

    assert!(
        out.status.success(),
        "sync --once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(server.calls().injected, 1);
}
