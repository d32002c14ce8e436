//! Where a host's daemon keeps vmdesk's storage pool and its domains' logs.
#![allow(missing_docs)]

use vmdesk_libvirt::{HostPaths, LocalUser};

fn user(root: bool) -> LocalUser {
    LocalUser {
        root,
        home: Some("/home/ann".into()),
        data_home: None,
        cache_home: None,
    }
}

#[test]
fn a_system_daemon_keeps_the_fixed_paths() {
    let p = HostPaths::of("qemu:///system", &user(false));
    assert_eq!(
        p.pool_dir.as_deref(),
        Some("/var/lib/libvirt/images/vmdesk")
    );
    assert_eq!(p.log_dir.as_deref(), Some("/var/log/libvirt/qemu"));
}

#[test]
fn a_users_session_daemon_keeps_files_under_the_users_xdg_dirs() {
    let p = HostPaths::of("qemu:///session", &user(false));
    assert_eq!(
        p.pool_dir.as_deref(),
        Some("/home/ann/.local/share/libvirt/images/vmdesk")
    );
    assert_eq!(
        p.log_dir.as_deref(),
        Some("/home/ann/.cache/libvirt/qemu/log")
    );
}

#[test]
fn the_xdg_variables_win_over_home() {
    let u = LocalUser {
        data_home: Some("/data".into()),
        cache_home: Some("/cache".into()),
        ..user(false)
    };
    let p = HostPaths::of("qemu:///session", &u);
    assert_eq!(p.pool_dir.as_deref(), Some("/data/libvirt/images/vmdesk"));
    assert_eq!(p.log_dir.as_deref(), Some("/cache/libvirt/qemu/log"));
}

#[test]
fn roots_session_is_the_system_daemon() {
    assert_eq!(
        HostPaths::of("qemu:///session", &user(true)),
        HostPaths::of("qemu:///system", &user(true))
    );
}

#[test]
fn a_remote_session_daemons_paths_are_unknown() {
    let p = HostPaths::of("qemu+ssh://ann@box/session", &user(false));
    assert_eq!(p.pool_dir, None);
    assert_eq!(p.log_dir, None);
    assert!(!p.local);
}
