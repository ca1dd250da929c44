//! The `notes` example: a small notes web app whose data lives in SQLite and
//! whose users get a real command-line interface through terminalwire, with
//! browser login.
//!
//! ```text
//! cargo run -p notes -- --listen 127.0.0.1:3001 --data ./notes-data
//! terminalwire ws://127.0.0.1:3001/terminal login      # approve in the browser
//! terminalwire ws://127.0.0.1:3001/terminal new "Buy milk" --body "2 litres"
//! terminalwire ws://127.0.0.1:3001/terminal list
//! ```
//!
//! # Layout
//!
//! - [`Cli`]: the remote CLI (clap derive); [`command`] runs one session.
//! - [`App`]: the state shared by the terminal and the web pages: the
//!   [`store::Store`], the session [`TokenIssuer`] and the pending
//!   [`BrowserLogins`].
//! - [`web`]: the HTML pages: `/` (everyone's notes) and the login approval
//!   page `/login/approve`.
//! - [`store`]: the SQLite database; [`secret`]: passphrase hashing.
//! - [`run`] / [`serve`]: serve until a shutdown signal, then drain.
//!
//! # Login
//!
//! `login` opens the user's browser at `/login/approve?t=TOKEN` (a one-time
//! link valid for 5 minutes); the page asks "Log in as:" (and the user's
//! passphrase, if they set one with `passphrase`). On approval the waiting
//! command is told through an in-process channel and saves a session token,
//! bound to the device, in the authority's storage folder on the user's
//! machine. A session that is expired, damaged or copied from another
//! machine is refused with "please log in again", and so is one its user
//! logged in to before their passphrase was set, changed or removed (the
//! `passphrase` command keeps the session it ran in). The demo trusts whoever
//! can load the page to pick a name; a real app puts its own web login in
//! front of it.
//!
//! # Import format
//!
//! `import FILE|-` reads either the JSON that `export` writes (an object
//! with a `notes` array, or a bare array, of `{"title": ..., "body": ...}`),
//! or plain text: one note per non-empty line, the title, optionally
//! followed by a tab and the body.

#![forbid(unsafe_code)]

pub mod secret;
pub mod store;
pub mod web;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use terminalwire_server::login::BrowserLogins;
use terminalwire_server::tokens::{SessionState, TokenIssuer};
use terminalwire_server::{Config, Context, Exit, ResourceError, ServerIdentity, Terminal};
use tokio::net::TcpListener;

use crate::store::{NewNote, Note, Store};

/// The database file in the data folder.
pub const DATABASE_FILE: &str = "notes.sqlite3";
/// The secret that signs session tokens, in the data folder.
pub const SESSION_KEY_FILE: &str = "session.key";
/// The server's identity key, in the data folder unless given.
pub const IDENTITY_FILE: &str = "identity.key";

/// Largest import (file or stdin).
pub const MAX_IMPORT: usize = 16 * 1024 * 1024;

/// The remote command-line interface of the notes app.
#[derive(Debug, Parser)]
#[command(
    name = "notes",
    version,
    about = "Your notes, kept by the notes web app, from your terminal."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands of the notes app.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in: approve the login in your browser.
    Login,
    /// Forget the saved session on this machine.
    Logout,
    /// Show who you are logged in as.
    Whoami,
    /// Add a note.
    #[command(visible_alias = "create")]
    New {
        /// Its title.
        title: String,
        /// Its text.
        #[arg(long, short, default_value = "")]
        body: String,
    },
    /// List your notes.
    #[command(visible_alias = "ls")]
    List,
    /// Show one note.
    Show {
        /// The note's number (see `list`).
        id: i64,
    },
    /// Delete one note.
    #[command(visible_alias = "rm")]
    Delete {
        /// The note's number (see `list`).
        id: i64,
    },
    /// Write your notes to a file on your machine (needs a grant).
    Export {
        /// The file, e.g. ~/notes.json or ~/notes.md.
        file: String,
        /// The format (default: markdown for .md files, JSON otherwise).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Add notes from a file on your machine, or `-` for standard input:
    /// the JSON of `export`, or text with one note per line (title, then
    /// optionally a tab and the body).
    Import {
        /// The file, or `-` to read what is piped in.
        file: String,
    },
    /// Set (or remove) the passphrase that the login page asks for when
    /// someone logs in as you. Asks on your terminal.
    Passphrase {
        /// Remove the passphrase instead.
        #[arg(long)]
        remove: bool,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `{"user": ..., "notes": [{"id", "title", "body", "created"}]}`.
    Json,
    /// A Markdown document: one section per note.
    Markdown,
}

/// Settings of an [`App`].
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a session lasts (it is renewed past half its life).
    pub session_lifetime: Duration,
    /// How long a login link works.
    pub login_link_lifetime: Duration,
    /// How users' browsers reach the web pages, e.g. `https://notes.example`
    /// (no trailing slash). `None`: `http://` + the authority the client
    /// connected to.
    pub public_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            session_lifetime: Duration::from_secs(7 * 24 * 3600),
            login_link_lifetime: terminalwire_server::login::DEFAULT_LINK_LIFETIME,
            public_url: None,
        }
    }
}

/// The app's state, shared by the terminal and the web pages (cheap to
/// clone).
#[derive(Debug, Clone)]
pub struct App {
    store: Arc<Store>,
    issuer: Arc<TokenIssuer>,
    logins: BrowserLogins,
    public_url: Option<Arc<str>>,
}

impl App {
    /// Opens the app's data in `data_dir` (created 0700 if missing): the
    /// database and the session key.
    pub fn open(data_dir: &Path, options: Options) -> anyhow::Result<App> {
        create_private_dir(data_dir)
            .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;
        let database = data_dir.join(DATABASE_FILE);
        let store = Store::open(&database)
            .with_context(|| format!("cannot open the database {}", database.display()))?;
        let store = Arc::new(store);
        let key = data_dir.join(SESSION_KEY_FILE);
        // A session from before its user's passphrase last changed is over:
        // it may be someone who logged in as them while they had none, or
        // with the passphrase they changed.
        let changes = store.clone();
        let issuer = TokenIssuer::load_or_create(&key, options.session_lifetime)
            .with_context(|| format!("cannot use the session key {}", key.display()))?
            .with_revocation_check(move |claims| {
                changes
                    .passphrase_changed(&claims.sub)
                    .is_none_or(|changed| claims.auth_time() > changed)
            });
        Ok(App {
            store,
            issuer: Arc::new(issuer),
            logins: BrowserLogins::new(options.login_link_lifetime),
            public_url: options
                .public_url
                .map(|url| Arc::from(url.trim_end_matches('/'))),
        })
    }

    /// The pending browser logins.
    pub fn logins(&self) -> &BrowserLogins {
        &self.logins
    }

    /// Runs `work` on the database, off the async threads.
    pub async fn db<T, F>(&self, work: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> rusqlite::Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || work(&store))
            .await
            .context("the database task failed")?;
        result.context("database error")
    }

    /// The base URL of the web pages for this client: `--public-url`, else
    /// the origin the client reached the app at (`https://` when it came
    /// over `wss://`: a login link must not go out in clear).
    fn base_url(&self, ctx: &Context) -> String {
        match &self.public_url {
            Some(url) => url.to_string(),
            None => ctx
                .client()
                .origin
                .clone()
                .unwrap_or_else(|| format!("http://{}", ctx.client().authority)),
        }
    }

    /// The logged-in user, or an error that says to log in (again).
    async fn user(&self, ctx: &Context) -> anyhow::Result<String> {
        match ctx.session(&self.issuer).await.map_err(explain)? {
            SessionState::LoggedIn(claims) => Ok(claims.sub),
            SessionState::LoggedOut => {
                anyhow::bail!("not logged in; run `{} login` first", ctx.program_name())
            }
            SessionState::Rejected(error) => anyhow::bail!("{error}"),
            _ => anyhow::bail!("please log in again"),
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Runs one session: parses the arguments and performs the command.
pub async fn command(app: App, ctx: Context) -> anyhow::Result<()> {
    let cli: Cli = ctx.parse_args().await?;
    let out = ctx.stdout();
    match cli.command {
        Command::Login => {
            let base = app.base_url(&ctx);
            let user = app
                .logins
                .log_in(&ctx, &app.issuer, |token| {
                    format!("{base}/login/approve?t={token}")
                })
                .await?;
            out.println(format!("Logged in as {user}")).await?;
        }
        Command::Logout => {
            ctx.log_out().await.map_err(explain)?;
            out.println("Logged out").await?;
        }
        Command::Whoami => match ctx.session(&app.issuer).await.map_err(explain)? {
            SessionState::LoggedIn(claims) => {
                out.println(format!("Logged in as {}", claims.sub)).await?
            }
            SessionState::Rejected(error) => {
                out.println(error.to_string()).await?;
                return Err(Exit(1).into());
            }
            _ => {
                out.println("Not logged in").await?;
                return Err(Exit(1).into());
            }
        },
        Command::New { title, body } => {
            let user = app.user(&ctx).await?;
            let title = title.trim().to_owned();
            if title.is_empty() || title.contains('\n') {
                anyhow::bail!("a title is one non-empty line");
            }
            let ids = app
                .db(move |db| db.add(&user, &[NewNote { title, body }]))
                .await?;
            out.println(format!("Added note {}", ids[0])).await?;
        }
        Command::List => {
            let user = app.user(&ctx).await?;
            let notes = app.db(move |db| db.list(&user)).await?;
            if notes.is_empty() {
                out.println("No notes yet; add one with `new TITLE`.")
                    .await?;
            }
            for note in notes {
                out.println(format!("{:>4}  {}", note.id, note.title))
                    .await?;
            }
        }
        Command::Show { id } => {
            let user = app.user(&ctx).await?;
            let Some(note) = app.db(move |db| db.get(&user, id)).await? else {
                anyhow::bail!("you have no note {id}");
            };
            let mut text = format!("#{} {}\n{}\n", note.id, note.title, note.created);
            if !note.body.is_empty() {
                text.push('\n');
                text.push_str(note.body.trim_end());
                text.push('\n');
            }
            out.print(text).await?;
        }
        Command::Delete { id } => {
            let user = app.user(&ctx).await?;
            if !app.db(move |db| db.delete(&user, id)).await? {
                anyhow::bail!("you have no note {id}");
            }
            out.println(format!("Deleted note {id}")).await?;
        }
        Command::Export { file, format } => {
            let user = app.user(&ctx).await?;
            let owner = user.clone();
            let notes = app.db(move |db| db.list(&owner)).await?;
            let format = format.unwrap_or_else(|| {
                let lower = file.to_ascii_lowercase();
                if lower.ends_with(".md") || lower.ends_with(".markdown") {
                    Format::Markdown
                } else {
                    Format::Json
                }
            });
            let text = render_export(&user, &notes, format)?;
            ctx.file().write(&file, text).await.map_err(explain)?;
            out.println(format!("Exported {} notes to {file}", notes.len()))
                .await?;
        }
        Command::Import { file } => {
            let user = app.user(&ctx).await?;
            let bytes = if file == "-" {
                read_stdin(&ctx).await?
            } else {
                ctx.file().read(&file).await.map_err(explain)?
            };
            if bytes.len() > MAX_IMPORT {
                anyhow::bail!("{file} is larger than {MAX_IMPORT} bytes");
            }
            let text = String::from_utf8(bytes).context("the notes to import are not UTF-8")?;
            let notes = parse_import(&text)?;
            let count = notes.len();
            app.db(move |db| db.add(&user, &notes)).await?;
            out.println(format!("Imported {count} notes")).await?;
        }
        Command::Passphrase { remove } => {
            let user = app.user(&ctx).await?;
            passphrase(&app, &ctx, user, remove).await?;
        }
    }
    Ok(())
}

/// Reads all of stdin (what is piped in, or typed until Ctrl-D).
async fn read_stdin(ctx: &Context) -> anyhow::Result<Vec<u8>> {
    if ctx.terminal().stdin.is_tty() {
        ctx.stderr()
            .println("Type your notes, one per line; end with Ctrl-D.")
            .await?;
    }
    let mut bytes = Vec::new();
    loop {
        let chunk = ctx.stdin().read_chunk(256 * 1024).await.map_err(explain)?;
        if chunk.is_empty() {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_IMPORT {
            anyhow::bail!("the input is larger than {MAX_IMPORT} bytes");
        }
    }
}

/// The interactive `passphrase` command: a question and a secret (twice).
async fn passphrase(app: &App, ctx: &Context, user: String, remove: bool) -> anyhow::Result<()> {
    let out = ctx.stdout();
    if remove {
        let owner = user.clone();
        let removed = app.db(move |db| db.remove_passphrase(&owner)).await?;
        if !removed {
            out.println("You had no passphrase").await?;
            return Ok(());
        }
        keep_session(app, ctx, &user).await?;
        out.println("Passphrase removed; your sessions on other machines have ended")
            .await?;
        return Ok(());
    }
    let hint = ctx
        .read_line(Some(
            "A hint to show when the passphrase is mistyped (may be empty): ",
        ))
        .await
        .map_err(explain)?
        .unwrap_or_default();
    let ask = |prompt: &'static str| async move {
        ctx.stdin()
            .read_password(prompt)
            .await
            .map_err(explain)?
            .ok_or_else(|| anyhow::anyhow!("no passphrase given"))
    };
    let first = ask("New passphrase: ").await?;
    if first.chars().count() < 8 {
        anyhow::bail!("a passphrase needs at least 8 characters");
    }
    let again = ask("Repeat it: ").await?;
    if again != first {
        anyhow::bail!("the passphrases differ; nothing changed");
    }
    let hash = tokio::task::spawn_blocking(move || secret::hash(&first))
        .await
        .context("hashing failed")??;
    let hint = hint.trim().to_owned();
    let owner = user.clone();
    app.db(move |db| db.set_passphrase(&owner, &hint, &hash))
        .await?;
    keep_session(app, ctx, &user).await?;
    out.println(format!(
        "Passphrase set: the login page will ask for it when someone logs in as {user}; \
         your sessions on other machines have ended"
    ))
    .await?;
    Ok(())
}

/// The passphrase of `user` just changed, which ended their sessions: this
/// machine, where they made the change, gets a new one.
async fn keep_session(app: &App, ctx: &Context, user: &str) -> anyhow::Result<()> {
    ctx.log_in(&app.issuer, user)
        .await
        .map_err(explain)
        .context("your passphrase changed, but this machine's session could not be renewed")
}

/// The text `export` writes.
pub fn render_export(user: &str, notes: &[Note], format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&serde_json::json!({
                "user": user,
                "notes": notes,
            }))?;
            text.push('\n');
            text
        }
        Format::Markdown => {
            let mut text = format!("# Notes of {user}\n");
            for note in notes {
                text.push_str(&format!("\n## {}\n\n_{}_\n", note.title, note.created));
                if !note.body.is_empty() {
                    text.push('\n');
                    text.push_str(note.body.trim_end());
                    text.push('\n');
                }
            }
            text
        }
    })
}

/// Reads the notes of an import (see the crate's documentation).
pub fn parse_import(text: &str) -> anyhow::Result<Vec<NewNote>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Import {
            Export { notes: Vec<NewNote> },
            List(Vec<NewNote>),
        }
        let notes = match serde_json::from_str::<Import>(text)
            .context("not the JSON of `export` (an object with \"notes\", or a list of {\"title\", \"body\"})")?
        {
            Import::Export { notes } | Import::List(notes) => notes,
        };
        for note in &notes {
            if note.title.trim().is_empty() || note.title.contains('\n') {
                anyhow::bail!("a note's title must be one non-empty line");
            }
        }
        return Ok(notes);
    }
    Ok(text
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (title, body) = line.split_once('\t').unwrap_or((line, ""));
            NewNote {
                title: title.trim().to_owned(),
                body: body.to_owned(),
            }
        })
        .filter(|note| !note.title.is_empty())
        .collect())
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

/// The terminal of the notes app, with a stable identity key (clients pin
/// it); `None` makes a random one.
pub fn terminal(app: &App, identity: Option<ServerIdentity>) -> Terminal {
    let config = Config {
        server_name: "notes".into(),
        identity,
        ..Config::default()
    };
    let app = app.clone();
    Terminal::with_config(move |ctx| command(app.clone(), ctx), config)
}

/// Opens the app in `data_dir` (its identity key there too, made if
/// missing) and serves on `listener` until `shutdown` resolves, then lets
/// running commands finish (within the grace period).
pub async fn run(
    listener: TcpListener,
    data_dir: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = App::open(&data_dir, Options::default())?;
    let identity_file = data_dir.join(IDENTITY_FILE);
    let identity = ServerIdentity::load_or_create(&identity_file)
        .with_context(|| format!("cannot use the identity key {}", identity_file.display()))?;
    serve(listener, &app, terminal(&app, Some(identity)), shutdown).await?;
    Ok(())
}

/// Serves `app` with `terminal` on `listener` until `shutdown` resolves,
/// then drains.
pub async fn serve(
    listener: TcpListener,
    app: &App,
    terminal: Terminal,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    terminal
        .serve_app(listener, web::router(app, &terminal), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from(["notes", "create", "Milk", "--body", "2 l"]).unwrap();
        assert!(
            matches!(cli.command, Command::New { ref title, ref body } if title == "Milk" && body == "2 l")
        );
        let cli = Cli::try_parse_from(["notes", "import", "-"]).unwrap();
        assert!(matches!(cli.command, Command::Import { ref file } if file == "-"));
    }

    #[test]
    fn an_export_imports_back() {
        let notes = vec![Note {
            id: 3,
            title: "Milk".into(),
            body: "two\nlitres".into(),
            created: "2025-01-01 10:00:00".into(),
        }];
        let json = render_export("ada", &notes, Format::Json).unwrap();
        let back = parse_import(&json).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].title.as_str(), back[0].body.as_str()),
            ("Milk", "two\nlitres")
        );
        let markdown = render_export("ada", &notes, Format::Markdown).unwrap();
        assert!(
            markdown.starts_with("# Notes of ada\n\n## Milk\n"),
            "{markdown}"
        );
    }

    #[test]
    fn text_imports_one_note_per_line() {
        let notes = parse_import("first\n\n  \nsecond\twith body\r\n").unwrap();
        let pairs: Vec<_> = notes
            .iter()
            .map(|n| (n.title.as_str(), n.body.as_str()))
            .collect();
        assert_eq!(pairs, [("first", ""), ("second", "with body")]);
        assert!(parse_import("[{\"title\": \"\"}]").is_err());
        assert!(parse_import("{ broken").is_err());
    }
}
