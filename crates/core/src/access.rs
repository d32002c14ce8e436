//! SSH access to VMs, the standard way (issue 15, first part): one key pair
//! per user, kept in the data directory and never in any store, and the
//! cloud-init NoCloud seed that gives a VM the public keys of whoever may log
//! in (a small vfat disk labelled `cidata` holding `meta-data` and
//! `user-data`, which Debian, Ubuntu and Fedora cloud images read at boot).
//!
//! The key pair is made by the system's `ssh-keygen` (ed25519, no
//! passphrase: vmdesk runs `ssh` for the user), the seed by `mkfs.fat` and
//! `mcopy` (dosfstools, mtools). Wiring them into VM definitions and the
//! `vmdesk ssh` command is still to come.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::validate;

/// A user's key pair for their VMs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserKey {
    /// The private key (mode 0600, in a 0700 directory).
    pub private: PathBuf,
    /// The public key, one `ssh-ed25519 … comment` line.
    pub public: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::DataDir {
        path: path.to_owned(),
        source,
    }
}

/// Makes a directory (and its parents) with mode 0700, or tightens an
/// existing one to it.
fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// `user`'s key pair in `data_dir` (`ssh/USER/id_ed25519` and `.pub`),
/// made on first use. A private key that others may read is tightened to
/// 0600 before it is used.
pub fn user_key(data_dir: &Path, user: &str) -> Result<UserKey> {
    validate::name("user", user)?;
    let dir = data_dir.join("ssh").join(user);
    private_dir(&data_dir.join("ssh"))?;
    private_dir(&dir)?;
    let private = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    if !private.exists() || !public.exists() {
        let _ = std::fs::remove_file(&private);
        let _ = std::fs::remove_file(&public);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("vmdesk:{user}"))
            .arg("-f")
            .arg(&private)
            .output()
            .map_err(|e| {
                Error::invalid(format!(
                    "making {user}'s SSH key needs ssh-keygen (Debian's openssh-client): {e}"
                ))
            })?;
        if !out.status.success() {
            return Err(Error::invalid(format!(
                "ssh-keygen could not make {user}'s SSH key: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))
        .map_err(io(&private))?;
    let line = std::fs::read_to_string(&public).map_err(io(&public))?;
    let line = line.trim().to_owned();
    public_key(&line)?;
    Ok(UserKey {
        private,
        public: line,
    })
}

/// Checks an OpenSSH public key line: a key type, base64, and an optional
/// comment, on one line (what goes into a seed is never more than keys).
pub fn public_key(line: &str) -> Result<()> {
    let bad = |why: &str| Error::invalid(format!("{line:?} is not an SSH public key: {why}"));
    if line.len() > 16 * 1024 || line.chars().any(|c| c.is_control()) {
        return Err(bad("it must be one line of printable characters"));
    }
    let mut parts = line.split(' ');
    let kind = parts.next().unwrap_or("");
    if !matches!(
        kind,
        "ssh-ed25519"
            | "ssh-rsa"
            | "ecdsa-sha2-nistp256"
            | "ecdsa-sha2-nistp384"
            | "ecdsa-sha2-nistp521"
            | "sk-ssh-ed25519@openssh.com"
            | "sk-ecdsa-sha2-nistp256@openssh.com"
    ) {
        return Err(bad("unknown key type"));
    }
    let body = parts.next().unwrap_or("");
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return Err(bad("its key is not base64"));
    }
    Ok(())
}

/// A NoCloud seed: who the VM is and whose keys it lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Changes whenever the keys change (cloud-init then applies them again).
    pub instance_id: String,
    /// The guest's host name (the VM's name).
    pub hostname: String,
    /// The public keys allowed in.
    pub keys: Vec<String>,
}

impl Seed {
    /// A seed for VM `vm`, letting in `keys`; `generation` tells seeds of
    /// the same VM apart (a pool VM's seed is rewritten for each session).
    pub fn new(vm: &str, generation: u64, keys: Vec<String>) -> Result<Self> {
        validate::vm_name(vm)?;
        for k in &keys {
            public_key(k)?;
        }
        Ok(Self {
            instance_id: format!("vmdesk-{vm}-{generation}"),
            hostname: vm.to_ascii_lowercase(),
            keys,
        })
    }

    /// `meta-data` (YAML).
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            self.instance_id, self.hostname
        )
    }

    /// `user-data` (`#cloud-config`; each key a quoted YAML string).
    pub fn user_data(&self) -> String {
        let mut s = format!(
            "#cloud-config\nhostname: {}\nssh_authorized_keys:\n",
            self.hostname
        );
        for k in &self.keys {
            // JSON strings are YAML strings; the key was checked to be one line.
            s.push_str(&format!("  - {}\n", serde_json::Value::String(k.clone())));
        }
        s
    }

    /// Writes the seed as a 1 MiB vfat disk image labelled `cidata` at
    /// `path` (mode 0600), through a new file that replaces `path`.
    pub fn write_vfat(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let work = tempfile::Builder::new()
            .prefix(".seed-")
            .tempdir_in(dir)
            .map_err(io(dir))?;
        for (name, text) in [
            ("meta-data", self.meta_data()),
            ("user-data", self.user_data()),
        ] {
            let p = work.path().join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .map_err(io(&p))?;
            f.write_all(text.as_bytes()).map_err(io(&p))?;
        }
        let image = work.path().join("seed.img");
        run(
            Command::new("mkfs.fat")
                .args(["-n", "CIDATA", "-C"])
                .arg(&image)
                .arg("1024"),
            "mkfs.fat (Debian's dosfstools)",
        )?;
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&image))?;
        run(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&image)
                .arg(work.path().join("meta-data"))
                .arg(work.path().join("user-data"))
                .arg("::"),
            "mcopy (Debian's mtools)",
        )?;
        std::fs::rename(&image, path).map_err(io(path))
    }
}

fn run(c: &mut Command, what: &str) -> Result<()> {
    let out = c
        .output()
        .map_err(|e| Error::invalid(format!("making a cloud-init seed needs {what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} failed making a cloud-init seed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn a_users_key_is_made_once_and_kept_private() {
        let d = tempfile::tempdir().unwrap();
        let k = user_key(d.path(), "ann").unwrap();
        assert!(k.public.starts_with("ssh-ed25519 "), "{}", k.public);
        assert!(k.public.ends_with(" vmdesk:ann"), "{}", k.public);
        assert_eq!(mode(&k.private), 0o600);
        assert_eq!(mode(k.private.parent().unwrap()), 0o700);
        assert_eq!(mode(&d.path().join("ssh")), 0o700);
        // The same key the second time; a loosened mode is tightened.
        std::fs::set_permissions(&k.private, std::fs::Permissions::from_mode(0o644)).unwrap();
        let again = user_key(d.path(), "ann").unwrap();
        assert_eq!(again, k);
        assert_eq!(mode(&k.private), 0o600);
        // Another user gets another key.
        assert_ne!(user_key(d.path(), "bob").unwrap().public, k.public);
        // A name that is not a user name never becomes a path.
        assert!(user_key(d.path(), "../x").is_err());
    }

    #[test]
    fn public_keys_are_one_line_of_a_known_type() {
        public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3 vmdesk:ann").unwrap();
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-dss AAAA",
            "ssh-ed25519 AAAA\nssh-ed25519 BBBB",
            "ssh-ed25519 AA$A",
            "ssh-ed25519 AAAA x\r",
        ] {
            assert!(public_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_seed_says_who_the_vm_is_and_whose_keys_it_lets_in() {
        let s = Seed::new("Lab-3", 7, vec!["ssh-ed25519 AAAAC3Nz vmdesk:ann".into()]).unwrap();
        assert_eq!(
            s.meta_data(),
            "instance-id: vmdesk-Lab-3-7\nlocal-hostname: lab-3\n"
        );
        assert_eq!(
            s.user_data(),
            "#cloud-config\nhostname: lab-3\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3Nz vmdesk:ann\"\n"
        );
        // A key with a line break cannot add YAML of its own.
        assert!(Seed::new("a", 1, vec!["ssh-ed25519 AAAA\nruncmd: [x]".into()]).is_err());
        assert!(Seed::new("12", 1, vec![]).is_err(), "not a VM name");
    }

    #[test]
    fn the_seed_disk_is_a_private_vfat_image_labelled_cidata() {
        let d = tempfile::tempdir().unwrap();
        let s = Seed::new("web-1", 1, vec!["ssh-ed25519 AAAAC3Nz vmdesk:ann".into()]).unwrap();
        let img = d.path().join("web-1.seed.img");
        s.write_vfat(&img).unwrap();
        assert_eq!(mode(&img), 0o600);
        let read = |args: &[&str]| {
            let out = Command::new(args[0])
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(&args[1..])
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let path = img.to_str().unwrap();
        assert_eq!(read(&["mtype", "-i", path, "::user-data"]), s.user_data());
        assert_eq!(read(&["mtype", "-i", path, "::meta-data"]), s.meta_data());
        assert!(read(&["mlabel", "-s", "-i", path, "::"]).contains("CIDATA"));
        // Only the image is left beside it.
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}
