//! Console comfort in the real app (issue 18), with tiny-linux on QEMU:
//! the clipboard both ways through the guest's clipboard agent (text copied
//! in the guest reaches the desktop's clipboard, read with `xclip`; the
//! desktop's clipboard reaches the guest's), the guest's resolution follows
//! the window (and its text console with it), and keys go as scancodes so a
//! German layout in the guest types German characters; without the guest's
//! agent the clipboard is typed, Shift held where needed. What the guest got
//! is read back over SSH. Screenshots are in target/artifacts/.
#![allow(missing_docs)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmdesk_tests::{e2e, qemu_uri, Machine, Vmdesk};

const VM: &str = "comfort";

/// `vmdesk ssh VM -- COMMAND` as its owner, tried until the guest's SSH
/// server answers or `limit`.
fn ssh(v: &Vmdesk, command: &str, limit: Duration) -> Output {
    v.ssh_until("admin", VM, &[command], limit)
}

fn guest(v: &Vmdesk, command: &str) -> String {
    let out = ssh(v, command, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 from the guest")
}

/// What the guest's first virtual terminal shows (`/dev/vcsu1`: one UTF-32
/// code point per cell), as text.
fn screen(v: &Vmdesk) -> String {
    let b64 = guest(v, "base64 /dev/vcsu1 | tr -d '\\n'");
    let bytes = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .expect("stdin")
                .write_all(b64.trim().as_bytes())?;
            c.wait_with_output()
        })
        .expect("base64 -d")
        .stdout;
    bytes
        .chunks_exact(4)
        .filter_map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

fn xdotool(display: &str, args: &[&str]) {
    let st = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .status()
        .expect("xdotool (make setup installs it)");
    assert!(st.success(), "xdotool {args:?}");
}

#[test]
fn the_clipboard_goes_both_ways_the_resolution_follows_and_a_german_layout_types() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.import_tiny_linux();
    v.json(&["credits", "grant", "admin", "100000", "--reason", "tests"]);
    let vm = v.create_tiny(None, VM, &[]);
    let _m = Machine(vm["provider_id"].as_str().expect("machine").to_owned());
    // The guest is up and reachable.
    let up = ssh(&v, "true", Duration::from_secs(180));
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &["--view", "vms"], 0, "comfort").await;
        app.open_console(VM).await;
        // The toolbar says what the guest can do: its agent shares the
        // clipboard, its display takes the window's size.
        app.wait_text(
            r#"[data-testid="console-clipboard-mode"]"#,
            "the shared clipboard",
            |s| s == "Clipboard shared",
        )
        .await;
        app.wait_text(r#"[data-testid="console-scale"]"#, "the resolution following", |s| {
            s == "Resolution follows the window"
        })
        .await;
        app.shot("console-shared-clipboard").await;

        // Copied in the guest → on the desktop's clipboard.
        let copied = "copied in the guest: äöü ✓";
        guest(&v, &format!("printf '%s' '{copied}' | clip"));
        let t = Instant::now();
        while app.clipboard() != copied {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the desktop's clipboard holds {:?}",
                app.clipboard()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Turned off by the person (Settings): what the guest copies stays there.
        v.write_settings("[desktop]\nguest_clipboard = false\n");
        guest(&v, "printf '%s' 'kept in the guest' | clip");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(app.clipboard(), copied, "the guest's copy reached the desktop");
        v.write_settings("");

        // The desktop's clipboard → the guest's, with Paste clipboard.
        let pasted = "from the desk: ß€ ✓\nline two";
        app.set_clipboard(pasted);
        app.click(r#"[data-testid="console-paste"]"#).await;
        let t = Instant::now();
        loop {
            let got = guest(&v, "clip -o");
            if got == pasted {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "the guest's clipboard holds {got:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        // The window gets smaller: the guest's screen and text console follow.
        let mode = |v: &Vmdesk| guest(v, "head -n1 /sys/class/drm/card0-Virtual-1/modes").trim().to_owned();
        let before = mode(&v);
        let canvas = |app: &e2e::App| {
            let c = app.c.clone();
            async move {
                let v = c
                    .execute(
                        r#"const c = document.querySelector('[data-testid="console-screen"] canvas');
                           return c ? [c.width, c.height] : [0, 0];"#,
                        vec![],
                    )
                    .await
                    .expect("the canvas");
                (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0))
            }
        };
        let (w0, h0) = canvas(&app).await;
        app.c.set_window_size(900, 640).await.expect("resize the window");
        let t = Instant::now();
        let after = loop {
            let now = mode(&v);
            let (w, h) = canvas(&app).await;
            if now != before && format!("{w}x{h}") == now {
                break now;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the guest's mode stays {now} (was {before}), the canvas {w}x{h} (was {w0}x{h0})"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let (w, h) = after.split_once('x').expect("WxH");
        let (w, h): (u32, u32) = (w.parse().expect("width"), h.parse().expect("height"));
        assert!(w < w0 as u32, "the guest got narrower: {after} from {w0}x{h0}");
        let size = guest(&v, "stty -F /dev/tty1 size");
        assert_eq!(
            size.trim(),
            format!("{} {}", h / 16, w / 8),
            "the text console follows the screen ({after})"
        );
        app.shot("console-resized").await;

        // Without the guest's agent the clipboard is typed, and says so;
        // what a US keyboard types with Shift arrives shifted.
        guest(&v, "kill $(pidof vdclip)");
        app.wait_text(
            r#"[data-testid="console-clipboard-mode"]"#,
            "the typed clipboard",
            |s| s == "Clipboard typed",
        )
        .await;
        let typed = "Hello, World! a@b.c (x) ~/";
        app.set_clipboard(typed);
        app.click(r#"[data-testid="console-paste"]"#).await;
        let t = Instant::now();
        while !screen(&v).contains(typed) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the guest's screen lacks the typed text: {:?}",
                screen(&v).split_whitespace().collect::<Vec<_>>().join(" ")
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        app.shot("console-typed-clipboard").await;

        // A German layout in the guest: the keys a US keyboard has at
        // z y [ ; ' - type y z ü ö ä ß there, because keys go as scancodes.
        guest(&v, "loadkmap < /etc/keymaps/de.bmap");
        let rect = app
            .c
            .execute(
                r#"const r = document.querySelector('[data-testid="console-screen"] canvas').getBoundingClientRect();
                   return [Math.round(r.left + r.width / 2), Math.round(r.top + r.height / 2)];"#,
                vec![],
            )
            .await
            .expect("the canvas's place");
        let (x, y) = (rect[0].to_string(), rect[1].to_string());
        xdotool(&app.display, &["mousemove", &x, &y, "click", "1"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        xdotool(
            &app.display,
            &["key", "--delay", "80", "z", "y", "bracketleft", "semicolon", "apostrophe", "minus"],
        );
        let t = Instant::now();
        loop {
            let shown = screen(&v);
            if shown.contains("yzüöäß") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the guest's screen lacks the German keys: {:?}",
                shown.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        app.shot("console-german-keys").await;
        app.close().await;
    });
}
