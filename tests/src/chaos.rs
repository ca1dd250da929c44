//! A chaos harness for resuming: a TCP proxy on `127.0.0.1:0` that breaks
//! each connection in one of several ways (a reset both ways, a reset of one
//! side only, a half-close, a stall or a black hole then a reset) after a
//! byte offset counted in one direction or both, all drawn from a seed; an
//! app whose commands stream checkable output, echo stdin, write and read a
//! file in the client's storage folder and make many round trips; and
//! [`run_scenario`], which runs the real client through the proxy and checks the
//! output byte for byte and the exit status.
//!
//! A failure names its seed; `CHAOS_SEED=... cargo test -p terminalwire-tests
//! --test chaos -- --ignored chaos_soak` replays it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use terminalwire_server::{Context, Outcome as Exit, Terminal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cutter::reset;
use crate::pattern::{Pattern, SPLITMIX64_GAMMA, fnv, splitmix64};

/// A small seeded generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(SPLITMIX64_GAMMA);
        splitmix64(self.0)
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.bits() % (high - low + 1)
    }

    /// Spread over orders of magnitude in `low..=high` (`low` ≥ 1): small
    /// and large offsets alike.
    pub fn log_range(&mut self, low: u64, high: u64) -> u64 {
        let (a, b) = ((low.max(1) as f64).ln(), (high.max(1) as f64).ln());
        let unit = (self.bits() >> 11) as f64 / (1u64 << 53) as f64;
        ((a + (b - a) * unit).exp() as u64).clamp(low, high)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.bits() % 100 < percent
    }
}

/// How a connection is broken once its byte offset is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A reset both ways, at once.
    Reset,
    /// Nothing passes for a while (a stall), then a reset both ways.
    StallThenReset,
    /// The client's side is reset; the server's stays open and silent (a
    /// path that died on the client's side) for a while, then is reset.
    ResetClientSide,
    /// The server's side is reset; the client's stays open and silent for
    /// a while, then is closed (a FIN, no WebSocket close).
    ResetServerSide,
    /// The server → client direction ends with a FIN; client → server goes
    /// on until the client closes (or a while passes), then a reset.
    HalfCloseToClient,
    /// The client → server direction ends with a FIN; server → client goes
    /// on until the server closes (or a while passes), then a reset.
    HalfCloseToServer,
    /// Server → client bytes are thrown away, client → server still pass,
    /// for a while; then a reset.
    BlackholeDown,
    /// Client → server bytes are thrown away, server → client still pass,
    /// for a while; then a reset.
    BlackholeUp,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 8] = [
        Fault::Reset,
        Fault::StallThenReset,
        Fault::ResetClientSide,
        Fault::ResetServerSide,
        Fault::HalfCloseToClient,
        Fault::HalfCloseToServer,
        Fault::BlackholeDown,
        Fault::BlackholeUp,
    ];

    /// What each direction does once the fault fired: (up, down).
    fn after(self) -> (After, After) {
        match self {
            Fault::Reset
            | Fault::StallThenReset
            | Fault::ResetClientSide
            | Fault::ResetServerSide => (After::Stop, After::Stop),
            Fault::HalfCloseToClient => (After::Forward, After::Finish),
            Fault::HalfCloseToServer => (After::Finish, After::Forward),
            Fault::BlackholeDown => (After::Forward, After::Discard),
            Fault::BlackholeUp => (After::Discard, After::Forward),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Stop reading and writing.
    Stop,
    /// Send a FIN on, then stop.
    Finish,
    /// Go on passing bytes.
    Forward,
    /// Go on reading, pass nothing.
    Discard,
}

/// Which bytes count towards a connection's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Both directions together.
    Both,
    /// Client → server only.
    Up,
    /// Server → client only.
    Down,
}

/// What happens to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The fault.
    pub fault: Fault,
    /// It fires after this many counted bytes have passed.
    pub at: u64,
    /// Which bytes count.
    pub counted: Counted,
    /// How long a stall, black hole or half-close lasts, or the surviving
    /// side of a one-sided reset is kept.
    pub hold: Duration,
}

/// Which faults a run draws from and how.
#[derive(Debug, Clone)]
pub struct Chaos {
    /// Faults to draw from.
    pub faults: Vec<Fault>,
    /// Connections broken at most (later ones pass everything).
    pub max_faults: u32,
    /// Offsets are drawn up to this many bytes.
    pub max_offset: u64,
    /// Chance (percent) that a connection right after a broken one is
    /// broken within its first few KiB: during the handshake or the resume.
    pub burst_percent: u64,
    /// Longest hold.
    pub max_hold: Duration,
    /// The plan of the first connection, if not drawn (counting from its
    /// fourth turn, as a drawn one does).
    pub first: Option<Plan>,
}

#[derive(Debug)]
struct ProxyState {
    target: SocketAddr,
    rng: Rng,
    chaos: Chaos,
    faults: u32,
    previous_broken: bool,
    log: Vec<String>,
    /// Bytes (up, down) each connection passed once its gate counted,
    /// written when its forwarding ends.
    traffic: Vec<(u64, u64)>,
    /// Connections still being forwarded.
    forwarding: usize,
}

impl ProxyState {
    fn plan(&mut self) -> Option<Plan> {
        if self.log.is_empty()
            && let Some(first) = self.chaos.first
        {
            self.faults += 1;
            self.previous_broken = true;
            return Some(first);
        }
        if self.faults >= self.chaos.max_faults {
            self.previous_broken = false;
            return None;
        }
        let rng = &mut self.rng;
        let fault = self.chaos.faults[rng.range(0, self.chaos.faults.len() as u64 - 1) as usize];
        let at = if self.previous_broken && rng.chance(self.chaos.burst_percent) {
            rng.range(0, 4096)
        } else {
            rng.log_range(1, self.chaos.max_offset)
        };
        let counted = match rng.range(0, 2) {
            0 => Counted::Both,
            1 => Counted::Up,
            _ => Counted::Down,
        };
        let hold = Duration::from_millis(rng.range(0, self.chaos.max_hold.as_millis() as u64));
        self.faults += 1;
        self.previous_broken = true;
        Some(Plan {
            fault,
            at,
            counted,
            hold,
        })
    }
}

/// The chaos proxy.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    task: JoinHandle<()>,
    /// Woken when a connection's forwarding ends.
    ended: Arc<tokio::sync::Notify>,
}

impl Proxy {
    /// Forwards to `target`, breaking connections as `chaos` says with
    /// points drawn from `seed`.
    pub async fn start(target: SocketAddr, chaos: Chaos, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState {
            target,
            rng: Rng::new(seed ^ 0x0123_4567_89ab_cdef),
            chaos,
            faults: 0,
            previous_broken: false,
            log: Vec::new(),
            traffic: Vec::new(),
            forwarding: 0,
        }));
        let shared = state.clone();
        let ended = Arc::new(tokio::sync::Notify::new());
        let ended_in_task = ended.clone();
        let task = tokio::spawn(async move {
            let mut tasks = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let (target, plan, index) = {
                    let mut state = shared.lock().unwrap();
                    let plan = state.plan();
                    let index = state.log.len();
                    state.traffic.push((0, 0));
                    state.forwarding += 1;
                    state.log.push(match plan {
                        Some(plan) => format!("#{index}: {plan:?}"),
                        None => format!("#{index}: reliable"),
                    });
                    (state.target, plan, index)
                };
                let shared = shared.clone();
                let ended = ended_in_task.clone();
                tasks.push(AbortOnDrop(tokio::spawn(async move {
                    forward(client, target, plan, index, shared.clone()).await;
                    shared.lock().unwrap().forwarding -= 1;
                    ended.notify_waiters();
                })));
            }
        });
        Proxy {
            addr,
            state,
            task,
            ended,
        }
    }

    /// Waits (at most `bound`) until no connection is being forwarded: a
    /// connection's traffic is written when its forwarding ends, which may
    /// be after the client has exited.
    pub async fn settled(&self, bound: Duration) {
        let _ = tokio::time::timeout(bound, async {
            loop {
                let ended = self.ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if self.state.lock().unwrap().forwarding == 0 {
                    return;
                }
                ended.await;
            }
        })
        .await;
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One line per connection: its plan and what happened.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Bytes (up, down) each connection passed from its fourth turn (the
    /// first one) or its start (the others).
    pub fn traffic(&self) -> Vec<(u64, u64)> {
        self.state.lock().unwrap().traffic.clone()
    }

    /// Connections broken so far.
    pub fn faults(&self) -> u32 {
        let state = self.state.lock().unwrap();
        state
            .log
            .iter()
            .filter(|line| line.ends_with("(fired)"))
            .count() as u32
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts bytes towards the plan's offset.
struct Gate {
    at: Option<u64>,
    counted: Counted,
    passed: u64,
    /// Counting starts with the client's fourth turn: the HTTP upgrade,
    /// the handshake's first and third messages with `hello` are the first
    /// three; the next one comes after the welcome, once the session can
    /// be resumed (a first connection broken earlier has no session to
    /// resume). Resuming connections count from the first byte.
    turns_before: u32,
    turns: u32,
    last_up: bool,
    /// Bytes (up, down) seen once counting.
    seen: (u64, u64),
}

impl Gate {
    /// How many of `n` bytes going `up` (or down) pass before the fault,
    /// and whether it fires now.
    fn admit(&mut self, up: bool, n: u64) -> (u64, bool) {
        if up && !self.last_up {
            self.turns += 1;
        }
        self.last_up = up;
        if self.turns <= self.turns_before {
            return (n, false);
        }
        if up {
            self.seen.0 += n;
        } else {
            self.seen.1 += n;
        }
        let Some(at) = self.at else { return (n, false) };
        let counts = match self.counted {
            Counted::Both => true,
            Counted::Up => up,
            Counted::Down => !up,
        };
        if !counts {
            return (n, false);
        }
        let left = at - self.passed;
        if n < left {
            self.passed += n;
            (n, false)
        } else {
            self.at = None;
            (left, true)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    up: bool,
    after: After,
    gate: &Mutex<Gate>,
    fired_tx: &watch::Sender<bool>,
    mut fired_rx: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut fired = false;
    loop {
        if fired {
            match after {
                After::Stop => return,
                After::Finish => {
                    let _ = to.shutdown().await;
                    return;
                }
                After::Forward | After::Discard => {}
            }
        }
        let read = if fired {
            from.read(&mut buffer).await
        } else {
            tokio::select! {
                read = from.read(&mut buffer) => read,
                _ = fired_rx.wait_for(|fired| *fired) => {
                    fired = true;
                    continue;
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                if !fired || after == After::Forward {
                    let _ = to.shutdown().await;
                }
                return;
            }
            Ok(n) => n,
        };
        if fired {
            if after == After::Forward && to.write_all(&buffer[..n]).await.is_err() {
                return;
            }
            continue;
        }
        let (pass, fire) = gate.lock().unwrap().admit(up, n as u64);
        let pass = pass as usize;
        if to.write_all(&buffer[..pass]).await.is_err() {
            return;
        }
        if fire {
            fired = true;
            let _ = fired_tx.send(true);
            if after == After::Forward && to.write_all(&buffer[pass..n]).await.is_err() {
                return;
            }
        }
    }
}

async fn forward(
    client: TcpStream,
    target: SocketAddr,
    plan: Option<Plan>,
    index: usize,
    state: Arc<Mutex<ProxyState>>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let gate = Mutex::new(Gate {
        at: plan.map(|plan| plan.at),
        counted: plan.map_or(Counted::Both, |plan| plan.counted),
        passed: 0,
        turns_before: if index == 0 { 3 } else { 0 },
        turns: 0,
        last_up: false,
        seen: (0, 0),
    });
    let fault = plan.map_or(Fault::Reset, |plan| plan.fault);
    let hold = plan.map_or(Duration::ZERO, |plan| plan.hold);
    let (up_after, down_after) = fault.after();
    let (fired_tx, fired_rx) = watch::channel(false);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // How long after the fault fired the connection is cut.
    let cut_after = match fault {
        Fault::Reset | Fault::ResetClientSide | Fault::ResetServerSide => Duration::ZERO,
        _ => hold,
    };
    let mut watch_fired = fired_rx.clone();
    tokio::select! {
        _ = async {
            tokio::join!(
                pump(&mut client_read, &mut server_write, true, up_after, &gate, &fired_tx, fired_rx.clone()),
                pump(&mut server_read, &mut client_write, false, down_after, &gate, &fired_tx, fired_rx.clone()),
            )
        } => {}
        _ = async {
            let _ = watch_fired.wait_for(|fired| *fired).await;
            tokio::time::sleep(cut_after).await;
        } => {}
    }
    state.lock().unwrap().traffic[index] = gate.lock().unwrap().seen;
    if !*fired_rx.borrow() {
        return;
    }
    state.lock().unwrap().log[index].push_str(" (fired)");
    let (Ok(client), Ok(server)) = (
        client_read.reunite(client_write),
        server_read.reunite(server_write),
    ) else {
        return;
    };
    match fault {
        Fault::ResetClientSide => {
            reset(client);
            tokio::time::sleep(hold).await;
            reset(server);
        }
        Fault::ResetServerSide => {
            reset(server);
            tokio::time::sleep(hold).await;
            let mut client = client;
            let _ = client.shutdown().await;
        }
        _ => {
            reset(client);
            reset(server);
        }
    }
}

// ---------------------------------------------------------------------
// The app.

/// The chunk sizes `stream SEED BYTES` writes: varied, from 1 byte to
/// 200 KB.
pub fn chunk_sizes(seed: u64, total: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut sizes = Vec::new();
    let mut left = total;
    while left > 0 {
        let size = rng.log_range(1, 200_000).min(left);
        sizes.push(size as usize);
        left -= size;
    }
    sizes
}

/// The stderr `stream SEED BYTES` writes: a line after some chunks.
pub fn stream_stderr(seed: u64, total: u64) -> String {
    let mut text = String::new();
    for (index, size) in chunk_sizes(seed, total).into_iter().enumerate() {
        if index % 3 == 0 {
            text.push_str(&format!("chunk {index} of {size} bytes\n"));
        }
    }
    text
}

/// The exit status of a workload run with `seed`.
pub fn status_for(seed: u64) -> u8 {
    (seed % 50) as u8 + 3
}

fn arg(ctx: &Context, index: usize) -> anyhow::Result<u64> {
    Ok(ctx
        .args()
        .get(index)
        .ok_or_else(|| anyhow::anyhow!("missing argument {index}"))?
        .parse()?)
}

/// The chaos app: `stream SEED BYTES`, `stdin SEED`, `file SEED BYTES`,
/// `requests SEED COUNT`; each exits with [`status_for`]`(SEED)`.
pub fn terminal() -> Terminal {
    Terminal::new(|ctx: Context| async move {
        let workload = ctx.args().first().cloned().unwrap_or_default();
        let seed = arg(&ctx, 1)?;
        match workload.as_str() {
            "stream" => {
                let total = arg(&ctx, 2)?;
                let pattern = Pattern::new(seed);
                let mut offset = 0u64;
                for (index, size) in chunk_sizes(seed, total).into_iter().enumerate() {
                    ctx.stdout()
                        .write_all(&pattern.bytes_at(offset, size))
                        .await?;
                    offset += size as u64;
                    if index % 3 == 0 {
                        ctx.stderr()
                            .write_all(format!("chunk {index} of {size} bytes\n").as_bytes())
                            .await?;
                    }
                }
            }
            "stdin" => {
                let mut reader = ctx.stdin().reader();
                let mut all = Vec::new();
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let n = reader.read(&mut buffer).await?;
                    if n == 0 {
                        break;
                    }
                    ctx.stdout().write_all(&buffer[..n]).await?;
                    all.extend_from_slice(&buffer[..n]);
                }
                ctx.stderr()
                    .write_all(format!("stdin {} {:016x}\n", all.len(), fnv(&all)).as_bytes())
                    .await?;
            }
            "file" => {
                let total = arg(&ctx, 2)?;
                let path = ctx
                    .storage_path(&format!("chaos-{seed}.bin"))
                    .ok_or_else(|| anyhow::anyhow!("no storage"))?;
                let pattern = Pattern::new(seed);
                let mut writer = ctx.file().writer(&path).await?;
                let mut offset = 0u64;
                for size in chunk_sizes(seed ^ 1, total) {
                    writer.write(&pattern.bytes_at(offset, size)).await?;
                    offset += size as u64;
                }
                writer.commit().await?;
                // Read back: whole, and by a reader with reads in flight.
                let whole = ctx.file().read(&path).await?;
                let mut reader = ctx.file().reader(&path);
                let mut streamed = Vec::new();
                while let Some(chunk) = reader.next_chunk().await? {
                    streamed.extend_from_slice(&chunk);
                }
                if whole != streamed {
                    anyhow::bail!("the two reads differ");
                }
                ctx.stdout().write_all(&whole).await?;
                ctx.stderr()
                    .write_all(format!("file {} {:016x}\n", whole.len(), fnv(&whole)).as_bytes())
                    .await?;
            }
            "lines" => {
                // A line at a time, each read showing a prompt.
                let mut count = 0u64;
                while let Some(line) = ctx.read_line(Some("> ")).await? {
                    count += 1;
                    ctx.stdout().println(format!("{count}: {line}")).await?;
                }
            }
            "requests" => {
                let count = arg(&ctx, 2)?;
                let appends = ctx
                    .storage_path(&format!("appends-{seed}.txt"))
                    .ok_or_else(|| anyhow::anyhow!("no storage"))?;
                for round in 0..count {
                    // An append (in order), a write, an existence check
                    // and an environment read in flight together.
                    let small = ctx
                        .storage_path(&format!("small-{seed}-{round}"))
                        .ok_or_else(|| anyhow::anyhow!("no storage"))?;
                    let files = ctx.file();
                    let env = ctx.env();
                    let (append, write, exists, env) = tokio::join!(
                        files.append(&appends, format!("entry {round}\n")),
                        files.write(&small, format!("small {round}")),
                        files.exists(&appends),
                        env.get("TERMINALWIRE_HOME"),
                    );
                    append?;
                    write?;
                    // The first append may not have run yet.
                    let exists = exists? || round == 0;
                    let env = env?;
                    let back = files.read(&small).await?;
                    ctx.stdout()
                        .write_all(
                            format!(
                                "round {round} {exists} {} {}\n",
                                env.unwrap_or_default(),
                                String::from_utf8_lossy(&back)
                            )
                            .as_bytes(),
                        )
                        .await?;
                }
            }
            other => anyhow::bail!("unknown workload {other:?}"),
        }
        Ok::<_, anyhow::Error>(Exit::Exit(status_for(seed)))
    })
}

// ---------------------------------------------------------------------
// One run.

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// stdout and stderr streaming.
    Stream,
    /// stdin echoed.
    Stdin,
    /// A file written and read back.
    File,
    /// Round trips in flight.
    Requests,
    /// stdin read a line at a time, with prompts.
    Lines,
}

/// The stdin of the `lines` workload: `count` lines.
pub fn lines_input(seed: u64, count: u64) -> String {
    let mut rng = Rng::new(seed ^ 2);
    (0..count)
        .map(|n| {
            let len = rng.range(0, 300) as usize;
            let text: String = (0..len)
                .map(|i| char::from(b'a' + ((n as usize + i) % 26) as u8))
                .collect();
            format!("{text}\n")
        })
        .collect()
}

/// What scenarios are drawn from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The faults.
    pub faults: Vec<Fault>,
    /// The most connections broken in a run.
    pub max_faults: u32,
    /// The longest stall, black hole, half-close or one-sided reset.
    pub max_hold: Duration,
    /// Sizes are divided by this (1: up to 6 MB).
    pub scale: u64,
}

/// What a seed runs: the workload, its size and the proxy's chaos.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The seed everything comes from.
    pub seed: u64,
    /// The workload.
    pub workload: Workload,
    /// Bytes (stream, stdin, file) or rounds (requests).
    pub size: u64,
    /// The proxy's settings.
    pub chaos: Chaos,
    /// stdout goes to a file (written by the client's own thread, with a
    /// window of its own), not a pipe.
    pub stdout_to_file: bool,
    /// The first connection is broken this many bytes before the end of
    /// what the server sends (as measured in a run without faults first):
    /// around the exit and the final acknowledgement.
    pub tail: Option<(u64, Fault, Counted, Duration)>,
}

impl Scenario {
    /// The scenario of `seed`; `faults` limits the faults drawn from.
    pub fn of(seed: u64, settings: &Settings) -> Scenario {
        let Settings {
            faults,
            max_faults,
            max_hold,
            scale,
        } = settings.clone();
        let scale = scale.max(1);
        let mut rng = Rng::new(seed);
        let workload = match rng.range(0, 4) {
            0 => Workload::Stream,
            1 => Workload::Stdin,
            2 => Workload::File,
            3 => Workload::Requests,
            _ => Workload::Lines,
        };
        let size = match workload {
            Workload::Stream => rng.log_range(64 << 10, 6 << 20) / scale,
            Workload::Stdin | Workload::File => rng.log_range(16 << 10, 3 << 20) / scale,
            Workload::Requests | Workload::Lines => rng.range(20, 120) / scale.min(10),
        }
        .max(1);
        // Roughly the bytes a run moves, so cuts fall all along it.
        let traffic = match workload {
            Workload::Stream => size,
            Workload::Stdin | Workload::File => 2 * size,
            Workload::Requests => size * 1200,
            Workload::Lines => size * 600,
        } + 8192;
        let max_faults = rng.range(1, u64::from(max_faults.max(1))) as u32;
        let stdout_to_file = rng.chance(35);
        let tail = rng.chance(25).then(|| {
            let fault = faults[rng.range(0, faults.len() as u64 - 1) as usize];
            let counted = if rng.chance(50) {
                Counted::Down
            } else {
                Counted::Up
            };
            let hold = Duration::from_millis(rng.range(0, max_hold.as_millis() as u64));
            (rng.range(0, 1500), fault, counted, hold)
        });
        Scenario {
            tail,
            seed,
            workload,
            size,
            stdout_to_file,
            chaos: Chaos {
                faults,
                max_faults,
                max_offset: traffic,
                burst_percent: 50,
                max_hold,
                first: None,
            },
        }
    }
}

/// What went wrong in a run.
#[derive(Debug)]
pub struct Failure {
    /// The scenario.
    pub scenario: Scenario,
    /// What differed.
    pub what: String,
    /// The proxy's log.
    pub log: Vec<String>,
    /// The client's stderr.
    pub stderr: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {:#x} ({:?}, {}{}, up to {} faults of {:?}): {}",
            self.scenario.seed,
            self.scenario.workload,
            self.scenario.size,
            if self.scenario.stdout_to_file {
                ", stdout to a file"
            } else {
                ""
            },
            self.scenario.chaos.max_faults,
            self.scenario.chaos.faults,
            self.what
        )?;
        for line in &self.log {
            writeln!(f, "  {line}")?;
        }
        let stderr = if self.stderr.len() > 2000 {
            &self.stderr[self.stderr.len() - 2000..]
        } else {
            &self.stderr
        };
        write!(f, "  client stderr (end): {stderr}")
    }
}

const RECONNECTING: &str = "terminalwire: connection lost; reconnecting\u{2026}\n";

/// Runs `scenario` through a new proxy in front of `server` (the
/// [`terminal`] app) and checks everything; returns the number of
/// connections broken.
pub async fn run_scenario(server: SocketAddr, mut scenario: Scenario) -> Result<u32, Box<Failure>> {
    if let Some((back, fault, counted, hold)) = scenario.tail {
        // A run without faults measures how much each direction carries.
        let mut calm = scenario.clone();
        calm.tail = None;
        calm.chaos.max_faults = 0;
        let (_, traffic) = run_once(server, calm).await;
        if let Some(&(up, down)) = traffic.first() {
            // Measured, or the cut would come first thing, not at the tail.
            assert!(
                up > 0 && down > 0,
                "seed {:#x}: the calm run measured no traffic",
                scenario.seed
            );
            let total = if counted == Counted::Down { down } else { up };
            scenario.chaos.first = Some(Plan {
                fault,
                at: total.saturating_sub(back),
                counted,
                hold,
            });
        }
    }
    run_once(server, scenario).await.0
}

async fn run_once(
    server: SocketAddr,
    scenario: Scenario,
) -> (Result<u32, Box<Failure>>, Vec<(u64, u64)>) {
    let proxy = Proxy::start(server, scenario.chaos.clone(), scenario.seed).await;
    let calm = scenario.chaos.max_faults == 0;
    let result = check_run(&proxy, scenario).await;
    if calm {
        // Measured for the tail of the next run: every byte counted.
        proxy.settled(Duration::from_secs(10)).await;
    }
    (result, proxy.traffic())
}

async fn check_run(proxy: &Proxy, scenario: Scenario) -> Result<u32, Box<Failure>> {
    let url = format!("ws://{}/terminal", proxy.addr());
    let seed = scenario.seed;
    let size = scenario.size;
    let home = tempfile::tempdir().unwrap();
    let name = match scenario.workload {
        Workload::Stream => "stream",
        Workload::Stdin => "stdin",
        Workload::File => "file",
        Workload::Requests => "requests",
        Workload::Lines => "lines",
    };
    let mut client = crate::Client::new([url, name.into(), seed.to_string(), size.to_string()])
        .env("TERMINALWIRE_HOME", &home.path().to_string_lossy());
    let stdin = match scenario.workload {
        Workload::Lines => lines_input(seed, size).into_bytes(),
        _ => Pattern::new(seed).bytes_at(0, size as usize),
    };
    if matches!(scenario.workload, Workload::Stdin | Workload::Lines) {
        client = client.stdin(stdin.clone());
    }
    let stdout_file = home.path().join("stdout");
    if scenario.stdout_to_file {
        client = client.stdout_to_file(&stdout_file);
    }
    let run = tokio::spawn(client.run()).await;
    let fail = |what: String, stderr: String| {
        Box::new(Failure {
            scenario: scenario.clone(),
            what,
            log: proxy.log(),
            stderr,
        })
    };
    let mut run = match run {
        Ok(run) => run,
        Err(error) => return Err(fail(format!("the run panicked: {error}"), String::new())),
    };
    if scenario.stdout_to_file {
        run.stdout = std::fs::read(&stdout_file).unwrap_or_default();
    }
    let raw_stderr = run.stderr_text();
    let stderr = raw_stderr.replace(RECONNECTING, "");
    let (expected_out, expected_err): (Vec<u8>, String) = match scenario.workload {
        Workload::Stream => (
            Pattern::new(seed).bytes_at(0, size as usize),
            stream_stderr(seed, size),
        ),
        Workload::Stdin => (
            stdin.clone(),
            format!("stdin {} {:016x}\n", stdin.len(), fnv(&stdin)),
        ),
        Workload::File => {
            let bytes = Pattern::new(seed).bytes_at(0, size as usize);
            let err = format!("file {} {:016x}\n", bytes.len(), fnv(&bytes));
            (bytes, err)
        }
        Workload::Lines => (
            lines_input(seed, size)
                .lines()
                .enumerate()
                .map(|(n, line)| format!("{}: {line}\n", n + 1))
                .collect::<String>()
                .into_bytes(),
            "> ".repeat(size as usize + 1),
        ),
        Workload::Requests => (
            (0..size)
                .map(|round| {
                    format!(
                        "round {round} true {} small {round}\n",
                        home.path().display()
                    )
                })
                .collect::<String>()
                .into_bytes(),
            String::new(),
        ),
    };
    if run.status != Some(i32::from(status_for(seed))) {
        return Err(fail(
            format!(
                "exit status {:?}, expected {}",
                run.status,
                status_for(seed)
            ),
            raw_stderr,
        ));
    }
    if run.stdout != expected_out {
        let at = run
            .stdout
            .iter()
            .zip(&expected_out)
            .position(|(a, b)| a != b);
        return Err(fail(
            format!(
                "stdout: {} bytes, expected {}; first difference at {at:?}",
                run.stdout.len(),
                expected_out.len()
            ),
            raw_stderr,
        ));
    }
    if stderr != expected_err {
        return Err(fail(
            format!("stderr differs: expected {expected_err:?}"),
            raw_stderr,
        ));
    }
    // What the client's storage folder holds.
    let storage = std::fs::read_dir(home.path().join("authorities"))
        .ok()
        .and_then(|mut entries| entries.next())
        .and_then(Result::ok)
        .map(|entry| entry.path().join("storage"));
    let check_file = |name: String, expected: &[u8]| -> Result<(), Box<Failure>> {
        let Some(storage) = &storage else {
            return Err(fail("no storage folder".into(), raw_stderr.clone()));
        };
        match std::fs::read(storage.join(&name)) {
            Ok(bytes) if bytes == expected => Ok(()),
            Ok(bytes) => Err(fail(
                format!(
                    "{name} holds {} bytes, expected {}",
                    bytes.len(),
                    expected.len()
                ),
                raw_stderr.clone(),
            )),
            Err(error) => Err(fail(format!("{name}: {error}"), raw_stderr.clone())),
        }
    };
    match scenario.workload {
        Workload::File => check_file(format!("chaos-{seed}.bin"), &expected_out)?,
        Workload::Requests => {
            let appends: String = (0..size).map(|round| format!("entry {round}\n")).collect();
            check_file(format!("appends-{seed}.txt"), appends.as_bytes())?;
        }
        Workload::Stream | Workload::Stdin | Workload::Lines => {}
    }
    Ok(proxy.faults())
}
