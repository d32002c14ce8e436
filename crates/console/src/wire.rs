//! The relay's wire, after the WebSocket handshake (issue 17): the VM's
//! frames go to the viewer without passing through user space, and the
//! viewer's (small, masked) frames are read and unmasked here.
//!
//! VM → viewer: WebSocket frames from a server are not masked, so their
//! payload is the VNC server's bytes unchanged. Each run of them is moved
//! with `splice(2)` from the display's socket into a pipe and from the pipe
//! into the viewer's TCP socket; only the frame's header (2-10 bytes) is
//! written from here, before its payload (with `MSG_MORE`, so that header and
//! payload leave in one segment). One writer owns the viewer's socket, so
//! control frames (pings, pongs, the close) never land inside a frame.
//!
//! Viewer → VM: frames are parsed with tungstenite's frame header codec,
//! unmasked and written to the display; pings are answered (through the
//! writer), a close ends the relay.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use bytes::{Buf, BytesMut};
use nix::fcntl::{splice, SpliceFFlags};
use nix::sys::socket::{send, MsgFlags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// The pipe's size asked for: the most one frame carries.
pub const PIPE_SIZE: usize = 1 << 20;
/// The largest frame a viewer may send (noVNC's are a few bytes to a few KiB).
pub const MAX_VIEWER_FRAME: u64 = 1 << 20;

/// A pipe for `splice`, both ends non-blocking.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity: what one splice into it may move.
    pub size: usize,
}

impl Pipe {
    /// A pipe of [`PIPE_SIZE`] where the system allows it (the default 64
    /// KiB otherwise).
    pub fn new() -> io::Result<Pipe> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let size = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(64 * 1024);
        Ok(Pipe { read, write, size })
    }
}

/// A server frame's header (unmasked, final) for `len` bytes of `opcode`.
pub fn header(opcode: OpCode, len: u64) -> Vec<u8> {
    final_header(opcode, len, None)
}

/// A final frame's header for `len` bytes of `opcode`, masked with `mask`.
fn final_header(opcode: OpCode, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let h = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
    };
    let mut out = Vec::with_capacity(h.len(len));
    // Writing into a Vec cannot fail.
    let _ = h.format(len, &mut out);
    out
}

/// A whole control frame (`payload` ≤ 125 bytes) from the server.
pub fn control(c: Control, payload: &[u8]) -> Vec<u8> {
    let mut f = header(OpCode::Control(c), payload.len() as u64);
    f.extend_from_slice(payload);
    f
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Sends all of `bytes` to the viewer; `more`: a payload follows at once.
pub async fn send_all(tcp: &TcpStream, mut bytes: &[u8], more: bool) -> io::Result<()> {
    let flags = if more {
        // nix names no MSG_MORE: libc's value.
        MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL
    } else {
        MsgFlags::MSG_NOSIGNAL
    };
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_io(Interest::WRITABLE, || {
            send(std::os::fd::AsRawFd::as_raw_fd(tcp), bytes, flags).map_err(io::Error::from)
        }) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves what the display has (at most a pipe's worth) into the pipe:
/// the bytes moved, 0 at the display's end. Waits until there is some.
pub async fn fill(vnc: &UnixStream, pipe: &Pipe) -> io::Result<usize> {
    loop {
        vnc.readable().await?;
        match vnc.try_io(Interest::READABLE, || {
            splice(
                vnc.as_fd(),
                None,
                pipe.write.as_fd(),
                None,
                pipe.size,
                SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
            )
            .map_err(io::Error::from)
        }) {
            Ok(n) => return Ok(n),
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Moves `len` bytes from the pipe into the viewer's socket.
pub async fn drain(pipe: &Pipe, tcp: &TcpStream, mut len: usize) -> io::Result<()> {
    while len > 0 {
        tcp.writable().await?;
        match tcp.try_io(Interest::WRITABLE, || {
            splice(
                pipe.read.as_fd(),
                None,
                tcp.as_fd(),
                None,
                len,
                SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
            )
            .map_err(io::Error::from)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n,
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a viewer sent.
#[derive(Debug, PartialEq, Eq)]
pub enum FromViewer {
    /// Bytes for the VM (a binary frame or a continuation, unmasked).
    Data(Vec<u8>),
    /// A ping: its payload, to answer.
    Ping(Vec<u8>),
    /// A pong (or a text frame: noVNC sends none; ignored).
    Ignored,
    /// The viewer closes.
    Close,
}

/// Reads the viewer's frames: client frames must be masked (RFC 6455 5.1).
pub struct Frames<R> {
    rx: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    /// Frames read from `rx`.
    pub fn new(rx: R) -> Self {
        Frames {
            rx,
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// The next frame; `None` at the end of the stream.
    pub async fn next(&mut self) -> io::Result<Option<FromViewer>> {
        loop {
            let mut cursor = io::Cursor::new(&self.buf[..]);
            let parsed = FrameHeader::parse(&mut cursor)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if let Some((h, len)) = parsed {
                if len > MAX_VIEWER_FRAME {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a viewer frame of {len} bytes"),
                    ));
                }
                let at = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if self.buf.len() >= at + len {
                    let Some(mask) = h.mask else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "an unmasked frame from the viewer",
                        ));
                    };
                    self.buf.advance(at);
                    let mut payload = self.buf.split_to(len).to_vec();
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                    return Ok(Some(match h.opcode {
                        OpCode::Data(Data::Binary | Data::Continue) => FromViewer::Data(payload),
                        OpCode::Control(Control::Ping) => FromViewer::Ping(payload),
                        OpCode::Control(Control::Close) => FromViewer::Close,
                        _ => FromViewer::Ignored,
                    }));
                }
            }
            self.buf.reserve(16 * 1024);
            if self.rx.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// A TCP stream whose reads stop at the end of the HTTP request, so that
/// the WebSocket handshake (tungstenite's) reads no byte beyond it and the
/// stream can be taken back whole for the relay.
pub struct RequestOnly {
    tcp: TcpStream,
    left: usize,
}

impl RequestOnly {
    /// Waits until the whole request head (up to `\r\n\r\n`, at most 16
    /// KiB) has arrived, without consuming it.
    pub async fn new(tcp: TcpStream) -> io::Result<RequestOnly> {
        let mut buf = vec![0u8; 16 * 1024];
        // A head arrives whole at once from a browser; a peer that sends it
        // slowly is looked at less and less often (its handshake's timeout
        // ends it), so many of them cost little.
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            let n = tcp.peek(&mut buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(i) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(RequestOnly { tcp, left: i + 4 });
            }
            if n == buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the HTTP request is too long",
                ));
            }
            // Peeking again returns the same bytes until more arrive.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(64));
        }
    }

    /// The stream, after the handshake.
    pub fn into_inner(self) -> TcpStream {
        self.tcp
    }
}

impl AsyncRead for RequestOnly {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        // Nothing past the request is read here (an empty read ends it).
        let want = self.left.min(buf.remaining()).min(4096);
        let mut tmp = [0u8; 4096];
        let mut part = ReadBuf::new(&mut tmp[..want]);
        let r = std::pin::Pin::new(&mut self.tcp).poll_read(cx, &mut part);
        if let std::task::Poll::Ready(Ok(())) = r {
            let n = part.filled().len();
            buf.put_slice(part.filled());
            self.left -= n;
        }
        r
    }
}

impl AsyncWrite for RequestOnly {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, data)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A client frame: masked with `mask`.
    fn client(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = final_header(opcode, payload.len() as u64, mask);
        let mut body = payload.to_vec();
        if let Some(m) = mask {
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        out.extend_from_slice(&body);
        out
    }

    #[tokio::test]
    async fn frames_are_unmasked_split_reads_joined_and_controls_told_apart() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut frames = Frames::new(rx);
        let mask = Some([1, 2, 3, 4]);
        let mut bytes = client(OpCode::Data(Data::Binary), b"RFB 003.008\n", mask);
        bytes.extend(client(OpCode::Control(Control::Ping), b"hi", mask));
        bytes.extend(client(OpCode::Data(Data::Text), b"ignored", mask));
        bytes.extend(client(OpCode::Control(Control::Close), b"", mask));
        let writer = tokio::spawn(async move {
            // A byte at a time: every frame arrives in pieces.
            for b in bytes {
                tx.write_all(&[b]).await.expect("write");
            }
        });
        assert_eq!(
            frames.next().await.expect("read"),
            Some(FromViewer::Data(b"RFB 003.008\n".to_vec()))
        );
        assert_eq!(
            frames.next().await.expect("read"),
            Some(FromViewer::Ping(b"hi".to_vec()))
        );
        assert_eq!(
            frames.next().await.expect("read"),
            Some(FromViewer::Ignored)
        );
        assert_eq!(frames.next().await.expect("read"), Some(FromViewer::Close));
        writer.await.expect("writer");
        assert_eq!(frames.next().await.expect("read"), None);
    }

    #[tokio::test]
    async fn an_unmasked_or_oversized_viewer_frame_is_refused() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut frames = Frames::new(rx);
        tx.write_all(&client(OpCode::Data(Data::Binary), b"x", None))
            .await
            .expect("write");
        let e = frames.next().await.expect_err("refused");
        assert!(e.to_string().contains("unmasked"), "{e}");

        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut frames = Frames::new(rx);
        let mut header = Vec::new();
        FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode: OpCode::Data(Data::Binary),
            mask: Some([0; 4]),
        }
        .format(MAX_VIEWER_FRAME + 1, &mut header)
        .expect("a header");
        tx.write_all(&header).await.expect("write");
        let e = frames.next().await.expect_err("refused");
        assert!(e.to_string().contains("viewer frame"), "{e}");
    }

    #[test]
    fn server_headers_are_unmasked_and_sized() {
        assert_eq!(header(OpCode::Data(Data::Binary), 5), [0x82, 5]);
        assert_eq!(header(OpCode::Data(Data::Binary), 300), [0x82, 126, 1, 44]);
        assert_eq!(header(OpCode::Data(Data::Binary), 1 << 20)[1], 127);
        assert_eq!(control(Control::Pong, b"ab"), [0x8a, 2, b'a', b'b']);
    }
}
