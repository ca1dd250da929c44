//! The real `terminalwire` binary against real servers on loopback.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use terminalwire_protocol::frame::{
    Data, Exit as ExitFrame, Incompatible, Operation, Reply, Request, StreamId,
};
use terminalwire_protocol::{ClientFrame, ErrorCode, RequestId, ServerFrame, VersionRange};
use terminalwire_server::{Context, Exit, Terminal};
use terminalwire_tests::process::ClientHome;
use terminalwire_tests::{
    CLIENT_DEADLINE, Client, ScriptedServer, TestServer, ask, client_binary, next_client_frame,
    raw_http, send_server_frame, status_of, welcome,
};
use tokio::sync::Notify;

/// Documented client exit statuses (README, `client/src/error.rs`).
const USAGE: i32 = 2;
const UNAVAILABLE: i32 = 69;
const CONNECTION_LOST: i32 = 75;
const PROTOCOL: i32 = 76;
const INCOMPATIBLE: i32 = 78;
const BROKEN_PIPE: i32 = 141;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_prints_the_greeting_and_exits_zero() {
    let server = TestServer::hello().await;
    let run = Client::new([server.url().as_str(), "hello", "Ada"])
        .run()
        .await;
    assert_eq!(run.stdout_text(), "Hello, Ada!\n");
    assert_eq!(run.stderr_text(), "");
    assert_eq!(run.status, Some(0));

    let run = Client::new([server.url().as_str(), "hello", "Ada", "--shout"])
        .run()
        .await;
    assert_eq!(run.stdout_text(), "HELLO, ADA!\n");
    assert_eq!(run.status, Some(0));
}

/// A command line the server would refuse as no frame (more values than a
/// frame may hold) is the user's error, said so, before any hello leaves;
/// one at the limit goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_line_too_long_to_send_is_a_usage_error() {
    let server = TestServer::hello().await;
    // `count` arguments of `len` bytes each.
    let args_of = |count: usize, len: usize| {
        let mut args = vec![server.url(), "hello".to_owned()];
        args.extend(std::iter::repeat_n("a".repeat(len), count));
        args
    };
    let args = |count: usize| args_of(count, 1);
    let run = Client::new(args(terminalwire_protocol::MAX_VALUES))
        .run()
        .await;
    assert_eq!(run.status, Some(2), "{}", run.stderr_text());
    assert!(
        run.stderr_text()
            .contains("the command line is too long to send")
            && run
                .stderr_text()
                .contains("more than 131072 values in a frame")
            && !run.stderr_text().contains("not a frame"),
        "{}",
        run.stderr_text()
    );
    // The app's own usage error: the hello reached it.
    let run = Client::new(args(1000)).run().await;
    assert_eq!(run.status, Some(2), "{}", run.stderr_text());
    assert!(
        !run.stderr_text().contains("too long to send"),
        "{}",
        run.stderr_text()
    );
    // By bytes: a hello of about 0.9 MiB reaches the app through the real
    // server; one of about 1.2 MiB, past the frame limit, never leaves.
    let run = Client::new(args_of(9_000, 100)).run().await;
    assert_eq!(run.status, Some(2), "{}", run.stderr_text());
    assert!(
        run.stderr_text().contains("unexpected argument"),
        "{}",
        run.stderr_text()
    );
    let run = Client::new(args_of(12_000, 100)).run().await;
    assert_eq!(run.status, Some(2), "{}", run.stderr_text());
    assert!(
        run.stderr_text()
            .contains("the command line is too long to send")
            && run
                .stderr_text()
                .contains("exceeds the limit of 1048576 bytes"),
        "{}",
        run.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_urls_are_mapped_to_websocket() {
    let server = TestServer::hello().await;
    let url = server.url().replacen("ws://", "http://", 1);
    let run = Client::new([url.as_str(), "hello", "web"]).run().await;
    assert_eq!(run.stdout_text(), "Hello, web!\n", "{}", run.stderr_text());
    assert_eq!(run.status, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_exit_status_and_arguments_reach_the_client() {
    let terminal = Terminal::new(|ctx: Context| async move {
        ctx.stdout().println(ctx.args().join("|")).await.unwrap();
        ctx.stderr().println("to stderr").await.unwrap();
        Exit(42)
    });
    let server = TestServer::with_terminal(terminal).await;
    let run = Client::new([server.url().as_str(), "a b", "--flag", "-x", "--", "ü"])
        .run()
        .await;
    assert_eq!(run.stdout_text(), "a b|--flag|-x|--|ü\n");
    assert_eq!(run.stderr_text(), "to stderr\n");
    assert_eq!(run.status, Some(42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_exits_one_with_its_message() {
    let server = TestServer::hello().await;
    // `ask` with stdin at end of file gets no name and fails.
    let run = Client::new([server.url().as_str(), "ask"]).run().await;
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr_text().contains("no name given"),
        "stderr: {}",
        run.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_exits_one_and_the_server_serves_the_next_client() {
    let terminal = Terminal::new(|ctx: Context| async move {
        if ctx.args().first().map(String::as_str) == Some("panic") {
            panic!("the handler fell over");
        }
        ctx.stdout().println("still here").await.unwrap();
    });
    let server = TestServer::with_terminal(terminal).await;
    let run = Client::new([server.url().as_str(), "panic"]).run().await;
    assert_eq!(run.status, Some(1));
    assert_eq!(run.stdout_text(), "");
    let stderr = run.stderr_text();
    // The panic's details stay in the server's log, like a web app's 500.
    assert!(
        stderr.starts_with("error: the command failed unexpectedly on the server"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("fell over"), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    let run = Client::new([server.url().as_str(), "calm"]).run().await;
    assert_eq!(run.stdout_text(), "still here\n");
    assert_eq!(run.status, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clap_help_and_version_go_to_stdout_with_status_zero() {
    let server = TestServer::hello().await;
    let run = Client::new([server.url().as_str(), "--help"]).run().await;
    assert_eq!(run.status, Some(0));
    assert_eq!(run.stderr_text(), "");
    let help = run.stdout_text();
    let usage = format!("Usage: terminalwire {} <COMMAND>", server.url());
    assert!(help.contains(&usage), "help: {help}");
    assert!(help.contains("Greet someone"), "help: {help}");
    // Stdout is a pipe: no colour codes.
    assert!(!help.contains('\u{1b}'), "help: {help:?}");

    let run = Client::new([server.url().as_str(), "--version"])
        .run()
        .await;
    assert_eq!(run.status, Some(0));
    assert_eq!(
        run.stdout_text(),
        format!("hello {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clap_usage_errors_go_to_stderr_with_status_two() {
    let server = TestServer::hello().await;
    let run = Client::new([server.url().as_str(), "frobnicate"])
        .run()
        .await;
    assert_eq!(run.status, Some(USAGE));
    assert_eq!(run.stdout_text(), "");
    let stderr = run.stderr_text();
    assert!(
        stderr.starts_with("error: unrecognized subcommand 'frobnicate'"),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("Usage: terminalwire"), "stderr: {stderr}");

    let run = Client::new([server.url().as_str(), "hello"]).run().await;
    assert_eq!(run.status, Some(USAGE));
    assert!(
        run.stderr_text().contains("<NAME>"),
        "{}",
        run.stderr_text()
    );
}

/// A client option typed after the URL goes to the app, as typed, and
/// the app's usage error is followed by a line that says where it belongs
/// (there was only the app's "unexpected argument"). An app's usage error
/// without one, or a client option after `--`, gets no such line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_option_after_the_url_is_pointed_back_before_it() {
    let server = TestServer::hello().await;
    let url = server.url();
    let run = Client::new([url.as_str(), "--no-prompt", "hello", "x"])
        .run()
        .await;
    assert_eq!(run.status, Some(USAGE));
    let stderr = run.stderr_text();
    // What the app got, unchanged.
    assert!(
        stderr.starts_with("error: unexpected argument '--no-prompt' found"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(
            "\nterminalwire: `--no-prompt` is an option of the client: put it before the URL\n"
        ),
        "{stderr}"
    );
    let run = Client::new([url.as_str(), "hello", "-v", "--connect-timeout", "3"])
        .run()
        .await;
    assert_eq!(run.status, Some(USAGE));
    assert!(
        run.stderr_text().ends_with(
            "terminalwire: `-v`, `--connect-timeout` are options of the client: put them \
             before the URL\n"
        ),
        "{}",
        run.stderr_text()
    );
    for args in [
        vec![url.as_str(), "frobnicate"],
        vec![url.as_str(), "hello", "--", "--no-prompt", "x"],
    ] {
        let run = Client::new(args.clone()).run().await;
        assert_eq!(run.status, Some(USAGE), "{args:?}");
        assert!(
            !run.stderr_text().contains("option of the client"),
            "{args:?}: {}",
            run.stderr_text()
        );
    }
    // A client option the app's command accepts: no usage error, no line.
    let run = Client::new([url.as_str(), "hello", "--", "-v"]).run().await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert_eq!(run.stderr_text(), "");
}

/// The first `bytes` bytes of the hello app's `stream` output.
fn stream_output(bytes: usize) -> Vec<u8> {
    let mut expected = Vec::with_capacity(bytes + 64);
    let mut line = 0;
    while expected.len() < bytes {
        line += 1;
        expected.extend_from_slice(hello::stream_line(line).as_bytes());
    }
    expected.truncate(bytes);
    expected
}

/// Compares without printing megabytes on failure.
fn assert_same_output(got: &[u8], expected: &[u8]) {
    assert_eq!(got.len(), expected.len());
    let first_difference = got.iter().zip(expected).position(|(a, b)| a != b);
    assert_eq!(first_difference, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_of_stdout_arrive_byte_exact() {
    const BYTES: usize = 20_000_000;
    let server = TestServer::hello().await;
    let run = Client::new([
        server.url().as_str(),
        "stream",
        "--bytes",
        &BYTES.to_string(),
    ])
    .run()
    .await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    assert_same_output(&run.stdout, &stream_output(BYTES));
}

/// Into a file, the client writes each chunk itself (no writer thread)
/// with a smaller window: every byte must still arrive, in order, and
/// every window's worth must be granted back or the stream stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_of_stdout_into_a_file_arrive_byte_exact() {
    const BYTES: usize = 20_000_000;
    let server = TestServer::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stdout");
    let run = Client::new([
        server.url().as_str(),
        "stream",
        "--bytes",
        &BYTES.to_string(),
    ])
    .stdout_to_file(&path)
    .run()
    .await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    assert!(run.stdout.is_empty());
    assert_same_output(&std::fs::read(&path).unwrap(), &stream_output(BYTES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_closes_stdout_early_gives_the_broken_pipe_status() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::hello().await;
    let home = tempfile::tempdir().unwrap();
    // Far more than the pipe and the client's window hold.
    let mut child = tokio::process::Command::new(client_binary())
        .args([server.url().as_str(), "stream", "--bytes", "1000000000"])
        .env("TERMINALWIRE_HOME", home.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Like `terminalwire ... | head -c 1000`.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1000];
    stdout.read_exact(&mut first).await.unwrap();
    assert_eq!(&first[..10], &hello::stream_line(1).as_bytes()[..10]);
    drop(stdout);
    let output = tokio::time::timeout(CLIENT_DEADLINE, child.wait_with_output())
        .await
        .expect("the client went on after its reader left")
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(BROKEN_PIPE),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_stdin_answers_read_line() {
    let server = TestServer::hello().await;
    let run = Client::new([server.url().as_str(), "ask"])
        .stdin("Ada Lovelace\r\nignored\n")
        .run()
        .await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    assert!(
        run.stdout_text()
            .ends_with("Nice to meet you, Ada Lovelace!\n"),
        "stdout: {}",
        run.stdout_text()
    );
}

/// The example's `wc` counts piped stdin through the SDK's reading-ahead
/// stdin reader: every byte and line of a few megabytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_stdin_is_counted_whole_by_wc() {
    let server = TestServer::hello().await;
    let input: String = (0..60_000)
        .map(|n| format!("line {n} of the piped input\n"))
        .collect();
    let run = Client::new([server.url().as_str(), "wc"])
        .stdin(input.as_str())
        .run()
        .await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    assert_eq!(
        run.stdout_text(),
        format!("60000 lines, {} bytes\n", input.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_server_gives_its_message_and_the_documented_status() {
    let server = ScriptedServer::start(true, |mut socket| async move {
        let Some(ClientFrame::Hello(hello)) = next_client_frame(&mut socket).await else {
            return;
        };
        let message = format!(
            "this server needs protocol 7 or newer; you have {}: please upgrade",
            hello.versions
        );
        send_server_frame(
            &mut socket,
            &ServerFrame::Incompatible(Incompatible {
                versions: VersionRange { min: 7, max: 9 },
                message,
            }),
        )
        .await;
    })
    .await;
    let run = Client::new([server.url().as_str(), "hello"]).run().await;
    assert_eq!(run.status, Some(INCOMPATIBLE));
    let stderr = run.stderr_text();
    assert!(
        stderr.contains("needs protocol 7 or newer; you have 1: please upgrade"),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("7..=9"), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

/// A server that answers the hello with `reply` and then waits for the
/// client to go.
async fn replying_server(reply: Vec<u8>) -> ScriptedServer {
    let reply = Arc::new(reply);
    ScriptedServer::start(true, move |mut socket| {
        let reply = reply.clone();
        async move {
            if next_client_frame(&mut socket).await.is_none() {
                return;
            }
            if reply.len() > terminalwire_protocol::MAX_FRAME_LEN {
                socket.send_unsealed((*reply).clone()).await;
            } else {
                socket.send_sealed(&reply).await;
            }
            while next_client_frame(&mut socket).await.is_some() {}
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_sends_garbage_gets_a_clean_protocol_error() {
    for garbage in [
        b"\xc1\xc1\xc1 not msgpack".to_vec(),
        vec![0x93, 1, 2, 3],
        // A map whose tag names no frame.
        vec![0x81, 0xa1, b't', 0xa4, b'b', b'o', b'o', b'm'],
        Vec::new(),
    ] {
        let server = replying_server(garbage.clone()).await;
        let run = Client::new([server.url().as_str(), "hello"]).run().await;
        assert_eq!(run.status, Some(PROTOCOL), "garbage {garbage:x?}");
        let stderr = run.stderr_text();
        assert!(
            stderr.starts_with("terminalwire: protocol error"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused() {
    let server = replying_server(vec![0xc4; 2 * terminalwire_protocol::MAX_FRAME_LEN]).await;
    let run = Client::new([server.url().as_str(), "hello"]).run().await;
    assert_eq!(run.status, Some(PROTOCOL), "stderr: {}", run.stderr_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_vanishes_mid_session_is_a_lost_connection() {
    let server = ScriptedServer::start(true, |mut socket| async move {
        // Welcome, then drop the connection without an exit frame.
        welcome(&mut socket).await;
    })
    .await;
    let run = Client::new([server.url().as_str(), "hello"]).run().await;
    assert_eq!(run.status, Some(CONNECTION_LOST), "{}", run.stderr_text());
}

/// A streamed write left unfinished when the connection is lost leaves no
/// temporary file behind once the client has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_write_unfinished_when_the_connection_is_lost_leaves_no_file() {
    let temporary = |folder: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let during = Arc::new(std::sync::Mutex::new(None));
    let seen = during.clone();
    let (server, storage) =
        ScriptedServer::start_welcomed_with(move |mut socket, storage: PathBuf| {
            let seen = seen.clone();
            async move {
                let path = storage.join("unfinished").display().to_string();
                let open = Operation::FileWriteOpen { path, mode: None };
                let Some(Reply::Handle { handle }) =
                    ask(&mut socket, 1, open).await.and_then(|r| r.ok)
                else {
                    return;
                };
                let chunk = Operation::FileWriteChunk {
                    handle,
                    offset: 0,
                    bytes: b"half of it".to_vec().into(),
                };
                if ask(&mut socket, 2, chunk).await.is_none() {
                    return;
                }
                *seen.lock().unwrap() = Some(temporary(&storage));
                // Gone without an exit: the connection is lost.
            }
        })
        .await;
    let home = ClientHome::new();
    let url = server.url();
    let folder = home.storage_dir(&url);
    storage.set(folder.clone()).unwrap();
    let output = home.run([url.as_str(), "go"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(CONNECTION_LOST),
        "stderr: {stderr}"
    );
    let during = during
        .lock()
        .unwrap()
        .clone()
        .expect("the write was not made");
    assert_eq!(during.len(), 1, "during the session: {during:?}");
    assert_eq!(temporary(&folder), Vec::<String>::new());
}

/// Requests and output that arrive in one burst: the client answers a small
/// request at once but sends the answer only once no message is left to
/// read, so each next frame is read while an answer waits. None is lost or
/// reordered, and the answers come in the order of their requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_output_arriving_together_are_all_handled_in_order() {
    let (server, storage) =
        ScriptedServer::start_welcomed_with(|mut socket, storage: PathBuf| async move {
            let exists = |id: u64, name: &str| {
                ServerFrame::Request(Request {
                    id: RequestId(id),
                    op: Operation::FileExists {
                        path: storage.join(name).display().to_string(),
                    },
                })
            };
            let output = |text: &str| {
                ServerFrame::Data(Data {
                    sid: StreamId::STDOUT,
                    bytes: text.as_bytes().to_vec().into(),
                })
            };
            socket
                .send_frames_together(&[
                    exists(1, "present"),
                    output("one\n"),
                    exists(2, "absent"),
                    output("two\n"),
                    exists(3, "present"),
                ])
                .await;
            // Answers in the order they came; a lost request fails the test
            // here, not by the client's deadline.
            let mut answers = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while answers.len() < 3 {
                    match next_client_frame(&mut socket).await {
                        Some(ClientFrame::Response(response)) => {
                            answers.push((response.id.0, response.ok));
                        }
                        Some(_) => {}
                        None => return,
                    }
                }
            })
            .await;
            let bool_reply = |value| Some(Reply::Bool { value });
            let expected = vec![
                (1, bool_reply(true)),
                (2, bool_reply(false)),
                (3, bool_reply(true)),
            ];
            let status = if answers == expected { 0 } else { 1 };
            if status != 0 {
                let text = format!("wrong answers: {answers:?}\n");
                send_server_frame(&mut socket, &output(&text)).await;
            }
            send_server_frame(&mut socket, &ServerFrame::Exit(ExitFrame { status })).await;
            while next_client_frame(&mut socket).await.is_some() {}
        })
        .await;
    let home = ClientHome::new();
    let url = server.url();
    let folder = home.storage_dir(&url);
    std::fs::write(folder.join("present"), b"here").unwrap();
    storage.set(folder).unwrap();
    let output = home.run([url.as_str(), "go"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stdout, "one\ntwo\n", "stderr: {stderr}");
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
}

/// A folder whose listing would not fit in one frame with room to spare
/// (3 500 names of 240 bytes, which the server may create in its own
/// storage folder) is refused as too large, and the session goes on. Sending that answer failed, and
/// the session was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_too_large_for_a_frame_is_refused_and_the_session_goes_on() {
    let (server, storage) =
        ScriptedServer::start_welcomed_with(|mut socket, storage: PathBuf| async move {
            let path = storage.display().to_string();
            let requests = [
                Operation::DirList { path: path.clone() },
                Operation::DirExists { path },
            ];
            let mut answers = Vec::new();
            for (id, op) in (1..).zip(requests) {
                let Some(answer) = ask(&mut socket, id, op).await else {
                    return;
                };
                answers.push(answer);
            }
            let refused = answers[0]
                .error
                .as_ref()
                .is_some_and(|error| error.code == ErrorCode::TooLarge);
            let went_on = answers[1].ok == Some(Reply::Bool { value: true });
            let status = if refused && went_on { 0 } else { 1 };
            send_server_frame(&mut socket, &ServerFrame::Exit(ExitFrame { status })).await;
            while next_client_frame(&mut socket).await.is_some() {}
        })
        .await;
    let home = ClientHome::new();
    let url = server.url();
    let folder = home.storage_dir(&url);
    for index in 0..3_500 {
        std::fs::write(folder.join(format!("{index:05}{}", "n".repeat(235))), b"").unwrap();
    }
    storage.set(folder).unwrap();
    let output = home.run([url.as_str(), "go"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
}

/// A denial tells the server what it named, not where a symlink led: a
/// link in the storage folder to a folder outside the entitlements (as
/// `/proc/self/cwd` leads to the user's working folder) is refused without
/// the folder's name, reason or grant command. A path that leads nowhere
/// else keeps its grant command, which names the same folder whether or not
/// what was asked about exists (it named an existing folder itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_names_the_path_as_sent_not_where_a_symlink_led() {
    let (server, paths) =
        ScriptedServer::start_welcomed_with(|mut socket, paths: Vec<String>| async move {
            let mut denials = Vec::new();
            for (id, path) in (1..).zip(paths) {
                // Two listings, the metadata of a folder and of nothing, then
                // whether a file behind a dangling link exists.
                let op = match id {
                    1 | 2 => Operation::DirList { path },
                    3 | 4 => Operation::Metadata { path },
                    _ => Operation::FileExists { path },
                };
                let Some(answer) = ask(&mut socket, id, op).await else {
                    return;
                };
                denials.push(answer.error);
            }
            let report: String = denials
                .iter()
                .map(|denial| format!("{denial:?}\n"))
                .collect();
            let data = Data {
                sid: StreamId::STDOUT,
                bytes: report.into_bytes().into(),
            };
            send_server_frame(&mut socket, &ServerFrame::Data(data)).await;
            send_server_frame(&mut socket, &ServerFrame::Exit(ExitFrame { status: 0 })).await;
            while next_client_frame(&mut socket).await.is_some() {}
        })
        .await;
    let home = ClientHome::new();
    let url = server.url();
    let storage = home.storage_dir(&url);
    let outside = tempfile::tempdir().unwrap();
    let outside = std::fs::canonicalize(outside.path()).unwrap();
    let hidden = outside.join("hidden-place-7f3a");
    let plain = outside.join("plain-folder");
    std::fs::create_dir(&hidden).unwrap();
    std::fs::create_dir(&plain).unwrap();
    let link = storage.join("elsewhere");
    std::os::unix::fs::symlink(&hidden, &link).unwrap();
    let named = |path: &std::path::Path| path.display().to_string();
    let absent = outside.join("absent");
    let dangling = outside.join("gone-link");
    std::os::unix::fs::symlink(outside.join("nowhere"), &dangling).unwrap();
    paths
        .set(vec![
            named(&link),
            named(&plain),
            named(&plain),
            named(&absent),
            named(&dangling.join("x")),
        ])
        .unwrap();
    let output = home.run([url.as_str(), "go"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    let denials: Vec<&str> = stdout.lines().collect();
    let [first, second, folder, nothing, behind_link] = denials[..] else {
        panic!("five denials expected: {stdout}");
    };
    // Each says whose entitlements refused it, as the policy's own do.
    let authority = url
        .trim_start_matches("ws://")
        .trim_end_matches("/terminal");
    for denial in &denials {
        assert!(
            denial.contains(&format!("message: \"{authority} may not ")),
            "{denial}"
        );
    }
    assert!(
        !first.contains("hidden-place"),
        "the link's target leaked: {first}"
    );
    assert!(first.contains(&named(&link)), "{first}");
    assert!(first.contains("command: None"), "{first}");
    assert!(
        second.contains("terminalwire entitlement grant"),
        "a plain denial keeps its grant command: {second}"
    );
    let suggested = format!("path '{}/**'", outside.display());
    for denial in [folder, nothing] {
        assert!(denial.contains(&suggested), "{denial}");
    }
    // Why the path could not be resolved is not the server's to learn.
    assert!(
        behind_link.contains("code: Denied")
            && behind_link.contains("it has not been granted")
            && !behind_link.contains("symlink"),
        "{behind_link}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_with_a_version_the_client_did_not_offer_is_refused() {
    let welcome = terminalwire_protocol::frame::Welcome {
        version: 9,
        server: terminalwire_protocol::frame::Software {
            name: "scripted".into(),
            version: "0".into(),
        },
        session_id: "s".into(),
        capabilities: Vec::new(),
        window: terminalwire_protocol::DEFAULT_WINDOW,
        max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
        resume: None,
    };
    let server = replying_server(terminalwire_protocol::codec::encode(&ServerFrame::Welcome(
        welcome,
    )))
    .await;
    let run = Client::new([server.url().as_str(), "hello"]).run().await;
    assert_eq!(run.status, Some(PROTOCOL), "{}", run.stderr_text());
    assert!(
        run.stderr_text().contains("protocol version 9"),
        "{}",
        run.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_frame_before_welcome_is_a_protocol_error() {
    let server = replying_server(terminalwire_protocol::codec::encode(&ServerFrame::Exit(
        ExitFrame { status: 0 },
    )))
    .await;
    let run = Client::new([server.url().as_str(), "hello"]).run().await;
    assert_eq!(run.status, Some(PROTOCOL), "{}", run.stderr_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out_the_handshake() {
    let server = ScriptedServer::start(true, |mut socket| async move {
        while next_client_frame(&mut socket).await.is_some() {}
    })
    .await;
    let run = Client::new(["--connect-timeout", "0.5", server.url().as_str(), "hello"])
        .run()
        .await;
    assert_eq!(run.status, Some(CONNECTION_LOST), "{}", run.stderr_text());
    assert!(
        run.stderr_text()
            .contains("did not answer the hello within 500ms"),
        "{}",
        run.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_our_subprotocol_is_unavailable() {
    let server = ScriptedServer::start(false, |mut socket| async move {
        while next_client_frame(&mut socket).await.is_some() {}
    })
    .await;
    let run = Client::new([server.url().as_str(), "hello"]).run().await;
    assert_eq!(run.status, Some(UNAVAILABLE), "{}", run.stderr_text());
    assert!(
        run.stderr_text().contains("terminalwire-rs.v1"),
        "{}",
        run.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("ws://{addr}/terminal");
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_str().unwrap();
    let run = Client::new([url.as_str(), "hello"])
        .env("TERMINALWIRE_HOME", home_path)
        .run()
        .await;
    assert_eq!(run.status, Some(UNAVAILABLE), "{}", run.stderr_text());
    assert!(
        run.stderr_text()
            .starts_with("terminalwire: cannot connect"),
        "{}",
        run.stderr_text()
    );
    // A server never reached leaves no authority behind (a mistyped URL
    // would show up in `entitlement list`)...
    let folder = home.path().join(format!("authorities/{addr}"));
    assert!(!folder.exists(), "{} was left", folder.display());
    // ...but one the user set up keeps what it had.
    let grant = Client::new(["entitlement", "grant", &addr.to_string(), "env", "LANG"])
        .env("TERMINALWIRE_HOME", home_path)
        .run()
        .await;
    assert_eq!(grant.status, Some(0), "{}", grant.stderr_text());
    let run = Client::new([url.as_str(), "hello"])
        .env("TERMINALWIRE_HOME", home_path)
        .run()
        .await;
    assert_eq!(run.status, Some(UNAVAILABLE));
    assert!(folder.join("policy.toml").is_file());
}

/// A server that takes the terminalwire upgrade but never completes the
/// secure handshake: silent, or answering its first message with `reply`.
async fn upgrade_only_server(
    reply: Option<Vec<u8>>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                #[allow(
                    clippy::result_large_err,
                    reason = "the signature tungstenite asks for"
                )]
                let callback = |_: &Request, mut response: Response| {
                    response.headers_mut().insert(
                        "sec-websocket-protocol",
                        terminalwire_protocol::SUBPROTOCOL.parse().unwrap(),
                    );
                    Ok(response)
                };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                else {
                    return;
                };
                if let (Some(reply), Some(Ok(_))) = (reply, socket.next().await) {
                    let _ = socket.send(Message::Binary(reply.into())).await;
                }
                while let Some(Ok(_)) = socket.next().await {}
            });
        }
    });
    (addr, task)
}

/// A first contact whose secure handshake never completes (a server that
/// is not terminalwire's, silent or answering garbage) leaves no authority
/// behind: `authority list` showed it as a known server. It left
/// `device.key` and `storage/`. A folder the user had made before (a
/// grant typed before the first contact) is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_contact_that_never_completes_leaves_no_authority() {
    for (reply, status) in [
        (None, CONNECTION_LOST),
        (Some(b"not a noise message".to_vec()), PROTOCOL),
    ] {
        let (addr, server) = upgrade_only_server(reply).await;
        let home = tempfile::tempdir().unwrap();
        let home_path = home.path().to_str().unwrap();
        let url = format!("ws://{addr}/terminal");
        let run = Client::new(["--connect-timeout", "1", url.as_str(), "hello"])
            .env("TERMINALWIRE_HOME", home_path)
            .run()
            .await;
        assert_eq!(run.status, Some(status), "{}", run.stderr_text());
        let folder = home.path().join(format!("authorities/{addr}"));
        assert!(!folder.exists(), "{} was left", folder.display());
        let list = Client::new(["authority", "list"])
            .env("TERMINALWIRE_HOME", home_path)
            .run()
            .await;
        assert!(
            !list.stdout_text().contains(&addr.to_string()),
            "{}",
            list.stdout_text()
        );
        // A grant made before any contact stays, with its folder.
        let grant = Client::new(["entitlement", "grant", &addr.to_string(), "env", "LANG"])
            .env("TERMINALWIRE_HOME", home_path)
            .run()
            .await;
        assert_eq!(grant.status, Some(0), "{}", grant.stderr_text());
        let run = Client::new(["--connect-timeout", "1", url.as_str(), "hello"])
            .env("TERMINALWIRE_HOME", home_path)
            .run()
            .await;
        assert_eq!(run.status, Some(status), "{}", run.stderr_text());
        assert!(folder.join("policy.toml").is_file());
        assert!(folder.join("storage").is_dir());
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_is_not_a_terminal_is_unavailable() {
    let server = TestServer::hello().await;
    let url = server.url().replace("/terminal", "/");
    let run = Client::new([url.as_str(), "hello"]).run().await;
    assert_eq!(run.status, Some(UNAVAILABLE), "{}", run.stderr_text());
    // One line that says what it is, not the page's HTML.
    assert_eq!(
        run.stderr_text(),
        format!(
            "terminalwire: cannot connect to {url}: not a terminalwire endpoint (HTTP 200 OK, a \
             web page at /); check the path, e.g. /terminal\n"
        )
    );
    let url = server.url().replace("/terminal", "/nope");
    let run = Client::new([url.as_str(), "hello"]).run().await;
    assert_eq!(run.status, Some(UNAVAILABLE), "{}", run.stderr_text());
    assert!(
        run.stderr_text().ends_with(
            ": no terminalwire endpoint (HTTP 404 Not Found at /nope); check the path, e.g. \
             /terminal\n"
        ),
        "{}",
        run.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_tells_running_commands() {
    let started = Arc::new(Notify::new());
    let started_in_command = started.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let started = started_in_command.clone();
        async move {
            started.notify_one();
            ctx.shutdown_requested().await;
            ctx.stdout().println("saving and leaving").await.unwrap();
            Exit(3)
        }
    });
    let server = TestServer::with_terminal(terminal).await;
    let client = tokio::spawn(Client::new([server.url().as_str()]).run());
    started.notified().await;
    server.stop().await.unwrap();
    let run = client.await.unwrap();
    assert_eq!(run.stdout_text(), "saving and leaving\n");
    assert_eq!(run.status, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_own_help_version_and_usage() {
    let run = Client::new(["--help"]).run().await;
    assert_eq!(run.status, Some(0));
    assert!(
        run.stdout_text().contains("Usage: terminalwire"),
        "{}",
        run.stdout_text()
    );

    let run = Client::new(["--version"]).run().await;
    assert_eq!(run.status, Some(0));
    assert!(
        run.stdout_text().starts_with("terminalwire "),
        "{}",
        run.stdout_text()
    );

    let run = Client::new(Vec::<String>::new()).run().await;
    assert_eq!(run.status, Some(USAGE));
    assert_eq!(run.stdout_text(), "");

    let run = Client::new(["ftp://example.com/terminal"]).run().await;
    assert_eq!(run.status, Some(USAGE));
    assert!(run.stderr_text().contains("ftp"), "{}", run.stderr_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_cannot_start_is_said_plainly_without_its_path() {
    let server = TestServer::hello().await;
    let secret_place = "/nonexistent/private-tools/my-browser";
    let run = Client::new([server.url().as_str(), "open"])
        .env("TERMINALWIRE_BROWSER", secret_place)
        .run()
        .await;
    assert_eq!(run.status, Some(1), "{}", run.stdout_text());
    let said = run.stderr_text();
    assert!(
        said.contains("the program in TERMINALWIRE_BROWSER cannot be run"),
        "{said}"
    );
    // The server wrote that message: the variable's value stays here.
    assert!(!said.contains("private-tools"), "{said}");
}

/// The hello app's device page: another site's form cannot approve or
/// revoke a device, the page cannot be framed, and the app's own form (or
/// curl) still works. (No other test here uses the app's device registry.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_cannot_revoke_or_approve_a_device() {
    use terminalwire_server::devices::DeviceStatus;
    let server = TestServer::hello().await;
    let addr = server.addr();
    let registry = hello::devices();
    let pending = |fingerprint: &str| {
        let _ = registry.check(fingerprint, "linux x86_64, terminalwire 0.1.0");
        match registry.status(fingerprint) {
            Some(DeviceStatus::Pending { code }) => code,
            other => panic!("pending expected: {other:?}"),
        }
    };
    assert!(registry.approve(&pending("SHA256:review4-victim")));
    let code = pending("SHA256:review4-attacker");

    let evil = "Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n";
    let revoke = "device=SHA256%3Areview4-victim";
    let approve = format!("code={code}");
    for (what, headers) in [
        ("cross-site", evil),
        ("another origin", "Origin: https://evil.example\r\n"),
        (
            "another port",
            &*format!("Origin: http://127.0.0.1:{}\r\n", addr.port() ^ 1),
        ),
        ("https origin", &*format!("Origin: https://{addr}\r\n")),
        ("opaque origin", "Origin: null\r\n"),
        ("a sibling site", "Sec-Fetch-Site: same-site\r\n"),
    ] {
        let revoked = raw_http(addr, "POST /devices/revoke", headers, revoke).await;
        let approved = raw_http(addr, "POST /devices/approve", headers, &approve).await;
        assert_eq!(
            (
                registry.status("SHA256:review4-victim"),
                registry.status("SHA256:review4-attacker")
            ),
            (
                Some(DeviceStatus::Approved),
                Some(DeviceStatus::Pending { code: code.clone() })
            ),
            "a form from {what} revoked/approved devices:\n{revoked}\n{approved}"
        );
        assert_eq!(
            (status_of(&revoked), status_of(&approved)),
            (403, 403),
            "{what}"
        );
    }

    // The page may not be framed.
    let page = raw_http(addr, "GET /devices", "", "")
        .await
        .to_ascii_lowercase();
    assert_eq!(status_of(&page), 200, "{page}");
    assert!(page.contains("\r\nx-frame-options: deny\r\n"), "{page}");
    assert!(
        page.contains("\r\ncontent-security-policy: frame-ancestors 'none'\r\n"),
        "{page}"
    );

    // The app's own form works, and so does curl (no Origin).
    let own = format!("Origin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\n");
    // (typed in lower case: the code is not case-sensitive)
    let typed = format!("code={}", code.to_ascii_lowercase());
    let approved = raw_http(addr, "POST /devices/approve", &own, &typed).await;
    assert_eq!(status_of(&approved), 200, "{approved}");
    assert!(
        approved.contains("SHA256:review4-attacker"),
        "names the device: {approved}"
    );
    assert_eq!(
        registry.status("SHA256:review4-attacker"),
        Some(DeviceStatus::Approved)
    );
    let revoked = raw_http(addr, "POST /devices/revoke", &own, revoke).await;
    assert_eq!(status_of(&revoked), 200, "{revoked}");
    assert_eq!(
        registry.status("SHA256:review4-victim"),
        Some(DeviceStatus::Revoked)
    );
    let revoked = raw_http(
        addr,
        "POST /devices/revoke",
        "",
        "device=SHA256%3Areview4-attacker",
    )
    .await;
    assert_eq!(status_of(&revoked), 200, "{revoked}");
    assert_eq!(
        registry.status("SHA256:review4-attacker"),
        Some(DeviceStatus::Revoked)
    );
}
