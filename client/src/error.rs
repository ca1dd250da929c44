//! Client errors and the exit statuses they map to.

use terminalwire_protocol::ErrorCode;

/// Exit statuses of the client for failures of its own. Any other status is
/// the remote command's.
pub mod exit_code {
    /// An administration command (`entitlement`, `authority`) failed: bad
    /// authority, pattern, name or target, a corrupt policy file, an I/O error.
    pub const FAILURE: u8 = 1;
    /// The client's own arguments are wrong (also clap's usage status).
    pub const USAGE: u8 = 2;
    /// The terminalwire home, a policy file or a `--ca-cert` file is
    /// unusable (e.g. a corrupt `policy.toml`; the message names the file and
    /// line).
    pub const CONFIG: u8 = 65;
    /// Cannot reach the server: connection refused, DNS failure, TLS
    /// certificate not trusted or not valid for the host, upgrade refused, or
    /// the server does not speak this protocol.
    pub const UNAVAILABLE: u8 = 69;
    /// A bug in the client.
    pub const INTERNAL: u8 = 70;
    /// Writing the command's output failed (other than a closed pipe).
    pub const IO: u8 = 74;
    /// The connection was lost or timed out, or the server shut down, before
    /// the command finished; for a resumable session, the connection could not
    /// be resumed within the server's grace period, or the server no longer
    /// had the session.
    pub const CONNECTION_LOST: u8 = 75;
    /// The server broke the protocol (malformed, oversized or unexpected
    /// frames, flow-control violations) or ended the session with an error.
    pub const PROTOCOL: u8 = 76;
    /// The server speaks no protocol version this client speaks.
    pub const INCOMPATIBLE: u8 = 78;
    /// The server's identity is not the one pinned for its authority (a
    /// changed key, or someone in between). Nothing was sent to it.
    pub const IDENTITY_CHANGED: u8 = 77;
    /// Ctrl-C: the command was interrupted (128 + SIGINT, like a local
    /// program). The server sends it when its command does not handle the
    /// interrupt; the client uses it when Ctrl-C is pressed twice, and when
    /// the user types the escape `~.` in raw mode.
    pub const INTERRUPTED: u8 = 130;
    /// Standard output was closed by its reader (like a local program killed
    /// by SIGPIPE: 128 + 13).
    pub const BROKEN_PIPE: u8 = 141;
}

/// Why the client stopped without the command's exit status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad client arguments.
    #[error("{0}")]
    Usage(String),
    /// The URL is not usable.
    #[error("invalid URL `{url}`: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The terminalwire home or the authority's policy is unusable.
    #[error("{0}")]
    Config(String),
    /// Could not open the session.
    #[error("cannot connect to {target}: {reason}")]
    Unavailable {
        /// What was being connected to.
        target: String,
        /// Why it failed.
        reason: String,
    },
    /// No common protocol version; the server's message.
    #[error("incompatible server (it speaks protocol versions {versions}): {message}")]
    Incompatible {
        /// The versions the server speaks.
        versions: String,
        /// The server's explanation.
        message: String,
    },
    /// The connection ended or timed out before the command finished.
    #[error("{0}")]
    ConnectionLost(String),
    /// The server shut down before the command finished.
    #[error("{0}")]
    ServerShutdown(String),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server ended the session with an error.
    #[error("the server ended the session ({code}): {message}")]
    ServerError {
        /// The server's code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// Writing output failed.
    #[error("cannot write {stream}: {source}")]
    Output {
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Standard output was closed by its reader.
    #[error("standard output was closed")]
    BrokenPipe,
    /// The server presented another key than the pinned one.
    #[error(
        "THE SERVER'S IDENTITY HAS CHANGED for {authority}!\n\
         \x20 pinned:    {pinned}\n\
         \x20 presented: {presented}\n\
         Someone may be intercepting this connection, or the server's key was replaced. \
         Nothing was sent to it. If you know the key changed deliberately, run:\n\
         \x20 terminalwire authority trust {authority} --fingerprint {presented}\n\
         (or `terminalwire authority forget {authority}` to start over)"
    )]
    IdentityChanged {
        /// Whose identity.
        authority: String,
        /// The fingerprint pinned on first contact.
        pinned: String,
        /// The fingerprint the server presented now.
        presented: String,
    },
    /// The connection was lost and the server no longer has the session
    /// (it ended, or its grace period ran out), so it cannot be resumed.
    #[error("{0}")]
    SessionGone(String),
    /// The user pressed Ctrl-C twice while the command was running.
    #[error("interrupted")]
    Interrupted,
    /// The user typed the client's escape `~.` (raw mode, after Enter).
    #[error("disconnected (~.)")]
    Disconnected,
    /// The client received SIGTERM (15) or SIGHUP (1).
    #[error("terminated by signal {0}")]
    Terminated(i32),
    /// A bug in the client (a panic while it performed a request) ended
    /// the session.
    #[error("internal error: {0} (a bug in terminalwire; the session was ended)")]
    Internal(String),
}

impl ClientError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) | ClientError::BadUrl { .. } => exit_code::USAGE,
            ClientError::Unavailable { .. } => exit_code::UNAVAILABLE,
            ClientError::Config(_) => exit_code::CONFIG,
            ClientError::Incompatible { .. } => exit_code::INCOMPATIBLE,
            ClientError::IdentityChanged { .. } => exit_code::IDENTITY_CHANGED,
            ClientError::ConnectionLost(_)
            | ClientError::ServerShutdown(_)
            | ClientError::SessionGone(_) => exit_code::CONNECTION_LOST,
            ClientError::Protocol(_) | ClientError::ServerError { .. } => exit_code::PROTOCOL,
            ClientError::Output { .. } => exit_code::IO,
            ClientError::BrokenPipe => exit_code::BROKEN_PIPE,
            ClientError::Interrupted | ClientError::Disconnected => exit_code::INTERRUPTED,
            ClientError::Terminated(number) => {
                u8::try_from(128 + number).unwrap_or(exit_code::INTERNAL)
            }
            ClientError::Internal(_) => exit_code::INTERNAL,
        }
    }

    /// Errors that are reported by the exit status alone, like a local
    /// program's broken pipe.
    pub fn is_silent(&self) -> bool {
        matches!(self, ClientError::BrokenPipe | ClientError::Interrupted)
    }
}
