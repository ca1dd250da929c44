//! Browser login: a command opens the user's browser at a one-time,
//! short-lived page of the app, the user approves there, and the waiting
//! command learns who logged in.
//!
//! The app keeps one [`BrowserLogins`] (cheap to clone) shared by its
//! terminal and its web routes:
//!
//! - the command calls [`BrowserLogins::log_in`] (or [`BrowserLogins::begin`]
//!   and [`PendingLogin::wait`] for its own flow): it gets a random 128-bit
//!   token, opens `url_for(token)` in the user's browser (the app's own
//!   origin needs no grant) and waits on an in-process channel, without
//!   polling, until the page is approved or refused, the link expires or
//!   the server shuts down;
//! - the app's page looks the token up ([`BrowserLogins::request`]) to show
//!   what is asking, and completes it with [`BrowserLogins::approve`] (with
//!   the user the app authenticated) or [`BrowserLogins::refuse`].
//!
//! A link alone is not enough: someone could send the user a link of a
//! login *they* started. The terminal that asked shows a short code
//! ([`PendingLogin::code`], printed by [`BrowserLogins::log_in`]), and the
//! page must have the user type it ([`BrowserLogins::check_code`],
//! [`BrowserLogins::approve`]): only someone who sees that terminal can
//! approve. Wrong codes, and wrong passwords the app counts
//! ([`BrowserLogins::attempt_failed`]), spend the link after
//! [`MAX_ATTEMPTS`].
//!
//! A token works once: afterwards, and after it expires, the page is told
//! so ([`LinkError`]). Pending logins live in memory: a restart forgets them,
//! which only means running `login` again. On approval,
//! [`BrowserLogins::log_in`] saves a device-bound session with
//! [`Context::log_in`] ([`crate::tokens`]).
//!
//! ```no_run
//! # use terminalwire_server::{Context, login::BrowserLogins, tokens::TokenIssuer};
//! # async fn login(ctx: Context, logins: BrowserLogins, issuer: TokenIssuer) -> anyhow::Result<()> {
//! use anyhow::Context as _;
//! let page = ctx
//!     .web_url("/login/approve")
//!     .context("log in from a client that reaches the app over the web")?;
//! let user = logins
//!     .log_in(&ctx, &issuer, |token| format!("{page}?t={token}"))
//!     .await?;
//! ctx.stdout().println(format!("Logged in as {user}")).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::context::{Context, ResourceError};
use crate::tokens::TokenIssuer;

/// How long a login link works unless configured otherwise.
pub const DEFAULT_LINK_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// How long a used or expired link is remembered, to tell the page why it no
/// longer works (after that it is simply unknown).
const REMEMBER: Duration = Duration::from_secs(30 * 60);

/// Longest description of the client kept for the page, in characters.
const MAX_CLIENT_CHARS: usize = 200;

/// Wrong codes or passwords a link takes before it is spent (the command
/// that asked is refused).
pub const MAX_ATTEMPTS: u8 = 5;

/// The letters of a login's code: no `0`/`O`, `1`/`I`.
const CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// What the page may show about a pending login.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginRequest {
    /// Who is asking, in words: the client's machine and program, as the
    /// client reports them (control, format and bidi characters removed:
    /// still words a client chose, to be shown as such).
    pub client: String,
    /// The fingerprint of the device that will hold the session; `None`
    /// for a client without a device key ([`crate::ClientInfo::device`]).
    pub device: Option<String>,
    /// Time left before the link expires.
    pub expires_in: Duration,
}

impl LoginRequest {
    /// A login asked for by `client` (in words) on the device `device`
    /// (`None`: a client without a device key).
    pub fn new(client: impl Into<String>, device: Option<String>) -> Self {
        LoginRequest {
            client: shown_text(&client.into(), MAX_CLIENT_CHARS),
            device,
            expires_in: Duration::ZERO,
        }
    }
}

/// Why a login link cannot be used (the page shows it; HTTP 404 for
/// [`LinkError::Unknown`], 410 for the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No such link (mistyped, very old, or from before a restart).
    #[error("this login link is not valid; run `login` again in your terminal")]
    Unknown,
    /// The link was already used.
    #[error("this login link was already used; run `login` again in your terminal")]
    Used,
    /// The link expired.
    #[error("this login link has expired; run `login` again in your terminal")]
    Expired,
    /// The command that asked is gone (interrupted or disconnected).
    #[error("the terminal that asked for this login is no longer waiting; run `login` again")]
    Abandoned,
    /// The code typed is not the one the terminal that asked shows; the
    /// link takes `left` more attempts.
    #[error(
        "that is not the code the terminal shows ({left} attempt{s} left)",
        s = if *left == 1 { "" } else { "s" }
    )]
    WrongCode {
        /// Attempts left.
        left: u8,
    },
    /// Too many wrong codes or passwords: the link is spent.
    #[error("too many wrong attempts on this login link; run `login` again in your terminal")]
    TooManyAttempts,
}

/// Why a browser login did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// Nobody approved within the link's lifetime.
    #[error("the login link expired before it was approved; run `login` again")]
    Expired,
    /// The user refused the login on the page.
    #[error("the login was refused in the browser")]
    Refused,
    /// The page got too many wrong codes or passwords ([`MAX_ATTEMPTS`]).
    #[error("too many wrong attempts on the login page; run `login` again")]
    TooManyAttempts,
    /// The server is shutting down.
    #[error("the server is shutting down; run `login` again in a moment")]
    ShuttingDown,
    /// No random token could be made.
    #[error("cannot make a login token: {0}")]
    Random(String),
    /// Saving the session on the client failed.
    #[error("cannot save the session on your machine: {0}")]
    Resource(#[from] ResourceError),
}

enum Slot {
    Waiting {
        sender: oneshot::Sender<Decision>,
        request: LoginRequest,
        expires: Instant,
        /// The code the terminal shows (`ABCDEFGH`, without the dash).
        code: String,
        /// Wrong codes and passwords so far.
        failed: u8,
    },
    Gone {
        why: LinkError,
        since: Instant,
    },
}

enum Decision {
    Approved(String),
    Refused,
    /// Spent by wrong codes or passwords.
    TooManyAttempts,
}

/// Used or expired links remembered at most (only to say why a link no
/// longer works): anyone may start a login, and a client starting and
/// dropping them in a loop would otherwise grow the table for half an hour.
const MAX_REMEMBERED: usize = 4096;

/// The logins by token, and when to next forget what is over.
#[derive(Default)]
struct Slots {
    map: HashMap<String, Slot>,
    /// The size at which a new login first forgets what is over: looking
    /// through the table at every login cost each one more as it grew.
    tidy_at: usize,
}

impl Slots {
    /// Forgets what is long over, and the oldest used or expired links
    /// beyond [`MAX_REMEMBERED`].
    fn tidy(&mut self, now: Instant) {
        self.map.retain(|_, slot| match slot {
            Slot::Waiting { expires, .. } => now < *expires + REMEMBER,
            Slot::Gone { since, .. } => now < *since + REMEMBER,
        });
        let mut gone: Vec<(Instant, String)> = self
            .map
            .iter()
            .filter_map(|(token, slot)| match slot {
                Slot::Gone { since, .. } => Some((*since, token.clone())),
                Slot::Waiting { .. } => None,
            })
            .collect();
        if gone.len() > MAX_REMEMBERED {
            gone.sort_unstable();
            for (_, token) in &gone[..gone.len() - MAX_REMEMBERED] {
                self.map.remove(token);
            }
        }
        self.tidy_at = (self.map.len() * 2).max(64);
    }
}

/// The app's pending browser logins (in memory; clones share them).
#[derive(Clone)]
pub struct BrowserLogins {
    slots: Arc<Mutex<Slots>>,
    lifetime: Duration,
}

impl std::fmt::Debug for BrowserLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserLogins")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Default for BrowserLogins {
    fn default() -> Self {
        BrowserLogins::new(DEFAULT_LINK_LIFETIME)
    }
}

/// A login waiting for its page; dropping it withdraws the link.
#[derive(Debug)]
pub struct PendingLogin {
    token: String,
    /// As the terminal shows it (`ABCD-EFGH`).
    code: String,
    receiver: oneshot::Receiver<Decision>,
    expires: Instant,
    logins: BrowserLogins,
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Approved(_) => f.write_str("Approved"),
            Decision::Refused => f.write_str("Refused"),
            Decision::TooManyAttempts => f.write_str("TooManyAttempts"),
        }
    }
}

/// 128 random bits as 32 hex digits, from the operating system's CSPRNG
/// (by way of a fresh key pair's private half, hashed).
/// A new link's token (128 random bits, hex) and code (40 more bits, eight
/// letters of [`CODE_ALPHABET`]).
fn random_token_and_code() -> Result<(String, String), LoginError> {
    use sha2::{Digest, Sha256};
    let key = terminalwire_protocol::secure::StaticKey::generate()
        .map_err(|error| LoginError::Random(error.to_string()))?;
    let digest = Sha256::digest(key.to_file_text().as_bytes());
    let token = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    // 40 bits, five at a time: each letter equally likely.
    let bits = digest[16..21]
        .iter()
        .fold(0u64, |bits, &byte| bits << 8 | u64::from(byte));
    let code = (0..8)
        .rev()
        .map(|letter| char::from(CODE_ALPHABET[((bits >> (5 * letter)) & 31) as usize]))
        .collect();
    Ok((token, code))
}

/// A code as the user typed it, as it is kept: upper case, without dashes
/// or spaces.
fn normalized_code(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// `code` (`ABCDEFGH`) as the terminal shows it: `ABCD-EFGH`.
fn shown_code(code: &str) -> String {
    match (code.get(..4), code.get(4..)) {
        (Some(first), Some(rest)) => format!("{first}-{rest}"),
        _ => code.to_owned(),
    }
}

/// Text a client chose, as a page may show it: without control, format
/// and bidi characters (which could reorder what the page shows around
/// it), and cut to `max` characters. Device labels are cleaned with it too.
pub(crate) fn shown_text(text: &str, max: usize) -> String {
    let kept: String = text.chars().filter(|&c| !is_hidden(c)).collect();
    crate::devices::cut_at_chars(&kept, max)
}

/// Whether `c` is no visible character of its own: a control character
/// (line breaks, escapes), a line or paragraph separator, a mark that
/// reorders what is shown around it (bidi), or an invisible one (soft
/// hyphen, zero-width characters, byte-order mark). Pages drop them
/// ([`shown_text`]); the log escapes them (`session::said`).
pub(crate) fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

impl BrowserLogins {
    /// Login links valid for `lifetime` each.
    pub fn new(lifetime: Duration) -> Self {
        BrowserLogins {
            slots: Arc::default(),
            lifetime,
        }
    }

    /// How long each link works.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a login for the client of `ctx`: a new one-time token.
    pub fn begin(&self, ctx: &Context) -> Result<PendingLogin, LoginError> {
        let client = ctx.client();
        let described = format!(
            "{} {} ({} {})",
            client.name, client.version, client.os, client.arch
        );
        self.begin_for(LoginRequest::new(described, client.device.clone()))
    }

    /// Starts a login described by `request` (its `expires_in` is ignored).
    pub fn begin_for(&self, request: LoginRequest) -> Result<PendingLogin, LoginError> {
        // The client wrote it; the page shows a line, the table keeps it.
        let request = LoginRequest {
            client: shown_text(&request.client, MAX_CLIENT_CHARS),
            ..request
        };
        let (token, code) = random_token_and_code()?;
        let (sender, receiver) = oneshot::channel();
        let now = Instant::now();
        let expires = now + self.lifetime;
        let mut slots = self.slots();
        if slots.map.len() >= slots.tidy_at {
            slots.tidy(now);
        }
        slots.map.insert(
            token.clone(),
            Slot::Waiting {
                sender,
                request,
                expires,
                code: code.clone(),
                failed: 0,
            },
        );
        drop(slots);
        Ok(PendingLogin {
            token,
            code: shown_code(&code),
            receiver,
            expires,
            logins: self.clone(),
        })
    }

    /// What is waiting behind `token`, for the approval page.
    pub fn request(&self, token: &str) -> Result<LoginRequest, LinkError> {
        let now = Instant::now();
        match self.slots().map.get(token) {
            None => Err(LinkError::Unknown),
            Some(Slot::Gone { why, .. }) => Err(*why),
            Some(Slot::Waiting {
                expires, request, ..
            }) => {
                if now >= *expires {
                    Err(LinkError::Expired)
                } else {
                    Ok(LoginRequest {
                        expires_in: *expires - now,
                        ..request.clone()
                    })
                }
            }
        }
    }

    fn decide(&self, token: &str, decision: Decision) -> Result<(), LinkError> {
        self.decide_as(token, decision, LinkError::Used)
    }

    /// [`decide`](Self::decide), the link then telling `spent` to the page.
    fn decide_as(
        &self,
        token: &str,
        decision: Decision,
        spent: LinkError,
    ) -> Result<(), LinkError> {
        let now = Instant::now();
        let mut slots = self.slots();
        let slot = slots.map.get_mut(token).ok_or(LinkError::Unknown)?;
        let expired = match slot {
            Slot::Gone { why, .. } => return Err(*why),
            Slot::Waiting { expires, .. } => now >= *expires,
        };
        let why = if expired { LinkError::Expired } else { spent };
        let taken = std::mem::replace(slot, Slot::Gone { why, since: now });
        drop(slots);
        match taken {
            Slot::Waiting { .. } if expired => Err(LinkError::Expired),
            Slot::Waiting { sender, .. } => sender.send(decision).map_err(|_| {
                // The command went away meanwhile.
                if let Some(slot) = self.slots().map.get_mut(token) {
                    *slot = Slot::Gone {
                        why: LinkError::Abandoned,
                        since: now,
                    };
                }
                LinkError::Abandoned
            }),
            Slot::Gone { why, .. } => Err(why),
        }
    }

    /// Checks the code the user typed on the page (case, dashes and spaces
    /// aside) against the one the terminal that asked shows. A wrong one
    /// counts against the link's [`MAX_ATTEMPTS`]. Check it before anything
    /// else the page asks for (a password): a link must not let whoever
    /// holds it try passwords.
    pub fn check_code(&self, token: &str, typed: &str) -> Result<(), LinkError> {
        let typed = normalized_code(typed);
        let now = Instant::now();
        let matches = match self.slots().map.get(token) {
            None => return Err(LinkError::Unknown),
            Some(Slot::Gone { why, .. }) => return Err(*why),
            Some(Slot::Waiting { expires, .. }) if now >= *expires => {
                return Err(LinkError::Expired);
            }
            Some(Slot::Waiting { code, .. }) => {
                // Same length and letters, every letter compared.
                code.len() == typed.len()
                    && code
                        .bytes()
                        .zip(typed.bytes())
                        .fold(0u8, |differ, (a, b)| differ | (a ^ b))
                        == 0
            }
        };
        if matches {
            return Ok(());
        }
        let left = self.attempt_failed(token)?;
        Err(LinkError::WrongCode { left })
    }

    /// Counts a failed attempt on the link behind `token` (a wrong
    /// password, say); returns how many are left. The last one spends the
    /// link ([`LinkError::TooManyAttempts`]) and the command that asked
    /// fails with [`LoginError::TooManyAttempts`].
    pub fn attempt_failed(&self, token: &str) -> Result<u8, LinkError> {
        let mut slots = self.slots();
        let failed = match slots.map.get_mut(token) {
            None => return Err(LinkError::Unknown),
            Some(Slot::Gone { why, .. }) => return Err(*why),
            Some(Slot::Waiting { failed, .. }) => {
                *failed = failed.saturating_add(1);
                *failed
            }
        };
        drop(slots);
        if failed < MAX_ATTEMPTS {
            return Ok(MAX_ATTEMPTS - failed);
        }
        match self.decide_as(token, Decision::TooManyAttempts, LinkError::TooManyAttempts) {
            Ok(()) => Err(LinkError::TooManyAttempts),
            Err(why) => Err(why),
        }
    }

    /// Completes the login behind `token` as `subject` (the user the app
    /// authenticated on the page), once `code` is the one the terminal that
    /// asked shows ([`check_code`](Self::check_code)). Works once.
    pub fn approve(&self, token: &str, code: &str, subject: &str) -> Result<(), LinkError> {
        self.check_code(token, code)?;
        self.decide(token, Decision::Approved(subject.to_owned()))
    }

    /// Refuses the login behind `token`; the command fails with
    /// [`LoginError::Refused`].
    pub fn refuse(&self, token: &str) -> Result<(), LinkError> {
        self.decide(token, Decision::Refused)
    }

    fn mark_gone(&self, token: &str, why: LinkError) {
        let mut slots = self.slots();
        if let Some(slot) = slots.map.get_mut(token)
            && let Slot::Waiting { .. } = slot
        {
            *slot = Slot::Gone {
                why,
                since: Instant::now(),
            };
        }
    }

    /// The whole flow for a command: starts a login, opens
    /// `url_for(token)` in the user's browser (printing the URL too, and
    /// only the URL when the browser cannot be opened), waits for the
    /// page's decision, and on approval saves the session with
    /// `issuer` ([`Context::log_in`]). Returns who logged in.
    pub async fn log_in(
        &self,
        ctx: &Context,
        issuer: &TokenIssuer,
        url_for: impl FnOnce(&str) -> String,
    ) -> Result<String, LoginError> {
        let pending = self.begin(ctx)?;
        let url = url_for(pending.token());
        let err = ctx.stderr();
        // Before the browser takes the screen.
        let told = err
            .println(format!(
                "Your login code is {}: type it on the login page to approve.",
                pending.code()
            ))
            .await;
        if told.is_err() {
            return Err(LoginError::Resource(ResourceError::Disconnected));
        }
        let told = match ctx.browser().open(&url).await {
            Ok(()) => {
                err.println(format!(
                    "Opened your browser; waiting for you to approve the login... (or open {url})"
                ))
                .await
            }
            Err(error) => {
                tracing::debug!(%error, "cannot open the browser for a login");
                err.println(format!(
                    "Open this page in your browser to log in: {url}\nWaiting for you to approve the login..."
                ))
                .await
            }
        };
        if told.is_err() {
            return Err(LoginError::Resource(ResourceError::Disconnected));
        }
        let subject = tokio::select! {
            decided = pending.wait() => decided?,
            () = ctx.shutdown_requested() => return Err(LoginError::ShuttingDown),
        };
        ctx.log_in(issuer, &subject).await?;
        Ok(subject)
    }
}

impl PendingLogin {
    /// The one-time token to put in the page's URL.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The code to show in the terminal (`ABCD-EFGH`), which the page asks
    /// the user to type.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Waits (without polling) until the page approves or refuses, or the
    /// link expires. Returns the approved subject.
    pub async fn wait(mut self) -> Result<String, LoginError> {
        match tokio::time::timeout_at(self.expires, &mut self.receiver).await {
            Ok(Ok(Decision::Approved(subject))) => Ok(subject),
            Ok(Ok(Decision::Refused)) => Err(LoginError::Refused),
            Ok(Ok(Decision::TooManyAttempts)) => Err(LoginError::TooManyAttempts),
            Ok(Err(_)) | Err(_) => {
                self.logins.mark_gone(&self.token, LinkError::Expired);
                Err(LoginError::Expired)
            }
        }
    }
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        // Still waiting: the command went away (interrupted, disconnected).
        let why = if Instant::now() >= self.expires {
            LinkError::Expired
        } else {
            LinkError::Abandoned
        };
        self.logins.mark_gone(&self.token, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_started_and_dropped_in_a_loop_keep_the_table_bounded() {
        let logins = BrowserLogins::default();
        let waiting = logins.begin_for(request()).unwrap();
        let mut last = String::new();
        for _ in 0..2 * MAX_REMEMBERED + 100 {
            let pending = logins.begin_for(request()).unwrap();
            last.clone_from(&pending.token);
        }
        let size = logins.slots().map.len();
        assert!(size <= 2 * MAX_REMEMBERED + 64, "{size} logins kept");
        // The newest dropped link still says why; the one still waiting
        // was never forgotten.
        assert_eq!(logins.request(&last), Err(LinkError::Abandoned));
        assert!(logins.request(&waiting.token).is_ok());
    }

    fn request() -> LoginRequest {
        LoginRequest::new(
            "terminalwire 0.1.0 (linux x86_64)",
            Some("SHA256:dev".into()),
        )
    }

    #[tokio::test]
    async fn an_approved_link_completes_the_wait_once() {
        let logins = BrowserLogins::new(Duration::from_secs(60));
        let pending = logins.begin_for(request()).unwrap();
        let token = pending.token().to_owned();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let shown = logins.request(&token).unwrap();
        assert_eq!(shown.device.as_deref(), Some("SHA256:dev"));
        assert!(shown.expires_in <= Duration::from_secs(60));
        let code = pending.code().to_owned();
        let waiting = tokio::spawn(pending.wait());
        // Typed as people type it.
        let typed = code.to_lowercase().replace('-', " ");
        assert_eq!(logins.approve(&token, &typed, "ada"), Ok(()));
        assert_eq!(waiting.await.unwrap().unwrap(), "ada");
        assert_eq!(logins.approve(&token, &code, "eve"), Err(LinkError::Used));
        assert_eq!(logins.request(&token), Err(LinkError::Used));
        assert_eq!(
            logins.approve("0123", &code, "eve"),
            Err(LinkError::Unknown)
        );
    }

    #[tokio::test]
    async fn tokens_differ() {
        let logins = BrowserLogins::default();
        let a = logins.begin_for(request()).unwrap();
        let b = logins.begin_for(request()).unwrap();
        assert_ne!(a.token(), b.token());
    }

    #[tokio::test]
    async fn a_refused_link_fails_the_wait() {
        let logins = BrowserLogins::default();
        let pending = logins.begin_for(request()).unwrap();
        let token = pending.token().to_owned();
        assert_eq!(logins.refuse(&token), Ok(()));
        assert!(matches!(pending.wait().await, Err(LoginError::Refused)));
        assert_eq!(logins.approve(&token, "x", "ada"), Err(LinkError::Used));
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_expires() {
        let logins = BrowserLogins::new(Duration::from_secs(300));
        let pending = logins.begin_for(request()).unwrap();
        let token = pending.token().to_owned();
        let started = Instant::now();
        assert!(matches!(pending.wait().await, Err(LoginError::Expired)));
        assert!(started.elapsed() >= Duration::from_secs(300));
        assert_eq!(logins.request(&token), Err(LinkError::Expired));
        assert_eq!(logins.approve(&token, "x", "ada"), Err(LinkError::Expired));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_link_cannot_be_approved_before_the_wait_notices() {
        let logins = BrowserLogins::new(Duration::from_secs(10));
        let pending = logins.begin_for(request()).unwrap();
        let token = pending.token().to_owned();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(logins.request(&token), Err(LinkError::Expired));
        let code = pending.code().to_owned();
        assert_eq!(
            logins.approve(&token, &code, "ada"),
            Err(LinkError::Expired)
        );
        assert!(matches!(pending.wait().await, Err(LoginError::Expired)));
    }

    #[tokio::test]
    async fn an_abandoned_link_says_so() {
        let logins = BrowserLogins::default();
        let pending = logins.begin_for(request()).unwrap();
        let token = pending.token().to_owned();
        drop(pending);
        assert_eq!(logins.request(&token), Err(LinkError::Abandoned));
        assert_eq!(
            logins.approve(&token, "x", "ada"),
            Err(LinkError::Abandoned)
        );
    }

    /// A link someone else started cannot be approved without the code
    /// their terminal shows: wrong codes, and failures the app counts,
    /// spend it after `MAX_ATTEMPTS`, and the command that asked fails.
    #[tokio::test]
    async fn a_link_takes_a_few_wrong_codes_or_passwords_then_is_spent() {
        let logins = BrowserLogins::default();
        let pending = logins.begin_for(request()).unwrap();
        let token = pending.token().to_owned();
        let code = pending.code().to_owned();
        let wrong = if code.starts_with('A') {
            "BBBB-BBBB"
        } else {
            "AAAA-AAAA"
        };
        assert_eq!(
            logins.approve(&token, wrong, "ada"),
            Err(LinkError::WrongCode {
                left: MAX_ATTEMPTS - 1
            })
        );
        // A wrong password the app checked counts too.
        assert_eq!(logins.attempt_failed(&token), Ok(MAX_ATTEMPTS - 2));
        for left in (1..MAX_ATTEMPTS - 2).rev() {
            assert_eq!(
                logins.check_code(&token, wrong),
                Err(LinkError::WrongCode { left })
            );
        }
        assert_eq!(
            logins.check_code(&token, wrong),
            Err(LinkError::TooManyAttempts)
        );
        assert_eq!(
            logins.approve(&token, &code, "ada"),
            Err(LinkError::TooManyAttempts)
        );
        assert_eq!(logins.request(&token), Err(LinkError::TooManyAttempts));
        assert!(matches!(
            pending.wait().await,
            Err(LoginError::TooManyAttempts)
        ));
    }

    #[test]
    fn codes_are_eight_unambiguous_letters_shown_in_two_halves() {
        let logins = BrowserLogins::default();
        let codes: Vec<String> = (0..64)
            .map(|_| logins.begin_for(request()).unwrap().code().to_owned())
            .collect();
        for code in &codes {
            let (first, rest) = code.split_once('-').unwrap();
            assert_eq!((first.len(), rest.len()), (4, 4), "{code}");
            assert!(
                first
                    .bytes()
                    .chain(rest.bytes())
                    .all(|b| CODE_ALPHABET.contains(&b)),
                "{code}"
            );
        }
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), codes.len());
    }

    /// What the client says of itself reaches the page without characters
    /// that would reorder or hide what the page shows around it.
    #[test]
    fn the_clients_words_reach_the_page_without_bidi_or_invisible_characters() {
        let logins = BrowserLogins::default();
        let asked = LoginRequest::new(
            "laptop \u{202e}evorppa\u{202c} \u{200b}x\u{1b}[2J\n",
            Some("SHA256:dev".into()),
        );
        let pending = logins.begin_for(asked).unwrap();
        let shown = logins.request(pending.token()).unwrap();
        assert_eq!(shown.client, "laptop evorppa x[2J");
    }
}
