//! The client's audit log: what a server did, allowed or denied.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use terminalwire_tests::{Client, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_request_is_logged_with_its_decision() {
    let server = TestServer::hello().await;
    let home = tempfile::tempdir().unwrap();
    let run_app = |args: &[&str]| {
        let mut all = vec![server.url()];
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        Client::new(all).env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
    };
    let run = run_app(&["note", "add", "buy", "milk"]).run().await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    let run = run_app(&["cat", "/etc/hostname"]).run().await;
    assert_eq!(run.status, Some(1));
    let run = run_app(&["env", "PATH"]).run().await;
    assert_eq!(run.status, Some(1));

    let entries = audit_entries(home.path().to_str().unwrap()).await;
    let find = |action: &str, decision: &str| {
        entries
            .iter()
            .find(|entry| entry["action"] == action && entry["decision"] == decision)
            .unwrap_or_else(|| panic!("no {action}/{decision} in {entries:#?}"))
    };
    let append = find("file_append", "allowed");
    assert_eq!(append["bytes"], 9, "the bytes of `buy milk\\n`");
    assert_eq!(append["authority"], server.addr().to_string());
    assert!(
        append["target"]
            .as_str()
            .unwrap()
            .ends_with("storage/notes.txt")
    );
    assert!(!append["session"].as_str().unwrap().is_empty());
    assert_eq!(find("file_read", "denied")["target"], "/etc/hostname");
    assert_eq!(find("env_get", "denied")["target"], "PATH");

    let table = Client::new(["audit", &server.url()])
        .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
        .run()
        .await;
    let text = table.stdout_text();
    assert!(text.starts_with("TIME"), "{text}");
    assert!(text.contains("/etc/hostname"), "{text}");
    let later = Client::new(["audit", "--since", "2999-01-01T00:00:00Z"])
        .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
        .run()
        .await;
    assert_eq!(later.stdout_text(), "Nothing recorded.\n");
    let bad = Client::new(["audit", "--since", "yesterday-ish"])
        .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
        .run()
        .await;
    // A usage error, as the client's own arguments are.
    assert_eq!(bad.status, Some(2), "{}", bad.stderr_text());
}

/// A server floods the log to push an earlier session's entries out of it:
/// past its budget a session's requests are counted, and summed up when it
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_session_cannot_push_earlier_sessions_out_of_the_log() {
    use terminalwire_server::{Context, Terminal};
    let flood = Terminal::new(|ctx: Context| async move {
        let count: usize = ctx.args()[0].parse().unwrap();
        let files = ctx.file();
        for index in 0..count {
            // About 250 bytes of log each: 12 000 make 3 MiB, more than
            // the log and its rotated file keep.
            let path = format!("~/no-such-file-{index:0>100}");
            let _ = files.exists(&path).await;
        }
        // After the flood: what it must not hide.
        let _ = ctx.env().get("AUDITED_SECRET").await;
    });
    let server = TestServer::with_terminal(flood).await;
    let home = tempfile::tempdir().unwrap();
    let home_text = home.path().to_str().unwrap();
    let grant = Client::new([
        "entitlement",
        "grant",
        &server.addr().to_string(),
        "env",
        "AUDITED_SECRET",
    ])
    .env("TERMINALWIRE_HOME", home_text)
    .run()
    .await;
    assert_eq!(grant.status, Some(0), "{}", grant.stderr_text());
    let run = |count: &str| {
        Client::new([server.url().as_str(), count])
            .env("TERMINALWIRE_HOME", home_text)
            .env("TERMINALWIRE_NO_PROMPT", "1")
            .env("AUDITED_SECRET", "x")
            .run()
    };
    let earlier = run("1").await;
    assert_eq!(earlier.status, Some(0), "{}", earlier.stderr_text());
    let flood = run("12000").await;
    assert_eq!(flood.status, Some(0), "{}", flood.stderr_text());
    let entries = audit_entries(home_text).await;
    let first_session = entries[0]["session"].clone();
    assert!(
        entries[0]["target"]
            .as_str()
            .unwrap()
            .ends_with("no-such-file-0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"),
        "the earlier session's entry is still first: {:?}",
        entries[0]
    );
    let flooding: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|entry| entry["session"] != first_session)
        .collect();
    let one_by_one = flooding
        .iter()
        .filter(|entry| entry["action"] == "file_exists" && entry["decision"] == "denied")
        .filter(|entry| !entry["target"].as_str().unwrap().contains("counted"))
        .count();
    // Sums come every so often (and at the end): all of them add up.
    let sums: Vec<&&serde_json::Value> = flooding
        .iter()
        .filter(|entry| {
            entry["action"] == "file_exists"
                && entry["target"]
                    .as_str()
                    .unwrap()
                    .contains("counted, not logged one by one")
        })
        .collect();
    assert!(!sums.is_empty(), "no sum among {} entries", flooding.len());
    let counted: usize = sums
        .iter()
        .map(|sum| {
            let target = sum["target"].as_str().unwrap();
            let count = target.strip_prefix('(').unwrap().split(' ').next().unwrap();
            count.parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(one_by_one + counted, 12000, "{sums:?}");
    // What read the user's environment is still there, one by one.
    assert!(
        flooding.iter().any(|entry| entry["action"] == "env_get"
            && entry["target"] == "AUDITED_SECRET"
            && entry["decision"] == "allowed"),
        "the flood hid the env_get: {:?}",
        &flooding[flooding.len().saturating_sub(5)..]
    );
}

/// A path padded past what a log line keeps (`./` repeated) still shows
/// the file it read: the log names the resolved path, start and end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_padded_path_is_logged_as_the_file_it_names() {
    use terminalwire_server::{Context, Terminal};
    let reader = Terminal::new(|ctx: Context| async move {
        let path = ctx.args()[0].clone();
        let _ = ctx.file().read(&path).await;
    });
    let server = TestServer::with_terminal(reader).await;
    let home = tempfile::tempdir().unwrap();
    let home_text = home.path().to_str().unwrap();
    let granted = tempfile::tempdir().unwrap();
    let granted_dir = std::fs::canonicalize(granted.path()).unwrap();
    std::fs::write(granted_dir.join("secret"), "s").unwrap();
    let pattern = format!("{}/**", granted_dir.display());
    let grant = Client::new([
        "entitlement",
        "grant",
        &server.addr().to_string(),
        "path",
        &pattern,
    ])
    .env("TERMINALWIRE_HOME", home_text)
    .run()
    .await;
    assert_eq!(grant.status, Some(0), "{}", grant.stderr_text());
    let padded = format!("{}/{}secret", granted_dir.display(), "./".repeat(600));
    let run = Client::new([server.url().as_str(), padded.as_str()])
        .env("TERMINALWIRE_HOME", home_text)
        .run()
        .await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    let entries = audit_entries(home_text).await;
    let read = entries
        .iter()
        .find(|entry| entry["action"] == "file_read")
        .unwrap_or_else(|| panic!("no read in {entries:?}"));
    assert_eq!(
        read["target"],
        granted_dir.join("secret").display().to_string(),
        "{read}"
    );
}

/// `terminalwire audit --json` of the home at `home`, one value per entry.
async fn audit_entries(home: &str) -> Vec<serde_json::Value> {
    let audit = Client::new(["audit", "--json"])
        .env("TERMINALWIRE_HOME", home)
        .run()
        .await;
    assert_eq!(audit.status, Some(0), "{}", audit.stderr_text());
    audit
        .stdout_text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Lines of the log that are not entries (garbage appended to it) are
/// said on stderr, with their count and file, and the others are still
/// listed: they were skipped without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_lines_of_the_log_are_said_not_hidden() {
    use std::io::Write as _;
    let server = TestServer::hello().await;
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_str().unwrap();
    let run = Client::new([server.url().as_str(), "env", "PATH"])
        .env("TERMINALWIRE_HOME", home_path)
        .run()
        .await;
    assert_eq!(run.status, Some(1), "{}", run.stderr_text());
    let log = home
        .path()
        .join(format!("authorities/{}/audit.log", server.addr()));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"\x00garbage\nnot json either\n")
        .unwrap();
    for json in [false, true] {
        let mut args = vec!["audit"];
        if json {
            args.push("--json");
        }
        let audit = Client::new(args)
            .env("TERMINALWIRE_HOME", home_path)
            .run()
            .await;
        assert_eq!(audit.status, Some(0), "{}", audit.stderr_text());
        assert!(
            audit.stdout_text().contains("PATH"),
            "{}",
            audit.stdout_text()
        );
        assert_eq!(
            audit.stderr_text(),
            format!(
                "terminalwire: warning: 2 lines of {} could not be read (not audit entries) and \
                 are not shown\n",
                log.display()
            )
        );
    }
}
