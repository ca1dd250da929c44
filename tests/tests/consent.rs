//! Consent prompts drawn by the client on its own terminal (under tmux).

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use terminalwire_server::{Context, ResourceError, Terminal};
use terminalwire_tests::TestServer;
use terminalwire_tests::tmux::TmuxPane;

/// `read PATH...`: reads each path in turn and says what happened;
/// `exists PATH...` asks whether each exists instead.
fn reader_app() -> Terminal {
    Terminal::new(|ctx: Context| async move {
        let out = ctx.stdout();
        let exists = ctx.args().get(1).is_some_and(|first| first == "exists");
        for path in ctx.args().iter().skip(if exists { 2 } else { 1 }) {
            let line = if exists {
                match ctx.file().exists(path).await {
                    Ok(found) => format!("exists: {found}"),
                    Err(ResourceError::Denied { .. }) => "denied".to_owned(),
                    Err(error) => format!("error: {error}"),
                }
            } else {
                match ctx.file().read_to_string(path).await {
                    Ok(text) => format!("read: {}", text.trim()),
                    Err(ResourceError::Denied { .. }) => "denied".to_owned(),
                    Err(error) => format!("error: {error}"),
                }
            };
            out.print(format!("{line}\r\n")).await.unwrap();
        }
        out.print("done\r\n").await.unwrap();
    })
}

/// Answers the prompt with "once" and returns the screen when the app is done.
async fn answer_once(pane: &TmuxPane) -> String {
    pane.type_text("o").await;
    pane.send_keys(&["Enter"]).await;
    pane.wait_for("done").await
}

/// The app's result lines: those starting with `prefix`, and denials.
fn results<'a>(screen: &'a str, prefix: &str) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|line| line.starts_with(prefix) || *line == "denied")
        .collect()
}

fn secret_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.txt");
    std::fs::write(&file, "the-content\n").unwrap();
    let file = std::fs::canonicalize(file).unwrap();
    (dir, file.to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_once_allows_one_request_only() {
    let server = TestServer::with_terminal(reader_app()).await;
    let (_dir, file) = secret_file();
    let pane = TmuxPane::start(&[&server.url(), "read", &file, &file], 120, 30);
    let screen = pane.wait_for("your choice:").await;
    assert!(
        screen.contains("YOUR CLIENT asks (not the app)"),
        "{screen}"
    );
    assert!(screen.contains(&file), "names the exact target:\n{screen}");
    let screen = answer_once(&pane).await;
    assert_eq!(
        results(&screen, "read:"),
        ["read: the-content", "denied"],
        "{screen}"
    );
    assert_eq!(
        screen.matches("your choice:").count(),
        1,
        "not asked twice:\n{screen}"
    );
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "{}", exit.screen);
    assert_eq!(exit.stty_before, exit.stty_after, "terminal restored");
    let policy = pane
        .home()
        .join(format!("authorities/{}/policy.toml", server.addr()));
    assert!(
        !std::fs::read_to_string(&policy)
            .unwrap_or_default()
            .contains("secret"),
        "once is not written down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_writes_the_grant_and_deny_denies() {
    let server = TestServer::with_terminal(reader_app()).await;
    let (_dir, file) = secret_file();
    let pane = TmuxPane::start(&[&server.url(), "read", &file, &file], 120, 30);
    pane.wait_for("your choice:").await;
    pane.type_text("a").await;
    pane.send_keys(&["Enter"]).await;
    let screen = pane.wait_for("done").await;
    let reads = screen
        .lines()
        .filter(|line| *line == "read: the-content")
        .count();
    assert_eq!(reads, 2, "{screen}");
    pane.wait_exit().await;
    let policy = pane
        .home()
        .join(format!("authorities/{}/policy.toml", server.addr()));
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(
        text.contains("[[path]]") && text.contains("access = \"read\""),
        "{text}"
    );

    let (_other, other_file) = secret_file();
    let pane = TmuxPane::start(&[&server.url(), "read", &other_file], 120, 30);
    pane.wait_for("your choice:").await;
    pane.type_text("d").await;
    pane.send_keys(&["Enter"]).await;
    let screen = pane.wait_for("done").await;
    assert!(screen.lines().any(|line| line == "denied"), "{screen}");
    pane.wait_exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_nothing_is_asked() {
    let server = TestServer::with_terminal(reader_app()).await;
    let (_dir, file) = secret_file();
    // A pipe: the denial stands with its grant command, no prompt.
    let run = terminalwire_tests::Client::new([server.url().as_str(), "read", &file])
        .run()
        .await;
    assert_eq!(run.stdout_text(), "denied\r\ndone\r\n");
    assert!(
        !run.stderr_text().contains("your choice"),
        "{}",
        run.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_prompt_denies_without_asking_even_on_a_terminal() {
    let server = TestServer::with_terminal(reader_app()).await;
    let (_dir, file) = secret_file();
    let pane = TmuxPane::start(&["--no-prompt", &server.url(), "read", &file], 120, 30);
    let screen = pane.wait_for("done").await;
    assert!(screen.lines().any(|line| line == "denied"), "{screen}");
    assert!(!screen.contains("your choice"), "{screen}");
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "{}", exit.screen);
}

/// A stat-class request is answered inline by the client, unless it must
/// ask the user: then it waits for the answer without holding the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_request_that_needs_consent_waits_for_it() {
    let server = TestServer::with_terminal(reader_app()).await;
    let (_dir, file) = secret_file();
    let pane = TmuxPane::start(&[&server.url(), "read", "exists", &file, &file], 120, 30);
    let screen = pane.wait_for("your choice:").await;
    assert!(screen.contains(&file), "names the exact target:\n{screen}");
    let screen = answer_once(&pane).await;
    assert_eq!(
        results(&screen, "exists:"),
        ["exists: true", "denied"],
        "{screen}"
    );
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "{}", exit.screen);
}

/// `password-while-reading FILE`: a password read, then (once the test
/// resizes the pane, which says the prompt is up) a read of FILE that needs
/// consent, while the password read still waits.
fn password_app() -> Terminal {
    Terminal::new(|ctx: Context| async move {
        let file = ctx.args().get(1).cloned().unwrap_or_default();
        let resized = ctx.resized();
        let stdin = ctx.stdin();
        let password = tokio::spawn(async move { stdin.read_password("Password: ").await });
        resized.await;
        ctx.stdout().print("reading\r\n").await.unwrap();
        let read = match ctx.file().read_to_string(&file).await {
            Ok(text) => text.trim().to_owned(),
            Err(error) => error.to_string(),
        };
        let password = password.await.unwrap().unwrap().unwrap_or_default();
        let line = format!("length {} read {read}\r\n", password.chars().count());
        ctx.stdout().print(line).await.unwrap();
        ctx.stdout().print("done\r\n").await.unwrap();
    })
}

/// A consent prompt waits for a password read in progress: shown over it,
/// it turned echo back on, and what the user typed as the password was
/// shown, and taken as the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_prompt_waits_for_the_password_being_typed() {
    let server = TestServer::with_terminal(password_app()).await;
    let (_dir, file) = secret_file();
    let pane = TmuxPane::start(&[&server.url(), "password-while-reading", &file], 120, 30);
    pane.wait_for("Password:").await;
    pane.resize(100, 30).await;
    pane.wait_for("reading").await;
    pane.type_text("hunter2-a").await;
    pane.send_keys(&["Enter"]).await;
    pane.wait_for("your choice:").await;
    let screen = answer_once(&pane).await;
    assert!(!screen.contains("hunter2"), "password echoed:\n{screen}");
    assert!(
        screen.contains("length 9 read the-content"),
        "the password or the read went wrong:\n{screen}"
    );
    let exit = pane.wait_exit().await;
    assert_eq!(exit.stty_before, exit.stty_after, "terminal restored");
}

/// `y` is not one of the prompt's answers: it is neither taken as a deny
/// (users are trained by `[y/N]` prompts to expect a yes) nor as a grant
/// (the prompt never grants by accident). The prompt says what the choices
/// are and asks again; a deny then tells the app the user denied it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_a_choice_is_asked_again_and_a_deny_says_so() {
    let server = TestServer::hello().await;
    let (_dir, file) = secret_file();
    let pane = TmuxPane::start(&[&server.url(), "cat", &file], 120, 30);
    pane.wait_for("your choice:").await;
    pane.type_text("y").await;
    pane.send_keys(&["Enter"]).await;
    let screen = pane.wait_for("is not one of the choices").await;
    assert!(
        screen.contains("o to allow once, a to allow always, d to deny"),
        "{screen}"
    );
    assert_eq!(
        screen.matches("your choice:").count(),
        2,
        "asked again:\n{screen}"
    );
    assert!(!screen.contains("the-content"), "granted on y:\n{screen}");
    // Enter alone is the default: deny.
    pane.send_keys(&["Enter"]).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 1, "{}", exit.screen);
    assert!(
        exit.screen.contains(&format!(
            "did not let this app read path {file}: you denied it"
        )),
        "{}",
        exit.screen
    );
    assert!(!exit.screen.contains("the-content"), "{}", exit.screen);
    assert_eq!(exit.stty_before, exit.stty_after, "terminal restored");
}

/// `read-then-line FILE`: reads FILE and says what came of it (a denial's
/// reason, as the client gave it), then reads a line and shows it.
fn read_then_line_app() -> Terminal {
    Terminal::new(|ctx: Context| async move {
        let out = ctx.stdout();
        let file = ctx.args().get(1).cloned().unwrap_or_default();
        let read = match ctx.file().read_to_string(&file).await {
            Ok(text) => format!("read: {}", text.trim()),
            Err(error) => match error.denial() {
                Some(denial) => format!("denied: {}", denial.reason),
                None => format!("error: {error}"),
            },
        };
        out.print(format!("{read}\r\n")).await.unwrap();
        let line = ctx.stdin().read_line(Some("line? ")).await;
        out.print(format!("line: {line:?}\r\n")).await.unwrap();
        out.print("done\r\n").await.unwrap();
    })
}

/// A prompt nobody answers gives up after `TERMINALWIRE_PROMPT_TIMEOUT`
/// seconds and denies: its line is finished with a note, the app is told
/// the user did not answer (not that they refused), what was half-typed
/// at the prompt does not reach the app, and the session goes on and ends
/// as usual with the terminal as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_nobody_answers_denies_at_its_time_out() {
    let server = TestServer::with_terminal(read_then_line_app()).await;
    let (_dir, file) = secret_file();
    let pane = TmuxPane::start_with_env(
        &[&server.url(), "read-then-line", &file],
        120,
        30,
        &[("TERMINALWIRE_PROMPT_TIMEOUT", "3")],
    );
    pane.wait_for("your choice:").await;
    // Typed at the prompt, never sent with Enter.
    pane.type_text("al").await;
    pane.wait_for("your choice: al").await;
    let screen = pane.wait_for("line?").await;
    assert!(
        screen.contains("your choice: al\n  no answer in 3 seconds: denied\n"),
        "{screen}"
    );
    assert!(
        screen.contains("denied: you did not answer in 3 seconds"),
        "{screen}"
    );
    assert!(!screen.contains("the-content"), "{screen}");
    pane.type_text("b").await;
    pane.send_keys(&["Enter"]).await;
    let exit = pane.wait_exit().await;
    assert!(
        exit.screen.contains("line: Ok(Some(\"b\"))"),
        "what was typed at the prompt reached the app:\n{}",
        exit.screen
    );
    assert_eq!(exit.status, 0, "{}", exit.screen);
    assert_eq!(exit.stty_before, exit.stty_after, "terminal restored");
}

/// `--prompt-timeout SECS` is the prompt's time-out, over
/// `TERMINALWIRE_PROMPT_TIMEOUT`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prompt_timeout_option_wins_over_the_variable() {
    let server = TestServer::with_terminal(read_then_line_app()).await;
    let (_dir, file) = secret_file();
    let pane = TmuxPane::start_with_env(
        &[
            "--prompt-timeout",
            "2",
            &server.url(),
            "read-then-line",
            &file,
        ],
        120,
        30,
        &[("TERMINALWIRE_PROMPT_TIMEOUT", "600")],
    );
    pane.wait_for("your choice:").await;
    let screen = pane.wait_for("line?").await;
    assert!(
        screen.contains("no answer in 2 seconds: denied"),
        "{screen}"
    );
    pane.type_text("b").await;
    pane.send_keys(&["Enter"]).await;
    let exit = pane.wait_exit().await;
    assert_eq!(exit.status, 0, "{}", exit.screen);
}

/// A prompt time-out that is not a number of seconds is a usage error that
/// names the variable, before anything is asked or sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_prompt_time_out_is_a_usage_error() {
    let server = TestServer::with_terminal(reader_app()).await;
    let run = terminalwire_tests::Client::new([server.url().as_str(), "read"])
        .env("TERMINALWIRE_PROMPT_TIMEOUT", "5m")
        .run()
        .await;
    assert_eq!(run.status, Some(2), "{}", run.stderr_text());
    assert_eq!(
        run.stderr_text(),
        "terminalwire: TERMINALWIRE_PROMPT_TIMEOUT=\"5m\" is not a positive number of seconds \
         (or 0, to wait as long as it takes)\n"
    );
    assert_eq!(run.stdout_text(), "");
}

/// `raw-then-read FILE`: turns raw mode on, ignores interrupts, and reads
/// FILE (a prompt, if it is not granted), then waits.
fn raw_then_read_app() -> Terminal {
    Terminal::new(|ctx: Context| async move {
        ctx.handle_interrupts();
        ctx.set_raw_mode(true).await.unwrap();
        let file = ctx.args().get(1).cloned().unwrap_or_default();
        let read = ctx.file().read_to_string(&file).await;
        let out = ctx.stdout();
        out.print(format!("read: {}\r\n", read.is_ok()))
            .await
            .unwrap();
        // Interrupts are handled, and ignored: only the client ends it.
        std::future::pending::<()>().await;
    })
}

/// Ctrl-C twice at a consent prompt (cooked, whatever the app asked for)
/// ends the client at once, as it does anywhere else, long before the
/// prompt's time-out, with the terminal as found (not the app's raw mode,
/// not the prompt's cooked one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_twice_at_a_prompt_ends_the_client_with_the_terminal_as_found() {
    let server = TestServer::with_terminal(raw_then_read_app()).await;
    let (_dir, file) = secret_file();
    let pane = TmuxPane::start_with_env(
        &[&server.url(), "raw-then-read", &file],
        120,
        30,
        &[("TERMINALWIRE_PROMPT_TIMEOUT", "600")],
    );
    pane.wait_for("your choice:").await;
    pane.type_text("al").await;
    pane.wait_for("your choice: al").await;
    pane.send_keys(&["C-c"]).await;
    pane.send_keys(&["C-c"]).await;
    let Some(exit) = pane.try_wait_exit(std::time::Duration::from_secs(15)).await else {
        panic!(
            "Ctrl-C twice at the prompt did not end the client; screen:\n{}",
            pane.screen().await
        );
    };
    assert_eq!(exit.status, 130, "{}", exit.screen);
    assert!(!exit.screen.contains("read: true"), "{}", exit.screen);
    assert_eq!(exit.stty_before, exit.stty_after, "terminal restored");
}

/// Keys typed in the moment the question shows, before its choice line
/// does, do not answer it: an app can bring a prompt up while the user is
/// typing `a` and Enter for it (it sees every key in raw mode), and the
/// next `a` Enter, already on its way, granted "always". Here the moment is
/// stretched to 5 s (a debug build's `TERMINALWIRE_DEBUG_PROMPT_SETTLE_MS`)
/// so that the keys surely fall in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_typed_as_the_question_shows_do_not_answer_it() {
    let server = TestServer::with_terminal(reader_app()).await;
    let (_dir, file) = secret_file();
    let pane = TmuxPane::start_with_env(
        &[&server.url(), "read", &file],
        120,
        30,
        &[("TERMINALWIRE_DEBUG_PROMPT_SETTLE_MS", "5000")],
    );
    pane.wait_for("YOUR CLIENT asks").await;
    pane.type_text("a").await;
    pane.send_keys(&["Enter"]).await;
    pane.wait_for("your choice:").await;
    pane.type_text("d").await;
    pane.send_keys(&["Enter"]).await;
    let screen = pane.wait_for("done").await;
    assert!(screen.lines().any(|line| line == "denied"), "{screen}");
    assert!(!screen.contains("the-content"), "{screen}");
    pane.wait_exit().await;
    let policy = pane
        .home()
        .join(format!("authorities/{}/policy.toml", server.addr()));
    let text = std::fs::read_to_string(&policy).unwrap_or_default();
    assert!(!text.contains("[[path]]"), "{text}");
}
