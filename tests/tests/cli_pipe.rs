//! The CLI writing to a reader that goes away early (`vmdesk events | head`,
//! `| grep -q`) ends quietly, as Unix tools do: no panic, exit status 0.
#![allow(missing_docs)]

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::Duration;

use vmdesk_tests::{KillOnDrop, Vmdesk};

/// A data directory with `n` events (about 100 bytes each in the table).
fn with_events(n: usize) -> Vmdesk {
    let v = Vmdesk::new();
    v.json(&["user", "list"]);
    let mut db = v.db();
    let tx = db.transaction().expect("transaction");
    for i in 0..n {
        tx.execute(
            "INSERT INTO events (type, action, severity, actor, details, created_at)
             VALUES ('admin', 'test.pipe', 'info', 'admin', json_object('row', ?1, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxx'), '2026-01-01T00:00:00.000Z')",
            [i64::try_from(i).expect("i")],
        )
        .expect("insert an event");
    }
    tx.commit().expect("commit");
    v
}

/// Runs `vmdesk ARGS`, reads `lines` lines of its output, closes the pipe;
/// its exit status and stderr.
fn read_then_close(v: &Vmdesk, args: &[&str], lines: usize) -> (std::process::ExitStatus, String) {
    let mut child = KillOnDrop(
        v.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vmdesk"),
    );
    let mut out = BufReader::new(child.0.stdout.take().expect("stdout"));
    for _ in 0..lines {
        let mut line = String::new();
        out.read_line(&mut line).expect("a line");
    }
    drop(out);
    let status = child
        .exits_within(Duration::from_secs(30))
        .expect("vmdesk ends after its reader left");
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    (status, err)
}

#[test]
fn a_table_to_a_reader_that_leaves_ends_quietly() {
    let v = with_events(5000);
    let (status, err) = read_then_close(&v, &["events", "--limit", "5000"], 1);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "stderr: {err}"
    );
    assert!(status.success(), "{status}");
}

#[test]
fn json_to_a_reader_that_reads_nothing_ends_quietly() {
    let v = with_events(5000);
    let (status, err) = read_then_close(&v, &["--json", "events", "--limit", "5000"], 0);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "stderr: {err}"
    );
    assert!(status.success(), "{status}");
}
