//! Runs every figure: starts the servers, runs the clients and their
//! baselines interleaved, and writes the report.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use terminalwire_policy::{Authority, Home, Policy};
use terminalwire_protocol::linger;

use crate::report::{Figure, Report, Unit, check, times};
use crate::ssh::Sshd;
use crate::stats::Samples;
use crate::{idle, procfs};

/// The storage quota the bench gives its apps: figure 4's files and more.
const BENCH_STORAGE_QUOTA_MIB: u64 = 64 * 1024;

/// What to run and where to write.
#[derive(Debug)]
pub(crate) struct Options {
    /// Small sizes, one or two runs.
    pub(crate) quick: bool,
    /// The report's path.
    pub(crate) output: Option<PathBuf>,
    /// The terminalwire client binary.
    pub(crate) client: Option<PathBuf>,
    /// The folder of the bench-only plaintext build (figure 6, E2E off).
    pub(crate) plaintext_dir: Option<PathBuf>,
    /// Install openssh-server when missing.
    pub(crate) install_ssh: bool,
    /// Only these figures (all when empty).
    pub(crate) figures: Vec<u8>,
    /// How the bench's own servers are set up.
    pub(crate) tuning: Tuning,
}

/// Settings of the bench app and the raw server (defaults: the SDK's).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tuning {
    /// Leave Nagle's algorithm on in the bench app's connections.
    pub(crate) nagle: bool,
    /// WebSocket read buffer of the bench app and the raw server.
    pub(crate) read_buffer: Option<usize>,
}

impl Tuning {
    /// Arguments that start the bench app.
    fn app_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()];
        if self.nagle {
            args.push("--nagle".into());
        }
        if let Some(size) = self.read_buffer {
            args.extend(["--read-buffer".into(), size.to_string()]);
        }
        args
    }

    /// Arguments that start the raw WebSocket server.
    fn raw_args(&self) -> Vec<String> {
        let mut args: Vec<String> =
            vec!["raw-serve".into(), "--listen".into(), "127.0.0.1:0".into()];
        if let Some(size) = self.read_buffer {
            args.extend(["--read-buffer".into(), size.to_string()]);
        }
        args
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// The size of the login token that figure 1's `token` command reads.
const COLD_TOKEN_BYTES: usize = 64;

/// Sizes and repetitions of one run.
#[derive(Debug, Clone)]
struct Sizes {
    /// Timed runs of each cold command (after one untimed warm-up).
    cold_runs: usize,
    /// Timed runs of each throughput measurement.
    runs: usize,
    /// Bytes streamed to stdout.
    stream_bytes: u64,
    /// Requests per request measurement.
    requests: u64,
    /// Requests in flight when pipelined.
    in_flight: u64,
    /// Size of the transferred file.
    file_bytes: u64,
    /// Smaller file size, to show that memory does not grow with the size.
    small_file_bytes: u64,
    /// Idle sessions held at once.
    sessions: usize,
    /// Repetitions of the idle-session measurement (each with fresh servers).
    idle_runs: usize,
}

impl Sizes {
    fn full() -> Self {
        Sizes {
            cold_runs: 11,
            runs: 5,
            stream_bytes: GIB,
            requests: 100_000,
            in_flight: 64,
            file_bytes: GIB,
            small_file_bytes: 64 * MIB,
            sessions: 10_000,
            idle_runs: 3,
        }
    }

    fn quick() -> Self {
        Sizes {
            cold_runs: 2,
            runs: 1,
            stream_bytes: 16 * MIB,
            requests: 2_000,
            in_flight: 64,
            file_bytes: 16 * MIB,
            small_file_bytes: 4 * MIB,
            sessions: 200,
            idle_runs: 1,
        }
    }
}

/// A server process started by the bench; killed when dropped.
#[derive(Debug)]
struct Server {
    child: Child,
    /// Kept open: the server may write more.
    _stdout: BufReader<ChildStdout>,
    /// What it announced after `listening on `.
    url: String,
}

impl Server {
    /// Starts `program ARGS` and waits for its `listening on URL` line.
    fn start<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
        program: &Path,
        args: &[S],
    ) -> anyhow::Result<Server> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {args:?}", program.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} {args:?} did not announce its address",
                program.display()
            );
        };
        Ok(Server {
            url: url.to_owned(),
            child,
            _stdout: stdout,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` (stdin null, stderr captured, stdout as set by the
/// caller) and returns its wall time from spawn to exit and its stdout.
/// `spawned` gets the child's process id.
fn timed(
    command: &mut Command,
    what: &str,
    spawned: impl FnOnce(u32),
) -> anyhow::Result<(Duration, Vec<u8>)> {
    command.stdin(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    spawned(child.id());
    let output = child.wait_with_output()?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok((elapsed, output.stdout))
}

/// The number after `key=` in a `key=value ...` line.
fn field(stdout: &[u8], key: &str) -> anyhow::Result<f64> {
    let text = String::from_utf8_lossy(stdout);
    text.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("no {key}= in {text:?}"))?
        .parse()
        .with_context(|| format!("bad {key}= in {text:?}"))
}

/// A terminalwire endpoint of the bench app: its URL, the client binary
/// that talks to it and the client options it needs.
#[derive(Debug)]
struct Endpoint {
    server: Server,
    /// The terminalwire client binary run against it.
    client: PathBuf,
    /// Client options before the URL (`--ca-cert` for TLS).
    options: Vec<String>,
}

impl Endpoint {
    /// Starts the bench app `exe` with `args` (over `ws://`), for `client`.
    fn start_app(exe: &Path, args: &[String], client: PathBuf) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            server: Server::start(exe, args)?,
            client,
            options: Vec::new(),
        })
    }

    /// `127.0.0.1:PORT`.
    fn authority(&self) -> &str {
        let url = &self.server.url;
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        rest.split('/').next().unwrap_or("")
    }
}

/// One terminalwire file transfer: MB/s, and peak memory of client and server in MiB.
struct Transfer {
    rate: f64,
    client_mib: f64,
    server_mib: f64,
}

/// Everything a run shares.
struct Bench {
    sizes: Sizes,
    quick: bool,
    tuning: Tuning,
    /// This executable (the servers and the raw client).
    exe: PathBuf,
    tmp: tempfile::TempDir,
    /// `TERMINALWIRE_HOME` of the client runs.
    home: PathBuf,
    /// The bench app over `ws://`.
    app: Endpoint,
    /// The bench app on one worker thread over `ws://` (figure 3), or why not.
    app_one_worker: Result<Endpoint, String>,
    /// The bench app over `wss://`, or why not.
    tls: Result<Endpoint, String>,
    /// The plaintext build of the bench app over `ws://`, with the plaintext
    /// build of the client (end-to-end encryption off), or why not.
    plaintext: Result<Endpoint, String>,
    raw: Server,
    /// The blocking TCP echo server (the machine's round-trip floor).
    tcp_echo: Server,
    ssh: Result<Sshd, String>,
}

impl Bench {
    /// `terminalwire [OPTIONS] URL ARGS...` with the bench's terminalwire home.
    fn terminalwire(&self, endpoint: &Endpoint, args: &[&str]) -> Command {
        self.terminalwire_with(&endpoint.client, endpoint, args)
    }

    /// [`terminalwire`](Bench::terminalwire) with this client binary.
    fn terminalwire_with(&self, client: &Path, endpoint: &Endpoint, args: &[&str]) -> Command {
        let mut command = Command::new(client);
        command
            .args(&endpoint.options)
            .arg(&endpoint.server.url)
            .args(args)
            .env("TERMINALWIRE_HOME", &self.home)
            .env_remove("TERMINALWIRE_LOG")
            .env_remove("CLICOLOR_FORCE");
        command
    }

    /// `terminalwire-bench raw-client RAW_URL ARGS...`.
    fn raw_client(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.exe);
        command.arg("raw-client").arg(&self.raw.url).args(args);
        command
    }

    fn ssh_missing(&self) -> Option<String> {
        self.ssh
            .as_ref()
            .err()
            .map(|reason| format!("ssh baseline unavailable: {reason}"))
    }

    /// `measured`, or why ssh could not be measured.
    fn ssh_or(&self, measured: String) -> String {
        self.ssh_missing().unwrap_or(measured)
    }

    /// Wall time of `terminalwire URL hello x`, in ms.
    fn cold_once(&self, endpoint: &Endpoint) -> anyhow::Result<f64> {
        let (elapsed, stdout) = timed(
            self.terminalwire(endpoint, &["hello", "x"])
                .stdout(Stdio::piped()),
            "terminalwire hello",
            |_| {},
        )?;
        if stdout != b"Hello, x!\n" {
            bail!(
                "terminalwire hello printed {:?}",
                String::from_utf8_lossy(&stdout)
            );
        }
        Ok(millis(elapsed))
    }

    /// Wall time of `terminalwire URL token` (one file read), in ms.
    fn cold_token_once(&self, endpoint: &Endpoint) -> anyhow::Result<f64> {
        let (elapsed, stdout) = timed(
            self.terminalwire(endpoint, &["token"])
                .stdout(Stdio::piped()),
            "terminalwire token",
            |_| {},
        )?;
        let expected = format!("token of {COLD_TOKEN_BYTES} bytes\n");
        if stdout != expected.as_bytes() {
            bail!(
                "terminalwire token printed {:?}",
                String::from_utf8_lossy(&stdout)
            );
        }
        Ok(millis(elapsed))
    }

    /// MB/s of `terminalwire URL stream BYTES > /dev/null`.
    fn stream_once(&self, endpoint: &Endpoint) -> anyhow::Result<f64> {
        let bytes = self.sizes.stream_bytes;
        let (elapsed, _) = timed(
            self.terminalwire(endpoint, &["stream", &bytes.to_string()])
                .stdout(Stdio::null()),
            "terminalwire stream",
            |_| {},
        )?;
        Ok(rate(bytes, elapsed))
    }

    /// Requests per second of the app's `exists` (in_flight 1) or
    /// `exists-pipelined`.
    fn requests_once(&self, endpoint: &Endpoint, in_flight: u64) -> anyhow::Result<f64> {
        let count = self.sizes.requests.to_string();
        let k = in_flight.to_string();
        let args: &[&str] = if in_flight <= 1 {
            &["exists", &count]
        } else {
            &["exists-pipelined", &count, &k]
        };
        let (_, stdout) = timed(
            self.terminalwire(endpoint, args).stdout(Stdio::piped()),
            "terminalwire exists",
            |_| {},
        )?;
        Ok(field(&stdout, "n")? / field(&stdout, "secs")?)
    }

    /// Echo round trips per second of the raw WebSocket pair.
    fn raw_echo_once(&self, in_flight: u64) -> anyhow::Result<f64> {
        let (count, k) = (self.sizes.requests.to_string(), in_flight.to_string());
        let (_, stdout) = timed(
            self.raw_client(&["echo", &count, &k])
                .stdout(Stdio::piped()),
            "raw WebSocket echo",
            |_| {},
        )?;
        Ok(field(&stdout, "n")? / field(&stdout, "secs")?)
    }

    /// Round trips per second of TCP ping-pong (two processes), blocking or
    /// polling before blocking.
    fn tcp_ping_pong_once(&self, poll: bool) -> anyhow::Result<f64> {
        let count = self.sizes.requests.to_string();
        let mut command = Command::new(&self.exe);
        command.args(["tcp-ping-pong", &self.tcp_echo.url, &count]);
        if poll {
            command.arg("--poll");
        }
        let (_, stdout) = timed(command.stdout(Stdio::piped()), "TCP ping-pong", |_| {})?;
        Ok(field(&stdout, "n")? / field(&stdout, "secs")?)
    }

    /// The app's storage folder on the client for `endpoint`, created.
    fn storage_dir(&self, endpoint: &Endpoint) -> anyhow::Result<PathBuf> {
        let home = Home::at(&self.home);
        let authority = Authority::parse(endpoint.authority())?;
        let storage = home.storage_dir(&authority);
        std::fs::create_dir_all(&storage)?;
        // Figure 4 keeps two files of up to 1 GiB there, over the default
        // quota: raised as a user would (`terminalwire entitlement quota`).
        let policy_file = home.policy_file(&authority);
        let mut policy = Policy::load(&policy_file)?;
        if policy.storage_quota_mib.is_none() {
            policy.storage_quota_mib = Some(BENCH_STORAGE_QUOTA_MIB);
            policy.save(&policy_file)?;
        }
        Ok(storage)
    }

    /// The app's storage folder on the client for `endpoint`, with
    /// `read.bin` (a link to `source`) and `small.bin` (`small` bytes) in it.
    fn prepare_storage(&self, endpoint: &Endpoint, source: &Path) -> anyhow::Result<PathBuf> {
        let storage = self.storage_dir(endpoint)?;
        let read_path = storage.join("read.bin");
        let _ = std::fs::remove_file(&read_path);
        std::fs::hard_link(source, &read_path)?;
        write_file(&storage.join("small.bin"), self.sizes.small_file_bytes)?;
        Ok(storage)
    }

    /// One terminalwire transfer: `fileread NAME` (`write` false) or
    /// `filewrite write.bin BYTES` of `bytes` bytes.
    fn transfer(
        &self,
        endpoint: &Endpoint,
        storage: &Path,
        write: bool,
        name: &str,
        bytes: u64,
    ) -> anyhow::Result<Transfer> {
        let pid_file = self.tmp.path().join("client.pid");
        let pid_arg = pid_file.display().to_string();
        let count = bytes.to_string();
        let args: Vec<&str> = if write {
            vec!["filewrite", name, &count, &pid_arg]
        } else {
            vec!["fileread", name, &pid_arg]
        };
        if write {
            let _ = std::fs::remove_file(storage.join(name));
        }
        let (elapsed, stdout) = timed(
            self.terminalwire(endpoint, &args).stdout(Stdio::piped()),
            &format!("terminalwire {}", args[0]),
            |pid| {
                let _ = std::fs::write(&pid_file, pid.to_string());
            },
        )?;
        if write {
            let _ = std::fs::remove_file(storage.join(name));
        }
        let moved = field(&stdout, "bytes")?;
        if moved as u64 != bytes {
            bail!("terminalwire {} moved {moved} bytes, not {bytes}", args[0]);
        }
        Ok(Transfer {
            rate: rate(bytes, elapsed),
            client_mib: field(&stdout, "client_peak_kib")? / 1024.0,
            server_mib: field(&stdout, "server_peak_kib")? / 1024.0,
        })
    }

    /// The source file of the transfers, created once.
    fn source_file(&self) -> anyhow::Result<PathBuf> {
        let source = self.tmp.path().join("data.bin");
        let len = std::fs::metadata(&source).map_or(0, |meta| meta.len());
        if len != self.sizes.file_bytes {
            write_file(&source, self.sizes.file_bytes)?;
        }
        Ok(source)
    }

    fn cold(&self) -> anyhow::Result<Figure> {
        let mut figure = Figure::new("1. Cold command: one short command, process start to exit");
        figure.setup = vec![
            "terminalwire: the real client process `terminalwire ws://127.0.0.1:PORT/terminal hello x` \
             (connect, WebSocket upgrade, secure handshake, hello, command, exit)."
                .into(),
            "ssh: `ssh -p PORT 127.0.0.1 echo hello`, ed25519 key auth, to the bench's own sshd \
             (a fresh connection each time: no ControlMaster)."
                .into(),
            "curl: `curl -sS http://127.0.0.1:PORT/hello`, one HTTP request to the same app process."
                .into(),
            format!(
                "terminalwire token: `terminalwire URL token`, a command that reads a \
                 {COLD_TOKEN_BYTES}-byte file in the app's storage folder on the client (what a \
                 command of a logged-in user does first: one request, checked against the \
                 entitlements and written to the audit log) and prints its length."
            ),
            format!(
                "{} timed runs of each, interleaved, after one untimed warm-up run (which also \
                 pins the server's identity: first contact). After each ssh or scp run (here and \
                 in figures 2 and 4) the bench waits until sshd's session process has exited, so \
                 that its cleanup does not run during the next measurement.",
                self.sizes.cold_runs
            ),
        ];
        let sshd = self.ssh.as_ref().ok();
        let http = format!("http://{}/hello", self.app.authority());
        let storage = self.storage_dir(&self.app)?;
        std::fs::write(storage.join("token"), [b't'; COLD_TOKEN_BYTES])?;
        let mut ours = Samples::new();
        let mut token = Samples::new();
        let mut ssh = Samples::new();
        let mut curl = Samples::new();
        let mut curl_missing = None;
        for run in 0..=self.sizes.cold_runs {
            let elapsed = self.cold_once(&self.app)?;
            if run > 0 {
                ours.push(elapsed);
            }
            let elapsed = self.cold_token_once(&self.app)?;
            if run > 0 {
                token.push(elapsed);
            }
            if let Some(sshd) = sshd {
                let (elapsed, stdout) = timed(
                    sshd.ssh("echo hello").stdout(Stdio::piped()),
                    "ssh echo hello",
                    |_| {},
                )?;
                sshd.settle();
                if stdout != b"hello\n" {
                    bail!("ssh echo printed {:?}", String::from_utf8_lossy(&stdout));
                }
                if run > 0 {
                    ssh.push(millis(elapsed));
                }
            }
            if curl_missing.is_none() {
                match timed(
                    Command::new("curl")
                        .args(["-sS", "--fail", "--noproxy", "*"])
                        .arg(&http)
                        .stdout(Stdio::piped()),
                    "curl",
                    |_| {},
                ) {
                    Ok((elapsed, stdout)) if stdout == b"Hello, x!\n" => {
                        if run > 0 {
                            curl.push(millis(elapsed));
                        }
                    }
                    Ok((_, stdout)) => {
                        bail!("curl printed {:?}", String::from_utf8_lossy(&stdout))
                    }
                    Err(error) => {
                        curl_missing = Some(format!("curl baseline unavailable: {error:#}"))
                    }
                }
            }
        }
        let ssh_row =
            sshd.map(|_| figure.row("ssh echo hello (key auth)", Unit::Millis, ssh, None));
        let curl_row = curl_missing
            .is_none()
            .then(|| figure.row("curl one HTTP request", Unit::Millis, curl, None));
        let ours_row = figure.row("terminalwire hello x", Unit::Millis, ours, ssh_row);
        figure.row(
            "terminalwire token (one file read)",
            Unit::Millis,
            token,
            ssh_row,
        );
        figure.missing.extend(self.ssh_missing());
        figure.missing.extend(curl_missing);
        if let Some(curl_row) = curl_row {
            let ratio = figure.median(ours_row) / figure.median(curl_row);
            figure
                .setup
                .push(format!("terminalwire / curl (median): {}.", times(ratio)));
        }
        let median = figure.median(ours_row);
        figure.target(
            "≤ 5 ms median",
            figure.shown(ours_row),
            check(median, |v| v <= 5.0),
        );
        let ratio = figure.ratio(ours_row);
        figure.target(
            "≤ 0.2× ssh",
            self.ssh_or(times(ratio)),
            check(ratio, |v| v <= 0.2),
        );
        Ok(figure)
    }

    fn stream(&self) -> anyhow::Result<Figure> {
        let bytes = self.sizes.stream_bytes;
        let mut figure = Figure::new("2. stdout streaming: the app writes to the client's stdout");
        figure.setup = vec![
            format!(
                "{} to `/dev/null` in each run; MB/s = 10^6 bytes per second of the client process's \
                 wall time from start to exit.",
                size(bytes)
            ),
            "terminalwire: the app writes 64 KiB at a time (`ctx.stdout().write_all`); \
             `terminalwire URL stream BYTES > /dev/null`."
                .into(),
            "raw WebSocket: a tokio-tungstenite server sends the same bytes as 64 KiB binary messages \
             to a tokio-tungstenite client process that writes them to `/dev/null`: no protocol, \
             no flow control, no encryption (the transport's limit). Its messages start as far \
             into their allocation as terminalwire's (`MESSAGE_LEAD`), so that tungstenite copies \
             both at the same speed (see the `memcpy` machine fact)."
                .into(),
            format!("ssh: `ssh -p PORT 127.0.0.1 'head -c {bytes} /dev/zero' > /dev/null`."),
            "plain TCP: the same bytes in 64 KiB `write`s over one loopback TCP connection \
             between two processes with `std::net` sockets, the receiver writing them to \
             `/dev/null` (128 KiB reads, as many as the raw WebSocket client's): no WebSocket, no \
             async runtime, what the kernel gives a plain program, for reference. On the \
             virtual machine these figures were first made on, its speed changed from run to \
             run by as much as two to one with nothing changed (bench/PROFILE.md)."
                .into(),
            format!("{} runs of each, interleaved.", self.sizes.runs),
        ];
        let sshd = self.ssh.as_ref().ok();
        let count = bytes.to_string();
        let (mut ours, mut raw, mut ssh) = (Samples::new(), Samples::new(), Samples::new());
        let mut tcp = Samples::new();
        for _ in 0..self.sizes.runs {
            ours.push(self.stream_once(&self.app)?);
            let (elapsed, _) = timed(
                self.raw_client(&["stream", &count]).stdout(Stdio::null()),
                "raw WebSocket client",
                |_| {},
            )?;
            raw.push(rate(bytes, elapsed));
            let (elapsed, _) = timed(
                Command::new(&self.exe)
                    .args(["tcp-stream", &self.tcp_echo.url, &count])
                    .stdout(Stdio::null()),
                "plain TCP stream",
                |_| {},
            )?;
            tcp.push(rate(bytes, elapsed));
            if let Some(sshd) = sshd {
                let (elapsed, _) = timed(
                    sshd.ssh(&format!("head -c {bytes} /dev/zero"))
                        .stdout(Stdio::null()),
                    "ssh head",
                    |_| {},
                )?;
                sshd.settle();
                ssh.push(rate(bytes, elapsed));
            }
        }
        figure.row("plain TCP", Unit::MegabytesPerSec, tcp, None);
        let raw_row = figure.row("raw WebSocket", Unit::MegabytesPerSec, raw, None);
        let ssh_row = sshd.map(|_| figure.row("ssh head -c", Unit::MegabytesPerSec, ssh, None));
        let ours_row = figure.row(
            "terminalwire stream",
            Unit::MegabytesPerSec,
            ours,
            Some(raw_row),
        );
        figure.missing.extend(self.ssh_missing());
        let ratio = figure.ratio(ours_row);
        figure.target(
            "≥ 70 % of raw WebSocket",
            format!("{:.0} %", ratio * 100.0),
            check(ratio, |v| v >= 0.7),
        );
        let vs_ssh = ssh_row.map_or(f64::NAN, |row| figure.median(ours_row) / figure.median(row));
        if !vs_ssh.is_nan() {
            figure
                .setup
                .push(format!("terminalwire / ssh (median): {}.", times(vs_ssh)));
        }
        figure.target(
            "faster than ssh",
            self.ssh_or(format!("{} of ssh", times(vs_ssh))),
            check(vs_ssh, |v| v > 1.0),
        );
        Ok(figure)
    }

    fn requests(&self) -> anyhow::Result<Figure> {
        let n = self.sizes.requests;
        let k = self.sizes.in_flight;
        let mut figure = Figure::new("3. Request round trips: small requests issued by the app");
        figure.setup = vec![
            format!(
                "terminalwire: the app issues {n} `ctx.file().exists(path)` requests for a missing file \
                 in its storage folder (each checked against the entitlements and answered by the \
                 client), one at a time, then with {k} in flight (`buffer_unordered({k})`); the \
                 app times them."
            ),
            format!(
                "raw WebSocket: {n} echo round trips of a 52-byte binary message between a \
                 tokio-tungstenite client and server processes, one at a time, then {k} in flight."
            ),
            format!(
                "TCP ping-pong: {n} round trips of 52 bytes over one loopback TCP connection \
                 between two processes with `std::net` sockets (no WebSocket, no async \
                 runtime, TCP_NODELAY): the machine's floor for one round trip at a time. On this \
                 virtual machine a process that waits lets its CPU idle, and waking an idle \
                 virtual CPU costs tens of microseconds, so an idle machine does fewer sequential \
                 round trips than a busy one. Blocking: each end sleeps in `read`. Polling: each \
                 end first polls its non-blocking socket for {} µs, and its CPU stays awake.",
                crate::raw::TCP_POLL.as_micros()
            ),
            format!(
                "terminalwire lingers much as the polling ping-pong does: after sending answers \
                 the client polls for the server's next request for up to {} µs, once a round \
                 trip took at most {} µs, and a request alone in flight polls for its answer for \
                 up to {} µs, once a round trip took at most {} µs (`linger` in the client's and \
                 the SDK's configuration). The raw WebSocket echo, figure 3's baseline, does \
                 not: it is tokio-tungstenite as it comes; the polling ping-pong is the floor \
                 for ends that linger.",
                linger::CLIENT_BUDGET.as_micros(),
                linger::CLIENT_BUDGET.as_micros() * u128::from(linger::WORTH_FACTOR),
                linger::DEFAULT_BUDGET.as_micros(),
                linger::DEFAULT_BUDGET.as_micros() * u128::from(linger::WORTH_FACTOR)
            ),
            "The bench app runs on tokio's multi-threaded runtime with a worker per CPU, like a \
             web app; the row \"one worker thread\" runs a second bench app process with one \
             (`serve --workers 1`), which leaves the other CPU to the client, as a client on its \
             own machine would have. With two workers, the session's task is moved between \
             them and a worker asleep on the I/O driver is woken for answers that the lingering \
             one cannot poll for."
                .to_owned(),
            format!("{} runs of each, interleaved.", self.sizes.runs),
        ];
        let mut samples: [Samples; 6] = Default::default();
        let mut one_worker = Samples::default();
        for _ in 0..self.sizes.runs {
            samples[4].push(self.tcp_ping_pong_once(false)?);
            samples[5].push(self.tcp_ping_pong_once(true)?);
            samples[0].push(self.raw_echo_once(1)?);
            samples[1].push(self.requests_once(&self.app, 1)?);
            if let Ok(endpoint) = &self.app_one_worker {
                one_worker.push(self.requests_once(endpoint, 1)?);
            }
            samples[2].push(self.raw_echo_once(k)?);
            samples[3].push(self.requests_once(&self.app, k)?);
        }
        let [raw_seq, ours_seq, raw_pipe, ours_pipe, tcp, tcp_polling] = samples;
        let tcp = figure.row(
            "blocking TCP ping-pong, sequential",
            Unit::PerSec,
            tcp,
            None,
        );
        figure.row(
            format!(
                "polling TCP ping-pong ({} µs, then blocking), sequential",
                crate::raw::TCP_POLL.as_micros()
            ),
            Unit::PerSec,
            tcp_polling,
            Some(tcp),
        );
        let raw_seq = figure.row(
            "raw WebSocket echo, sequential",
            Unit::PerSec,
            raw_seq,
            Some(tcp),
        );
        let ours_seq = figure.row(
            "terminalwire file exists, sequential",
            Unit::PerSec,
            ours_seq,
            Some(raw_seq),
        );
        match &self.app_one_worker {
            Ok(_) => {
                figure.row(
                    "terminalwire file exists, sequential, app on one worker thread",
                    Unit::PerSec,
                    one_worker,
                    Some(raw_seq),
                );
            }
            Err(reason) => figure.setup.push(format!(
                "The bench app on one worker thread did not start: {reason}."
            )),
        }

        let raw_pipe = figure.row(
            format!("raw WebSocket echo, {k} in flight"),
            Unit::PerSec,
            raw_pipe,
            None,
        );
        let ours_pipe = figure.row(
            format!("terminalwire file exists, {k} in flight"),
            Unit::PerSec,
            ours_pipe,
            Some(raw_pipe),
        );
        let seq = figure.median(ours_seq);
        figure.target(
            "≥ 50 k/s sequential",
            figure.shown(ours_seq),
            check(seq, |v| v >= 50_000.0),
        );
        let pipe = figure.median(ours_pipe);
        figure.target(
            "≥ 300 k/s pipelined",
            figure.shown(ours_pipe),
            check(pipe, |v| v >= 300_000.0),
        );
        Ok(figure)
    }

    fn files(&self) -> anyhow::Result<Figure> {
        let big = self.sizes.file_bytes;
        let small = self.sizes.small_file_bytes;
        let mut figure = Figure::new("4. File transfer: the app reads, then writes, a client file");
        figure.setup = vec![
            format!(
                "terminalwire read: the app reads a {} file in the app's storage folder on the client \
                 (no grant needed) with the SDK's streaming reader (`ctx.file().reader`: chunks \
                 of 512 KiB, 4 requests in flight, delivered in order) and discards it.",
                size(big)
            ),
            format!(
                "terminalwire write: the app writes {} to a new client file with the SDK's \
                 streaming atomic writer (`ctx.file().writer`: chunks of 512 KiB, 4 in flight, into \
                 a temporary file that the commit syncs to disk and renames over the target; the \
                 client writes whole aligned chunks with direct I/O, past the page cache, where the \
                 file system supports it, as this machine's ext4 does).",
                size(big)
            ),
            "scp: the same file copied over the bench's sshd: upload (the server reads the client's \
             file) `scp FILE 127.0.0.1:/dev/null`; download (the server writes a client file) \
             `scp 127.0.0.1:FILE COPY` (SFTP protocol, OpenSSH's default)."
                .into(),
            "MB/s = 10^6 bytes per second of the client process's wall time from start to exit \
             (scp's includes its ssh handshake). Files live on the same disk; the file read \
             and scp's files are in the page cache."
                .into(),
            format!(
                "Peak memory (VmHWM): the client process's, read by the app right before it \
                 finishes; the server process's, reset when the command starts. Flat memory: the \
                 peak for {} is within 8 MiB of the peak for {}.",
                size(big),
                size(small)
            ),
            format!("{} runs of each, interleaved.", self.sizes.runs),
        ];
        let source = self.source_file()?;
        let storage = self.prepare_storage(&self.app, &source)?;
        let copy = self.tmp.path().join("copy.bin");
        let sshd = self.ssh.as_ref().ok();
        let mut s: [Samples; 8] = Default::default();
        for _ in 0..self.sizes.runs {
            let read = self.transfer(&self.app, &storage, false, "read.bin", big)?;
            s[0].push(read.rate);
            s[1].push(read.client_mib);
            s[2].push(read.server_mib);
            let write = self.transfer(&self.app, &storage, true, "write.bin", big)?;
            s[3].push(write.rate);
            s[4].push(write.client_mib);
            s[5].push(write.server_mib);
            if let Some(sshd) = sshd {
                let (elapsed, _) = timed(
                    sshd.scp(&source.display().to_string(), "127.0.0.1:/dev/null")
                        .stdout(Stdio::null()),
                    "scp upload",
                    |_| {},
                )?;
                sshd.settle();
                s[6].push(rate(big, elapsed));
                let _ = std::fs::remove_file(&copy);
                let (elapsed, _) = timed(
                    sshd.scp(
                        &format!("127.0.0.1:{}", source.display()),
                        &copy.display().to_string(),
                    )
                    .stdout(Stdio::null()),
                    "scp download",
                    |_| {},
                )?;
                sshd.settle();
                s[7].push(rate(big, elapsed));
                let _ = std::fs::remove_file(&copy);
            }
        }
        // Peak memory at the small size, for flatness.
        let small_read = self.transfer(&self.app, &storage, false, "small.bin", small)?;
        let small_write = self.transfer(&self.app, &storage, true, "write.bin", small)?;

        let [
            read,
            read_client,
            read_server,
            write,
            write_client,
            write_server,
            up,
            down,
        ] = s;
        let up_row = sshd.map(|_| figure.row("scp upload", Unit::MegabytesPerSec, up, None));
        let read_row = figure.row("terminalwire read", Unit::MegabytesPerSec, read, up_row);
        let down_row = sshd.map(|_| figure.row("scp download", Unit::MegabytesPerSec, down, None));
        let write_row = figure.row("terminalwire write", Unit::MegabytesPerSec, write, down_row);
        let read_client = figure.row("read: client peak RSS", Unit::MiB, read_client, None);
        let read_server = figure.row("read: server peak RSS", Unit::MiB, read_server, None);
        let write_client = figure.row("write: client peak RSS", Unit::MiB, write_client, None);
        let write_server = figure.row("write: server peak RSS", Unit::MiB, write_server, None);
        figure.missing.extend(self.ssh_missing());
        figure.setup.push(format!(
            "Peak RSS at {}: read client {:.1} MiB, server {:.1} MiB; write client {:.1} MiB, \
             server {:.1} MiB.",
            size(small),
            small_read.client_mib,
            small_read.server_mib,
            small_write.client_mib,
            small_write.server_mib
        ));
        let (read_rate, write_rate) = (figure.median(read_row), figure.median(write_row));
        figure.target(
            "read ≥ 500 MB/s",
            figure.shown(read_row),
            check(read_rate, |v| v >= 500.0),
        );
        figure.target(
            "write ≥ 500 MB/s",
            figure.shown(write_row),
            check(write_rate, |v| v >= 500.0),
        );
        let growth = [
            figure.median(read_client) - small_read.client_mib,
            figure.median(read_server) - small_read.server_mib,
            figure.median(write_client) - small_write.client_mib,
            figure.median(write_server) - small_write.server_mib,
        ];
        let worst = growth.iter().copied().fold(f64::NAN, f64::max);
        figure.target(
            "flat memory (peak RSS grows ≤ 8 MiB from the small to the big file)",
            format!("largest growth {worst:+.1} MiB"),
            check(worst, |v| v <= 8.0),
        );
        Ok(figure)
    }

    fn idle(&self) -> anyhow::Result<Figure> {
        let n = self.sizes.sessions;
        let mut figure = Figure::new("5. Idle sessions: server memory per concurrent idle session");
        figure.setup = vec![
            format!(
                "{n} sessions held open at once against one server process. Each is a WebSocket \
                 opened by a lightweight client in the bench process that runs the real client's \
                 secure handshake and hello (`terminalwire_client::secure::handshake`, \
                 `facts::hello`) and waits until the app's `idle` command prints `ready`; the \
                 command then waits for the client to go."
            ),
            "Per session = (server VmRSS with every session open − VmRSS after 16 sessions were \
             opened and closed) / sessions. A fresh server process for each run."
                .into(),
            format!(
                "raw WebSocket: the same number of tokio-tungstenite connections (default \
                 configuration) held by a tokio-tungstenite server that only reads. {} run(s) of \
                 each.",
                self.sizes.idle_runs
            ),
        ];
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let measure = |server: &Server, raw: bool| -> anyhow::Result<(f64, f64)> {
            let pid = server.pid();
            let warm = runtime.block_on(idle::open(&server.url, 16, raw))?;
            runtime.block_on(async move { drop(warm) });
            std::thread::sleep(Duration::from_millis(300));
            let before = procfs::rss_kib(pid).context("reading the server's memory")?;
            let held = runtime.block_on(idle::open(&server.url, n, raw))?;
            std::thread::sleep(Duration::from_millis(500));
            let after = procfs::rss_kib(pid).context("reading the server's memory")?;
            runtime.block_on(async move { drop(held) });
            Ok((
                (after as f64 - before as f64) / n as f64,
                after as f64 / 1024.0,
            ))
        };
        let (mut ours, mut raw) = (Samples::new(), Samples::new());
        let (mut ours_total, mut raw_total) = (Samples::new(), Samples::new());
        for _ in 0..self.sizes.idle_runs {
            let server = Server::start(&self.exe, &self.tuning.app_args())?;
            let (per, total) = measure(&server, false)?;
            ours.push(per);
            ours_total.push(total);
            drop(server);
            let server = Server::start(&self.exe, &self.tuning.raw_args())?;
            let (per, total) = measure(&server, true)?;
            raw.push(per);
            raw_total.push(total);
        }
        figure.setup.push(format!(
            "Server VmRSS with all {n} open (median): terminalwire {:.1} MiB, raw WebSocket {:.1} MiB.",
            ours_total.median(),
            raw_total.median()
        ));
        let raw_row = figure.row(
            "raw WebSocket server, per idle connection",
            Unit::KiB,
            raw,
            None,
        );
        let ours_row = figure.row(
            "terminalwire server, per idle session",
            Unit::KiB,
            ours,
            Some(raw_row),
        );
        let per = figure.median(ours_row);
        figure.target(
            "≤ 20 KiB per session",
            figure.shown(ours_row),
            check(per, |v| v <= 20.0),
        );
        Ok(figure)
    }

    /// Checks, before figure 6 measures anything, that the plaintext build
    /// is what it claims: its client warns and reaches its app, and each
    /// build refuses the other in the handshake, naming the feature. The
    /// first run also pins the plaintext app's identity (first contact).
    fn check_plaintext(&self, plaintext: &Endpoint) -> anyhow::Result<()> {
        let run = |client: &Path, endpoint: &Endpoint| -> anyhow::Result<std::process::Output> {
            self.terminalwire_with(client, endpoint, &["hello", "x"])
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("starting {}", client.display()))
        };
        let stderr = |output: &std::process::Output| {
            String::from_utf8_lossy(&output.stderr).trim().to_owned()
        };
        let off = run(&plaintext.client, plaintext)?;
        if !off.status.success() || off.stdout != b"Hello, x!\n" {
            bail!(
                "the plaintext client against the plaintext app failed ({}): {}",
                off.status,
                stderr(&off)
            );
        }
        let warnings = stderr(&off)
            .lines()
            .filter(|line| *line == PLAINTEXT_WARNING)
            .count();
        if warnings != 1 {
            bail!(
                "the plaintext client did not warn (once) that it does not encrypt: {:?}",
                stderr(&off)
            );
        }
        let on = run(&self.app.client, &self.app)?;
        if !on.status.success() || stderr(&on).contains("insecure-plaintext-bench") {
            bail!(
                "the client of figures 1–5 is not the encrypting build ({}): {}",
                on.status,
                stderr(&on)
            );
        }
        for (client, endpoint, what) in [
            (
                &self.app.client,
                plaintext,
                "the client against the plaintext app",
            ),
            (
                &plaintext.client,
                &self.app,
                "the plaintext client against the app",
            ),
        ] {
            let mixed = run(client, endpoint)?;
            if mixed.status.success() || !stderr(&mixed).contains("insecure-plaintext-bench") {
                bail!(
                    "{what} was not refused by name ({}): {}",
                    mixed.status,
                    stderr(&mixed)
                );
            }
        }
        Ok(())
    }

    /// Figures 1–4 with the end-to-end encryption on (`ws://`), off (the
    /// plaintext build, `ws://`) and under TLS (`wss://`).
    fn tls(&self) -> anyhow::Result<Figure> {
        let mut figure = Figure::new("6. Encryption on and off, and over TLS");
        let runs = self.sizes.runs.min(3);
        figure.setup = vec![
            format!(
                "E2E on: the release binaries of figures 1–5, with the end-to-end encryption (Noise \
                 XX handshake with X25519, ChaChaPoly and BLAKE2s, then {}) that every terminalwire \
                 number there includes, over `ws://`. It is the baseline of each measurement.",
                transport_aead()
            ),
            format!(
                "E2E off: a second pair of release binaries, the `terminalwire` client and the bench \
                 app (`terminalwire-bench serve`), built by `bench/run.sh` with the bench-only, \
                 insecure feature `{PLAINTEXT_FEATURE}` in their own target folder, over `ws://`. \
                 The Noise handshake is unchanged (server identity, pin, device key); after it, \
                 frames take the same code path and framing, but each piece is copied in the clear \
                 instead of sealed (its 16-byte tag slot carries a marker \
                 and the piece counter, so the bytes on the wire are as many). The ratio to E2E on \
                 is what the encryption costs. Checked before measuring: the plaintext client \
                 warns that it does not encrypt and reaches the plaintext app, the other client \
                 does not warn, and each build refuses the other in the handshake."
            ),
            "Over TLS: the bench app of figures 1–5 served over `wss://` (rustls, a self-signed \
             certificate for 127.0.0.1 passed to the client with `--ca-cert`) in its own process: \
             TLS under the end-to-end encryption."
                .into(),
            format!(
                "Each is its own server process. Runs interleaved: {} for the cold command, {runs} \
                 for each other row; sizes as in figures 1–4.",
                self.sizes.cold_runs
            ),
        ];
        // The variants measured, the first one the baseline.
        let mut variants: Vec<(&str, &Endpoint)> = vec![("ws:// (E2E on)", &self.app)];
        match &self.plaintext {
            Ok(plaintext) => {
                self.check_plaintext(plaintext)?;
                variants.push(("ws:// (E2E off)", plaintext));
            }
            Err(reason) => figure
                .missing
                .push(format!("end-to-end encryption off not measured: {reason}")),
        }
        match &self.tls {
            Ok(tls) => variants.push(("wss:// (TLS + E2E)", tls)),
            Err(reason) => figure.missing.push(format!("TLS not measured: {reason}")),
        }
        if variants.len() < 2 {
            return Ok(figure);
        }
        let source = self.source_file()?;
        let storages = variants
            .iter()
            .map(|(_, endpoint)| self.prepare_storage(endpoint, &source))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let big = self.sizes.file_bytes;
        let k = self.sizes.in_flight;
        // Warm-up: first contact pins each server's identity.
        for (_, endpoint) in &variants {
            self.cold_once(endpoint)?;
        }
        // Cold command first (its own run count), then the others interleaved.
        type Once<'a> = Box<dyn Fn(&Endpoint, &Path) -> anyhow::Result<f64> + 'a>;
        let metrics: [(&str, Unit, Once<'_>); 6] = [
            (
                "cold command",
                Unit::Millis,
                Box::new(|endpoint, _| self.cold_once(endpoint)),
            ),
            (
                "stdout streaming",
                Unit::MegabytesPerSec,
                Box::new(|endpoint, _| self.stream_once(endpoint)),
            ),
            (
                "file exists, sequential",
                Unit::PerSec,
                Box::new(|endpoint, _| self.requests_once(endpoint, 1)),
            ),
            (
                "file exists, pipelined",
                Unit::PerSec,
                Box::new(|endpoint, _| self.requests_once(endpoint, k)),
            ),
            (
                "file read",
                Unit::MegabytesPerSec,
                Box::new(|endpoint, storage| {
                    Ok(self
                        .transfer(endpoint, storage, false, "read.bin", big)?
                        .rate)
                }),
            ),
            (
                "file write",
                Unit::MegabytesPerSec,
                Box::new(|endpoint, storage| {
                    Ok(self
                        .transfer(endpoint, storage, true, "write.bin", big)?
                        .rate)
                }),
            ),
        ];
        // samples[metric][variant]
        let mut samples: Vec<Vec<Samples>> = metrics
            .iter()
            .map(|_| variants.iter().map(|_| Samples::new()).collect())
            .collect();
        let cold = &metrics[0].2;
        for _ in 0..self.sizes.cold_runs {
            for (v, ((_, endpoint), storage)) in variants.iter().zip(&storages).enumerate() {
                samples[0][v].push(cold(endpoint, storage)?);
            }
        }
        for _ in 0..runs {
            for (m, (_, _, once)) in metrics.iter().enumerate().skip(1) {
                for (v, ((_, endpoint), storage)) in variants.iter().zip(&storages).enumerate() {
                    samples[m][v].push(once(endpoint, storage)?);
                }
            }
        }
        for ((metric, unit, _), per_variant) in metrics.into_iter().zip(samples) {
            let mut base = None;
            for ((label, _), variant_samples) in variants.iter().zip(per_variant) {
                let row = figure.row(format!("{metric}, {label}"), unit, variant_samples, base);
                base = base.or(Some(row));
            }
        }
        Ok(figure)
    }
}

/// MB/s (10^6 bytes per second) of `bytes` moved in `elapsed`.
fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// Starts the bench app over TLS with its certificate in `dir`.
fn start_tls(exe: &Path, client: &Path, tuning: &Tuning, dir: &Path) -> anyhow::Result<Endpoint> {
    let mut args = tuning.app_args();
    args.extend(["--tls-dir".into(), dir.display().to_string()]);
    let server = Server::start(exe, &args)?;
    Ok(Endpoint {
        server,
        client: client.to_owned(),
        options: vec![
            "--ca-cert".into(),
            dir.join(terminalwire_server::tls::DEV_CERT_FILE)
                .display()
                .to_string(),
        ],
    })
}

/// The feature of the bench-only plaintext build.
const PLAINTEXT_FEATURE: &str = "terminalwire-protocol/insecure-plaintext-bench";

/// What the plaintext build of the client prints to stderr when it connects.
const PLAINTEXT_WARNING: &str =
    "terminalwire: built with insecure-plaintext-bench: NO end-to-end encryption";

/// The folder of the plaintext build: `--plaintext-dir`, else
/// `plaintext/release` in this executable's target folder (where
/// bench/run.sh builds it).
fn plaintext_dir(options: &Options, exe: &Path) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &options.plaintext_dir {
        return Ok(dir.clone());
    }
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("this executable is not in a target folder")?;
    Ok(target.join("plaintext").join("release"))
}

/// Starts the plaintext build of the bench app (`ws://`) and pairs it with
/// the plaintext build of the client, both found in `dir`.
fn start_plaintext(dir: &Path, tuning: &Tuning) -> anyhow::Result<Endpoint> {
    let exe = dir.join("terminalwire-bench");
    let client = dir.join("terminalwire");
    for binary in [&exe, &client] {
        if !procfs::is_executable(binary) {
            bail!(
                "no plaintext build at {}: `bash bench/run.sh` builds it (by hand: \
                 `CARGO_TARGET_DIR=TARGET/plaintext cargo build --release -p terminalwire-client \
                 -p terminalwire-bench --features {PLAINTEXT_FEATURE}`), or pass --plaintext-dir DIR",
                binary.display()
            );
        }
    }
    Endpoint::start_app(&exe, &tuning.app_args(), client)
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

/// `1 GiB`, `64 MiB`, ...
fn size(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Writes `bytes` bytes of a fixed pattern to `path`.
fn write_file(path: &Path, bytes: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let block = crate::app::pattern(MIB as usize);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = bytes;
    while left > 0 {
        let n = block.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

/// Raises the open-file limit to its maximum; returns the limit.
fn raise_open_files() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(maximum) = limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The terminalwire client binary.
fn locate_client(options: &Options, exe: &Path) -> anyhow::Result<PathBuf> {
    let client = match (&options.client, std::env::var_os("TERMINALWIRE_BIN")) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => PathBuf::from(path),
        (None, None) => exe
            .parent()
            .context("this executable has no folder")?
            .join("terminalwire"),
    };
    if !procfs::is_executable(&client) {
        bail!(
            "no terminalwire client at {}: build it with `cargo build --release -p terminalwire-client` \
             (bench/run.sh does), or pass --client PATH",
            client.display()
        );
    }
    Ok(client)
}

/// Runs the selected figures and writes the report.
pub(crate) fn run(options: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    if !terminalwire_protocol::secure::ENCRYPTED {
        bail!(
            "this terminalwire-bench was built with {PLAINTEXT_FEATURE} (no end-to-end \
             encryption): it only serves figure 6's \"E2E off\" rows; run `bash bench/run.sh`"
        );
    }
    let exe = std::env::current_exe()?;
    let client = locate_client(&options, &exe)?;
    let plaintext_dir = plaintext_dir(&options, &exe)?;
    let mut sizes = if options.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let mut notes = Vec::new();
    let open_files = raise_open_files();
    let needed = sizes.sessions as u64 + 256;
    if open_files < needed {
        let capped = open_files.saturating_sub(256).max(16) as usize;
        notes.push(format!(
            "Idle sessions capped at {capped} (not {}): the open-file limit is {open_files}.",
            sizes.sessions
        ));
        sizes.sessions = capped;
    }
    let wanted = |figure: u8| options.figures.is_empty() || options.figures.contains(&figure);
    let facts = {
        let mut facts = procfs::machine_facts();
        facts.push((
            "load average at start".into(),
            std::fs::read_to_string("/proc/loadavg")
                .map(|load| {
                    load.split_whitespace()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        ));
        let (memcpy, memcpy_past) = procfs::memcpy_gbps(3);
        facts.push((
            "memcpy of 64 KiB".into(),
            format!(
                "{memcpy:.1} GB/s; {memcpy_past:.1} GB/s to 3 bytes past the source's offset in its page \
                 (`protocol/src/copy.rs`)"
            ),
        ));
        facts.push(("terminalwire client".into(), client.display().to_string()));
        if wanted(6) {
            facts.push((
                "plaintext build (figure 6, E2E off)".into(),
                plaintext_dir.display().to_string(),
            ));
        }
        facts
    };

    let tmp = tempfile::Builder::new()
        .prefix("terminalwire-bench-")
        .tempdir()?;
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home)?;
    eprintln!("terminalwire-bench: starting the servers");
    let app = Endpoint::start_app(&exe, &options.tuning.app_args(), client.clone())?;
    let app_one_worker = if wanted(3) {
        let mut args = options.tuning.app_args();
        args.extend(["--workers".into(), "1".into()]);
        Endpoint::start_app(&exe, &args, client.clone()).map_err(|error| format!("{error:#}"))
    } else {
        Err("not selected".into())
    };
    let raw = Server::start(&exe, &options.tuning.raw_args())?;
    let tcp_echo = Server::start(&exe, &["tcp-echo-serve"])?;
    let tls = if wanted(6) {
        start_tls(&exe, &client, &options.tuning, &tmp.path().join("tls"))
            .map_err(|error| format!("{error:#}"))
    } else {
        Err("not selected".into())
    };
    let plaintext = if wanted(6) {
        start_plaintext(&plaintext_dir, &options.tuning).map_err(|error| format!("{error:#}"))
    } else {
        Err("not selected".into())
    };
    if wanted(6)
        && let Err(reason) = &plaintext
    {
        eprintln!("terminalwire-bench: end-to-end encryption off not measured: {reason}");
    }
    let ssh = if wanted(1) || wanted(2) || wanted(4) {
        Sshd::start(&tmp.path().join("ssh"), options.install_ssh)
    } else {
        Err("not needed by the selected figures".into())
    };
    if let Err(reason) = &ssh {
        eprintln!("terminalwire-bench: ssh baseline unavailable: {reason}");
    }
    let bench = Bench {
        sizes,
        quick: options.quick,
        tuning: options.tuning.clone(),
        exe,
        tmp,
        home,
        app,
        app_one_worker,
        tls,
        plaintext,
        raw,
        tcp_echo,
        ssh,
    };

    notes.extend([
        "Everything runs on this machine over loopback (127.0.0.1); the bench starts every server \
         on a free port and stops it at the end."
            .to_owned(),
        format!(
            "terminalwire: the release `terminalwire` client binary against the bench app, a separate \
             release process (`terminalwire-bench serve`: axum + terminalwire-server on tokio's \
             multi-threaded runtime, no logging{}).",
            if bench.tuning.nagle {
                ", Nagle's algorithm left on"
            } else {
                ", TCP_NODELAY on accepted connections like the raw server and like the SDK's \
                 `Terminal::serve_app`"
            }
        ),
        "Baselines: OpenSSH (Debian's sshd run by the bench on a high loopback port with a temporary \
         host key, config and authorized ed25519 key; the session's HOME is an empty folder so the \
         login shell reads no rc files; ssh and scp with `-F /dev/null`), a raw WebSocket \
         (tokio-tungstenite server and client processes with nothing on top), and curl."
            .into(),
        "Each figure: the median and the min – max over the runs; runs of a figure and its \
         baselines are interleaved. The ratio is terminalwire's median over the baseline's median."
            .into(),
        format!(
            "Encryption: every terminalwire number includes the end-to-end encryption (Noise XX, \
             then {}; always on in the client and the SDK), over plain `ws://`, except figure 6's \
             rows marked `E2E off` (a separate build of client and bench app with the bench-only, \
             insecure `insecure-plaintext-bench` feature: same handshake and framing, frames not \
             encrypted, to measure what the encryption costs) and `wss://` (TLS under it); the raw \
             WebSocket baseline is not encrypted (the transport's limit); ssh and scp always \
             encrypt (chacha20-poly1305, OpenSSH's default, which is what users get).",
            transport_aead()
        ),
        "Allocator: the bench app (and the raw WebSocket baseline, which runs from the same \
         binary) uses mimalloc; with glibc's malloc the server re-faults its 64 KiB chunk buffers \
         (bench/PROFILE.md). The `terminalwire` client uses glibc's malloc, with its trim \
         threshold raised at start."
            .into(),
    ]);
    if let Some(size) = bench.tuning.read_buffer {
        notes.push(format!(
            "Tuned: the bench app and the raw server use a {size}-byte WebSocket read buffer \
             (not tungstenite's default 128 KiB)."
        ));
    }
    if bench.quick {
        notes.push(
            "Quick mode: small sizes and one or two runs; checks that the harness works. These \
             numbers are not measurements."
                .into(),
        );
    }

    let mut figures = Vec::new();
    type Measure = fn(&Bench) -> anyhow::Result<Figure>;
    let all: [(u8, &str, Measure); 6] = [
        (1, "cold command", Bench::cold),
        (2, "stdout streaming", Bench::stream),
        (3, "request round trips", Bench::requests),
        (4, "file transfer", Bench::files),
        (5, "idle sessions", Bench::idle),
        (6, "encryption and TLS", Bench::tls),
    ];
    for (number, name, measure) in all {
        if !wanted(number) {
            continue;
        }
        eprintln!("terminalwire-bench: figure {number}, {name}");
        let figure_started = Instant::now();
        let figure = measure(&bench).with_context(|| format!("figure {number}, {name}"))?;
        eprintln!(
            "terminalwire-bench:   done in {:.1} s",
            figure_started.elapsed().as_secs_f64()
        );
        figures.push(figure);
    }

    let report = Report {
        quick: bench.quick,
        date: procfs::now_utc(),
        facts,
        command: if bench.quick {
            "bash bench/run.sh --quick".into()
        } else {
            "bash bench/run.sh".into()
        },
        notes,
        figures,
        profile: include_str!("../PROFILE.md").into(),
    };
    let output = match options.output {
        Some(path) => path,
        None if bench.quick => bench
            .exe
            .parent()
            .context("this executable has no folder")?
            .join("bench-quick.md"),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the bench crate has no parent folder")?
            .join("BENCHMARKS.md"),
    };
    std::fs::write(&output, report.render())
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "terminalwire-bench: wrote {} in {:.0} s",
        output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `terminalwire-bench load`: starts the bench app, runs [`crate::load`]
/// against it and prints the report.
pub(crate) fn load(sessions: usize, requests: u64) -> anyhow::Result<()> {
    raise_open_files();
    let exe = std::env::current_exe()?;
    let server = Server::start(&exe, &["serve", "--listen", "127.0.0.1:0"])?;
    let report = crate::load::run(&server.url, server.pid(), sessions, requests)?;
    #[allow(clippy::print_stdout, reason = "the report is this command's output")]
    {
        println!("{report}");
    }
    Ok(())
}

/// The transport AEAD the client and the bench app negotiate on this machine.
fn transport_aead() -> &'static str {
    if terminalwire_protocol::secure::aes_hardware() {
        "AES-256-GCM, negotiated since both ends have AES hardware"
    } else {
        "ChaCha20-Poly1305, negotiated since this CPU has no AES hardware"
    }
}
