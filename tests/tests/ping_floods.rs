//! A client that sends WebSocket pings and reads nothing, against the SDK's
//! own axum route: the server's memory stays flat. Alone in its test
//! binary, since it measures this process's resident memory.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::Duration;

use terminalwire_server::{Config, Context, Terminal};
use terminalwire_tests::TestServer;
use terminalwire_tests::process::proc_status_bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Each ping's pong waits in the server's WebSocket write buffer, which is
/// bounded (the latest pong kept). Unbounded, 256 MiB of pings from an
/// anonymous client (no handshake needed) grew the server by 244 MiB; here
/// 128 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_from_a_client_that_reads_nothing_do_not_grow_the_server() {
    // The handshake's deadline must not end the flood on a busy machine.
    let config = Config {
        handshake_timeout: Duration::from_secs(600),
        ..Config::default()
    };
    let terminal = Terminal::with_config(|_ctx: Context| async {}, config);
    let server = TestServer::with_terminal(terminal).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    // Nothing the server sends is read from here on but the upgrade's
    // answer, so its pongs fill this socket's buffers, then its own.
    rustix::net::sockopt::set_socket_recv_buffer_size(&tcp, 64 * 1024).unwrap();
    let request = format!(
        "GET /terminal HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        terminalwire_protocol::SUBPROTOCOL
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = BufReader::new(&mut tcp);
    let mut line = String::new();
    answer.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    while line != "\r\n" {
        line.clear();
        answer.read_line(&mut line).await.unwrap();
    }
    // Masked pings of 125 bytes (mask 0: the bytes as they are).
    let mut ping = vec![0x89u8, 0x80 | 125, 0, 0, 0, 0];
    ping.extend_from_slice(&[7u8; 125]);
    let block: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    let before = proc_status_bytes(None, "VmRSS").unwrap();
    // Returns once the server took all but what the sockets hold.
    for _ in 0..(128 << 20) / block.len() {
        tcp.write_all(&block).await.unwrap();
    }
    let grown = proc_status_bytes(None, "VmRSS")
        .unwrap()
        .saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "the server grew by {} MiB for 128 MiB of pings",
        grown >> 20
    );
}
