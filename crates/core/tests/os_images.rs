//! The OS catalog's images: only self-contained qcow2 files are imported,
//! each import copies to a file of its own, and an image is used only from
//! inside the data directory.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vmdesk_core::VmCreate;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-contained qcow2 image of 1 MiB.
fn plain(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "1M"]);
    p
}

fn files_in_os(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join("os")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn catalog(core: &vmdesk_core::Core) -> Vec<String> {
    core.os_list()
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect()
}

#[test]
fn an_image_with_a_backing_file_is_refused() {
    let (dir, _hosts, core) = with_pool(0);
    let src = tempfile::tempdir().unwrap();
    let base = plain(src.path(), "base.qcow2");
    let over = src.path().join("over.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "qcow2",
        over.to_str().unwrap(),
    ]);
    let e = core.os_import("admin", "over", &over).unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
    assert!(e.to_string().contains("backing file"), "{e}");
    assert_eq!(catalog(&core), ["blank"]);
    assert!(
        files_in_os(dir.path()).is_empty(),
        "{:?}",
        files_in_os(dir.path())
    );
}

#[test]
fn an_image_with_an_external_data_file_is_refused() {
    let (dir, _hosts, core) = with_pool(0);
    let src = tempfile::tempdir().unwrap();
    let img = src.path().join("data.qcow2");
    let data = src.path().join("data.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", data.display()),
        img.to_str().unwrap(),
        "1M",
    ]);
    let e = core.os_import("admin", "data", &img).unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
    assert!(e.to_string().contains("external data file"), "{e}");
    assert_eq!(catalog(&core), ["blank"]);
    assert!(files_in_os(dir.path()).is_empty());
}

#[test]
fn an_import_records_the_images_sha256() {
    let (dir, _hosts, core) = with_pool(0);
    let src = tempfile::tempdir().unwrap();
    let img = plain(src.path(), "a.qcow2");
    core.os_import("admin", "a", &img).unwrap();
    let out = Command::new("sha256sum").arg(&img).output().unwrap();
    let expected = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let recorded: String = db(dir.path())
        .query_row("SELECT sha256 FROM os_images WHERE name = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(recorded, expected);
}

#[test]
fn concurrent_imports_of_one_name_never_share_or_delete_a_file() {
    let (dir, _hosts, core) = with_pool(0);
    let src = tempfile::tempdir().unwrap();
    let small = plain(src.path(), "small.qcow2");
    // 8 MiB of data that does not compress, as a qcow2 image.
    let raw = src.path().join("big.raw");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&raw, data).unwrap();
    let big = src.path().join("big.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        big.to_str().unwrap(),
    ]);
    for round in 0..5 {
        let name = format!("img{round}");
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for file in [&small, &big] {
                let (core, barrier, name) = (&core, &barrier, &name);
                s.spawn(move || {
                    barrier.wait();
                    let _ = core.os_import("admin", name, file);
                });
            }
        });
        let (file, bytes): (String, i64) = db(dir.path())
            .query_row(
                "SELECT file, bytes FROM os_images WHERE name = ?1",
                [&name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let stored = dir.path().join("os").join(file.trim_start_matches("os/"));
        let on_disk = std::fs::read(&stored)
            .unwrap_or_else(|e| panic!("round {round}: {}: {e}", stored.display()));
        assert_eq!(on_disk.len() as i64, bytes, "round {round}");
        let source = if bytes == std::fs::metadata(&small).unwrap().len() as i64 {
            std::fs::read(&small).unwrap()
        } else {
            std::fs::read(&big).unwrap()
        };
        assert!(on_disk == source, "round {round}: the stored file is a mix");
    }
    let leftovers: Vec<String> = files_in_os(dir.path())
        .into_iter()
        .filter(|f| f.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_image_recorded_outside_the_data_directory_is_refused() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 1000).unwrap();
    db(dir.path())
        .execute(
            "INSERT INTO os_images (name, file, bytes, created_at)
             VALUES ('etc', '/etc/hostname', 10, 'x')",
            [],
        )
        .unwrap();
    let e = core
        .vm_create(
            "ann",
            &VmCreate {
                name: "w1".into(),
                ram_mb: 1024,
                disk_gb: 20,
                cpu_cores: 2,
                os_type: "etc".into(),
                host: None,
                start: true,
            },
            true,
            None,
        )
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM vms"), 0);
}

#[test]
fn an_image_recorded_with_dot_dot_is_refused() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 1000).unwrap();
    std::fs::create_dir_all(dir.path().join("os")).unwrap();
    db(dir.path())
        .execute(
            "INSERT INTO os_images (name, file, bytes, created_at)
             VALUES ('up', 'os/../vmdesk.db', 10, 'x')",
            [],
        )
        .unwrap();
    let e = core
        .vm_create(
            "ann",
            &VmCreate {
                name: "w1".into(),
                ram_mb: 1024,
                disk_gb: 20,
                cpu_cores: 2,
                os_type: "up".into(),
                host: None,
                start: true,
            },
            true,
            None,
        )
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
}

#[test]
fn an_import_reports_its_progress_to_the_last_byte() {
    let (_dir, _hosts, core) = with_pool(0);
    let src = tempfile::tempdir().unwrap();
    let image = src.path().join("big.qcow2");
    // Preallocated, so that the copy takes several reads.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=full",
        image.to_str().unwrap(),
        "8M",
    ]);
    let total = std::fs::metadata(&image).unwrap().len();
    let seen = std::sync::Mutex::new(Vec::new());
    let os = core
        .os_import_progress("admin", "big", &image, (None, None), &|done, all| {
            seen.lock().unwrap().push((done, all));
        })
        .unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.first(), Some(&(0, total)));
    assert_eq!(seen.last(), Some(&(total, total)));
    assert!(seen.len() > 3, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    assert_eq!(os.bytes as u64, total);
}

#[test]
fn an_unused_image_is_removed_with_its_file_and_a_used_one_is_not() {
    let (dir, _hosts, core) = with_pool(0);
    let src = tempfile::tempdir().unwrap();
    core.os_import("admin", "used", &plain(src.path(), "a.qcow2"))
        .unwrap();
    core.os_import("admin", "spare", &plain(src.path(), "b.qcow2"))
        .unwrap();
    core.user_add("admin", "ann", false, 1000).unwrap();
    core.vm_create(
        "ann",
        &VmCreate {
            name: "w1".into(),
            ram_mb: 64,
            disk_gb: 1,
            cpu_cores: 1,
            os_type: "used".into(),
            host: None,
            start: false,
        },
        true,
        None,
    )
    .unwrap();
    assert_eq!(core.os_uses("admin").unwrap().get("used"), Some(&1));

    let err = core.os_remove("admin", "used").unwrap_err();
    assert_eq!(err.to_string(), "used is used by 1 VM: remove it first");
    let err = core.os_remove("admin", "blank").unwrap_err();
    assert!(err.to_string().contains("built in"), "{err}");
    let err = core.os_remove("admin", "nope").unwrap_err();
    assert!(err.to_string().contains("no OS \"nope\""), "{err}");
    let err = core.os_remove("ann", "spare").unwrap_err();
    assert_eq!(err.code(), "admin_only");

    assert_eq!(files_in_os(dir.path()).len(), 2);
    core.os_remove("admin", "spare").unwrap();
    assert_eq!(catalog(&core), ["blank", "used"]);
    let left = files_in_os(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("used-"), "{left:?}");
    let ev = core.events("admin", 1).unwrap().remove(0);
    assert_eq!(
        (ev.action.as_str(), &ev.details["os"]),
        ("os.remove", &serde_json::json!("spare"))
    );
}
