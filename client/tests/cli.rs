//! The built binary's own interface (and, as a side effect, it makes
//! `cargo test` build the binary the end-to-end tests in `tests/` run).

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::process::Command;

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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
