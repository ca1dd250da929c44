//! The notes example end to end: browser login (approved over plain HTTP,
//! and by a real headless Chromium), sessions, notes, export behind a
//! grant, import from a file and from piped stdin.
//!
//! The user's "browser" is `TERMINALWIRE_BROWSER`: a two-line script that
//! writes the URL it is given into a FIFO the test reads.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use terminalwire_tests::{Client, Outcome};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How long a test waits for the browser hook or a page.
const WAIT: Duration = Duration::from_secs(30);

/// The notes app in process on `127.0.0.1:0`, with its own data folder.
struct NotesServer {
    addr: SocketAddr,
    app: notes::App,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _data: tempfile::TempDir,
}

impl NotesServer {
    async fn start() -> NotesServer {
        NotesServer::with_options(notes::Options::default()).await
    }

    async fn with_options(options: notes::Options) -> NotesServer {
        let data = tempfile::tempdir().unwrap();
        let app = notes::App::open(&data.path().join("data"), options).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, signal) = oneshot::channel::<()>();
        let terminal = notes::terminal(&app, None);
        let serving = app.clone();
        let task = tokio::spawn(async move {
            notes::serve(listener, &serving, terminal, async move {
                let _ = signal.await;
            })
            .await
        });
        NotesServer {
            addr,
            app,
            shutdown: Some(shutdown),
            task,
            _data: data,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/terminal", self.addr)
    }

    fn authority(&self) -> String {
        self.addr.to_string()
    }

    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

/// The user's machine: a home folder, a terminalwire home, and a "browser"
/// that hands every URL it is asked to open to the test.
struct Machine {
    dir: tempfile::TempDir,
    urls: tokio::io::Lines<BufReader<tokio::net::unix::pipe::Receiver>>,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(base.join("home")).unwrap();
        std::fs::create_dir(base.join("tw")).unwrap();
        let fifo = base.join("browser.fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Opened read-write, the FIFO never reports end of file and the
        // script's write never blocks.
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifo)
            .unwrap();
        let script = base.join("browser.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nprintf '%s\\n' \"$1\" > '{}'\n", fifo.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Machine {
            dir,
            urls: BufReader::new(receiver).lines(),
        }
    }

    fn base(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }

    /// The user's home folder (`~`).
    fn home(&self) -> PathBuf {
        self.base().join("home")
    }

    /// `terminalwire ARGS...` on this machine.
    fn client<I, S>(&self, args: I) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let base = self.base();
        Client::new(args)
            .env("HOME", base.join("home").to_str().unwrap())
            .env("TERMINALWIRE_HOME", base.join("tw").to_str().unwrap())
            .env(
                "TERMINALWIRE_BROWSER",
                base.join("browser.sh").to_str().unwrap(),
            )
    }

    /// `terminalwire URL ARGS...` against the notes app.
    fn notes(&self, server: &NotesServer, args: &[&str]) -> Client {
        let mut all = vec![server.url()];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        self.client(all)
    }

    /// `notes ARGS...` through the launcher `terminalwire install` wrote
    /// (installed on first use), run by its `#!/usr/bin/env terminalwire-exec` line.
    fn installed(&self, server: &NotesServer, args: &[&str]) -> Client {
        let launcher = self.base().join("tw/bin/notes");
        if !launcher.exists() {
            let status = std::process::Command::new(terminalwire_tests::client_binary())
                .args(["install", &server.url(), "--name", "notes"])
                .env("TERMINALWIRE_HOME", self.base().join("tw"))
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "terminalwire install failed");
        }
        self.client(args.iter().copied()).program(launcher)
    }

    /// The saved session token of `server`'s app on this machine.
    fn token_file(&self, server: &NotesServer) -> PathBuf {
        self.base().join(format!(
            "tw/authorities/{}/storage/session.token",
            server.authority()
        ))
    }

    /// The next URL the client asked the "browser" to open.
    async fn next_browser_url(&mut self) -> String {
        tokio::time::timeout(WAIT, self.urls.next_line())
            .await
            .expect("the client did not open the browser")
            .unwrap()
            .unwrap()
    }
}

/// One HTTP/1.1 request to the app; returns the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, form: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = form.unwrap_or("");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if form.is_some() {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The path and query of a login URL of `server`, and its token.
fn login_path(server: &NotesServer, url: &str) -> (String, String) {
    let prefix = format!("http://{}", server.addr);
    let path = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} is not a page of {prefix}"))
        .to_owned();
    let token = path
        .strip_prefix("/login/approve?t=")
        .unwrap_or_else(|| panic!("unexpected login URL {url}"))
        .to_owned();
    assert_eq!(token.len(), 32, "a 128-bit token in hex: {token}");
    (path, token)
}

/// Starts `client` (a `login`); the lines of its stderr as they come.
fn start_login(
    client: Client,
) -> (
    tokio::task::JoinHandle<Outcome>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
    (tokio::spawn(client.stderr_lines(lines_tx).run()), lines)
}

/// The code a running `login` shows for the page.
async fn shown_code(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.recv().await {
            if let Some(rest) = line.split("Your login code is ").nth(1) {
                return rest.split(':').next().unwrap().to_owned();
            }
        }
        panic!("the client ended without showing a login code");
    })
    .await
    .expect("no login code shown")
}

/// Runs `login` on `machine` and approves it as `name` over plain HTTP,
/// with the code it shows.
async fn log_in(machine: &mut Machine, server: &NotesServer, name: &str) -> Outcome {
    // Through the installed launcher when the test installed one.
    let client = if machine.base().join("tw/bin/notes").exists() {
        machine.installed(server, &["login"])
    } else {
        machine.notes(server, &["login"])
    };
    let (waiting, mut lines) = start_login(client);
    let code = shown_code(&mut lines).await;
    let url = machine.next_browser_url().await;
    let (path, token) = login_path(server, &url);
    let (status, page) = http(server.addr, "GET", &path, None).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Log in as:"), "{page}");
    // The link alone is not enough.
    let (status, page) = http(
        server.addr,
        "POST",
        "/login/approve",
        Some(&format!(
            "t={token}&name={name}&passphrase=&decision=approve"
        )),
    )
    .await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("not the code the terminal shows"), "{page}");
    let (status, page) = http(
        server.addr,
        "POST",
        "/login/approve",
        Some(&format!(
            "t={token}&code={code}&name={name}&passphrase=&decision=approve"
        )),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("Logged in as {name}")), "{page}");
    // One time only.
    let (status, _) = http(
        server.addr,
        "POST",
        "/login/approve",
        Some(&format!(
            "t={token}&code={code}&name=mallory&decision=approve"
        )),
    )
    .await;
    assert_eq!(status, 410, "a used link is gone");
    waiting.await.unwrap()
}

fn assert_ok(run: &Outcome) {
    assert_eq!(
        run.status,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout_text(),
        run.stderr_text()
    );
}

/// The command the client suggested to allow a denied request, split into
/// words as a shell would (it single-quotes words with special characters).
fn suggested_grant(stderr: &str) -> Vec<String> {
    let line = stderr
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("terminalwire entitlement grant "))
        .unwrap_or_else(|| panic!("no grant command in: {stderr}"));
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            ' ' if !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(!quoted, "unbalanced quotes in {line}");
    words.extend(word);
    assert_eq!(words[0], "terminalwire", "{line}");
    words.split_off(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_notes_export_behind_a_grant_and_import() {
    let started = std::time::Instant::now();
    let server = NotesServer::start().await;
    let mut machine = Machine::new();

    let run = machine.installed(&server, &["whoami"]).run().await;
    assert_eq!(run.status, Some(1));
    assert_eq!(run.stdout_text(), "Not logged in\n");
    let run = machine.installed(&server, &["list"]).run().await;
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr_text()
            .contains("not logged in; run `notes login`"),
        "{}",
        run.stderr_text()
    );

    let run = log_in(&mut machine, &server, "ada").await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Logged in as ada\n");
    assert!(
        run.stderr_text()
            .contains("Opened your browser; waiting for you to approve the login..."),
        "{}",
        run.stderr_text()
    );
    use std::os::unix::fs::PermissionsExt;
    let token = machine.token_file(&server);
    let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the session token is private");

    let run = machine.installed(&server, &["whoami"]).run().await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Logged in as ada\n");

    let run = machine
        .notes(&server, &["new", "Buy milk", "--body", "two litres"])
        .run()
        .await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Added note 1\n");
    let run = machine
        .installed(&server, &["create", "Call Bob"])
        .run()
        .await;
    assert_eq!(run.stdout_text(), "Added note 2\n");
    let run = machine.installed(&server, &["list"]).run().await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "   1  Buy milk\n   2  Call Bob\n");
    let run = machine.installed(&server, &["show", "1"]).run().await;
    assert_ok(&run);
    let shown = run.stdout_text();
    assert!(shown.starts_with("#1 Buy milk\n"), "{shown}");
    assert!(shown.ends_with("\n\ntwo litres\n"), "{shown}");

    // Export: refused until granted, with the command that grants it.
    let export = "~/out/notes.json";
    let exported = machine.home().join("out/notes.json");
    std::fs::create_dir(machine.home().join("out")).unwrap();
    let run = machine.installed(&server, &["export", export]).run().await;
    assert_eq!(run.status, Some(1), "{}", run.stderr_text());
    let stderr = run.stderr_text();
    assert!(
        stderr.contains("your terminalwire client did not let this app write path"),
        "{stderr}"
    );
    assert!(stderr.contains("To allow it, run:"), "{stderr}");
    let grant = suggested_grant(&stderr);
    assert_eq!(
        grant[..4],
        ["entitlement", "grant", server.authority().as_str(), "path"],
        "{stderr}"
    );
    assert!(!exported.exists(), "nothing was written");
    let run = machine.client(grant).run().await;
    assert_ok(&run);

    let run = machine.installed(&server, &["export", export]).run().await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), format!("Exported 2 notes to {export}\n"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exported).unwrap()).unwrap();
    assert_eq!(json["user"], "ada");
    let notes = json["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0]["id"], 1);
    assert_eq!(notes[0]["title"], "Buy milk");
    assert_eq!(notes[0]["body"], "two litres");
    assert_eq!(notes[1]["title"], "Call Bob");
    assert_eq!(notes[1]["body"], "");

    // Import from a file on the user's machine: reading needs its own grant.
    let import = machine.home().join("out/more.txt");
    std::fs::write(&import, "Water plants\nRead book\tchapter 3\n").unwrap();
    let run = machine
        .notes(&server, &["import", "~/out/more.txt"])
        .run()
        .await;
    assert_eq!(run.status, Some(1), "{}", run.stderr_text());
    let run = machine
        .client(suggested_grant(&run.stderr_text()))
        .run()
        .await;
    assert_ok(&run);
    let run = machine
        .notes(&server, &["import", "~/out/more.txt"])
        .run()
        .await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Imported 2 notes\n");

    // Import what is piped in: lines, or the JSON of an export.
    let run = machine
        .notes(&server, &["import", "-"])
        .stdin("Piped one\n\nPiped two\n")
        .run()
        .await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Imported 2 notes\n");
    let run = machine
        .notes(&server, &["import", "-"])
        .stdin(std::fs::read(&exported).unwrap())
        .run()
        .await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Imported 2 notes\n");

    let run = machine.installed(&server, &["list"]).run().await;
    assert_eq!(
        run.stdout_text(),
        "   1  Buy milk\n   2  Call Bob\n   3  Water plants\n   4  Read book\n   \
         5  Piped one\n   6  Piped two\n   7  Buy milk\n   8  Call Bob\n"
    );
    let run = machine.installed(&server, &["show", "4"]).run().await;
    assert!(
        run.stdout_text().ends_with("\n\nchapter 3\n"),
        "{}",
        run.stdout_text()
    );
    let run = machine.installed(&server, &["delete", "7"]).run().await;
    assert_ok(&run);
    let run = machine.installed(&server, &["delete", "7"]).run().await;
    assert_eq!(run.status, Some(1));
    assert!(run.stderr_text().contains("you have no note 7"));

    // Markdown, by the file's extension (the grant covers the folder).
    let run = machine
        .notes(&server, &["export", "~/out/notes.md"])
        .run()
        .await;
    assert_ok(&run);
    let markdown = std::fs::read_to_string(machine.home().join("out/notes.md")).unwrap();
    assert!(
        markdown.starts_with("# Notes of ada\n\n## Buy milk\n"),
        "{markdown}"
    );
    assert!(markdown.contains("\n## Read book\n"), "{markdown}");

    // Another user sees none of ada's notes; the web page shows both.
    let mut other = Machine::new();
    assert_ok(&log_in(&mut other, &server, "bob").await);
    let run = other.notes(&server, &["list"]).run().await;
    assert_eq!(
        run.stdout_text(),
        "No notes yet; add one with `new TITLE`.\n"
    );
    let run = other.notes(&server, &["show", "1"]).run().await;
    assert_eq!(run.status, Some(1));
    let (status, page) = http(server.addr, "GET", "/", None).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<h2>ada</h2>") && page.contains("Water plants"),
        "{page}"
    );

    let run = machine.installed(&server, &["logout"]).run().await;
    assert_ok(&run);
    assert!(!machine.token_file(&server).exists());
    let run = machine.installed(&server, &["whoami"]).run().await;
    assert_eq!(run.stdout_text(), "Not logged in\n");
    server.stop().await;
    eprintln!("full flow took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_expired_sessions_must_log_in_again() {
    let server = NotesServer::with_options(notes::Options {
        session_lifetime: Duration::from_secs(2),
        ..notes::Options::default()
    })
    .await;
    let mut machine = Machine::new();
    assert_ok(&log_in(&mut machine, &server, "ada").await);
    let token_file = machine.token_file(&server);
    let token = std::fs::read_to_string(&token_file).unwrap();

    // Change one character of the signed claims.
    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 3;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    std::fs::write(&token_file, &tampered).unwrap();
    let run = machine.notes(&server, &["list"]).run().await;
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr_text()
            .contains("the saved session is not valid; please log in again"),
        "{}",
        run.stderr_text()
    );
    assert!(!token_file.exists(), "the unusable session was removed");
    std::fs::write(&token_file, &tampered).unwrap();
    let run = machine.notes(&server, &["whoami"]).run().await;
    assert_eq!(run.status, Some(1));
    assert_eq!(
        run.stdout_text(),
        "the saved session is not valid; please log in again\n"
    );

    // The genuine token, after its lifetime.
    std::fs::write(&token_file, &token).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let run = machine.notes(&server, &["new", "late"]).run().await;
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr_text()
            .contains("your session has expired; please log in again"),
        "{}",
        run.stderr_text()
    );
    server.stop().await;
}

/// Runs `login` on `machine` and approves it as `name` with `passphrase`.
async fn log_in_with_passphrase(
    machine: &mut Machine,
    server: &NotesServer,
    name: &str,
    passphrase: &str,
) -> Outcome {
    let (waiting, mut lines) = start_login(machine.notes(server, &["login"]));
    let code = shown_code(&mut lines).await;
    let (_, token) = login_path(server, &machine.next_browser_url().await);
    let form =
        format!("t={token}&code={code}&name={name}&passphrase={passphrase}&decision=approve");
    let (status, page) = http(server.addr, "POST", "/login/approve", Some(&form)).await;
    assert_eq!(status, 200, "{page}");
    waiting.await.unwrap()
}

/// Whether `machine` is told its session ended.
async fn session_ended(machine: &Machine, server: &NotesServer) -> bool {
    let run = machine.notes(server, &["whoami"]).run().await;
    run.status == Some(1) && run.stdout_text() == "your session was ended; please log in again\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_a_passphrase_ends_the_sessions_made_without_it() {
    let server = NotesServer::start().await;
    // Anyone may log in as a name without a passphrase.
    let mut mallory = Machine::new();
    assert_ok(&log_in(&mut mallory, &server, "ada").await);
    // No sleep: a session from the same second as the change ends too.
    let hash = notes::secret::hash("correct horse battery").unwrap();
    server
        .app
        .db(move |db| db.set_passphrase("ada", "", &hash))
        .await
        .unwrap();
    let run = mallory.notes(&server, &["whoami"]).run().await;
    assert_ne!(
        run.stdout_text(),
        "Logged in as ada\n",
        "a session from before the passphrase still works"
    );
    assert!(
        run.stdout_text()
            .contains("your session was ended; please log in again"),
        "{}",
        run.stdout_text()
    );

    // Logging in right after the change works, and keeps working.
    let mut ada = Machine::new();
    let run = log_in_with_passphrase(&mut ada, &server, "ada", "correct+horse+battery").await;
    assert_ok(&run);
    let run = ada.notes(&server, &["whoami"]).run().await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Logged in as ada\n");

    // Removing the passphrase ends the sessions on other machines (say, a
    // lost laptop's), but not the one that removed it.
    let mut laptop = Machine::new();
    assert_ok(&log_in_with_passphrase(&mut laptop, &server, "ada", "correct+horse+battery").await);
    let run = ada.notes(&server, &["passphrase", "--remove"]).run().await;
    assert_ok(&run);
    assert!(
        run.stdout_text().contains("Passphrase removed"),
        "{}",
        run.stdout_text()
    );
    assert!(session_ended(&laptop, &server).await);
    let run = ada.notes(&server, &["whoami"]).run().await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Logged in as ada\n");
    // Other users' sessions are untouched.
    let mut bob = Machine::new();
    assert_ok(&log_in(&mut bob, &server, "bob").await);
    let hash = notes::secret::hash("another one").unwrap();
    server
        .app
        .db(move |db| db.set_passphrase("ada", "", &hash))
        .await
        .unwrap();
    assert!(session_ended(&ada, &server).await);
    let run = bob.notes(&server, &["whoami"]).run().await;
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Logged in as bob\n");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_links_are_one_time_refusable_protected_and_expire() {
    let server = NotesServer::start().await;
    let mut machine = Machine::new();
    let (status, _) = http(server.addr, "GET", "/login/approve?t=00112233", None).await;
    assert_eq!(status, 404, "an unknown link");

    // Refused in the browser.
    let waiting = tokio::spawn(machine.notes(&server, &["login"]).run());
    let (path, token) = login_path(&server, &machine.next_browser_url().await);
    let (status, page) = http(server.addr, "GET", &path, None).await;
    assert_eq!(status, 200);
    assert!(page.contains("Refuse"), "{page}");
    let form = format!("t={token}&name=ada&decision=refuse");
    let (status, _) = http(server.addr, "POST", "/login/approve", Some(&form)).await;
    assert_eq!(status, 200);
    let run = waiting.await.unwrap();
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr_text()
            .contains("the login was refused in the browser"),
        "{}",
        run.stderr_text()
    );
    let (status, _) = http(server.addr, "GET", &path, None).await;
    assert_eq!(status, 410, "a used link is gone");
    assert!(!machine.token_file(&server).exists());

    // Not approved in time (links of this server live one second).
    let short = NotesServer::with_options(notes::Options {
        login_link_lifetime: Duration::from_secs(1),
        ..notes::Options::default()
    })
    .await;
    let waiting = tokio::spawn(machine.notes(&short, &["login"]).run());
    let (path, token) = login_path(&short, &machine.next_browser_url().await);
    let run = waiting.await.unwrap();
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr_text().contains("the login link expired"),
        "{}",
        run.stderr_text()
    );
    let (status, page) = http(short.addr, "GET", &path, None).await;
    assert_eq!(status, 410);
    assert!(page.contains("expired"), "{page}");
    let form = format!("t={token}&name=ada&decision=approve");
    let (status, _) = http(short.addr, "POST", "/login/approve", Some(&form)).await;
    assert_eq!(status, 410);
    assert!(!machine.token_file(&short).exists());
    short.stop().await;

    // A user with a passphrase: the page asks for it.
    let hash = notes::secret::hash("open sesame").unwrap();
    server
        .app
        .db(move |db| db.set_passphrase("ada", "a door", &hash))
        .await
        .unwrap();
    let (waiting, mut lines) = start_login(machine.notes(&server, &["login"]));
    let code = shown_code(&mut lines).await;
    let (_, token) = login_path(&server, &machine.next_browser_url().await);
    let wrong = format!("t={token}&code={code}&name=ada&passphrase=guess&decision=approve");
    let (status, page) = http(server.addr, "POST", "/login/approve", Some(&wrong)).await;
    assert_eq!(status, 403);
    assert!(
        page.contains("Wrong passphrase for ada. Hint: a door 4 attempts left."),
        "{page}"
    );
    let right = format!("t={token}&code={code}&name=ada&passphrase=open+sesame&decision=approve");
    let (status, page) = http(server.addr, "POST", "/login/approve", Some(&right)).await;
    assert_eq!(status, 200, "{page}");
    let run = waiting.await.unwrap();
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Logged in as ada\n");

    // The interactive `passphrase` asks its question on stdin, and the
    // secret only on a terminal: from a pipe it is refused cleanly.
    let run = machine
        .notes(&server, &["passphrase"])
        .stdin("my hint\n")
        .run()
        .await;
    assert_eq!(run.status, Some(1));
    let stderr = run.stderr_text();
    assert!(stderr.contains("A hint to show"), "{stderr}");
    assert!(stderr.contains("stdin is not a terminal"), "{stderr}");
    server.stop().await;
}

/// Headless Chromium driven through the DevTools protocol.
mod chromium {
    use std::collections::VecDeque;
    use std::process::Stdio;
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio_tungstenite::tungstenite::Message;

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// A running browser with an empty profile; killed when dropped.
    pub(crate) struct Chromium {
        child: tokio::process::Child,
        socket: Socket,
        next_id: u64,
        events: VecDeque<Value>,
        _profile: tempfile::TempDir,
    }

    /// Fails the test unless Chromium is installed.
    fn binary() -> &'static str {
        let found = std::process::Command::new("chromium")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            found,
            "chromium is not installed: this test drives a real headless Chromium \
             (install it with `apt-get install chromium`; `.ci/run` does so when it is missing)"
        );
        "chromium"
    }

    impl Chromium {
        pub(crate) async fn start() -> Chromium {
            let profile = tempfile::tempdir().unwrap();
            let mut child = tokio::process::Command::new(binary())
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    "--disable-sync",
                    "--disable-quic",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .env("HOME", profile.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let endpoint = tokio::time::timeout(super::WAIT, async {
                while let Some(line) = lines.next_line().await.unwrap() {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        return url.trim().to_owned();
                    }
                }
                panic!("chromium exited without a DevTools endpoint");
            })
            .await
            .expect("chromium did not start within the deadline");
            // Keep draining its log so that it never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str())
                .await
                .unwrap();
            Chromium {
                child,
                socket,
                next_id: 0,
                events: VecDeque::new(),
                _profile: profile,
            }
        }

        /// Calls a DevTools method; `Err` carries the protocol's error.
        pub(crate) async fn call(
            &mut self,
            session: Option<&str>,
            method: &str,
            params: Value,
        ) -> Result<Value, Value> {
            self.next_id += 1;
            let id = self.next_id;
            let mut message = json!({"id": id, "method": method, "params": params});
            if let Some(session) = session {
                message["sessionId"] = json!(session);
            }
            self.socket
                .send(Message::Text(message.to_string().into()))
                .await
                .unwrap();
            let reply = tokio::time::timeout(super::WAIT, async {
                loop {
                    let message = self.socket.next().await.unwrap().unwrap();
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["id"] == id {
                        return value;
                    }
                    self.events.push_back(value);
                    // Events are not needed; keep only the latest few.
                    if self.events.len() > 100 {
                        self.events.pop_front();
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            match reply.get("error") {
                Some(error) => Err(error.clone()),
                None => Ok(reply["result"].clone()),
            }
        }

        /// Evaluates JavaScript in the page; `None` while the page is
        /// between documents or the expression threw.
        pub(crate) async fn eval(&mut self, session: &str, expression: &str) -> Option<Value> {
            let result = self
                .call(
                    Some(session),
                    "Runtime.evaluate",
                    json!({"expression": expression, "returnByValue": true}),
                )
                .await
                .ok()?;
            if result.get("exceptionDetails").is_some() {
                return None;
            }
            Some(result["result"]["value"].clone())
        }

        /// Waits until the page's text contains `needle`; returns the text.
        pub(crate) async fn wait_for_text(&mut self, session: &str, needle: &str) -> String {
            let deadline = tokio::time::Instant::now() + super::WAIT;
            loop {
                let text = self
                    .eval(
                        session,
                        "document.readyState === 'complete' ? document.body.innerText : null",
                    )
                    .await;
                if let Some(Value::String(text)) = text
                    && text.contains(needle)
                {
                    return text;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the page never showed {needle:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// Opens `url` in a new tab; returns the tab's session id.
        pub(crate) async fn open(&mut self, url: &str) -> String {
            let target = self
                .call(None, "Target.createTarget", json!({"url": url}))
                .await
                .unwrap();
            let attached = self
                .call(
                    None,
                    "Target.attachToTarget",
                    json!({"targetId": target["targetId"], "flatten": true}),
                )
                .await
                .unwrap();
            attached["sessionId"].as_str().unwrap().to_owned()
        }

        pub(crate) async fn close(mut self) {
            let _ = self.call(None, "Browser.close", json!({})).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_approves_the_login() {
    let started = std::time::Instant::now();
    let mut browser = chromium::Chromium::start().await;
    eprintln!("chromium started after {:?}", started.elapsed());
    let server = NotesServer::start().await;
    let mut machine = Machine::new();

    let (waiting, mut lines) = start_login(machine.notes(&server, &["login"]));
    let code = shown_code(&mut lines).await;
    // The "browser" hook hands the URL over; Chromium opens it.
    let url = machine.next_browser_url().await;
    login_path(&server, &url);
    eprintln!("login URL after {:?}", started.elapsed());
    let tab = browser.open(&url).await;
    let page = browser.wait_for_text(&tab, "Log in as:").await;
    assert!(page.contains("A terminal asks to log in"), "{page}");
    let clicked = browser
        .eval(
            &tab,
            &format!(
                "document.getElementById('code').value = '{code}';\
                 document.getElementById('name').value = 'grace';\
                 document.getElementById('approve').click(); true"
            ),
        )
        .await;
    assert_eq!(clicked, Some(serde_json::Value::Bool(true)));
    browser.wait_for_text(&tab, "Logged in as grace").await;
    eprintln!("approved after {:?}", started.elapsed());

    let run = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("login did not finish after the approval")
        .unwrap();
    assert_ok(&run);
    assert_eq!(run.stdout_text(), "Logged in as grace\n");
    let run = machine.notes(&server, &["whoami"]).run().await;
    assert_eq!(run.stdout_text(), "Logged in as grace\n");

    // Reloading the used link shows that it is gone.
    let gone = browser.open(&url).await;
    browser.wait_for_text(&gone, "already used").await;
    browser.close().await;
    server.stop().await;
    eprintln!("browser login took {:?}", started.elapsed());
}

/// A client that reached the app over `wss://` (its hello says so) is sent
/// to the login page on `https://`: the link, and the code and passphrase
/// typed on its page, must not go out in clear. (It was always `http://`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_wss_gets_an_https_login_link() {
    use terminalwire_protocol::frame::{ClientFrame, Operation, ServerFrame};
    let server = NotesServer::start().await;
    let origin = format!("https://{}", server.authority());
    let device = terminalwire_protocol::secure::StaticKey::generate().unwrap();
    let url = server.url();
    let target = terminalwire_client::connect::Target::parse(&url).unwrap();
    let mut socket = terminalwire_tests::wire::secure_connect(&url, &device).await;
    let mut hello =
        terminalwire_client::facts::hello(&target, "notes".into(), vec!["login".into()]).unwrap();
    hello.origin = Some(origin.clone());
    terminalwire_tests::wire::send_frame(&mut socket, &ClientFrame::Hello(hello)).await;
    let opened = tokio::time::timeout(WAIT, async {
        loop {
            if let ServerFrame::Request(request) =
                terminalwire_tests::wire::next_frame(&mut socket).await
                && let Operation::BrowserOpen { url } = request.op
            {
                break url;
            }
        }
    })
    .await
    .expect("the app opened no login page");
    assert!(
        opened.starts_with(&format!("{origin}/login/approve?t=")),
        "a client on {origin} is sent to {opened}"
    );
    drop(socket);
    server.stop().await;
}
