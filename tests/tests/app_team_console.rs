//! A console on a team store, end to end: the admin's desk adds a pool VM
//! on the real QEMU host through the team store, ann's desk opens a session
//! on it (her process starts the machine), and her window shows the VM's
//! screen through her desk's own console port (ports are each desk's: the
//! team store keys them by desk). Under Xvfb, through WebDriver; the
//! screenshot is kept in target/artifacts/.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use vmdesk_postgres::testing::Store;
use vmdesk_tests::{e2e, qemu_uri, Machine, Vmdesk};

#[test]
fn anns_desk_shows_her_team_sessions_screen() {
    let store = Store::new();
    let (ann, ann_pw) = store.user("ann", false);
    store
        .admin()
        .execute("SELECT vmdesk.credits_grant($1, 100000, 'lab')", &[&ann])
        .unwrap();
    let admin_url = store.url(&store.admin, Some(&store.admin_pw));
    let ann_url = store.url(&ann, Some(&ann_pw));
    let (admin_desk, ann_desk) = (Vmdesk::new(), Vmdesk::new());
    let on = |url: &str, args: &[&str]| -> Vec<String> {
        let mut all = vec!["--store".to_owned(), url.to_owned()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all
    };
    let run = |desk: &Vmdesk, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        desk.json(&args)
    };
    run(
        &admin_desk,
        on(&admin_url, &["host", "add", "qemu", "--uri", &qemu_uri()]),
    );
    run(&admin_desk, on(&admin_url, &["project", "create", "lab"]));
    let vm = run(
        &admin_desk,
        on(
            &admin_url,
            &[
                "vm",
                "add",
                "tc1",
                "--pool",
                "lab",
                "--host",
                "qemu",
                "--ram-mb",
                "64",
                "--disk-gb",
                "1",
                "--cpus",
                "1",
            ],
        ),
    );
    let _machine = Machine(vm["provider_id"].as_str().expect("machine").to_owned());
    // ann's desk starts the machine for her session.
    let s = run(
        &ann_desk,
        on(&ann_url, &["session", "open", "--project", "lab"]),
    );
    assert_eq!(s["status"], "ACTIVE", "{s}");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&ann_desk, &["--store", &ann_url], 0, "team-console").await;
        app.nav("pools").await;
        app.open_console("tc1").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (w, h, lit) = app.console_lit().await;
        assert!(w > 0 && h > 0, "no canvas size: {w}x{h}");
        app.shot("connected").await;
        assert!(lit > 100, "the console canvas is blank ({lit} lit pixels)");
        app.close().await;
    });
    // The console's row was the store's, keyed by ann's desk; gone once closed.
    let open: i64 = store
        .superuser()
        .query_one("SELECT count(*) FROM vmdesk.consoles", &[])
        .unwrap()
        .get(0);
    assert!(open <= 1, "{open} consoles left open");
    let opened: i64 = store
        .superuser()
        .query_one(
            "SELECT count(*) FROM vmdesk.events WHERE action = 'console.open' AND actor = $1",
            &[&ann],
        )
        .unwrap()
        .get(0);
    assert_eq!(opened, 1);
    run(
        &ann_desk,
        on(&ann_url, &["session", "close", &s["id"].to_string()]),
    );
}
