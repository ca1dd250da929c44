//! The load test: many concurrent sessions against one server process, each
//! doing a mix of requests and streaming output, run by the real client's
//! session engine in this process. Zero errors required; reports the
//! server's peak memory and memory per session.
//!
//! `cargo run --release -p terminalwire-bench -- load [--sessions 1000] [--requests 100]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use terminalwire_client::connect::{self, Target};
use terminalwire_client::secure::{self, ServerPin};
use terminalwire_client::session::{self, LocalIo, Output, SessionConfig};
use terminalwire_protocol::secure::StaticKey;
use tokio::io::AsyncWrite;

/// Sessions being opened at once (the rest queue).
const OPENING: usize = 128;
const TIMEOUT: Duration = Duration::from_secs(120);

/// Counts the bytes a session's stdout receives.
struct Counter(Arc<AtomicU64>);

impl AsyncWrite for Counter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// One session running the app's `mixed REQUESTS` command to its end.
async fn session(
    url: String,
    requests: u64,
    sessions: usize,
    output: Arc<AtomicU64>,
    opening: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<u8> {
    // Only the opening is throttled; then every session runs at once (the
    // app waits until all of them are in before it starts).
    let permit = opening.acquire_owned().await?;
    let target = Target::parse(&url)?;
    let socket = connect::connect(&target, TIMEOUT).await?;
    let device = StaticKey::generate()?;
    let (socket, _) = secure::handshake(
        socket,
        &device,
        &ServerPin::FirstContact,
        &target.authority,
        TIMEOUT,
    )
    .await?;
    drop(permit);
    let hello = terminalwire_client::facts::hello(
        &target,
        "load".into(),
        vec!["mixed".into(), requests.to_string(), sessions.to_string()],
    )?;
    // Lines for the app's read_line requests.
    let stdin: Vec<u8> = (0..requests)
        .flat_map(|n| format!("line {n}\n").into_bytes())
        .collect();
    let io = LocalIo {
        stdout: Output::Async(Box::new(Counter(output))),
        stderr: Output::Async(Box::new(tokio::io::sink())),
        stdin: Box::new(std::io::Cursor::new(stdin)),
    };
    Ok(session::run(socket, hello, io, &SessionConfig::default()).await?)
}

/// Runs the load against the bench app at `url` (process `pid`).
pub(crate) fn run(url: &str, pid: u32, sessions: usize, requests: u64) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let before = crate::procfs::rss_kib(pid).context("reading the server's memory")?;
    let output = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let peak = Arc::new(AtomicU64::new(before));
    let results = runtime.block_on(async {
        // Sample the server's memory while the load runs.
        let sampling = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(rss) = crate::procfs::rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let gate = Arc::new(tokio::sync::Semaphore::new(OPENING));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..sessions {
            let (url, output, gate) = (url.to_owned(), output.clone(), gate.clone());
            tasks.spawn(async move {
                tokio::time::timeout(TIMEOUT, session(url, requests, sessions, output, gate))
                    .await
                    .unwrap_or_else(|_| bail!("the session timed out"))
            });
        }
        let mut results = Vec::with_capacity(sessions);
        while let Some(joined) = tasks.join_next().await {
            results.push(
                joined
                    .map_err(anyhow::Error::from)
                    .and_then(|result| result),
            );
        }
        sampling.abort();
        results
    });
    let elapsed = started.elapsed();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|result| match result {
            Ok(0) => None,
            Ok(status) => Some(format!("exit status {status}")),
            Err(error) => Some(format!("{error:#}")),
        })
        .collect();
    let peak = peak.load(Ordering::Relaxed);
    let report = format!(
        "load: {sessions} concurrent sessions (all open before any starts its work), {requests} \
         mixed requests each (read_line, env_get, file_exists, output), in {:.1} s: {} errors; \
         {} MiB of output; server VmRSS {} KiB before, peak {} KiB, {:.1} KiB per session",
        elapsed.as_secs_f64(),
        failures.len(),
        output.load(Ordering::Relaxed) / (1024 * 1024),
        before,
        peak,
        (peak.saturating_sub(before)) as f64 / sessions.max(1) as f64,
    );
    if !failures.is_empty() {
        bail!(
            "{report}\nfirst errors:\n{}",
            failures
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(report)
}
