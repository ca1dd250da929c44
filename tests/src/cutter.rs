//! A flaky network: a TCP proxy on `127.0.0.1:0` that forwards connections
//! to a target and cuts each one (a TCP reset both ways) after a random
//! number of bytes, from a seeded generator so that a failure can be
//! replayed. It can also refuse new connections for a while, like a network
//! that is down.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[derive(Debug)]
struct State {
    target: SocketAddr,
    /// xorshift64 state.
    rng: u64,
    /// Each connection is cut after a byte count drawn from this range
    /// (both directions together); `None`: never cut.
    budget: Option<(u64, u64)>,
    /// Connections cut so far.
    cuts: u64,
    /// Connections accepted so far.
    connections: u64,
    /// Bytes read from clients (counted before they are passed on).
    upstream: u64,
    /// New connections are closed at once.
    refusing: bool,
    /// Stop cutting after this many cuts (so a run always finishes).
    max_cuts: u64,
}

impl State {
    fn next_budget(&mut self) -> Option<u64> {
        let (low, high) = self.budget?;
        if self.cuts >= self.max_cuts {
            return None;
        }
        // xorshift64: plenty for picking cut points.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        Some(low + x % (high - low + 1))
    }
}

/// A proxy that cuts connections.
#[derive(Debug)]
pub struct Cutter {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    cut_now: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Cutter {
    /// Forwards to `target`, cutting each connection after between `low`
    /// and `high` bytes, at most `max_cuts` times; `seed` picks the points.
    pub async fn start(
        target: SocketAddr,
        low: u64,
        high: u64,
        max_cuts: u64,
        seed: u64,
    ) -> Cutter {
        assert!(low <= high && seed != 0);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            target,
            rng: seed,
            budget: Some((low, high)),
            cuts: 0,
            connections: 0,
            upstream: 0,
            refusing: false,
            max_cuts,
        }));
        let cut_now = Arc::new(Notify::new());
        let shared = state.clone();
        let cut_all = cut_now.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let budget = {
                    let mut state = shared.lock().unwrap();
                    state.connections += 1;
                    if state.refusing {
                        None
                    } else {
                        Some((state.target, state.next_budget()))
                    }
                };
                match budget {
                    None => reset(client),
                    Some((target, budget)) => {
                        tokio::spawn(forward(
                            client,
                            target,
                            budget,
                            shared.clone(),
                            cut_all.clone(),
                        ));
                    }
                }
            }
        });
        Cutter {
            addr,
            state,
            cut_now,
            task,
        }
    }

    /// A proxy that forwards without cutting until told to.
    pub async fn reliable(target: SocketAddr) -> Cutter {
        let cutter = Cutter::start(target, 1, 1, 0, 1).await;
        cutter.state.lock().unwrap().budget = None;
        cutter
    }

    /// The proxy's address: clients connect here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.state.lock().unwrap().cuts
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.lock().unwrap().connections
    }

    /// Bytes received from clients so far, all connections together; a
    /// byte counts before the server can have it.
    pub fn upstream_bytes(&self) -> u64 {
        self.state.lock().unwrap().upstream
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        self.cut_now.notify_waiters();
    }

    /// While refusing, new connections are reset at once (the network is down).
    pub fn refuse(&self, refusing: bool) {
        self.state.lock().unwrap().refusing = refusing;
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_now.notify_waiters();
    }
}

/// Drops a connection with a reset, as a dead network path looks to a peer
/// that tries to use it.
pub(crate) fn reset(stream: TcpStream) {
    // A zero linger never blocks (the warning's concern): the close sends
    // a reset at once.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

async fn forward(
    client: TcpStream,
    target: SocketAddr,
    budget: Option<u64>,
    state: Arc<Mutex<State>>,
    cut_now: Arc<Notify>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let left = Mutex::new(budget);
    // Set when the connection is cut: both directions stop at once.
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Copies one direction until its end (then passes the end on) or the cut.
    async fn copy(
        from: &mut tokio::net::tcp::OwnedReadHalf,
        to: &mut tokio::net::tcp::OwnedWriteHalf,
        left: &Mutex<Option<u64>>,
        cut_tx: &tokio::sync::watch::Sender<bool>,
        mut cut_rx: tokio::sync::watch::Receiver<bool>,
        count: &(dyn Fn(u64) + Sync),
    ) {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let read = tokio::select! {
                read = from.read(&mut buffer) => read,
                _ = cut_rx.wait_for(|cut| *cut) => return,
            };
            let n = match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            };
            count(n as u64);
            let (pass, cut) = {
                let mut left = left.lock().unwrap();
                match left.as_mut() {
                    None => (n, false),
                    Some(left) if (n as u64) < *left => {
                        *left -= n as u64;
                        (n, false)
                    }
                    Some(left) => (usize::try_from(*left).unwrap_or(n), true),
                }
            };
            if to.write_all(&buffer[..pass]).await.is_err() {
                return;
            }
            if cut {
                let _ = cut_tx.send(true);
                return;
            }
        }
    }
    let cut_by_hand = {
        let cut_tx = cut_tx.clone();
        async move {
            cut_now.notified().await;
            let _ = cut_tx.send(true);
        }
    };
    let count_upstream = |n: u64| state.lock().unwrap().upstream += n;
    let count_nothing = |_: u64| {};
    tokio::select! {
        () = async {
            tokio::join!(
                copy(&mut client_read, &mut server_write, &left, &cut_tx, cut_rx.clone(), &count_upstream),
                copy(&mut server_read, &mut client_write, &left, &cut_tx, cut_rx.clone(), &count_nothing),
            );
        } => {}
        () = cut_by_hand => {}
    }
    if *cut_rx.borrow() {
        state.lock().unwrap().cuts += 1;
        if let Ok(client) = client_read.reunite(client_write) {
            reset(client);
        }
        if let Ok(server) = server_read.reunite(server_write) {
            reset(server);
        }
    }
}
