//! The `hello` server binary: `hello --listen 127.0.0.1:0`.
//!
//! Prints `listening on ws://ADDR/terminal` as its first line, serves until
//! SIGINT or SIGTERM, then shuts down gracefully.
//!
//! Over TLS, the first line is `listening on wss://ADDR/terminal`:
//!
//! - `--tls-cert FILE --tls-key FILE`: a PEM certificate chain and its key;
//! - `--tls-self-signed DIR`: a development certificate for `localhost`,
//!   `127.0.0.1`, `::1` (and the listening IP) in `DIR/dev-cert.pem` and
//!   `DIR/dev-key.pem`, made on first use and reused after (delete them to
//!   make new ones). The second line tells how clients trust it:
//!   `terminalwire --ca-cert DIR/dev-cert.pem wss://ADDR/terminal ...`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser;
use terminalwire_server::tls;

#[derive(Debug, Parser)]
#[command(version, about = "The hello example web app with a terminalwire CLI.")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3000", env = "HELLO_LISTEN")]
    listen: SocketAddr,
    /// Serve over TLS (wss://) with this PEM certificate chain.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve over TLS with a self-signed development certificate kept in DIR
    /// (dev-cert.pem and dev-key.pem, made if missing).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: Option<PathBuf>,
    /// The server's identity key, which clients pin (created 0600 if
    /// missing). Default: the app's data folder (e.g.
    /// ~/.local/share/terminalwire-hello/identity.key).
    #[arg(long, value_name = "FILE", env = "HELLO_IDENTITY")]
    identity: Option<PathBuf>,
    /// Where the app keeps its approved devices (JSON). Default: the app's
    /// data folder.
    #[arg(long, value_name = "FILE", env = "HELLO_DEVICES")]
    devices: Option<PathBuf>,
    /// Serve only to this user, on an owner-only Unix socket instead of TCP
    /// (default path: $XDG_RUNTIME_DIR/terminalwire/hello.sock). The first
    /// line is then `listening on unix:PATH`.
    #[arg(long, value_name = "PATH", num_args = 0..=1, conflicts_with_all = ["tls_cert", "tls_key", "tls_self_signed"])]
    local: Option<Option<PathBuf>>,
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
    // Certificate problems stop the server before it listens.
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_self_signed) {
        (Some(cert), Some(key), _) => Some((
            tls::TlsConfig::from_pem_files(cert, key).context("cannot use --tls-cert/--tls-key")?,
            None,
        )),
        (_, _, Some(dir)) => {
            let (config, cert) = self_signed(dir, args.listen)?;
            Some((config, Some(cert)))
        }
        _ => None,
    };
    let identity_file = match &args.identity {
        Some(path) => path.clone(),
        None => directories::ProjectDirs::from("", "", "terminalwire-hello")
            .map(|dirs| dirs.data_dir().join("identity.key"))
            .context("cannot find a data folder for the identity key; use --identity FILE")?,
    };
    let devices_file = match &args.devices {
        Some(path) => path.clone(),
        None => identity_file.with_file_name("devices.json"),
    };
    hello::use_device_file(&devices_file)
        .with_context(|| format!("cannot use the device registry {}", devices_file.display()))?;
    let identity = terminalwire_server::ServerIdentity::load_or_create(&identity_file)
        .with_context(|| format!("cannot use the identity key {}", identity_file.display()))?;
    tracing::info!(fingerprint = %identity.fingerprint(), file = %identity_file.display(), "server identity");
    let terminal = hello::terminal_with_identity(Some(identity));
    if let Some(path) = &args.local {
        let path = match path {
            Some(path) => path.clone(),
            None => terminalwire_server::local::default_socket_path("hello"),
        };
        let listener = terminalwire_server::local::LocalListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        announce(&format!("listening on unix:{}", path.display()));
        hello::serve(listener, terminal, terminalwire_server::shutdown_signal()).await?;
        tracing::info!("stopped");
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    match tls {
        None => {
            announce(&format!("listening on ws://{addr}/terminal"));
            hello::serve(listener, terminal, terminalwire_server::shutdown_signal()).await?;
        }
        Some((config, dev_cert)) => {
            announce(&format!("listening on wss://{addr}/terminal"));
            if let Some(cert) = dev_cert {
                announce(&format!(
                    "development certificate: trust it with `terminalwire --ca-cert {} wss://{addr}/terminal hello World`",
                    cert.display()
                ));
            }
            run_tls(listener, config, terminal).await?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads the development certificate kept in `dir`, or makes one (once,
/// whole: servers started at once share it).
fn self_signed(dir: &Path, listen: SocketAddr) -> anyhow::Result<(tls::TlsConfig, PathBuf)> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ip = listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    let unusable = || {
        format!(
            "cannot use the development certificate in {} (delete it to make a new one)",
            dir.display()
        )
    };
    let (dev, cert, _key) =
        tls::DevCertificate::load_or_create(dir, &names).with_context(unusable)?;
    Ok((dev.tls_config().with_context(unusable)?, cert))
}

/// Like [`hello::run`], over TLS.
async fn run_tls(
    listener: tokio::net::TcpListener,
    config: tls::TlsConfig,
    terminal: terminalwire_server::Terminal,
) -> std::io::Result<()> {
    let app = hello::router(&terminal);
    let draining = terminal.clone();
    tls::serve(listener, config, app, async move {
        terminalwire_server::shutdown_signal().await;
        draining.begin_shutdown();
    })
    .await?;
    terminal.shutdown().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_takes_an_optional_socket_path() {
        let parse = |args: &[&str]| Args::try_parse_from(args.iter().copied());
        assert_eq!(parse(&["hello"]).unwrap().local, None);
        // Without a path: the default socket (clap refused it before).
        assert_eq!(parse(&["hello", "--local"]).unwrap().local, Some(None));
        assert_eq!(
            parse(&["hello", "--local", "/run/h.sock"]).unwrap().local,
            Some(Some(PathBuf::from("/run/h.sock")))
        );
        assert!(parse(&["hello", "--local", "--tls-self-signed", "d"]).is_err());
    }
}
