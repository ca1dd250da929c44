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

/// `install` as the first command on a machine whose umask lets the group
/// write (Ubuntu's and Fedora's default for users with their own group):
/// the home and its launchers folder are the user's alone, so that the
/// client runs (it refuses a home others could change) and no member of
/// the group can point a launcher at another server. A launcher others
/// could change is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_keeps_the_home_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::hello().await;
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("tw");
    let client = terminalwire_tests::client_binary();
    let run = Client::new([
        "-c",
        "umask 002 && exec \"$0\" \"$@\"",
        client.to_str().unwrap(),
        "install",
        &server.url(),
        "--name",
        "greet",
    ])
    .program("/bin/sh")
    .env("TERMINALWIRE_HOME", home.to_str().unwrap())
    .env("PATH", "/usr/bin:/bin")
    .run()
    .await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    for folder in [home.clone(), home.join("bin")] {
        let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", folder.display());
    }
    let launcher = home.join("bin/greet");
    let greet = || {
        Client::new(["hello", "Group"])
            .program(&launcher)
            .env("TERMINALWIRE_HOME", home.to_str().unwrap())
    };
    let run = greet().run().await;
    assert_eq!(
        run.stdout_text(),
        "Hello, Group!\n",
        "{}",
        run.stderr_text()
    );
    // Made writable by the group after all: refused, with the fix.
    std::fs::set_permissions(home.join("bin"), std::fs::Permissions::from_mode(0o775)).unwrap();
    let run = greet().run().await;
    assert_eq!(run.status, Some(65), "{}", run.stderr_text());
    assert!(run.stdout_text().is_empty());
    assert!(
        run.stderr_text().contains("other users") && run.stderr_text().contains("chmod"),
        "{}",
        run.stderr_text()
    );
}

/// A URL with a line break or a tab (which the URL parser would drop, and a
/// `unix:` path keeps) is refused, not written into a launcher that then
/// fails to load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_refuses_a_url_with_control_characters() {
    let home = tempfile::tempdir().unwrap();
    for url in [
        "ws://127.0.0.1:9/terminal\n",
        "ws://127.0.0.1:9/ter\tminal",
        "unix:/tmp/a\nb.sock",
    ] {
        let run = admin(home.path(), &["install", url, "--name", "app"])
            .run()
            .await;
        assert_eq!(run.status, Some(2), "{url:?}: {}", run.stdout_text());
        assert!(
            run.stderr_text().contains("control character"),
            "{url:?}: {}",
            run.stderr_text()
        );
        assert!(!home.path().join("bin/app").exists(), "{url:?}");
    }
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
    assert_eq!(run.status, Some(2), "a usage error");
    assert!(!home.path().join("escape").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_keeps_the_clients_names_and_other_launchers_and_warns_of_shadowing() {
    let home = tempfile::tempdir().unwrap();
    let launchers = home.path().join("bin");
    // The client's own names would loop (`terminalwire-exec` as its own
    // interpreter) or hide the client.
    for reserved in ["terminalwire-exec", "terminalwire"] {
        let run = admin(
            home.path(),
            &["install", "ws://127.0.0.1:9/terminal", "--name", reserved],
        )
        .run()
        .await;
        assert_eq!(run.status, Some(2), "{reserved}: {}", run.stdout_text());
        assert!(
            run.stderr_text().contains("client's own program"),
            "{}",
            run.stderr_text()
        );
        assert!(!launchers.join(reserved).exists());
    }
    // An IP address names nothing.
    let run = admin(home.path(), &["install", "ws://127.0.0.1:9/terminal"])
        .run()
        .await;
    assert_eq!(run.status, Some(2));
    assert!(
        run.stderr_text().contains("--name"),
        "{}",
        run.stderr_text()
    );

    // A command of that name elsewhere on PATH: installed, with a warning.
    let system = tempfile::tempdir().unwrap();
    let other = system.path().join("notes");
    std::fs::write(&other, "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The same folder twice, once through a symlink: said once.
    let links = tempfile::tempdir().unwrap();
    let linked = links.path().join("system");
    std::os::unix::fs::symlink(system.path(), &linked).unwrap();
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        system.path().display(),
        linked.display()
    );
    let install = |url: &'static str, extra: &'static [&'static str]| {
        let mut args = vec!["install", url, "--name", "notes"];
        args.extend_from_slice(extra);
        admin(home.path(), &args).env("PATH", &path).run()
    };
    let run = install("ws://127.0.0.1:9/terminal", &[]).await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert!(
        run.stderr_text()
            .contains(&format!("warning: {} is also a command", other.display())),
        "{}",
        run.stderr_text()
    );
    assert_eq!(
        run.stderr_text().matches("is also a command").count(),
        1,
        "{}",
        run.stderr_text()
    );
    // Appended to PATH, so that system commands keep their names.
    assert!(
        run.stdout_text()
            .contains(&format!("export PATH=\"$PATH:{}\"", launchers.display())),
        "{}",
        run.stdout_text()
    );
    let first = std::fs::read_to_string(launchers.join("notes")).unwrap();

    // Again: nothing to do. Another URL: refused without --force.
    let run = install("ws://127.0.0.1:9/terminal", &[]).await;
    assert_eq!(run.status, Some(0));
    assert!(
        run.stdout_text().contains("notes is already installed"),
        "{}",
        run.stdout_text()
    );
    let run = install("ws://127.0.0.1:10/terminal", &[]).await;
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr_text()
            .contains("already installed, for ws://127.0.0.1:9/terminal: add --force"),
        "{}",
        run.stderr_text()
    );
    assert_eq!(
        std::fs::read_to_string(launchers.join("notes")).unwrap(),
        first
    );
    let run = install("ws://127.0.0.1:10/terminal", &["--force"]).await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert!(
        run.stdout_text()
            .contains("(it ran ws://127.0.0.1:9/terminal before)"),
        "{}",
        run.stdout_text()
    );
    assert!(
        std::fs::read_to_string(launchers.join("notes"))
            .unwrap()
            .contains("ws://127.0.0.1:10/terminal")
    );
    // A file there that is not a launcher is never replaced.
    std::fs::write(launchers.join("mine"), "#!/bin/sh\necho mine\n").unwrap();
    let run = admin(
        home.path(),
        &["install", "ws://127.0.0.1:9/t", "--name", "mine", "--force"],
    )
    .run()
    .await;
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr_text().contains("is not a launcher"),
        "{}",
        run.stderr_text()
    );
    assert_eq!(
        std::fs::read_to_string(launchers.join("mine")).unwrap(),
        "#!/bin/sh\necho mine\n"
    );
    // A broken launcher is, with --force.
    std::fs::write(
        launchers.join("broken"),
        "#!/usr/bin/env terminalwire-exec\nurl = nowhere\n",
    )
    .unwrap();
    let install_broken = |url: &'static str, force: bool| {
        let mut args = vec!["install", url, "--name", "broken"];
        if force {
            args.push("--force");
        }
        admin(home.path(), &args).run()
    };
    let run = install_broken("ws://127.0.0.1:9/t", false).await;
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr_text().contains("broken is a broken launcher (")
            && run.stderr_text().contains("add --force"),
        "{}",
        run.stderr_text()
    );
    let run = install_broken("ws://127.0.0.1:9/t", true).await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert!(
        run.stdout_text()
            .contains("(it replaced a broken launcher)"),
        "{}",
        run.stdout_text()
    );
    // The same app by its http:// name is the same launcher.
    let run = install_broken("http://127.0.0.1:9/t", false).await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert!(
        run.stdout_text().contains("broken is already installed"),
        "{}",
        run.stdout_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_takes_its_connection_timeout_from_the_environment() {
    // A server that accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/terminal", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let home = tempfile::tempdir().unwrap();
    let run = admin(home.path(), &["install", &url, "--name", "silent"])
        .run()
        .await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    let launcher = home.path().join("bin/silent");
    let with_timeout = |timeout: &str| {
        Client::new(["x"])
            .program(&launcher)
            .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
            .env("TERMINALWIRE_CONNECT_TIMEOUT", timeout)
            .run()
    };
    let run = with_timeout("0.25").await;
    assert_ne!(run.status, Some(0));
    assert!(
        run.stderr_text().contains("timed out after 250ms"),
        "{}",
        run.stderr_text()
    );
    let run = with_timeout("soon").await;
    assert_eq!(run.status, Some(2), "a usage error");
    assert_eq!(
        run.stderr_text(),
        "silent: TERMINALWIRE_CONNECT_TIMEOUT=\"soon\" is not a positive number of seconds\n"
    );
    // The consent prompt's time-out is checked as well, before connecting.
    let run = Client::new(["x"])
        .program(&launcher)
        .env("TERMINALWIRE_HOME", home.path().to_str().unwrap())
        .env("TERMINALWIRE_PROMPT_TIMEOUT", "-5")
        .run()
        .await;
    assert_eq!(run.status, Some(2), "a usage error");
    assert_eq!(
        run.stderr_text(),
        "silent: TERMINALWIRE_PROMPT_TIMEOUT=\"-5\" is not a positive number of seconds \
         (or 0, to wait as long as it takes)\n"
    );
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_whose_reader_has_gone_ends_quietly_like_sigpipe() {
    let home = terminalwire_tests::process::ClientHome::new();
    for index in 0..50 {
        std::fs::create_dir_all(home.path().join(format!("authorities/host{index}.example")))
            .unwrap();
    }
    // `terminalwire authority list | head -0`: the reader is gone before
    // the first line (closed before the client starts, so that it cannot
    // write everything into the pipe first).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = home
        .command(["authority", "list"])
        .stdout(writer)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(
        terminalwire_tests::CLIENT_DEADLINE,
        child.wait_with_output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(output.status.code(), Some(141));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_names_a_command_and_a_mistyped_command_is_named_back() {
    let home = tempfile::tempdir().unwrap();
    let run = admin(home.path(), &["help", "install"]).run().await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert!(
        run.stdout_text().contains("Usage: terminalwire install"),
        "{}",
        run.stdout_text()
    );
    let run = admin(home.path(), &["instal", "ws://127.0.0.1:9/t"])
        .run()
        .await;
    assert_eq!(run.status, Some(2));
    assert!(
        run.stderr_text()
            .contains("did you mean `terminalwire install`?"),
        "{}",
        run.stderr_text()
    );
}

/// A launcher whose body was broken (its URL edited to one the client does
/// not take) is still the client's to remove: `apps` lists it as broken,
/// and its own comment says to remove it with `terminalwire uninstall`.
/// A file there that does not start as a launcher is left alone, and said
/// to be no launcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_a_broken_launcher_and_leaves_other_files() {
    let home = tempfile::tempdir().unwrap();
    let run = admin(
        home.path(),
        &["install", "ws://127.0.0.1:9/terminal", "--name", "greet"],
    )
    .env("PATH", "/usr/bin:/bin")
    .run()
    .await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    let launcher = home.path().join("bin/greet");
    let text = std::fs::read_to_string(&launcher).unwrap();
    assert!(text.contains("terminalwire uninstall NAME"), "{text}");
    let broken = text.replace("ws://127.0.0.1:9/terminal", "ftp://x");
    std::fs::write(&launcher, broken).unwrap();
    let run = admin(home.path(), &["apps"]).run().await;
    assert!(
        run.stdout_text().starts_with("greet  (broken:"),
        "{}",
        run.stdout_text()
    );
    let run = admin(home.path(), &["uninstall", "greet"]).run().await;
    assert_eq!(run.status, Some(0), "{}", run.stderr_text());
    assert!(!launcher.exists(), "the broken launcher is still there");
    assert!(
        run.stdout_text()
            .starts_with("uninstalled greet (a broken launcher): removed "),
        "{}",
        run.stdout_text()
    );

    // Not a launcher: a script of the user's, a folder.
    let mine = home.path().join("bin/mine");
    std::fs::write(&mine, "#!/bin/sh\necho mine\n").unwrap();
    std::fs::create_dir(home.path().join("bin/folder")).unwrap();
    for name in ["mine", "folder"] {
        let run = admin(home.path(), &["uninstall", name]).run().await;
        assert_eq!(run.status, Some(1), "{}", run.stderr_text());
        let stderr = run.stderr_text();
        assert!(
            stderr.starts_with(&format!(
                "terminalwire: `{name}` is not a terminalwire launcher ("
            )) && stderr.trim_end().ends_with("); not removing it"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    assert!(mine.exists() && home.path().join("bin/folder").is_dir());
    // Nothing of that name.
    let run = admin(home.path(), &["uninstall", "nothing"]).run().await;
    assert_eq!(run.status, Some(1), "{}", run.stderr_text());
    assert!(
        run.stderr_text()
            .contains("no app named nothing is installed"),
        "{}",
        run.stderr_text()
    );
}

/// A file where the launchers' folder belongs, or where a folder above the
/// home belongs, is a home the client cannot use: `install`, `apps` and
/// `uninstall` exit 65 as the client's other commands do for it, and name
/// the file in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_the_way_of_the_launchers_folder_is_an_unusable_home() {
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("tw");
    std::fs::create_dir(&home).unwrap();
    let bin = home.join("bin");
    std::fs::write(&bin, "").unwrap();
    let above = base.path().join("file");
    std::fs::write(&above, "").unwrap();
    for (home, in_the_way) in [(home.clone(), &bin), (above.join("tw"), &above)] {
        for args in [
            &["install", "ws://127.0.0.1:9/terminal", "--name", "greet"][..],
            &["apps"],
            &["uninstall", "greet"],
        ] {
            let run = admin(&home, args).env("PATH", "/usr/bin:/bin").run().await;
            let stderr = run.stderr_text();
            assert_eq!(run.status, Some(65), "{args:?}: {stderr}");
            assert!(
                stderr.contains(&format!("{} is not a folder", in_the_way.display()))
                    || (stderr.contains(&in_the_way.display().to_string())
                        && stderr.contains("something that is not a folder is there")),
                "{args:?}: {stderr}"
            );
            assert!(stderr.contains("move it out of the way"), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
    assert_eq!(std::fs::read(&bin).unwrap(), b"", "the file was changed");
}
