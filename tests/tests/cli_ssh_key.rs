//! `vmdesk ssh-key`: each user's key pair for their VMs is made once, in the
//! data directory, private; the database never holds it.
#![allow(missing_docs)]

use std::os::unix::fs::MetadataExt;

use vmdesk_tests::Vmdesk;

fn mode(p: &str) -> u32 {
    std::fs::metadata(p).expect("the key file").mode() & 0o777
}

#[test]
fn a_users_ssh_key_is_made_once_kept_private_and_never_stored() {
    let v = Vmdesk::new();
    v.json(&["user", "add", "ann", "--credits", "0"]);
    let k = v.json(&["--as", "ann", "ssh-key"]);
    let public = k["public"].as_str().expect("public").to_owned();
    let private = k["private"].as_str().expect("private").to_owned();
    assert!(
        public.starts_with("ssh-ed25519 ") && public.ends_with(" vmdesk:ann"),
        "{public}"
    );
    assert!(
        private.starts_with(v.dir.path().to_str().expect("utf-8")),
        "{private}"
    );
    assert_eq!(mode(&private), 0o600);
    assert_eq!(
        std::fs::read_to_string(format!("{private}.pub"))
            .expect("pub")
            .trim(),
        public
    );
    // The same key again; another user has another.
    assert_eq!(
        v.json(&["--as", "ann", "ssh-key"])["public"],
        public.as_str()
    );
    assert_ne!(v.json(&["ssh-key"])["public"], public.as_str());
    // The text form is the public key line, ready for authorized_keys.
    let out = v.run(&["--as", "ann", "ssh-key"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), public);
    // Neither half of the key is in the database file or its log.
    let secret = std::fs::read_to_string(&private).expect("private key");
    let body = public.split(' ').nth(1).expect("base64");
    for f in ["vmdesk.db", "vmdesk.db-wal"] {
        let bytes = std::fs::read(v.dir.path().join(f)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("PRIVATE KEY"), "{f}");
        assert!(!text.contains(body), "{f}");
        for line in secret.lines().filter(|l| l.len() > 40) {
            assert!(!text.contains(line), "{f}");
        }
    }
}
