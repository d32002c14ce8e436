//! The console of a VM on a `qemu+ssh://` host: an SSH channel to the host,
//! joined there to the display's unix socket, the way virt-manager and
//! virt-viewer reach remote displays. The system `ssh` runs with the user's
//! own keys, agent, `~/.ssh/config` and `known_hosts` (as libvirt's own ssh
//! transport does), in batch mode (never a prompt), and `nc -U` on the host
//! joins the channel to the socket. Its standard input and output are one end
//! of a socket pair; the other end is the display stream, so the bridge sees
//! the same kind of stream as a local display's descriptor.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmdesk_core::provider::ProviderError;

/// How long the host has to answer (connection, authentication, the
/// display's first bytes).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and as whom `ssh` logs in, from a `qemu+ssh://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The host name or address.
    pub host: String,
    /// The remote user (none: ssh's own default).
    pub user: Option<String>,
    /// The port (none: 22 or what ssh's config says).
    pub port: Option<u16>,
    /// The URI's `keyfile`.
    pub keyfile: Option<String>,
}

impl SshTarget {
    /// The target of a `DRIVER+ssh://[user@]host[:port]/...` URI; `None` for
    /// any other transport. The URI was checked when the host was added and
    /// is checked again when used ([`vmdesk_core::validate::uri_with`]):
    /// the host and user cannot start with `-` and hold no shell syntax.
    pub fn of(uri: &str) -> Option<Self> {
        let u = url::Url::parse(uri).ok()?;
        if !u.scheme().ends_with("+ssh") {
            return None;
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty() && !h.starts_with('-'))?;
        let keyfile = u
            .query_pairs()
            .find(|(k, _)| k == "keyfile")
            .map(|(_, v)| v.into_owned());
        Some(Self {
            host: host.to_owned(),
            user: Some(u.username().to_owned()).filter(|s| !s.is_empty()),
            port: u.port(),
            keyfile,
        })
    }

    /// The `ssh` command that joins its standard input and output to the
    /// unix socket `path` on the host.
    pub fn command(&self, path: &str) -> Result<Command, ProviderError> {
        let mut c = Command::new("ssh");
        c.args(["-T", "-e", "none", "-x", "-a"])
            .args(["-o", "BatchMode=yes"])
            .args([
                "-o",
                &format!("ConnectTimeout={}", CONNECT_TIMEOUT.as_secs()),
            ])
            // A peer that stops answering ends the console (and the ssh)
            // within about half a minute.
            .args([
                "-o",
                "ServerAliveInterval=10",
                "-o",
                "ServerAliveCountMax=3",
            ]);
        if let Some(p) = self.port {
            c.arg("-p").arg(p.to_string());
        }
        if let Some(user) = &self.user {
            c.arg("-l").arg(user);
        }
        if let Some(k) = &self.keyfile {
            c.arg("-i").arg(k);
        }
        c.arg("--").arg(&self.host).arg(remote_join(path)?);
        Ok(c)
    }

    /// A stream to the display listening on `path` on the host. Fails with
    /// what ssh or the host said when the channel does not carry the
    /// display's first bytes within [`CONNECT_TIMEOUT`].
    pub fn open(&self, path: &str) -> Result<UnixStream, ProviderError> {
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| ProviderError::Refused(format!("a socket pair: {e}")))?;
        let out = theirs
            .try_clone()
            .map_err(|e| ProviderError::Refused(format!("a socket pair: {e}")))?;
        let mut child = self
            .command(path)?
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(out)))
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ProviderError::Refused(format!("running ssh: {e}")))?;
        match first_bytes(&ours, &mut child) {
            Ok(()) => {
                // Reaped when the console ends (ssh exits when the channel
                // closes); its messages are logged then.
                std::thread::spawn(move || {
                    let why = stderr_of(&mut child);
                    let _ = child.wait();
                    if !why.is_empty() {
                        tracing::debug!(ssh = %why, "a remote console's ssh ended");
                    }
                });
                Ok(ours)
            }
            Err(why) => {
                let _ = child.kill();
                let said = stderr_of(&mut child);
                let _ = child.wait();
                let host = &self.host;
                let said = if said.is_empty() { why } else { said };
                Err(ProviderError::Unreachable(format!(
                    "the display on {host} through ssh: {said}"
                )))
            }
        }
    }
}

/// What the host runs to join the channel to the socket: `nc -U` (netcat
/// with unix sockets, Debian's `netcat-openbsd`), or `socat` where that is
/// what the host has.
fn remote_join(path: &str) -> Result<String, ProviderError> {
    // libvirt names the socket after the domain, which vmdesk names; anything
    // else is refused rather than quoted for the remote shell.
    let safe = path.starts_with('/')
        && path.len() < 1024
        && !path.contains("..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'));
    if !safe {
        return Err(ProviderError::Refused(format!(
            "the display socket {path:?} the host reported is not a plain path"
        )));
    }
    Ok(format!(
        "if command -v nc >/dev/null 2>&1; then exec nc -U '{path}'; \
         elif command -v socat >/dev/null 2>&1; then exec socat - 'UNIX-CONNECT:{path}'; \
         else echo 'the host has neither nc (netcat-openbsd) nor socat to reach the display' >&2; exit 127; fi"
    ))
}

/// Waits until the display's first bytes arrive (left unread), ssh exits,
/// or the time is up.
fn first_bytes(stream: &UnixStream, child: &mut Child) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("ssh ended ({status}) before the display answered"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()));
        }
        let step = left.min(Duration::from_millis(200));
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(step).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, ms).unwrap_or(0) > 0 {
            let mut b = [0u8; 1];
            // Readable: data (left in place), or the end of the stream.
            return match nix::sys::socket::recv(
                std::os::fd::AsRawFd::as_raw_fd(stream),
                &mut b,
                nix::sys::socket::MsgFlags::MSG_PEEK,
            ) {
                Ok(n) if n > 0 => Ok(()),
                _ => {
                    // Give ssh a moment to exit and say why.
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_secs(2) {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Err(format!("ssh ended ({status})"));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err("the channel closed before the display answered".to_owned())
                }
            };
        }
    }
}

/// What ssh wrote to its standard error (its last lines), once it ended.
fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_ssh_uris_have_a_target() {
        let t = SshTarget::of("qemu+ssh://ann@lab-1.example:2222/system?keyfile=/k/id").unwrap();
        assert_eq!(t.host, "lab-1.example");
        assert_eq!(t.user.as_deref(), Some("ann"));
        assert_eq!(t.port, Some(2222));
        assert_eq!(t.keyfile.as_deref(), Some("/k/id"));
        let t = SshTarget::of("qemu+ssh://10.0.0.2/session").unwrap();
        assert_eq!((t.user, t.port, t.keyfile), (None, None, None));
        for uri in [
            "qemu:///system",
            "qemu+tls://host/system",
            "qemu+tcp://host/system",
            "qemu+unix:///system",
        ] {
            assert!(SshTarget::of(uri).is_none(), "{uri}");
        }
    }

    #[test]
    fn the_command_ends_options_before_the_host_and_never_prompts() {
        let t = SshTarget::of("qemu+ssh://ann@h/system").unwrap();
        let c = t.command("/run/vnc.sock").unwrap();
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.iter().any(|a| a == "BatchMode=yes"), "{args:?}");
        let dash = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(args[dash + 1], "h");
        assert!(args[dash + 2].contains("nc -U '/run/vnc.sock'"));
    }

    #[test]
    fn a_socket_path_with_shell_syntax_is_refused() {
        let t = SshTarget::of("qemu+ssh://h/system").unwrap();
        for p in [
            "/run/x'; rm -rf ~; '",
            "relative/vnc.sock",
            "/run/$(id)/vnc.sock",
            "/run/a b",
            "/run/../etc/x",
        ] {
            assert!(t.command(p).is_err(), "{p}");
        }
    }
}
