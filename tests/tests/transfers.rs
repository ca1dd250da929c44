//! Big and many transfers through the real client: 100 MB of piped stdin,
//! a 256 MiB file read and written back in bounded client memory, 100
//! requests in flight at once, and a stalled reader of the client's stdout
//! that must make the app's writer wait instead of filling memory.
//!
//! The tests run one at a time (they measure memory, and this process's
//! memory is shared by every test in it).

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use terminalwire_server::{Context, Exit, Terminal};
use terminalwire_tests::TestServer;
use terminalwire_tests::pattern::Pattern;
use terminalwire_tests::process::{ClientHome, RssSampler, proc_status_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const MIB: u64 = 1024 * 1024;
/// Bound on the client's peak resident memory during a transfer.
const CLIENT_PEAK_LIMIT: u64 = 64 * MIB;
/// Bound on how much this process (the server) may grow during a transfer.
const SERVER_GROWTH_LIMIT: u64 = 128 * MIB;
/// How long one transfer may take before the test fails as hung (generous:
/// a debug build encrypts and decrypts every byte slowly).
const DEADLINE: Duration = Duration::from_secs(600);

/// One transfer test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The pid of the client a test spawned, for the app to look at.
#[derive(Clone)]
struct ClientPid(Arc<watch::Sender<Option<u32>>>);

impl ClientPid {
    fn new() -> ClientPid {
        ClientPid(Arc::new(watch::channel(None).0))
    }

    fn set(&self, pid: u32) {
        self.0.send_replace(Some(pid));
    }

    async fn get(&self) -> u32 {
        let mut pid = self.0.subscribe();
        let pid = *pid.wait_for(Option::is_some).await.unwrap();
        pid.unwrap()
    }

    /// The client's peak resident memory so far (`VmHWM`).
    async fn peak_rss(&self) -> u64 {
        proc_status_bytes(Some(self.get().await), "VmHWM").unwrap()
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabytes_of_piped_stdin_arrive_byte_exact() {
    const BYTES: u64 = 100_000_000;
    const PATTERN: Pattern = Pattern::new(100);
    let _serial = SERIAL.lock().await;
    let pid = ClientPid::new();
    let app_pid = pid.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let pid = app_pid.clone();
        async move {
            let mut received = 0u64;
            let mut mismatch = None;
            loop {
                let chunk = ctx.stdin().read_chunk(256 * 1024).await?;
                if chunk.is_empty() {
                    break;
                }
                if mismatch.is_none() {
                    mismatch = PATTERN.first_mismatch(received, &chunk);
                }
                received += chunk.len() as u64;
            }
            let peak = pid.peak_rss().await;
            ctx.stdout()
                .println(format!(
                    "received {received} mismatch {mismatch:?} client peak {peak}"
                ))
                .await?;
            anyhow::Ok(Exit(0))
        }
    });
    let server = TestServer::with_terminal(terminal).await;
    let home = ClientHome::new();
    let started = Instant::now();
    let mut child = home
        .command([server.url().as_str(), "stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    pid.set(child.id().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let feeder = tokio::spawn(async move {
        let mut block = vec![0; 1 << 20];
        let mut offset = 0;
        while offset < BYTES {
            let n = block.len().min((BYTES - offset) as usize);
            PATTERN.fill_at(offset, &mut block[..n]);
            stdin.write_all(&block[..n]).await?;
            offset += n as u64;
        }
        // Dropping stdin is the end of input.
        std::io::Result::Ok(offset)
    });
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the client hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(feeder.await.unwrap().unwrap(), BYTES);
    let prefix = format!("received {BYTES} mismatch None client peak ");
    let peak: u64 = stdout
        .trim()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("stdout: {stdout} stderr: {stderr}"))
        .parse()
        .unwrap();
    assert!(peak < CLIENT_PEAK_LIMIT, "client peak RSS {}", mib(peak));
    eprintln!(
        "100 MB stdin: {:?}, client peak RSS {}",
        started.elapsed(),
        mib(peak)
    );
}

/// What the round-trip app saw.
#[derive(Debug, Default)]
struct RoundTrip {
    read: u64,
    mismatch: Option<u64>,
    client_peak: u64,
    storage: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_file_round_trips_byte_exact_in_bounded_memory() {
    const BYTES: u64 = 256 * MIB;
    const PATTERN: Pattern = Pattern::new(256);
    let _serial = SERIAL.lock().await;
    let pid = ClientPid::new();
    let report = Arc::new(std::sync::Mutex::new(RoundTrip::default()));
    let app_pid = pid.clone();
    let app_report = report.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let pid = app_pid.clone();
        let report = app_report.clone();
        async move {
            let from = ctx.storage_path("big.in").unwrap();
            let to = ctx.storage_path("big.out").unwrap();
            let mut reader = ctx.file().reader(&from);
            let mut writer = ctx.file().writer(&to).await?;
            let mut read = 0u64;
            let mut mismatch = None;
            while let Some(chunk) = reader.next_chunk().await? {
                if mismatch.is_none() {
                    mismatch = PATTERN.first_mismatch(read, &chunk);
                }
                read += chunk.len() as u64;
                writer.write(&chunk).await?;
            }
            writer.commit().await?;
            let client_peak = pid.peak_rss().await;
            *report.lock().unwrap() = RoundTrip {
                read,
                mismatch,
                client_peak,
                storage: ctx.client().storage.clone(),
            };
            anyhow::Ok(Exit(0))
        }
    });
    let home = ClientHome::new();
    let server = TestServer::with_terminal(terminal).await;
    let storage = home.storage_dir(&server.url());
    let started = Instant::now();
    PATTERN.write_file(&storage.join("big.in"), BYTES).unwrap();
    let written = started.elapsed();
    let sampler = RssSampler::start();
    let child = home
        .command([server.url().as_str(), "copy"])
        .spawn()
        .unwrap();
    pid.set(child.id().unwrap());
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the client hung")
        .unwrap();
    let transferred = started.elapsed() - written;
    let server_growth = sampler.growth();
    drop(sampler);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::mem::take(&mut *report.lock().unwrap());
    assert_eq!(
        report.storage.as_deref(),
        Some(storage.to_str().unwrap()),
        "the client's storage folder is not where the test put the file"
    );
    assert_eq!(report.read, BYTES);
    assert_eq!(report.mismatch, None, "the app read different bytes");
    PATTERN
        .check_file(&storage.join("big.out"), BYTES)
        .unwrap_or_else(|error| panic!("the written copy is wrong: {error}"));
    assert!(
        report.client_peak < CLIENT_PEAK_LIMIT,
        "client peak RSS {}",
        mib(report.client_peak)
    );
    assert!(
        server_growth < SERVER_GROWTH_LIMIT,
        "the server's memory grew by {}",
        mib(server_growth)
    );
    eprintln!(
        "256 MiB round trip: writing the file {written:?}, transfer {transferred:?}, \
         client peak RSS {}, server growth {}",
        mib(report.client_peak),
        mib(server_growth)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_from_one_session_complete() {
    const REQUESTS: usize = 100;
    let _serial = SERIAL.lock().await;
    let terminal = Terminal::new(|ctx: Context| async move {
        let files = ctx.file();
        let answers = futures_util::future::join_all((0..REQUESTS).map(|i| {
            let files = files.clone();
            let path = ctx.storage_path(&format!("f{i:03}")).unwrap();
            async move { files.metadata(&path).await }
        }))
        .await;
        let mut wrong = Vec::new();
        for (i, answer) in answers.iter().enumerate() {
            let expected = (i % 2 == 0).then_some(i as u64 * 3 + 1);
            let got = match answer {
                Ok(meta) => Ok(meta.as_ref().map(|meta| meta.size)),
                Err(error) => Err(error.to_string()),
            };
            if got != Ok(expected) {
                wrong.push(format!("f{i:03}: {got:?}, expected {expected:?}"));
            }
        }
        ctx.stdout()
            .println(format!("{} answers, wrong: {wrong:?}", answers.len()))
            .await?;
        anyhow::Ok(Exit(if wrong.is_empty() { 0 } else { 1 }))
    });
    let home = ClientHome::new();
    let server = TestServer::with_terminal(terminal).await;
    let storage = home.storage_dir(&server.url());
    // Even files exist with distinct sizes; odd ones do not.
    for i in (0..REQUESTS).step_by(2) {
        std::fs::write(storage.join(format!("f{i:03}")), vec![b'x'; i * 3 + 1]).unwrap();
    }
    let started = Instant::now();
    let child = home
        .command([server.url().as_str(), "many"])
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the client hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout} stderr: {stderr}"
    );
    assert_eq!(stdout, format!("{REQUESTS} answers, wrong: []\n"));
    eprintln!("{REQUESTS} concurrent requests: {:?}", started.elapsed());
}

/// A client file copied with `tokio::io::copy` from a `FileReader` into a
/// `FileWriter` (the SDK's AsyncRead and AsyncWrite), then committed,
/// arrives byte-exact; an uncommitted one leaves no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_copied_through_async_read_and_write_arrives_whole() {
    const BYTES: usize = 3 * 1024 * 1024 + 12_345;
    const PATTERN: Pattern = Pattern::new(7);
    let _serial = SERIAL.lock().await;
    let terminal = Terminal::new(|ctx: Context| async move {
        let from = ctx.storage_path("copy.in").unwrap();
        let to = ctx.storage_path("copy.out").unwrap();
        let mut reader = ctx.file().reader(&from);
        let mut writer = ctx.file().writer(&to).await?;
        let copied = tokio::io::copy(&mut reader, &mut writer).await?;
        writer.shutdown().await?;
        writer.commit().await?;
        let mut unfinished = ctx
            .file()
            .writer(&ctx.storage_path("unfinished").unwrap())
            .await?;
        unfinished.write_all(b"never committed").await?;
        unfinished.flush().await?;
        drop(unfinished);
        ctx.stdout().println(format!("copied {copied}")).await?;
        anyhow::Ok(Exit(0))
    });
    let home = ClientHome::new();
    let server = TestServer::with_terminal(terminal).await;
    let storage = home.storage_dir(&server.url());
    let mut input = vec![0; BYTES];
    PATTERN.fill_at(0, &mut input);
    std::fs::write(storage.join("copy.in"), &input).unwrap();
    let child = home
        .command([server.url().as_str(), "copy"])
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the client hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, format!("copied {BYTES}\n"));
    let copy = std::fs::read(storage.join("copy.out")).unwrap();
    assert_eq!(PATTERN.first_mismatch(0, &copy), None);
    assert_eq!(copy.len(), BYTES);
    assert!(
        !storage.join("unfinished").exists(),
        "an uncommitted write left its file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_reader_makes_the_app_wait_instead_of_buffering() {
    /// Well beyond what flow control lets the app get ahead by.
    const BYTES: u64 = 32 * MIB;
    const BLOCK: usize = 64 * 1024;
    const FIRST_READ: usize = 4096;
    /// What the app may get ahead of a stalled reader: the 1 MiB window,
    /// the pipe's buffer and what the client has taken from the socket.
    const AHEAD_LIMIT: u64 = 8 * MIB;
    const PATTERN: Pattern = Pattern::new(7);
    let _serial = SERIAL.lock().await;
    let progress = Arc::new(AtomicU64::new(0));
    let app_progress = progress.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let progress = app_progress.clone();
        async move {
            let out = ctx.stdout();
            let mut block = vec![0; BLOCK];
            let mut offset = 0;
            while offset < BYTES {
                let n = block.len().min((BYTES - offset) as usize);
                PATTERN.fill_at(offset, &mut block[..n]);
                out.write_all(&block[..n]).await?;
                offset += n as u64;
                progress.store(offset, Ordering::SeqCst);
            }
            anyhow::Ok(Exit(0))
        }
    });
    let home = ClientHome::new();
    let server = TestServer::with_terminal(terminal).await;
    let sampler = RssSampler::start();
    let started = Instant::now();
    let mut child = home
        .command([server.url().as_str(), "flood"])
        .spawn()
        .unwrap();
    let client_pid = child.id().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = vec![0; FIRST_READ];
    stdout.read_exact(&mut first).await.unwrap();
    assert_eq!(PATTERN.first_mismatch(0, &first), None);

    // Stop reading; wait until the app makes no progress for a second of
    // polls (bounded), then check how far ahead of the reader it got.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = progress.load(Ordering::SeqCst);
    let mut still = 0;
    while still < 50 {
        assert!(
            Instant::now() < deadline,
            "the app never stopped writing; {} written",
            mib(last)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = progress.load(Ordering::SeqCst);
        if now == last {
            still += 1;
        } else {
            (last, still) = (now, 0);
        }
    }
    let client_rss = proc_status_bytes(Some(client_pid), "VmRSS").unwrap();
    let stalled_growth = sampler.growth();
    assert!(
        last < AHEAD_LIMIT,
        "the app wrote {} while the reader had taken {FIRST_READ} bytes",
        mib(last)
    );
    assert!(
        client_rss < CLIENT_PEAK_LIMIT,
        "client RSS {} while stalled",
        mib(client_rss)
    );

    // Read on: everything arrives, in order, byte-exact.
    let mut offset = FIRST_READ as u64;
    let mut buffer = vec![0; 1 << 20];
    let reading = async {
        loop {
            let n = stdout.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            if let Some(at) = PATTERN.first_mismatch(offset, &buffer[..n]) {
                panic!("stdout differs at byte {at}");
            }
            offset += n as u64;
        }
    };
    tokio::time::timeout(DEADLINE, reading)
        .await
        .expect("the client's stdout did not end");
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the client hung")
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(offset, BYTES);
    let server_growth = sampler.growth();
    assert!(
        server_growth < SERVER_GROWTH_LIMIT,
        "the server's memory grew by {}",
        mib(server_growth)
    );
    eprintln!(
        "stalled reader: app stopped {} ahead (server growth then {}, client RSS {}); \
         {} through in {:?}, server growth {}",
        mib(last),
        mib(stalled_growth),
        mib(client_rss),
        mib(BYTES),
        started.elapsed(),
        mib(server_growth)
    );
}
