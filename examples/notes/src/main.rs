//! The `notes` server binary: `notes --listen 127.0.0.1:0 --data DIR`.
//!
//! Prints `listening on ws://ADDR/terminal` as its first line, serves until
//! SIGINT or SIGTERM, then shuts down gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The notes example web app (SQLite) with a terminalwire CLI and browser login."
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3001", env = "NOTES_LISTEN")]
    listen: SocketAddr,
    /// The app's data folder: the database, the session key and (unless
    /// --identity is given) the identity key. Default: the app's data
    /// folder, e.g. ~/.local/share/terminalwire-notes.
    #[arg(long, value_name = "DIR", env = "NOTES_DATA")]
    data: Option<PathBuf>,
    /// The server's identity key, which clients pin (created 0600 if
    /// missing). Default: identity.key in the data folder.
    #[arg(long, value_name = "FILE", env = "NOTES_IDENTITY")]
    identity: Option<PathBuf>,
    /// How users' browsers reach the web pages (e.g. https://notes.example
    /// behind a TLS proxy). Default: http:// and the address the client
    /// connected to.
    #[arg(long, value_name = "URL", env = "NOTES_PUBLIC_URL")]
    public_url: Option<String>,
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
    let data = match args.data {
        Some(dir) => dir,
        None => directories::ProjectDirs::from("", "", "terminalwire-notes")
            .map(|dirs| dirs.data_dir().to_path_buf())
            .context("cannot find a data folder; use --data DIR")?,
    };
    let options = notes::Options {
        public_url: args.public_url,
        ..notes::Options::default()
    };
    let app = notes::App::open(&data, options)?;
    let identity_file = args
        .identity
        .unwrap_or_else(|| data.join(notes::IDENTITY_FILE));
    let identity = terminalwire_server::ServerIdentity::load_or_create(&identity_file)
        .with_context(|| format!("cannot use the identity key {}", identity_file.display()))?;
    tracing::info!(fingerprint = %identity.fingerprint(), data = %data.display(), "notes");
    let terminal = notes::terminal(&app, Some(identity));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    announce(&format!("listening on ws://{addr}/terminal"));
    notes::serve(
        listener,
        &app,
        terminal,
        terminalwire_server::shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
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
