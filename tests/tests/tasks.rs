//! The tasks example end to end: the real client logs in with a password
//! from stdin, adds, lists and finishes tasks, answers a confirmation,
//! exports to the app's storage folder, and gets the app's own exit
//! statuses; the web page on the same router shows the tasks.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use terminalwire_tests::{Client, Outcome, TestServer, raw_http, status_of};

/// The tasks app with one account, `ada` / `hunter2`.
async fn tasks_server() -> TestServer {
    let app = tasks::App::new([("ada".to_owned(), "hunter2".to_owned())]).unwrap();
    TestServer::start(move |listener, shutdown| async move {
        let terminal = tasks::terminal(&app, None);
        tasks::serve(listener, &app, terminal, shutdown).await
    })
    .await
}

/// Runs `terminalwire URL ARGS...` with the terminalwire home `home` (kept
/// across runs, as a user's is) and `stdin` piped in.
async fn run(server: &TestServer, home: &std::path::Path, args: &[&str], stdin: &str) -> Outcome {
    let url = server.url();
    Client::new(std::iter::once(url.as_str()).chain(args.iter().copied()))
        .env("TERMINALWIRE_HOME", home.to_str().unwrap())
        .stdin(stdin)
        .run()
        .await
}

#[tokio::test]
async fn tasks_are_added_listed_finished_cleared_and_exported() {
    let server = tasks_server().await;
    let home = tempfile::tempdir().unwrap();
    let home = home.path();

    let refused = run(&server, home, &["list"], "").await;
    assert_eq!(refused.status, Some(4), "{refused:?}");
    let login_hint = format!("not logged in; run `terminalwire {} login`", server.url());
    assert!(refused.stderr_text().contains(&login_hint), "{refused:?}");
    let wrong = run(
        &server,
        home,
        &["login", "-u", "ada", "--password-stdin"],
        "x\n",
    )
    .await;
    assert_eq!(wrong.status, Some(4), "{wrong:?}");
    assert_eq!(wrong.stderr_text(), "error: wrong user name or password\n");

    let login = run(
        &server,
        home,
        &["login", "-u", "ada", "--password-stdin"],
        "hunter2\n",
    )
    .await;
    assert_eq!(login.status, Some(0), "{login:?}");
    assert_eq!(login.stdout_text(), "Logged in as ada\n");
    let add = ["add", "Water", "the", "plants", "--priority", "high"];
    assert_eq!(
        run(&server, home, &add, "").await.stdout_text(),
        "Added task 1\n"
    );
    let add = run(&server, home, &["add", "Buy milk"], "").await;
    assert_eq!(add.stdout_text(), "Added task 2\n");

    let list = run(&server, home, &["list"], "").await;
    assert_eq!(list.status, Some(0), "{list:?}");
    assert_eq!(
        list.stdout_text(),
        "  ID  PRIORITY  DONE  TASK\n   1  high            Water the plants\n   2  normal          Buy milk\n"
    );

    // A task that does not exist: the app's own status and message, and
    // nothing marked.
    let missing = run(&server, home, &["done", "2", "9"], "").await;
    assert_eq!(missing.status, Some(3), "{missing:?}");
    assert_eq!(
        missing.stderr_text(),
        "error: you have no task 9; nothing was marked\n"
    );
    let done = run(&server, home, &["done", "2"], "").await;
    assert_eq!(
        (done.status, done.stdout_text()),
        (Some(0), "Done: 2\n".into())
    );

    // Declined, then confirmed.
    let declined = run(&server, home, &["clear"], "n\n").await;
    assert_eq!(declined.status, Some(1), "{declined:?}");
    assert!(
        declined
            .stderr_text()
            .starts_with("Remove 1 finished task(s)? [y/N] ")
    );
    let cleared = run(&server, home, &["clear"], "y\n").await;
    assert_eq!(cleared.status, Some(0), "{cleared:?}");
    assert_eq!(cleared.stdout_text(), "Removed 1 finished task(s).\n");
    let all = run(&server, home, &["list", "--all"], "").await;
    assert!(!all.stdout_text().contains("Buy milk"), "{all:?}");

    let export = run(&server, home, &["export"], "").await;
    assert_eq!(export.status, Some(0), "{export:?}");
    let file = home
        .join("authorities")
        .join(server.addr().to_string())
        .join("storage")
        .join(tasks::EXPORT_FILE);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "# Tasks of ada\n\n- [ ] Water the plants (high)\n"
    );

    // The web page on the same router.
    let page = raw_http(server.addr(), "GET /u/ada", "", "").await;
    assert_eq!(status_of(&page), 200, "{page}");
    assert!(page.contains("Water the plants"), "{page}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn usage_errors_and_a_password_without_a_terminal_are_refused() {
    let server = tasks_server().await;
    let home = tempfile::tempdir().unwrap();
    let usage = run(&server, home.path(), &["add"], "").await;
    assert_eq!(usage.status, Some(2), "{usage:?}");
    assert!(usage.stderr_text().contains("<TEXT>..."), "{usage:?}");
    // stdin is a pipe: no password prompt, and a hint instead.
    let login = run(&server, home.path(), &["login", "-u", "ada"], "hunter2\n").await;
    assert_eq!(login.status, Some(4), "{login:?}");
    assert!(
        login.stderr_text().contains("--password-stdin"),
        "{login:?}"
    );
}
