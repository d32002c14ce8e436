//! A lab admin's corrections and look-ups from the command line (issue 16):
//! `credits adjust`, `credits refund` of a creation the real QEMU host
//! refused, `user role`, and the event filters with `--follow`.
#![allow(missing_docs)]

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use vmdesk_tests::Vmdesk;

fn balance(v: &Vmdesk, user: &str) -> i64 {
    v.json(&["credits", "show", user])["balance"]
        .as_i64()
        .expect("balance")
}

#[test]
fn a_failed_creation_is_refunded_once_and_adjustments_never_go_below_zero() {
    let v = Vmdesk::new();
    v.qemu_and_ann(3000);
    // The host refuses it: FAILED_TO_START, its charge taken.
    let (vm, _cleanup, cost) = v.failed_creation("wide");
    assert_eq!(balance(&v, "ann"), 3000 - cost);
    // Status sync leaves it FAILED_TO_START: the host never made its
    // machine, so it is not UNKNOWN ("the host no longer knows this VM").
    v.json(&["sync", "--once"]);
    assert_eq!(v.json(&["vm", "show", "wide"])["status"], "FAILED_TO_START");

    // ann cannot refund herself.
    let err = v.fails(&[
        "--as", "ann", "credits", "refund", "wide", "--reason", "mine",
    ]);
    assert!(
        err.contains("only an administrator may refund credits"),
        "{err}"
    );

    let entry = v.json(&[
        "credits",
        "refund",
        "wide",
        "--reason",
        "the host refused it",
    ]);
    assert_eq!(entry["kind"], "refund");
    assert_eq!(entry["amount"].as_i64(), Some(cost));
    assert_eq!(entry["vm_id"], vm["id"]);
    assert_eq!(balance(&v, "ann"), 3000);
    let shown = v.json(&["vm", "show", "wide"]);
    assert_eq!(shown["metadata"]["refunded"], entry["id"], "{shown}");

    // Once only: the second is refused and changes nothing.
    let err = v.fails(&["credits", "refund", "wide", "--reason", "again"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "the creation charge of VM \"wide\" cannot be refunded: it was refunded already"
        ),
        "{err}"
    );
    assert_eq!(balance(&v, "ann"), 3000);
    assert_eq!(
        v.count("SELECT count(*) FROM ledger WHERE kind = 'refund'"),
        1
    );

    // A VM that did not fail is not refunded.
    v.json(&["credits", "grant", "admin", "1000", "--reason", "tests"]);
    let err = v.fails(&["credits", "refund", "nosuch", "--reason", "x"]);
    assert!(err.contains("no VM named \"nosuch\""), "{err}");

    // Adjustments: either way, never below zero, with a reason.
    let s = v.json(&[
        "credits",
        "adjust",
        "ann",
        "-100",
        "--reason",
        "a double grant",
    ]);
    assert_eq!(s["balance"].as_i64(), Some(2900));
    assert_eq!(
        s["entries"]
            .as_array()
            .expect("entries")
            .last()
            .expect("entry")["kind"],
        "adjustment"
    );
    let text = v.run(&["credits", "adjust", "ann", "+25", "--reason", "goodwill"]);
    assert!(text.status.success());
    assert_eq!(
        String::from_utf8_lossy(&text.stdout).trim(),
        "adjusted the credits of ann by +25; balance 2925"
    );
    let before = v.snapshot();
    let err = v.fails(&["credits", "adjust", "ann", "-5000", "--reason", "too much"]);
    assert!(
        err.contains(
            "an adjustment of -5000 would take the balance of \"ann\" below zero: it is 2925"
        ),
        "{err}"
    );
    let err = v.fails(&["credits", "adjust", "ann", "0", "--reason", "nothing"]);
    assert!(
        err.contains("an adjustment of 0 credits changes nothing"),
        "{err}"
    );
    let err = v.fails(&["credits", "adjust", "ann", "5", "--reason", " "]);
    assert!(err.contains("the reason is empty"), "{err}");
    let err = v.fails(&[
        "--as", "ann", "credits", "adjust", "ann", "5", "--reason", "me",
    ]);
    assert!(
        err.contains("only an administrator may adjust credits"),
        "{err}"
    );
    assert_eq!(v.snapshot(), before, "a refused adjustment changed nothing");

    // Each correction is an event, found by the filters.
    let refunds = v.json(&["events", "--type", "billing", "--user", "ann"]);
    let refund = refunds
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["action"] == "credits.refund")
        .expect("a credits.refund event");
    assert_eq!(refund["details"]["vm"], "wide");
    assert_eq!(refund["details"]["amount"].as_i64(), Some(cost));
    let adjusts = v.json(&["events", "--type", "admin", "--user", "ann"]);
    let actions: Vec<&str> = adjusts
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "credits.adjust").count(),
        2,
        "{actions:?}"
    );
}

#[test]
fn roles_change_from_the_command_line_and_the_last_admin_stays() {
    let v = Vmdesk::new();
    v.json(&["user", "add", "bob"]);
    let err = v.fails(&["--as", "bob", "user", "list"]);
    assert!(err.contains("only an administrator"), "{err}");
    let u = v.json(&["user", "role", "bob", "admin"]);
    assert_eq!(u["role"], "admin");
    assert!(v.run(&["--as", "bob", "user", "list"]).status.success());
    let out = v.run(&["--as", "bob", "user", "role", "bob", "user"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "bob is now user"
    );
    let err = v.fails(&["user", "role", "admin", "user"]);
    assert!(err.contains("admin"), "{err}");
    assert_eq!(
        v.json(&["user", "list"])
            .as_array()
            .expect("users")
            .iter()
            .find(|u| u["name"] == "admin")
            .expect("admin")["role"],
        "admin"
    );
    let err = v.fails(&["user", "role", "bob", "root"]);
    assert!(err.contains("root"), "{err}");
    let err = v.fails(&["--as", "bob", "user", "role", "bob", "admin"]);
    assert!(
        err.contains("only an administrator may change roles"),
        "{err}"
    );
}

#[test]
fn events_filter_by_type_severity_user_and_time_and_follow_new_ones() {
    let v = Vmdesk::new();
    v.json(&["user", "add", "ann", "--credits", "10"]);
    v.json(&["user", "add", "bob", "--credits", "20"]);
    v.json(&["credits", "grant", "bob", "5", "--reason", "bob's"]);

    let names = |e: &Value| -> Vec<String> {
        e.as_array()
            .expect("events")
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["action"].as_str().unwrap_or(""),
                    e["details"]["user"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let anns = names(&v.json(&["events", "--user", "ann"]));
    assert!(anns.iter().all(|a| a.ends_with(" ann")), "{anns:?}");
    assert!(
        anns.iter().any(|a| a.starts_with("credits.grant")),
        "{anns:?}"
    );
    // ann sees her own, not bob's; asking for bob's is refused.
    assert_eq!(
        names(&v.json(&["--as", "ann", "events", "--user", "ann"])),
        anns
    );
    let err = v.fails(&["--as", "ann", "events", "--user", "bob"]);
    assert!(
        err.contains("only an administrator may see another user's events"),
        "{err}"
    );
    let err = v.fails(&["events", "--user", "nobody"]);
    assert!(err.contains("no user named \"nobody\""), "{err}");

    // Time: a while ago, an RFC 3339 instant, and a mistake.
    assert!(!names(&v.json(&["events", "--since", "1h"])).is_empty());
    assert!(names(&v.json(&["events", "--since", "2999-01-01T00:00:00Z"])).is_empty());
    let err = v.fails(&["events", "--since", "yesterday"]);
    assert!(err.contains("\"yesterday\" is not a time"), "{err}");
    let err = v.fails(&["events", "--type", "vm,bogus"]);
    assert!(
        err.contains("unknown event type \"bogus\": one of vm, session, billing, system, admin"),
        "{err}"
    );
    assert!(names(&v.json(&["events", "--severity", "critical"])).is_empty());
    let admin = v.json(&["events", "--type", "admin", "--severity", "info"]);
    let admin = admin.as_array().expect("events");
    assert!(admin.len() >= 5, "{admin:?}");
    assert!(
        admin
            .iter()
            .all(|e| e["type"] == "admin" && e["severity"] == "info"),
        "{admin:?}"
    );

    // --follow: what matches now, oldest first, then each new event.
    let mut child = v
        .command(&[
            "--json", "events", "--follow", "--user", "bob", "--type", "admin",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("follow");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("line")).is_err() {
                break;
            }
        }
    });
    let next = || -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("an event line");
        serde_json::from_str(&line).expect("one JSON object a line")
    };
    let first = next();
    assert_eq!(first["action"], "user.add", "{first}");
    assert_eq!(next()["details"]["reason"], "opening balance");
    assert_eq!(next()["details"]["reason"], "bob's");
    v.json(&["credits", "grant", "ann", "1", "--reason", "not bob's"]);
    v.json(&["credits", "adjust", "bob", "-3", "--reason", "followed"]);
    let adjusted = next();
    assert_eq!(adjusted["action"], "credits.adjust", "{adjusted}");
    assert_eq!(adjusted["details"]["user"], "bob");
    assert!(
        rx.recv_timeout(Duration::from_secs(2)).is_err(),
        "nothing else"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn project_limits_are_set_listed_and_the_weekly_quota_refuses_on_qemu() {
    let v = Vmdesk::new();
    let (_, _machine) = v.qemu_pool_vm("quota1");
    let err = v.fails(&["project", "limits", "lab", "--weekly-hours", "200"]);
    assert!(
        err.contains("the weekly quota must be between 1 and 168 hours, not 200"),
        "{err}"
    );
    let p = v.json(&[
        "project",
        "limits",
        "lab",
        "--weekly-hours",
        "1",
        "--max-session-minutes",
        "90",
    ]);
    assert_eq!(p["limits"]["weekly_hours"], 1);
    assert_eq!(p["limits"]["max_session_minutes"], 90);
    // Unnamed limits are kept; 0 turns one off.
    let p = v.json(&[
        "project",
        "limits",
        "lab",
        "--max-session-minutes",
        "0",
        "--idle-minutes",
        "20",
    ]);
    assert_eq!(p["limits"]["weekly_hours"], 1);
    assert!(p["limits"]["max_session_minutes"].is_null());
    assert_eq!(p["limits"]["idle_minutes"], 20);
    let list = v.run(&["project", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("20 min under 5 % CPU") && text.contains("1 h"),
        "{text}"
    );
    v.json(&["user", "add", "bob", "--credits", "100000"]);
    let err = v.fails(&[
        "--as",
        "bob",
        "project",
        "limits",
        "lab",
        "--weekly-hours",
        "100",
    ]);
    assert!(
        err.contains("only an administrator may set project limits"),
        "{err}"
    );

    let s = v.json(&["--as", "bob", "session", "open", "--project", "lab"]);
    let id = s["id"].as_i64().expect("id");
    v.json(&[
        "--as",
        "bob",
        "--shutdown-timeout",
        "1",
        "session",
        "close",
        &id.to_string(),
    ]);
    // bob held it for 61 minutes (moved back in the file: no waiting an hour).
    let db = v.db();
    db.execute(
        "UPDATE sessions SET started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-62 minutes'),
                             ended_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 minutes')
         WHERE id = ?1",
        [id],
    )
    .expect("move the session back");
    let before = v.snapshot();
    let err = v.fails(&["--as", "bob", "session", "open", "--project", "lab"]);
    assert!(
        err.contains(
            "the weekly quota of project \"lab\" is used up: 61 min of 1 h held in the last 7 days"
        ),
        "{err}"
    );
    assert_eq!(v.snapshot(), before, "a refused session changed nothing");
}

#[test]
fn projects_and_workspaces_are_renamed_and_deleted_from_the_command_line() {
    let v = Vmdesk::new();
    v.json(&["user", "add", "bob"]);
    v.json(&["project", "create", "lab"]);
    v.json(&["workspace", "create", "w1", "--project", "lab"]);
    let p = v.json(&["project", "rename", "lab", "class"]);
    assert_eq!(p["name"], "class");
    let w = v.json(&["workspace", "rename", "w1", "team-a", "--project", "class"]);
    assert_eq!(
        (w["name"].as_str(), w["project"].as_str()),
        (Some("team-a"), Some("class"))
    );
    let err = v.fails(&["project", "rename", "class", "bad name!"]);
    assert!(err.contains("bad name!"), "{err}");
    let err = v.fails(&["workspace", "delete", "nope", "--project", "class"]);
    assert!(
        err.contains("project \"class\" has no workspace named \"nope\""),
        "{err}"
    );
    let err = v.fails(&["--as", "bob", "project", "delete", "class"]);
    assert!(
        err.contains("only an administrator may delete projects"),
        "{err}"
    );
    v.json(&["workspace", "delete", "team-a", "--project", "class"]);
    v.json(&["project", "delete", "class"]);
    assert_eq!(v.json(&["project", "list"]), serde_json::json!([]));
    let kinds: Vec<String> = v
        .json(&["events", "--type", "admin", "--limit", "4"])
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        kinds,
        [
            "project.delete",
            "workspace.delete",
            "workspace.rename",
            "project.rename"
        ]
    );
}

#[test]
fn an_owner_chooses_idle_shutdown_of_their_vm_from_the_command_line() {
    let v = Vmdesk::new();
    v.qemu_and_ann(3000);
    v.json(&["user", "add", "bob"]);
    let vm = v.json(&[
        "--as",
        "ann",
        "vm",
        "create",
        "mine",
        "--ram-mb",
        "128",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
        "--no-start",
    ]);
    let _machine = vmdesk_tests::Machine(vm["provider_id"].as_str().expect("machine").to_owned());
    let set = v.json(&["--as", "ann", "vm", "idle-stop", "mine", "30"]);
    assert_eq!(set["metadata"]["idle_stop_minutes"], "30", "{set}");
    let out = v.run(&["--as", "ann", "vm", "idle-stop", "mine", "45"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("stops after 45 idle minutes"),
        "{text}"
    );
    for (bad, says) in [
        ("0", "between 1 and 43200"),
        ("50000", "between 1 and 43200"),
        ("soon", "not a number of minutes or 'off'"),
    ] {
        let err = v.fails(&["--as", "ann", "vm", "idle-stop", "mine", bad]);
        assert!(err.contains(says), "{bad}: {err}");
    }
    // Not bob's to choose; nothing changed by the refusals.
    v.fails(&["--as", "bob", "vm", "idle-stop", "mine", "5"]);
    assert_eq!(
        v.json(&["vm", "show", "mine"])["metadata"]["idle_stop_minutes"],
        "45"
    );
    let off = v.json(&["--as", "ann", "vm", "idle-stop", "mine", "off"]);
    assert_eq!(off["metadata"]["idle_stop_minutes"], "off");
}
