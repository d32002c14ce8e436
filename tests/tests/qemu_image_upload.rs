//! An OS image reaches a host whole or not at all: an upload that was cut
//! short leaves nothing that a later VM would use as its base.
#![allow(missing_docs)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmdesk_tests::{
    has_shell, serial_until_shell, tiny_linux, virsh, Machine, PoolVolumes, Vmdesk,
};

/// Puts on the host a volume holding only the first MiB of the image, as a
/// process killed after the first chunk of its upload leaves it.
fn partial_volume(name: &str, image: &Path) {
    let bytes = std::fs::metadata(image).expect("image").len();
    let dir = tempfile::tempdir().expect("dir");
    let xml = dir.path().join("vol.xml");
    std::fs::write(
        &xml,
        format!(
            "<volume><name>{name}</name><capacity unit='bytes'>{bytes}</capacity>\
             <target><format type='raw'/></target></volume>"
        ),
    )
    .expect("xml");
    let chunk = dir.path().join("chunk");
    let head: Vec<u8> = std::fs::read(image).expect("image")[..1 << 20].to_vec();
    std::fs::write(&chunk, head).expect("chunk");
    virsh(&["vol-create", "vmdesk", xml.to_str().expect("utf-8")]);
    virsh(&[
        "vol-upload",
        "--pool",
        "vmdesk",
        name,
        chunk.to_str().expect("utf-8"),
    ]);
    assert!(
        !virsh(&["vol-path", "--pool", "vmdesk", name]).is_empty(),
        "the partial volume {name} was not made"
    );
}

/// Creates a tiny-linux VM and waits for its shell on the serial console.
fn create_and_boot(v: &Vmdesk, name: &str) -> (Machine, String) {
    let vm = v.json(&[
        "--as",
        "ann",
        "vm",
        "create",
        name,
        "--os",
        "tiny-linux",
        "--ram-mb",
        "128",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    let machine = vm["provider_id"].as_str().expect("machine").to_owned();
    let guard = Machine(machine.clone());
    assert_eq!(vm["status"], "RUNNING", "{vm}");
    let log = format!("/var/log/libvirt/qemu/{machine}-serial.log");
    let console = serial_until_shell(Path::new(&log), Duration::from_secs(90));
    (guard, console)
}

fn identical(a: &str, b: &Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", a])
        .arg(b)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_partial_upload_on_the_host_is_not_used_as_a_base_image() {
    let image = tiny_linux();
    assert!(
        image.exists(),
        "{} is missing: run make os-image",
        image.display()
    );
    let v = Vmdesk::new();
    v.qemu_and_ann(1000);
    v.json(&["os", "import", "tiny-linux", image.to_str().expect("utf-8")]);
    let volumes = PoolVolumes(format!("vmdesk-os-tiny-linux-{}", v.install_tag()));
    // What a process killed after the first chunk left: a volume under the
    // image's name (as versions that uploaded in place left it) and a
    // temporary upload.
    partial_volume(&format!("{}.qcow2", volumes.0), &image);
    partial_volume(&format!("{}-0.upload-dead", volumes.0), &image);

    let (_vm, console) = create_and_boot(&v, "linux");
    assert!(
        has_shell(&console),
        "no shell on the serial console: {console}"
    );
}

#[test]
fn an_upload_killed_midway_leaves_no_image_volume_and_the_next_creation_boots() {
    let image = tiny_linux();
    assert!(
        image.exists(),
        "{} is missing: run make os-image",
        image.display()
    );
    let v = Vmdesk::new();
    v.qemu_and_ann(1000);
    v.json(&["os", "import", "tiny-linux", image.to_str().expect("utf-8")]);
    let volumes = PoolVolumes(format!("vmdesk-os-tiny-linux-{}", v.install_tag()));

    // Kill `vm create` as soon as an image volume appears on the host.
    let mut child = v
        .command(&[
            "--as",
            "ann",
            "vm",
            "create",
            "cut",
            "--os",
            "tiny-linux",
            "--ram-mb",
            "128",
            "--disk-gb",
            "1",
            "--cpus",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmdesk");
    let pool = Path::new("/var/lib/libvirt/images/vmdesk");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let seen = std::fs::read_dir(pool)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&volumes.0));
        if seen || child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    let cut = v.json(&["vm", "show", "cut"]);
    let _cut = Machine(cut["provider_id"].as_str().unwrap_or_default().to_owned());

    // Any image volume (not a temporary upload) is the whole image.
    for vol in volumes.names() {
        if !vol.contains(".upload-") {
            assert!(
                identical(&volumes.path(&vol), &image),
                "{vol} is on the host but is not the image"
            );
        }
    }
    let (_vm, console) = create_and_boot(&v, "linux");
    assert!(
        has_shell(&console),
        "no shell on the serial console: {console}"
    );
}
