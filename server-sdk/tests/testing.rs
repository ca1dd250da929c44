//! The test client for apps (`terminalwire_server::testing`, feature
//! `testing`): each request a command can make, answered as the real client
//! answers it, through the SDK's session code in memory.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::time::Duration;

use terminalwire_server::resources::EntryKind;
use terminalwire_server::testing::TestClient;
use terminalwire_server::{ColorLevel, Context, Exit, Outcome, ResourceError, Terminal};
use tokio::io::AsyncWriteExt as _;

#[tokio::test]
async fn arguments_output_stdin_prompts_and_the_exit_status_reach_the_test() {
    let terminal = Terminal::new(|ctx: Context| async move {
        let out = ctx.stdout();
        out.println(format!("{} {:?}", ctx.program_name(), ctx.args()))
            .await?;
        let first = ctx.read_line(Some("first? ")).await?;
        let rest = ctx.stdin().read_chunk(100).await?;
        let end = ctx.read_line(None).await?;
        out.println(format!("{first:?} {:?} {end:?}", String::from_utf8(rest)?))
            .await?;
        ctx.stderr().print("warning\n").await?;
        Err::<(), anyhow::Error>(Exit(3).with_message("no task 7").into())
    });
    let out = TestClient::new()
        .program("tasks")
        .args(["done", "7"])
        .stdin(b"one\r\ntwo\nthree")
        .run(&terminal)
        .await;
    assert_eq!(out.status, 3);
    assert_eq!(
        out.stdout_text(),
        "tasks [\"done\", \"7\"]\nSome(\"one\") \"two\\nthree\" None\n"
    );
    assert_eq!(out.stderr_text(), "first? warning\nerror: no task 7\n");
}

#[tokio::test]
async fn a_failure_with_status_0_exits_with_1_and_says_error() {
    // Returned as an error, or as an outcome the app built itself.
    let terminal = Terminal::new(|ctx: Context| async move {
        if ctx.args().is_empty() {
            Err::<Outcome, anyhow::Error>(Exit(0).with_message("no tasks").into())
        } else {
            Ok(Outcome::FailedWith(0, "no tasks".into()))
        }
    });
    for args in [&[][..], &["built"][..]] {
        let out = TestClient::new()
            .args(args.iter().copied())
            .run(&terminal)
            .await;
        assert_eq!(out.status, 1, "{args:?}");
        assert_eq!(out.stderr_text(), "error: no tasks\n", "{args:?}");
    }
}

#[tokio::test]
async fn output_larger_than_the_flow_control_window_arrives_whole() {
    const LEN: usize = 5 * 1024 * 1024 + 17;
    let terminal = Terminal::new(|ctx: Context| async move {
        let mut writer = ctx.stdout().writer();
        writer.write_all(&vec![b'x'; LEN]).await?;
        writer.flush().await?;
        anyhow::Ok(())
    });
    let out = TestClient::new().run(&terminal).await;
    assert_eq!(out.status, 0, "{}", out.stderr_text());
    assert_eq!(out.stdout.len(), LEN);
    assert!(out.stdout.iter().all(|&b| b == b'x'));
}

/// The terminal facts the command sees, and what needs a terminal.
async fn interactive(ctx: Context) -> anyhow::Result<()> {
    let out = ctx.stdout();
    let terminal = ctx.terminal();
    out.println(format!(
        "tty={} size={:?} color={:?} term={:?}",
        terminal.stdin.is_tty(),
        ctx.terminal_size(),
        ctx.stdout().info().color,
        terminal.term
    ))
    .await?;
    let password = ctx.stdin().read_password("Password: ").await;
    out.println(format!("password {password:?}")).await?;
    match ctx.set_raw_mode(true).await {
        Ok(()) => {
            for _ in 0..3 {
                let key = ctx.read_key().await;
                out.println(format!("{key:?}")).await?;
            }
        }
        Err(error) => out.println(format!("raw {error}")).await?,
    }
    Ok(())
}

#[tokio::test]
async fn on_a_terminal_passwords_and_scripted_keys_are_read() {
    let terminal = Terminal::new(interactive);
    let out = TestClient::new()
        .terminal(100, 30)
        .color(ColorLevel::Ansi256)
        .stdin(b"hunter2\n")
        .keys(["a", "ctrl+alt+c"])
        .run(&terminal)
        .await;
    assert_eq!(out.status, 0, "{}", out.stderr_text());
    let lines: Vec<String> = out.stdout_text().lines().map(str::to_owned).collect();
    assert_eq!(
        lines[..2],
        [
            "tty=true size=Some((100, 30)) color=Ansi256 term=Some(\"xterm-256color\")",
            "password Ok(Some(\"hunter2\"))",
        ]
    );
    assert!(
        lines[2].starts_with("Ok(Key { key: \"a\", ctrl: false, alt: false"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("Ok(Key { key: \"c\", ctrl: true, alt: true, shift: false"),
        "{}",
        lines[3]
    );
    assert!(lines[4].starts_with("Err(Io {"), "{}", lines[4]);
    assert_eq!(out.stderr_text(), "Password: ");
}

#[tokio::test]
async fn without_a_terminal_passwords_and_keys_are_refused_like_the_real_client() {
    let terminal = Terminal::new(interactive);
    let out = TestClient::new().stdin(b"hunter2\n").run(&terminal).await;
    assert_eq!(out.status, 0, "{}", out.stderr_text());
    let lines: Vec<String> = out.stdout_text().lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "tty=false size=None color=None term=None");
    assert!(
        lines[1].starts_with("password Err(Unsupported { message: \"cannot read a password: stdin is not a terminal but a pipe"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("raw cannot switch the terminal to raw mode: stdin is not a terminal"),
        "{}",
        lines[2]
    );
    assert_eq!(out.stderr_text(), "");
}

#[tokio::test]
async fn files_and_folders_work_in_the_storage_folder_and_nowhere_else() {
    let storage = tempfile::tempdir().unwrap();
    std::fs::write(storage.path().join("given.txt"), "from the test").unwrap();
    let terminal = Terminal::new(|ctx: Context| async move {
        let out = ctx.stdout();
        let path = |name: &str| ctx.storage_path(name).unwrap();
        let files = ctx.file();
        let dirs = ctx.dir();
        out.println(files.read_to_string(&path("given.txt")).await?)
            .await?;
        dirs.create_all(&path("a/b")).await?;
        files.write(&path("a/b/new.txt"), "one\n").await?;
        files.append(&path("a/b/new.txt"), "two\n").await?;
        let mut writer = files.writer(&path("a/streamed.bin")).await?;
        writer.write(&[7; 100_000]).await?;
        writer.write(b"end").await?;
        writer.commit().await?;
        let names: Vec<String> = dirs
            .list(&path("a"))
            .await?
            .into_iter()
            .map(|entry| format!("{}:{}", entry.name, entry.kind == EntryKind::Dir))
            .collect();
        out.println(names.join(" ")).await?;
        let meta = files.metadata(&path("a/streamed.bin")).await?.unwrap();
        out.println(format!(
            "size {} exists {} {} gone {:?}",
            meta.size,
            files.exists(&path("a/b/new.txt")).await?,
            dirs.exists(&path("a/b")).await?,
            files
                .metadata(&path("nothing"))
                .await?
                .map(|meta| meta.size),
        ))
        .await?;
        files.delete(&path("given.txt")).await?;
        let missing = files.read(&path("given.txt")).await;
        out.println(format!(
            "missing {}",
            matches!(missing, Err(ResourceError::NotFound { .. }))
        ))
        .await?;
        // Outside the storage folder: denied as the real client denies it.
        let storage = ctx.storage_path("").unwrap();
        for outside in ["/etc/passwd", "notes.txt", &format!("{storage}/../x")] {
            let error = files.read(outside).await.unwrap_err();
            let denial = error.denial().unwrap();
            out.println(format!(
                "{} {} {} | {}",
                denial.resource,
                denial.action,
                denial.target,
                error.grant_command().unwrap()
            ))
            .await?;
        }
        let error = dirs.create(&format!("{storage}/../x")).await.unwrap_err();
        out.println(error.to_string()).await?;
        anyhow::Ok(())
    });
    let out = TestClient::new()
        .storage(storage.path())
        .run(&terminal)
        .await;
    assert_eq!(out.status, 0, "{}", out.stderr_text());
    // Named as the real client names them: `~` is the user's home.
    let root = std::fs::canonicalize(storage.path()).unwrap();
    let parent = root.parent().unwrap().display();
    let home = std::env::home_dir().unwrap();
    let home = home.display();
    let lines: Vec<String> = out.stdout_text().lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "from the test".to_owned(),
            "b:true streamed.bin:false".to_owned(),
            "size 100003 exists true true gone None".to_owned(),
            "missing true".to_owned(),
            "path read /etc/passwd | terminalwire entitlement grant app.test path '/etc/**' --read"
                .to_owned(),
            format!(
                "path read {home}/notes.txt | terminalwire entitlement grant app.test path \
                 '~/notes.txt' --read"
            ),
            format!(
                "path read {parent}/x | terminalwire entitlement grant app.test path \
                 '{parent}/**' --read"
            ),
            format!(
                "denied by the client: app.test may not write path {parent}/x: it has not been \
                 granted. To allow it, run: terminalwire entitlement grant app.test path \
                 '{parent}/x/**' --write"
            ),
        ]
    );
    // The files are really there, and nothing was written outside.
    let new = std::fs::read_to_string(storage.path().join("a/b/new.txt")).unwrap();
    assert_eq!(new, "one\ntwo\n");
    let streamed = std::fs::read(storage.path().join("a/streamed.bin")).unwrap();
    assert_eq!(streamed.len(), 100_003);
    assert!(!storage.path().join("given.txt").exists());
    assert!(!storage.path().join("../x").exists());
}

/// The real client's own storage folder is not the test's: a path there
/// is refused as the real client refuses a path it will not tell about,
/// naming whose entitlements refused it.
#[tokio::test]
async fn a_path_in_the_real_clients_storage_folder_is_refused_naming_the_authority() {
    let terminal = Terminal::new(|ctx: Context| async move {
        let path = "~/.terminalwire/authorities/app.test/storage/x";
        let error = ctx.file().read(path).await.unwrap_err();
        ctx.stdout().println(error.to_string()).await
    });
    let storage = tempfile::tempdir().unwrap();
    let out = TestClient::new()
        .storage(storage.path())
        .run(&terminal)
        .await;
    assert_eq!(
        out.stdout_text(),
        "denied by the client: app.test may not read path \
         ~/.terminalwire/authorities/app.test/storage/x: it has not been granted\n"
    );
}

#[tokio::test]
async fn without_a_storage_folder_the_command_sees_none() {
    let terminal = Terminal::new(|ctx: Context| async move {
        ctx.stdout()
            .println(format!("{:?}", ctx.storage_path("x")))
            .await
    });
    let out = TestClient::new().run(&terminal).await;
    assert_eq!(out.stdout_text(), "None\n");
}

#[tokio::test]
async fn variables_given_are_read_others_denied_and_opens_of_the_app_recorded_others_denied() {
    let terminal = Terminal::new(|ctx: Context| async move {
        let out = ctx.stdout();
        out.println(format!("{:?}", ctx.env().get("EDITOR").await?))
            .await?;
        let secret = ctx.env().get("AWS_SECRET").await.unwrap_err();
        out.println(format!("{:?}", secret.grant_command())).await?;
        ctx.browser().open(&ctx.web_url("/tasks").unwrap()).await?;
        let elsewhere = ctx
            .browser()
            .open("https://example.com/")
            .await
            .unwrap_err();
        out.println(format!("{:?}", elsewhere.grant_command()))
            .await?;
        anyhow::Ok(())
    });
    let out = TestClient::new()
        .env("EDITOR", "vi")
        .origin("https://tasks.example:8443/")
        .run(&terminal)
        .await;
    assert_eq!(out.status, 0, "{}", out.stderr_text());
    assert_eq!(
        out.stdout_text(),
        "Some(\"vi\")\n\
         Some(\"terminalwire entitlement grant tasks.example:8443 env AWS_SECRET\")\n\
         Some(\"terminalwire entitlement grant tasks.example:8443 browser https://example.com\")\n"
    );
    assert_eq!(out.opened, ["https://tasks.example:8443/tasks"]);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "the command did not finish within 5s")]
async fn a_command_that_never_ends_fails_the_test_at_the_deadline() {
    let terminal = Terminal::new(|_ctx: Context| std::future::pending::<()>());
    TestClient::new()
        .deadline(Duration::from_secs(5))
        .run(&terminal)
        .await;
}

#[tokio::test]
async fn clones_of_a_client_are_one_machine_with_one_device_key() {
    let terminal = Terminal::new(|ctx: Context| async move {
        let device = ctx.client().device.clone().unwrap();
        ctx.stdout().print(device).await
    });
    let machine = TestClient::new();
    let first = machine.clone().run(&terminal).await.stdout_text();
    let again = machine.clone().run(&terminal).await.stdout_text();
    let other = TestClient::new().run(&terminal).await.stdout_text();
    assert!(first.starts_with("SHA256:"), "{first}");
    assert_eq!(first, again);
    assert_ne!(first, other);
}

#[tokio::test]
async fn lines_too_long_or_not_utf8_are_refused_like_the_real_client() {
    let terminal = Terminal::new(|ctx: Context| async move {
        for _ in 0..3 {
            let line = ctx.read_line(None).await;
            ctx.stdout()
                .println(match line {
                    Ok(line) => format!("{line:?}"),
                    Err(error) => error.to_string(),
                })
                .await?;
        }
        anyhow::Ok(())
    });
    let mut stdin = vec![b'x'; 64 * 1024 + 1];
    stdin.extend_from_slice(b"\n\xff\nok\n");
    let out = TestClient::new().stdin(stdin).run(&terminal).await;
    assert_eq!(
        out.stdout_text(),
        "invalid request: input line longer than 65536 bytes (skipped)\n\
         invalid request: input line is not valid UTF-8\n\
         Some(\"ok\")\n"
    );
}

/// What an app's route found in the upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer(String);

#[tokio::test]
async fn the_command_reads_the_values_its_route_passed_with_the_connection() {
    let terminal = Terminal::new(|ctx: Context| async move {
        let peer = ctx.extension::<Peer>().cloned();
        let missing = ctx.extension::<String>().cloned();
        ctx.stdout().println(format!("{peer:?} {missing:?}")).await
    });
    let out = TestClient::new()
        .extension(Peer("192.0.2.7:5000".into()))
        .run(&terminal)
        .await;
    assert_eq!(out.stdout_text(), "Some(Peer(\"192.0.2.7:5000\")) None\n");
}

#[tokio::test]
async fn a_command_that_panics_fails_with_status_1_as_on_the_real_client() {
    let terminal = Terminal::new(|ctx: Context| async move {
        ctx.stdout().println("before").await?;
        if ctx.args().is_empty() {
            panic!("a bug of the app's");
        }
        anyhow::Ok(())
    });
    let out = TestClient::new().run(&terminal).await;
    assert_eq!(out.status, 1);
    assert_eq!(out.stdout_text(), "before\n");
    assert_eq!(
        out.stderr_text(),
        "error: the command failed unexpectedly on the server (internal error)\n"
    );
}

/// A clap CLI whose help has lines longer than any width tried below.
#[derive(clap::Parser)]
#[command(name = "wide")]
struct Wide {
    /// An option whose help is long enough for clap to wrap it at any of the widths these tests try, which shows where the lines break.
    #[arg(long)]
    option: Option<String>,
}

/// The `--help` of a command parsing `C`, as a client of `client` sees it.
async fn help_of<C: clap::Parser + Send + 'static>(client: TestClient) -> String {
    let terminal = Terminal::new(|ctx: Context| async move {
        ctx.parse_args::<C>().await?;
        anyhow::Ok(())
    });
    let out = client.args(["--help"]).run(&terminal).await;
    assert_eq!(out.status, 0, "{}", out.stderr_text());
    out.stdout_text()
}

fn widest_line(text: &str) -> usize {
    text.lines().map(|line| line.chars().count()).max().unwrap()
}

#[tokio::test]
async fn help_is_wrapped_to_the_client_terminal() {
    let on_120 = help_of::<Wide>(TestClient::new().terminal(120, 24)).await;
    assert!((100..=120).contains(&widest_line(&on_120)), "{on_120}");
    let on_60 = help_of::<Wide>(TestClient::new().terminal(60, 24)).await;
    assert!((50..=60).contains(&widest_line(&on_60)), "{on_60}");
}

/// Set in the process of its own that
/// [`help_without_a_client_terminal_is_wrapped_at_clap_s_default_not_the_server_s_columns`]
/// runs its check in.
const HELP_CHILD: &str = "TERMINALWIRE_TEST_HELP_WIDTH_CHILD";

#[tokio::test]
async fn help_without_a_client_terminal_is_wrapped_at_clap_s_default_not_the_server_s_columns() {
    if std::env::var_os(HELP_CHILD).is_some() {
        // The server's `COLUMNS` (and its terminal, when it has one) are
        // not the client's: the help was wrapped at 40 columns here.
        let help = help_of::<Wide>(TestClient::new()).await;
        assert!((90..=100).contains(&widest_line(&help)), "{help}");
        return;
    }
    // In a process of its own, with no terminal and a narrow `COLUMNS`
    // (which a test cannot set in its own process).
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "help_without_a_client_terminal_is_wrapped_at_clap_s_default_not_the_server_s_columns",
            "--exact",
            "--nocapture",
        ])
        .env(HELP_CHILD, "1")
        .env("COLUMNS", "40")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// A CLI that never colours its help and errors, as its app chose (a plain
// comment: a doc comment would be its help's text).
#[derive(clap::Parser)]
#[command(name = "plain", color = clap::ColorChoice::Never)]
struct Plain {
    #[arg(long)]
    option: Option<String>,
}

// One that always colours them.
#[derive(clap::Parser)]
#[command(name = "coloured", color = clap::ColorChoice::Always)]
struct Coloured {
    #[arg(long)]
    option: Option<String>,
}

/// What the client sees of `args` parsed as `C`: (status, stdout, stderr).
async fn parsed<C: clap::Parser + Send + 'static>(
    client: TestClient,
    args: &[&str],
) -> (u8, String, String) {
    let terminal = Terminal::new(|ctx: Context| async move {
        ctx.parse_args::<C>().await?;
        anyhow::Ok(())
    });
    let out = client.args(args.iter().copied()).run(&terminal).await;
    (out.status, out.stdout_text(), out.stderr_text())
}

#[tokio::test]
async fn help_and_usage_errors_are_coloured_as_the_client_and_the_apps_color_choice_say() {
    let escape = |text: &str| text.contains('\x1b');
    let colours = || {
        TestClient::new()
            .terminal(80, 24)
            .color(ColorLevel::Truecolor)
    };
    // `Auto`, clap's default: as the client's stream supports.
    let (_, help, _) = parsed::<Wide>(colours(), &["--help"]).await;
    assert!(escape(&help), "{help:?}");
    let (_, help, _) = parsed::<Wide>(TestClient::new(), &["--help"]).await;
    assert!(!escape(&help), "{help:?}");
    // `Never`, whatever the client supports (it was coloured all the same).
    let (_, help, _) = parsed::<Plain>(colours(), &["--help"]).await;
    assert!(!escape(&help), "{help:?}");
    let (status, _, error) = parsed::<Plain>(colours(), &["--bogus"]).await;
    assert_eq!(status, 2);
    assert!(!escape(&error), "{error:?}");
    // `Always`, even into a pipe.
    let (_, help, _) = parsed::<Coloured>(TestClient::new(), &["--help"]).await;
    assert!(escape(&help), "{help:?}");
    let (status, _, error) = parsed::<Coloured>(TestClient::new(), &["--bogus"]).await;
    assert_eq!(status, 2);
    assert!(escape(&error), "{error:?}");
}
