//! Durations from the settings or the command line that are too long to add
//! to a time saturate: they never come, and nothing panics.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vmdesk_core::{Core, OpenOptions, VmAction, VmStatus};

#[test]
fn a_huge_start_and_shutdown_timeout_do_not_panic() {
    let (dir, hosts, core) = with_pool(1);
    drop(core);
    let mut opts = OpenOptions::new(dir.path(), Arc::new(hosts.clone()));
    opts.start_timeout = Duration::MAX;
    opts.shutdown_timeout = Duration::MAX;
    let core = Core::open(opts).unwrap();

    let started = core.vm_action("admin", "vm0", VmAction::Start).unwrap();
    let stopped = core.vm_action("admin", "vm0", VmAction::Stop).unwrap();

    assert_eq!(
        (started.status, stopped.status),
        (VmStatus::Running, VmStatus::Stopped)
    );
}
