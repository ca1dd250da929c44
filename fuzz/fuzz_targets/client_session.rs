//! The client's whole session engine (`terminalwire_client::session::run`)
//! against a server that sends arbitrary frames after a valid welcome.
//!
//! Input: one flags byte (bit 0: the welcome offers `cancel`), then frames,
//! each a big-endian `u16` length and that many bytes (the last one takes
//! what is left). The fake server reads the hello, sends the welcome and the
//! frames, waits (up to 2 s) for the answers to the requests among them
//! (before an `exit`, and at the end), then goes away.
//!
//! Checks, on a fresh fixture per input (a user home with `~/granted/**`
//! granted read-write, a secret file beside it, a symlink from the grant to
//! a folder outside it, and a file outside the home):
//! - the client never panics;
//! - it ends within 10 s of the server going away (no hang);
//! - no answer holds the content of the secret or of the file outside, or
//!   10 bytes in a row of it (a random text per process, so that only a
//!   read can have sent it);
//! - nothing outside the grant and the authority's own folder changed: the
//!   secret, the policy file, the home's top level (but for the granted
//!   folder itself) and the folder outside.

#![no_main]

mod session_input;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use terminalwire_client::audit::AuditLog;
use terminalwire_client::resources::Resources;
use terminalwire_client::session::{self, LocalIo, Output, SessionConfig};
use terminalwire_policy::grant::{Access, Mode, PathGrant, PathPattern};
use terminalwire_policy::{Entitlements, Grant, Home, Policy};
use terminalwire_protocol::frame::{
    ClientFrame, ColorLevel, Hello, Program, ServerFrame, Software, StreamFacts, StreamKind,
    TerminalFacts, Welcome,
};
use terminalwire_protocol::{RequestId, codec};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const SERVER: &str = "ws://fuzz.example/terminal";
/// The content of the files the server may not read: random per process,
/// so that only a read can have put it in what the client sends.
fn secret() -> &'static [u8] {
    static SECRET: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        use std::hash::{BuildHasher, RandomState};
        let random = RandomState::new().hash_one(std::process::id());
        format!("secret {random:016x} {:016x}\n", random.rotate_left(17)).into_bytes()
    })
}
const POLICY: &str = "# the user's policy\n";

fuzz_target!(|data: &[u8]| {
    let Some((flags, frames)) = session_input::parse(data) else {
        return;
    };
    let fixture = Fixture::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(session(&fixture, flags & 1 == 1, frames));
    // Waits for the client's blocking work (file operations) to finish.
    drop(runtime);
    fixture.check();
});

async fn session(fixture: &Fixture, cancel: bool, frames: Vec<Vec<u8>>) {
    let (client_io, server_io) = tokio::io::duplex(256 * 1024);
    let client_ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let server_ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
    let server = tokio::spawn(serve(server_ws, cancel, frames));
    let config = SessionConfig {
        handshake_timeout: Duration::from_secs(5),
        resources: fixture.resources(),
        ..SessionConfig::default()
    };
    let io = LocalIo {
        stdout: Output::Async(Box::new(tokio::io::sink())),
        stderr: Output::Async(Box::new(tokio::io::sink())),
        stdin: Box::new(tokio::io::empty()),
    };
    let client = session::run(client_ws, hello(), io, &config);
    tokio::pin!(client);
    // The client may end first (an exit, a violation); else it must end
    // soon after the server goes away.
    tokio::select! {
        _ = &mut client => return,
        _ = server => {}
    }
    if tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .is_err()
    {
        panic!("the client did not end within 10 s of the server going away");
    }
}

/// The fake server: hello, welcome, the frames, the answers; then it goes.
async fn serve(
    mut ws: WebSocketStream<tokio::io::DuplexStream>,
    cancel: bool,
    frames: Vec<Vec<u8>>,
) {
    let Some(Ok(Message::Binary(_hello))) = ws.next().await else {
        return;
    };
    let mut capabilities: Vec<String> = ["stdout", "stderr", "exit", "stdin.line"]
        .map(String::from)
        .into();
    if cancel {
        capabilities.push("cancel".into());
    }
    let welcome = ServerFrame::Welcome(Welcome {
        version: 1,
        server: Software {
            name: "fuzz".into(),
            version: "0".into(),
        },
        session_id: "fuzz".into(),
        capabilities,
        window: terminalwire_protocol::DEFAULT_WINDOW,
        max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
        resume: None,
    });
    if ws
        .send(Message::Binary(codec::encode(&welcome).into()))
        .await
        .is_err()
    {
        return;
    }
    let mut unanswered = HashSet::new();
    for frame in frames {
        match codec::decode::<ServerFrame>(&frame) {
            Ok(ServerFrame::Request(request)) => {
                unanswered.insert(request.id);
            }
            // The requests before an exit are answered first (the client
            // drops what is still running when it exits).
            Ok(ServerFrame::Exit(_)) => {
                if !answers(&mut ws, &mut unanswered).await {
                    return;
                }
            }
            _ => {}
        }
        if ws.send(Message::Binary(frame.into())).await.is_err() {
            return;
        }
    }
    answers(&mut ws, &mut unanswered).await;
}

/// Reads until every request in `unanswered` is answered, for at most 2 s;
/// false when the client is gone.
async fn answers(
    ws: &mut WebSocketStream<tokio::io::DuplexStream>,
    unanswered: &mut HashSet<RequestId>,
) -> bool {
    let read = async {
        while !unanswered.is_empty() {
            match ws.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    assert!(
                        !holds_part_of_the_secret(&bytes),
                        "the client sent the secret beside the grant to the server"
                    );
                    if let Ok(ClientFrame::Response(response)) = codec::decode(&bytes) {
                        unanswered.remove(&response.id);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return false,
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .unwrap_or(true)
}

/// Whether `bytes` hold 10 bytes in a row of the secret's random part: a
/// read of part of it (an offset, a length) shows as well as a whole one.
fn holds_part_of_the_secret(bytes: &[u8]) -> bool {
    const PART: usize = 10;
    let random = &secret()["secret ".len()..secret().len() - 1];
    random
        .windows(PART)
        .any(|part| bytes.windows(PART).any(|window| window == part))
}

fn hello() -> Hello {
    let stream = StreamFacts {
        kind: StreamKind::Pipe,
        size: None,
        color: ColorLevel::None,
    };
    Hello {
        versions: terminalwire_protocol::SUPPORTED_VERSIONS,
        client: Software {
            name: "terminalwire".into(),
            version: "0".into(),
        },
        os: "linux".into(),
        os_version: None,
        arch: "x86_64".into(),
        authority: "fuzz.example".into(),
        storage: None,
        origin: None,
        program: Program {
            name: "fuzz".into(),
            args: Vec::new(),
        },
        terminal: TerminalFacts {
            stdin: stream.clone(),
            stdout: stream.clone(),
            stderr: stream,
            term: None,
        },
        capabilities: Vec::new(),
        window: terminalwire_protocol::DEFAULT_WINDOW,
        max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
    }
}

/// A user home made afresh for one input, at the same place each time (so
/// that paths the fuzzer learns stay meaningful): `~/granted/**` granted.
struct Fixture {
    base: PathBuf,
    user_home: PathBuf,
    home: Home,
    policy: Policy,
}

impl Fixture {
    fn new() -> Fixture {
        let base = std::env::temp_dir().join(format!("tw-fuzz-client-{}", std::process::id()));
        if base.exists() {
            make_removable(&base);
            std::fs::remove_dir_all(&base).unwrap();
        }
        let user_home = base.join("home");
        let outside = base.join("outside");
        std::fs::create_dir_all(user_home.join("granted/sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(user_home.join("secret.txt"), secret()).unwrap();
        std::fs::write(user_home.join("granted/a.txt"), b"granted\n").unwrap();
        std::fs::write(outside.join("file.txt"), secret()).unwrap();
        std::os::unix::fs::symlink(&outside, user_home.join("granted/escape")).unwrap();
        std::os::unix::fs::symlink(
            user_home.join("secret.txt"),
            user_home.join("granted/secret-link"),
        )
        .unwrap();
        let home = Home::at(user_home.join(".terminalwire"));
        let authority = home.authority_dir(&"fuzz.example".parse().unwrap());
        std::fs::create_dir_all(authority.join("storage")).unwrap();
        std::fs::write(authority.join("policy.toml"), POLICY).unwrap();
        let mut policy = Policy::default();
        policy.grant(Grant::Path(PathGrant {
            pattern: PathPattern::parse("~/granted/**").unwrap(),
            access: Access::ReadWrite,
            mode: Mode::new(0o755),
        }));
        Fixture {
            base,
            user_home,
            home,
            policy,
        }
    }

    fn resources(&self) -> Resources {
        let server = url::Url::parse(SERVER).unwrap();
        let entitlements =
            Entitlements::new(&server, &self.home, &self.policy, &self.user_home, &[]).unwrap();
        let opener: terminalwire_client::resources::Opener = Arc::new(|_| Ok(()));
        let authority = self.home.authority_dir(&"fuzz.example".parse().unwrap());
        Resources::new(entitlements, self.home.root().to_path_buf(), opener)
            .with_audit(AuditLog::new(authority.join("audit.log")))
    }

    /// Nothing outside the grant and the authority's folder changed.
    fn check(&self) {
        let read = |path: &Path| std::fs::read(path).ok();
        assert_eq!(
            read(&self.user_home.join("secret.txt")).as_deref(),
            Some(secret()),
            "the secret beside the grant changed"
        );
        assert_eq!(
            read(&self.base.join("outside/file.txt")).as_deref(),
            Some(secret()),
            "the file outside the home changed"
        );
        let authority = self.home.authority_dir(&"fuzz.example".parse().unwrap());
        assert_eq!(
            read(&authority.join("policy.toml")).as_deref(),
            Some(POLICY.as_bytes()),
            "the policy file changed"
        );
        assert_eq!(names(&self.base.join("outside")), ["file.txt"]);
        // `~/granted/**` grants the folder itself too: it may be gone, or
        // be a file now.
        let top = names(&self.user_home);
        assert!(
            top.iter()
                .all(|name| [".terminalwire", "granted", "secret.txt"].contains(&name.as_str()))
                && top.len() >= 2,
            "the home's top level changed: {top:?}"
        );
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A granted `chmod` may have left a folder that cannot be entered.
fn make_removable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                make_removable(&entry.path());
            }
        }
    }
}
