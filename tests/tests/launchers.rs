//! Installed apps: `terminalwire install`, launchers run through
//! `#!/usr/bin/env terminalwire-exec`, `apps`, `uninstall`.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use terminalwire_tests::{Client, TestServer};

fn admin(home: &std::path::Path, args: &[&str]) -> Client {
    Client::new(args.iter().copied()).env("TERMINALWIRE_HOME", home.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_launcher_runs_the_app_under_its_own_name() {
    let server = TestServer::hello().await;
    let home = tempfile::tempdir().unwrap();
    let run = admin(home.path(), &["install", &server.url(), "--name", "greet"])
        .env("PATH", "/usr/bin:/bin")
        .run()
        .await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    let launcher = home.path().join("bin/greet");
    assert!(run.stdout_text().contains(&launcher.display().to_string()));
    assert!(
        run.stdout_text().contains("export PATH="),
        "tells how to add the folder to PATH: {}",
        run.stdout_text()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&launcher).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let text = std::fs::read_to_string(&launcher).unwrap();
    assert!(
        text.starts_with("#!/usr/bin/env terminalwire-exec\n"),
        "{text}"
    );
    assert!(text.contains(&server.url()), "{text}");

    // Run it as the kernel would: through its interpreter line.
    let run = Client::new(["hello", "Launcher"])
        .program(&launcher)
        .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
        .run()
        .await;
    assert_eq!(
        run.stdout_text(),
        "Hello, Launcher!\n",
        "{}",
        run.stderr_text()
    );
    assert_eq!(run.status, Some(0));
    let run = Client::new(["--help"])
        .program(&launcher)
        .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
        .run()
        .await;
    assert!(
        run.stdout_text().contains("Usage: greet <COMMAND>"),
        "the app sees the launcher's name: {}",
        run.stdout_text()
    );

    let run = admin(home.path(), &["apps"]).run().await;
    assert_eq!(run.stdout_text(), format!("greet  {}\n", server.url()));
    let run = admin(home.path(), &["uninstall", "greet"]).run().await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert!(!launcher.exists());
    let run = admin(home.path(), &["uninstall", "greet"]).run().await;
    assert_eq!(run.status, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_launcher_is_a_clear_error_naming_the_file() {
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let broken = bin.join("broken");
    std::fs::write(
        &broken,
        "#!/usr/bin/env terminalwire-exec\nurl = \"ftp://nowhere/terminal\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = Client::new(["anything"])
        .program(&broken)
        .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
        .run()
        .await;
    assert_eq!(run.status, Some(65), "{}", run.stderr_text());
    let stderr = run.stderr_text();
    assert!(
        stderr.starts_with(&format!("terminalwire-exec: {}:2:", broken.display())),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let run = admin(home.path(), &["apps"]).run().await;
    assert!(
        run.stdout_text().contains("broken  (broken:"),
        "{}",
        run.stdout_text()
    );

    let run = admin(
        home.path(),
        &[
            "install",
            "ws://127.0.0.1:9/terminal",
            "--name",
            "../escape",
        ],
    )
    .run()
    .await;
    assert_eq!(run.status, Some(1));
    assert!(!home.path().join("escape").exists());
}
