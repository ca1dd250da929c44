//! The built binary's own interface (and, as a side effect, it makes
//! `cargo test` build the binary the end-to-end tests in `tests/` run).

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::process::Command;

/// A loopback port nobody listens on: one just given up.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the client with its home at `home`, neither time-out variable set
/// but `variable` when given a value: its status and stderr.
fn run_with_timeout_variable(
    home: &std::path::Path,
    args: &[&str],
    variable: &str,
    value: Option<&str>,
) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_terminalwire"));
    command
        .args(args)
        .env("TERMINALWIRE_HOME", home)
        .env_remove("TERMINALWIRE_CONNECT_TIMEOUT")
        .env_remove("TERMINALWIRE_PROMPT_TIMEOUT");
    if let Some(value) = value {
        command.env(variable, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn terminalwire(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_terminalwire"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn version_names_the_client_and_its_version() {
    let output = terminalwire(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("terminalwire {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_missing_url_is_a_usage_error_on_stderr() {
    let output = terminalwire(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("Usage: terminalwire"), "{stderr}");
}

#[test]
fn an_unreachable_tls_server_is_one_line_and_unavailable() {
    let home = tempfile::tempdir().unwrap();
    // A port nobody listens on: one just given up.
    let port = free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_terminalwire"))
        .arg(format!("wss://127.0.0.1:{port}/terminal"))
        .env("TERMINALWIRE_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("terminalwire: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// `terminalwire ARGS` with an empty terminalwire home of its own.
fn terminalwire_at_home(args: &[&str]) -> (Option<i32>, String) {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_terminalwire"))
        .args(args)
        .env("TERMINALWIRE_HOME", home.path())
        .env_remove("TERMINALWIRE_CONNECT_TIMEOUT")
        .env_remove("TERMINALWIRE_CA_CERT")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// `terminalwire --no-prompt attach ID` is `terminalwire attach
/// --no-prompt ID` (it said `attach` was neither a URL nor a command, and
/// asked "did you mean `terminalwire attach`?").
#[test]
fn client_options_before_attach_are_attachs() {
    let (status, stderr) = terminalwire_at_home(&[
        "--no-prompt",
        "-v",
        "--connect-timeout",
        "3",
        "attach",
        "abc",
    ]);
    // No such session in an empty home: attach itself answered.
    assert_eq!(status, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "terminalwire: no detached session `abc` (see `terminalwire sessions`)\n"
    );
}

/// The commands that never connect take no client options: said so, with
/// the line to run instead.
#[test]
fn client_options_before_another_command_say_what_to_run() {
    let (status, stderr) = terminalwire_at_home(&["-v", "entitlement", "list"]);
    assert_eq!(status, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.ends_with(
            "`terminalwire entitlement` does not take `-v` (options for connecting to an app): \
             run `terminalwire entitlement list`\n"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("neither"), "{stderr}");
    let (status, stderr) = terminalwire_at_home(&["--connect-timeout", "3", "sessions"]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("take `--connect-timeout` ("), "{stderr}");
    assert!(stderr.contains("run `terminalwire sessions`"), "{stderr}");
}

/// Words and URLs that are almost right are told what was meant (they
/// were told to add a scheme: `https://grant/...`, `https://ws:/...`).
#[test]
fn near_misses_are_told_what_was_meant() {
    for (args, meant) in [
        (
            &["grant", "x"][..],
            "did you mean `terminalwire entitlement grant`?",
        ),
        (
            &["forget", "x"],
            "did you mean `terminalwire authority forget`?",
        ),
        (&["version"], "did you mean `terminalwire --version`?"),
        (
            &["ws:/127.0.0.1:3000/terminal", "x"],
            "did you mean ws://127.0.0.1:3000/terminal?",
        ),
        (
            &["ws//127.0.0.1:3000/terminal", "x"],
            "did you mean ws://127.0.0.1:3000/terminal?",
        ),
        (&["", "hello"], "the app's URL is empty"),
        (&["ftp://h/t"], "or unix:/path/to/app.sock"),
    ] {
        let (status, stderr) = terminalwire_at_home(args);
        assert_eq!(status, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(meant), "{args:?}: {stderr}");
        assert!(!stderr.contains("https://ws"), "{args:?}: {stderr}");
        assert!(!stderr.contains("on host"), "{args:?}: {stderr}");
    }
}

/// A bad `TERMINALWIRE_CONNECT_TIMEOUT` names the variable (clap named
/// `--connect-timeout`, which was not typed); a time-out too long says
/// the maximum (it said "must be a positive number").
#[test]
fn a_bad_time_out_names_where_it_came_from_and_the_limit() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str], timeout: Option<&str>| {
        run_with_timeout_variable(home.path(), args, "TERMINALWIRE_CONNECT_TIMEOUT", timeout)
    };
    // A port nobody listens on.
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/terminal");
    let (status, stderr) = run(&[&url, "x"], Some("abc"));
    assert_eq!(status, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "terminalwire: TERMINALWIRE_CONNECT_TIMEOUT=\"abc\" is not a positive number of seconds\n"
    );
    let (status, stderr) = run(&["attach", "x"], Some("1e30"));
    assert_eq!(status, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "terminalwire: TERMINALWIRE_CONNECT_TIMEOUT=\"1e30\" is more than the maximum, 86400 \
         seconds (a day)\n"
    );
    // The option, when given, is the one that counts.
    let (status, stderr) = run(&["--connect-timeout", "3", &url, "x"], Some("abc"));
    assert_eq!(status, Some(69), "{stderr}");
    let (status, stderr) = run(&["--connect-timeout", "1e30", &url, "x"], None);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(
            "error: invalid value '1e30' for '--connect-timeout <SECS>': more than the maximum, \
             86400 seconds (a day)"
        ),
        "{stderr}"
    );
    let (status, stderr) = run(&["--connect-timeout", "86400", &url, "x"], None);
    assert_eq!(status, Some(69), "{stderr}");
}

/// `--prompt-timeout SECS` sets the consent prompt's time-out as
/// `--connect-timeout` sets the connection's: checked as the variable is
/// (0 waits as long as it takes), and when given it wins over
/// `TERMINALWIRE_PROMPT_TIMEOUT`, which is then not read; it goes before
/// `attach` too, and `--help` names it.
#[test]
fn prompt_timeout_is_an_option_that_wins_over_its_variable() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str], timeout: Option<&str>| {
        run_with_timeout_variable(home.path(), args, "TERMINALWIRE_PROMPT_TIMEOUT", timeout)
    };
    // A port nobody listens on: a command line the client accepts ends
    // there, with 69.
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/terminal");
    for (value, said) in [
        (
            "5m",
            "not a positive number of seconds (or 0, to wait as long as it takes)",
        ),
        ("-1", "not a positive number of seconds"),
        ("86401", "more than the maximum, 86400 seconds (a day)"),
    ] {
        let option = format!("--prompt-timeout={value}");
        let (status, stderr) = run(&[&option, &url, "x"], None);
        assert_eq!(status, Some(2), "{value}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "error: invalid value '{value}' for '--prompt-timeout <SECS>': {said}"
            )),
            "{value}: {stderr}"
        );
    }
    for value in ["0", "0.5", "86400"] {
        let (status, stderr) = run(&["--prompt-timeout", value, &url, "x"], None);
        assert_eq!(status, Some(69), "{value}: {stderr}");
    }
    // The option, when given, is the one that counts; without it, the
    // variable's bad value is a usage error that names it.
    let (status, stderr) = run(&["--prompt-timeout", "3", &url, "x"], Some("5m"));
    assert_eq!(status, Some(69), "{stderr}");
    let (status, stderr) = run(&[&url, "x"], Some("5m"));
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("terminalwire: TERMINALWIRE_PROMPT_TIMEOUT=\"5m\""),
        "{stderr}"
    );
    // Before `attach`, it is attach's (no such session in an empty home).
    let (status, stderr) = run(&["--prompt-timeout", "3", "attach", "abc"], Some("5m"));
    assert_eq!(status, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "terminalwire: no detached session `abc` (see `terminalwire sessions`)\n"
    );
    let help = terminalwire(&["--help"]);
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("--prompt-timeout <SECS>"), "{help}");
}

/// `terminalwire-exec --help`, typed by a person, is help (it was taken for
/// a launcher named `--help`, which could not be read: status 65).
#[test]
fn terminalwire_exec_help_and_version_are_answered() {
    let run = |arg: &str| {
        Command::new(env!("CARGO_BIN_EXE_terminalwire-exec"))
            .arg(arg)
            .output()
            .unwrap()
    };
    let help = run("--help");
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.contains("usage: terminalwire-exec LAUNCHER"), "{text}");
    let version = run("--version");
    assert_eq!(version.status.code(), Some(0));
    assert!(
        String::from_utf8(version.stdout)
            .unwrap()
            .starts_with("terminalwire-exec ")
    );
}

/// A terminalwire home that is a file is named as such, with the status of
/// an unusable configuration (it was a bare "Not a directory", status 1).
#[test]
fn a_home_that_is_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("home");
    std::fs::write(&file, "").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_terminalwire"))
        .arg("apps")
        .env("TERMINALWIRE_HOME", &file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(65));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{} is not a folder", file.display())),
        "{stderr}"
    );
}

/// A user's home folder that does not exist (`HOME=/nonexistent`, as
/// system users such as `nobody` have) is not made by the client to hold
/// `~/.terminalwire`: said, with the status of an unusable configuration
/// (the client created the whole home, `/nonexistent` included, then ran).
#[test]
fn a_missing_user_home_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let url = format!("ws://127.0.0.1:{}/terminal", free_port());
    for args in [
        vec![url.as_str(), "x"],
        vec!["install", url.as_str(), "--name", "x"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_terminalwire"))
            .args(&args)
            .env("HOME", &missing)
            .env_remove("TERMINALWIRE_HOME")
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(65), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "your home folder {} does not exist",
                missing.display()
            )) && stderr.contains("TERMINALWIRE_HOME"),
            "{args:?}: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} made the user's home");
    }
}
