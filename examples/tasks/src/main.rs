//! The `tasks` server binary.
//!
//! Run with:
//!
//! ```text
//! cargo run -p tasks -- --listen 127.0.0.1:3002 --user ada:hunter2
//! ```
//!
//! Prints `listening on ws://ADDR/terminal` as its first line, serves until
//! SIGINT or SIGTERM, then shuts down gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "The tasks example web app with a terminalwire CLI.")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3002", env = "TASKS_LISTEN")]
    listen: SocketAddr,
    /// An account, NAME:PASSWORD (repeat for more).
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = account, required = true)]
    users: Vec<(String, String)>,
    /// The server's identity key, which clients pin (created 0600 if
    /// missing). Default: the app's data folder (e.g.
    /// ~/.local/share/terminalwire-tasks/identity.key).
    #[arg(long, value_name = "FILE", env = "TASKS_IDENTITY")]
    identity: Option<PathBuf>,
}

fn account(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, password)) if !name.is_empty() && !password.is_empty() => {
            Ok((name.to_owned(), password.to_owned()))
        }
        _ => Err("expected NAME:PASSWORD".into()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let identity_file = match args.identity {
        Some(path) => path,
        None => directories::ProjectDirs::from("", "", "terminalwire-tasks")
            .map(|dirs| dirs.data_dir().join("identity.key"))
            .context("cannot find a data folder for the identity key; use --identity FILE")?,
    };
    let identity = terminalwire_server::ServerIdentity::load_or_create(&identity_file)
        .with_context(|| format!("cannot use the identity key {}", identity_file.display()))?;
    let app = tasks::App::new(args.users)?;
    let terminal = tasks::terminal(&app, Some(identity));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    announce(&format!(
        "listening on ws://{}/terminal",
        listener.local_addr()?
    ));
    tasks::serve(
        listener,
        &app,
        terminal,
        terminalwire_server::shutdown_signal(),
    )
    .await?;
    Ok(())
}

#[allow(
    clippy::print_stdout,
    reason = "the listening line is this binary's contract with tests and scripts"
)]
fn announce(line: &str) {
    use std::io::Write;
    println!("{line}");
    let _ = std::io::stdout().flush();
}
