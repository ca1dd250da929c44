//! The terminalwire thin client.
//!
//! `terminalwire URL [ARGS...]` opens a WebSocket to a web app's terminal
//! endpoint, introduces itself with a hello, then writes what the server sends
//! to stdout/stderr and answers the server's requests, until the server's exit
//! frame gives the status it exits with. Every failure is one clear line on
//! stderr and a documented exit status ([`exit_code`]).
//!
//! # Layout
//!
//! - [`admin`]: `terminalwire entitlement ...` and `terminalwire authority ...`.
//! - [`audit`]: the per-authority audit log of resource requests.
//! - [`cli`]: argument parsing (`terminalwire [OPTIONS] URL [ARGS...]`).
//! - [`consent`]: the client's own prompts for requests not granted yet.
//! - [`connect`]: URL checks and the WebSocket connection, plain or over TLS
//!   (rustls with the platform's roots, plus `--ca-cert`).
//! - [`detached`]: records of detached sessions (`terminalwire sessions`, `attach`).
//! - [`facts`]: what the hello reports about this machine and terminal.
//! - [`inert`]: server-chosen text escaped for the client's own messages.
//! - [`keys`]: keys read while the terminal is raw, and the client's own
//!   escapes there (`~.` disconnects, Ctrl-\ detaches).
//! - [`last_resort`]: signals watched on a thread of their own, which end
//!   the client should its session not end when told (a hung mount).
//! - [`launcher`]: installed apps (`terminalwire install`) and `terminalwire-exec`.
//! - [`progress`]: progress bars for long transfers, on a terminal only.
//! - [`quota`]: the bound on what a server may write to its storage folder.
//! - [`resources`]: files, directories, environment and browser, checked
//!   against the authority's entitlements.
//! - [`safe_fs`]: file operations on a checked path that never follow symlinks.
//! - [`terminal`]: the one owner of the terminal's settings (echo off for
//!   password reads, raw mode), restored as found on every exit path.
//! - [`session`]: the protocol engine, generic over the WebSocket's byte stream
//!   and the local streams, so tests drive it in memory.
//! - [`error`]: [`ClientError`] and the exit codes.
//! - [`woken`]: a stream polled only when it woke its task (the WebSocket,
//!   the signals, the escape keys).

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod cli;
pub mod connect;
pub mod consent;
pub mod detached;
pub mod error;
pub mod facts;
pub mod inert;
pub mod keys;
pub mod last_resort;
pub mod launcher;
pub mod progress;
pub mod quota;
pub mod resources;
pub mod safe_fs;
pub mod secure;
pub mod session;
pub mod terminal;
pub mod woken;

use std::ffi::OsString;
use std::sync::Arc;

pub use error::{ClientError, exit_code};
pub use session::{LocalIo, Output, SessionConfig};

/// Runs the client with these process arguments and returns its exit status.
/// Prints errors itself.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> u8 {
    let args: Vec<OsString> = args.into_iter().collect();
    // The same binary runs launchers when called as `terminalwire-exec`.
    let called_as_exec = args
        .first()
        .map(std::path::Path::new)
        .and_then(|argv0| argv0.file_name())
        .is_some_and(|name| name == launcher::EXEC_NAME);
    if called_as_exec {
        return launcher::exec_main(args);
    }
    // `terminalwire -v attach ID`: the options go to the command.
    let args = match cli::options_before_command(args) {
        Ok(args) => args,
        Err(cli::ParseOutcome::Exit(code)) => return code,
    };
    // `terminalwire help COMMAND ...` is `terminalwire COMMAND ... --help`.
    if args.len() > 2 && args[1] == "help" {
        let mut asked: Vec<OsString> = vec![args[0].clone()];
        asked.extend(args[2..].iter().cloned());
        asked.push("--help".into());
        if admin::is_admin(&asked[1..]) || asked[1] == "attach" {
            return main_with_args(asked);
        }
    }
    if admin::is_admin(args.get(1..).unwrap_or_default()) {
        return admin::main(args);
    }
    if args.get(1).is_some_and(|first| first == "attach") {
        return match cli::parse_attach(args) {
            Ok(attach) => run_attach(attach),
            Err(cli::ParseOutcome::Exit(code)) => code,
        };
    }
    let invocation = match cli::parse(args) {
        Ok(invocation) => invocation,
        Err(cli::ParseOutcome::Exit(code)) => return code,
    };
    // `terminalwire URL --no-prompt cmd`: the option went to the app. Its
    // usage error is about to say so; this says where the option goes.
    let misplaced = cli::client_options_among(&invocation.args);
    init_logging(invocation.verbose);
    on_runtime_then(run(invocation), |outcome| {
        if matches!(outcome, Ok(exit_code::USAGE)) && !misplaced.is_empty() {
            let (are, them) = if misplaced.len() == 1 {
                ("is an option", "it")
            } else {
                ("are options", "them")
            };
            let named: Vec<String> = misplaced
                .iter()
                .map(|option| format!("`{}`", inert::inert(option)))
                .collect();
            eprintln!(
                "terminalwire: {} {are} of the client: put {them} before the URL",
                named.join(", ")
            );
        }
    })
}

/// Runs one parsed invocation on a fresh runtime; returns the exit status.
pub fn run_invocation(invocation: cli::Invocation) -> u8 {
    init_logging(invocation.verbose);
    on_runtime(run(invocation))
}

/// Runs `terminalwire attach` on a fresh runtime; returns the exit status.
pub fn run_attach(attach: cli::Attach) -> u8 {
    init_logging(attach.verbose);
    on_runtime(self::attach(attach))
}

fn on_runtime(session: impl std::future::Future<Output = Result<u8, ClientError>>) -> u8 {
    on_runtime_then(session, |_| {})
}

/// [`on_runtime`], calling `after` with the outcome once the session has
/// ended and the terminal is reset, before an error is reported.
fn on_runtime_then(
    session: impl std::future::Future<Output = Result<u8, ClientError>>,
    after: impl FnOnce(&Result<u8, ClientError>),
) -> u8 {
    terminal::restore_on_panic();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("terminalwire: cannot start: {error}");
            return exit_code::INTERNAL;
        }
    };
    let outcome = runtime.block_on(session);
    // A stdin read still pending on tokio's blocking pool must not hold the
    // process open after the session has ended.
    runtime.shutdown_background();
    terminal::reset_what_the_app_left();
    after(&outcome);
    match outcome {
        Ok(status) => status,
        Err(error) => {
            if !error.is_silent() {
                // Errors quote the server (its messages, frame tags, paths).
                eprintln!("terminalwire: {}", inert::inert_lines(&error.to_string()));
            }
            error.exit_code()
        }
    }
}

/// Connects and runs one remote command on the process's own terminal.
pub async fn run(invocation: cli::Invocation) -> Result<u8, ClientError> {
    let target = connect::Target::parse(&invocation.url)?;
    let mut hello = facts::hello(
        &target,
        invocation.program_name.clone(),
        invocation.args.clone(),
    )?;
    let first_visit = FirstVisit::new(&target);
    let (resources, storage) =
        entitlements(&target, invocation.no_prompt, invocation.prompt_timeout)?;
    hello.storage = Some(storage.to_string_lossy().into_owned());
    let command = std::iter::once(invocation.program_name.clone())
        .chain(invocation.args.iter().cloned())
        .collect();
    let config = session_config(invocation.connect_timeout, resources);
    let outcome = connect_and_run(
        &target,
        invocation.ca_cert.as_deref(),
        session::Start::Hello(Box::new(hello)),
        command,
        &config,
        None,
    )
    .await;
    // Whatever the failure: one past the secure handshake pinned the
    // server, which `forget` keeps with the rest of the folder.
    if outcome.is_err() {
        first_visit.forget();
    }
    outcome
}

/// An authority met for the first time: its folder is made before
/// dialing, and forgotten again when the run fails before the secure
/// handshake pinned the server (a mistyped URL, a server that is not
/// terminalwire's), so that no authority is left that `authority list`
/// shows as known.
struct FirstVisit {
    /// Whether the authority had no folder when this run began.
    first: bool,
    folder: std::path::PathBuf,
    made: Vec<std::path::PathBuf>,
    /// `authorities/`, locked shared while this run goes on: every run
    /// holds it so, and the clean-up takes it exclusive without waiting,
    /// so nothing is removed while another run may be using it.
    lock: Option<std::fs::File>,
}

impl FirstVisit {
    /// The visit of `target`'s authority that begins: held for the whole
    /// run (it holds the shared lock).
    fn new(target: &connect::Target) -> FirstVisit {
        use terminalwire_policy::{Authority, Home};
        let (Ok(home), Ok(authority)) = (Home::from_env(), Authority::from_url(&target.url)) else {
            return FirstVisit {
                first: false,
                folder: std::path::PathBuf::new(),
                made: Vec::new(),
                lock: None,
            };
        };
        let lock = lock_authorities(&home);
        let folder = home.authority_dir(&authority);
        FirstVisit {
            first: std::fs::symlink_metadata(&folder).is_err(),
            made: vec![
                home.device_key_file(&authority),
                home.storage_dir(&authority),
            ],
            folder,
            lock,
        }
    }

    /// Removes what the client made, and the folder, only when the folder
    /// holds exactly that (an empty storage folder and a device key): a
    /// run of the client started meanwhile that got further leaves more
    /// (a pinned identity, grants, an audit log, sessions), and then
    /// nothing is removed.
    fn forget(self) {
        use rustix::fs::{FlockOperation, flock};
        // Another run of the client, of any authority, may be starting on
        // this one: then leave it all.
        let Some(lock) = self.lock.as_ref().filter(|_| self.first) else {
            return;
        };
        if flock(lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            return;
        }
        let Ok(listing) = std::fs::read_dir(&self.folder) else {
            return;
        };
        let names: Vec<std::ffi::OsString> =
            listing.flatten().map(|entry| entry.file_name()).collect();
        let only_made = names.iter().all(|name| {
            self.made
                .iter()
                .any(|made| made.file_name() == Some(name.as_os_str()))
        });
        if !only_made {
            return;
        }
        // Folders first: one that is not empty stops the rest.
        for made in self.made.iter().rev() {
            match std::fs::symlink_metadata(made) {
                Ok(meta) if meta.is_dir() => {
                    if std::fs::remove_dir(made).is_err() {
                        return;
                    }
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(made);
                }
                Err(_) => {}
            }
        }
        let _ = std::fs::remove_dir(&self.folder);
    }
}

/// Locks `authorities/` shared (made, private, when missing), for as long
/// as the file is open; `None` when that cannot be done.
fn lock_authorities(home: &terminalwire_policy::Home) -> Option<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    let dir = home.authorities_dir();
    create_private_dirs(&dir).ok()?;
    let lock = std::fs::File::open(&dir).ok()?;
    flock(&lock, FlockOperation::LockShared).ok()?;
    Some(lock)
}

/// `terminalwire attach ID` (or `AUTHORITY/ID`): re-attaches to a
/// detached session.
pub async fn attach(invocation: cli::Attach) -> Result<u8, ClientError> {
    use terminalwire_policy::Home;
    let config_error = |message: String| ClientError::Config(message);
    let home = Home::from_env().map_err(|error| config_error(error.to_string()))?;
    let saved = detached::find(&home, &invocation.id).map_err(|error| match error {
        detached::RecordError::NotFound(..)
        | detached::RecordError::BadId(_)
        | detached::RecordError::Ambiguous { .. } => ClientError::Usage(error.to_string()),
        other => config_error(other.to_string()),
    })?;
    if saved.record.is_expired() {
        let _ = detached::forget(&saved.path);
        return Err(ClientError::SessionGone(format!(
            "session {} has expired: the server kept it for {}s after you detached",
            saved.record.session_id, saved.record.detach_secs
        )));
    }
    let target = connect::Target::parse(&saved.record.url)?;
    let (resources, _) = entitlements(&target, invocation.no_prompt, invocation.prompt_timeout)?;
    let command = saved.record.command.clone();
    let config = session_config(invocation.connect_timeout, resources);
    let start = session::Start::Attach(Box::new(saved.record));
    let record_path = saved.path.clone();
    // Spent as soon as the server takes the client back; a later detach
    // saves a new record in its place.
    let on_attached: Box<dyn FnOnce() + Send> = Box::new(move || {
        let _ = detached::forget(&record_path);
    });
    let outcome = connect_and_run(
        &target,
        invocation.ca_cert.as_deref(),
        start,
        command,
        &config,
        Some(on_attached),
    )
    .await;
    match outcome {
        // The server answered: the session is gone, or the record is not
        // this device's any more.
        Err(ClientError::SessionGone(_))
        | Err(ClientError::ServerError {
            code: terminalwire_protocol::ErrorCode::Denied,
            ..
        }) => {
            let _ = detached::forget(&saved.path);
            outcome
        }
        // No answer (the network, the server down): the record is kept.
        Err(error) if saved.path.exists() => {
            let again = format!(
                "the session is still saved: try `terminalwire attach {}` again",
                invocation.id
            );
            Err(match error {
                ClientError::ConnectionLost(reason) => {
                    ClientError::ConnectionLost(format!("{reason}; {again}"))
                }
                ClientError::Unavailable { target, reason } => ClientError::Unavailable {
                    target,
                    reason: format!("{reason}; {again} once the server is back"),
                },
                other => other,
            })
        }
        other => other,
    }
}

/// The session settings of the process's own terminal.
fn session_config(
    connect_timeout: std::time::Duration,
    resources: resources::Resources,
) -> SessionConfig {
    SessionConfig {
        handshake_timeout: connect_timeout,
        resources,
        stdin_is_terminal: std::io::IsTerminal::is_terminal(&std::io::stdin()),
        handle_signals: true,
        ..SessionConfig::default()
    }
}

/// Connects (TCP, TLS or a Unix socket), secures the connection, runs the
/// session and saves it when the user detaches.
async fn connect_and_run(
    target: &connect::Target,
    ca_cert: Option<&std::path::Path>,
    start: session::Start,
    command: Vec<String>,
    config: &SessionConfig,
    on_attached: Option<Box<dyn FnOnce() + Send>>,
) -> Result<u8, ClientError> {
    // A bad --ca-cert file stops the client before anything else happens.
    let tls = if target.is_tls() {
        Some(connect::tls_config(ca_cert)?)
    } else {
        None
    };
    let identity = identity_files(target)?;
    let device = secure::device_key(&identity.device_key)?;
    let pin = secure::load_pin(&identity.server_pin)?;
    let identity = Identity {
        files: identity,
        device,
        pin,
    };
    let timeout = config.handshake_timeout;
    if target.unix.is_some() {
        let dial = {
            let target = target.clone();
            move || {
                let target = target.clone();
                Box::pin(async move { connect::connect_unix(&target, timeout).await }) as Dial<_>
            }
        };
        drive(dial, target, identity, start, command, config, on_attached).await
    } else {
        let dial = {
            let target = target.clone();
            move || {
                let target = target.clone();
                let tls = tls.clone();
                Box::pin(async move { connect::connect_with(&target, timeout, tls).await })
                    as Dial<_>
            }
        };
        drive(dial, target, identity, start, command, config, on_attached).await
    }
}

/// Opens a WebSocket to the server.
type Dial<S> = futures_util::future::BoxFuture<
    'static,
    Result<tokio_tungstenite::WebSocketStream<S>, ClientError>,
>;

/// The device key and what is known of the server's identity.
struct Identity {
    files: IdentityFiles,
    device: terminalwire_protocol::secure::StaticKey,
    pin: secure::ServerPin,
}

/// Secures a first connection, pins the server on first contact, and runs
/// the session on the process's own terminal; later connections (to resume)
/// must show the pinned identity.
async fn drive<S, D>(
    dial: D,
    target: &connect::Target,
    identity: Identity,
    start: session::Start,
    command: Vec<String>,
    config: &SessionConfig,
    on_attached: Option<Box<dyn FnOnce() + Send>>,
) -> Result<u8, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    D: Fn() -> Dial<S> + Send + Sync + 'static,
{
    let socket = dial().await?;
    let (socket, presented) = secure::handshake(
        socket,
        &identity.device,
        &identity.pin,
        &target.authority,
        config.handshake_timeout,
    )
    .await?;
    if identity.pin == secure::ServerPin::FirstContact {
        secure::pin_first_contact(&identity.files.server_pin, &target.authority, &presented)?;
        // Shown once, where a person can see it; pipes stay clean.
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!(
                "terminalwire: first contact with {}; pinned its identity {presented}",
                target.authority
            );
        }
    }
    let reconnect: session::Reconnect<secure::SecureSocket<S>> = {
        let device = identity.device.clone();
        let pin = secure::ServerPin::Pinned(presented);
        let authority = target.authority.clone();
        let timeout = config.handshake_timeout;
        let dial = Arc::new(dial);
        Arc::new(move || {
            let dial = dial.clone();
            let device = device.clone();
            let pin = pin.clone();
            let authority = authority.clone();
            Box::pin(async move {
                let socket = dial().await?;
                let (socket, _) =
                    secure::handshake(socket, &device, &pin, &authority, timeout).await?;
                Ok(socket)
            })
        })
    };
    let resumption = session::Resumption {
        reconnect,
        url: target.url.to_string(),
        authority: target.authority.clone(),
        command,
        // On any stderr: a script's log would otherwise show nothing for
        // the whole grace period, like a hang.
        show_status: true,
        on_attached,
    };
    match session::run_with(socket, start, LocalIo::process(), config, Some(resumption)).await? {
        session::Ended::Exit(status) => Ok(status),
        session::Ended::Detached(record) => {
            let home = terminalwire_policy::Home::from_env()
                .map_err(|error| ClientError::Config(error.to_string()))?;
            let authority = terminalwire_policy::Authority::from_url(&target.url)
                .map_err(|error| ClientError::Config(error.to_string()))?;
            detached::save(&home, &authority, &record).map_err(|error| {
                ClientError::Config(format!("cannot save the detached session: {error}"))
            })?;
            // Another app's detached session may have the same id: then
            // the id alone does not say which.
            let attach = match detached::find(&home, &record.session_id) {
                Err(detached::RecordError::Ambiguous { .. }) => {
                    format!("{authority}/{}", record.session_id)
                }
                _ => record.session_id.clone(),
            };
            eprintln!(
                "terminalwire: detached from session {id}; the command goes on for up to {keep}.\n\
                 Re-attach with: terminalwire attach {attach}",
                id = record.session_id,
                keep = humantime::format_duration(std::time::Duration::from_secs(
                    record.detach_secs.into()
                )),
            );
            Ok(0)
        }
    }
}

/// Where this client keeps its device key and the server's pin.
struct IdentityFiles {
    device_key: std::path::PathBuf,
    server_pin: std::path::PathBuf,
}

fn identity_files(target: &connect::Target) -> Result<IdentityFiles, ClientError> {
    use terminalwire_policy::{Authority, Home, Privacy};
    let config = |message: String| ClientError::Config(message);
    let home = Home::from_env().map_err(|error| config(error.to_string()))?;
    let authority = Authority::from_url(&target.url).map_err(|error| config(error.to_string()))?;
    let files = IdentityFiles {
        device_key: home.device_key_file(&authority),
        server_pin: home.server_pin_file(&authority),
    };
    let private = |file, privacy| {
        home.check_private(file, privacy)
            .map_err(|error| config(error.to_string()))
    };
    private(&files.device_key, Privacy::Secret)?;
    private(&files.server_pin, Privacy::OwnerWrites)?;
    Ok(files)
}

/// Loads the authority's grants and makes sure its storage folder exists.
/// Unless `no_prompt`, requests not granted are asked about on a terminal,
/// each prompt waiting `prompt_timeout` for an answer (`None`: as long as
/// it takes).
fn entitlements(
    target: &connect::Target,
    no_prompt: bool,
    prompt_timeout: Option<std::time::Duration>,
) -> Result<(resources::Resources, std::path::PathBuf), ClientError> {
    use terminalwire_policy::{Authority, Entitlements, Home, Policy};
    let config = |message: String| ClientError::Config(message);
    let home = Home::from_env().map_err(|error| config(error.to_string()))?;
    let authority = Authority::from_url(&target.url).map_err(|error| config(error.to_string()))?;
    let storage = home.storage_dir(&authority);
    create_private_dirs(&storage)
        .map_err(|error| config(home_error(&home, "create", &storage, error).to_string()))?;
    // A corrupt policy file stops the client: never a silent reset. So does
    // one another user could have written.
    let policy_file = home.policy_file(&authority);
    home.check_private(&policy_file, terminalwire_policy::Privacy::OwnerWrites)
        .map_err(|error| config(error.to_string()))?;
    let policy = Policy::load(&policy_file)
        .map_err(|error| config(policy_error(&home, error).to_string()))?;
    let user_home =
        terminalwire_policy::home::user_home().map_err(|error| config(error.to_string()))?;
    let client_binaries = launcher::client_binaries();
    let entitlements = Entitlements::new(&target.url, &home, &policy, &user_home, &client_binaries)
        .map_err(|error| config(error.to_string()))?;
    let resources = resources::Resources::new(
        entitlements,
        home.root().to_path_buf(),
        resources::Resources::system_opener(),
    )
    .with_progress(progress::Progress::new(std::io::IsTerminal::is_terminal(
        &std::io::stderr(),
    )))
    .with_audit(audit::AuditLog::new(
        home.authority_dir(&authority).join("audit.log"),
    ));
    let resources = if !no_prompt && consent::Consent::available() {
        resources.with_consent(
            consent::Consent::new(
                target.url.clone(),
                home.clone(),
                user_home.clone(),
                client_binaries,
            )
            .with_timeout(prompt_timeout),
        )
    } else {
        resources
    };
    Ok((resources, storage))
}

/// `mkdir -p` with mode 0700 for the folders it creates.
pub(crate) fn create_private_dirs(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|error| folder_error(path, path, error))
}

/// `error`, met loading or changing a policy file of `home`: said of the
/// file or folder another user owns when that is why it was denied (a
/// `sudo terminalwire ...` run with this user's `HOME` made it), as the
/// home's folders are ([`home_error`]), rather than a bare "Permission
/// denied".
pub(crate) fn policy_error(
    home: &terminalwire_policy::Home,
    error: terminalwire_policy::PolicyError,
) -> anyhow::Error {
    use terminalwire_policy::PolicyError;
    let denied = match &error {
        PolicyError::Read { path, source } | PolicyError::Write { path, source } => {
            Some((path, source))
        }
        PolicyError::Lock { lock, source, .. } => Some((lock, source)),
        _ => None,
    };
    if let Some((path, source)) = denied
        && source.kind() == std::io::ErrorKind::PermissionDenied
        && let Some(why) = home.why_denied(path)
    {
        return why.into();
    }
    error.into()
}

/// `error`, met doing `action` ("create", "write", "delete") on `path` of
/// `home`: a home the client cannot use (status 65). Said of the folder or
/// file another user owns when that is why it was denied, and of what is in
/// the way when a file stands where a folder belongs.
pub(crate) fn home_error(
    home: &terminalwire_policy::Home,
    action: &'static str,
    path: &std::path::Path,
    error: std::io::Error,
) -> terminalwire_policy::HomeError {
    if error.kind() == std::io::ErrorKind::PermissionDenied
        && let Some(why) = home.why_denied(path)
    {
        return why;
    }
    terminalwire_policy::HomeError::Unusable {
        action,
        path: path.to_path_buf(),
        source: folder_error(path.parent().unwrap_or(path), path, error),
    }
}

/// `error`, met using the folder `folder` or something in it (`named`, the
/// path the error is said of), said plainly when that folder or one above
/// it is something else ("File exists", "Not a directory" name neither
/// what is in the way nor what to do).
pub(crate) fn folder_error(
    folder: &std::path::Path,
    named: &std::path::Path,
    error: std::io::Error,
) -> std::io::Error {
    // The nearest of them that is there: a folder, or what is in the way.
    let in_the_way = folder.ancestors().find_map(|there| {
        match std::fs::metadata(there) {
            Ok(meta) => Some((!meta.is_dir()).then_some(there)),
            // A symbolic link to nothing is in the way too.
            Err(_) if std::fs::symlink_metadata(there).is_ok() => Some(Some(there)),
            Err(_) => None,
        }
    });
    let plainly = |message: String| std::io::Error::new(error.kind(), message);
    match in_the_way.flatten() {
        Some(there) if there == named => {
            plainly("something that is not a folder is there; move it out of the way".to_owned())
        }
        Some(there) => plainly(format!(
            "{} is not a folder; move it out of the way",
            there.display()
        )),
        None => error,
    }
}

fn init_logging(verbose: u8) {
    // Logs go to stderr and only when asked for: stdout belongs to the app.
    let default = match verbose {
        0 => "off",
        1 => "terminalwire=info,terminalwire_client=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TERMINALWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: a log kept in a file stays plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_visit_is_forgotten_only_while_it_holds_only_what_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("authorities/example.com");
        let home = terminalwire_policy::Home::at(dir.path());
        let visit = || FirstVisit {
            first: true,
            made: vec![folder.join("device.key"), folder.join("storage")],
            folder: folder.clone(),
            lock: lock_authorities(&home),
        };
        let make = || {
            std::fs::create_dir_all(folder.join("storage")).unwrap();
            std::fs::write(folder.join("device.key"), "key").unwrap();
        };
        make();
        visit().forget();
        assert!(!folder.exists(), "what the run made is gone");
        // Another run got further meanwhile: it pinned the server.
        make();
        std::fs::write(folder.join("server.pin"), "pin").unwrap();
        visit().forget();
        assert!(folder.join("device.key").exists() && folder.join("storage").exists());
        // Or wrote into storage.
        std::fs::remove_file(folder.join("server.pin")).unwrap();
        std::fs::write(folder.join("storage/token"), "t").unwrap();
        visit().forget();
        assert!(folder.join("device.key").exists(), "the key stays");
        assert!(folder.join("storage/token").exists());
        // Another run of the client holds the lock: nothing is removed.
        std::fs::remove_file(folder.join("storage/token")).unwrap();
        let other_run = lock_authorities(&home).unwrap();
        visit().forget();
        assert!(
            folder.join("device.key").exists(),
            "kept while another runs"
        );
        drop(other_run);
        visit().forget();
        assert!(!folder.exists());
    }
}

#[cfg(test)]
mod private_dirs_tests {
    use super::*;

    #[test]
    fn a_file_where_a_folder_belongs_is_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        std::fs::write(&storage, "").unwrap();
        let error = create_private_dirs(&storage).unwrap_err().to_string();
        assert!(error.contains("not a folder is there"), "{error}");
        // Above it: named.
        let error = create_private_dirs(&storage.join("a/b"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "{} is not a folder; move it out of the way",
                storage.display()
            )
        );
        // A folder is made, private.
        use std::os::unix::fs::PermissionsExt;
        let made = dir.path().join("a/b");
        create_private_dirs(&made).unwrap();
        assert_eq!(
            std::fs::metadata(&made).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}

#[cfg(test)]
mod first_contact_tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use terminalwire_protocol::secure::{Responder, StaticKey};
    use tokio_tungstenite::tungstenite::Message;

    /// Two runs make first contact with a new authority at once: the one
    /// that pins second meets another identity than the pin now on disk
    /// (an impostor), and is refused as a changed identity, the pin kept.
    /// It was overwritten with the impostor's, and the session ran.
    #[tokio::test]
    async fn a_first_contact_that_loses_the_race_to_pin_keeps_the_other_runs_pin() {
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("authorities/example.com/server.pin");
        let other_run_pinned = StaticKey::generate().unwrap().fingerprint();
        let impostor = StaticKey::generate().unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let pin_for_server = pin_file.clone();
        let pinned_by_other = other_run_pinned.clone();
        tokio::spawn(async move {
            let mut ws = tokio_tungstenite::accept_async(server_io).await.unwrap();
            let first = loop {
                if let Some(Ok(Message::Binary(bytes))) = ws.next().await {
                    break bytes;
                }
            };
            // Meanwhile, the other run completes its first contact.
            secure::save_pin(&pin_for_server, &pinned_by_other).unwrap();
            let (responder, answer) = Responder::respond(&impostor, &first).unwrap();
            ws.send(Message::Binary(answer.into())).await.unwrap();
            if let Some(Ok(Message::Binary(third))) = ws.next().await {
                let _ = responder.finish(&third);
            }
            // Whatever comes next (nothing should): read until the end.
            while let Some(Ok(_)) = ws.next().await {}
        });
        let (client_ws, _) =
            tokio_tungstenite::client_async("ws://example.com/terminal", client_io)
                .await
                .unwrap();
        let slot = std::sync::Mutex::new(Some(client_ws));
        let dial = move || -> Dial<tokio::io::DuplexStream> {
            let socket = slot.lock().unwrap().take();
            Box::pin(async move {
                socket.ok_or_else(|| ClientError::Unavailable {
                    target: "test".into(),
                    reason: "dialled once".into(),
                })
            })
        };
        let target = connect::Target::parse("ws://example.com/terminal").unwrap();
        let identity = Identity {
            files: IdentityFiles {
                device_key: dir.path().join("authorities/example.com/device.key"),
                server_pin: pin_file.clone(),
            },
            device: StaticKey::generate().unwrap(),
            // Loaded before the other run saved its pin.
            pin: secure::ServerPin::FirstContact,
        };
        let hello =
            session::Start::Hello(Box::new(facts::hello(&target, "x".into(), vec![]).unwrap()));
        let config = SessionConfig::default();
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            drive(dial, &target, identity, hello, vec![], &config, None),
        )
        .await
        .expect("drive hung");
        assert!(
            matches!(outcome, Err(ClientError::IdentityChanged { .. })),
            "{outcome:?}"
        );
        assert_eq!(
            secure::load_pin(&pin_file).unwrap(),
            secure::ServerPin::Pinned(other_run_pinned)
        );
    }

    /// The other run pinned the same identity: this one goes on.
    #[test]
    fn a_first_contact_that_finds_the_same_pin_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let pin_file = dir.path().join("server.pin");
        let key = StaticKey::generate().unwrap().fingerprint();
        secure::pin_first_contact(&pin_file, "example.com", &key).unwrap();
        secure::pin_first_contact(&pin_file, "example.com", &key).unwrap();
        assert_eq!(
            secure::load_pin(&pin_file).unwrap(),
            secure::ServerPin::Pinned(key)
        );
    }

    /// Two first runs make a device key at once: both end with the one on
    /// disk (the second overwrote the first's, whose sessions and saved
    /// logins were then another device's).
    #[test]
    fn device_keys_made_at_once_are_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorities/a/device.key");
        let keys: Vec<String> = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| secure::device_key(&path).unwrap().fingerprint()))
                .collect();
            runs.into_iter().map(|run| run.join().unwrap()).collect()
        });
        let on_disk = secure::device_key(&path).unwrap().fingerprint();
        assert!(
            keys.iter().all(|key| *key == on_disk),
            "{keys:?} vs {on_disk}"
        );
    }
}
