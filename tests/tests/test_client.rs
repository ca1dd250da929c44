//! The SDK's in-memory test client (`terminalwire_server::testing`) against
//! the real one: the same command, run by both, sees the same answers
//! (denials and their grant commands, lines refused, the end of input, the
//! exit status of a failure), so that an app's tests with it hold for its
//! users.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use terminalwire_server::testing::TestClient;
use terminalwire_server::{Context, Exit, Terminal};
use terminalwire_tests::{Client, TestServer};

/// Tries what a user who granted nothing refuses, and reads stdin to its
/// end; prints each answer, with the storage folder named `<storage>`.
async fn command(ctx: Context) -> anyhow::Result<()> {
    let storage = ctx.storage_path("").unwrap();
    let out = ctx.stdout();
    let said = |result: Result<(), terminalwire_server::ResourceError>| match result {
        Ok(()) => "ok".to_owned(),
        Err(error) => {
            format!("{error} | {:?}", error.grant_command()).replace(&storage, "<storage>")
        }
    };
    let files = ctx.file();
    let dirs = ctx.dir();
    let outside = "/nonexistent-terminalwire-test/secret.txt";
    out.println(said(files.read(outside).await.map(drop)))
        .await?;
    out.println(said(files.write(outside, "x").await)).await?;
    out.println(said(files.read("notes.txt").await.map(drop)))
        .await?;
    out.println(said(files.exists("~/notes.txt").await.map(drop)))
        .await?;
    out.println(said(
        dirs.create_all("/nonexistent-terminalwire-test/a/b").await,
    ))
    .await?;
    out.println(said(
        dirs.list("/nonexistent-terminalwire-test").await.map(drop),
    ))
    .await?;
    // Errors of the disk inside the storage folder.
    let inside = |name: &str| format!("{}/{name}", storage.trim_end_matches('/'));
    out.println(said(files.read(&inside("missing.txt")).await.map(drop)))
        .await?;
    out.println(said(dirs.list(&inside("missing")).await.map(drop)))
        .await?;
    out.println(said(dirs.create(&inside("sub")).await)).await?;
    out.println(said(dirs.create(&inside("sub")).await)).await?;
    out.println(said(files.write(&inside("sub/f"), "x").await))
        .await?;
    out.println(said(dirs.delete(&inside("sub")).await)).await?;
    out.println(said(files.read(&inside("sub")).await.map(drop)))
        .await?;
    out.println(said(dirs.list(&inside("sub/f")).await.map(drop)))
        .await?;
    // The storage folder itself is the client's.
    out.println(said(dirs.create_all(&storage).await)).await?;
    out.println(said(dirs.delete_all(&storage).await)).await?;
    out.println(said(files.write(&storage, "x").await)).await?;
    out.println(said(ctx.env().get("AWS_SECRET").await.map(drop)))
        .await?;
    let own = ctx.web_url("/tasks").unwrap();
    out.println(said(ctx.browser().open(&own).await)).await?;
    out.println(said(ctx.browser().open("https://example.com/").await))
        .await?;
    out.println(said(ctx.browser().open("javascript:alert(1)").await))
        .await?;
    loop {
        match ctx.read_line(Some("> ")).await {
            Ok(Some(line)) => out.println(format!("line {line:?}")).await?,
            Ok(None) => break,
            Err(error) => out.println(error.to_string()).await?,
        }
    }
    out.println(format!("rest {:?}", ctx.stdin().read_chunk(10).await?))
        .await?;
    Err(Exit(3).with_message("done").into())
}

#[tokio::test]
async fn the_test_client_answers_as_the_real_client_does() {
    let terminal = Terminal::new(command);
    let server = TestServer::with_terminal(terminal.clone()).await;
    let mut stdin = b"first\r\n".to_vec();
    stdin.extend(vec![b'x'; 64 * 1024 + 1]);
    stdin.extend_from_slice(b"\n\xff\nlast");

    let real = Client::new([server.url()])
        .stdin(stdin.clone())
        .env("TERMINALWIRE_BROWSER", "true")
        .run()
        .await;
    let storage = tempfile::tempdir().unwrap();
    let test = TestClient::new()
        .origin(format!("http://{}", server.addr()))
        .storage(storage.path())
        .stdin(stdin)
        .run(&terminal)
        .await;

    assert_eq!(real.status, Some(3), "{real:?}");
    assert_eq!(i32::from(test.status), 3);
    let real_out = real.stdout_text();
    // Sanity: the command got as far as the end of input.
    assert!(real_out.contains("rest []"), "{real_out}");
    assert_eq!(test.stdout_text(), real_out);
    assert_eq!(test.stderr_text(), real.stderr_text());
}

/// What the command may know of the request that started its session.
#[derive(Debug, Clone)]
struct Upgrade {
    peer: std::net::SocketAddr,
    user_agent: String,
}

#[tokio::test]
async fn values_of_the_upgrade_request_reach_the_command_through_a_real_route() {
    use axum::extract::{ConnectInfo, WebSocketUpgrade};
    use axum::http::{Extensions, HeaderMap};

    let terminal = Terminal::new(|ctx: Context| async move {
        let upgrade = ctx.extension::<Upgrade>().unwrap();
        ctx.stdout()
            .println(format!("{} {}", upgrade.peer.ip(), upgrade.user_agent))
            .await?;
        // Not given by the route: none.
        ctx.stdout()
            .println(format!("{:?}", ctx.extension::<String>()))
            .await
    });
    let server = TestServer::start(move |listener, shutdown| async move {
        let handler = terminal.clone();
        let route = axum::routing::get(
            move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
                  headers: HeaderMap,
                  upgrade: WebSocketUpgrade| async move {
                let user_agent = headers
                    .get("user-agent")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                let mut extensions = Extensions::new();
                extensions.insert(Upgrade { peer, user_agent });
                handler.upgrade_with(upgrade, &headers, Some(peer.ip()), extensions)
            },
        );
        let app = axum::Router::new().route("/terminal", route);
        terminal.serve_app(listener, app, shutdown).await
    })
    .await;
    let out = Client::new([server.url()]).run().await;
    assert_eq!(out.status, Some(0), "{out:?}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        out.stdout_text(),
        format!("127.0.0.1 terminalwire/{version}\nNone\n")
    );
}
