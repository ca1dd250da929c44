//! Edge cases of resuming and detaching: an answer lost with its connection
//! (resumed, detached), a second detach after attach, an attach that never
//! reached the server, and records with large unacknowledged answers.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use terminalwire_protocol::frame::{Ack, ClientFrame, Detach, ServerFrame};
use terminalwire_protocol::secure::StaticKey;
use terminalwire_tests::tmux::{TmuxPane, session_id_on};
use terminalwire_tests::wire::{
    next_frame, open_resumable, resume_frame, secure_connect, send_frame,
};
use terminalwire_tests::{Client, TestServer};

/// The connection carrying `resume` dies before the server's `resumed`
/// reaches the client (the very network trouble resuming exists for). The
/// client only has the token it presented, so it retries with it, as
/// `reconnect_loop` does. The server spent that token on the lost attempt
/// and answers `denied`: the session can never be resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_whose_answer_is_lost_can_be_retried() {
    let server = TestServer::hello().await;
    let url = server.url();
    let device = StaticKey::generate().unwrap();
    let (first, session_id, token) = open_resumable(
        &url,
        &device,
        &["count", "--to", "1000", "--every-ms", "50"],
    )
    .await;
    drop(first);
    // Attempt 1: the resume reaches the server, its answer never comes back
    // (read here, so the server surely handled it, and never passed on).
    let mut lost = secure_connect(&url, &device).await;
    send_frame(&mut lost, &resume_frame(&session_id, &token)).await;
    match next_frame(&mut lost).await {
        ServerFrame::Resumed(_) => {}
        other => panic!("the first resume was refused: {other:?}"),
    }
    drop(lost);
    // Attempt 2, with the only token the client has.
    let mut retry = secure_connect(&url, &device).await;
    send_frame(&mut retry, &resume_frame(&session_id, &token)).await;
    match next_frame(&mut retry).await {
        ServerFrame::Resumed(_) => {}
        other => panic!("the session is lost after one lost `resumed`: {other:?}"),
    }
}

/// The user detaches; the connection dies before `detached` arrives. The
/// client still has the token of the welcome (it never saw the new one) and
/// resumes with it (then sends `detach` again). The server rotated the
/// token when it accepted the detach, so it answers `denied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detach_whose_answer_is_lost_leaves_the_session_resumable() {
    let server = TestServer::hello().await;
    let url = server.url();
    let device = StaticKey::generate().unwrap();
    let (mut first, session_id, token) = open_resumable(
        &url,
        &device,
        &["count", "--to", "1000", "--every-ms", "50"],
    )
    .await;
    send_frame(&mut first, &ClientFrame::Detach(Detach {})).await;
    // The server surely accepted the detach; its answer is treated as lost.
    while !matches!(next_frame(&mut first).await, ServerFrame::Detached(_)) {}
    drop(first);
    let mut retry = secure_connect(&url, &device).await;
    send_frame(&mut retry, &resume_frame(&session_id, &token)).await;
    match next_frame(&mut retry).await {
        ServerFrame::Resumed(_) => {}
        other => panic!("a lost `detached` loses the session: {other:?}"),
    }
}

/// The client sends a frame after `detach` (an acknowledgement falling due,
/// an answer) before `detached` reaches it; then the connection dies. Such a
/// frame shows nothing about the new token, so the token of the welcome must
/// still resume the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_after_detach_does_not_spend_the_old_token() {
    let server = TestServer::hello().await;
    let url = server.url();
    let device = StaticKey::generate().unwrap();
    let (mut first, session_id, token) = open_resumable(
        &url,
        &device,
        &["count", "--to", "1000", "--every-ms", "50"],
    )
    .await;
    send_frame(&mut first, &ClientFrame::Detach(Detach {})).await;
    send_frame(&mut first, &ClientFrame::Ack(Ack { seq: 0 })).await;
    // `detached` is treated as lost. The server reads the acknowledgement
    // before this connection's end, and that long before the resume below
    // has made its secure handshake.
    while !matches!(next_frame(&mut first).await, ServerFrame::Detached(_)) {}
    drop(first);
    let mut retry = secure_connect(&url, &device).await;
    send_frame(&mut retry, &resume_frame(&session_id, &token)).await;
    match next_frame(&mut retry).await {
        ServerFrame::Resumed(_) => {}
        other => panic!("a frame after `detach` spent the only token the client has: {other:?}"),
    }
}

/// `detach` sent twice (the detach key pressed twice) before `detached`
/// arrives. The client keeps the token of the first answer; a second
/// accepted detach would have replaced it on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_detach_does_not_replace_the_token_of_the_first() {
    let server = TestServer::hello().await;
    let url = server.url();
    let device = StaticKey::generate().unwrap();
    let (mut first, session_id, _) = open_resumable(
        &url,
        &device,
        &["count", "--to", "1000", "--every-ms", "50"],
    )
    .await;
    send_frame(&mut first, &ClientFrame::Detach(Detach {})).await;
    send_frame(&mut first, &ClientFrame::Detach(Detach {})).await;
    let token = loop {
        if let ServerFrame::Detached(detached) = next_frame(&mut first).await {
            break detached.token.expect("an accepted detach carries a token");
        }
    };
    drop(first);
    let mut attach = secure_connect(&url, &device).await;
    send_frame(&mut attach, &resume_frame(&session_id, &token)).await;
    match next_frame(&mut attach).await {
        ServerFrame::Resumed(_) => {}
        other => panic!("the token of `detached` does not re-attach: {other:?}"),
    }
}

/// Detach, attach, detach again: the second record must survive. `attach`
/// deletes `saved.path` after any successful outcome, and the second
/// detach saved its new record at that very path (same session id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detaching_a_second_time_keeps_the_new_record() {
    let server = TestServer::hello().await;
    let url = server.url();
    let first = TmuxPane::start(&[&url, "count", "--to", "2000", "--every-ms", "50"], 80, 40);
    first.wait_for("tick 3").await;
    first.send_keys(&["C-\\"]).await;
    let exit = first.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    let id = session_id_on(&exit.screen);
    let second = TmuxPane::start_with_home(&["attach", &id], 80, 40, Some(&first.home()));
    second.wait_for("tick").await;
    second.send_keys(&["C-\\"]).await;
    let exit = second.wait_exit().await;
    assert_eq!(exit.status, 0, "screen:\n{}", exit.screen);
    assert!(
        exit.screen.contains("Re-attach with"),
        "screen:\n{}",
        exit.screen
    );
    let listing = Client::new(["sessions"])
        .env("TERMINALWIRE_HOME", &first.home().to_string_lossy())
        .run()
        .await;
    assert!(
        listing.stdout_text().contains(&id),
        "the record of the second detach is gone; sessions:\n{}\nstderr: {}",
        listing.stdout_text(),
        listing.stderr_text()
    );
}

/// `terminalwire attach` over a connection that dies before the server
/// answers (here: the server never reads the resume) deletes the record,
/// although the token may never have been presented: the user can never
/// re-attach, and the command runs on unreachable for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_that_loses_its_connection_before_any_answer_keeps_the_record() {
    use terminalwire_protocol::frame::{Exit, Software, Welcome};
    use terminalwire_tests::{ScriptedServer, next_client_frame, send_server_frame};
    let server = ScriptedServer::start(true, move |mut socket| async move {
        match next_client_frame(&mut socket).await {
            Some(ClientFrame::Hello(_)) => {
                let welcome = ServerFrame::Welcome(Welcome {
                    version: 1,
                    server: Software {
                        name: "s".into(),
                        version: "0".into(),
                    },
                    session_id: "x-1".into(),
                    capabilities: Vec::new(),
                    window: terminalwire_protocol::DEFAULT_WINDOW,
                    max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
                    resume: None,
                });
                send_server_frame(&mut socket, &welcome).await;
                send_server_frame(&mut socket, &ServerFrame::Exit(Exit { status: 0 })).await;
                while next_client_frame(&mut socket).await.is_some() {}
            }
            // A resume: the network dies here, nothing is answered.
            _ => drop(socket),
        }
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let home_text = home.path().to_string_lossy().into_owned();
    // A first session creates the authority's folder, device key and pin.
    let run = Client::new([server.url().as_str(), "go"])
        .env("TERMINALWIRE_HOME", &home_text)
        .run()
        .await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    let authority = std::fs::read_dir(home.path().join("authorities"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let record = terminalwire_client::detached::SessionRecord {
        session_id: "x-1".into(),
        url: server.url(),
        authority: "whatever".into(),
        command: vec!["go".into()],
        token: vec![9; 32].into(),
        received: 0,
        sent: 0,
        unacked: Vec::new(),
        window: terminalwire_protocol::DEFAULT_WINDOW,
        max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
        grace_secs: 120,
        detach_secs: 3600,
        detached_at: terminalwire_client::detached::now(),
    };
    let dir = authority.join("sessions");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("x-1.json");
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    let run = Client::new(["attach", "x-1"])
        .env("TERMINALWIRE_HOME", &home_text)
        .run()
        .await;
    // The attempt failed on the network, not early (a bad record would
    // fail too, and keep the record as well).
    assert_eq!(run.status, Some(75), "stderr: {}", run.stderr_text());
    assert!(
        run.stderr_text().contains("the session is still saved"),
        "stderr: {}",
        run.stderr_text()
    );
    assert!(
        path.exists(),
        "the record was deleted after a connection failure (exit {:?}, stderr: {})",
        run.status,
        run.stderr_text()
    );
    // The server down: the record is kept, and the user told so.
    drop(server);
    let run = Client::new(["attach", "x-1"])
        .env("TERMINALWIRE_HOME", &home_text)
        .run()
        .await;
    assert_eq!(run.status, Some(69), "stderr: {}", run.stderr_text());
    assert!(
        run.stderr_text().contains(
            "the session is still saved: try `terminalwire attach x-1` again once the server is back"
        ),
        "{}",
        run.stderr_text()
    );
    assert!(path.exists());
}

/// A detached record holds the unacknowledged frames; after `detached` the
/// server acknowledges nothing more, so the answers of the requests that
/// finished during the 1 s settle (up to 64 of up to 1 MiB each) land in
/// it. `save` pretty-prints bytes as JSON arrays of numbers (about 10 bytes
/// of file per byte) but `load` refuses files over 64 MiB: a few large
/// answers make a record that saves but can never be loaded.
#[test]
fn a_record_with_large_unacked_answers_stays_loadable() {
    const MAX_RECORD_LEN: usize = 64 * 1024 * 1024;
    let record = terminalwire_client::detached::SessionRecord {
        session_id: "x-1".into(),
        url: "ws://127.0.0.1:9/terminal".into(),
        authority: "127.0.0.1:9".into(),
        command: vec!["go".into()],
        token: vec![9; 32].into(),
        received: 0,
        sent: 6,
        unacked: (0..6).map(|_| vec![200u8; 1 << 20].into()).collect(),
        window: terminalwire_protocol::DEFAULT_WINDOW,
        max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
        grace_secs: 120,
        detach_secs: 3600,
        detached_at: 0,
    };
    let json = serde_json::to_vec_pretty(&record).unwrap();
    assert!(
        json.len() <= MAX_RECORD_LEN,
        "6 MiB of unacked frames make a {} MiB record, over the {} MiB load limit",
        json.len() >> 20,
        MAX_RECORD_LEN >> 20
    );
}
