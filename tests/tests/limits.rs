//! Limits and hostile clients: the server keeps serving everyone else.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::sync::Arc;

use std::time::Duration;
use terminalwire_server::{Config, Context, ResourceError, Terminal};

use terminalwire_tests::{Client, TestServer, eventually};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_limit_refuses_cleanly_and_frees_up() {
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (started_in, release_in) = (started.clone(), release.clone());
    let config = Config {
        max_sessions: 1,
        ..Config::default()
    };
    let terminal = Terminal::with_config(
        move |ctx: Context| {
            let (started, release) = (started_in.clone(), release_in.clone());
            async move {
                if ctx.args().first().map(String::as_str) == Some("hold") {
                    started.notify_one();
                    release.notified().await;
                }
                ctx.stdout().println("served").await.unwrap();
            }
        },
        config,
    );
    let server = TestServer::with_terminal(terminal.clone()).await;
    let holder = tokio::spawn(Client::new([server.url().as_str(), "hold"]).run());
    started.notified().await;
    let refused = Client::new([server.url().as_str()]).run().await;
    assert_eq!(refused.status, Some(69), "{}", refused.stderr_text());
    assert!(
        refused.stderr_text().contains("503"),
        "{}",
        refused.stderr_text()
    );
    release.notify_one();
    assert_eq!(holder.await.unwrap().stdout_text(), "served\n");
    // The holder's client has exited; the server's end of its session may
    // still be closing, and holds the only place until it is done.
    eventually("the session's end", Duration::from_secs(10), || {
        terminal.session_count() == 0
    })
    .await;
    let run = Client::new([server.url().as_str()]).run().await;
    assert_eq!(run.stdout_text(), "served\n", "{}", run.stderr_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_stop_the_server_serving_others() {
    let server = TestServer::hello().await;
    let addr = server.addr();
    // Slowloris: half an HTTP request, never finished.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /terminal HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // WebSockets that upgrade and then never finish the secure handshake,
    // or send garbage in its place.
    let mut stalled = Vec::new();
    for garbage in [None, Some(vec![0u8; 10]), Some(vec![0xff; 70_000])] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = server.url().into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            terminalwire_protocol::SUBPROTOCOL.parse().unwrap(),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        if let Some(garbage) = garbage {
            use futures_util::SinkExt;
            let _ = socket
                .send(tokio_tungstenite::tungstenite::Message::Binary(
                    garbage.into(),
                ))
                .await;
        }
        stalled.push(socket);
    }
    for n in 0..3 {
        let name = format!("user{n}");
        let run = Client::new([server.url().as_str(), "hello", &name])
            .run()
            .await;
        assert_eq!(
            run.stdout_text(),
            format!("Hello, {name}!\n"),
            "{}",
            run.stderr_text()
        );
    }
    drop(slow);
    drop(stalled);
}

/// A client that completes the secure handshake, then sends `payloads` as
/// sealed frames (or raw ones when `raw`), and holds the connection.
async fn hostile_client(
    url: &str,
    payloads: Vec<Vec<u8>>,
) -> Option<
    terminalwire_client::secure::SecureSocket<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
> {
    use futures_util::SinkExt;
    let target = terminalwire_client::connect::Target::parse(url).unwrap();
    let socket = terminalwire_client::connect::connect(&target, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let device = terminalwire_protocol::secure::StaticKey::generate().unwrap();
    let (mut socket, _) = terminalwire_client::secure::handshake(
        socket,
        &device,
        &terminalwire_client::secure::ServerPin::FirstContact,
        &target.authority,
        std::time::Duration::from_secs(10),
    )
    .await
    .ok()?;
    for payload in payloads {
        if socket
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                payload.into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    Some(socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_from_clients_end_only_their_own_sessions() {
    let server = TestServer::hello().await;
    let mut bomb = vec![0x81, 0xa1, b't'];
    bomb.extend(std::iter::repeat_n(0x91, 100_000));
    bomb.push(0x00);
    let bin_claim = vec![
        0x82, 0xa1, b't', 0xa4, b'd', b'a', b't', b'a', 0xa5, b'b', b'y', b't', b'e', b's', 0xc6,
        0xff, 0xff, 0xff, 0xff,
    ];
    // A window grant of 4 GiB - 1, many times: credit must not overflow.
    let window = codec_window(u32::MAX);
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("nesting bomb", vec![bomb]),
        ("bin32 claim", vec![bin_claim]),
        ("window flood", vec![window; 1000]),
        ("empty frames", vec![Vec::new(); 1000]),
    ];
    let mut held = Vec::new();
    for (case, payloads) in cases {
        held.push(hostile_client(&server.url(), payloads).await);
        let run = Client::new([server.url().as_str(), "hello", case])
            .run()
            .await;
        assert_eq!(
            run.stdout_text(),
            format!("Hello, {case}!\n"),
            "after {case}: {}",
            run.stderr_text()
        );
    }
    drop(held);
}

fn codec_window(bytes: u32) -> Vec<u8> {
    use terminalwire_protocol::frame::WindowAdjust;
    terminalwire_protocol::codec::encode(&terminalwire_protocol::ClientFrame::Window(
        WindowAdjust {
            sid: terminalwire_protocol::StreamId::STDOUT,
            bytes,
        },
    ))
}

/// Writes to its storage as the arguments say, printing each outcome:
/// `write NAME KIB`, `append NAME KIB`, `stream NAME KIB`, `delete NAME`.
fn storage_filler() -> Terminal {
    Terminal::new(|ctx: Context| async move {
        let args = ctx.args().to_vec();
        for step in args.chunks(3) {
            let path = ctx.storage_path(&step[1]).unwrap();
            let bytes = |index: usize| vec![b'x'; step[index].parse::<usize>().unwrap() * 1024];
            let files = ctx.file();
            let outcome = match step[0].as_str() {
                "write" => files.write(&path, bytes(2)).await,
                "append" => files.append(&path, bytes(2)).await,
                "stream" => {
                    async {
                        let mut writer = files.writer(&path).await?;
                        for chunk in bytes(2).chunks(64 * 1024) {
                            if let Err(error) = writer.write(chunk).await {
                                // Abandoned: said so, not "disconnected".
                                let again = writer.write(b"x").await;
                                let abandoned = matches!(
                                    &again,
                                    Err(ResourceError::Invalid { message }) if message.contains("abandoned")
                                );
                                assert!(abandoned, "{again:?}");
                                return Err(error);
                            }
                        }
                        writer.commit().await
                    }
                    .await
                }
                "delete" => files.delete(&path).await,
                other => panic!("unknown step {other}"),
            };
            let shown = match outcome {
                Ok(()) => "ok".to_owned(),
                Err(error) => format!("refused: {error}"),
            };
            ctx.stdout()
                .println(format!("{} {}: {shown}", step[0], step[1]))
                .await
                .unwrap();
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cannot_write_more_than_its_storage_quota() {
    let server = TestServer::with_terminal(storage_filler()).await;
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_str().unwrap();
    let authority = server.addr().to_string();
    let set = Client::new(["entitlement", "quota", &authority, "1"])
        .env("TERMINALWIRE_HOME", home_path)
        .run()
        .await;
    assert_eq!(set.status, Some(0), "{}", set.stderr_text());
    assert_eq!(
        set.stdout_text(),
        format!("{authority}: storage may hold 1 MiB\n")
    );
    let steps = [
        // 600 KiB, rewritten: only what a file grows by counts.
        "write a 600",
        "write a 600",
        "write a 600",
        // A second 600 KiB does not fit, in one piece, streamed or appended.
        "write b 600",
        "stream b 600",
        "append b 600",
        // Far over: refused while the writer still writes.
        "stream d 4000",
        // Small additions still fit.
        "append c 100",
        // Deleting frees room.
        "delete a -",
        "stream b 600",
    ];
    let mut args = vec![server.url()];
    for step in steps {
        args.extend(step.split(' ').map(str::to_owned));
    }
    let run = Client::new(args)
        .env("TERMINALWIRE_HOME", home_path)
        .run()
        .await;
    let stdout = run.stdout_text();
    let outcomes: Vec<&str> = stdout
        .lines()
        .map(|line| {
            if line.contains("refused") {
                "refused"
            } else {
                line
            }
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "write a: ok",
            "write a: ok",
            "write a: ok",
            "refused",
            "refused",
            "refused",
            "refused",
            "append c: ok",
            "delete a: ok",
            "stream b: ok",
        ],
        "{stdout}\n{}",
        run.stderr_text()
    );
    assert!(
        stdout.contains("storage folder is full")
            && stdout.contains(&format!("terminalwire entitlement quota {authority} MIB")),
        "{stdout}"
    );
    // What is in storage stayed under the quota.
    let storage = home.path().join(format!("authorities/{authority}/storage"));
    let held: u64 = std::fs::read_dir(&storage)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert!(held <= 1 << 20, "{held} bytes in storage");
    let list = Client::new(["entitlement", "list", &authority])
        .env("TERMINALWIRE_HOME", home_path)
        .run()
        .await;
    assert!(
        list.stdout_text().contains("up to 1 MiB"),
        "{}",
        list.stdout_text()
    );
}

/// Upgrades that arrive together each take their place among
/// `max_sessions` as they are checked: with a limit of 1, a burst of 64
/// gets one session (2–3 were accepted: each passed a check of the running
/// sessions alone, before any had started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_limit_holds_for_upgrades_that_arrive_together() {
    for _burst in 0..40 {
        let config = Config {
            max_sessions: 1,
            max_sessions_per_address: 0,
            ..Config::default()
        };
        let terminal =
            Terminal::with_config(|ctx: Context| async move { ctx.closed().await }, config);
        let server = TestServer::with_terminal(terminal).await;
        let addr = server.addr();
        let request = format!(
            "GET /terminal HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: {}\r\n\r\n",
            terminalwire_protocol::SUBPROTOCOL
        );
        // Clients on threads of their own send their requests at one moment.
        let barrier = Arc::new(std::sync::Barrier::new(64));
        let clients: Vec<_> = (0..64)
            .map(|_| {
                let (barrier, request) = (barrier.clone(), request.clone());
                std::thread::spawn(move || {
                    use std::io::{BufRead, Write};
                    let mut client = std::net::TcpStream::connect(addr).unwrap();
                    barrier.wait();
                    client.write_all(request.as_bytes()).unwrap();
                    let mut reader = std::io::BufReader::new(client);
                    let mut status = String::new();
                    reader.read_line(&mut status).unwrap();
                    (status, reader)
                })
            })
            .collect();
        let mut upgraded = 0;
        let mut held = Vec::new();
        for client in clients {
            let (status, connection) = tokio::task::spawn_blocking(move || client.join().unwrap())
                .await
                .unwrap();
            if status.starts_with("HTTP/1.1 101") {
                upgraded += 1;
            }
            held.push(connection);
        }
        assert_eq!(
            upgraded, 1,
            "max_sessions = 1, yet {upgraded} upgrades were accepted"
        );
        drop(held);
    }
}
