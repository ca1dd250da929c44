//! The real client in a real terminal (a tmux pane): password prompts
//! without echo, raw key reading, resizes, Ctrl-C, and the terminal left in
//! the mode it was found in (`stty -g` before and after). Also what happens
//! without a terminal: interactive requests fail clearly instead of echoing
//! or hanging.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::Duration;

use terminalwire_server::{Context, Exit, ResourceError, StreamKind, Terminal};
use terminalwire_tests::tmux::{PaneExit, TmuxPane};
use terminalwire_tests::{Client, TestServer};

const INTERRUPTED: i32 = 130;
/// The client's status for a bug of its own.
const INTERNAL: i32 = 70;

/// The test apps, one per first argument.
fn app() -> Terminal {
    Terminal::new(|ctx: Context| async move {
        let command = ctx.args().first().cloned().unwrap_or_default();
        match command.as_str() {
            "password" => password(ctx).await,
            "keys" => keys(ctx).await,
            "size" => size(ctx).await,
            "wait" => wait(ctx).await,
            "handle" => handle(ctx).await,
            "ignore" => ignore(ctx).await,
            "no-tty" => no_tty(ctx).await,
            "password-then-raw" => password_then_raw(ctx).await,
            "hold-raw" => hold_raw(ctx).await,
            "key-then-line" => key_then_line(ctx).await,
            "key-timeout-then-line" => key_timeout_then_line(ctx).await,
            "password-timeout-then-line" => password_timeout_then_line(ctx).await,
            "raw-bytes" => raw_bytes(ctx).await,
            "three-keys" => three_keys(ctx).await,
            "byte-then-keys" => byte_then_keys(ctx).await,
            "line-then-resize" => line_then_resize(ctx).await,
            "leave-modes" => leave_modes(ctx).await,
            "plain" => {
                ctx.stdout().println("plain text").await?;
                Ok(Exit(0))
            }
            "leave-keyboard" => leave_keyboard(ctx).await,
            "prompt-keyboard" => prompt_keyboard(ctx).await,
            "panic-in" => panic_in(ctx).await,
            other => Err(anyhow::anyhow!("unknown test command {other:?}")),
        }
    })
}

/// The path a debug build of the client panics on, when told to
/// (`TERMINALWIRE_DEBUG_PANIC_ON_PATH`).
const PANIC_PATH: &str = "panic-here";

/// Raw mode on, then a request the client panics in: `panic-in read` (on a
/// blocking thread of a request's task) or `panic-in exists` (stat-class,
/// answered by the session itself). Says so if the session went on.
async fn panic_in(ctx: Context) -> anyhow::Result<Exit> {
    let inline = ctx.args().get(1).is_some_and(|arg| arg == "exists");
    ctx.set_raw_mode(true).await?;
    ctx.stdout().print("raw on\r\n").await?;
    let answer = if inline {
        ctx.file().exists(PANIC_PATH).await.map(|_| ())
    } else {
        ctx.file().read(PANIC_PATH).await.map(|_| ())
    };
    ctx.stdout()
        .print(format!("went on after {answer:?}\r\n"))
        .await?;
    Ok(Exit(0))
}

/// Switches on every mode an app may leave behind, then ends.
async fn leave_modes(ctx: Context) -> anyhow::Result<Exit> {
    ctx.stdout()
        .print("\x1b[?1049h\x1b[?1003h\x1b[?2004h\x1b[?1h\x1b[?25l\x1b[4h\x1b[?7l\x1b[8mhidden")
        .await?;
    Ok(Exit(3))
}

/// Switches on kitty's keyboard protocol and xterm's modifyOtherKeys,
/// then ends.
async fn leave_keyboard(ctx: Context) -> anyhow::Result<Exit> {
    ctx.stdout().print("\x1b[>4;2m\x1b[>31ukeys").await?;
    Ok(Exit(0))
}

/// Switches on kitty's keyboard protocol in a prompt, then ends.
async fn prompt_keyboard(ctx: Context) -> anyhow::Result<Exit> {
    ctx.read_line(Some("\x1b[>1uanswer> ")).await?;
    Ok(Exit(0))
}

async fn password(ctx: Context) -> anyhow::Result<Exit> {
    let password = ctx.stdin().read_password("Password: ").await?;
    let password = password.unwrap_or_default();
    // Echo must be back on for the next, ordinary read.
    let name = ctx.read_line(Some("Name: ")).await?.unwrap_or_default();
    ctx.stdout()
        .println(format!("length {} name {name}", password.chars().count()))
        .await?;
    Ok(Exit(0))
}

/// Switches raw mode while a password read waits, then exits with the read
/// still waiting. `password-then-raw on`: the read first, then raw mode on;
/// `password-then-raw off`: raw mode on, the read, then raw mode off. The
/// test resizes the pane once the prompt is up, which says when to switch.
async fn password_then_raw(ctx: Context) -> anyhow::Result<Exit> {
    let raw_first = ctx.args().get(1).is_some_and(|arg| arg == "off");
    // Start watching before the prompt shows, or the resize could be missed.
    let mut resized = std::pin::pin!(ctx.resized());
    tokio::select! {
        biased;
        early = &mut resized => anyhow::bail!("resized before the prompt: {early:?}"),
        () = std::future::ready(()) => {}
    }
    if raw_first {
        ctx.set_raw_mode(true).await?;
    }
    let stdin = ctx.stdin();
    let _reading = tokio::spawn(async move { stdin.read_password("Password: ").await });
    resized.await;
    ctx.set_raw_mode(!raw_first).await?;
    ctx.stdout().print("switched\r\n").await?;
    // The password read is still waiting: the session ends under it.
    Ok(Exit(0))
}

async fn keys(ctx: Context) -> anyhow::Result<Exit> {
    ctx.set_raw_mode(true).await?;
    ctx.stdout().print("raw on\r\n").await?;
    loop {
        let key = ctx.read_key().await?;
        ctx.stdout()
            .print(format!(
                "key {} ctrl={} alt={} shift={}\r\n",
                key.key, key.ctrl, key.alt, key.shift
            ))
            .await?;
        if key.key == "q" && !key.ctrl {
            // Leaves raw mode to the client, which must restore it.
            return Ok(Exit(0));
        }
    }
}

/// Raw mode on, then never a key read and never an end: only the client's
/// own escape gets the user out.
async fn hold_raw(ctx: Context) -> anyhow::Result<Exit> {
    ctx.set_raw_mode(true).await?;
    ctx.stdout().print("raw held\r\n").await?;
    std::future::pending::<()>().await;
    Ok(Exit(0))
}

/// Raw mode, then stdin read as bytes (not keys) for ever: its reads must
/// not take the client's escape away.
async fn raw_bytes(ctx: Context) -> anyhow::Result<Exit> {
    ctx.set_raw_mode(true).await?;
    ctx.stdout().print("raw bytes\r\n").await?;
    loop {
        let chunk = ctx.stdin().read_chunk(64).await?;
        ctx.stdout()
            .print(format!("got {:?}\r\n", String::from_utf8_lossy(&chunk)))
            .await?;
    }
}

/// One line read, then no read until the terminal is resized.
async fn line_then_resize(ctx: Context) -> anyhow::Result<Exit> {
    let mut resized = std::pin::pin!(ctx.resized());
    tokio::select! {
        biased;
        early = &mut resized => anyhow::bail!("resized too early: {early:?}"),
        () = std::future::ready(()) => {}
    }
    let line = ctx.read_line(Some("line: ")).await?.unwrap_or_default();
    ctx.stdout().println(format!("got {line}")).await?;
    resized.await;
    Ok(Exit(0))
}

/// Three key reads in cooked mode: each is raw mode of its own.
async fn three_keys(ctx: Context) -> anyhow::Result<Exit> {
    ctx.stdout().println("three keys").await?;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(ctx.read_key().await?.key);
    }
    ctx.stdout()
        .println(format!("keys {}", keys.join(" ")))
        .await?;
    Ok(Exit(0))
}

/// In raw mode, a one-byte read, then two key reads.
async fn byte_then_keys(ctx: Context) -> anyhow::Result<Exit> {
    ctx.set_raw_mode(true).await?;
    ctx.stdout().print("ready\r\n").await?;
    let chunk = ctx.stdin().read_chunk(1).await?;
    ctx.stdout()
        .print(format!("chunk {}\r\n", String::from_utf8_lossy(&chunk)))
        .await?;
    for _ in 0..2 {
        let key = ctx.read_key().await?;
        ctx.stdout().print(format!("key {}\r\n", key.key)).await?;
    }
    Ok(Exit(0))
}

/// A key (in raw mode if the first argument is `raw`, else for the read
/// alone), then cooked mode and a line: the line must reach the app whole.
async fn key_then_line(ctx: Context) -> anyhow::Result<Exit> {
    let raw = ctx.args().get(1).is_some_and(|arg| arg == "raw");
    if raw {
        ctx.set_raw_mode(true).await?;
    }
    ctx.stdout().print("key please\r\n").await?;
    let key = ctx.read_key().await?;
    if raw {
        ctx.set_raw_mode(false).await?;
    }
    let line = ctx.read_line(Some("line please: ")).await?;
    ctx.stdout()
        .println(format!("got key {} line {line:?}", key.key))
        .await?;
    Ok(Exit(0))
}

/// A key read given up after a moment, then a line: the line must reach
/// the app whole, typed in cooked mode.
async fn key_timeout_then_line(ctx: Context) -> anyhow::Result<Exit> {
    let key = tokio::time::timeout(Duration::from_millis(200), ctx.read_key()).await;
    ctx.stdout()
        .print(format!("key timed out: {}\r\n", key.is_err()))
        .await?;
    let line = ctx.read_line(Some("line please: ")).await?;
    ctx.stdout().println(format!("got line {line:?}")).await?;
    Ok(Exit(0))
}

/// A password read given up after a moment, then a line: echo must be
/// back on for the line.
async fn password_timeout_then_line(ctx: Context) -> anyhow::Result<Exit> {
    let password = tokio::time::timeout(
        Duration::from_millis(200),
        ctx.stdin().read_password("Password: "),
    )
    .await;
    ctx.stdout()
        .print(format!("\r\npassword timed out: {}\r\n", password.is_err()))
        .await?;
    let line = ctx.read_line(Some("line please: ")).await?;
    ctx.stdout().println(format!("got line {line:?}")).await?;
    Ok(Exit(0))
}

async fn size(ctx: Context) -> anyhow::Result<Exit> {
    // Start watching before saying so, or a quick resize could be missed.
    let mut resized = std::pin::pin!(ctx.resized());
    tokio::select! {
        biased;
        early = &mut resized => anyhow::bail!("resized before the size was shown: {early:?}"),
        () = std::future::ready(()) => {}
    }
    let (cols, rows) = ctx.terminal_size().unwrap_or_default();
    ctx.stdout().println(format!("size {cols}x{rows}")).await?;
    let (cols, rows) = resized.await.unwrap_or_default();
    ctx.stdout()
        .println(format!("resized {cols}x{rows}"))
        .await?;
    Ok(Exit(0))
}

async fn wait(ctx: Context) -> anyhow::Result<Exit> {
    ctx.stdout().println("waiting").await?;
    std::future::pending::<()>().await;
    Ok(Exit(0))
}

/// Polls `interrupted()` once, so an interrupt from now on is seen.
async fn watch_interrupts(
    interrupted: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) {
    tokio::select! {
        biased;
        () = interrupted.as_mut() => {}
        () = std::future::ready(()) => {}
    }
}

async fn handle(ctx: Context) -> anyhow::Result<Exit> {
    ctx.handle_interrupts();
    let mut interrupted = std::pin::pin!(ctx.interrupted());
    watch_interrupts(&mut interrupted).await;
    ctx.stdout().println("ready").await?;
    interrupted.await;
    ctx.stdout().println("caught").await?;
    Ok(Exit(7))
}

async fn ignore(ctx: Context) -> anyhow::Result<Exit> {
    ctx.handle_interrupts();
    let mut interrupted = std::pin::pin!(ctx.interrupted());
    watch_interrupts(&mut interrupted).await;
    ctx.stdout().println("ready").await?;
    interrupted.await;
    ctx.stdout().println("ignored").await?;
    loop {
        ctx.interrupted().await;
    }
}

/// Without a terminal: every interactive request fails with a clear error.
async fn no_tty(ctx: Context) -> anyhow::Result<Exit> {
    let out = ctx.stdout();
    let terminal = ctx.terminal();
    out.println(format!(
        "stdin tty={} stdout {:?} color {:?} size {:?}",
        terminal.stdin.is_tty(),
        terminal.stdout.kind,
        terminal.stdout.color,
        ctx.terminal_size()
    ))
    .await?;
    let unsupported = |result: Result<String, ResourceError>| match result {
        Err(ResourceError::Unsupported { message }) => format!("unsupported: {message}"),
        other => format!("UNEXPECTED {other:?}"),
    };
    let password = ctx
        .stdin()
        .read_password("Password: ")
        .await
        .map(|line| format!("{line:?}"));
    out.println(format!("password {}", unsupported(password)))
        .await?;
    let raw = ctx.set_raw_mode(true).await.map(|()| "raw".to_owned());
    out.println(format!("raw {}", unsupported(raw))).await?;
    let key = ctx.read_key().await.map(|key| format!("{key:?}"));
    out.println(format!("key {}", unsupported(key))).await?;
    // The piped input was left alone for the app's ordinary reads.
    let line = ctx.read_line(None).await?;
    out.println(format!("line {line:?}")).await?;
    let stdout_is_pipe = terminal.stdout.kind == StreamKind::Pipe;
    Ok(Exit(if stdout_is_pipe { 0 } else { 3 }))
}

fn assert_terminal_restored(exit: &PaneExit) {
    assert!(!exit.stty_before.is_empty(), "no stty -g recorded");
    assert_eq!(
        exit.stty_after, exit.stty_before,
        "the terminal settings changed; screen:\n{}",
        exit.screen
    );
}

fn pane_for(server: &TestServer, command: &str) -> TmuxPane {
    TmuxPane::start(&[server.url().as_str(), command], 80, 24)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_prompt_does_not_echo_and_echo_comes_back() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "password");
    pane.wait_for("Password:").await;
    pane.type_text("hunter2").await;
    pane.send_keys(&["Enter"]).await;
    pane.wait_for("Name:").await;
    pane.type_text("visible-name").await;
    pane.send_keys(&["Enter"]).await;
    let screen = pane.wait_for("length 7 name visible-name").await;
    assert!(!screen.contains("hunter2"), "password echoed:\n{screen}");
    assert!(
        screen.contains("Name: visible-name"),
        "echo not back on:\n{screen}"
    );
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

/// A password read waiting when the app switches raw mode, then the end of
/// the session: the terminal is left exactly as it was found.
async fn switch_raw_mode_under_a_password_read(raw: &str) {
    let server = TestServer::with_terminal(app()).await;
    let pane = TmuxPane::start(&[&server.url(), "password-then-raw", raw], 80, 24);
    pane.wait_for("Password:").await;
    pane.resize(100, 30).await;
    pane.wait_for("switched").await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_begun_under_a_password_read_leaves_echo_on_at_the_end() {
    // Raw mode saved "echo off" and put it back after the cancelled
    // password read had restored echo.
    switch_raw_mode_under_a_password_read("on").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_ended_under_a_password_read_does_not_leave_the_terminal_raw() {
    // The cancelled password read put back the raw settings it had found,
    // after raw mode had ended.
    switch_raw_mode_under_a_password_read("off").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_reads_keys_ctrl_c_included_and_is_undone_on_exit() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "keys");
    pane.wait_for("raw on").await;
    pane.send_keys(&["a", "Up", "Enter", "C-c", "Tab", "F5", "Z", "q"])
        .await;
    let screen = pane.wait_for("key q ").await;
    let keys: Vec<&str> = screen
        .lines()
        .filter(|line| line.starts_with("key "))
        .collect();
    assert_eq!(
        keys,
        [
            "key a ctrl=false alt=false shift=false",
            "key up ctrl=false alt=false shift=false",
            "key enter ctrl=false alt=false shift=false",
            "key c ctrl=true alt=false shift=false",
            "key tab ctrl=false alt=false shift=false",
            "key f5 ctrl=false alt=false shift=false",
            "key Z ctrl=false alt=false shift=true",
            "key q ctrl=false alt=false shift=false",
        ],
        "screen:\n{screen}"
    );
    let exit = pane.wait_exit().await;
    // Ctrl-C in raw mode is a key, not an interrupt.
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tilde_dot_after_enter_leaves_a_server_that_holds_raw_mode_and_reads_no_key() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "hold-raw");
    pane.wait_for("raw held").await;
    // Ctrl-C is a key in raw mode, and nobody reads it.
    pane.send_keys(&["C-c", "x", "~", "."]).await;
    assert!(
        pane.try_wait_exit(Duration::from_millis(300))
            .await
            .is_none(),
        "`~.` in the middle of a line is not the escape"
    );
    pane.send_keys(&["Enter", "~", "?"]).await;
    pane.wait_for("~.  disconnect").await;
    pane.send_keys(&["~", "."]).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, INTERRUPTED, "screen:\n{}", exit.screen);
    assert!(
        exit.screen.contains("terminalwire: disconnected (~.)"),
        "screen:\n{}",
        exit.screen
    );
    // The session loop ended the client, not the key pump's last resort.
    assert!(
        !exit.screen.contains("did not end when told"),
        "screen:\n{}",
        exit.screen
    );
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_backslash_detaches_while_the_app_holds_raw_mode_and_reads_no_key() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "hold-raw");
    pane.wait_for("raw held").await;
    // Raw mode sends no SIGQUIT: the client's key reader sees Ctrl-\.
    pane.send_keys(&["C-\\"]).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    let id = terminalwire_tests::tmux::session_id_on(&exit.screen);
    assert!(!id.is_empty(), "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tilde_dot_works_while_the_app_reads_raw_bytes_and_the_rest_reaches_it() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "raw-bytes");
    pane.wait_for("raw bytes").await;
    pane.send_keys(&["a", "C-c"]).await;
    // Ctrl-C is a byte for the app in raw mode (with `a`, or after it).
    pane.wait_for(r#"\u{3}""#).await;
    pane.send_keys(&["Enter"]).await;
    // The app's next read waits while the escape is typed.
    pane.wait_for(r#"got "\r""#).await;
    pane.send_keys(&["~"]).await;
    pane.send_keys(&["."]).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, INTERRUPTED, "screen:\n{}", exit.screen);
    assert!(
        !exit.screen.contains(r#"got "~"#) && !exit.screen.contains(r#"~.""#),
        "the escape reached the app:\n{}",
        exit.screen
    );
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_typed_while_the_app_reads_nothing_is_left_in_the_terminal() {
    let server = TestServer::with_terminal(app()).await;
    let pane = TmuxPane::start_showing_leftover(&[&server.url(), "line-then-resize"], 80, 24);
    pane.wait_for("line:").await;
    // Two lines at once (a paste) for a read of one: the second is for
    // whoever reads next (a pager, the shell), not for the client.
    pane.send_keys(&["first", "Enter", "later", "Enter"]).await;
    pane.wait_for("got first").await;
    pane.type_text("after").await;
    pane.send_keys(&["Enter"]).await;
    pane.resize(100, 30).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert!(
        exit.screen.contains("leftover=[later|after|]"),
        "screen:\n{}",
        exit.screen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_typed_at_once_reach_key_reads_made_one_at_a_time() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "three-keys");
    pane.wait_for("three keys").await;
    pane.send_keys(&["x", "Up", "z"]).await;
    let screen = pane.wait_for("keys ").await;
    assert!(screen.contains("keys x up z"), "screen:\n{screen}");
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tilde_that_starts_no_escape_reaches_the_app() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "keys");
    pane.wait_for("raw on").await;
    // At the start: `~x` is two keys, `~~` one tilde; then `~` mid-line.
    pane.send_keys(&["~", "x", "Enter", "~", "~", "~", "q"])
        .await;
    let screen = pane.wait_for("key q ").await;
    let keys: Vec<&str> = screen
        .lines()
        .filter(|line| line.starts_with("key "))
        .map(|line| line.split(' ').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        ["~", "x", "enter", "~", "~", "q"],
        "screen:\n{screen}"
    );
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

/// A key read the app gave up is cancelled on the client: the terminal is
/// cooked again and the line typed next reaches the line read whole. (The
/// key read went on in raw mode and took the line's first letter.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_read_given_up_leaves_the_next_line_whole() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "key-timeout-then-line");
    pane.wait_for("line please:").await;
    pane.type_text("abc").await;
    pane.send_keys(&["Enter"]).await;
    let screen = pane.wait_for("got line").await;
    assert!(
        screen.contains("key timed out: true") && screen.contains("got line Some(\"abc\")"),
        "screen:\n{screen}"
    );
    // Typed in cooked mode: echoed by the terminal after the prompt.
    assert!(screen.contains("line please: abc"), "screen:\n{screen}");
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

/// A password read the app gave up is cancelled on the client with echo
/// turned back on: the line typed next shows as it is typed and reaches the
/// app whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_read_given_up_turns_echo_back_on() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "password-timeout-then-line");
    pane.wait_for("line please:").await;
    pane.type_text("seen").await;
    pane.send_keys(&["Enter"]).await;
    let screen = pane.wait_for("got line").await;
    assert!(
        screen.contains("password timed out: true")
            && screen.contains("line please: seen")
            && screen.contains("got line Some(\"seen\")"),
        "screen:\n{screen}"
    );
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

/// Keys are read only while the terminal is raw: a line typed after raw
/// mode (or a key read) ended reaches the line read whole.
async fn a_line_after_a_key(mode: &str) {
    let server = TestServer::with_terminal(app()).await;
    let pane = TmuxPane::start(&[&server.url(), "key-then-line", mode], 80, 24);
    pane.wait_for("key please").await;
    pane.send_keys(&["k"]).await;
    pane.wait_for("line please:").await;
    pane.type_text("typed-at-once").await;
    pane.send_keys(&["Enter"]).await;
    let screen = pane.wait_for("got key").await;
    assert!(
        screen.contains(r#"got key k line Some("typed-at-once")"#),
        "screen:\n{screen}"
    );
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_typed_after_raw_mode_ended_reaches_the_app_whole() {
    a_line_after_a_key("raw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_typed_after_a_key_read_reaches_the_app_whole() {
    a_line_after_a_key("cooked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_reaches_the_app() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "size");
    pane.wait_for("size 80x24").await;
    pane.resize(100, 30).await;
    pane.wait_for("resized 100x30").await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_a_command_that_does_not_handle_it_with_status_130() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "wait");
    pane.wait_for("waiting").await;
    pane.send_keys(&["C-c"]).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, INTERRUPTED, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_at_a_password_prompt_exits_130_with_echo_back_on() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "password");
    pane.wait_for("Password:").await;
    pane.type_text("half").await;
    pane.send_keys(&["C-c"]).await;
    let Some(exit) = pane.try_wait_exit(Duration::from_secs(10)).await else {
        // Find out what it was waiting for: the end of the line?
        pane.send_keys(&["Enter"]).await;
        let exit = pane.try_wait_exit(Duration::from_secs(10)).await;
        panic!(
            "after Ctrl-C at the password prompt the client did not exit within 10 s; \
             after Enter was then pressed it ended with {exit:#?}"
        );
    };
    assert_eq!(exit.status, INTERRUPTED, "screen:\n{}", exit.screen);
    assert!(!exit.screen.contains("half"), "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

/// Ctrl-D at a password prompt ends the input, and what comes next starts
/// a line of its own, as after sudo's prompt: with echo off, the terminal
/// echoes no newline for it (it does for Enter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_ctrl_d_at_a_password_prompt_the_next_output_starts_a_line() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "password");
    pane.wait_for("Password:").await;
    pane.send_keys(&["C-d"]).await;
    let screen = pane.wait_for("Name:").await;
    assert!(
        screen.lines().any(|line| line.starts_with("Name:")),
        "the next prompt is on the password prompt's line:\n{screen}"
    );
    pane.type_text("ada").await;
    pane.send_keys(&["Enter"]).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert!(exit.screen.contains("length 0 name ada"), "{}", exit.screen);
}

/// Ctrl-C at a password prompt: the shell's prompt after the client starts
/// a line of its own (the terminal echoes nothing for it, echo being off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_ctrl_c_at_a_password_prompt_the_next_output_starts_a_line() {
    let server = TestServer::with_terminal(app()).await;
    let pane = TmuxPane::start_capturing(&[server.url().as_str(), "password"], 80, 24);
    pane.wait_for("Password:").await;
    pane.send_keys(&["C-c"]).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, INTERRUPTED, "screen:\n{}", exit.screen);
    let output = pane.wait_for_output(b"Password: ").await;
    let after = output
        .windows(b"Password: ".len())
        .rposition(|window| window == b"Password: ")
        .map(|at| &output[at + b"Password: ".len()..])
        .unwrap();
    assert!(
        after.contains(&b'\n'),
        "no newline after the password prompt: {:?}",
        String::from_utf8_lossy(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_handles_ctrl_c_chooses_the_exit_status() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "handle");
    pane.wait_for("ready").await;
    pane.send_keys(&["C-c"]).await;
    pane.wait_for("caught").await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 7, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_exits_at_once_when_the_app_ignores_the_first() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "ignore");
    pane.wait_for("ready").await;
    pane.send_keys(&["C-c"]).await;
    pane.wait_for("ignored").await;
    // The app ignores every interrupt: only the client ends this session.
    pane.send_keys(&["C-c"]).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, INTERRUPTED, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_interactive_requests_fail_clearly_instead_of_echoing_or_hanging() {
    let server = TestServer::with_terminal(app()).await;
    // `run` fails the test if the client hangs.
    let run = Client::new([server.url().as_str(), "no-tty"])
        .stdin("piped secret\n")
        .run()
        .await;
    let stdout = run.stdout_text();
    assert_eq!(
        run.status,
        Some(0),
        "stdout: {stdout} stderr: {}",
        run.stderr_text()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "stdout: {stdout}");
    assert_eq!(lines[0], "stdin tty=false stdout Pipe color None size None");
    assert!(
        lines[1].starts_with("password unsupported: ") && lines[1].contains("not a terminal"),
        "{}",
        lines[1]
    );
    assert!(lines[2].starts_with("raw unsupported: "), "{}", lines[2]);
    assert!(lines[3].starts_with("key unsupported: "), "{}", lines[3]);
    assert_eq!(lines[4], r#"line Some("piped secret")"#);
    // No prompt was shown for a password that could not be read.
    assert_eq!(run.stderr_text(), "");
}

/// An app that ends in the alternate screen with mouse reports on, the
/// cursor hidden and so on leaves the user's shell as it found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyboard_protocol_the_app_left_on_is_reset_and_only_then() {
    const KEYBOARD_RESET: &[u8] = b"\x1b[=0;1u\x1b[<99u\x1b[>4m";
    // The end of the reset every session on a terminal gets.
    const RESET_END: &[u8] = b"\x1b[?7h\x1b[4l";
    let server = TestServer::with_terminal(app()).await;
    let find = |output: &[u8], wanted: &[u8]| {
        output
            .windows(wanted.len())
            .position(|window| window == wanted)
    };
    let pane = TmuxPane::start_capturing(&[server.url().as_str(), "leave-keyboard"], 80, 24);
    assert_eq!(pane.wait_exit().await.status, 0);
    let output = pane.wait_for_output(KEYBOARD_RESET).await;
    let app_wrote = find(&output, b"\x1b[>31ukeys").unwrap();
    assert!(
        find(&output[app_wrote..], KEYBOARD_RESET).is_some(),
        "{:?}",
        String::from_utf8_lossy(&output)
    );
    // Switched on by a prompt (a request's text, not output).
    let pane = TmuxPane::start_capturing(&[server.url().as_str(), "prompt-keyboard"], 80, 24);
    pane.wait_for("answer>").await;
    pane.send_keys(&["Enter"]).await;
    assert_eq!(pane.wait_exit().await.status, 0);
    pane.wait_for_output(KEYBOARD_RESET).await;
    // An app that did not touch the keyboard: the rest of the reset, not this.
    let pane = TmuxPane::start_capturing(&[server.url().as_str(), "leave-modes"], 80, 24);
    assert_eq!(pane.wait_exit().await.status, 3);
    let output = pane.wait_for_output(RESET_END).await;
    assert!(
        find(&output, b"\x1b[<99u").is_none(),
        "{:?}",
        String::from_utf8_lossy(&output)
    );
    // An app that wrote no escape at all: no reset (on a terminal that
    // knows no escapes, it would show as `^[[0m...`). Text typed after the
    // exit, echoed by the terminal, comes after anything the client wrote.
    let pane = TmuxPane::start_capturing(&[server.url().as_str(), "plain"], 80, 24);
    assert_eq!(pane.wait_exit().await.status, 0);
    pane.type_text("echoed").await;
    let output = pane.wait_for_output(b"echoed").await;
    assert!(
        find(&output, b"plain text").is_some() && find(&output, RESET_END).is_none(),
        "{:?}",
        String::from_utf8_lossy(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modes_an_app_left_on_are_off_after_the_session() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "leave-modes");
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 3, "screen:\n{}", exit.screen);
    assert_eq!(
        pane.modes().await,
        "alternate_on=0 mouse_any_flag=0 keypad_cursor_flag=0 cursor_flag=1 insert_flag=0 wrap_flag=1"
    );
    assert_terminal_restored(&exit);
}

/// `abc` typed at once in raw mode: a one-byte read takes `a`, and the key
/// reads after it get `b` and `c`, in the order typed (the session's buffer
/// kept them, and the key reads waited for new keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_typed_with_a_byte_read_reach_the_next_key_reads_in_order() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "byte-then-keys");
    pane.wait_for("ready").await;
    pane.type_text("abc").await;
    pane.wait_for("chunk a").await;
    let screen = pane.wait_for("key c").await;
    assert!(screen.contains("key b\n"), "{screen}");
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "{}", exit.screen);
    assert_terminal_restored(&exit);
}

/// A panic in the client while it performs a request (a bug in a resource
/// handler) ends the session with the client's internal-error status and a
/// message saying so, the terminal back as it was found. (A panic on a
/// request's blocking thread was answered as an `internal` error while the
/// panic hook had already restored the terminal under the app's raw mode,
/// and the session went on; one in a request's task was never answered,
/// and the app waited for good; one in a stat-class request took the
/// client down, status 101.)
async fn a_panic_in_a_request_ends_the_session(which: &str) {
    let server = TestServer::with_terminal(app()).await;
    let pane = TmuxPane::start_with_env(
        &[&server.url(), "panic-in", which],
        80,
        24,
        &[("TERMINALWIRE_DEBUG_PANIC_ON_PATH", PANIC_PATH)],
    );
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, INTERNAL, "screen:\n{}", exit.screen);
    assert!(
        exit.screen.contains("terminalwire: internal error"),
        "screen:\n{}",
        exit.screen
    );
    assert!(!exit.screen.contains("went on"), "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_request_task_ends_the_session_with_the_terminal_restored() {
    a_panic_in_a_request_ends_the_session("read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_request_answered_at_once_ends_the_session_with_the_terminal_restored() {
    a_panic_in_a_request_ends_the_session("exists").await;
}

/// The settings of the terminal `tty` as `stty -a` words (`-echo`, `icanon`, ...).
fn stty_words(tty: &std::path::Path) -> Vec<String> {
    let output = std::process::Command::new("stty")
        .arg("-F")
        .arg(tty)
        .arg("-a")
        .output()
        .unwrap();
    assert!(output.status.success(), "stty -F {tty:?} -a failed");
    words_of_stty(&String::from_utf8_lossy(&output.stdout))
        .map(str::to_owned)
        .collect()
}

/// The words of `stty -a`'s output.
fn words_of_stty(text: &str) -> impl Iterator<Item = &str> {
    text.split([' ', ';', '\n'])
}

/// Waits until echo is off on `tty` again (the client, continued, set it
/// for the password read still going on).
async fn wait_for_echo_off(tty: &std::path::Path) {
    terminalwire_tests::eventually("echo off again", Duration::from_secs(20), || {
        stty_words(tty).iter().any(|word| word == "-echo")
    })
    .await;
}

/// Types the `password` command's password, then its name: the password
/// not echoed, the name echoed, the client ending well with the terminal
/// restored.
async fn answer_the_password_then_the_name(pane: &TmuxPane) {
    pane.type_text("hunter2").await;
    pane.send_keys(&["Enter"]).await;
    pane.wait_for("Name:").await;
    pane.type_text("visible-name").await;
    pane.send_keys(&["Enter"]).await;
    let screen = pane.wait_for("length 7 name visible-name").await;
    assert!(!screen.contains("hunter2"), "password echoed:\n{screen}");
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}

/// Stops the client (as Ctrl-Z does), lets the terminal be set for a shell
/// meanwhile (cooked, with echo: what bash and zsh put back for their
/// prompt), then continues it (as `fg` does); the pane's terminal.
async fn stop_then_continue_under_a_shell(pane: &TmuxPane) -> std::path::PathBuf {
    use rustix::process::{Signal, kill_process};
    let client = pane.client_pid().await;
    let tty = pane.tty().await;
    kill_process(client, Signal::STOP).unwrap();
    let stat = format!("/proc/{}/stat", client.as_raw_nonzero());
    terminalwire_tests::eventually("the client to stop", Duration::from_secs(20), || {
        std::fs::read_to_string(&stat).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.starts_with(" T"))
        })
    })
    .await;
    let sane = std::process::Command::new("stty")
        .arg("-F")
        .arg(&tty)
        .arg("sane")
        .status()
        .unwrap();
    assert!(sane.success());
    assert!(stty_words(&tty).iter().any(|word| word == "echo"));
    kill_process(client, Signal::CONT).unwrap();
    tty
}

/// Ctrl-Z at a password prompt, then `fg`: the shell had the terminal
/// meanwhile and turned echo back on for itself, so the client turns it
/// off again for the password still being read. It went on with echo on,
/// and the password typed after `fg` showed on the screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_read_stopped_and_continued_still_does_not_echo() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "password");
    pane.wait_for("Password:").await;
    let tty = stop_then_continue_under_a_shell(&pane).await;
    wait_for_echo_off(&tty).await;
    answer_the_password_then_the_name(&pane).await;
}

/// Ctrl-Z at a password prompt, under a shell with job control that does
/// not set the terminal for itself (dash): the client gives the terminal
/// back as it found it before it stops, so the shell has echo; continued
/// (`fg`), it turns echo off again for the password. The stop left echo
/// off for the shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_z_at_a_password_prompt_gives_the_shell_its_terminal_back() {
    let server = TestServer::with_terminal(app()).await;
    let pane = TmuxPane::start_with_job_control(&[server.url().as_str(), "password"], 80, 24);
    pane.wait_for("Password:").await;
    let tty = pane.tty().await;
    assert!(stty_words(&tty).iter().any(|word| word == "-echo"));
    pane.send_keys(&["C-z"]).await;
    terminalwire_tests::eventually(
        "the shell to see the client stop",
        Duration::from_secs(20),
        || pane.stty_while_stopped().is_some(),
    )
    .await;
    let stopped = pane.stty_while_stopped().unwrap_or_default();
    assert!(
        words_of_stty(&stopped).any(|word| word == "echo"),
        "the shell got the terminal without echo:\n{stopped}"
    );
    // `fg`: the password read goes on, without echo.
    wait_for_echo_off(&tty).await;
    answer_the_password_then_the_name(&pane).await;
}

/// Ctrl-Z where nobody could continue the client (an orphaned process
/// group: the pane's wrapper shell has no job control, and its parent is
/// in another session) does not stop it, as the kernel itself discards
/// Ctrl-Z for such a group: the password read goes on. A client that
/// stopped there would hang for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_z_without_a_shell_to_continue_the_client_does_not_stop_it() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "password");
    pane.wait_for("Password:").await;
    pane.send_keys(&["C-z"]).await;
    answer_the_password_then_the_name(&pane).await;
}

/// As `a_password_read_stopped_and_continued_still_does_not_echo`, for the
/// app's raw mode: continued, the client makes the terminal raw again (the shell left it cooked), and its escape still
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_stopped_and_continued_is_raw_again() {
    let server = TestServer::with_terminal(app()).await;
    let pane = pane_for(&server, "hold-raw");
    pane.wait_for("raw held").await;
    let tty = stop_then_continue_under_a_shell(&pane).await;
    terminalwire_tests::eventually("raw mode again", Duration::from_secs(20), || {
        let words = stty_words(&tty);
        words.iter().any(|word| word == "-icanon") && words.iter().any(|word| word == "-echo")
    })
    .await;
    pane.send_keys(&["Enter", "~", "."]).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, INTERRUPTED, "screen:\n{}", exit.screen);
    assert_terminal_restored(&exit);
}
