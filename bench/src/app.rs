//! The bench app: an axum web app with a terminalwire CLI made for
//! measuring, run as its own process (`terminalwire-bench serve`).
//!
//! Commands (arguments after the URL):
//!
//! - `hello NAME`: prints `Hello, NAME!` (the cold-command figure).
//! - `token`: reads the client file `token` in the app's storage folder
//!   (what a command of a logged-in user does first) and prints its length
//!   (the cold-command figure's command with a resource request).
//! - `stream BYTES`: writes BYTES bytes to stdout in 64 KiB writes.
//! - `exists N`: N sequential `file exists` requests; prints `n=N secs=S`.
//! - `exists-pipelined N K`: the same with K requests in flight.
//! - `fileread NAME PIDFILE`: reads the client file `NAME` in the app's
//!   storage folder with the SDK's streaming reader and discards it; prints
//!   bytes, seconds and the peak memory of this server and of the client
//!   whose process id is in PIDFILE (on the client's machine, which here is
//!   this one).
//! - `filewrite NAME BYTES PIDFILE`: writes BYTES bytes to that client file
//!   with the SDK's streaming atomic writer; prints the same facts.
//! - `idle`: prints `ready` and waits until the client goes away.
//!
//! `GET /hello` answers `Hello, x!` over plain HTTP, for curl.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use terminalwire_server::resources::WRITE_CHUNK;
use terminalwire_server::{Config, Context, Terminal, tls};

use crate::procfs;

/// Size of one stdout write of `stream`.
const STREAM_WRITE: usize = 64 * 1024;

/// Serves the bench app on `listen` until killed; the first stdout line is
/// `listening on ws://ADDR/terminal`.
/// With `nodelay`, accepted connections get `TCP_NODELAY` (as the raw
/// WebSocket server's do). With `tls_dir`, serves `wss://` with a fresh
/// self-signed certificate for 127.0.0.1 written there (`dev-cert.pem`).
///
/// With `read_buffer`, the app mounts the terminal with its own handler that
/// sets the WebSocket read buffer (tungstenite's default: 128 KiB) before
/// `Terminal::upgrade`, to measure that setting.
pub(crate) async fn serve(
    listen: SocketAddr,
    nodelay: bool,
    tls_dir: Option<PathBuf>,
    read_buffer: Option<usize>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let config = Config {
        server_name: "terminalwire-bench".into(),
        // Idle sessions are held for minutes by clients that send no
        // heartbeat (the real client pings every 15 s).
        idle_timeout: Duration::from_secs(3600),
        // Sessions whose client went away wait for it to resume (the
        // default grace period) and keep their slot meanwhile: room for
        // the 10 000 idle sessions plus the ones closed before them.
        max_sessions: 20_000,
        ..Config::default()
    };
    let terminal = Terminal::with_config(command, config);
    let route = match read_buffer {
        None => terminal.route(),
        Some(size) => get(move |headers: HeaderMap, upgrade: WebSocketUpgrade| {
            let terminal = terminal.clone();
            async move { terminal.upgrade(upgrade.read_buffer_size(size), &headers) }
        }),
    };
    let app = Router::new()
        .route("/terminal", route)
        .route("/hello", get(|| async { "Hello, x!\n" }));
    if let Some(dir) = tls_dir {
        let certificate = tls::self_signed(&["127.0.0.1", "localhost"])?;
        certificate.write_to(&dir)?;
        let listener = tls::TlsListener::new(listener, &certificate.tls_config()?)?;
        // The SDK's TLS listener sets TCP_NODELAY itself: `--nagle` undoes it.
        let listener = listener.tap_io(move |stream| {
            let _ = stream.get_ref().0.set_nodelay(nodelay);
        });
        crate::announce(&format!("listening on wss://{addr}/terminal"))?;
        axum::serve(listener, app).await?;
    } else {
        let listener = listener.tap_io(move |tcp| {
            if nodelay {
                let _ = tcp.set_nodelay(true);
            }
        });
        crate::announce(&format!("listening on ws://{addr}/terminal"))?;
        axum::serve(listener, app).await?;
    }
    Ok(())
}

/// One session of the bench app.
async fn command(ctx: Context) -> anyhow::Result<()> {
    let args = ctx.args().to_vec();
    let arg = |index: usize| -> anyhow::Result<&str> {
        args.get(index)
            .map(String::as_str)
            .with_context(|| format!("missing argument {index} of {args:?}"))
    };
    let number = |index: usize| -> anyhow::Result<u64> {
        arg(index)?
            .parse()
            .with_context(|| format!("argument {index} is not a number"))
    };
    match arg(0)? {
        "hello" => ctx.stdout().println(format!("Hello, {}!", arg(1)?)).await?,
        "token" => {
            let path = ctx
                .storage_path("token")
                .context("the client reported no storage folder")?;
            let token = ctx.file().read(&path).await?;
            ctx.stdout()
                .println(format!("token of {} bytes", token.len()))
                .await?;
        }
        "stream" => stream(&ctx, number(1)?).await?,
        "exists" => exists(&ctx, number(1)?, 1).await?,
        "exists-pipelined" => exists(&ctx, number(1)?, number(2)?).await?,
        "fileread" => file_read(&ctx, arg(1)?, arg(2)?).await?,
        "filewrite" => file_write(&ctx, arg(1)?, number(2)?, arg(3)?).await?,
        "mixed" => mixed(&ctx, number(1)?, number(2)?).await?,
        "idle" => {
            ctx.stdout().println("ready").await?;
            ctx.closed().await;
        }
        other => bail!("unknown bench command {other:?}"),
    }
    Ok(())
}

/// Sessions of the load test that have started `mixed`.
static LOAD_ARRIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static LOAD_ALL_IN: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The load test's command: waits until `sessions` sessions are in (so they
/// really are concurrent), then does `requests` mixed requests (line reads,
/// an environment variable, a file check) with output between them. Every
/// request must be answered; denials count as answers.
async fn mixed(ctx: &Context, requests: u64, sessions: u64) -> anyhow::Result<()> {
    let all_in = LOAD_ALL_IN.notified();
    if LOAD_ARRIVED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= sessions {
        LOAD_ALL_IN.notify_waiters();
    } else {
        tokio::time::timeout(std::time::Duration::from_secs(60), all_in)
            .await
            .context("not every load session arrived")?;
    }
    let out = ctx.stdout();
    let block = pattern(1024);
    for n in 0..requests {
        match n % 3 {
            0 => {
                let line = ctx.read_line(None).await?;
                anyhow::ensure!(line.is_some(), "stdin ended early");
            }
            1 => {
                let _ = ctx.env().get("TERMINALWIRE_HOME").await;
            }
            _ => {
                let _ = ctx.file().exists("/nonexistent/load").await;
            }
        }
        out.write_all(&block).await?;
    }
    Ok(())
}

/// A block of printable bytes, the same for every write.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"0123456789abcdef"[i % 16]).collect()
}

async fn stream(ctx: &Context, total: u64) -> anyhow::Result<()> {
    let block = pattern(STREAM_WRITE);
    let out = ctx.stdout();
    let mut left = total;
    while left > 0 {
        let n = block.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        out.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

async fn exists(ctx: &Context, n: u64, in_flight: u64) -> anyhow::Result<()> {
    let path = ctx
        .storage_path("absent")
        .context("the client reported no storage folder")?;
    let files = ctx.file();
    let started = Instant::now();
    if in_flight <= 1 {
        for _ in 0..n {
            if files.exists(&path).await? {
                bail!("{path} exists");
            }
        }
    } else {
        let mut answers = futures_util::stream::iter(0..n)
            .map(|_| files.exists(&path))
            .buffer_unordered(usize::try_from(in_flight)?);
        while let Some(answer) = answers.next().await {
            if answer? {
                bail!("{path} exists");
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    ctx.stdout().println(format!("n={n} secs={secs}")).await?;
    Ok(())
}

async fn file_read(ctx: &Context, name: &str, pid_file: &str) -> anyhow::Result<()> {
    let path = ctx
        .storage_path(name)
        .context("the client reported no storage folder")?;
    let _ = procfs::reset_peak_rss(0);
    let started = Instant::now();
    // The SDK's streaming reader: a few chunks in flight, in order.
    let mut reader = ctx.file().reader(&path);
    let mut read = 0u64;
    while let Some(chunk) = reader.next_chunk().await? {
        read += chunk.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    report(ctx, read, secs, pid_file).await
}

async fn file_write(ctx: &Context, name: &str, total: u64, pid_file: &str) -> anyhow::Result<()> {
    let path = ctx
        .storage_path(name)
        .context("the client reported no storage folder")?;
    let _ = procfs::reset_peak_rss(0);
    let block = pattern(WRITE_CHUNK);
    let started = Instant::now();
    // The SDK's streaming atomic write: chunks in flight, then one commit.
    let mut writer = ctx.file().writer(&path).await?;
    let mut left = total;
    while left > 0 {
        let n = block.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        writer.write(&block[..n]).await?;
        left -= n as u64;
    }
    writer.commit().await?;
    let secs = started.elapsed().as_secs_f64();
    report(ctx, total, secs, pid_file).await
}

/// Prints `bytes=B secs=S server_peak_kib=K client_peak_kib=K`.
async fn report(ctx: &Context, bytes: u64, secs: f64, pid_file: &str) -> anyhow::Result<()> {
    let server_peak = procfs::peak_rss_kib(0).unwrap_or(0);
    let client_peak = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .and_then(procfs::peak_rss_kib)
        .unwrap_or(0);
    ctx.stdout()
        .println(format!(
            "bytes={bytes} secs={secs} server_peak_kib={server_peak} client_peak_kib={client_peak}"
        ))
        .await?;
    Ok(())
}
