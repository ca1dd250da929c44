//! The `hello` server binary: `hello --listen 127.0.0.1:0`.
//!
//! Prints `listening on ws://ADDR/terminal` as its first line, serves until
//! SIGINT or SIGTERM, then shuts down gracefully.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "The hello example web app with a terminalwire CLI.")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3000", env = "HELLO_LISTEN")]
    listen: SocketAddr,
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
        .init();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    announce(addr);
    hello::run(listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

#[allow(
    clippy::print_stdout,
    reason = "the listening line is this binary's contract with tests and scripts"
)]
fn announce(addr: SocketAddr) {
    use std::io::Write;
    println!("listening on ws://{addr}/terminal");
    let _ = std::io::stdout().flush();
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(terminate) => terminate,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received");
}
