//! Opens the desktop's terminal emulator on a command (the window's and the
//! tray's *Open terminal*): the terminal the person chose (`$TERMINAL`),
//! Debian's `x-terminal-emulator` alternative, then the common ones. The
//! command is given as separate arguments, never through a shell.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Terminals and how each takes a command to run, in the order tried.
const KNOWN: [(&str, &[&str]); 6] = [
    ("x-terminal-emulator", &["-e"]),
    ("gnome-terminal", &["--"]),
    ("konsole", &["-e"]),
    ("xfce4-terminal", &["-x"]),
    ("kitty", &[]),
    ("xterm", &["-e"]),
];

fn in_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The terminal to use and the arguments before the command.
fn terminal() -> Option<(PathBuf, Vec<&'static str>)> {
    if let Some(t) = std::env::var("TERMINAL")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        if let Some(p) = in_path(t.trim()) {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let how = KNOWN
                .iter()
                .find(|(k, _)| *k == name)
                .map_or(vec!["-e"], |(_, a)| a.to_vec());
            return Some((p, how));
        }
    }
    KNOWN
        .iter()
        .find_map(|(name, how)| in_path(name).map(|p| (p, how.to_vec())))
}

/// Runs `program args…` in a new terminal window; returns the terminal's
/// name. The terminal is left to run on its own (reaped when it exits).
pub fn open(program: &str, args: &[String]) -> anyhow::Result<String> {
    let Some((term, how)) = terminal() else {
        anyhow::bail!(
            "no terminal emulator was found (x-terminal-emulator, gnome-terminal, konsole, \
             xfce4-terminal, kitty or xterm; or set TERMINAL): copy the SSH command instead"
        );
    };
    let mut child = Command::new(&term)
        .args(&how)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", term.display()))?;
    std::thread::spawn(move || child.wait());
    Ok(Path::new(&term)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("terminal")
        .to_owned())
}
