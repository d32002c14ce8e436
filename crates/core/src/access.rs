//! SSH access to VMs, the standard way (issue 15, first part): one key pair
//! per user, kept in the data directory and never in any store, and the
//! cloud-init NoCloud seed that gives a VM the public keys of whoever may log
//! in (a small vfat disk labelled `cidata` holding `meta-data` and
//! `user-data`, which Debian, Ubuntu and Fedora cloud images read at boot).
//!
//! The key pair is made by the system's `ssh-keygen` (ed25519, no
//! passphrase: vmdesk runs `ssh` for the user), the seed by `mkfs.fat` and
//! `mcopy` (dosfstools, mtools). Each seed also fixes the VM's SSH host key
//! (cloud-init's `ssh_keys`), made for it and remembered in the user's
//! `known_hosts` under the VM's alias, so `vmdesk ssh` checks the host key
//! strictly from the first connection on.

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
    if !private.exists() {
        make_key_pair(&dir, user, &private, &public)?;
    } else if !public.exists() {
        // The public half lost: made again from the private key.
        let out = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&private)
            .output()
            .map_err(|e| {
                Error::invalid(format!("reading {user}'s SSH key needs ssh-keygen: {e}"))
            })?;
        if !out.status.success() {
            return Err(Error::invalid(format!(
                "ssh-keygen could not read {user}'s SSH key: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let tmp = dir.join(format!(".id_ed25519.pub.{}", std::process::id()));
        std::fs::write(&tmp, &out.stdout).map_err(io(&tmp))?;
        let linked = std::fs::hard_link(&tmp, &public);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&public)(e)),
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

/// Makes `user`'s key pair at `private`/`public`, safely against other
/// processes of the same user doing it at the same moment (200 `vmdesk`
/// processes of one login did, and ssh-keygen refused to overwrite): the
/// pair is made under a name of this process's own, then linked into place,
/// the public half first so that whoever finds the private key finds its
/// public one; a process that finds the public half taken uses the pair of
/// the one that won.
fn make_key_pair(dir: &Path, user: &str, private: &Path, public: &Path) -> Result<()> {
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".id_ed25519.{}.{n}", std::process::id()));
    let tmp_pub = dir.join(format!(".id_ed25519.{}.{n}.pub", std::process::id()));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("vmdesk:{user}"))
        .arg("-f")
        .arg(&tmp)
        .output()
        .map_err(|e| {
            Error::invalid(format!(
                "making {user}'s SSH key needs ssh-keygen (Debian's openssh-client): {e}"
            ))
        })?;
    let clean = || {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&tmp_pub);
    };
    if !out.status.success() {
        clean();
        return Err(Error::invalid(format!(
            "ssh-keygen could not make {user}'s SSH key: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let won = match std::fs::hard_link(&tmp_pub, public) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            clean();
            return Err(io(public)(e));
        }
    };
    if won {
        let linked = std::fs::hard_link(&tmp, private);
        clean();
        return match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io(private)(e)),
        };
    }
    clean();
    // Another process's pair: its private half follows its public one.
    for _ in 0..100 {
        if private.exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(Error::invalid(format!(
        "{user}'s SSH key is half made ({} has no private key beside it): remove it and try again",
        public.display()
    )))
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

/// An SSH host key pair for a VM, made for its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// The private key, OpenSSH's format (what cloud-init's `ssh_keys` takes).
    pub private: String,
    /// The public key line.
    pub public: String,
}

impl HostKey {
    /// A new ed25519 host key (the system's `ssh-keygen`).
    pub fn new(comment: &str) -> Result<Self> {
        let dir = tempfile::tempdir()
            .map_err(|e| Error::invalid(format!("a temporary directory: {e}")))?;
        let path = dir.path().join("host_ed25519");
        run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(&path),
            "ssh-keygen (Debian's openssh-client)",
        )?;
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io(p));
        let pub_path = path.with_extension("pub");
        Ok(Self {
            private: read(&path)?,
            public: read(&pub_path)?.trim().to_owned(),
        })
    }
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
    /// The SSH host key the VM takes (none: it makes its own).
    pub host_key: Option<HostKey>,
    /// Whether keys that an earlier instance let in are removed first (a
    /// pool VM lent to the next user).
    pub revoke: bool,
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
            host_key: None,
            revoke: false,
        })
    }

    /// `meta-data` (YAML).
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            self.instance_id, self.hostname
        )
    }

    /// `user-data` (`#cloud-config`; each key a quoted YAML string). Root
    /// gets the keys as well as the image's default user (`disable_root:
    /// false`), so that `root@` works on every image.
    pub fn user_data(&self) -> String {
        let mut s = format!(
            "#cloud-config\nhostname: {}\ndisable_root: false\nssh_authorized_keys:\n",
            self.hostname
        );
        for k in &self.keys {
            // JSON strings are YAML strings; the key was checked to be one line.
            s.push_str(&format!("  - {}\n", serde_json::Value::String(k.clone())));
        }
        if let Some(h) = &self.host_key {
            s.push_str("ssh_deletekeys: true\nssh_keys:\n  ed25519_private: |\n");
            for line in h.private.lines() {
                s.push_str(&format!("    {line}\n"));
            }
            s.push_str(&format!(
                "  ed25519_public: {}\n",
                serde_json::Value::String(h.public.clone())
            ));
        }
        if self.revoke {
            // Once per instance, before cloud-init writes this instance's
            // keys: the keys earlier instances let in are removed.
            s.push_str(
                "bootcmd:\n  - [cloud-init-per, instance, vmdesk-revoke-keys, sh, -c, \
                 \"rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys\"]\n",
            );
        }
        s
    }

    /// The seed as the bytes of its vfat disk ([`Seed::write_vfat`]).
    pub fn vfat(&self) -> Result<Vec<u8>> {
        let dir = tempfile::tempdir()
            .map_err(|e| Error::invalid(format!("a temporary directory: {e}")))?;
        let path = dir.path().join("seed.img");
        self.write_vfat(&path)?;
        std::fs::read(&path).map_err(io(&path))
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

/// Remembers `public` as the host key of `alias` in `user`'s `known_hosts`
/// in `data_dir` (`ssh/USER/known_hosts`, 0600), replacing what it said of
/// that alias before. Returns the file.
pub fn remember_host_key(
    data_dir: &Path,
    user: &str,
    alias: &str,
    public: &str,
) -> Result<PathBuf> {
    validate::name("user", user)?;
    public_key(public)?;
    let dir = data_dir.join("ssh").join(user);
    private_dir(&data_dir.join("ssh"))?;
    private_dir(&dir)?;
    let file = dir.join("known_hosts");
    let old = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(&file)(e)),
    };
    let key: Vec<&str> = public.split(' ').take(2).collect();
    let mut text: String = old
        .lines()
        .filter(|l| l.split(' ').next() != Some(alias))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{alias} {}\n", key.join(" ")));
    let tmp = dir.join(".known_hosts.new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &file).map_err(io(&file))?;
    Ok(file)
}

/// Whether `user`'s `known_hosts` in `data_dir` holds a key for `alias`.
pub fn knows_host(data_dir: &Path, user: &str, alias: &str) -> bool {
    std::fs::read_to_string(data_dir.join("ssh").join(user).join("known_hosts"))
        .is_ok_and(|t| t.lines().any(|l| l.split(' ').next() == Some(alias)))
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
    fn processes_making_the_same_key_at_once_get_one_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys: Vec<UserKey> = std::thread::scope(|s| {
            let all: Vec<_> = (0..8)
                .map(|_| s.spawn(|| user_key(dir.path(), "ann").expect("a key")))
                .collect();
            all.into_iter().map(|t| t.join().expect("joined")).collect()
        });
        assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("ssh/ann"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("name"))
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(
            left,
            ["id_ed25519", "id_ed25519.pub"],
            "no temporary files left"
        );
        // The public half lost is made again from the private one.
        std::fs::remove_file(dir.path().join("ssh/ann/id_ed25519.pub")).expect("rm");
        assert_eq!(user_key(dir.path(), "ann").expect("a key"), keys[0]);
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
            "#cloud-config\nhostname: lab-3\ndisable_root: false\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3Nz vmdesk:ann\"\n"
        );
        // A key with a line break cannot add YAML of its own.
        assert!(Seed::new("a", 1, vec!["ssh-ed25519 AAAA\nruncmd: [x]".into()]).is_err());
        assert!(Seed::new("12", 1, vec![]).is_err(), "not a VM name");
    }

    #[test]
    fn the_seed_fixes_the_host_key_and_a_pool_seed_revokes_earlier_keys() {
        let mut s = Seed::new("lab-3", 9, vec!["ssh-ed25519 AAAAC3Nz vmdesk:bob".into()]).unwrap();
        s.host_key = Some(HostKey::new("lab-3").unwrap());
        s.revoke = true;
        let u = s.user_data();
        let h = s.host_key.as_ref().unwrap();
        assert!(
            h.private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
            "{}",
            h.private
        );
        assert!(
            u.contains(
                "ssh_keys:\n  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n"
            ),
            "{u}"
        );
        assert!(
            u.contains(&format!("  ed25519_public: \"{}\"\n", h.public)),
            "{u}"
        );
        assert!(
            u.contains("cloud-init-per, instance, vmdesk-revoke-keys"),
            "{u}"
        );
        // Each line of the key indented under the block, none left bare.
        let block: Vec<&str> = u
            .lines()
            .skip_while(|l| !l.contains("ed25519_private"))
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .collect();
        assert_eq!(block.len(), h.private.lines().count(), "{u}");
    }

    #[test]
    fn a_host_key_is_remembered_once_per_alias() {
        let d = tempfile::tempdir().unwrap();
        let a = HostKey::new("a").unwrap();
        let b = HostKey::new("b").unwrap();
        let f = remember_host_key(d.path(), "ann", "vmdesk-vm-1", &a.public).unwrap();
        remember_host_key(d.path(), "ann", "vmdesk-vm-2", &a.public).unwrap();
        remember_host_key(d.path(), "ann", "vmdesk-vm-1", &b.public).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        let b_key: Vec<&str> = b.public.split(' ').take(2).collect();
        assert!(
            text.contains(&format!("vmdesk-vm-1 {}\n", b_key.join(" "))),
            "{text}"
        );
        assert_eq!(mode(&f), 0o600);
        assert!(knows_host(d.path(), "ann", "vmdesk-vm-2"));
        assert!(!knows_host(d.path(), "ann", "vmdesk-vm-3"));
        assert!(!knows_host(d.path(), "bob", "vmdesk-vm-1"));
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
