//! The `tasks` example: a small team task list. An axum web app (an HTML
//! page per user, a health check) whose users also get a command-line
//! interface through terminalwire, mounted on the same router.
//!
//! Run with:
//!
//! ```text
//! cargo run -p tasks -- --listen 127.0.0.1:3002 --user ada:hunter2
//! terminalwire ws://127.0.0.1:3002/terminal login --user ada   # asks for the password
//! terminalwire ws://127.0.0.1:3002/terminal add Water the plants -p high
//! terminalwire ws://127.0.0.1:3002/terminal list
//! terminalwire ws://127.0.0.1:3002/terminal done 1
//! terminalwire ws://127.0.0.1:3002/terminal clear             # asks before removing
//! terminalwire ws://127.0.0.1:3002/terminal export            # to the app's storage folder
//! terminalwire ws://127.0.0.1:3002/terminal open              # the web page, in your browser
//! ```
//!
//! Tasks live in memory (a restart forgets them, and every login with them).
//! The web page of a user's tasks (`/u/NAME`, what `open` opens) asks for no
//! login: a demo, for a trusted network.
//!
//! # Exit statuses
//!
//! 0 done, 1 failed (or a confirmation was declined), 2 usage error (clap),
//! [`NOT_FOUND`] no such task, [`NOT_LOGGED_IN`] not logged in or a wrong
//! password.
//!
//! # Layout
//!
//! - [`Cli`]: the remote CLI (clap derive); [`command`] runs one session,
//!   [`terminal`] mounts it.
//! - [`App`]: the accounts, the tasks and the session [`TokenIssuer`],
//!   shared by the terminal and the web pages.
//! - [`router`]: the web routes with the terminal at `/terminal`;
//!   [`serve`]: serves until a shutdown signal, then drains.
//! - The unit tests run commands in memory with the SDK's
//!   `terminalwire_server::testing::TestClient` (no network, no client
//!   binary); `tests/tests/tasks.rs` runs the real client against it.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use clap::{Parser, Subcommand, ValueEnum};
use terminalwire_server::tokens::{SessionState, TokenIssuer};
use terminalwire_server::{Config, Context, Exit, ResourceError, ServerIdentity, Terminal};
use tokio::net::TcpListener;

/// Exit status of a command about a task that does not exist.
pub const NOT_FOUND: Exit = Exit(3);
/// Exit status of a command that needs a login, and of a failed login.
pub const NOT_LOGGED_IN: Exit = Exit(4);
/// The file `export` writes in the app's storage folder when given none.
pub const EXPORT_FILE: &str = "tasks.md";

/// The remote command-line interface of the tasks app.
#[derive(Debug, Parser)]
#[command(
    name = "tasks",
    version,
    about = "Your team's task list, from your terminal."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands of the tasks app.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in with your password (typed without echo).
    Login {
        /// Your user name (asked for when not given).
        #[arg(long, short)]
        user: Option<String>,
        /// Read the password as one line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the login on this machine.
    Logout,
    /// Show who you are logged in as.
    Whoami,
    /// Add a task.
    Add {
        /// What to do.
        #[arg(required = true)]
        text: Vec<String>,
        /// How urgent it is.
        #[arg(long, short, value_enum, default_value_t = Priority::Normal)]
        priority: Priority,
    },
    /// List your open tasks.
    #[command(visible_alias = "ls")]
    List {
        /// Show finished tasks too.
        #[arg(long, short)]
        all: bool,
    },
    /// Mark tasks as done.
    Done {
        /// The tasks' numbers (see `list`).
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Remove the finished tasks (asks first).
    Clear {
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
    /// Write your tasks as a Markdown checklist to a file on your machine
    /// (default: tasks.md in the app's storage folder; elsewhere needs a grant).
    Export {
        /// The file, e.g. ~/tasks.md.
        file: Option<String>,
    },
    /// Open your task page in your browser.
    Open,
}

/// How urgent a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Priority {
    /// Soon.
    High,
    /// Some time.
    Normal,
    /// When there is time.
    Low,
}

/// One task.
#[derive(Debug, Clone)]
struct Task {
    id: u64,
    text: String,
    priority: Priority,
    done: bool,
}

/// The app's state (cheap to clone).
#[derive(Debug, Clone)]
pub struct App {
    /// Passwords by user name (a demo: a real app keeps hashes).
    accounts: Arc<BTreeMap<String, String>>,
    /// Tasks by user name.
    tasks: Arc<Mutex<BTreeMap<String, Vec<Task>>>>,
    issuer: TokenIssuer,
}

impl App {
    /// An app with these `(user, password)` accounts and no tasks; logins
    /// last a day.
    pub fn new(accounts: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<App> {
        Ok(App {
            accounts: Arc::new(accounts.into_iter().collect()),
            tasks: Arc::default(),
            issuer: TokenIssuer::generate(Duration::from_secs(24 * 3600))?,
        })
    }

    fn with_tasks<T>(&self, user: &str, work: impl FnOnce(&mut Vec<Task>) -> T) -> T {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        work(tasks.entry(user.to_owned()).or_default())
    }

    /// The logged-in user; else says how to log in and ends with
    /// [`NOT_LOGGED_IN`].
    async fn user(&self, ctx: &Context) -> anyhow::Result<String> {
        let why = match ctx.session(&self.issuer).await? {
            SessionState::LoggedIn(claims) => return Ok(claims.sub),
            SessionState::Rejected(error) => error.to_string(),
            _ => "not logged in".to_owned(),
        };
        let program = ctx.program_name();
        Err(NOT_LOGGED_IN
            .with_message(format!("{why}; run `{program} login`"))
            .into())
    }
}

/// The terminal of `app`, with the server identity `identity` (`None`: a
/// random one, for tests).
pub fn terminal(app: &App, identity: Option<ServerIdentity>) -> Terminal {
    let app = app.clone();
    let config = Config {
        identity,
        ..Config::default()
    };
    Terminal::with_config(move |ctx| command(app.clone(), ctx), config)
}

/// Runs one session: parses the arguments and performs the command.
pub async fn command(app: App, ctx: Context) -> anyhow::Result<()> {
    let cli: Cli = ctx.parse_args().await?;
    let out = ctx.stdout();
    match cli.command {
        Command::Login {
            user,
            password_stdin,
        } => {
            let user = match user {
                Some(user) => user,
                None => ctx.read_line(Some("User: ")).await?.unwrap_or_default(),
            };
            let password = if password_stdin {
                ctx.read_line(None).await?
            } else if ctx.terminal().stdin.is_tty() {
                ctx.stdin().read_password("Password: ").await?
            } else {
                let hint = "cannot ask for a password without a terminal; use --password-stdin";
                return Err(NOT_LOGGED_IN.with_message(hint).into());
            };
            let known = app.accounts.get(user.trim());
            if password.is_none() || known != password.as_ref() {
                return Err(NOT_LOGGED_IN
                    .with_message("wrong user name or password")
                    .into());
            }
            ctx.log_in(&app.issuer, user.trim()).await?;
            out.println(format!("Logged in as {}", user.trim())).await?;
        }
        Command::Logout => {
            ctx.log_out().await?;
            out.println("Logged out").await?;
        }
        Command::Whoami => {
            let user = app.user(&ctx).await?;
            out.println(user).await?;
        }
        Command::Add { text, priority } => {
            let user = app.user(&ctx).await?;
            let text = text.join(" ");
            let id = app.with_tasks(&user, |tasks| {
                let id = tasks.last().map_or(1, |task| task.id + 1);
                tasks.push(Task {
                    id,
                    text,
                    priority,
                    done: false,
                });
                id
            });
            out.println(format!("Added task {id}")).await?;
        }
        Command::List { all } => {
            let user = app.user(&ctx).await?;
            let mut tasks = app.with_tasks(&user, |tasks| tasks.clone());
            tasks.retain(|task| all || !task.done);
            tasks.sort_by_key(|task| (task.done, task.priority, task.id));
            if tasks.is_empty() {
                out.println("Nothing to do.").await?;
                return Ok(());
            }
            out.print(table(&ctx, &tasks)).await?;
        }
        Command::Done { ids } => {
            let user = app.user(&ctx).await?;
            let missing = app.with_tasks(&user, |tasks| {
                let missing: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|id| !tasks.iter().any(|task| task.id == *id))
                    .collect();
                if missing.is_empty() {
                    tasks
                        .iter_mut()
                        .filter(|task| ids.contains(&task.id))
                        .for_each(|task| task.done = true);
                }
                missing
            });
            if let Some(id) = missing.first() {
                let message = format!("you have no task {id}; nothing was marked");
                return Err(NOT_FOUND.with_message(message).into());
            }
            out.println(format!("Done: {}", list_of(&ids))).await?;
        }
        Command::Clear { yes } => {
            let user = app.user(&ctx).await?;
            let finished = app.with_tasks(&user, |tasks| tasks.iter().filter(|t| t.done).count());
            if finished == 0 {
                out.println("No finished tasks.").await?;
                return Ok(());
            }
            let question = format!("Remove {finished} finished task(s)? [y/N] ");
            if !yes && !confirm(&ctx, &question).await? {
                anyhow::bail!("nothing removed");
            }
            app.with_tasks(&user, |tasks| tasks.retain(|task| !task.done));
            out.println(format!("Removed {finished} finished task(s)."))
                .await?;
        }
        Command::Export { file } => {
            let user = app.user(&ctx).await?;
            let path = match file {
                Some(file) => file,
                None => ctx
                    .storage_path(EXPORT_FILE)
                    .ok_or_else(|| anyhow::anyhow!("your client has no storage folder"))?,
            };
            let tasks = app.with_tasks(&user, |tasks| tasks.clone());
            let mut text = format!("# Tasks of {user}\n\n");
            for task in &tasks {
                let mark = if task.done { 'x' } else { ' ' };
                let priority = priority_name(task.priority);
                text.push_str(&format!("- [{mark}] {} ({priority})\n", task.text));
            }
            // A refusal names the command that would allow it.
            ctx.file().write(&path, text).await?;
            out.println(format!("Wrote {} task(s) to {path}", tasks.len()))
                .await?;
        }
        Command::Open => {
            let user = app.user(&ctx).await?;
            let url = ctx
                .web_url(&format!("/u/{user}"))
                .ok_or_else(|| anyhow::anyhow!("this client has no web address for the app"))?;
            ctx.browser().open(&url).await?;
            out.println(format!("Opened {url}")).await?;
        }
    }
    Ok(())
}

/// Asks `question`; true for an answer starting with `y`. End of input
/// (nobody to answer) is no.
async fn confirm(ctx: &Context, question: &str) -> Result<bool, ResourceError> {
    let answer = ctx.read_line(Some(question)).await?;
    Ok(answer.is_some_and(|answer| answer.trim().to_lowercase().starts_with('y')))
}

fn priority_name(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// `1, 2 and 3`.
fn list_of(ids: &[u64]) -> String {
    let words: Vec<String> = ids.iter().map(u64::to_string).collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => words.concat(),
    }
}

/// The tasks as a table, cut to the width of the user's terminal; high
/// priorities in bold where the terminal has colours.
fn table(ctx: &Context, tasks: &[Task]) -> String {
    let bold = ctx.stdout().info().color != terminalwire_server::ColorLevel::None;
    let width = ctx
        .terminal()
        .stdout
        .size
        .map_or(usize::MAX, |(columns, _)| usize::from(columns));
    let mut table = format!("{:>4}  {:<10}{:<6}TASK\n", "ID", "PRIORITY", "DONE");
    for task in tasks {
        let priority = priority_name(task.priority);
        let done = if task.done { "yes" } else { "" };
        let mut line = format!("{:>4}  {priority:<10}{done:<6}{}", task.id, task.text);
        if let Some((cut, _)) = line.char_indices().nth(width) {
            line.truncate(cut);
        }
        if bold && task.priority == Priority::High && !task.done {
            line = format!("\x1b[1m{line}\x1b[0m");
        }
        table.push_str(&line);
        table.push('\n');
    }
    table
}

/// The web app: a home page, a page per user, a health check, and the
/// terminal at `/terminal`.
pub fn router(app: &App, terminal: &Terminal) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { Html("<h1>tasks</h1><p>Use the CLI.</p>") }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/u/{user}", get(user_page))
        .route("/terminal", terminal.route())
        .with_state(app.clone())
}

async fn user_page(State(app): State<App>, Path(user): Path<String>) -> Response {
    if !app.accounts.contains_key(&user) {
        return (StatusCode::NOT_FOUND, "no such user\n").into_response();
    }
    let tasks = app.with_tasks(&user, |tasks| tasks.clone());
    let mut html = format!("<h1>Tasks of {}</h1><ul>", escape(&user));
    for task in tasks {
        let mark = if task.done { "&#x2611;" } else { "&#x2610;" };
        html.push_str(&format!("<li>{mark} {}</li>", escape(&task.text)));
    }
    html.push_str("</ul>");
    Html(html).into_response()
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Serves the app on `listener` until `shutdown` resolves, then lets
/// running commands finish.
pub async fn serve(
    listener: TcpListener,
    app: &App,
    terminal: Terminal,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(app, &terminal);
    terminal.serve_app(listener, router, shutdown).await
}

/// The commands run in memory by the SDK's test client: no network, no
/// client binary (the end-to-end test in `tests/` runs the real one).
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use terminalwire_server::testing::TestClient;

    use super::*;

    fn app() -> (App, Terminal) {
        let app = App::new([("ada".to_owned(), "hunter2".to_owned())]).unwrap();
        let terminal = terminal(&app, None);
        (app, terminal)
    }

    #[tokio::test]
    async fn a_login_is_kept_on_the_machine_and_tasks_are_added_listed_done_and_exported() {
        let (_app, terminal) = app();
        let storage = tempfile::tempdir().unwrap();
        let machine = TestClient::new().program("tasks").storage(storage.path());
        let run = |args: &[&str]| machine.clone().args(args.iter().copied());

        let out = run(&["whoami"]).run(&terminal).await;
        assert_eq!(out.status, NOT_LOGGED_IN.0);
        assert_eq!(
            out.stderr_text(),
            "error: not logged in; run `tasks login`\n"
        );

        let out = run(&["login", "-u", "ada", "--password-stdin"])
            .stdin(b"hunter2\n")
            .run(&terminal)
            .await;
        assert_eq!(
            out.stdout_text(),
            "Logged in as ada\n",
            "{}",
            out.stderr_text()
        );

        let out = run(&["add", "Water", "the", "plants", "-p", "high"])
            .run(&terminal)
            .await;
        assert_eq!(out.stdout_text(), "Added task 1\n");
        run(&["add", "Buy", "soil"]).run(&terminal).await;
        assert_eq!(
            run(&["done", "2"]).run(&terminal).await.stdout_text(),
            "Done: 2\n"
        );

        let out = run(&["list", "--all"]).run(&terminal).await;
        assert_eq!(
            out.stdout_text(),
            "  ID  PRIORITY  DONE  TASK\n   1  high            Water the plants\n   \
             2  normal    yes   Buy soil\n"
        );

        let out = run(&["done", "7"]).run(&terminal).await;
        assert_eq!(out.status, NOT_FOUND.0);
        assert_eq!(
            out.stderr_text(),
            "error: you have no task 7; nothing was marked\n"
        );

        let out = run(&["export"]).run(&terminal).await;
        assert_eq!(out.status, 0, "{}", out.stderr_text());
        let exported = std::fs::read_to_string(storage.path().join(EXPORT_FILE)).unwrap();
        assert_eq!(
            exported,
            "# Tasks of ada\n\n- [ ] Water the plants (high)\n- [x] Buy soil (normal)\n"
        );
        // Outside the storage folder the client refuses, and says how to allow it.
        let out = run(&["export", "/etc/tasks.md"]).run(&terminal).await;
        assert_eq!(out.status, 1);
        assert!(
            out.stderr_text()
                .contains("To allow it, run: terminalwire entitlement grant"),
            "{}",
            out.stderr_text()
        );

        let out = run(&["open"]).run(&terminal).await;
        assert_eq!(out.opened, ["https://app.test/u/ada"]);
    }

    #[tokio::test]
    async fn the_password_is_asked_on_a_terminal_and_clear_asks_first() {
        let (_app, terminal) = app();
        let storage = tempfile::tempdir().unwrap();
        let machine = TestClient::new()
            .program("tasks")
            .storage(storage.path())
            .terminal(30, 10);
        let out = machine
            .clone()
            .args(["login", "-u", "ada"])
            .stdin(b"hunter2\n")
            .run(&terminal)
            .await;
        assert_eq!(out.stdout_text(), "Logged in as ada\n");
        assert_eq!(out.stderr_text(), "Password: ");

        // Piped, the password is not asked for.
        let piped = TestClient::new().program("tasks").storage(storage.path());
        let out = piped
            .args(["login", "-u", "ada"])
            .stdin(b"hunter2\n")
            .run(&terminal)
            .await;
        assert_eq!(out.status, NOT_LOGGED_IN.0);
        assert!(out.stderr_text().contains("--password-stdin"));

        let add = |text: &'static str| machine.clone().args(["add", text]);
        add("a task whose text is longer than the terminal")
            .run(&terminal)
            .await;
        machine.clone().args(["done", "1"]).run(&terminal).await;
        // The table is cut to the terminal's 30 columns.
        let out = machine.clone().args(["list", "-a"]).run(&terminal).await;
        assert_eq!(
            out.stdout_text(),
            "  ID  PRIORITY  DONE  TASK\n   1  normal    yes   a task w\n"
        );
        let out = machine
            .clone()
            .args(["clear"])
            .stdin(b"n\n")
            .run(&terminal)
            .await;
        assert_eq!(out.status, 1);
        assert_eq!(
            out.stderr_text(),
            "Remove 1 finished task(s)? [y/N] error: nothing removed\n"
        );
        let out = machine
            .clone()
            .args(["clear"])
            .stdin(b"y\n")
            .run(&terminal)
            .await;
        assert_eq!(out.stdout_text(), "Removed 1 finished task(s).\n");
    }
}
