//! The provider against libvirt's in-process test driver (`test:///default`).
#![allow(missing_docs, clippy::unwrap_used)]

use vmdesk_core::provider::{MachineSpec, PowerState, Provider, ProviderError};
use vmdesk_libvirt::{LibvirtFactory, VirtType};

fn spec(name: &str) -> MachineSpec {
    MachineSpec {
        machine_name: name.into(),
        vm_id: 1,
        vm_name: "web".into(),
        install_id: "0123456789abcdef".into(),
        ram_mb: 128,
        cpu_cores: 1,
        disk_gb: 1,
        os_type: "blank".into(),
        image: None,
        network: Default::default(),
        seed: None,
    }
}

#[test]
fn a_defined_machine_starts_stops_and_reports_its_state() {
    let factory = LibvirtFactory::new();
    let p = factory.provider("test:///default").unwrap();
    assert_eq!(p.virt_type(), VirtType::Test);
    p.ensure_defined(&spec("vmdesk-t1")).unwrap();
    assert_eq!(p.power_state("vmdesk-t1").unwrap(), PowerState::Stopped);
    p.start("vmdesk-t1").unwrap();
    assert_eq!(p.power_state("vmdesk-t1").unwrap(), PowerState::Running);
    // Starting a running machine is not an error.
    p.start("vmdesk-t1").unwrap();
    p.force_off("vmdesk-t1").unwrap();
    assert_eq!(p.power_state("vmdesk-t1").unwrap(), PowerState::Stopped);
    // Forcing off a stopped machine is not an error either.
    p.force_off("vmdesk-t1").unwrap();
}

#[test]
fn defining_twice_keeps_one_machine() {
    let factory = LibvirtFactory::new();
    let p = factory.provider("test:///default").unwrap();
    p.ensure_defined(&spec("vmdesk-t2")).unwrap();
    p.ensure_defined(&spec("vmdesk-t2")).unwrap();
    let names: Vec<String> = p
        .connection()
        .list_all_domains(0)
        .unwrap()
        .iter()
        .filter_map(|d| d.name().ok())
        .filter(|n| n == "vmdesk-t2")
        .collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn an_unknown_machine_is_not_found() {
    let factory = LibvirtFactory::new();
    let p = factory.provider("test:///default").unwrap();
    assert!(matches!(
        p.power_state("no-such-machine"),
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        p.start("no-such-machine"),
        Err(ProviderError::NotFound(_))
    ));
}

#[test]
fn an_unreachable_uri_is_reported_as_unreachable() {
    let factory =
        LibvirtFactory::new().with_policy(vmdesk_core::validate::UriPolicy { allow_tcp: true });
    assert!(matches!(
        factory.provider("qemu+tcp://127.0.0.1:1/system"),
        Err(ProviderError::Unreachable(_))
    ));
}

#[test]
fn the_provider_is_cached_per_uri() {
    let factory = LibvirtFactory::new();
    let a = factory.provider("test:///default").unwrap();
    let b = factory.provider("test:///default").unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
}

#[test]
fn a_disk_is_created_once_and_deleted() {
    let factory = LibvirtFactory::new();
    let p = factory.provider("test:///default").unwrap();
    p.ensure_disk(&spec("vmdesk-t3")).unwrap();
    p.ensure_disk(&spec("vmdesk-t3")).unwrap();
    let pool = p
        .connection()
        .lookup_storage_pool_by_name("default-pool")
        .unwrap();
    let volume = vmdesk_libvirt::disk_volume("vmdesk-t3");
    assert!(pool.lookup_storage_vol_by_name(&volume).is_ok());
    p.delete_disk("vmdesk-t3").unwrap();
    assert!(pool.lookup_storage_vol_by_name(&volume).is_err());
    // Deleting a disk that is gone is not an error.
    p.delete_disk("vmdesk-t3").unwrap();
}
