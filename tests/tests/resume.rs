//! Surviving the network: the real client resumes its session through a
//! proxy that cuts connections at random points, with output neither lost
//! nor duplicated and requests executed exactly once; the grace period
//! ends a session whose client does not come back; a resume token is
//! useless on another device; and a user detaches and re-attaches (tmux).

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::time::Duration;

use terminalwire_protocol::frame::{ClientFrame, ErrorCode, ServerFrame};
use terminalwire_protocol::secure::StaticKey;
use terminalwire_server::{Config, Context, Terminal};
use terminalwire_tests::cutter::Cutter;
use terminalwire_tests::tmux::{TmuxPane, session_id_on};
use terminalwire_tests::wire::{open_resumable, try_resume};
use terminalwire_tests::{Client, TestServer, eventually};

fn url_of(addr: std::net::SocketAddr) -> String {
    format!("ws://{addr}/terminal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabytes_arrive_byte_exact_through_a_connection_cut_at_random_points() {
    const BYTES: u64 = 100_000_000;
    let server = TestServer::hello().await;
    // Cut every connection after 128 KiB to 8 MiB of traffic.
    let cutter = Cutter::start(server.addr(), 128 << 10, 8 << 20, 200, 0x5eed_0001).await;
    let run = Client::new([
        url_of(cutter.addr()).as_str(),
        "stream",
        "--bytes",
        &BYTES.to_string(),
    ])
    .run()
    .await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    assert!(
        cutter.cuts() >= 5,
        "only {} cuts: the test did not test resuming",
        cutter.cuts()
    );
    let mut expected = Vec::with_capacity(BYTES as usize + 64);
    let mut line = 0;
    while (expected.len() as u64) < BYTES {
        line += 1;
        expected.extend_from_slice(hello::stream_line(line).as_bytes());
    }
    expected.truncate(BYTES as usize);
    assert_eq!(
        run.stdout.len(),
        expected.len(),
        "output lost or duplicated"
    );
    let first_difference = run.stdout.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "output corrupted");
    eprintln!(
        "{} connections, {} cuts",
        cutter.connections(),
        cutter.cuts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_appends_land_exactly_once_through_a_connection_cut_at_random_points() {
    let server = TestServer::hello().await;
    // Small budgets: cuts fall between a request and its answer, inside
    // handshakes and resumes.
    let cutter = Cutter::start(server.addr(), 1 << 10, 24 << 10, 150, 0x5eed_0002).await;
    let home = tempfile::tempdir().unwrap();
    let run = Client::new([url_of(cutter.addr()).as_str(), "append", "--times", "1000"])
        .env("TERMINALWIRE_HOME", &home.path().to_string_lossy())
        .run()
        .await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    assert_eq!(run.stdout_text(), "appended 1000 lines\n");
    assert!(
        cutter.cuts() >= 5,
        "only {} cuts: the test did not test resuming",
        cutter.cuts()
    );
    let authorities: Vec<_> = std::fs::read_dir(home.path().join("authorities"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(authorities.len(), 1, "{authorities:?}");
    let written =
        std::fs::read_to_string(authorities[0].join("storage").join("appends.txt")).unwrap();
    let expected: String = (1..=1000).map(|n| format!("entry {n}\n")).collect();
    if written != expected {
        let lines: Vec<&str> = written.lines().collect();
        panic!(
            "{} lines instead of 1000 (first difference at line {:?})",
            lines.len(),
            lines
                .iter()
                .zip(expected.lines())
                .position(|(a, b)| *a != b)
        );
    }
    eprintln!(
        "{} connections, {} cuts",
        cutter.connections(),
        cutter.cuts()
    );
}

/// The hello app with its own settings.
fn hello_with(config: Config) -> Terminal {
    Terminal::with_config(hello::command, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_come_back_within_the_grace_period_exits_75() {
    // Built first, so that the waits below time the session, not the build.
    terminalwire_tests::client_binary();
    let terminal = hello_with(Config {
        resume_grace: Duration::from_secs(1),
        ..Config::default()
    });
    let server = TestServer::with_terminal(terminal.clone()).await;
    let cutter = Cutter::reliable(server.addr()).await;
    let client = tokio::spawn(
        Client::new([
            url_of(cutter.addr()).as_str(),
            "count",
            "--to",
            "1000",
            "--every-ms",
            "20",
        ])
        .run(),
    );
    eventually("the session to start", Duration::from_secs(20), || {
        terminal.resumable_count() == 1
    })
    .await;
    // After its hello the client sends nothing until it has the welcome
    // (and its resume ticket) and acknowledges the first output: wait for
    // that, or a cut could take the welcome with it.
    let sent_before_welcome = cutter.upstream_bytes();
    eventually(
        "the client to acknowledge output",
        Duration::from_secs(20),
        || cutter.upstream_bytes() > sent_before_welcome,
    )
    .await;
    // The network goes down: the connection is cut and nothing gets through.
    cutter.refuse(true);
    cutter.cut_all();
    // The server gives up on the session after its grace period…
    eventually("the session to expire", Duration::from_secs(20), || {
        terminal.resumable_count() == 0
    })
    .await;
    // …so when the network is back, the client learns the session is gone.
    cutter.refuse(false);
    let run = client.await.unwrap();
    assert_eq!(run.status, Some(75), "stderr: {}", run.stderr_text());
    let stderr = run.stderr_text();
    assert!(
        stderr.contains("cannot be resumed") && stderr.contains("grace period"),
        "stderr: {stderr}"
    );
    // Said at once, on a stderr that is no terminal too: a script's log
    // would otherwise show nothing for the whole grace period.
    assert!(
        stderr.starts_with("terminalwire: connection lost; reconnecting"),
        "stderr: {stderr}"
    );
    // Whatever arrived before the cut arrived in order.
    let seen = ticks(&run.stdout_text());
    assert_eq!(seen, (1..=seen.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_from_another_device_is_refused() {
    let server = TestServer::hello().await;
    let url = server.url();
    let device = StaticKey::generate().unwrap();
    let thief = StaticKey::generate().unwrap();
    let (connection, session_id, token) = open_resumable(
        &url,
        &device,
        &["count", "--to", "1000", "--every-ms", "50"],
    )
    .await;
    // The stolen token, presented by another device, is refused…
    match try_resume(&url, &thief, &session_id, &token).await {
        ServerFrame::Error(error) => {
            assert_eq!(error.code, ErrorCode::Denied, "{error:?}");
            assert!(error.message.contains("device"), "{}", error.message);
        }
        other => panic!("a thief resumed the session: {other:?}"),
    }
    // …and is not spent: the device it belongs to resumes with it.
    let next = match try_resume(&url, &device, &session_id, &token).await {
        ServerFrame::Resumed(resumed) => {
            assert_eq!(resumed.received, 0);
            assert_ne!(resumed.token.as_ref(), token.as_slice(), "tokens rotate");
            resumed.token.into_vec()
        }
        other => panic!("the owner could not resume: {other:?}"),
    };
    // Once the client uses the next token, the one before is spent.
    match try_resume(&url, &device, &session_id, &next).await {
        ServerFrame::Resumed(_) => {}
        other => panic!("the next token did not resume: {other:?}"),
    }
    match try_resume(&url, &device, &session_id, &token).await {
        ServerFrame::Error(error) => assert_eq!(error.code, ErrorCode::Denied),
        other => panic!("a spent token resumed the session: {other:?}"),
    }
    // An unknown session is `expired`.
    match try_resume(&url, &device, "no-such-session", &token).await {
        ServerFrame::Error(error) => assert_eq!(error.code, ErrorCode::Expired),
        other => panic!("{other:?}"),
    }
    drop(connection);
}

/// Prints ticks 1 to `first`, waits for `go`, prints the rest up to `to`
/// (one every 10 ms), signals `done` and exits 7.
fn counting_terminal(
    first: u64,
    to: u64,
    go: Arc<tokio::sync::Notify>,
    done: Arc<tokio::sync::Notify>,
) -> Terminal {
    Terminal::new(move |ctx: Context| {
        let (go, done) = (go.clone(), done.clone());
        async move {
            for n in 1..=first {
                ctx.stdout().println(format!("tick {n}")).await?;
            }
            go.notified().await;
            for n in first + 1..=to {
                ctx.stdout().println(format!("tick {n}")).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            done.notify_one();
            Ok::<_, std::io::Error>(terminalwire_server::Outcome::Exit(7))
        }
    })
}

fn ticks(screen: &str) -> Vec<u64> {
    screen
        .lines()
        .filter_map(|line| line.trim().strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_then_attach_shows_what_was_written_meanwhile() {
    let go = Arc::new(tokio::sync::Notify::new());
    let done = Arc::new(tokio::sync::Notify::new());
    let server =
        TestServer::with_terminal(counting_terminal(3, 40, go.clone(), done.clone())).await;
    let url = server.url();
    let first = TmuxPane::start(&[&url], 80, 60);
    first.wait_for("tick 3").await;
    // Ctrl-\ detaches.
    first.send_keys(&["C-\\"]).await;
    let exit = first.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_eq!(exit.stty_before, exit.stty_after);
    assert_eq!(ticks(&exit.screen), [1, 2, 3], "screen:\n{}", exit.screen);
    let last_seen = 3;
    let id = session_id_on(&exit.screen);
    // The command goes on without a client and finishes.
    go.notify_one();
    tokio::time::timeout(Duration::from_secs(20), done.notified())
        .await
        .expect("the detached command finished");
    let listing = Client::new(["sessions"])
        .env("TERMINALWIRE_HOME", &first.home().to_string_lossy())
        .run()
        .await;
    assert!(
        listing.stdout_text().contains(&id),
        "{}",
        listing.stdout_text()
    );
    // Re-attaching shows everything written meanwhile, once, and the exit.
    let second = TmuxPane::start_with_home(&["attach", &id], 80, 60, Some(&first.home()));
    let exit = second.wait_exit().await;
    assert_eq!(exit.status, 7, "screen:\n{}", exit.screen);
    assert_eq!(
        ticks(&exit.screen),
        ((last_seen + 1)..=40).collect::<Vec<_>>(),
        "screen:\n{}",
        exit.screen
    );
    // The record is spent.
    let listing = Client::new(["sessions"])
        .env("TERMINALWIRE_HOME", &first.home().to_string_lossy())
        .run()
        .await;
    assert!(
        !listing.stdout_text().contains(&id),
        "{}",
        listing.stdout_text()
    );
}

/// `count` MiB of a deterministic pattern, from MiB `from` on.
fn mebibytes(from: usize, count: usize) -> Vec<u8> {
    (from << 20..(from + count) << 20)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// Output into a file is written by the client itself with a smaller window
/// than the one announced; after a detach, the client that re-attaches
/// (into a file again) must find the server holding the credit it expects
/// on every stream, or the output stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_and_attach_with_stdout_in_a_file_gets_every_byte() {
    const FIRST: usize = 3;
    const REST: usize = 5;
    let go = Arc::new(tokio::sync::Notify::new());
    let command_go = go.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let go = command_go.clone();
        async move {
            ctx.stdout().write_all(&mebibytes(0, FIRST)).await?;
            go.notified().await;
            ctx.stdout().write_all(&mebibytes(FIRST, REST)).await?;
            // The command knows its session could be detached.
            let status = if ctx.client().features.resumable {
                3
            } else {
                4
            };
            Ok::<_, std::io::Error>(terminalwire_server::Outcome::Exit(status))
        }
    });
    let server = TestServer::with_terminal(terminal).await;
    let url = server.url();
    let files = tempfile::tempdir().unwrap();
    let (first_out, second_out) = (files.path().join("first"), files.path().join("second"));
    let first = TmuxPane::start_with_stdout(&[&url], 80, 30, None, &first_out);
    eventually(
        "the first part in the file",
        Duration::from_secs(20),
        || std::fs::metadata(&first_out).is_ok_and(|meta| meta.len() == (FIRST << 20) as u64),
    )
    .await;
    // Ctrl-\ detaches.
    first.send_keys(&["C-\\"]).await;
    let exit = first.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    let id = session_id_on(&exit.screen);
    assert_eq!(std::fs::read(&first_out).unwrap(), mebibytes(0, FIRST));
    go.notify_one();
    let second =
        TmuxPane::start_with_stdout(&["attach", &id], 80, 30, Some(&first.home()), &second_out);
    let exit = second.wait_exit().await;
    assert_eq!(exit.status, 3, "screen:\n{}", exit.screen);
    let rest = std::fs::read(&second_out).unwrap();
    assert_eq!(rest.len(), REST << 20);
    assert!(rest == mebibytes(FIRST, REST), "the bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_needs_a_human_refuses_to_be_detached() {
    let go_on = Arc::new(tokio::sync::Notify::new());
    let app_go_on = go_on.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let go_on = app_go_on.clone();
        async move {
            ctx.refuse_detach("this command needs you at the terminal");
            ctx.stdout().println("tick 1").await?;
            // Nothing is queued when Ctrl-\ is pressed: the terminal flushes
            // output still queued then (a tty's QUIT key does).
            go_on.notified().await;
            ctx.stdout().println("tick 2").await
        }
    });
    let server = TestServer::with_terminal(terminal).await;
    let pane = TmuxPane::start(&[&server.url()], 80, 50);
    pane.wait_for("tick 1").await;
    pane.send_keys(&["C-\\"]).await;
    pane.wait_for("cannot detach: this command needs you at the terminal")
        .await;
    // The session goes on.
    go_on.notify_one();
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_eq!(ticks(&exit.screen), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_sent_twice_is_answered_twice_but_executed_once() {
    use terminalwire_protocol::frame::{Exit, Operation, Request, RequestId, Software, Welcome};
    use terminalwire_tests::{ScriptedServer, next_client_frame, send_server_frame};
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = answers.clone();
    let server = ScriptedServer::start(true, move |mut socket| {
        let seen = seen.clone();
        async move {
            let Some(ClientFrame::Hello(hello)) = next_client_frame(&mut socket).await else {
                return;
            };
            let welcome = ServerFrame::Welcome(Welcome {
                version: 1,
                server: Software {
                    name: "forgetful".into(),
                    version: "0".into(),
                },
                session_id: "twice".into(),
                capabilities: Vec::new(),
                window: terminalwire_protocol::DEFAULT_WINDOW,
                max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
                resume: None,
            });
            send_server_frame(&mut socket, &welcome).await;
            let path = format!("{}/dup.txt", hello.storage.unwrap());
            let append = ServerFrame::Request(Request {
                id: RequestId(5),
                op: Operation::FileAppend {
                    path,
                    bytes: b"once\n".to_vec().into(),
                },
            });
            send_server_frame(&mut socket, &append).await;
            // Wait for the first answer so the second is not "still running".
            let Some(first) = next_client_frame(&mut socket).await else {
                return;
            };
            seen.lock().unwrap().push(first);
            send_server_frame(&mut socket, &append).await;
            let Some(second) = next_client_frame(&mut socket).await else {
                return;
            };
            seen.lock().unwrap().push(second);
            send_server_frame(&mut socket, &ServerFrame::Exit(Exit { status: 0 })).await;
            while next_client_frame(&mut socket).await.is_some() {}
        }
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let run = Client::new([server.url().as_str(), "go"])
        .env("TERMINALWIRE_HOME", &home.path().to_string_lossy())
        .run()
        .await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], answers[1], "the same answer both times");
    assert!(
        matches!(&answers[0], ClientFrame::Response(response) if response.id == terminalwire_protocol::RequestId(5) && response.error.is_none()),
        "{answers:?}"
    );
    let authority = std::fs::read_dir(home.path().join("authorities"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let written = std::fs::read_to_string(authority.join("storage").join("dup.txt")).unwrap();
    assert_eq!(written, "once\n", "the append ran more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_shows_one_reconnecting_line_and_the_command_goes_on() {
    let server = TestServer::hello().await;
    let cutter = Cutter::reliable(server.addr()).await;
    let url = url_of(cutter.addr());
    let pane = TmuxPane::start(&[&url, "count", "--to", "40", "--every-ms", "50"], 80, 60);
    pane.wait_for("tick 3").await;
    cutter.refuse(true);
    cutter.cut_all();
    pane.wait_for("terminalwire: connection lost; reconnecting")
        .await;
    cutter.refuse(false);
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_eq!(
        ticks(&exit.screen),
        (1..=40).collect::<Vec<_>>(),
        "screen:\n{}",
        exit.screen
    );
    assert_eq!(
        exit.screen.matches("reconnecting").count(),
        1,
        "screen:\n{}",
        exit.screen
    );
    assert!(cutter.connections() >= 2);
}

/// An acknowledgement falls due (every 32 frames) while the answers of a
/// burst of requests wait to leave: it is kept for them and leaves with
/// them; it is not lost to the acknowledgement timer's later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_due_while_answers_wait_leaves_with_them() {
    use terminalwire_protocol::frame::{
        Exit, Operation, Request, RequestId, ResumeTicket, Welcome,
    };
    use terminalwire_tests::{
        ScriptedServer, next_client_frame, scripted_welcome_fields, send_server_frame,
    };
    const REQUESTS: u64 = 40;
    let seen = Arc::new(std::sync::Mutex::new((Vec::new(), 0u64)));
    let script_seen = seen.clone();
    let server = ScriptedServer::start(true, move |mut socket| {
        let seen = script_seen.clone();
        async move {
            let Some(ClientFrame::Hello(hello)) = next_client_frame(&mut socket).await else {
                return;
            };
            let welcome = Welcome {
                capabilities: vec![terminalwire_protocol::resume::CAPABILITY.into()],
                resume: Some(ResumeTicket {
                    token: vec![7; 32].into(),
                    grace_secs: 30,
                    detach_secs: 0,
                }),
                ..scripted_welcome_fields()
            };
            send_server_frame(&mut socket, &ServerFrame::Welcome(welcome)).await;
            let storage = hello.storage.unwrap_or_default();
            let burst: Vec<ServerFrame> = (1..=REQUESTS)
                .map(|id| {
                    ServerFrame::Request(Request {
                        id: RequestId(id),
                        op: Operation::FileExists {
                            path: format!("{storage}/missing-{id}"),
                        },
                    })
                })
                .collect();
            socket.send_frames_together(&burst).await;
            // Until every answer came. A due acknowledgement that was
            // dropped never comes: the receipts count it as sent, so the
            // timer's later one says 40, not 32.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(frame) = next_client_frame(&mut socket).await {
                    let mut seen = seen.lock().unwrap();
                    match frame {
                        ClientFrame::Ack(ack) => seen.0.push(ack.seq),
                        ClientFrame::Response(_) => seen.1 += 1,
                        _ => {}
                    }
                    if seen.1 == REQUESTS {
                        break;
                    }
                }
            })
            .await;
            send_server_frame(&mut socket, &ServerFrame::Exit(Exit { status: 0 })).await;
            while next_client_frame(&mut socket).await.is_some() {}
        }
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let run = Client::new([server.url().as_str(), "go"])
        .env("TERMINALWIRE_HOME", &home.path().to_string_lossy())
        .run()
        .await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    let (acks, answers) = seen.lock().unwrap().clone();
    assert_eq!(answers, REQUESTS, "every answer");
    assert_eq!(
        acks.first(),
        Some(&32),
        "the acknowledgement due at the 32nd request: {acks:?}"
    );
}

/// A client the user ends on purpose (SIGTERM, SIGHUP, a second Ctrl-C,
/// `~.`) says so: the server cancels the command at once instead of keeping
/// the session for a resume that will not come (two minutes by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ended_on_purpose_cancels_its_command_at_once() {
    use tokio::io::AsyncBufReadExt;
    /// Tells `dropped` when the command is cancelled.
    struct OnDrop(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            if let Some(dropped) = self.0.take() {
                let _ = dropped.send(());
            }
        }
    }
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
    let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let terminal = Terminal::new(move |ctx: Context| {
        let guard = OnDrop(dropped_tx.lock().unwrap().take());
        async move {
            let _guard = guard;
            ctx.stdout().println("started").await?;
            std::future::pending::<()>().await;
            anyhow::Ok(())
        }
    });
    assert!(terminal.config().resume_grace >= Duration::from_secs(60));
    let server = TestServer::with_terminal(terminal).await;
    let home = terminalwire_tests::process::ClientHome::new();
    let mut child = home
        .command([url_of(server.addr()).as_str(), "go"])
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
        .await
        .expect("the command did not start")
        .unwrap();
    assert_eq!(line, "started\n");
    let term = rustix::process::Signal::TERM;
    let within = Duration::from_secs(20);
    let code =
        terminalwire_tests::process::signal_and_wait(&mut child, term, within, "running").await;
    assert_eq!(code, Some(128 + 15));
    tokio::time::timeout(Duration::from_secs(20), dropped)
        .await
        .expect("the command still runs: the server waits for a resume")
        .unwrap();
}
