//! Domain XML, written with an XML writer so that no value can change the
//! document's structure (names are also validated before they get here).

use std::io;

use quick_xml::events::BytesText;
use quick_xml::Writer;
use vmdesk_core::provider::MachineSpec;

/// The XML namespace of vmdesk's marker in a domain's metadata.
pub const MARKER_NS: &str = "urn:vmdesk:machine:1";

/// The hypervisor type of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtType {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (TCG).
    Qemu,
    /// libvirt's in-process test driver.
    Test,
}

impl VirtType {
    fn as_str(self) -> &'static str {
        match self {
            VirtType::Kvm => "kvm",
            VirtType::Qemu => "qemu",
            VirtType::Test => "test",
        }
    }
}

fn text<W: io::Write>(w: &mut Writer<W>, name: &str, value: &str) -> io::Result<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(value))?;
    Ok(())
}

/// The XML of a domain for a VM: memory, CPUs, a VGA display served by VNC on
/// 127.0.0.1, and vmdesk's marker (install id, VM id and name) in its metadata.
pub fn domain(spec: &MachineSpec, virt: VirtType) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let memory_kib = (spec.ram_mb * 1024).to_string();
    let vcpus = spec.cpu_cores.to_string();
    let vm_id = spec.vm_id.to_string();
    let written: io::Result<_> = w
        .create_element("domain")
        .with_attribute(("type", virt.as_str()))
        .write_inner_content(|w| {
            text(w, "name", &spec.machine_name)?;
            text(w, "title", &format!("vmdesk VM {}", spec.vm_name))?;
            w.create_element("metadata").write_inner_content(|w| {
                w.create_element("vmdesk:machine")
                    .with_attribute(("xmlns:vmdesk", MARKER_NS))
                    .write_inner_content(|w| {
                        text(w, "vmdesk:install", &spec.install_id)?;
                        w.create_element("vmdesk:vm")
                            .with_attribute(("id", vm_id.as_str()))
                            .write_text_content(BytesText::new(&spec.vm_name))?;
                        text(w, "vmdesk:os", &spec.os_type)
                    })?;
                Ok(())
            })?;
            w.create_element("memory")
                .with_attribute(("unit", "KiB"))
                .write_text_content(BytesText::new(&memory_kib))?;
            text(w, "vcpu", &vcpus)?;
            w.create_element("os").write_inner_content(|w| {
                let mut ty = w.create_element("type").with_attribute(("arch", "x86_64"));
                if virt != VirtType::Test {
                    ty = ty.with_attribute(("machine", "pc"));
                }
                ty.write_text_content(BytesText::new("hvm"))?;
                w.create_element("boot")
                    .with_attribute(("dev", "hd"))
                    .write_empty()?;
                Ok(())
            })?;
            text(w, "on_poweroff", "destroy")?;
            text(w, "on_reboot", "restart")?;
            text(w, "on_crash", "destroy")?;
            if virt != VirtType::Test {
                w.create_element("features").write_inner_content(|w| {
                    w.create_element("acpi").write_empty()?;
                    Ok(())
                })?;
                w.create_element("devices").write_inner_content(|w| {
                    w.create_element("graphics")
                        .with_attributes([
                            ("type", "vnc"),
                            ("port", "-1"),
                            ("autoport", "yes"),
                            ("listen", "127.0.0.1"),
                        ])
                        .write_empty()?;
                    w.create_element("video").write_inner_content(|w| {
                        w.create_element("model")
                            .with_attribute(("type", "vga"))
                            .write_empty()?;
                        Ok(())
                    })?;
                    w.create_element("memballoon")
                        .with_attribute(("model", "none"))
                        .write_empty()?;
                    Ok(())
                })?;
            }
            Ok(())
        });
    // Writing into a Vec cannot fail.
    debug_assert!(written.is_ok());
    String::from_utf8(w.into_inner()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> MachineSpec {
        MachineSpec {
            machine_name: "vmdesk-a-12345678".into(),
            vm_id: 7,
            vm_name: name.into(),
            install_id: "abc".into(),
            ram_mb: 64,
            cpu_cores: 1,
            disk_gb: 1,
            os_type: "blank".into(),
        }
    }

    #[test]
    fn memory_is_in_kib_and_vcpus_match() {
        let xml = domain(&spec("a"), VirtType::Qemu);
        assert!(
            xml.contains(r#"<memory unit="KiB">65536</memory>"#),
            "{xml}"
        );
        assert!(xml.contains("<vcpu>1</vcpu>"), "{xml}");
    }

    #[test]
    fn metacharacters_are_escaped_and_cannot_add_elements() {
        let xml = domain(&spec(r#"x</vmdesk:vm><devices/>&'""#), VirtType::Qemu);
        assert!(
            xml.contains("x&lt;/vmdesk:vm&gt;&lt;devices/&gt;&amp;&apos;&quot;"),
            "{xml}"
        );
        assert_eq!(xml.matches("<devices>").count(), 1, "{xml}");
        assert_eq!(xml.matches("<devices/>").count(), 0, "{xml}");
    }

    #[test]
    fn vnc_listens_on_loopback_only() {
        let xml = domain(&spec("a"), VirtType::Qemu);
        assert!(xml.contains(r#"listen="127.0.0.1""#), "{xml}");
    }

    #[test]
    fn the_marker_names_install_and_vm() {
        let xml = domain(&spec("web"), VirtType::Kvm);
        assert!(xml.contains(MARKER_NS));
        assert!(
            xml.contains("<vmdesk:install>abc</vmdesk:install>"),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<vmdesk:vm id="7">web</vmdesk:vm>"#),
            "{xml}"
        );
    }
}
