//! The raw WebSocket baseline: a tokio-tungstenite server and client with no
//! protocol on top, the transport's limit on this machine.
//!
//! The server (`terminalwire-bench raw-serve`) answers by path:
//! `/stream/BYTES` sends BYTES bytes in 64 KiB binary messages then closes;
//! `/echo` sends every binary message back; `/idle` holds the connection
//! until the client closes it. The client (`terminalwire-bench raw-client`)
//! writes a stream to its stdout, or times echo round trips.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// Size of one streamed message: the terminalwire default chunk size.
pub(crate) const MESSAGE: usize = 64 * 1024;

/// The payload of one echo round trip: about the size of a `file exists`
/// request frame.
const ECHO_PAYLOAD: &[u8] = b"{\"t\":\"req\",\"id\":1,\"op\":\"file_exists\",\"path\":\"/x\"}";

/// tokio-tungstenite's configuration, with `read_buffer` bytes of read
/// buffer instead of the default 128 KiB when given.
pub(crate) fn config(read_buffer: Option<usize>) -> WebSocketConfig {
    let config = WebSocketConfig::default();
    match read_buffer {
        Some(size) => config.read_buffer_size(size),
        None => config,
    }
}

/// Serves until killed; the first stdout line is `listening on ws://ADDR/`.
pub(crate) async fn serve(listen: SocketAddr, read_buffer: Option<usize>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    crate::announce(&format!("listening on ws://{}/", listener.local_addr()?))?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = session(stream, read_buffer).await;
        });
    }
}

async fn session(stream: TcpStream, read_buffer: Option<usize>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut path = String::new();
    #[allow(
        clippy::result_large_err,
        reason = "the signature tungstenite asks for"
    )]
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let mut socket = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(config(read_buffer)),
    )
    .await?;
    if let Some(bytes) = path.strip_prefix("/stream/") {
        let mut left: u64 = bytes.parse()?;
        // Placed as terminalwire places its sealed messages, so that this
        // baseline is not slowed by what `MESSAGE_LEAD` avoids: tungstenite
        // copies each message behind a 10-byte header, and on AMD Zen
        // glibc's `memcpy` is about fifteen times slower from a source at the
        // same offset in its page as the write buffer. Measured here: the
        // block started on a page boundary, and this baseline streamed
        // 1.9 GB/s without the lead, 2.7–3.1 GB/s with it.
        let lead = terminalwire_protocol::secure::MESSAGE_LEAD;
        let mut block = vec![0; lead];
        block.extend_from_slice(&crate::app::pattern(MESSAGE));
        let block = Bytes::from(block).slice(lead..);
        while left > 0 {
            let n = MESSAGE.min(usize::try_from(left).unwrap_or(usize::MAX));
            socket.feed(Message::Binary(block.slice(..n))).await?;
            left -= n as u64;
        }
        socket.flush().await?;
        socket.close(None).await?;
        // Let the client's close reach us.
        while let Some(Ok(_)) = socket.next().await {}
    } else if path == "/echo" {
        while let Some(message) = socket.next().await {
            match message? {
                message @ Message::Binary(_) => socket.send(message).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
    } else {
        // `/idle`: hold until the client closes.
        while let Some(Ok(_)) = socket.next().await {}
    }
    Ok(())
}

/// What the raw client does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Read a stream of `bytes` bytes and write it to stdout.
    Stream {
        /// Bytes expected.
        bytes: u64,
    },
    /// `n` echo round trips with `in_flight` messages in flight; prints
    /// `n=N secs=S`.
    Echo {
        /// Round trips.
        n: u64,
        /// Messages in flight.
        in_flight: u64,
    },
}

/// Runs the raw client against the raw server at `base` (`ws://ADDR/`).
pub(crate) async fn client(
    base: &str,
    mode: Mode,
    read_buffer: Option<usize>,
) -> anyhow::Result<()> {
    let base = base.trim_end_matches('/');
    match mode {
        Mode::Stream { bytes } => {
            let (socket, _) = tokio_tungstenite::connect_async_with_config(
                format!("{base}/stream/{bytes}"),
                Some(config(read_buffer)),
                true,
            )
            .await?;
            let (_sink, mut source) = socket.split();
            let mut stdout = std::io::stdout().lock();
            let mut received = 0u64;
            while let Some(message) = source.next().await {
                match message? {
                    Message::Binary(payload) => {
                        stdout.write_all(&payload)?;
                        received += payload.len() as u64;
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            stdout.flush()?;
            if received != bytes {
                bail!("received {received} bytes, expected {bytes}");
            }
        }
        Mode::Echo { n, in_flight } => {
            let (mut socket, _) = tokio_tungstenite::connect_async_with_config(
                format!("{base}/echo"),
                Some(config(read_buffer)),
                true,
            )
            .await?;
            let payload = Bytes::from_static(ECHO_PAYLOAD);
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < in_flight.max(1).min(n) {
                socket.feed(Message::Binary(payload.clone())).await?;
                sent += 1;
            }
            socket.flush().await?;
            let mut answered = 0u64;
            while answered < n {
                match socket.next().await.context("the echo server closed")?? {
                    Message::Binary(_) => answered += 1,
                    _ => continue,
                }
                if sent < n {
                    socket.send(Message::Binary(payload.clone())).await?;
                    sent += 1;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            socket.close(None).await?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "n={n} secs={secs}")?;
        }
    }
    Ok(())
}

/// How long a polling TCP ping-pong end polls its socket before it blocks.
pub(crate) const TCP_POLL: Duration = Duration::from_micros(20);

/// The first byte of a TCP connection that asks for a stream.
const TCP_STREAM_MODE: u8 = 2;
/// The plain TCP stream's reads: tungstenite's default read buffer.
const TCP_STREAM_READ: usize = 128 * 1024;

/// Serves TCP echo on `listen` (a thread per connection) until killed;
/// announces `listening on ADDR`. A connection's first byte says how its
/// reads wait: 0 blocks, 1 polls for [`TCP_POLL`] first (as the client does);
/// 2 asks instead for a stream of the number of bytes in the next 8 (little
/// endian), sent in [`MESSAGE`] writes.
pub(crate) fn tcp_echo_serve(listen: SocketAddr) -> anyhow::Result<()> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind(listen)?;
    crate::announce(&format!("listening on {}", listener.local_addr()?))?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        stream.set_nodelay(true)?;
        std::thread::spawn(move || {
            let mut mode = [0u8; 1];
            if stream.read_exact(&mut mode).is_err() {
                return;
            }
            if mode[0] == TCP_STREAM_MODE {
                let mut count = [0u8; 8];
                if stream.read_exact(&mut count).is_ok() {
                    let _ = tcp_stream_send(&mut stream, u64::from_le_bytes(count));
                }
                return;
            }
            let poll = if mode[0] == 1 {
                TCP_POLL
            } else {
                Duration::ZERO
            };
            let mut buffer = [0u8; 4096];
            while let Ok(n) = read_polling(&mut stream, &mut buffer, poll) {
                if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Reads into `buffer`, polling the socket for up to `poll` before a
/// blocking read: a thread that polls keeps its CPU awake, so the answer
/// costs no wake-up. Polls with `MSG_DONTWAIT`, so the socket stays blocking.
fn read_polling(
    stream: &mut std::net::TcpStream,
    buffer: &mut [u8],
    poll: Duration,
) -> std::io::Result<usize> {
    use rustix::io::Errno;
    use std::io::Read;
    if !poll.is_zero() {
        let started = Instant::now();
        loop {
            match rustix::net::recv(&*stream, &mut *buffer, rustix::net::RecvFlags::DONTWAIT) {
                Ok((read, _)) => return Ok(read),
                Err(Errno::AGAIN | Errno::INTR) if started.elapsed() < poll => {
                    std::hint::spin_loop();
                }
                Err(Errno::AGAIN | Errno::INTR) => break,
                Err(error) => return Err(error.into()),
            }
        }
    }
    loop {
        match stream.read(buffer) {
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}

/// `n` round trips of a 52-byte message to a TCP echo server, one at a
/// time, both ends blocking or (with `poll`) both polling for
/// [`TCP_POLL`] before they block; prints `n=N secs=S`.
pub(crate) fn tcp_ping_pong(addr: SocketAddr, n: u64, poll: bool) -> anyhow::Result<()> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.write_all(&[u8::from(poll)])?;
    let poll = if poll { TCP_POLL } else { Duration::ZERO };
    let message = [7u8; 52];
    let mut answer = [0u8; 52];
    let started = Instant::now();
    for _ in 0..n {
        stream.write_all(&message)?;
        let mut got = 0;
        while got < answer.len() {
            match read_polling(&mut stream, &mut answer[got..], poll)? {
                0 => bail!("the echo server closed the connection"),
                read => got += read,
            }
        }
        anyhow::ensure!(answer == message, "the echo server changed the message");
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(std::io::stdout(), "n={n} secs={secs}")?;
    Ok(())
}

/// Sends `bytes` bytes in [`MESSAGE`] writes, as the raw WebSocket server
/// sends its messages.
fn tcp_stream_send(stream: &mut std::net::TcpStream, bytes: u64) -> std::io::Result<()> {
    let chunk = vec![b'x'; MESSAGE];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(MESSAGE, |left| left.min(MESSAGE));
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Receives a stream of `bytes` bytes over plain TCP from a
/// `tcp-echo-serve` and writes it to stdout, as the raw WebSocket client
/// does its messages: what the kernel gives a plain program over loopback.
pub(crate) fn tcp_stream(addr: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut ask = vec![TCP_STREAM_MODE];
    ask.extend(bytes.to_le_bytes());
    stream.write_all(&ask)?;
    // As much as the raw client's tungstenite reads at a time by default.
    let mut buffer = vec![0u8; TCP_STREAM_READ];
    let mut stdout = std::io::stdout().lock();
    let mut got = 0u64;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                stdout.write_all(&buffer[..n])?;
                got += n as u64;
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error.into()),
        }
    }
    stdout.flush()?;
    anyhow::ensure!(
        got == bytes,
        "the TCP stream ended after {got} of {bytes} bytes"
    );
    Ok(())
}
