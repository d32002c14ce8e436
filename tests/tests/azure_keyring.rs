//! The Azure service principal's secret lives in the OS keyring (a GNOME
//! keyring on a private session bus here), never in the settings file or the
//! database.
#![allow(missing_docs)]

use std::io::Write;
use std::process::Stdio;

use vmdesk_tests::arm::{ArmServer, Power};
use vmdesk_tests::{SessionKeyring, Vmdesk};

const SUB: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

fn login(v: &Vmdesk, server: &ArmServer, secret: &str) -> std::process::Output {
    // The test server speaks http.
    v.write_settings("[azure]\nallow_insecure_endpoints = true\n");
    let c = server.config();
    let mut child = v
        .command(&[
            "azure",
            "login",
            "--tenant",
            &c.tenant,
            "--client-id",
            &c.client_id,
            "--authority-host",
            &server.url(),
            "--endpoint",
            &server.url(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmdesk azure login");
    writeln!(child.stdin.take().expect("stdin"), "{secret}").expect("write the secret");
    child.wait_with_output().expect("login ends")
}

fn file_holds(path: &std::path::Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn a_kept_secret_is_in_the_keyring_only_and_reaches_azure() {
    let keyring = SessionKeyring::start();
    let server = ArmServer::start();
    server.add_vm(SUB, "lab-rg", "web01", "Standard_B1s", Power::Running);
    let mut v = Vmdesk::new();
    v.env = keyring.env();
    let secret = server.config().client_secret.clone();

    let out = login(&v, &server, &secret);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No AZURE_* variables: the credential comes from settings + keyring.
    v.json(&["host", "add", "az", "--azure-subscription", SUB]);
    v.json(&["project", "create", "lab"]);
    let r = v.json(&["host", "import", "az", "--project", "lab"]);
    assert_eq!(r["imported"][0]["name"], "web01");
    let settings = v.settings_path();
    assert!(file_holds(&settings, &server.config().client_id));
    for f in [settings, v.dir.path().join("vmdesk.db")] {
        assert!(!file_holds(&f, &secret), "{} holds the secret", f.display());
    }

    // Forgotten: Azure hosts cannot be reached and the error says what to do.
    let out = v.run(&["azure", "logout"]);
    assert!(out.status.success());
    let err = v.fails(&["host", "add", "az2", "--azure-subscription", SUB]);
    assert!(
        err.contains("no Azure credentials") && err.contains("vmdesk azure login"),
        "{err}"
    );
}

#[test]
fn a_wrong_secret_is_refused_and_nothing_is_kept() {
    let keyring = SessionKeyring::start();
    let server = ArmServer::start();
    let mut v = Vmdesk::new();
    v.env = keyring.env();

    let out = login(&v, &server, "not-the-secret");

    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no token was granted"), "{err}");
    let settings = std::fs::read_to_string(v.settings_path()).expect("settings");
    assert_eq!(
        settings, "[azure]\nallow_insecure_endpoints = true\n",
        "the settings were written"
    );
}
