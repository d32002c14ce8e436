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

/// A VM's disk: a volume of a storage pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRef<'a> {
    /// The storage pool.
    pub pool: &'a str,
    /// The volume in it.
    pub volume: &'a str,
}

/// The virtio-serial port QEMU's guest agent listens on.
pub const AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// The virtio-serial port of the clipboard's agent (the SPICE agent's name,
/// which QEMU's `qemu-vdagent` serves).
pub const CLIPBOARD_CHANNEL: &str = "com.redhat.spice.0";

/// A domain's XML without the guest agent's channel (none: it has none).
pub fn without_agent(domain_xml: &str) -> Option<String> {
    let at = domain_xml.find(&format!("name='{AGENT_CHANNEL}'"))?;
    let start = domain_xml[..at].rfind("<channel")?;
    let end = at + domain_xml[at..].find("</channel>")? + "</channel>".len();
    Some(format!("{}{}", &domain_xml[..start], &domain_xml[end..]))
}

/// Whether a running domain's clipboard channel is held by an agent in the
/// guest (libvirt's live XML says `state='connected'` on its target).
pub fn clipboard_agent_connected(live_xml: &str) -> bool {
    let Some(at) = live_xml.find("type='qemu-vdagent'") else {
        return false;
    };
    let channel = &live_xml[at..];
    let channel = &channel[..channel.find("</channel>").unwrap_or(channel.len())];
    channel.contains(&format!("name='{CLIPBOARD_CHANNEL}'"))
        && channel.contains("state='connected'")
}

/// Whether a domain's primary display can take the viewer's size (a virtio
/// one: QEMU forwards VNC's SetDesktopSize to it; standard VGA refuses).
pub fn display_resizes(domain_xml: &str) -> bool {
    domain_xml
        .split("<video>")
        .skip(1)
        .filter_map(|v| v.split("</video>").next())
        .filter(|v| v.contains("primary='yes'") || !domain_xml.contains("primary='yes'"))
        .any(|v| v.contains("<model type='virtio'"))
}

/// Whether a domain's XML has a NIC on the libvirt network `network`.
pub fn uses_network(domain_xml: &str, network: &str) -> bool {
    [
        format!("<source network='{network}'"),
        format!("<source network=\"{network}\""),
    ]
    .iter()
    .any(|s| domain_xml.contains(s.as_str()))
}

/// A NIC: what it is plugged into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic<'a> {
    /// A libvirt network of the host.
    Network(&'a str),
    /// A bridge of the host.
    Bridge(&'a str),
    /// QEMU's user-mode networking (a session daemon's only choice).
    User,
}

/// A domain's devices beyond the fixed ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices<'a> {
    /// Its disk (none: no disk).
    pub disk: Option<DiskRef<'a>>,
    /// Its cloud-init seed, a raw read-only disk.
    pub seed: Option<DiskRef<'a>>,
    /// Its NIC (a virtio one).
    pub nic: Option<Nic<'a>>,
}

/// The XML of a domain for a VM: memory, CPUs, its disk, a VGA display served
/// by VNC on a unix socket only (reached through libvirt, never a TCP port), a
/// serial console, and vmdesk's marker (install id, VM id and name) in its
/// metadata.
pub fn domain(spec: &MachineSpec, virt: VirtType, disk: Option<&DiskRef<'_>>) -> String {
    let devices = Devices {
        disk: disk.cloned(),
        ..Devices::default()
    };
    domain_with_uuid(spec, virt, &devices, None, Some(SYSTEM_LOG_DIR))
}

/// Where a system daemon (`qemu:///system`) keeps its domains' logs.
pub const SYSTEM_LOG_DIR: &str = "/var/log/libvirt/qemu";

/// The file a domain's serial console is logged to, in a host's log directory.
pub fn serial_log(log_dir: &str, machine: &str) -> String {
    format!("{log_dir}/{machine}-serial.log")
}

/// The XML of [`domain`] for a host that keeps logs in `log_dir` (none: the
/// serial console is not logged, e.g. a session daemon on another machine);
/// with the `uuid` of the domain it redefines, if it exists already (a
/// definition with the same name and another UUID is refused).
pub fn domain_on(
    spec: &MachineSpec,
    virt: VirtType,
    devices: &Devices<'_>,
    uuid: Option<&str>,
    log_dir: Option<&str>,
) -> String {
    domain_with_uuid(spec, virt, devices, uuid, log_dir)
}

fn domain_with_uuid(
    spec: &MachineSpec,
    virt: VirtType,
    devices: &Devices<'_>,
    uuid: Option<&str>,
    log_dir: Option<&str>,
) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let memory_kib = (spec.ram_mb * 1024).to_string();
    let vcpus = spec.cpu_cores.to_string();
    let vm_id = spec.vm_id.to_string();
    let written: io::Result<_> = w
        .create_element("domain")
        .with_attribute(("type", virt.as_str()))
        .write_inner_content(|w| {
            text(w, "name", &spec.machine_name)?;
            if let Some(uuid) = uuid {
                text(w, "uuid", uuid)?;
            }
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
                    if let Some(d) = &devices.disk {
                        w.create_element("disk")
                            .with_attributes([("type", "volume"), ("device", "disk")])
                            .write_inner_content(|w| {
                                w.create_element("driver")
                                    .with_attributes([("name", "qemu"), ("type", "qcow2")])
                                    .write_empty()?;
                                w.create_element("source")
                                    .with_attributes([("pool", d.pool), ("volume", d.volume)])
                                    .write_empty()?;
                                w.create_element("target")
                                    .with_attributes([("dev", "vda"), ("bus", "virtio")])
                                    .write_empty()?;
                                Ok(())
                            })?;
                    }
                    if let Some(d) = &devices.seed {
                        w.create_element("disk")
                            .with_attributes([("type", "volume"), ("device", "disk")])
                            .write_inner_content(|w| {
                                w.create_element("driver")
                                    .with_attributes([("name", "qemu"), ("type", "raw")])
                                    .write_empty()?;
                                w.create_element("source")
                                    .with_attributes([("pool", d.pool), ("volume", d.volume)])
                                    .write_empty()?;
                                w.create_element("target")
                                    .with_attributes([("dev", "vdb"), ("bus", "virtio")])
                                    .write_empty()?;
                                w.create_element("readonly").write_empty()?;
                                Ok(())
                            })?;
                    }
                    if let Some(nic) = &devices.nic {
                        let (kind, source) = match nic {
                            Nic::Network(n) => ("network", Some(("network", *n))),
                            Nic::Bridge(b) => ("bridge", Some(("bridge", *b))),
                            Nic::User => ("user", None),
                        };
                        w.create_element("interface")
                            .with_attribute(("type", kind))
                            .write_inner_content(|w| {
                                if let Some(attr) = source {
                                    w.create_element("source")
                                        .with_attribute(attr)
                                        .write_empty()?;
                                }
                                w.create_element("model")
                                    .with_attribute(("type", "virtio"))
                                    .write_empty()?;
                                Ok(())
                            })?;
                    }
                    // The serial console is also logged by virtlogd, for tests
                    // and support, where the host keeps its logs.
                    let serial = w.create_element("serial").with_attribute(("type", "pty"));
                    match log_dir {
                        Some(dir) => {
                            let log = serial_log(dir, &spec.machine_name);
                            serial.write_inner_content(|w| {
                                w.create_element("log")
                                    .with_attributes([("file", log.as_str()), ("append", "off")])
                                    .write_empty()?;
                                Ok(())
                            })?;
                        }
                        None => {
                            serial.write_empty()?;
                        }
                    }
                    w.create_element("console")
                        .with_attribute(("type", "pty"))
                        .write_empty()?;
                    // The guest agent's channel (libvirt picks its socket):
                    // the guest tells its addresses where no lease does.
                    w.create_element("channel")
                        .with_attribute(("type", "unix"))
                        .write_inner_content(|w| {
                            w.create_element("target")
                                .with_attributes([("type", "virtio"), ("name", AGENT_CHANNEL)])
                                .write_empty()?;
                            Ok(())
                        })?;
                    // The clipboard's channel: QEMU's own spice agent end
                    // (no SPICE), shared with the VNC clients that speak the
                    // extended clipboard; a guest agent on the port makes
                    // copy and paste work both ways.
                    w.create_element("channel")
                        .with_attribute(("type", "qemu-vdagent"))
                        .write_inner_content(|w| {
                            w.create_element("source").write_inner_content(|w| {
                                w.create_element("clipboard")
                                    .with_attribute(("copypaste", "yes"))
                                    .write_empty()?;
                                Ok(())
                            })?;
                            w.create_element("target")
                                .with_attributes([("type", "virtio"), ("name", CLIPBOARD_CHANNEL)])
                                .write_empty()?;
                            Ok(())
                        })?;
                    // No port: the display is reached through
                    // virDomainOpenGraphicsFD only.
                    w.create_element("graphics")
                        .with_attribute(("type", "vnc"))
                        .write_inner_content(|w| {
                            w.create_element("listen")
                                .with_attribute(("type", "socket"))
                                .write_empty()?;
                            Ok(())
                        })?;
                    // virtio-vga: VGA for the firmware and boot loader, and a
                    // display whose size the viewer may ask for (VNC's
                    // SetDesktopSize reaches a guest with its driver, up to
                    // the size it had at boot: 1920x1080).
                    w.create_element("video").write_inner_content(|w| {
                        w.create_element("model")
                            .with_attributes([
                                ("type", "virtio"),
                                ("heads", "1"),
                                ("primary", "yes"),
                            ])
                            .write_inner_content(|w| {
                                w.create_element("resolution")
                                    .with_attributes([("x", "1920"), ("y", "1080")])
                                    .write_empty()?;
                                Ok(())
                            })?;
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

/// The XML of a qcow2 volume of `capacity_gb` GiB, over `backing` (a qcow2
/// file on the host) when given.
pub fn volume(name: &str, capacity_gb: i64, backing: Option<&str>) -> String {
    volume_xml(name, (&capacity_gb.to_string(), "GiB"), "qcow2", backing)
}

/// The XML of a qcow2 volume of `bytes` bytes with no backing store (a
/// clone made from it reads through the source's chain).
pub fn flat_volume(name: &str, bytes: u64) -> String {
    volume_xml(name, (&bytes.to_string(), "bytes"), "qcow2", None)
}

/// The XML of a raw volume of `bytes` bytes (an upload target).
pub fn raw_volume(name: &str, bytes: u64) -> String {
    volume_xml(name, (&bytes.to_string(), "bytes"), "raw", None)
}

fn volume_xml(
    name: &str,
    (capacity, unit): (&str, &str),
    format: &str,
    backing: Option<&str>,
) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let written: io::Result<_> = w.create_element("volume").write_inner_content(|w| {
        text(w, "name", name)?;
        w.create_element("capacity")
            .with_attribute(("unit", unit))
            .write_text_content(BytesText::new(capacity))?;
        w.create_element("target").write_inner_content(|w| {
            w.create_element("format")
                .with_attribute(("type", format))
                .write_empty()?;
            Ok(())
        })?;
        if let Some(path) = backing {
            w.create_element("backingStore").write_inner_content(|w| {
                text(w, "path", path)?;
                w.create_element("format")
                    .with_attribute(("type", "qcow2"))
                    .write_empty()?;
                Ok(())
            })?;
        }
        Ok(())
    });
    debug_assert!(written.is_ok());
    String::from_utf8(w.into_inner()).unwrap_or_default()
}

/// The format of a volume (`raw`, `qcow2`, ...) from its XML, as the host
/// probed it: its `<target><format type=...>`.
pub fn volume_format(volume_xml: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(volume_xml);
    let mut depth_in_target = None::<usize>;
    let mut depth = 0usize;
    loop {
        match reader.read_event().ok()? {
            Event::Eof => return None,
            Event::Start(e) => {
                depth += 1;
                if e.local_name().into_inner() == "target" && depth == 2 {
                    depth_in_target = Some(depth);
                }
            }
            Event::End(e) => {
                if e.local_name().into_inner() == "target" && depth_in_target == Some(depth) {
                    depth_in_target = None;
                }
                depth = depth.saturating_sub(1);
            }
            Event::Empty(e)
                if depth_in_target.is_some() && e.local_name().into_inner() == "format" =>
            {
                return e
                    .attributes()
                    .flatten()
                    .find(|a| a.key.local_name().into_inner() == "type")
                    .map(|a| a.value.into_owned());
            }
            _ => {}
        }
    }
}

/// The XML of a volume of `bytes` bytes in `format`, a copy's target.
pub fn copy_volume(name: &str, bytes: u64, format: &str) -> String {
    volume_xml(name, (&bytes.to_string(), "bytes"), format, None)
}

/// The XML of vmdesk's NAT network `name` on bridge `bridge`: the subnet
/// 192.168.`third`.0/24, the host at .1, DHCP from .10 (libvirt's dnsmasq),
/// NAT to the host's uplinks.
pub fn nat_network(name: &str, bridge: &str, third: u8) -> String {
    let net = format!("192.168.{third}");
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let written: io::Result<_> = w.create_element("network").write_inner_content(|w| {
        text(w, "name", name)?;
        w.create_element("forward")
            .with_attribute(("mode", "nat"))
            .write_empty()?;
        w.create_element("bridge")
            .with_attributes([("name", bridge), ("stp", "on"), ("delay", "0")])
            .write_empty()?;
        w.create_element("ip")
            .with_attributes([
                ("address", format!("{net}.1").as_str()),
                ("netmask", "255.255.255.0"),
            ])
            .write_inner_content(|w| {
                w.create_element("dhcp").write_inner_content(|w| {
                    w.create_element("range")
                        .with_attributes([
                            ("start", format!("{net}.10").as_str()),
                            ("end", format!("{net}.254").as_str()),
                        ])
                        .write_empty()?;
                    Ok(())
                })?;
                Ok(())
            })?;
        Ok(())
    });
    debug_assert!(written.is_ok());
    String::from_utf8(w.into_inner()).unwrap_or_default()
}

/// The XML of a directory storage pool.
pub fn dir_pool(name: &str, path: &str) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let written: io::Result<_> = w
        .create_element("pool")
        .with_attribute(("type", "dir"))
        .write_inner_content(|w| {
            text(w, "name", name)?;
            w.create_element("target")
                .write_inner_content(|w| text(w, "path", path))?;
            Ok(())
        });
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
            image: None,
            network: Default::default(),
            seed: None,
        }
    }

    #[test]
    fn the_serial_console_is_logged_in_the_hosts_log_dir() {
        let xml = domain_on(
            &spec("a"),
            VirtType::Qemu,
            &Devices::default(),
            None,
            Some("/home/u/.cache/libvirt/qemu/log"),
        );
        assert!(
            xml.contains(
                r#"<log file="/home/u/.cache/libvirt/qemu/log/vmdesk-a-12345678-serial.log""#
            ),
            "{xml}"
        );
        assert!(!xml.contains("/var/log"), "{xml}");
    }

    #[test]
    fn without_a_log_dir_the_serial_console_is_not_logged() {
        let xml = domain_on(&spec("a"), VirtType::Qemu, &Devices::default(), None, None);
        assert!(xml.contains(r#"<serial type="pty"/>"#), "{xml}");
        assert!(!xml.contains("<log "), "{xml}");
    }

    #[test]
    fn a_volumes_format_is_read_from_its_target() {
        let xml = "<volume type='file'><name>a</name><source></source>\
                   <target><path>/p/a</path><format type='qcow2'/></target>\
                   <backingStore><format type='raw'/></backingStore></volume>";
        assert_eq!(volume_format(xml).as_deref(), Some("qcow2"));
    }

    #[test]
    fn memory_is_in_kib_and_vcpus_match() {
        let xml = domain(&spec("a"), VirtType::Qemu, None);
        assert!(
            xml.contains(r#"<memory unit="KiB">65536</memory>"#),
            "{xml}"
        );
        assert!(xml.contains("<vcpu>1</vcpu>"), "{xml}");
    }

    #[test]
    fn metacharacters_are_escaped_and_cannot_add_elements() {
        let xml = domain(&spec(r#"x</vmdesk:vm><devices/>&'""#), VirtType::Qemu, None);
        assert!(
            xml.contains("x&lt;/vmdesk:vm&gt;&lt;devices/&gt;&amp;&apos;&quot;"),
            "{xml}"
        );
        assert_eq!(xml.matches("<devices>").count(), 1, "{xml}");
        assert_eq!(xml.matches("<devices/>").count(), 0, "{xml}");
    }

    #[test]
    fn the_disk_is_the_named_volume_of_the_pool() {
        let xml = domain(
            &spec("a"),
            VirtType::Qemu,
            Some(&DiskRef {
                pool: "vmdesk",
                volume: "a.qcow2",
            }),
        );
        assert!(
            xml.contains(r#"<source pool="vmdesk" volume="a.qcow2"/>"#),
            "{xml}"
        );
    }

    #[test]
    fn the_live_xml_tells_whether_the_clipboard_agent_is_there_and_the_display_resizes() {
        let live = |state: &str, model: &str| {
            format!(
                "<domain><devices><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>\
                 <channel type='qemu-vdagent'><source><clipboard copypaste='yes'/></source>\
                 <target type='virtio' name='com.redhat.spice.0'{state}/><alias name='channel1'/></channel>\
                 <video><model type='{model}' heads='1' primary='yes'/></video></devices></domain>"
            )
        };
        assert!(clipboard_agent_connected(&live(
            " state='connected'",
            "virtio"
        )));
        assert!(!clipboard_agent_connected(&live(
            " state='disconnected'",
            "virtio"
        )));
        assert!(!clipboard_agent_connected(&live("", "virtio")));
        // Another channel's state does not count.
        assert!(!clipboard_agent_connected(
            "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>"
        ));
        assert!(display_resizes(&live("", "virtio")));
        assert!(!display_resizes(&live("", "vga")));
        assert!(!display_resizes("<domain><devices/></domain>"));
    }

    #[test]
    fn every_domain_shares_its_clipboard_and_has_a_display_that_can_resize() {
        let xml = domain_on(&spec("a"), VirtType::Qemu, &Devices::default(), None, None);
        // The XML is indented: compare it without the indentation.
        let xml: String = xml.lines().map(str::trim).collect();
        let channel = &xml[xml.find(r#"<channel type="qemu-vdagent">"#).expect(&xml)..];
        assert!(
            channel.starts_with(
                r#"<channel type="qemu-vdagent"><source><clipboard copypaste="yes"/></source><target type="virtio" name="com.redhat.spice.0"/></channel>"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<video><model type="virtio" heads="1" primary="yes"><resolution x="1920" y="1080"/></model></video>"#
            ),
            "{xml}"
        );
        assert!(
            !xml.contains("keymap"),
            "a keymap would make QEMU drop scancodes: {xml}"
        );
    }

    #[test]
    fn the_seed_is_a_read_only_raw_disk_and_the_nic_a_virtio_one() {
        let devices = |nic| Devices {
            disk: None,
            seed: Some(DiskRef {
                pool: "vmdesk",
                volume: "a-seed.img",
            }),
            nic,
        };
        let xml = domain_on(
            &spec("a"),
            VirtType::Qemu,
            &devices(Some(Nic::Network("vmdesk"))),
            None,
            None,
        );
        let seed = &xml[xml.find(r#"volume="a-seed.img""#).expect("seed")..];
        assert!(
            seed.contains(r#"<target dev="vdb" bus="virtio"/>"#),
            "{xml}"
        );
        assert!(seed.contains("<readonly/>"), "{xml}");
        assert!(xml.contains(r#"<driver name="qemu" type="raw"/>"#), "{xml}");
        assert!(xml.contains(r#"<interface type="network">"#), "{xml}");
        assert!(xml.contains(r#"<source network="vmdesk"/>"#), "{xml}");
        assert!(uses_network(&xml, "vmdesk"));
        assert!(uses_network(
            "<source network='vmdesk' portid='x'/>",
            "vmdesk"
        ));
        assert!(!uses_network(&xml, "vmdesk2"));
        assert!(xml.contains(r#"<model type="virtio"/>"#), "{xml}");
        assert!(
            xml.contains(r#"<target type="virtio" name="org.qemu.guest_agent.0"/>"#),
            "{xml}"
        );
        let bridged = domain_on(
            &spec("a"),
            VirtType::Qemu,
            &devices(Some(Nic::Bridge("br0"))),
            None,
            None,
        );
        assert!(
            bridged.contains(r#"<interface type="bridge">"#),
            "{bridged}"
        );
        assert!(bridged.contains(r#"<source bridge="br0"/>"#), "{bridged}");
        let user = domain_on(
            &spec("a"),
            VirtType::Qemu,
            &devices(Some(Nic::User)),
            None,
            None,
        );
        assert!(user.contains(r#"<interface type="user">"#), "{user}");
        let none = domain_on(&spec("a"), VirtType::Qemu, &devices(None), None, None);
        assert!(!none.contains("<interface"), "{none}");
    }

    #[test]
    fn the_agent_channel_can_be_taken_out() {
        let xml = "<domain><devices><serial/><channel type='unix'>\n  <source mode='bind'/>\n  \
                   <target type='virtio' name='org.qemu.guest_agent.0'/>\n</channel><video/></devices></domain>";
        assert_eq!(
            without_agent(xml).as_deref(),
            Some("<domain><devices><serial/><video/></devices></domain>")
        );
        assert_eq!(without_agent("<domain/>"), None);
    }

    /// The XML of vmdesk's NAT network.
    #[test]
    fn the_nat_network_has_dhcp_on_its_subnet() {
        let xml = nat_network("vmdesk", "vmdesk0", 213);
        assert!(!uses_network(&xml, "vmdesk"));
        assert!(xml.contains(r#"<forward mode="nat"/>"#), "{xml}");
        assert!(xml.contains(r#"<bridge name="vmdesk0""#), "{xml}");
        assert!(
            xml.contains(r#"<ip address="192.168.213.1" netmask="255.255.255.0">"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<range start="192.168.213.10" end="192.168.213.254"/>"#),
            "{xml}"
        );
    }

    #[test]
    fn an_overlay_volume_names_its_backing_file() {
        let xml = volume("a.qcow2", 20, Some("/images/base.qcow2"));
        assert!(
            xml.contains(r#"<capacity unit="GiB">20</capacity>"#),
            "{xml}"
        );
        assert!(xml.contains("<backingStore>"), "{xml}");
        assert!(xml.contains("<path>/images/base.qcow2</path>"), "{xml}");
    }

    #[test]
    fn an_upload_target_is_a_raw_volume_of_the_files_size() {
        let xml = raw_volume("img.qcow2", 9_437_184);
        assert!(
            xml.contains(r#"<capacity unit="bytes">9437184</capacity>"#),
            "{xml}"
        );
        assert!(xml.contains(r#"<format type="raw"/>"#), "{xml}");
        assert!(!xml.contains("backingStore"), "{xml}");
    }

    #[test]
    fn vnc_listens_on_a_unix_socket_only() {
        let xml = domain(&spec("a"), VirtType::Qemu, None);
        assert!(xml.contains(r#"<listen type="socket"/>"#), "{xml}");
        assert!(!xml.contains("port="), "{xml}");
        assert!(!xml.contains("127.0.0.1"), "{xml}");
        assert!(!vnc_on_tcp(&xml), "{xml}");
    }

    #[test]
    fn a_redefinition_keeps_the_domains_uuid() {
        let uuid = "0b5b8a4e-6f1c-4a3e-9d5e-1c2b3a4d5e6f";
        let xml = domain_on(
            &spec("a"),
            VirtType::Qemu,
            &Devices::default(),
            Some(uuid),
            None,
        );
        assert!(xml.contains(&format!("<uuid>{uuid}</uuid>")), "{xml}");
        assert!(!domain(&spec("a"), VirtType::Qemu, None).contains("<uuid>"));
    }

    #[test]
    fn the_marker_names_install_and_vm() {
        let xml = domain(&spec("web"), VirtType::Kvm, None);
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

/// An attribute of an element, by local name.
fn attr(e: &quick_xml::events::BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().into_inner() == name)
        .map(|a| a.value.into_owned())
}

/// Whether a domain's XML has a VNC display that listens on a TCP port (how
/// vmdesk defined displays before they moved to a unix socket): a
/// `<graphics type='vnc'>` whose listens are not all `type='socket'`.
pub fn vnc_on_tcp(domain_xml: &str) -> bool {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(domain_xml);
    // Inside a VNC graphics element: whether it has a listen, and whether one is not a socket.
    let mut vnc: Option<(bool, bool)> = None;
    loop {
        let Ok(event) = reader.read_event() else {
            return false;
        };
        match &event {
            Event::Eof => return false,
            Event::Start(e) | Event::Empty(e) if e.local_name().into_inner() == "graphics" => {
                let is_vnc = attr(e, "type").as_deref() == Some("vnc");
                let empty = matches!(event, Event::Empty(_));
                if is_vnc && (empty || attr(e, "port").is_some() || attr(e, "listen").is_some()) {
                    return true;
                }
                if is_vnc {
                    vnc = Some((false, false));
                }
            }
            Event::Start(e) | Event::Empty(e) if e.local_name().into_inner() == "listen" => {
                if let Some((any, tcp)) = vnc.as_mut() {
                    *any = true;
                    *tcp |= attr(e, "type").as_deref() != Some("socket");
                }
            }
            Event::End(e) if e.local_name().into_inner() == "graphics" => {
                if let Some((any, tcp)) = vnc.take() {
                    if !any || tcp {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The unix socket a running domain's VNC display listens on, from its live
/// XML (`<graphics type='vnc' socket='PATH'>`, or its `<listen type='socket'
/// socket='PATH'/>`).
pub fn vnc_socket(domain_xml: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(domain_xml);
    let mut in_vnc = false;
    loop {
        match reader.read_event().ok()? {
            Event::Eof => return None,
            Event::Start(e) | Event::Empty(e) if e.local_name().into_inner() == "graphics" => {
                in_vnc = attr(&e, "type").as_deref() == Some("vnc");
                if let Some(path) = attr(&e, "socket").filter(|_| in_vnc) {
                    return Some(path);
                }
            }
            Event::Start(e) | Event::Empty(e)
                if in_vnc
                    && e.local_name().into_inner() == "listen"
                    && attr(&e, "type").as_deref() == Some("socket") =>
            {
                if let Some(path) = attr(&e, "socket") {
                    return Some(path);
                }
            }
            Event::End(e) if e.local_name().into_inner() == "graphics" => in_vnc = false,
            _ => {}
        }
    }
}

#[cfg(test)]
mod vnc_tests {
    use super::{vnc_on_tcp, vnc_socket};

    #[test]
    fn a_display_defined_on_a_tcp_port_is_found() {
        let xml =
            "<domain><devices><graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>\
                   <listen type='address' address='127.0.0.1'/></graphics></devices></domain>";
        assert!(vnc_on_tcp(xml));
    }

    #[test]
    fn the_socket_of_a_running_display_is_read_from_its_live_xml() {
        let live = "<domain><devices><graphics type='spice' socket='/x/spice.sock'/>\
            <graphics type='vnc' socket='/h/.config/libvirt/qemu/lib/domain-2-a/vnc.sock'>\
            <listen type='socket' socket='/h/.config/libvirt/qemu/lib/domain-2-a/vnc.sock'/>\
            </graphics></devices></domain>";
        assert_eq!(
            vnc_socket(live).as_deref(),
            Some("/h/.config/libvirt/qemu/lib/domain-2-a/vnc.sock")
        );
        let listen_only = "<domain><devices><graphics type='vnc'>\
            <listen type='socket' socket='/s/vnc.sock'/></graphics></devices></domain>";
        assert_eq!(vnc_socket(listen_only).as_deref(), Some("/s/vnc.sock"));
        let tcp = "<domain><devices><graphics type='vnc' port='5900'>\
            <listen type='address' address='127.0.0.1'/></graphics></devices></domain>";
        assert_eq!(vnc_socket(tcp), None);
    }

    #[test]
    fn a_display_on_a_socket_is_not_on_tcp() {
        let xml = "<domain><devices><graphics type='vnc'><listen type='socket'/></graphics>\
                   <video/></devices></domain>";
        assert!(!vnc_on_tcp(xml));
    }

    #[test]
    fn a_domain_without_a_display_is_not_on_tcp() {
        assert!(!vnc_on_tcp("<domain><devices/></domain>"));
    }
}
