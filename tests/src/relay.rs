//! A man in the middle: a TCP relay on `127.0.0.1:0` that forwards each
//! connection to a target it can switch, records what passes, and can flip a
//! byte of the server's stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The relay's shared state.
#[derive(Debug, Default)]
struct State {
    target: Option<SocketAddr>,
    /// Everything the server sent, all connections.
    from_server: Vec<u8>,
    /// Everything the client sent, all connections.
    from_client: Vec<u8>,
    /// Flip this byte (counted per connection) of the server's stream.
    flip_server_byte: Option<usize>,
}

/// A TCP relay in front of a server.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            target: Some(target),
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(relay(client, state));
            }
        });
        Relay { addr, state, task }
    }

    /// The relay's address: clients connect here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends later connections to `target`.
    pub fn switch_to(&self, target: SocketAddr) {
        self.state.lock().unwrap().target = Some(target);
    }

    /// Flips (xor 0x01) byte `index` of the server's stream in later
    /// connections.
    pub fn flip_server_byte(&self, index: usize) {
        self.state.lock().unwrap().flip_server_byte = Some(index);
    }

    /// What the server sent so far.
    pub fn from_server(&self) -> Vec<u8> {
        self.state.lock().unwrap().from_server.clone()
    }

    /// What the client sent so far.
    pub fn from_client(&self) -> Vec<u8> {
        self.state.lock().unwrap().from_client.clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, state: Arc<Mutex<State>>) {
    let (target, flip) = {
        let state = state.lock().unwrap();
        (state.target, state.flip_server_byte)
    };
    let Some(target) = target else { return };
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up_state = state.clone();
    let up = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            up_state
                .lock()
                .unwrap()
                .from_client
                .extend_from_slice(&buffer[..n]);
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut seen = 0usize;
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(index) = flip
                && (seen..seen + n).contains(&index)
            {
                buffer[index - seen] ^= 0x01;
            }
            seen += n;
            state
                .lock()
                .unwrap()
                .from_server
                .extend_from_slice(&buffer[..n]);
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}
