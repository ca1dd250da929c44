//! The `hello` example: a small axum web app whose command-line interface is
//! served to the `terminalwire` client.
//!
//! Run with:
//!
//! ```text
//! cargo run -p hello -- --listen 127.0.0.1:3000
//! terminalwire ws://127.0.0.1:3000/terminal hello World --shout
//! ```
//!
//! # Layout
//!
//! - [`Cli`]: the remote CLI, defined with clap derive.
//! - [`command`]: runs one client session.
//! - [`router`]: the web app (an HTML page at `/`) with the terminal at `/terminal`.
//! - [`run`]: serves on a listener until a shutdown signal, then drains.

#![forbid(unsafe_code)]

use std::future::Future;

use axum::Form;
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use clap::{Parser, Subcommand};
use terminalwire_server::devices::{DeviceRegistry, DeviceStatus};
use terminalwire_server::resources::EntryKind;
use terminalwire_server::{Config, Context, ResourceError, ServerIdentity, Terminal};
use tokio::net::TcpListener;

/// The remote command-line interface of the hello app.
#[derive(Debug, Parser)]
#[command(
    name = "hello",
    version,
    about = "A friendly example app, run remotely with terminalwire."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands of the hello app.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Greet someone.
    Hello {
        /// Who to greet.
        name: String,
        /// Greet loudly.
        #[arg(long)]
        shout: bool,
    },
    /// Stream a lot of numbered lines (to try throughput and flow control).
    Stream {
        /// How many bytes to write.
        #[arg(long, default_value_t = 10 * 1024 * 1024)]
        bytes: u64,
    },
    /// Ask for your name on your terminal and greet you.
    Ask,
    /// Show what the server knows about your client and terminal.
    Whoami,
    /// Keep notes in this app's storage folder on your machine.
    Note {
        /// What to do with notes.
        #[command(subcommand)]
        action: NoteAction,
    },
    /// Print a file from your machine (if you granted it).
    Cat {
        /// The file, e.g. ~/reports/today.txt.
        path: String,
    },
    /// List a folder on your machine (if you granted it).
    Ls {
        /// The folder (default: your home).
        #[arg(default_value = "~")]
        path: String,
    },
    /// Print one of your environment variables (if you granted it).
    Env {
        /// The variable's name.
        name: String,
    },
    /// Open this app's page in your browser.
    Open,
    /// Pretend to log in: asks for a password without echo.
    Login,
    /// Count the bytes and lines piped in: `cat big.csv | terminalwire URL wc`.
    Wc,
    /// Copy a file on your machine (within your grants), with progress.
    Copy {
        /// The file to read.
        from: String,
        /// Where to write it (atomically).
        to: String,
    },
    /// Read keys in raw mode and name them; `q` quits.
    Keys,
    /// Show your terminal's size, and each new size as you resize it;
    /// Ctrl-C stops.
    Size,
    /// Show a secret that only approved devices may see (approve new
    /// devices on the app's /devices page).
    Secret,
    /// Count slowly, one line per tick: a long command to detach from
    /// (Ctrl-\) and re-attach to (`terminalwire attach ID`).
    Count {
        /// Count up to this.
        #[arg(long, default_value_t = 60)]
        to: u64,
        /// Milliseconds between lines.
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
        /// Refuse to be detached (as a command that needs a human would).
        #[arg(long)]
        no_detach: bool,
    },
    /// Append numbered lines to a file in this app's storage folder, one
    /// request each (each must land exactly once, even over a flaky network).
    Append {
        /// How many lines.
        #[arg(long, default_value_t = 1000)]
        times: u64,
        /// The file, relative to the storage folder.
        #[arg(long, default_value = "appends.txt")]
        file: String,
    },
}

/// Actions of `note`.
#[derive(Debug, Subcommand)]
pub enum NoteAction {
    /// Add a note.
    Add {
        /// The note.
        text: Vec<String>,
    },
    /// Show all notes.
    List,
    /// Delete all notes.
    Clear,
}

/// Runs one session: parses the arguments and performs the command.
pub async fn command(ctx: Context) -> anyhow::Result<()> {
    let cli: Cli = ctx.parse_args().await?;
    let out = ctx.stdout();
    match cli.command {
        Command::Hello { name, shout } => {
            let greeting = format!("Hello, {name}!");
            let greeting = if shout {
                greeting.to_uppercase()
            } else {
                greeting
            };
            out.println(greeting).await?;
        }
        Command::Stream { bytes } => stream(&ctx, bytes).await?,
        Command::Count {
            to,
            every_ms,
            no_detach,
        } => {
            if no_detach {
                ctx.refuse_detach("this command needs you at the terminal");
            }
            for n in 1..=to {
                out.println(format!("tick {n}")).await?;
                if n < to {
                    tokio::time::sleep(std::time::Duration::from_millis(every_ms)).await;
                }
            }
        }
        Command::Append { times, file } => {
            let Some(path) = ctx.storage_path(&file) else {
                if ctx.client().storage.is_none() {
                    anyhow::bail!("your client has no storage folder for this app");
                }
                anyhow::bail!("{file:?} is not a name inside the storage folder");
            };
            for n in 1..=times {
                ctx.file()
                    .append(&path, format!("entry {n}\n"))
                    .await
                    .map_err(explain)?;
            }
            out.println(format!("appended {times} lines")).await?;
        }
        Command::Ask => {
            let name = ctx.read_line(Some("What is your name? ")).await?;
            match name.as_deref().map(str::trim) {
                Some(name) if !name.is_empty() => {
                    out.println(format!("Nice to meet you, {name}!")).await?
                }
                _ => anyhow::bail!("no name given"),
            }
        }
        Command::Whoami => {
            let client = ctx.client();
            let terminal = ctx.terminal();
            out.println(format!("session:   {}", ctx.session_id()))
                .await?;
            out.println(format!("client:    {} {}", client.name, client.version))
                .await?;
            out.println(format!(
                "machine:   {} {} {}",
                client.os,
                client.os_version.as_deref().unwrap_or(""),
                client.arch
            ))
            .await?;
            out.println(format!("authority: {}", client.authority))
                .await?;
            out.println(format!("stdout:    {}", terminal.stdout))
                .await?;
            out.println(format!(
                "term:      {}",
                terminal.term.as_deref().unwrap_or("(unset)")
            ))
            .await?;
        }
        Command::Note { action } => return notes(&ctx, action).await,
        Command::Cat { path } => {
            let bytes = ctx.file().read(&path).await.map_err(explain)?;
            out.write_all(&bytes).await?;
        }
        Command::Ls { path } => {
            for entry in ctx.dir().list(&path).await.map_err(explain)? {
                let suffix = match entry.kind {
                    EntryKind::Dir => "/",
                    EntryKind::Symlink => "@",
                    _ => "",
                };
                out.println(format!("{}{suffix}", entry.name)).await?;
            }
        }
        Command::Env { name } => match ctx.env().get(&name).await.map_err(explain)? {
            Some(value) => out.println(value).await?,
            None => anyhow::bail!("{name} is not set"),
        },
        Command::Open => {
            let url = ctx.web_url("/").ok_or_else(|| {
                anyhow::anyhow!(
                    "this client reached the app without a web address (a local socket)"
                )
            })?;
            ctx.browser().open(&url).await.map_err(explain)?;
            out.println(format!("opened {url}")).await?;
        }
        Command::Wc => {
            use tokio::io::AsyncBufReadExt;
            let (mut bytes, mut lines) = (0u64, 0u64);
            // Reads ahead: the next chunk is on its way while this one is counted.
            let mut stdin = ctx.stdin().reader();
            loop {
                let chunk = stdin.fill_buf().await?;
                if chunk.is_empty() {
                    break;
                }
                bytes += chunk.len() as u64;
                lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
                let len = chunk.len();
                stdin.consume(len);
            }
            out.println(format!("{lines} lines, {bytes} bytes")).await?;
        }
        Command::Copy { from, to } => {
            let mut reader = ctx.file().reader(&from);
            let mut writer = ctx.file().writer(&to).await.map_err(explain)?;
            while let Some(chunk) = reader.next_chunk().await.map_err(explain)? {
                writer.write(&chunk).await.map_err(explain)?;
            }
            let copied = writer.len();
            writer.commit().await.map_err(explain)?;
            out.println(format!("copied {copied} bytes to {to}"))
                .await?;
        }
        Command::Keys => {
            ctx.set_raw_mode(true).await.map_err(explain)?;
            out.print("press keys (q quits)\r\n").await?;
            loop {
                let key = ctx.read_key().await.map_err(explain)?;
                let mut name = String::new();
                for (held, modifier) in [
                    (key.ctrl, "ctrl-"),
                    (key.alt, "alt-"),
                    (key.shift, "shift-"),
                ] {
                    if held {
                        name.push_str(modifier);
                    }
                }
                name.push_str(&key.key);
                out.print(format!("{name}\r\n")).await?;
                if key.key == "q" && !key.ctrl && !key.alt {
                    break;
                }
            }
            ctx.set_raw_mode(false).await.map_err(explain)?;
        }
        Command::Size => {
            let show = |size: Option<(u16, u16)>| match size {
                Some((cols, rows)) => format!("{cols} columns x {rows} rows"),
                None => "not a terminal".to_owned(),
            };
            let Some(size) = ctx.terminal_size() else {
                // Nothing will ever be resized: say so and end.
                anyhow::bail!("your output is not a terminal: it has no size");
            };
            out.println(show(Some(size))).await?;
            loop {
                tokio::select! {
                    size = ctx.resized() => out.println(show(size)).await?,
                    () = ctx.interrupted() => {
                        out.println("bye").await?;
                        break;
                    }
                }
            }
        }
        Command::Secret => {
            let approve = ctx.web_url("/devices").ok_or_else(|| {
                anyhow::anyhow!(
                    "this client reached the app without a web address (a local socket)"
                )
            })?;
            devices()
                .require(&ctx, &approve, std::time::Duration::from_secs(300))
                .await?;
            out.println("The secret is 42.").await?;
        }
        Command::Login => {
            let password = ctx
                .stdin()
                .read_password("Password: ")
                .await
                .map_err(explain)?;
            match password {
                Some(password) if !password.is_empty() => {
                    out.println(format!(
                        "logged in (password of {} characters)",
                        password.chars().count()
                    ))
                    .await?
                }
                _ => anyhow::bail!("no password given"),
            }
        }
    }
    Ok(())
}

async fn notes(ctx: &Context, action: NoteAction) -> anyhow::Result<()> {
    let out = ctx.stdout();
    let Some(file) = ctx.storage_path("notes.txt") else {
        anyhow::bail!("your client has no storage folder for this app");
    };
    match action {
        NoteAction::Add { text } => {
            ctx.file()
                .append(&file, format!("{}\n", text.join(" ")))
                .await
                .map_err(explain)?;
            out.println("noted").await?;
        }
        NoteAction::List => {
            if !ctx.file().exists(&file).await.map_err(explain)? {
                out.println("no notes yet").await?;
                return Ok(());
            }
            let notes = ctx.file().read_to_string(&file).await.map_err(explain)?;
            for (number, note) in notes.lines().enumerate() {
                out.println(format!("{:>3}. {note}", number + 1)).await?;
            }
        }
        NoteAction::Clear => {
            if ctx.file().exists(&file).await.map_err(explain)? {
                ctx.file().delete(&file).await.map_err(explain)?;
            }
            out.println("notes cleared").await?;
        }
    }
    Ok(())
}

/// Turns a refused request into a message that tells the user what to run.
fn explain(error: ResourceError) -> anyhow::Error {
    match error.denial() {
        Some(denial) => {
            let mut message = format!(
                "your terminalwire client did not let this app {} {} {}: {}",
                denial.action, denial.resource, denial.target, denial.reason
            );
            match &denial.command {
                Some(command) => message.push_str(&format!("\nTo allow it, run:\n    {command}")),
                None => message.push_str(" (this can never be allowed)"),
            }
            anyhow::anyhow!(message)
        }
        None => anyhow::Error::new(error),
    }
}

/// Writes `total` bytes of numbered 64-byte lines (the last one cut short).
pub async fn stream(ctx: &Context, total: u64) -> std::io::Result<()> {
    let out = ctx.stdout();
    let mut block = Vec::with_capacity(64 * 1024);
    let mut line = 0u64;
    let mut left = total;
    while left > 0 {
        block.clear();
        while block.len() < 64 * 1024 {
            line += 1;
            block.extend_from_slice(stream_line(line).as_bytes());
        }
        let n = block.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        out.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Line `n` of the `stream` command: exactly 64 bytes including the newline.
pub fn stream_line(n: u64) -> String {
    format!("line {n:>12}: the quick brown fox jumps over the lazy dog.\n")
}

/// The web app: a page at `/` and the terminal endpoint at `/terminal`.
pub fn router(terminal: &Terminal) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/devices", get(devices_page))
        .route("/devices/approve", post(approve_device))
        .route("/devices/revoke", post(revoke_device))
        .route("/terminal", terminal.route())
}

/// The app's device registry (in memory unless [`use_device_file`] was
/// called first).
pub fn devices() -> DeviceRegistry {
    DEVICES.get_or_init(DeviceRegistry::in_memory).clone()
}

static DEVICES: std::sync::OnceLock<DeviceRegistry> = std::sync::OnceLock::new();

/// Keeps the device registry in `path`; call before serving.
pub fn use_device_file(path: &std::path::Path) -> std::io::Result<()> {
    let registry = DeviceRegistry::load_or_create(path)?;
    DEVICES
        .set(registry)
        .map_err(|_| std::io::Error::other("the device registry is already in use"))
}

/// The "approve this device" page. A real app puts it behind its web login;
/// the example trusts whoever can load it. It may not be framed (another
/// site could trick a click on its buttons).
async fn devices_page() -> Response {
    let mut rows = String::new();
    for device in devices().list() {
        let status = match &device.status {
            DeviceStatus::Pending { .. } => "waiting for approval",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Revoked => "revoked",
            _ => "unknown",
        };
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{status}</td><td>\
             <form method=post action=/devices/revoke><input type=hidden name=device value=\"{}\">\
             <button>revoke</button></form></td></tr>",
            escape(&device.fingerprint),
            escape(&device.label),
            escape(&device.fingerprint),
        ));
    }
    let html = format!(
        "<!doctype html><title>devices</title><h1>Devices</h1>\
         <p>Approve a new device with the code its terminal shows:</p>\
         <form method=post action=/devices/approve><input name=code autofocus> <button>approve</button></form>\
         <table><tr><th>device</th><th>client</th><th>status</th><th></th></tr>{rows}</table>"
    );
    (
        [
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
        ],
        Html(html),
    )
        .into_response()
}

/// Whether a form post comes from another site (so must not change
/// anything): its browser says so in `Sec-Fetch-Site`, or its `Origin` is
/// not this app's (`http://` and the request's `Host`). A post without
/// either header (curl, an old browser's same-origin form) passes. A real
/// app also checks its web login's session, with a CSRF token.
fn cross_site(headers: &HeaderMap) -> bool {
    let site = headers
        .get("sec-fetch-site")
        .map(|site| site.as_bytes().to_ascii_lowercase());
    if matches!(site.as_deref(), Some(b"cross-site" | b"same-site")) {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    match (origin.to_str(), host) {
        (Ok(origin), Some(host)) => !origin.eq_ignore_ascii_case(&format!("http://{host}")),
        _ => true,
    }
}

fn refused_cross_site() -> (StatusCode, Html<String>) {
    (
        StatusCode::FORBIDDEN,
        Html("<p>Refused: this form was sent from another site.</p>".into()),
    )
}

/// The approval form.
#[derive(Debug, serde::Deserialize)]
pub struct ApproveForm {
    /// The code the terminal showed.
    pub code: String,
}

/// The revocation form.
#[derive(Debug, serde::Deserialize)]
pub struct RevokeForm {
    /// The device's fingerprint.
    pub device: String,
}

async fn approve_device(
    headers: HeaderMap,
    Form(form): Form<ApproveForm>,
) -> (StatusCode, Html<String>) {
    if cross_site(&headers) {
        return refused_cross_site();
    }
    // Which device the code is for, to name it in the answer (codes are
    // compared as `approve` does).
    let wanted = form.code.trim().to_ascii_uppercase();
    let device = devices()
        .list()
        .into_iter()
        .find(|device| matches!(&device.status, DeviceStatus::Pending { code } if *code == wanted));
    if devices().approve(&form.code) {
        if let Err(error) = devices().saved().await {
            return not_saved(&error);
        }
        let named = device
            .map(|device| {
                format!(
                    " <code>{}</code> ({})",
                    escape(&device.fingerprint),
                    escape(&device.label)
                )
            })
            .unwrap_or_default();
        (
            StatusCode::OK,
            Html(format!(
                "<p>Device{named} approved. You can go back to your terminal.</p>"
            )),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            Html("<p>No device is waiting with that code.</p>".into()),
        )
    }
}

async fn revoke_device(
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> (StatusCode, Html<String>) {
    if cross_site(&headers) {
        return refused_cross_site();
    }
    if devices().revoke(&form.device) {
        // Only a revocation on disk survives a restart of the app.
        if let Err(error) = devices().saved().await {
            return not_saved(&error);
        }
        (StatusCode::OK, Html("<p>Device revoked.</p>".into()))
    } else {
        (StatusCode::NOT_FOUND, Html("<p>No such device.</p>".into()))
    }
}

/// The change holds until the app stops, but the registry file could not
/// be written.
fn not_saved(error: &std::io::Error) -> (StatusCode, Html<String>) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(format!(
            "<p>Done for now, but not saved: {}. It will be lost when the app restarts.</p>",
            escape(&error.to_string())
        )),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn index() -> Html<&'static str> {
    Html(
        "<!doctype html><title>hello</title><h1>hello</h1>\
         <p>This app has a command-line interface. Try:</p>\
         <pre>terminalwire ws://HOST/terminal hello World</pre>",
    )
}

/// The terminal of the hello app.
pub fn terminal() -> Terminal {
    terminal_with_identity(None)
}

/// The terminal with a stable identity key (clients pin it); `None` makes
/// a random one, which clients refuse after a restart.
pub fn terminal_with_identity(identity: Option<ServerIdentity>) -> Terminal {
    let config = Config {
        server_name: "hello".into(),
        identity,
        ..Config::default()
    };
    Terminal::with_config(command, config)
}

/// Serves the app on `listener` until `shutdown` resolves, then lets running
/// commands finish (within the grace period) and returns.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, terminal(), shutdown).await
}

/// [`run`] with a given terminal, on any listener (TCP, or a local Unix
/// socket from `terminalwire_server::local`).
pub async fn serve<L>(
    listener: L,
    terminal: Terminal,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Io: terminalwire_server::TerminalConnection,
    L::Addr: std::fmt::Debug + Clone + Send + Sync + 'static,
{
    terminal
        .serve_app(listener, router(&terminal), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_lines_are_64_bytes() {
        assert_eq!(stream_line(1).len(), 64);
        assert_eq!(stream_line(999_999_999_999).len(), 64);
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from(["hello", "hello", "Ada", "--shout"]).unwrap();
        assert!(matches!(cli.command, Command::Hello { ref name, shout: true } if name == "Ada"));
    }
}
