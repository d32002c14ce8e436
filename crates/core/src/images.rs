//! The files of the OS catalog: a qcow2 image is checked (no backing file, no
//! external data file), copied into `os/` of the data directory under a name
//! of its own with its SHA-256, and found again only inside `os/`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The directory of the data directory that holds the catalog's images.
pub(crate) const OS_DIR: &str = "os";

/// The first bytes of a qcow2 file.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Header extension: the name of an external data file.
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Incompatible feature bit: the guest data lives in an external data file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// How much of a header is read (header, its extensions and backing name fit).
const HEADER_READ: usize = 64 * 1024;

/// Why a qcow2 image cannot be a base image of the catalog, from its first
/// bytes (`None`: it can). An image that points to another file would make
/// hosts read that file (a backing file, an external data file).
pub(crate) fn qcow2_problem(head: &[u8]) -> Option<String> {
    let be32 = |at: usize| -> Option<u32> {
        head.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let be64 = |at: usize| -> Option<u64> {
        let hi = u64::from(be32(at)?);
        let lo = u64::from(be32(at + 4)?);
        Some(hi << 32 | lo)
    };
    if head.get(..4) != Some(QCOW2_MAGIC.as_slice()) {
        return Some("it is not a qcow2 image".into());
    }
    let Some(version) = be32(4) else {
        return Some("its qcow2 header is cut short".into());
    };
    if !(2..=3).contains(&version) {
        return Some(format!("it is qcow2 version {version}; 2 and 3 are known"));
    }
    let (Some(backing_offset), Some(backing_size)) = (be64(8), be32(16)) else {
        return Some("its qcow2 header is cut short".into());
    };
    if backing_offset != 0 || backing_size != 0 {
        return Some("it has a backing file; flatten it first (qemu-img convert -O qcow2)".into());
    }
    if be32(32).is_some_and(|crypt| crypt != 0) {
        return Some("it is encrypted".into());
    }
    // Version 2 headers are 72 bytes and have no feature bits.
    let mut at = 72usize;
    if version == 3 {
        let (Some(incompatible), Some(length)) = (be64(72), be32(100)) else {
            return Some("its qcow2 header is cut short".into());
        };
        if incompatible & INCOMPAT_DATA_FILE != 0 {
            return Some("its data is in an external data file".into());
        }
        at = usize::try_from(length).unwrap_or(usize::MAX);
    }
    // The header extensions: type, length, data padded to 8 bytes; type 0 ends them.
    loop {
        let (Some(kind), Some(len)) = (be32(at), be32(at + 4)) else {
            return Some("its qcow2 header extensions are cut short".into());
        };
        match kind {
            0 => return None,
            EXT_DATA_FILE => return Some("it names an external data file".into()),
            _ => {}
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        at = match at
            .checked_add(8)
            .and_then(|a| a.checked_add(len.div_ceil(8) * 8))
        {
            Some(next) => next,
            None => return Some("its qcow2 header extensions are malformed".into()),
        };
    }
}

/// A copy of an image in `os/`, checked and hashed, not yet in the catalog.
pub(crate) struct Imported {
    /// Its file name in `os/`.
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
}

/// Copies `source` into `os/` of `data_dir` under a new, unique name (a
/// temporary file first, so that two imports never share a file), hashing it,
/// and checks the copy (not the source, which may change meanwhile).
pub(crate) fn import(
    data_dir: &Path,
    name: &str,
    source: &Path,
    progress: &dyn Fn(u64, u64),
) -> Result<Imported> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::DataDir {
            path: path.clone(),
            source,
        }
    };
    let dir = data_dir.join(OS_DIR);
    std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let mut from = std::fs::File::open(source).map_err(io_at(source))?;
    let total = from.metadata().map(|m| m.len()).unwrap_or(0);
    progress(0, total);
    let mut tmp = tempfile::Builder::new()
        .prefix(".import-")
        .suffix(".part")
        .tempfile_in(&dir)
        .map_err(io_at(&dir))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf).map_err(io_at(source))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(io_at(tmp.path()))?;
        bytes += n as u64;
        progress(bytes, total.max(bytes));
    }
    tmp.flush().map_err(io_at(tmp.path()))?;
    let mut head = Vec::with_capacity(HEADER_READ);
    let f = tmp.as_file_mut();
    f.seek(SeekFrom::Start(0)).map_err(io_at(source))?;
    f.take(HEADER_READ as u64)
        .read_to_end(&mut head)
        .map_err(io_at(source))?;
    if let Some(why) = qcow2_problem(&head) {
        return Err(Error::invalid(format!(
            "{} cannot be imported: {why}",
            source.display()
        )));
    }
    let tag: String = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let file = format!("{name}-{tag}.qcow2");
    let dest = dir.join(&file);
    tmp.persist_noclobber(&dest)
        .map_err(|e| io_at(&dest)(e.error))?;
    Ok(Imported {
        file,
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// The path of a catalog image stored as `file`: a plain file name in `os/`
/// (rows of older versions say `os/NAME`). Anything else, or a file that
/// resolves outside `os/` (a symbolic link), is refused.
pub(crate) fn path_of(data_dir: &Path, os: &str, file: &str) -> Result<PathBuf> {
    let refuse = || {
        Error::invalid(format!(
            "the image of OS {os:?} is recorded as {file:?}, which is not a file in the data directory's {OS_DIR}/; import it again"
        ))
    };
    let plain = file.strip_prefix("os/").unwrap_or(file);
    let mut parts = Path::new(plain).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !plain.contains('/') => {}
        _ => return Err(refuse()),
    }
    let dir = data_dir.join(OS_DIR);
    let path = dir.join(plain);
    let (Ok(real), Ok(real_dir)) = (path.canonicalize(), dir.canonicalize()) else {
        return Err(Error::invalid(format!(
            "the image file of OS {os:?} ({}) is missing; import it again",
            path.display()
        )));
    };
    if real.parent() != Some(real_dir.as_path()) {
        return Err(refuse());
    }
    Ok(real)
}

/// The SHA-256 of a file, lower-case hex.
pub(crate) fn sha256_of(path: &Path) -> Result<String> {
    let io = |source| Error::DataDir {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(io)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 v3 header of 112 bytes, then an end-of-extensions marker.
    fn v3() -> Vec<u8> {
        let mut h = vec![0u8; 120];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    #[test]
    fn a_plain_image_has_no_problem() {
        assert_eq!(qcow2_problem(&v3()), None);
    }

    #[test]
    fn a_backing_file_is_a_problem() {
        let mut h = v3();
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
        h[16..20].copy_from_slice(&9u32.to_be_bytes());
        assert!(qcow2_problem(&h).is_some_and(|w| w.contains("backing file")));
    }

    #[test]
    fn the_external_data_file_bit_is_a_problem() {
        let mut h = v3();
        h[72..80].copy_from_slice(&INCOMPAT_DATA_FILE.to_be_bytes());
        assert!(qcow2_problem(&h).is_some_and(|w| w.contains("external data file")));
    }

    #[test]
    fn a_data_file_extension_is_a_problem() {
        let mut h = v3();
        h.truncate(112);
        h.extend_from_slice(&EXT_DATA_FILE.to_be_bytes());
        h.extend_from_slice(&4u32.to_be_bytes());
        h.extend_from_slice(b"/etc\0\0\0\0");
        h.extend_from_slice(&[0u8; 8]);
        assert!(qcow2_problem(&h).is_some_and(|w| w.contains("external data file")));
    }

    #[test]
    fn other_extensions_are_skipped() {
        let mut h = v3();
        h.truncate(112);
        h.extend_from_slice(&0x6803_f857u32.to_be_bytes());
        h.extend_from_slice(&3u32.to_be_bytes());
        h.extend_from_slice(&[1, 2, 3, 0, 0, 0, 0, 0]);
        h.extend_from_slice(&[0u8; 8]);
        assert_eq!(qcow2_problem(&h), None);
    }

    #[test]
    fn a_raw_file_is_not_qcow2() {
        assert!(qcow2_problem(b"\0\0\0\0\0\0\0\0").is_some());
    }

    #[test]
    fn a_cut_header_is_a_problem() {
        assert!(qcow2_problem(&v3()[..60]).is_some());
    }

    #[test]
    fn a_path_outside_os_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join(OS_DIR)).expect("os");
        for bad in ["/etc/passwd", "../vmdesk.db", "os/../../x", "a/b", "", "."] {
            assert!(
                path_of(dir.path(), "x", bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn a_file_in_os_is_found_by_name_and_by_its_old_form() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join(OS_DIR)).expect("os");
        std::fs::write(dir.path().join("os/a.qcow2"), b"x").expect("write");
        assert!(path_of(dir.path(), "a", "a.qcow2").is_ok());
        assert!(path_of(dir.path(), "a", "os/a.qcow2").is_ok());
    }

    #[test]
    fn a_symbolic_link_out_of_os_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join(OS_DIR)).expect("os");
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("os/a.qcow2")).expect("link");
        assert!(path_of(dir.path(), "a", "a.qcow2").is_err());
    }
}
