//! The real `terminalwire` client against a hostile server.
//!
//! A scripted server sends raw requests that try to escape the authority's
//! entitlements (`..`, absolute paths, `~otheruser`, symlinks, control files,
//! modes, NUL bytes, very long paths, glob characters, dangerous URLs,
//! ungranted variables); each must be refused, the disk must stay as it was
//! and the client must keep serving. Races swap a granted folder for a
//! symlink, and a granted folder for a file, while requests run. Then every
//! resource is used through the SDK, allowed and denied, and a denial's
//! grant command is run for real.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::{BTreeMap, VecDeque};
use std::hash::{DefaultHasher, Hasher};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_bytes::ByteBuf;
use terminalwire_protocol::frame::{
    Exit as ExitFrame, Hello, Operation, Reply, Request, Response, Software, Welcome,
};
use terminalwire_protocol::{ClientFrame, ErrorCode, RequestId, ServerFrame};
use terminalwire_server::{Context, ResourceError, Terminal};
use terminalwire_tests::pattern::fnv;
use terminalwire_tests::{
    Client, ScriptedServer, ScriptedSocket, TestServer, client_binary, next_client_frame,
    send_server_frame,
};
use tokio::sync::oneshot;

const SECRET_TOKEN: &str = "s3cr3t-token-value";
const GRANTED_VALUE: &str = "granted value";
const OUTSIDE_SECRET: &str = "OUTSIDE SECRET: must never leave this folder";

// ---------------------------------------------------------------------------
// A sandbox: fake $HOME, terminalwire home, an outside folder and a browser.

struct Sandbox {
    _dir: tempfile::TempDir,
    base: PathBuf,
    home: PathBuf,
    tw_home: PathBuf,
    outside: PathBuf,
    browser_log: PathBuf,
    browser_script: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let home = base.join("home");
        let tw_home = base.join("tw");
        let outside = base.join("outside");
        for folder in [&home, &tw_home, &outside] {
            std::fs::create_dir(folder).unwrap();
        }
        write(&outside.join("secret.txt"), OUTSIDE_SECRET, 0o644);
        write(&outside.join("f.txt"), OUTSIDE_SECRET, 0o644);
        write(&outside.join("only-outside.txt"), OUTSIDE_SECRET, 0o644);
        let browser_log = base.join("browser.log");
        let browser_script = base.join("browser.sh");
        write(
            &browser_script,
            &format!(
                "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\n",
                browser_log.display()
            ),
            0o755,
        );
        Sandbox {
            _dir: dir,
            base,
            home,
            tw_home,
            outside,
            browser_log,
            browser_script,
        }
    }

    /// The client with this sandbox's environment.
    fn client<I, S>(&self, args: I) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client::new(args)
            .env("HOME", self.home.to_str().unwrap())
            .env("TERMINALWIRE_HOME", self.tw_home.to_str().unwrap())
            .env(
                "TERMINALWIRE_BROWSER",
                self.browser_script.to_str().unwrap(),
            )
            .env("SECRET_TOKEN", SECRET_TOKEN)
            .env("GRANTED_VAR", GRANTED_VALUE)
            .env("PATH", &self.search_path())
    }

    /// `PATH` with two folders of the sandbox first: one that does not
    /// exist, then one that holds a `terminalwire-exec` of its own.
    fn search_path(&self) -> String {
        let system = std::env::var("PATH").unwrap_or_default();
        format!(
            "{}:{}:{system}",
            self.path_missing().display(),
            self.path_bin().display()
        )
    }

    fn path_missing(&self) -> PathBuf {
        self.base.join("path-missing")
    }

    fn path_bin(&self) -> PathBuf {
        self.base.join("path-bin")
    }

    /// Runs `terminalwire ARGS` (an administration command); it must succeed.
    async fn cli(&self, args: &[&str]) -> String {
        let run = self.client(args.iter().copied()).run().await;
        assert_eq!(run.status, Some(0), "{args:?}: {}", run.stderr_text());
        run.stdout_text()
    }

    fn authority_dir(&self, authority: &str) -> PathBuf {
        self.tw_home.join("authorities").join(authority)
    }

    fn storage(&self, authority: &str) -> PathBuf {
        self.authority_dir(authority).join("storage")
    }

    fn launched(&self) -> String {
        std::fs::read_to_string(&self.browser_log).unwrap_or_default()
    }
}

fn write(path: &Path, content: &str, mode: u32) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn authority_of(url: &str) -> String {
    url.trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------------------
// Snapshots of folders: every entry's kind, mode, content and link target.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { mode: u32, len: u64, hash: u64 },
    Dir { mode: u32 },
    Symlink { target: PathBuf },
    Other { mode: u32 },
}

fn snapshot(roots: &[&Path]) -> BTreeMap<PathBuf, Node> {
    let mut nodes = BTreeMap::new();
    let mut todo: Vec<PathBuf> = roots.iter().map(|root| root.to_path_buf()).collect();
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let node = if meta.file_type().is_symlink() {
            Node::Symlink {
                target: std::fs::read_link(&path).unwrap(),
            }
        } else if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                todo.push(entry.unwrap().path());
            }
            Node::Dir { mode }
        } else if meta.is_file() {
            let mut hasher = DefaultHasher::new();
            hasher.write(&std::fs::read(&path).unwrap());
            Node::File {
                mode,
                len: meta.len(),
                hash: hasher.finish(),
            }
        } else {
            Node::Other { mode }
        };
        nodes.insert(path, node);
    }
    nodes
}

fn assert_same_disk(before: &BTreeMap<PathBuf, Node>, after: &BTreeMap<PathBuf, Node>) {
    // The client's own audit log is the one file that must change: it
    // records every refusal (checked separately).
    let audited = |path: &PathBuf| {
        path.file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("audit.log"))
    };
    let before: BTreeMap<_, _> = before.iter().filter(|(path, _)| !audited(path)).collect();
    let after: BTreeMap<_, _> = after.iter().filter(|(path, _)| !audited(path)).collect();
    let mut differences = Vec::new();
    for (path, node) in &before {
        match after.get(path) {
            None => differences.push(format!("removed {}", path.display())),
            Some(now) if now != node => {
                differences.push(format!("changed {}: {node:?} -> {now:?}", path.display()));
            }
            Some(_) => {}
        }
    }
    for path in after.keys().filter(|path| !before.contains_key(**path)) {
        differences.push(format!("created {}", path.display()));
    }
    assert!(
        differences.is_empty(),
        "the disk changed:\n{}",
        differences.join("\n")
    );
}

// ---------------------------------------------------------------------------
// The hostile server: each session runs the next planned list of requests,
// one at a time, and reports the answers.

#[derive(Debug)]
struct Session {
    hello: Option<Hello>,
    responses: Vec<Response>,
    /// What went wrong with the session, if anything.
    failure: Option<String>,
}

type Plan = (Vec<Operation>, oneshot::Sender<Session>);

struct HostileServer {
    server: ScriptedServer,
    plans: Arc<Mutex<VecDeque<Plan>>>,
}

impl HostileServer {
    async fn start() -> HostileServer {
        let plans = Arc::new(Mutex::new(VecDeque::<Plan>::new()));
        let queue = plans.clone();
        let server = ScriptedServer::start(true, move |socket| {
            let plan = queue.lock().unwrap().pop_front();
            async move {
                if let Some((ops, done)) = plan {
                    let _ = done.send(run_plan(socket, ops).await);
                }
            }
        })
        .await;
        HostileServer { server, plans }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn authority(&self) -> String {
        authority_of(&self.url())
    }

    /// The requests of the next session; its record arrives on the receiver.
    fn plan(&self, ops: Vec<Operation>) -> oneshot::Receiver<Session> {
        let (done, record) = oneshot::channel();
        self.plans.lock().unwrap().push_back((ops, done));
        record
    }
}

async fn run_plan(mut socket: ScriptedSocket, ops: Vec<Operation>) -> Session {
    let mut session = Session {
        hello: None,
        responses: Vec::with_capacity(ops.len()),
        failure: None,
    };
    match next_client_frame(&mut socket).await {
        Some(ClientFrame::Hello(hello)) => session.hello = Some(hello),
        other => {
            session.failure = Some(format!("expected a hello, got {other:?}"));
            return session;
        }
    }
    let welcome = Welcome {
        version: 1,
        server: Software {
            name: "hostile".into(),
            version: "0".into(),
        },
        session_id: "hostile".into(),
        capabilities: Vec::new(),
        window: terminalwire_protocol::DEFAULT_WINDOW,
        max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
        resume: None,
    };
    send_server_frame(&mut socket, &ServerFrame::Welcome(welcome)).await;
    for (index, op) in ops.into_iter().enumerate() {
        let id = RequestId(index as u64 + 1);
        send_server_frame(&mut socket, &ServerFrame::Request(Request { id, op })).await;
        loop {
            match next_client_frame(&mut socket).await {
                Some(ClientFrame::Response(response)) if response.id == id => {
                    session.responses.push(response);
                    break;
                }
                Some(ClientFrame::Response(response)) => {
                    session.failure = Some(format!("expected response {id:?}, got {response:?}"));
                    return session;
                }
                Some(ClientFrame::Error(error)) => {
                    session.failure = Some(format!("the client ended the session: {error:?}"));
                    return session;
                }
                Some(_) => {}
                None => {
                    session.failure = Some(format!("the client went away before answering {id:?}"));
                    return session;
                }
            }
        }
    }
    send_server_frame(&mut socket, &ServerFrame::Exit(ExitFrame { status: 0 })).await;
    while next_client_frame(&mut socket).await.is_some() {}
    session
}

// Operations.

fn read(path: impl Into<String>) -> Operation {
    Operation::FileRead {
        path: path.into(),
        offset: 0,
        len: 64 * 1024,
    }
}

fn write_op(path: impl Into<String>, mode: Option<u32>) -> Operation {
    Operation::FileWrite {
        path: path.into(),
        bytes: ByteBuf::from(b"pwned".to_vec()),
        mode,
    }
}

fn append(path: impl Into<String>, bytes: &[u8]) -> Operation {
    Operation::FileAppend {
        path: path.into(),
        bytes: ByteBuf::from(bytes.to_vec()),
    }
}

fn delete(path: impl Into<String>) -> Operation {
    Operation::FileDelete { path: path.into() }
}

fn exists(path: impl Into<String>) -> Operation {
    Operation::FileExists { path: path.into() }
}

fn dir_exists(path: impl Into<String>) -> Operation {
    Operation::DirExists { path: path.into() }
}

fn metadata(path: impl Into<String>) -> Operation {
    Operation::Metadata { path: path.into() }
}

fn chmod(path: impl Into<String>, mode: u32) -> Operation {
    Operation::Chmod {
        path: path.into(),
        mode,
    }
}

fn list(path: impl Into<String>) -> Operation {
    Operation::DirList { path: path.into() }
}

fn mkdir(path: impl Into<String>, parents: bool, mode: Option<u32>) -> Operation {
    Operation::DirCreate {
        path: path.into(),
        parents,
        mode,
    }
}

fn rmdir(path: impl Into<String>, recursive: bool) -> Operation {
    Operation::DirDelete {
        path: path.into(),
        recursive,
    }
}

fn env(name: impl Into<String>) -> Operation {
    Operation::EnvGet { name: name.into() }
}

fn browse(url: impl Into<String>) -> Operation {
    Operation::BrowserOpen { url: url.into() }
}

fn s(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------
// The table.

/// What a hostile request must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `denied`, with the command that would grant it.
    Grantable,
    /// `denied`, without a command (never grantable, or not suggested).
    Never,
    /// Malformed input: `invalid`, or `denied` without a command.
    Malformed,
    /// A literal name inside a grant that does not exist: `not_found` (the
    /// glob characters are not expanded to an existing file).
    Literal,
    /// Granted, but not a regular file (a FIFO): `invalid`, without
    /// blocking the client.
    NotRegular,
    /// `denied` through a symlink that leads elsewhere: the denial names the
    /// path as sent, with no reason or command that would tell where it led.
    Hidden,
}

struct Row {
    name: String,
    op: Operation,
    expect: Expect,
}

/// The layout the table runs against; returns the rows.
async fn hostile_fixture(sandbox: &Sandbox, authority: &str) -> Vec<Row> {
    let home = &sandbox.home;
    let tw = &sandbox.tw_home;
    let outside = &sandbox.outside;
    let storage = sandbox.storage(authority);
    let own_dir = sandbox.authority_dir(authority);
    let other = sandbox.authority_dir("other.example");
    let policy = own_dir.join("policy.toml");

    write(&home.join("secret.txt"), "home secret", 0o600);
    write(&home.join(".bashrc"), "alias ls=rm", 0o644);
    write(&home.join("granted/file.txt"), "granted content", 0o644);
    write(&home.join("granted/sub/inner.txt"), "inner", 0o644);
    write(&home.join("mixed/a.txt"), "a", 0o644);
    write(&home.join("mixed/ro/keep.txt"), "keep", 0o644);
    write(&home.join("private/data.txt"), "private", 0o600);
    symlink(outside, home.join("granted/link-out")).unwrap();
    symlink(outside.join("secret.txt"), home.join("granted/link-secret")).unwrap();
    symlink(&policy, home.join("granted/link-policy")).unwrap();
    symlink("/dev/zero", home.join("granted/link-dev")).unwrap();
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        home.join("granted/fifo"),
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .unwrap();
    write(
        &tw.join("bin/launcher"),
        "#!/bin/sh\nexec terminalwire\n",
        0o755,
    );
    write(&other.join("policy.toml"), "", 0o600);
    write(
        &other.join("storage/token"),
        "other authority's token",
        0o600,
    );
    write(&storage.join("note.txt"), "note", 0o600);
    symlink(outside, storage.join("link-out")).unwrap();
    symlink(outside.join("secret.txt"), storage.join("link-secret")).unwrap();
    symlink("../policy.toml", storage.join("link-policy")).unwrap();
    symlink(other.join("storage"), storage.join("link-other")).unwrap();

    // Legit grants, so that many rows are "almost allowed".
    for grant in [
        &["path", "~/granted/**", "--read-write", "--mode", "0644"][..],
        &["path", "~/mixed", "--read-write"],
        &["path", "~/mixed/*", "--read-write"],
        &["path", "~/mixed/ro/**", "--read"],
        &["env", "GRANTED_VAR"],
    ] {
        let mut args = vec!["entitlement", "grant", authority];
        args.extend_from_slice(grant);
        sandbox.cli(&args).await;
    }
    assert!(policy.is_file());

    let path_exec = sandbox.path_bin().join("terminalwire-exec");
    write(&path_exec, "#!/bin/sh\n", 0o755);
    let binary = std::fs::canonicalize(client_binary()).unwrap();
    let binary_mode = std::fs::metadata(&binary).unwrap().permissions().mode() & 0o777;
    let binary_dir = binary.parent().unwrap().to_path_buf();
    let port = authority.rsplit(':').next().unwrap();
    let other_port = if port == "1" { "2" } else { "1" };

    use Expect::{
        Grantable as G, Hidden as H, Literal as L, Malformed as M, Never as N, NotRegular as F,
    };
    let rows: Vec<(&str, Operation, Expect)> = vec![
        // `..` escapes.
        (
            "read ~/granted/../secret",
            read("~/granted/../secret.txt"),
            G,
        ),
        (
            "write ~/granted/../secret",
            write_op("~/granted/../secret.txt", None),
            G,
        ),
        (
            "relative ../ to the outside",
            read("granted/../../outside/secret.txt"),
            G,
        ),
        (
            "append through sub/../../..",
            append("~/granted/sub/../../../outside/secret.txt", b"x"),
            G,
        ),
        (
            "climb above /",
            read(format!("~/{}etc/passwd", "../".repeat(40))),
            M,
        ),
        (
            "delete ~/granted/../.bashrc",
            delete("~/granted/../.bashrc"),
            G,
        ),
        ("read ~/../root/.bashrc", read("~/../root/.bashrc"), G),
        // Absolute paths.
        ("read /etc/passwd", read("/etc/passwd"), G),
        ("exists /etc/passwd", exists("/etc/passwd"), G),
        // Outside every grant: refused as named, without walking the path
        // (so the denial cannot tell where its symlinks lead), and with no
        // grant to suggest through the kernel's magic links.
        ("read /proc/self/environ", read("/proc/self/environ"), H),
        (
            "read /proc/self/root/etc/passwd",
            read("/proc/self/root/etc/passwd"),
            H,
        ),
        ("read /proc/self/cwd/x", read("/proc/self/cwd/x"), H),
        ("read /dev/stdin", read("/dev/stdin"), H),
        ("metadata /etc/shadow", metadata("/etc/shadow"), G),
        ("list /etc", list("/etc"), G),
        (
            "read outside secret",
            read(s(&outside.join("secret.txt"))),
            G,
        ),
        (
            "write outside secret",
            write_op(s(&outside.join("secret.txt")), None),
            G,
        ),
        (
            "write new outside file",
            write_op(s(&outside.join("new.txt")), None),
            G,
        ),
        (
            "delete outside secret",
            delete(s(&outside.join("secret.txt"))),
            G,
        ),
        (
            "chmod outside secret",
            chmod(s(&outside.join("secret.txt")), 0o600),
            G,
        ),
        (
            "mkdir outside",
            mkdir(s(&outside.join("newdir")), false, None),
            G,
        ),
        (
            "mkdir -p outside",
            mkdir(s(&outside.join("a/b/c")), true, None),
            G,
        ),
        ("rm -r outside", rmdir(s(outside), true), G),
        (
            "exists outside secret",
            exists(s(&outside.join("secret.txt"))),
            G,
        ),
        // `~otheruser`.
        ("read ~root/.bashrc", read("~root/.bashrc"), M),
        ("list ~nobody", list("~nobody"), M),
        (
            "write ~root/.ssh/authorized_keys",
            write_op("~root/.ssh/authorized_keys", None),
            M,
        ),
        ("dir_exists ~root", dir_exists("~root"), M),
        // Symlinks inside storage pointing out.
        (
            "read storage/link-out/secret",
            read(s(&storage.join("link-out/secret.txt"))),
            H,
        ),
        (
            "write storage/link-out/new",
            write_op(s(&storage.join("link-out/new.txt")), None),
            H,
        ),
        (
            "read storage/link-secret",
            read(s(&storage.join("link-secret"))),
            H,
        ),
        (
            "write storage/link-secret",
            write_op(s(&storage.join("link-secret")), None),
            H,
        ),
        (
            "rmdir storage/link-out",
            rmdir(s(&storage.join("link-out")), true),
            H,
        ),
        (
            "write storage/link-policy",
            write_op(s(&storage.join("link-policy")), None),
            N,
        ),
        (
            "read storage/link-other/token",
            read(s(&storage.join("link-other/token"))),
            N,
        ),
        // Symlinks inside a granted folder pointing out.
        (
            "read ~/granted/link-out/secret",
            read("~/granted/link-out/secret.txt"),
            H,
        ),
        (
            "write ~/granted/link-secret",
            write_op("~/granted/link-secret", None),
            H,
        ),
        (
            "append ~/granted/link-out/f",
            append("~/granted/link-out/f.txt", b"x"),
            H,
        ),
        ("list ~/granted/link-out", list("~/granted/link-out"), H),
        (
            "chmod ~/granted/link-secret",
            chmod("~/granted/link-secret", 0o644),
            H,
        ),
        (
            "rm -r ~/granted/link-out",
            rmdir("~/granted/link-out", true),
            H,
        ),
        (
            "mkdir -p ~/granted/link-out/sub",
            mkdir("~/granted/link-out/sub", true, None),
            H,
        ),
        (
            "metadata ~/granted/link-out/secret",
            metadata("~/granted/link-out/secret.txt"),
            H,
        ),
        ("read ~/granted/link-dev", read("~/granted/link-dev"), H),
        // A FIFO inside the grant: refused without blocking.
        ("read a FIFO", read("~/granted/fifo"), F),
        ("append to a FIFO", append("~/granted/fifo", b"x"), F),
        ("replace a FIFO", write_op("~/granted/fifo", None), F),
        ("chmod a FIFO", chmod("~/granted/fifo", 0o600), F),
        (
            "write ~/granted/link-policy",
            write_op("~/granted/link-policy", None),
            N,
        ),
        // Another authority's folder.
        (
            "read storage/../../other/storage/token",
            read(format!(
                "{}/../../other.example/storage/token",
                storage.display()
            )),
            N,
        ),
        (
            "write other authority's token",
            write_op(s(&other.join("storage/token")), None),
            N,
        ),
        (
            "list other authority's storage",
            list(s(&other.join("storage"))),
            N,
        ),
        (
            "mkdir -p a new authority's storage",
            mkdir(s(&tw.join("authorities/evil.example/storage")), true, None),
            N,
        ),
        // Policy files.
        (
            "read storage/../policy.toml",
            read(format!("{}/../policy.toml", storage.display())),
            N,
        ),
        (
            "write storage/../policy.toml",
            write_op(format!("{}/../policy.toml", storage.display()), None),
            N,
        ),
        (
            "write other authority's policy",
            write_op(s(&other.join("policy.toml")), None),
            N,
        ),
        ("delete own policy", delete(s(&policy)), N),
        ("chmod own policy", chmod(s(&policy), 0o600), N),
        // The authority's folder outside storage, the home root.
        (
            "write storage/../evil",
            write_op(format!("{}/../evil.txt", storage.display()), None),
            N,
        ),
        (
            "read the device key",
            read(format!("{}/../device.key", storage.display())),
            N,
        ),
        (
            "write the server pin",
            write_op(s(&own_dir.join("server.pin")), None),
            N,
        ),
        ("list the authority's folder", list(s(&own_dir)), N),
        ("list the terminalwire home", list(s(tw)), N),
        (
            "write a control file",
            write_op(s(&tw.join("evil.toml")), None),
            N,
        ),
        // Launchers.
        ("read a launcher", read(s(&tw.join("bin/launcher"))), N),
        (
            "write a launcher",
            write_op(s(&tw.join("bin/launcher")), None),
            N,
        ),
        (
            "create a launcher",
            write_op(s(&tw.join("bin/evil")), Some(0o755)),
            N,
        ),
        (
            "chmod a launcher",
            chmod(s(&tw.join("bin/launcher")), 0o755),
            N,
        ),
        ("delete a launcher", delete(s(&tw.join("bin/launcher"))), N),
        // The client binary.
        ("read the client binary", read(s(&binary)), N),
        ("metadata the client binary", metadata(s(&binary)), N),
        ("append to the client binary", append(s(&binary), b""), N),
        ("chmod the client binary", chmod(s(&binary), binary_mode), N),
        // The client's other programs: a launcher runs the one on PATH.
        (
            "write the client's other program beside it",
            write_op(s(&binary_dir.join("terminalwire-exec")), None),
            N,
        ),
        (
            "write the terminalwire-exec on PATH",
            write_op(s(&path_exec), None),
            N,
        ),
        (
            "chmod the terminalwire-exec on PATH",
            chmod(s(&path_exec), 0o755),
            N,
        ),
        (
            "create a terminalwire-exec earlier on PATH",
            write_op(s(&sandbox.path_missing().join("terminalwire-exec")), None),
            N,
        ),
        // Folders that contain terminalwire's own files.
        (
            "rm -r a folder holding the terminalwire home",
            rmdir(s(&sandbox.base), true),
            N,
        ),
        (
            "rmdir the client binary's folder",
            rmdir(s(&binary_dir), false),
            N,
        ),
        ("rm -r ~", rmdir("~", true), G),
        // Modes.
        (
            "chmod 0777 a granted file",
            chmod("~/granted/file.txt", 0o777),
            G,
        ),
        (
            "chmod 04755 a granted file",
            chmod("~/granted/file.txt", 0o4755),
            N,
        ),
        (
            "write 0666 above the 0644 ceiling",
            write_op("~/granted/new.txt", Some(0o666)),
            G,
        ),
        (
            "write a new setuid file",
            write_op("~/granted/new.txt", Some(0o4644)),
            N,
        ),
        (
            "rewrite a granted file setgid",
            write_op("~/granted/file.txt", Some(0o2644)),
            N,
        ),
        (
            "mkdir 0777 above the ceiling",
            mkdir("~/granted/newdir", false, Some(0o777)),
            G,
        ),
        (
            "mkdir -p sticky 01777",
            mkdir("~/granted/newdir/deeper", true, Some(0o1777)),
            N,
        ),
        (
            "chmod 0777 a granted folder",
            chmod("~/granted/sub", 0o777),
            G,
        ),
        (
            "chmod 02755 a granted folder",
            chmod("~/granted/sub", 0o2755),
            N,
        ),
        (
            "chmod 0644 in storage (ceiling 0600)",
            chmod(s(&storage.join("note.txt")), 0o644),
            N,
        ),
        (
            "write 0644 in storage (ceiling 0600)",
            write_op(s(&storage.join("new.txt")), Some(0o644)),
            N,
        ),
        (
            "chmod 0755 the storage folder",
            chmod(s(&storage), 0o755),
            N,
        ),
        // A granted folder holding a read-only-granted folder.
        (
            "rm -r ~/mixed with a read-only part",
            rmdir("~/mixed", true),
            G,
        ),
        (
            "write a read-only-granted file",
            write_op("~/mixed/ro/keep.txt", None),
            G,
        ),
        (
            "delete a read-only-granted file",
            delete("~/mixed/ro/keep.txt"),
            G,
        ),
        // dir_create with parents escaping.
        (
            "mkdir -p escaping with ..",
            mkdir("~/granted/a/../../../outside/evil", true, None),
            G,
        ),
        (
            "mkdir -p into an ungranted folder",
            mkdir("~/granted/../escape/deeper", true, None),
            G,
        ),
        // NUL bytes.
        (
            "read with a NUL",
            read("~/granted/file.txt\0/../../secret.txt"),
            M,
        ),
        ("write with a NUL", write_op("~/granted/a\0b", None), M),
        ("mkdir with a NUL", mkdir("~/granted/\0", true, None), M),
        // Very long paths.
        (
            "read a 5000-byte path",
            read(format!("~/granted/{}", "a".repeat(5000))),
            M,
        ),
        (
            "write a path that grows past the limit when ~ expands",
            write_op(format!("~/{}", "b".repeat(4090)), None),
            M,
        ),
        (
            "mkdir -p 2100 levels",
            mkdir(format!("~/granted/{}", "x/".repeat(2100)), true, None),
            M,
        ),
        // Glob metacharacters: never expanded.
        ("list ~/*", list("~/*"), G),
        ("read ~/**/secret.txt", read("~/**/secret.txt"), G),
        ("read ~/gr?nted/file.txt", read("~/gr?nted/file.txt"), G),
        (
            "write ~/{granted,private}/x",
            write_op("~/{granted,private}/x", None),
            G,
        ),
        (
            "delete ~/[gp]ranted/file.txt",
            delete("~/[gp]ranted/file.txt"),
            G,
        ),
        (
            "rm -r ~/granted/**/../../*",
            rmdir("~/granted/**/../../*", true),
            G,
        ),
        ("read ~/granted/* literally", read("~/granted/*"), L),
        (
            "read ~/granted/[f]ile.txt literally",
            read("~/granted/[f]ile.txt"),
            L,
        ),
        ("list ~/granted/** literally", list("~/granted/**"), L),
        ("dir_exists ~/private", dir_exists("~/private"), G),
        // Browser.
        ("javascript:", browse("javascript:alert(1)"), N),
        (
            "JavaScript: with spaces",
            browse("  JavaScript:alert(document.cookie)"),
            N,
        ),
        ("file:", browse("file:///etc/passwd"), N),
        ("data:", browse("data:text/html,x"), N),
        ("vbscript:", browse("vbscript:msgbox(1)"), N),
        ("about:", browse("about:blank"), N),
        (
            "blob:",
            browse(format!("blob:http://127.0.0.1:{port}/0000")),
            N,
        ),
        ("foreign origin", browse("https://evil.example"), G),
        (
            "another local port",
            browse(format!("http://127.0.0.1:{other_port}/")),
            G,
        ),
        (
            "localhost is another origin",
            browse(format!("http://localhost:{port}/")),
            G,
        ),
        (
            "https is another origin",
            browse(format!("https://127.0.0.1:{port}/")),
            G,
        ),
        (
            "own origin as user info",
            browse(format!("http://127.0.0.1:{port}@evil.example/")),
            G,
        ),
        ("ws: scheme", browse(format!("ws://127.0.0.1:{port}/")), G),
        ("not a URL", browse("not a url"), N),
        ("scheme-relative URL", browse("//evil.example/x"), N),
        // Environment.
        ("env not granted", env("SECRET_TOKEN"), G),
        ("env HOME", env("HOME"), G),
        ("env PATH", env("PATH"), G),
        ("env of another case", env("granted_var"), G),
        ("env name with =", env("GRANTED_VAR=1"), N),
        ("env empty name", env(""), N),
        ("env name with NUL", env("GRANTED_VAR\0"), N),
    ];
    rows.into_iter()
        .map(|(name, op, expect)| Row {
            name: name.to_owned(),
            op,
            expect,
        })
        .collect()
}

/// What is wrong with the answer to `row`, if anything.
fn check_row(row: &Row, response: &Response, authority: &str) -> Option<String> {
    let Some(error) = &response.error else {
        return Some(format!("was answered {:?}", response.ok));
    };
    let code = &error.code;
    let denial = error.denial.as_ref();
    let code_ok = match row.expect {
        Expect::Grantable | Expect::Never | Expect::Hidden => *code == ErrorCode::Denied,
        Expect::Malformed => {
            *code == ErrorCode::Invalid
                || (*code == ErrorCode::Denied && denial.is_some_and(|d| d.command.is_none()))
        }
        Expect::Literal => *code == ErrorCode::NotFound,
        Expect::NotRegular => *code == ErrorCode::Invalid,
    };
    if !code_ok {
        return Some(format!("expected {:?}, got {error:?}", row.expect));
    }
    if *code != ErrorCode::Denied {
        return None;
    }
    let Some(denial) = denial else {
        return Some(format!("a denial without details: {error:?}"));
    };
    let (resource, actions): (&str, &[&str]) = match &row.op {
        Operation::FileRead { .. }
        | Operation::FileExists { .. }
        | Operation::DirExists { .. }
        | Operation::Metadata { .. }
        | Operation::DirList { .. } => ("path", &["read"]),
        Operation::FileWrite { .. }
        | Operation::FileAppend { .. }
        | Operation::FileDelete { .. }
        | Operation::Chmod { .. }
        | Operation::DirCreate { .. }
        | Operation::DirDelete { .. } => ("path", &["write", "set mode"]),
        Operation::EnvGet { .. } => ("env", &["read"]),
        Operation::BrowserOpen { .. } => ("browser", &["launch"]),
        _ => ("?", &[]),
    };
    if denial.resource != resource || !actions.iter().any(|a| denial.action.starts_with(a)) {
        return Some(format!("unexpected resource/action: {denial:?}"));
    }
    let as_sent = row.op.path();
    let target_ok = match &row.op {
        Operation::EnvGet { name } => denial.target == *name,
        Operation::BrowserOpen { url } => denial.target == *url,
        _ if row.expect == Expect::Hidden => Some(denial.target.as_str()) == as_sent,
        // Resolved, or as sent when it led through a symlink.
        _ => denial.target.starts_with('/') || Some(denial.target.as_str()) == as_sent,
    };
    if !target_ok {
        return Some(format!("unexpected target: {denial:?}"));
    }
    match (row.expect, &denial.command) {
        (Expect::Grantable, Some(command)) => {
            let prefix = format!("terminalwire entitlement grant {authority} {resource} ");
            (!command.starts_with(&prefix)).then(|| format!("unexpected command: {denial:?}"))
        }
        (Expect::Grantable, None) => Some(format!("no grant command: {denial:?}")),
        (Expect::Hidden, Some(_)) => Some(format!(
            "a grant command that tells where a symlink led: {denial:?}"
        )),
        (Expect::Hidden, None) => (denial.reason != "it has not been granted")
            .then(|| format!("a reason that tells where a symlink led: {denial:?}")),
        (_, Some(_)) => Some(format!(
            "a grant command for a never-grantable request: {denial:?}"
        )),
        (_, None) => None,
    }
}

/// Harmless requests after the table; the client must still answer them.
fn harmless(sandbox: &Sandbox, authority: &str) -> Vec<(Operation, Reply)> {
    vec![
        (
            env("TERMINALWIRE_HOME"),
            Reply::Value {
                value: Some(s(&sandbox.tw_home)),
            },
        ),
        (
            env("GRANTED_VAR"),
            Reply::Value {
                value: Some(GRANTED_VALUE.into()),
            },
        ),
        (
            exists(s(&sandbox.storage(authority).join("note.txt"))),
            Reply::Bool { value: true },
        ),
        (
            read("~/granted/file.txt"),
            Reply::Data {
                bytes: ByteBuf::from(b"granted content".to_vec()),
                eof: true,
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_hostile_requests_is_refused_and_the_client_keeps_serving() {
    let sandbox = Sandbox::new();
    let server = HostileServer::start().await;
    let authority = server.authority();
    let rows = hostile_fixture(&sandbox, &authority).await;
    assert!(rows.len() >= 40, "only {} rows", rows.len());
    let harmless = harmless(&sandbox, &authority);

    // A first harmless session, so that whatever the client keeps for the
    // authority on its own (its folder, storage, keys) exists before the
    // snapshot.
    let record = server.plan(vec![env("TERMINALWIRE_HOME")]);
    let run = sandbox.client([server.url()]).run().await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    let warm_up = record.await.unwrap();
    assert_eq!(warm_up.failure, None);
    assert!(warm_up.responses[0].ok.is_some(), "{warm_up:?}");

    let roots = [
        sandbox.home.as_path(),
        sandbox.tw_home.as_path(),
        sandbox.outside.as_path(),
    ];
    let before = snapshot(&roots);

    let mut ops: Vec<Operation> = rows.iter().map(|row| row.op.clone()).collect();
    ops.extend(harmless.iter().map(|(op, _)| op.clone()));
    let record = server.plan(ops);
    let run = sandbox.client([server.url()]).run().await;
    let session = record.await.unwrap();
    assert_eq!(session.failure, None, "stderr: {}", run.stderr_text());
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());

    let hello = session.hello.as_ref().unwrap();
    assert_eq!(hello.authority, authority);
    assert_eq!(
        hello.storage.as_deref(),
        Some(s(&sandbox.storage(&authority)).as_str())
    );
    assert_eq!(session.responses.len(), rows.len() + harmless.len());

    let failures: Vec<String> = rows
        .iter()
        .zip(&session.responses)
        .filter_map(|(row, response)| {
            check_row(row, response, &authority).map(|why| format!("{}: {why}", row.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} hostile rows were not refused as expected:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );

    for ((op, expected), response) in harmless.iter().zip(&session.responses[rows.len()..]) {
        assert_eq!(
            response.ok.as_ref(),
            Some(expected),
            "{op:?}: {:?}",
            response.error
        );
    }

    assert_same_disk(&before, &snapshot(&roots));
    assert_eq!(sandbox.launched(), "", "a denied URL was launched");
    // Every refusal is in the client's audit log.
    let logs: String = roots
        .iter()
        .flat_map(|root| walk_files(root))
        .filter(|path| path.file_name().is_some_and(|name| name == "audit.log"))
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    let denied = logs
        .lines()
        .filter(|line| line.contains("\"decision\":\"denied\""))
        .count();
    assert!(
        denied >= 100,
        "only {denied} denials in the audit log for {} hostile rows",
        rows.len()
    );
}

fn walk_files(root: &Path) -> Vec<PathBuf> {
    snapshot(&[root]).into_keys().collect()
}

// ---------------------------------------------------------------------------
// The race: a granted folder swapped for a symlink to the outside.

/// Swaps `a` and `b` atomically (falls back to three renames).
fn exchange(a: &Path, b: &Path, hold: &Path) {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    if renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).is_err() {
        std::fs::rename(a, hold).unwrap();
        std::fs::rename(b, a).unwrap();
        std::fs::rename(hold, b).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_in_after_the_check_is_never_followed() {
    const REQUESTS: usize = 2000;
    let sandbox = Sandbox::new();
    let server = HostileServer::start().await;
    let authority = server.authority();
    let swap = sandbox.home.join("granted/swap");
    let alt = sandbox.home.join("granted/.swap-alt");
    let hold = sandbox.home.join("granted/.swap-hold");
    write(&swap.join("f.txt"), "inside", 0o644);
    symlink(&sandbox.outside, &alt).unwrap();
    sandbox
        .cli(&[
            "entitlement",
            "grant",
            &authority,
            "path",
            "~/granted/**",
            "--read-write",
        ])
        .await;

    let ops: Vec<Operation> = (0..REQUESTS)
        .map(|i| match i % 8 {
            0 => write_op("~/granted/swap/f.txt", None),
            1 => append("~/granted/swap/f.txt", b"+"),
            2 => read("~/granted/swap/f.txt"),
            3 => list("~/granted/swap"),
            4 => write_op(format!("~/granted/swap/new-{i}.txt"), None),
            5 => chmod("~/granted/swap/f.txt", 0o640),
            6 => delete("~/granted/swap/only-outside.txt"),
            _ => mkdir(format!("~/granted/swap/dir-{i}"), false, None),
        })
        .collect();
    let harmless = [
        (
            env("TERMINALWIRE_HOME"),
            Reply::Value {
                value: Some(s(&sandbox.tw_home)),
            },
        ),
        (
            exists(s(&sandbox.storage(&authority).join("none"))),
            Reply::Bool { value: false },
        ),
    ];
    let mut all = ops.clone();
    all.extend(harmless.iter().map(|(op, _)| op.clone()));
    let outside_before = snapshot(&[sandbox.outside.as_path()]);

    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, flips) = (stop.clone(), flips.clone());
        let (swap, alt, hold) = (swap.clone(), alt.clone(), hold.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                exchange(&swap, &alt, &hold);
                flips.fetch_add(1, Ordering::Relaxed);
            }
            if std::fs::symlink_metadata(&swap)
                .unwrap()
                .file_type()
                .is_symlink()
            {
                exchange(&swap, &alt, &hold);
            }
        })
    };
    let record = server.plan(all);
    let run = sandbox.client([server.url()]).run().await;
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let session = record.await.unwrap();
    assert_eq!(session.failure, None, "stderr: {}", run.stderr_text());
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    assert_eq!(session.responses.len(), ops.len() + harmless.len());

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (op, response) in ops.iter().zip(&session.responses) {
        let outcome = match (&response.ok, &response.error) {
            (Some(Reply::Data { bytes, .. }), _) => {
                let text = String::from_utf8_lossy(bytes);
                assert!(!text.contains("OUTSIDE"), "{op:?} read the outside: {text}");
                "ok".to_owned()
            }
            (Some(Reply::Entries { entries }), _) => {
                assert!(
                    entries
                        .iter()
                        .all(|e| e.name != "only-outside.txt" && e.name != "secret.txt"),
                    "{op:?} listed the outside: {entries:?}"
                );
                "ok".to_owned()
            }
            (Some(_), _) => {
                assert!(
                    !matches!(op, Operation::FileDelete { .. }),
                    "deleted a file that exists only outside"
                );
                "ok".to_owned()
            }
            (None, Some(error)) => {
                assert_ne!(error.code, ErrorCode::Internal, "{op:?}: {error:?}");
                error.code.to_string()
            }
            (None, None) => panic!("{op:?}: an empty response"),
        };
        *counts.entry(outcome).or_default() += 1;
    }
    for ((op, expected), response) in harmless.iter().zip(&session.responses[ops.len()..]) {
        assert_eq!(response.ok.as_ref(), Some(expected), "{op:?}");
    }
    assert_same_disk(&outside_before, &snapshot(&[sandbox.outside.as_path()]));
    assert!(flips.load(Ordering::Relaxed) > 0);
    assert!(
        std::fs::symlink_metadata(&swap).unwrap().is_dir(),
        "the swapper restores the real folder"
    );
    eprintln!(
        "race: {} flips, outcomes {counts:?}",
        flips.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_swapped_for_a_file_after_the_check_keeps_the_file_ceiling() {
    const REQUESTS: usize = 2000;
    let sandbox = Sandbox::new();
    let server = HostileServer::start().await;
    let authority = server.authority();
    // `m` flips between a folder (ceiling 0755) and a file (ceiling 0644).
    let folder = sandbox.home.join("granted/m");
    let file = sandbox.home.join("granted/.m-alt");
    let hold = sandbox.home.join("granted/.m-hold");
    std::fs::create_dir_all(&folder).unwrap();
    write(&file, "a plain file", 0o644);
    sandbox
        .cli(&[
            "entitlement",
            "grant",
            &authority,
            "path",
            "~/granted/**",
            "--read-write",
            "--mode",
            "0644",
        ])
        .await;
    let ops: Vec<Operation> = (0..REQUESTS).map(|_| chmod("~/granted/m", 0o755)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (folder, file, hold) = (folder.clone(), file.clone(), hold.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                exchange(&folder, &file, &hold);
            }
            if !std::fs::symlink_metadata(&folder).unwrap().is_dir() {
                exchange(&folder, &file, &hold);
            }
        })
    };
    let record = server.plan(ops);
    let run = sandbox.client([server.url()]).run().await;
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    let session = record.await.unwrap();
    assert_eq!(session.failure, None, "stderr: {}", run.stderr_text());
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    let allowed = session.responses.iter().filter(|r| r.ok.is_some()).count();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
    eprintln!("kind swap: {allowed} chmods allowed, file mode {mode:o}");
    assert_eq!(
        mode & !0o644,
        0,
        "a chmod checked against the folder ceiling (0755) landed on a file whose ceiling is 0644"
    );
}

// ---------------------------------------------------------------------------
// Every resource through the SDK.

async fn use_every_resource(ctx: Context) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let out = ctx.stdout();
    let (files, dirs) = (ctx.file(), ctx.dir());
    let storage = ctx.storage_path("").context("no storage")?;
    for (label, base) in [("storage", storage), ("granted", "~/granted".to_owned())] {
        let f = format!("{base}/f.txt");
        files.write(&f, "hello").await?;
        let first = files.read_to_string(&f).await?;
        files.append(&f, " world").await?;
        let second = files.read_to_string(&f).await?;
        let meta = files.metadata(&f).await?.context("no metadata")?;
        files.chmod(&f, 0o400).await?;
        let chmodded = files.metadata(&f).await?.context("no metadata")?.mode;
        let existed = files.exists(&f).await?;
        files.delete(&f).await?;
        let gone = !files.exists(&f).await? && files.metadata(&f).await?.is_none();
        out.println(format!(
            "{label}: {first}|{second}|{:?} {} {:o}|{chmodded:o}|{existed}|{gone}",
            meta.kind, meta.size, meta.mode
        ))
        .await?;

        let deep = format!("{base}/d/e/f");
        dirs.create_all(&deep).await?;
        files.write(&format!("{deep}/x.txt"), "x").await?;
        dirs.create(&format!("{base}/d/y")).await?;
        let names: Vec<String> = dirs
            .list(&format!("{base}/d"))
            .await?
            .into_iter()
            .map(|entry| format!("{}:{:?}", entry.name, entry.kind))
            .collect();
        let is_dir = dirs.exists(&deep).await?;
        dirs.delete_all(&format!("{base}/d")).await?;
        let removed = !dirs.exists(&format!("{base}/d")).await?;
        out.println(format!("{label} dirs: {names:?} {is_dir} {removed}"))
            .await?;
    }
    let value = ctx.env().get("GRANTED_VAR").await?;
    out.println(format!("env: {value:?}")).await?;
    let page = ctx.args().first().context("no page")?;
    ctx.browser().open(page).await?;
    out.println("browser: opened").await?;
    let mut input = Vec::new();
    let mut chunks = 0;
    loop {
        let chunk = ctx.stdin().read_chunk(4096).await?;
        if chunk.is_empty() {
            break;
        }
        chunks += 1;
        input.extend_from_slice(&chunk);
    }
    out.println(format!(
        "stdin: {} bytes, fnv {:x}, several chunks {}",
        input.len(),
        fnv(&input),
        chunks >= 5
    ))
    .await?;
    match ctx.stdin().read_password("Password: ").await {
        Err(ResourceError::Unsupported { .. }) => out.println("password: unsupported").await?,
        other => anyhow::bail!("read_password from a pipe gave {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_is_usable_through_the_sdk_when_allowed() {
    let sandbox = Sandbox::new();
    std::fs::create_dir(sandbox.home.join("granted")).unwrap();
    let server = TestServer::with_terminal(Terminal::new(use_every_resource)).await;
    let authority = authority_of(&server.url());
    for grant in [
        &["path", "~/granted/**", "--read-write"][..],
        &["env", "GRANTED_VAR"],
    ] {
        let mut args = vec!["entitlement", "grant", authority.as_str()];
        args.extend_from_slice(grant);
        sandbox.cli(&args).await;
    }
    let page = format!("http://{authority}/page");
    let input: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let run = sandbox
        .client([server.url(), page.clone()])
        .stdin(input.clone())
        .run()
        .await;
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
    let dirs = r#"["e:Dir", "y:Dir"] true true"#;
    let expected = format!(
        "storage: hello|hello world|File 11 600|400|true|true\n\
         storage dirs: {dirs}\n\
         granted: hello|hello world|File 11 644|400|true|true\n\
         granted dirs: {dirs}\n\
         env: Some(\"{GRANTED_VALUE}\")\n\
         browser: opened\n\
         stdin: 20000 bytes, fnv {:x}, several chunks true\n\
         password: unsupported\n",
        fnv(&input)
    );
    assert_eq!(run.stdout_text(), expected, "stderr: {}", run.stderr_text());
    assert_eq!(sandbox.launched(), format!("{page}\n"));
    // Everything created was cleaned up again.
    assert_eq!(
        std::fs::read_dir(sandbox.home.join("granted"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(sandbox.storage(&authority))
            .unwrap()
            .count(),
        0
    );
}

/// Tries each request; prints `label: ok` or `label: denied COMMAND`.
async fn try_denied_things(ctx: Context) -> anyhow::Result<()> {
    let outside = ctx.args().first().cloned().unwrap_or_default();
    let (files, dirs) = (ctx.file(), ctx.dir());
    let results: Vec<(&str, Result<(), ResourceError>)> = vec![
        ("read", files.read("~/private/data.txt").await.map(drop)),
        ("write", files.write("~/private/new.txt", "new").await),
        ("chmod", files.chmod("~/modes/m.txt", 0o666).await),
        ("list", dirs.list(&outside).await.map(drop)),
        ("env", ctx.env().get("SECRET_TOKEN").await.map(drop)),
        (
            "browser",
            ctx.browser().open("https://evil.example/x").await,
        ),
    ];
    for (label, result) in results {
        let line = match result {
            Ok(()) => format!("{label}: ok"),
            Err(error @ ResourceError::Denied { .. }) => match error.grant_command() {
                Some(command) => format!("{label}: denied {command}"),
                None => format!("{label}: denied without a command: {error}"),
            },
            Err(error) => format!("{label}: failed: {error}"),
        };
        ctx.stdout().println(line).await?;
    }
    Ok(())
}

/// Splits a command line as a POSIX shell would, for the quoting the grant
/// commands use (single quotes, backslashes).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[test]
fn shell_words_splits_like_a_shell() {
    assert_eq!(
        shell_words(r"a 'b c' 'd'\''e' f\ g ''"),
        ["a", "b c", "d'e", "f g", ""]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_names_the_command_that_grants_it_and_revoking_denies_again() {
    let sandbox = Sandbox::new();
    write(
        &sandbox.home.join("private/data.txt"),
        "private data",
        0o600,
    );
    write(&sandbox.home.join("modes/m.txt"), "m", 0o644);
    let server = TestServer::with_terminal(Terminal::new(try_denied_things)).await;
    let authority = authority_of(&server.url());
    sandbox
        .cli(&[
            "entitlement",
            "grant",
            &authority,
            "path",
            "~/modes/**",
            "--read-write",
        ])
        .await;
    let outside = s(&sandbox.outside);
    let session = || async {
        let run = sandbox.client([server.url(), outside.clone()]).run().await;
        assert_eq!(run.status, Some(0), "stderr: {}", run.stderr_text());
        run.stdout_text()
    };

    let grant = |rest: &str| format!("terminalwire entitlement grant {authority} {rest}");
    let denied = [
        ("read", grant("path '~/private/**' --read")),
        ("write", grant("path '~/private/**' --write")),
        ("chmod", grant("path '~/modes/**' --write --mode 0666")),
        ("list", grant(&format!("path '{outside}/**' --read"))),
        ("env", grant("env SECRET_TOKEN")),
        ("browser", grant("browser https://evil.example")),
    ];
    let expected: String = denied
        .iter()
        .map(|(label, command)| format!("{label}: denied {command}\n"))
        .collect();
    assert_eq!(session().await, expected);

    // Run the very commands the denials named.
    for (_, command) in &denied {
        let words = shell_words(command);
        assert_eq!(words[0], "terminalwire");
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        sandbox.cli(&args).await;
    }
    let allowed: String = denied
        .iter()
        .map(|(label, _)| format!("{label}: ok\n"))
        .collect();
    assert_eq!(session().await, allowed);
    assert_eq!(
        std::fs::read_to_string(sandbox.home.join("private/new.txt")).unwrap(),
        "new"
    );
    let mode = std::fs::metadata(sandbox.home.join("modes/m.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o666);
    // A foreign origin was granted, so it was launched; nothing else.
    assert_eq!(sandbox.launched(), "https://evil.example/x\n");

    // Revoke them all: denied again. (A revoke takes the grant away
    // whatever its mode, and takes no `--mode`.)
    for (_, command) in &denied {
        let revoke = command.replacen(" grant ", " revoke ", 1);
        let revoke = revoke.split(" --mode ").next().unwrap_or_default();
        let words = shell_words(revoke);
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        sandbox.cli(&args).await;
    }
    let again = session().await;
    let mut lines = again.lines();
    for (label, command) in &denied {
        let line = lines.next().unwrap_or_default();
        if *label == "chmod" {
            // `~/modes/**` is read-only now: it is writing that is refused.
            assert_eq!(
                line,
                format!("chmod: denied {}", grant("path '~/modes/**' --write"))
            );
        } else {
            assert_eq!(line, format!("{label}: denied {command}"));
        }
    }
    assert_eq!(lines.next(), None, "{again}");
    assert_eq!(sandbox.launched(), "https://evil.example/x\n");
}
