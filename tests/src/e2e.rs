//! The real app driven through WebDriver: Xvfb, tauri-driver and
//! WebKitWebDriver (the app's own WebKitGTK), with fantoccini as the client.
//! Screenshots of each step go to `target/artifacts/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

use crate::{bin, xvfb, KillOnDrop, Vmdesk};

/// How long a step may take to show on screen.
pub const STEP: Duration = Duration::from_secs(30);

/// Where screenshots are kept.
pub fn artifacts() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// The app under WebDriver, on its own X display; all stopped on drop.
pub struct App {
    /// The WebDriver client.
    pub c: Client,
    /// The X display the app runs on (`:N`).
    pub display: String,
    name: String,
    shots: AtomicU32,
    /// Stops the X server's watch; dropped before the driver and the X
    /// server (fields drop in this order).
    _watch: Watch,
    _driver: KillOnDrop,
    _x: KillOnDrop,
}

/// Tells the X server's watch that the app is closing on purpose.
struct Watch(Arc<AtomicBool>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Whether process `pid` is gone or a zombie.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Ends the test process if the X server under the app dies: the app dies
/// with it, and a WebDriver call to it would wait for ever (make test would
/// hang until CI's limit instead of failing).
fn watch_display(pid: u32, display: String, name: String, closing: Arc<AtomicBool>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if closing.load(Ordering::SeqCst) {
            return;
        }
        if gone(pid) {
            eprintln!(
                "{name}: the X server of display {display} (Xvfb, pid {pid}) died under the app; \
                 ending the test process rather than waiting for the app for ever"
            );
            std::process::exit(101);
        }
    });
}

/// Starts the app on `v`'s data directory with `args` added (and `v.env`
/// in its environment, e.g. a [`crate::SessionKeyring`]'s), as the
/// `slot`-th app of this test process (each slot has its own display and
/// ports). `name` prefixes the screenshots.
pub async fn open(v: &Vmdesk, args: &[&str], slot: u32, name: &str) -> App {
    let n = (std::process::id() % 40) * 4 + slot;
    let display = format!(":{}", 200 + n);
    let (port, native) = (15000 + 2 * n, 15001 + 2 * n);
    let x = xvfb(&display);
    let driver = KillOnDrop(
        Command::new("tauri-driver")
            .args([
                "--port",
                &port.to_string(),
                "--native-port",
                &native.to_string(),
            ])
            .env("DISPLAY", &display)
            // WebKitWebDriver and the app it starts inherit it.
            .envs(v.env.iter().map(|(k, val)| (k, val)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tauri-driver (make setup installs it)"),
    );
    let settings = v.settings_path();
    let mut app_args = vec![
        "--data-dir".to_owned(),
        v.dir.path().display().to_string(),
        "--config".to_owned(),
        settings.display().to_string(),
    ];
    app_args.extend(args.iter().map(|a| (*a).to_owned()));
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), "wry".into());
    caps.insert(
        "tauri:options".into(),
        serde_json::json!({ "application": bin(), "args": app_args }),
    );
    let t = Instant::now();
    let c = loop {
        match ClientBuilder::native()
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => break c,
            Err(e) if t.elapsed() < Duration::from_secs(15) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("a WebDriver session on the app: {e}"),
        }
    };
    let closing = Arc::new(AtomicBool::new(false));
    watch_display(
        x.0.id(),
        display.clone(),
        name.to_owned(),
        Arc::clone(&closing),
    );
    App {
        c,
        display: display.clone(),
        name: name.to_owned(),
        shots: AtomicU32::new(0),
        _watch: Watch(closing),
        _driver: driver,
        _x: x,
    }
}

impl App {
    /// The element `css` matches, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        match self
            .c
            .wait()
            .at_most(STEP)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                // What the window showed instead, for whoever reads the failure.
                self.shot("did-not-appear").await;
                panic!("{css} did not appear: {e}")
            }
        }
    }

    /// Clicks `css` once it appears.
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replaces the value of the input `css` with `value`.
    pub async fn fill(&self, css: &str, value: &str) {
        let e = self.find(css).await;
        e.clear()
            .await
            .unwrap_or_else(|err| panic!("clear {css}: {err}"));
        e.send_keys(value)
            .await
            .unwrap_or_else(|err| panic!("type into {css}: {err}"));
    }

    /// Chooses the option whose value is `value` in the select `css`.
    pub async fn select(&self, css: &str, value: &str) {
        let e = self.find(css).await;
        // As a user scrolls to it: WebKit's driver does not choose an option
        // of a select outside the view.
        let _ = self
            .c
            .execute(
                "arguments[0].scrollIntoView({block: 'center'});",
                vec![serde_json::to_value(&e).expect("an element")],
            )
            .await;
        e.select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("select {value} in {css}: {e}"));
    }

    /// The text of `css` (empty while it is absent).
    pub async fn text(&self, css: &str) -> String {
        match self.c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until `ok` holds of the text of `css`; the last text seen.
    pub async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let text = self.text(css).await;
            if ok(&text) {
                return text;
            }
            if t.elapsed() > STEP {
                self.shot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                panic!("{css}: waited for {what}, saw {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `ok` holds of the value of the input `css`; the last value seen.
    pub async fn wait_value(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let value = self
                .c
                .execute(
                    "const e = document.querySelector(arguments[0]); return e ? e.value : '';",
                    vec![css.into()],
                )
                .await
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            if ok(&value) {
                return value;
            }
            if t.elapsed() > STEP {
                self.shot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                panic!("{css}: waited for {what}, saw {value:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens `vm`'s console from a button on screen and waits until noVNC
    /// reports it connected.
    pub async fn open_console(&self, vm: &str) {
        self.click(&format!(r#"button[aria-label="Open the console of {vm}"]"#))
            .await;
        let state = self
            .wait_text(r#"[data-testid="console-state"]"#, "connected", |s| {
                s == "connected" || s == "failed"
            })
            .await;
        assert_eq!(state, "connected", "the console of {vm}");
    }

    /// Shows a view through the navigation.
    pub async fn nav(&self, view: &str) {
        self.click(&format!(r#"[data-testid="nav-{view}"]"#)).await;
    }

    /// How many pixels of the open console's canvas are not black, with
    /// the canvas's width and height (zeros while there is no canvas).
    pub async fn console_lit(&self) -> (u64, u64, u64) {
        let v = self
            .c
            .execute(
                r#"const c = document.querySelector('[data-testid="console-screen"] canvas');
                   if (!c || !c.width) return [0, 0, 0];
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0;
                   for (let i = 0; i < d.length; i += 4) if (d[i] | d[i + 1] | d[i + 2]) n++;
                   return [c.width, c.height, n];"#,
                vec![],
            )
            .await
            .expect("read the canvas");
        let n = |i: usize| v[i].as_u64().unwrap_or(0);
        (n(0), n(1), n(2))
    }

    /// Keeps a screenshot of this step: the X server's screen, as a user
    /// sees it (native dialogs included). Not WebDriver's screenshot: with
    /// WebKit's compositing off (the default) WebKitWebDriver's snapshot
    /// can wait for ever for a frame after the page changed.
    pub async fn shot(&self, step: &str) {
        let n = self.shots.fetch_add(1, Ordering::Relaxed) + 1;
        // Let the page paint what the test just saw.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let file = artifacts().join(format!("{}-{n:02}-{step}.png", self.name));
        let display = self.display.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("timeout")
                .args(["20", "import", "-display", &display, "-window", "root"])
                .arg(&file)
                .output()
        })
        .await;
        match out {
            Ok(Ok(o)) if o.status.success() => {}
            Ok(Ok(o)) => eprintln!(
                "no screenshot of {step} ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Ok(Err(e)) => eprintln!("no screenshot of {step}: {e}"),
            Err(e) => eprintln!("no screenshot of {step}: {e}"),
        }
    }

    /// The text on the X clipboard of the app's display (`xclip`).
    pub fn clipboard(&self) -> String {
        let out = Command::new("xclip")
            .args(["-o", "-selection", "clipboard"])
            .env("DISPLAY", &self.display)
            .output()
            .expect("xclip (make setup installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Puts `text` on the X clipboard of the app's display, as another
    /// application would (`xclip` keeps serving it).
    pub fn set_clipboard(&self, text: &str) {
        use std::io::Write;
        let mut xclip = Command::new("xclip")
            .args(["-i", "-selection", "clipboard"])
            .env("DISPLAY", &self.display)
            .stdin(Stdio::piped())
            .spawn()
            .expect("xclip (make setup installs it)");
        xclip
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("to xclip");
        let _ = xclip.wait();
    }

    /// Ends the WebDriver session (the app is closed by tauri-driver).
    pub async fn close(self) {
        let _ = self.c.close().await;
    }
}
