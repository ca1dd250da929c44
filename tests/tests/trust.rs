//! Trust: the pinned server identity, the end-to-end encryption against a
//! man in the middle, and the refusal of web pages.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use terminalwire_server::{Context, Terminal};
use terminalwire_tests::relay::Relay;
use terminalwire_tests::{Client, TestServer};

const IDENTITY_CHANGED: i32 = 77;
const PROTOCOL: i32 = 76;

/// Runs the client through `relay` with the given home.
async fn run_via(
    relay: &Relay,
    home: &std::path::Path,
    args: &[&str],
) -> terminalwire_tests::Outcome {
    let url = format!("ws://{}/terminal", relay.addr());
    let mut all = vec![url.as_str()];
    all.extend_from_slice(args);
    Client::new(all)
        .env("TERMINALWIRE_HOME", home.to_str().unwrap())
        .run()
        .await
}

fn admin(home: &std::path::Path, args: &[&str]) -> Client {
    Client::new(args.iter().copied()).env("TERMINALWIRE_HOME", home.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_contact_pins_and_a_changed_identity_is_refused_until_trusted() {
    let home = tempfile::tempdir().unwrap();
    let first = TestServer::hello().await;
    let impostor = TestServer::hello().await;
    // One authority (the relay's address), two servers with different keys.
    let relay = Relay::start(first.addr()).await;
    let authority = relay.addr().to_string();

    let run = run_via(&relay, home.path(), &["hello", "pin"]).await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    let pin_file = home
        .path()
        .join(format!("authorities/{authority}/server.pin"));
    let pinned = std::fs::read_to_string(&pin_file).unwrap();
    let pinned = pinned.lines().last().unwrap().to_owned();
    assert!(pinned.starts_with("SHA256:"), "{pinned}");
    use std::os::unix::fs::PermissionsExt;
    let device_key = home
        .path()
        .join(format!("authorities/{authority}/device.key"));
    let mode = std::fs::metadata(&device_key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "device key mode");

    // Same server again: fine.
    let run = run_via(&relay, home.path(), &["hello", "again"]).await;
    assert_eq!(run.stdout_text(), "Hello, again!\n");

    // Another key at the same authority: refused, loudly, nothing sent.
    relay.switch_to(impostor.addr());
    let sent_before = relay.from_client().len();
    let run = run_via(&relay, home.path(), &["hello", "secret-argument"]).await;
    assert_eq!(run.status, Some(IDENTITY_CHANGED), "{}", run.stderr_text());
    let stderr = run.stderr_text();
    assert!(stderr.contains("IDENTITY HAS CHANGED"), "{stderr}");
    assert!(stderr.contains(&pinned), "names the pinned key: {stderr}");
    let presented = stderr
        .split_whitespace()
        .find(|word| word.starts_with("SHA256:") && *word != pinned)
        .unwrap()
        .to_owned();
    assert!(
        stderr.contains(&format!(
            "terminalwire authority trust {authority} --fingerprint {presented}"
        )),
        "{stderr}"
    );
    let sent = &relay.from_client()[sent_before..];
    assert!(
        !sent.windows(15).any(|w| w == b"secret-argument"),
        "the arguments never reach an impostor"
    );
    assert_eq!(run.stdout_text(), "");

    // The user accepts the change deliberately.
    let run = admin(
        home.path(),
        &[
            "authority",
            "trust",
            &authority,
            "--fingerprint",
            &presented,
        ],
    )
    .run()
    .await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    let run = run_via(&relay, home.path(), &["hello", "new"]).await;
    assert_eq!(run.stdout_text(), "Hello, new!\n", "{}", run.stderr_text());

    // Back to the first server: refused again; `forget` starts over.
    relay.switch_to(first.addr());
    let run = run_via(&relay, home.path(), &["hello", "x"]).await;
    assert_eq!(run.status, Some(IDENTITY_CHANGED));
    let run = admin(home.path(), &["authority", "forget", &authority, "--yes"])
        .run()
        .await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    let run = run_via(&relay, home.path(), &["hello", "fresh"]).await;
    assert_eq!(
        run.stdout_text(),
        "Hello, fresh!\n",
        "{}",
        run.stderr_text()
    );

    let run = admin(
        home.path(),
        &[
            "authority",
            "trust",
            &authority,
            "--fingerprint",
            "SHA256:nope",
        ],
    )
    .run()
    .await;
    // A usage error, as the client's own arguments are.
    assert_eq!(run.status, Some(2), "a malformed fingerprint is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_another_local_user_could_change_or_read_stop_the_client() {
    use std::os::unix::fs::PermissionsExt;
    let set_mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::hello().await;
    let url = server.url();
    let run = |args: &'static [&'static str]| {
        let mut all = vec![url.clone()];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        Client::new(all)
            .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
            .run()
    };
    let first = run(&["hello", "Ada"]).await;
    assert_eq!(
        first.stdout_text(),
        "Hello, Ada!\n",
        "{}",
        first.stderr_text()
    );
    let authority_dir = home.path().join(format!("authorities/{}", server.addr()));
    let device_key = authority_dir.join("device.key");
    let policy = authority_dir.join("policy.toml");
    std::fs::write(&policy, "").unwrap();
    set_mode(&policy, 0o644);

    // Each of these could let another user act as this user: read the
    // device key, or grant the app files (or pin a server) for them.
    for (path, mode, fix) in [
        (device_key.clone(), 0o644, "chmod 600"),
        (policy.clone(), 0o666, "chmod go-w"),
        (authority_dir.clone(), 0o777, "chmod go-w"),
    ] {
        let before = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        set_mode(&path, mode);
        let refused = run(&["hello", "Mallory"]).await;
        let stderr = refused.stderr_text();
        assert_eq!(
            refused.status,
            Some(65),
            "{} at {mode:o}: {stderr}",
            path.display()
        );
        assert!(refused.stdout.is_empty(), "{stderr}");
        assert!(
            stderr.contains(&format!("{fix} {}", path.display())),
            "the message names the fix: {stderr}"
        );
        set_mode(&path, before);
    }
    let again = run(&["hello", "again"]).await;
    assert_eq!(
        again.stdout_text(),
        "Hello, again!\n",
        "{}",
        again.stderr_text()
    );
}

/// A way to damage a file: its name, what the client's message says of it,
/// and what makes it.
type Damage = (&'static str, &'static str, fn(&std::path::Path));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_of_the_home_stop_the_client_with_a_message() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let server = TestServer::hello().await;
    let url = server.url();
    let run = |name: &'static str| {
        Client::new([url.clone(), "hello".to_owned(), name.to_owned()])
            .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
            .run()
    };
    let first = run("Ada").await;
    assert_eq!(
        first.stdout_text(),
        "Hello, Ada!\n",
        "{}",
        first.stderr_text()
    );
    let authority_dir = home.path().join(format!("authorities/{}", server.addr()));
    let scratch = tempfile::tempdir().unwrap();
    for name in ["device.key", "server.pin", "policy.toml"] {
        let path = authority_dir.join(name);
        let kept = scratch.path().join(name);
        let existed = path.exists();
        if existed {
            std::fs::rename(&path, &kept).unwrap();
        }
        // What each damage is called in the message.
        let damages: [Damage; 5] = [
            ("a folder", "is a folder", |path| {
                std::fs::create_dir(path).unwrap()
            }),
            // Its open would wait for a writer: the client hung.
            ("a FIFO", "is a FIFO, socket or device", |path| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap();
            }),
            // It never ends: the client read until memory ran out.
            (
                "a link to /dev/zero",
                "is a FIFO, socket or device",
                |path| {
                    std::os::unix::fs::symlink("/dev/zero", path).unwrap();
                },
            ),
            // Sparse: the client read 2 GiB of zeros.
            ("2 GiB", "more than the", |path| {
                let file = std::fs::File::create(path).unwrap();
                file.set_len(2 << 30).unwrap();
                file.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .unwrap();
            }),
            ("not text", "not UTF-8 text", |path| {
                std::fs::write(path, b"\xff\xfe\x00garbage").unwrap();
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }),
        ];
        for (damage, said, make) in damages {
            make(&path);
            let refused = run("Mallory").await;
            let stderr = refused.stderr_text();
            assert_eq!(refused.status, Some(65), "{name} {damage}: {stderr}");
            assert!(refused.stdout.is_empty(), "{name} {damage}: {stderr}");
            assert!(
                stderr.contains(&path.display().to_string()) && stderr.contains(said),
                "{name} {damage}: {stderr}"
            );
            if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
        if existed {
            std::fs::rename(&kept, &path).unwrap();
        }
    }
    let again = run("again").await;
    assert_eq!(
        again.stdout_text(),
        "Hello, again!\n",
        "{}",
        again.stderr_text()
    );
}

const SECRET: &str = "the-launch-code-is-0000-and-nobody-else-may-read-it";

fn secret_app() -> Terminal {
    Terminal::new(|ctx: Context| async move {
        let line = ctx.read_line(None).await.unwrap().unwrap_or_default();
        let out = ctx.stdout();
        out.println(format!("{SECRET} for {line}")).await.unwrap();
        // Enough output that a byte in the middle of the stream is payload.
        for n in 0..2000 {
            out.println(format!("{n:>8} {SECRET}")).await.unwrap();
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_in_the_middle_reads_nothing() {
    let server = TestServer::with_terminal(secret_app()).await;
    let relay = Relay::start(server.addr()).await;
    let home = tempfile::tempdir().unwrap();
    let url = format!("ws://{}/terminal", relay.addr());
    let run = Client::new([url.as_str(), "--password-like-argument"])
        .stdin("typed-on-stdin-private\n")
        .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
        .run()
        .await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert!(run.stdout_text().contains(SECRET), "the client did get it");
    let contains = |haystack: &[u8], needle: &str| {
        haystack
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    };
    let from_server = relay.from_server();
    let from_client = relay.from_client();
    assert!(from_server.len() > 100_000, "the relay saw the traffic");
    assert!(
        !contains(&from_server, SECRET),
        "the secret crossed in clear"
    );
    assert!(
        !contains(&from_server, "launch-code"),
        "part of the secret crossed in clear"
    );
    assert!(
        !contains(&from_client, "typed-on-stdin-private"),
        "stdin crossed in clear"
    );
    assert!(
        !contains(&from_client, "password-like-argument"),
        "arguments crossed in clear"
    );
    assert!(
        !contains(&from_client, "hello"),
        "the hello crossed in clear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_ends_the_session_cleanly() {
    let server = TestServer::with_terminal(secret_app()).await;
    for index in [60_000usize, 90_001, 120_003] {
        let relay = Relay::start(server.addr()).await;
        relay.flip_server_byte(index);
        let home = tempfile::tempdir().unwrap();
        let url = format!("ws://{}/terminal", relay.addr());
        let run = Client::new([url.as_str()])
            .stdin("me\n")
            .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
            .run()
            .await;
        assert_eq!(
            run.status,
            Some(PROTOCOL),
            "flip at {index}: {}",
            run.stderr_text()
        );
        let stderr = run.stderr_text();
        assert!(
            stderr.starts_with("terminalwire: protocol error"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        // Whatever arrived before the flip is intact; nothing after it.
        let stdout = run.stdout_text();
        assert!(stdout.len() < 2000 * 60, "the session stopped early");
        for line in stdout.lines().skip(1) {
            assert!(
                line.ends_with(SECRET),
                "a damaged line got through: {line:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_cannot_open_a_session() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::hello().await;
    let request = |origin: Option<&str>| {
        let mut request = server.url().into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            terminalwire_protocol::SUBPROTOCOL.parse().unwrap(),
        );
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        request
    };
    let refused = tokio_tungstenite::connect_async(request(Some("https://evil.example"))).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
        }
        other => panic!("an upgrade from a web page was not refused: {other:?}"),
    }
    let accepted = tokio_tungstenite::connect_async(request(None)).await;
    assert!(accepted.is_ok(), "{accepted:?}");
}

fn session_app() -> Terminal {
    let issuer = std::sync::Arc::new(
        terminalwire_server::tokens::TokenIssuer::new(
            &[42u8; 32],
            std::time::Duration::from_secs(3600),
        )
        .unwrap(),
    );
    Terminal::new(move |ctx: Context| {
        let issuer = issuer.clone();
        async move {
            use terminalwire_server::tokens::SessionState;
            let out = ctx.stdout();
            match ctx.args().first().map(String::as_str) {
                Some("login") => {
                    ctx.log_in(&issuer, &ctx.args()[1]).await?;
                    out.println("logged in").await?;
                }
                _ => match ctx.session(&issuer).await? {
                    SessionState::LoggedIn(claims) => {
                        out.println(format!("logged in as {}", claims.sub)).await?
                    }
                    SessionState::LoggedOut => out.println("logged out").await?,
                    SessionState::Rejected(error) => out.println(format!("{error}")).await?,
                    _ => out.println("unknown").await?,
                },
            }
            anyhow::Ok(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_session_token_is_useless_on_another_device() {
    let server = TestServer::with_terminal(session_app()).await;
    let laptop = tempfile::tempdir().unwrap();
    let other_machine = tempfile::tempdir().unwrap();
    let run_on = |home: &std::path::Path, args: &[&str]| {
        let mut all = vec![server.url()];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        Client::new(all).env("TERMINALWIRE_HOME", home.to_str().unwrap())
    };
    let run = run_on(laptop.path(), &["login", "ada"]).run().await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    let run = run_on(laptop.path(), &["whoami"]).run().await;
    assert_eq!(run.stdout_text(), "logged in as ada\n");

    // Steal the token file and use it from another device.
    let authority = server.addr().to_string();
    let token_file = |home: &std::path::Path| {
        home.join(format!("authorities/{authority}/storage/session.token"))
    };
    run_on(other_machine.path(), &["whoami"]).run().await;
    std::fs::copy(token_file(laptop.path()), token_file(other_machine.path())).unwrap();
    let run = run_on(other_machine.path(), &["whoami"]).run().await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert_eq!(
        run.stdout_text(),
        "the saved session belongs to another device; please log in again\n"
    );
    assert!(
        !token_file(other_machine.path()).exists(),
        "the stolen token was removed"
    );

    // A damaged token is a clean "log in again", not a crash.
    std::fs::write(token_file(laptop.path()), "tw1.garbage.garbage").unwrap();
    let run = run_on(laptop.path(), &["whoami"]).run().await;
    assert_eq!(
        run.stdout_text(),
        "the saved session is not valid; please log in again\n"
    );
    let run = run_on(laptop.path(), &["whoami"]).run().await;
    assert_eq!(run.stdout_text(), "logged out\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_serves_its_owner_on_a_private_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runtime/terminalwire/hello.sock");
    let listener = terminalwire_server::local::LocalListener::bind(&path).unwrap();
    let terminal = hello::terminal();
    let app = axum::Router::new().route("/terminal", terminal.route());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is owner-only");
    let folder = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(folder, 0o700, "its folder is owner-only");

    let url = format!("unix:{}", path.display());
    let run = Client::new([url.as_str(), "hello", "Ada"]).run().await;
    assert_eq!(run.stdout_text(), "Hello, Ada!\n", "{}", run.stderr_text());
    assert_eq!(run.status, Some(0));
    let run = Client::new([url.as_str(), "whoami"]).run().await;
    assert!(
        run.stdout_text().contains("authority: local-"),
        "{}",
        run.stdout_text()
    );

    let missing = format!("unix:{}", dir.path().join("nothing.sock").display());
    let run = Client::new([missing.as_str(), "hello", "x"]).run().await;
    assert_eq!(run.status, Some(69), "{}", run.stderr_text());
    let run = Client::new(["unix:relative.sock", "hello"]).run().await;
    assert_eq!(run.status, Some(2), "{}", run.stderr_text());
    server.abort();
}

/// POSTs a form to the app and returns the HTTP status.
async fn post_form(addr: std::net::SocketAddr, path: &str, body: &str) -> u16 {
    terminalwire_tests::status_of(
        &terminalwire_tests::raw_http(addr, &format!("POST {path}"), "", body).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_waits_for_approval_on_the_web_and_can_be_revoked() {
    use terminalwire_server::devices::DeviceStatus;
    let server = TestServer::hello().await;
    let home = tempfile::tempdir().unwrap();
    let secret = |home: &std::path::Path| {
        Client::new([server.url().as_str(), "secret"])
            .env("TERMINALWIRE_HOME", home.to_str().unwrap())
            .run()
    };
    let before: std::collections::BTreeSet<String> = hello::devices()
        .list()
        .into_iter()
        .map(|device| device.fingerprint)
        .collect();
    let waiting = tokio::spawn(secret(home.path()));
    // The app registers the new device as pending; find its code.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (fingerprint, code) = loop {
        let pending = hello::devices().list().into_iter().find_map(|device| {
            match (&device.status, before.contains(&device.fingerprint)) {
                (DeviceStatus::Pending { code }, false) => {
                    Some((device.fingerprint.clone(), code.clone()))
                }
                _ => None,
            }
        });
        if let Some(found) = pending {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no device became pending"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        post_form(server.addr(), "/devices/approve", "code=WRONG123").await,
        404
    );
    assert_eq!(
        post_form(server.addr(), "/devices/approve", &format!("code={code}")).await,
        200
    );
    let run = waiting.await.unwrap();
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert_eq!(run.stdout_text(), "The secret is 42.\n");
    assert!(
        run.stderr_text().contains(&code),
        "the code was shown: {}",
        run.stderr_text()
    );

    // Approved: straight in. Revoked: refused at once.
    let run = secret(home.path()).await;
    assert_eq!(run.stdout_text(), "The secret is 42.\n");
    let body = format!(
        "device={}",
        fingerprint
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace(':', "%3A")
    );
    assert_eq!(
        post_form(server.addr(), "/devices/revoke", &body).await,
        200
    );
    let run = secret(home.path()).await;
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr_text().contains("revoked"),
        "{}",
        run.stderr_text()
    );
    assert_eq!(run.stdout_text(), "");
}

/// Runs the client as user `nobody` (65534) with its own home; `None` when
/// this test process cannot switch users (not root, or no `setpriv`).
async fn run_as_nobody(args: &[&str]) -> Option<terminalwire_tests::Outcome> {
    let base = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    run_as_nobody_in(&base.path().join("tw"), args).await
}

/// Whether this test process can run the client as another user: it is
/// root and has `setpriv`.
fn setpriv() -> Option<&'static str> {
    if rustix::process::getuid().as_raw() != 0 {
        return None;
    }
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
}

/// Runs the client as user `nobody` (65534) with the terminalwire home
/// `home` (its user home the folder above it); `None` as [`setpriv`].
async fn run_as_nobody_in(
    home: &std::path::Path,
    args: &[&str],
) -> Option<terminalwire_tests::Outcome> {
    let setpriv = setpriv()?;
    let binary = terminalwire_tests::client_binary();
    let output = tokio::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&binary)
        .args(args)
        .env("TERMINALWIRE_HOME", home)
        .env("HOME", home.parent().unwrap())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), output)
        .await
        .expect("the client hung")
        .unwrap();
    Some(terminalwire_tests::Outcome {
        status: output.status.code(),
        stdout: output.stdout,
        stderr: output.stderr,
    })
}

/// A home another user made (root, by `sudo terminalwire ...` say), or a
/// folder of it another user made in this user's home, is named with its
/// owner and the `chown` that gives it back, not a bare "Permission
/// denied", by the client's commands and by a session (65).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_or_folder_of_another_user_is_named_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    if setpriv().is_none() {
        eprintln!("skipped: switching to another user needs root and setpriv");
        return;
    }
    let server = TestServer::hello().await;
    let url = server.url();
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let expect_refused = |run: terminalwire_tests::Outcome, folder: &std::path::Path| {
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert_eq!(run.status, Some(65), "{stderr}");
        assert!(run.stdout.is_empty(), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{} belongs to another user (root), so terminalwire cannot use it as uid 65534",
                folder.display()
            )),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("run: sudo chown -R 65534 {}", folder.display())),
            "{stderr}"
        );
        assert!(!stderr.contains("Permission denied"), "{stderr}");
    };

    // The whole home is root's: made by the client run as root.
    let home = base.path().join("root-made");
    let made = admin(
        &home,
        &["entitlement", "grant", "example.com", "env", "EDITOR"],
    )
    .run()
    .await;
    assert_eq!(made.status, Some(0), "{}", made.stderr_text());
    for args in [
        &["entitlement", "list", "example.com"][..],
        &["install", url.as_str(), "--name", "greet"],
        &["sessions"],
        &[url.as_str(), "hello", "Ada"],
    ] {
        let run = run_as_nobody_in(&home, args).await.unwrap();
        expect_refused(run, &home);
    }

    // This user's home, with a folder root made for the server in it.
    let home = base.path().join("own");
    let authority = home.join(format!("authorities/{}", server.addr()));
    std::fs::create_dir_all(&authority).unwrap();
    std::fs::set_permissions(&authority, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(authority.join("policy.toml"), "").unwrap();
    for folder in [&home, &home.join("authorities")] {
        std::os::unix::fs::chown(folder, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let addr = server.addr().to_string();
    for args in [
        &[url.as_str(), "hello", "Ada"][..],
        &["entitlement", "list", addr.as_str()],
        &["authority", "forget", addr.as_str(), "--yes"],
    ] {
        let run = run_as_nobody_in(&home, args).await.unwrap();
        expect_refused(run, &authority);
    }
    assert!(authority.join("policy.toml").exists());

    // This user's folders, with a policy file root made in it (0600).
    let policy = authority.join("policy.toml");
    std::os::unix::fs::chown(&authority, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
    for args in [
        &[url.as_str(), "hello", "Ada"][..],
        &["entitlement", "list", addr.as_str()],
        &["entitlement", "grant", addr.as_str(), "env", "EDITOR"],
    ] {
        let run = run_as_nobody_in(&home, args).await.unwrap();
        expect_refused(run, &policy);
    }
}

/// A policy file of the user's own that its mode shuts them out of (a
/// `chmod 000`) is named with the `chmod` that lets them back in, not a
/// bare "Permission denied", by a session and by the client's commands
/// (65).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_policy_file_its_mode_shuts_out_is_named_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    if setpriv().is_none() {
        eprintln!("skipped: switching to another user needs root and setpriv");
        return;
    }
    let server = TestServer::hello().await;
    let url = server.url();
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = base.path().join("tw");
    let authority = home.join(format!("authorities/{}", server.addr()));
    std::fs::create_dir_all(&authority).unwrap();
    let policy = authority.join("policy.toml");
    std::fs::write(&policy, "").unwrap();
    for folder in [&home, &home.join("authorities"), &authority] {
        std::os::unix::fs::chown(folder, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::os::unix::fs::chown(&policy, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o000)).unwrap();
    let addr = server.addr().to_string();
    for args in [
        &[url.as_str(), "hello", "Ada"][..],
        &["entitlement", "list", addr.as_str()],
        &["entitlement", "grant", addr.as_str(), "env", "EDITOR"],
    ] {
        let run = run_as_nobody_in(&home, args).await.unwrap();
        let stderr = run.stderr_text();
        assert_eq!(run.status, Some(65), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{} is yours, but its mode (0000) does not let you use it",
                policy.display()
            )) && stderr.contains(&format!("run: chmod u+rw {}", policy.display())),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("Permission denied"), "{args:?}: {stderr}");
    }

    // A home the user made read-only still serves what only reads; a write
    // names the `chmod` that lets it in.
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o500)).unwrap();
    for args in [&["authority", "list"][..], &["audit"]] {
        let run = run_as_nobody_in(&home, args).await.unwrap();
        assert_eq!(run.status, Some(0), "{args:?}: {}", run.stderr_text());
    }
    // `install` makes `bin/` in the home itself.
    let run = run_as_nobody_in(&home, &["install", url.as_str(), "--name", "hello"])
        .await
        .unwrap();
    let stderr = run.stderr_text();
    assert_eq!(run.status, Some(65), "{stderr}");
    assert!(
        stderr.contains(&format!("run: chmod u+rwx {}", home.display())),
        "{stderr}"
    );
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_cannot_drive_a_local_session() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("runtime/terminalwire/hello.sock");
    let listener = terminalwire_server::local::LocalListener::bind(&path).unwrap();
    let terminal = hello::terminal();
    let app = axum::Router::new().route("/terminal", terminal.route());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("unix:{}", path.display());

    // The owner is served.
    let run = Client::new([url.as_str(), "hello", "Ada"]).run().await;
    assert_eq!(run.stdout_text(), "Hello, Ada!\n", "{}", run.stderr_text());

    // Another user cannot even reach the socket (0600 in a 0700 folder)…
    let Some(run) = run_as_nobody(&[url.as_str(), "hello", "Mallory"]).await else {
        eprintln!("skipped: switching to another user needs root and setpriv");
        server.abort();
        return;
    };
    assert_eq!(
        run.status,
        Some(69),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.stdout.is_empty());

    // …and if the permissions were loosened by mistake, the server still
    // refuses the connection by the peer's user id.
    for folder in [
        path.parent().unwrap().parent().unwrap(),
        path.parent().unwrap(),
    ] {
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = run_as_nobody(&[url.as_str(), "hello", "Mallory"])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.stdout.is_empty(), "another user was served: {stderr}");
    assert!(
        matches!(run.status, Some(69 | 75)),
        "status {:?}: {stderr}",
        run.status
    );
    // The owner still is.
    let run = Client::new([url.as_str(), "hello", "Ada"]).run().await;
    assert_eq!(run.stdout_text(), "Hello, Ada!\n", "{}", run.stderr_text());
    server.abort();
}
