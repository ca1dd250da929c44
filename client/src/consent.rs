//! Consent prompts drawn by the client itself.
//!
//! When a server asks for something the user has not granted, and the
//! client has an interactive terminal, the client asks on `/dev/tty` —
//! with the server's output paused, so the app cannot draw a fake prompt
//! beside it — whether to allow it once, always (written to the policy
//! file, exactly the grant the denial suggests), or deny. Without a
//! terminal, or with `TERMINALWIRE_NO_PROMPT=1`, nothing is asked: the
//! denial stands with its grant command. Prompts cannot be flooded: a
//! request is asked about once a session, a "deny" also covers every later
//! request that would need the same grant (`~/docs/a0`, `~/docs/a1`, ...
//! all suggest `~/docs/**`), and after [`MAX_DENIALS`] denials the session
//! asks no more. An "always" whose grant cannot be saved (a lock or policy
//! file of another user's, a full disk) allows the request once, and the
//! client says why on the terminal. An answer that is not one of the choices (a `y`, say:
//! neither "once" nor "always" is a yes) is asked again with the choices
//! spelled out, at most [`MAX_UNCLEAR`] times; Enter alone denies.
//!
//! A prompt gives up, as sudo's password prompt does, when nobody answers
//! within its time-out ([`DEFAULT_PROMPT_TIMEOUT`], or `--prompt-timeout`
//! or `TERMINALWIRE_PROMPT_TIMEOUT` seconds; 0 waits as long as it takes): it
//! denies, never allows. The prompt's own thread waits with `poll()` on the
//! terminal, so no thread is left reading the user's next keys; what was
//! typed and not sent by then is dropped, the line finished with a note
//! ("no answer in 5 minutes: denied"), and the app told that the user did
//! not answer, not that they refused. The session then asks no more: the
//! user is away, and every later prompt would hold the session (the server's
//! too, and the output queued behind it) for another time-out; later
//! requests are denied as without a terminal, with their grant commands.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use terminalwire_policy::grant::{Access, PathGrant, PathPattern};
use terminalwire_policy::{Entitlements, Grant, Home, Policy, PolicyError};
use terminalwire_protocol::frame::Denial;
use url::Url;

/// What the user answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Allow this one request.
    Once,
    /// Allow it from now on (grant written to the policy file).
    Always,
    /// Refuse it.
    Deny,
}

/// How long a prompt waits for an answer when neither `--prompt-timeout`
/// nor `TERMINALWIRE_PROMPT_TIMEOUT` says: five minutes (sudo's
/// password prompt waits as long).
pub const DEFAULT_PROMPT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How a prompt on the terminal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The user answered (a deny included: Enter alone, unclear answers,
    /// the end of the terminal's input).
    Answered(Answer),
    /// Nobody answered within the time-out: denied.
    NotAnswered,
}

impl From<Answer> for Reply {
    fn from(answer: Answer) -> Reply {
        Reply::Answered(answer)
    }
}

/// Denials after which a session stops asking: an app that keeps asking
/// for what the user refused is not asking in good faith.
pub const MAX_DENIALS: usize = 3;

/// Answers that are not one of the choices after which a prompt denies.
pub const MAX_UNCLEAR: usize = 3;

/// The reason a request the user refused at the prompt is denied with.
pub const DENIED_BY_USER: &str = "you denied it";

/// The reason a request is denied with when the user refused the same
/// grant earlier in the session (it is not asked again).
pub const DENIED_BY_USER_BEFORE: &str = "you denied it earlier in this session";

/// The reason a request is denied with when its prompt got no answer
/// within `waited`: "you did not answer in 5 minutes".
pub fn not_answered(waited: Duration) -> String {
    format!("you did not answer in {}", spoken(waited))
}

/// `duration` as said in a sentence: "5 minutes", "1 second", "2.5
/// seconds", "1 hour".
fn spoken(duration: Duration) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    let seconds = duration.as_secs();
    if duration.subsec_nanos() != 0 {
        format!("{} seconds", duration.as_secs_f64())
    } else if seconds >= 3600 && seconds.is_multiple_of(3600) {
        plural(seconds / 3600, "hour")
    } else if seconds >= 60 && seconds.is_multiple_of(60) {
        plural(seconds / 60, "minute")
    } else {
        plural(seconds, "second")
    }
}

/// What came of a denial the client may have asked the user about.
#[derive(Debug)]
pub enum Outcome {
    /// The user allowed it: the entitlements that allow the request (for
    /// [`Answer::Once`], meant for this one request only).
    Allowed(Answer, Arc<Entitlements>),
    /// The user denied it: at this prompt, or (`earlier`) the same grant at
    /// an earlier one, so it was not asked again.
    DeniedByUser {
        /// Refused at an earlier prompt of this session.
        earlier: bool,
    },
    /// Nobody answered the prompt within `waited`: denied, and the session
    /// asks no more.
    NotAnswered {
        /// The prompt's time-out.
        waited: Duration,
    },
    /// Nothing changes: not asked (no grant to offer, asked before, too
    /// many denials), the prompt failed, or the grant could not be made.
    Unchanged,
}

/// What a session has asked about and been told.
#[derive(Debug, Default)]
struct Asked {
    /// Requests already asked about.
    requests: HashSet<String>,
    /// Grant commands the user refused.
    refused_grants: HashSet<String>,
    /// Refusals so far.
    denials: usize,
    /// A prompt got no answer in time: the user is away, nothing more is
    /// asked.
    not_answered: bool,
}

/// Everything needed to ask, and to rebuild the entitlements after a yes.
pub struct Consent {
    url: Url,
    home: Home,
    user_home: PathBuf,
    client_binaries: Vec<PathBuf>,
    /// Grants for this session only ("allow once").
    session: Mutex<Policy>,
    /// What this session has asked about and been told.
    asked: Mutex<Asked>,
    /// Held for writing while a prompt is on screen: the server's output
    /// waits.
    pub gate: Arc<tokio::sync::RwLock<()>>,
    /// Serialises prompts.
    one_prompt: tokio::sync::Mutex<()>,
    /// The session's progress bars, taken off the screen for a prompt.
    progress: std::sync::OnceLock<crate::progress::Progress>,
    /// How long a prompt waits for an answer; `None`: as long as it takes.
    timeout: Option<Duration>,
    /// Answers given instead of asking on the terminal, for tests.
    #[cfg(test)]
    pub(crate) scripted: Mutex<std::collections::VecDeque<Reply>>,
    /// What [`tell`](Consent::tell) would have written on the terminal, in tests.
    #[cfg(test)]
    pub(crate) told: Mutex<Vec<String>>,
    /// Whether setting the terminal for a prompt fails, in tests.
    #[cfg(test)]
    pub(crate) terminal_unsettable: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Consent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consent")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Consent {
    /// Prompts for the server at `url`.
    pub fn new(url: Url, home: Home, user_home: PathBuf, client_binaries: Vec<PathBuf>) -> Self {
        Consent {
            url,
            home,
            user_home,
            client_binaries,
            session: Mutex::new(Policy::default()),
            asked: Mutex::default(),
            gate: Arc::default(),
            progress: std::sync::OnceLock::new(),
            timeout: Some(DEFAULT_PROMPT_TIMEOUT),
            one_prompt: tokio::sync::Mutex::new(()),
            #[cfg(test)]
            scripted: Mutex::default(),
            #[cfg(test)]
            told: Mutex::default(),
            #[cfg(test)]
            terminal_unsettable: Default::default(),
        }
    }

    /// The terminal as found (cooked, with echo) while the result lives.
    fn as_found(&self) -> io::Result<crate::terminal::AsFound> {
        #[cfg(test)]
        if self
            .terminal_unsettable
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(io::Error::other("the terminal could not be set"));
        }
        crate::terminal::AsFound::begin()
    }

    /// Prompts that wait `timeout` for an answer (`None`: as long as it
    /// takes) instead of [`DEFAULT_PROMPT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The progress bars a prompt takes off the screen (set once).
    pub fn show_progress(&self, progress: crate::progress::Progress) {
        let _ = self.progress.set(progress);
    }

    /// Whether prompts are possible and wanted here.
    pub fn available() -> bool {
        use std::io::IsTerminal;
        let disabled = std::env::var_os("TERMINALWIRE_NO_PROMPT")
            .is_some_and(|value| no_prompt_means_yes(&value.to_string_lossy()));
        !disabled
            && std::io::stdin().is_terminal()
            && std::io::stderr().is_terminal()
            && std::fs::File::open("/dev/tty").is_ok()
    }

    /// Asks about `denial` unless it was asked before in this session, and
    /// says what came of it.
    pub async fn ask(self: &Arc<Self>, denial: &Denial) -> Outcome {
        let Some(command) = denial.command.clone() else {
            return Outcome::Unchanged;
        };
        let key = format!(
            "{}\u{0}{}\u{0}{}",
            denial.resource, denial.action, denial.target
        );
        let _one = self.one_prompt.lock().await;
        {
            let mut asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
            if asked.refused_grants.contains(&command) {
                return Outcome::DeniedByUser { earlier: true };
            }
            if asked.denials >= MAX_DENIALS || asked.not_answered || !asked.requests.insert(key) {
                return Outcome::Unchanged;
            }
        }
        // Not while the user types a password (its echo is off, and what
        // they type is meant for the app).
        // The server's output waits while the prompt is on screen. A
        // password read begun meanwhile waits behind it to show its prompt:
        // it goes first.
        let _paused = loop {
            crate::terminal::password_reads_done().await;
            let paused = self.gate.write().await;
            if !crate::terminal::password_read_in_progress() {
                break paused;
            }
        };
        // Bars drawn before would otherwise stay above the prompt, and
        // their next redraw clear its lines.
        if let Some(progress) = self.progress.get() {
            progress.hide();
        }
        // Cooked, with echo, whatever the app asked for; its modes come
        // back after. Left in the app's raw mode, a prompt would never see
        // the end of a line (and the app's key reader would get the
        // answer): it is not shown.
        let as_found = self.as_found().inspect_err(|error| {
            tracing::warn!(%error, "the terminal could not be set for a consent prompt");
        });
        let question = question(self.url.as_str(), denial, &command);
        #[cfg(test)]
        let scripted = self
            .scripted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        #[cfg(not(test))]
        let scripted = None;
        // A prompt that could not be shown or read denies, as a deny does
        // (and is not asked again), but not in the user's name.
        let timeout = self.timeout;
        let reply = match (scripted, &as_found) {
            (_, Err(_)) => None,
            (Some(reply), Ok(_)) => Some(reply),
            (None, Ok(_)) => {
                prompt_answer(tokio::task::spawn_blocking(move || prompt(&question, timeout)).await)
            }
        };
        drop(as_found);
        let answer = match reply {
            Some(Reply::NotAnswered) => {
                // Not a refusal: the user is away. Asking on would hold the
                // session another time-out for each request (see the
                // module's docs).
                self.asked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .not_answered = true;
                return Outcome::NotAnswered {
                    waited: timeout.unwrap_or_default(),
                };
            }
            Some(Reply::Answered(answer)) => Some(answer),
            None => None,
        };
        match answer {
            None | Some(Answer::Deny) => {
                let mut asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
                asked.denials += 1;
                asked.refused_grants.insert(command);
                if answer.is_some() {
                    Outcome::DeniedByUser { earlier: false }
                } else {
                    Outcome::Unchanged
                }
            }
            Some(Answer::Once) => {
                let Some(grant) = once_grant(denial, &command, &self.user_home) else {
                    return Outcome::Unchanged;
                };
                match self.rebuild(Some(grant)) {
                    Ok(entitlements) => Outcome::Allowed(Answer::Once, Arc::new(entitlements)),
                    Err(_) => Outcome::Unchanged,
                }
            }
            Some(Answer::Always) => {
                let Some(grant) = grant_of(&command) else {
                    return Outcome::Unchanged;
                };
                let Ok(authority) = terminalwire_policy::Authority::from_url(&self.url) else {
                    return Outcome::Unchanged;
                };
                let path = self.home.policy_file(&authority);
                // Under the file's lock, on the file as it is then: saved
                // from a copy loaded without it, the grant undid a revoke
                // (or lost a grant) made meanwhile by `terminalwire
                // entitlement` or another session. Off the runtime: it may
                // wait for another client to release the lock.
                let saved = tokio::task::spawn_blocking(move || {
                    Policy::update(&path, |policy| {
                        Ok::<_, PolicyError>(policy.grant(grant.clone()))
                    })
                })
                .await;
                match saved {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        // The user allowed it: a grant that cannot be kept
                        // still allows this request, and the user is told
                        // why it was not kept (a lock or policy file of
                        // another user's, a full disk), not left to find
                        // out at the next prompt.
                        let why = crate::policy_error(&self.home, error);
                        tracing::warn!(%why, "cannot save the grant");
                        let once = once_grant(denial, &command, &self.user_home)
                            .and_then(|grant| self.rebuild(Some(grant)).ok());
                        return match once {
                            Some(entitlements) => {
                                self.tell(&format!(
                                    "allowed this once only: the grant could not be saved: {why}"
                                ));
                                Outcome::Allowed(Answer::Once, Arc::new(entitlements))
                            }
                            None => {
                                self.tell(&format!(
                                    "the grant could not be saved, and the request stays denied: {why}"
                                ));
                                Outcome::Unchanged
                            }
                        };
                    }
                    Err(error) => {
                        // A panic (a bug) ends the session, as one in a
                        // request does.
                        let error = crate::resources::panicked_again(error);
                        tracing::warn!(%error, "cannot save the grant");
                        return Outcome::Unchanged;
                    }
                }
                match self.rebuild(None) {
                    Ok(entitlements) => Outcome::Allowed(Answer::Always, Arc::new(entitlements)),
                    Err(_) => Outcome::Unchanged,
                }
            }
        }
    }

    /// Tells the user something about their answer, on the terminal the
    /// prompt was on (the server's output is still paused).
    fn tell(&self, note: &str) {
        #[cfg(test)]
        self.told
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(note.to_owned());
        #[cfg(not(test))]
        if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
            // `\r\n`: the app's raw mode may be back already.
            let _ = write!(
                tty,
                "\x1b[7m terminalwire \x1b[0m {}\r\n",
                crate::inert::inert(note)
            );
        }
    }

    /// The entitlements from the policy file plus this session's grants,
    /// plus `extra` when given.
    fn rebuild(&self, extra: Option<Grant>) -> Result<Entitlements, String> {
        let authority =
            terminalwire_policy::Authority::from_url(&self.url).map_err(|e| e.to_string())?;
        let mut policy = Policy::load(&self.home.policy_file(&authority))
            .map_err(|error| crate::policy_error(&self.home, error).to_string())?;
        let session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        for grant in &session.paths {
            policy.grant(Grant::Path(grant.clone()));
        }
        for grant in &session.env {
            policy.grant(Grant::Env(grant.name.clone()));
        }
        for grant in &session.browser {
            policy.grant(Grant::Browser(grant.target.clone()));
        }
        drop(session);
        if let Some(extra) = extra {
            policy.grant(extra);
        }
        Entitlements::new(
            &self.url,
            &self.home,
            &policy,
            &self.user_home,
            &self.client_binaries,
        )
        .map_err(|e| e.to_string())
    }
}

/// Written before every prompt. The server's output may have left the
/// terminal hiding or garbling text (foreground set to the background
/// colour, concealed text, line-drawing characters, a hidden cursor, lines
/// cut at the margin); this restores what can be restored without moving
/// the cursor or clearing the screen.
pub(crate) const TERMINAL_RESET: &str = concat!(
    "\x0f",           // SI: the G0 character set
    "\x1b(B",         // G0 is ASCII, not line drawing
    "\x1b[0m",        // no colours, no concealed, reversed or blinking text
    "\x1b]104\x1b\\", // the default palette
    "\x1b]110\x1b\\", // the default foreground colour
    "\x1b]111\x1b\\", // the default background colour
    "\x1b]112\x1b\\", // the default cursor colour
    "\x1b[?5l",       // the screen not reversed
    "\x1b[?25h",      // the cursor shown
    "\x1b[?7h",       // long lines wrap instead of being cut at the margin
    "\x1b[4l",        // text replaces, not inserts
);

/// The prompt's text. Everything in it the server chose (the target, whose
/// last parts are the server's even when resolved, the reason, the grant
/// command that quotes the target) is made [`inert`](crate::inert): it
/// cannot move the cursor, recolour or reorder the prompt. The grant
/// "always" writes has a line of its own, so it cannot hide in a long line.
fn question(url: &str, denial: &Denial, command: &str) -> String {
    use crate::inert::inert;
    format!(
        "\r\n\x1b[7m terminalwire \x1b[0m \x1b[1mYOUR CLIENT asks (not the app):\x1b[0m\r\n\
         \x20 {} wants to {} {} \x1b[1m{}\x1b[0m\r\n\
         \x20 ({})\r\n\
         \x20 [a] always writes this grant to your policy file:\r\n\
         \x20     \x1b[1m{}\x1b[0m\r\n\
         \x20 [o] allow once   [a] always   [d] deny (default)\r\n",
        inert(url),
        inert(&denial.action),
        inert(&denial.resource),
        inert(&denial.target),
        inert(&denial.reason),
        inert(command),
    )
}

/// Whether a `TERMINALWIRE_NO_PROMPT` of `value` turns prompts off: any
/// value but an empty one, `0`, `false`, `no` or `off` (in any case).
fn no_prompt_means_yes(value: &str) -> bool {
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "false" | "no" | "off"
    )
}

/// The user's answer, if the prompt could be shown and read. A panic on the
/// prompt's thread (a bug) goes on in the caller's task, which ends the
/// session (status 70), as one in a request does: taken for a prompt that
/// could not be shown, the session went on under a terminal the panic hook
/// had restored.
fn prompt_answer(joined: Result<io::Result<Reply>, tokio::task::JoinError>) -> Option<Reply> {
    joined
        .map_err(crate::resources::panicked_again)
        .ok()
        .and_then(Result::ok)
}

/// Shows the question on the controlling terminal and reads the answer,
/// waiting at most `timeout` for it (`None`: as long as it takes).
fn prompt(question: &str, timeout: Option<Duration>) -> io::Result<Reply> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    // Keys typed ahead, or a terminal's replies to queries in the server's
    // output (a window title sent back, say), must not answer for the user.
    let _ = rustix::termios::tcflush(&tty, rustix::termios::QueueSelector::IFlush);
    converse(&tty, question, timeout)
}

/// The terminal a prompt is on.
trait Keyboard: io::Read + Write {
    /// Waits until there is something to read (input, its end, or an error
    /// the read will tell), or until `deadline` (`None`: no deadline).
    /// Whether there is.
    fn wait_for_input(&mut self, deadline: Option<Instant>) -> io::Result<bool>;

    /// Drops what was typed and not read, a line not finished with Enter
    /// included.
    fn discard_input(&mut self);

    /// Waits [`SETTLE`] after the question shows, then drops what was
    /// typed meanwhile: keys on their way when it came up were meant for
    /// the app.
    fn settle(&mut self);

    /// Turns the terminal's echo on or off; whether it was on. Off while
    /// the question settles: keys typed then are dropped, and shown beside
    /// the question they looked taken.
    fn echo(&mut self, on: bool) -> bool;
}

/// How long a question is on screen before its choice line shows and an
/// answer is read; what is typed before is dropped. An app sees every key
/// in raw mode: it can bring a prompt up just as the user types `a` and
/// Enter for it, and that `a` and Enter, already on their way, granted
/// "always". (Browsers hold their permission buttons off as long.)
pub const SETTLE: Duration = Duration::from_secs(1);

/// [`SETTLE`], or in debug builds `TERMINALWIRE_DEBUG_PROMPT_SETTLE_MS`
/// milliseconds, for the end-to-end tests.
fn settle_time() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("TERMINALWIRE_DEBUG_PROMPT_SETTLE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    SETTLE
}

impl Keyboard for &std::fs::File {
    fn wait_for_input(&mut self, deadline: Option<Instant>) -> io::Result<bool> {
        use rustix::event::{PollFd, PollFlags, Timespec};
        loop {
            let left = match deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    Some(Timespec::try_from(left).map_err(io::Error::other)?)
                }
            };
            let mut fds = [PollFd::new(*self, PollFlags::IN)];
            match rustix::event::poll(&mut fds, left.as_ref()) {
                Ok(0) if deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
                    return Ok(false);
                }
                Ok(0) => {}
                Ok(_) => return Ok(true),
                // A signal (a resize, Ctrl-C): wait on, for what is left.
                Err(rustix::io::Errno::INTR) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    fn discard_input(&mut self) {
        // Canonical mode keeps a line not finished with Enter for later: it
        // would reach the app (at once, if it is in raw mode) or the next
        // prompt.
        let _ = rustix::termios::tcflush(*self, rustix::termios::QueueSelector::IFlush);
    }

    fn settle(&mut self) {
        std::thread::sleep(settle_time());
        self.discard_input();
    }

    fn echo(&mut self, on: bool) -> bool {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let Ok(mut settings) = tcgetattr(*self) else {
            return false;
        };
        let was = settings.local_modes.contains(LocalModes::ECHO);
        settings.local_modes.set(LocalModes::ECHO, on);
        let _ = tcsetattr(*self, OptionalActions::Now, &settings);
        was
    }
}

/// The line the answer is typed on, asked again after an unclear answer.
const YOUR_CHOICE: &str = "\x1b[7m terminalwire \x1b[0m your choice: ";

/// What came of waiting for a line.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line (with its `\n`, unless it ended the input).
    Read(String),
    /// The end of the input.
    End,
    /// Nothing by the deadline.
    Late,
}

/// Reads lines from a terminal, each waited for until a deadline. Nothing
/// is read before there is something to read: a thread never stays blocked
/// reading after a deadline, and the user's next keys are not taken.
#[derive(Debug, Default)]
struct Lines {
    /// Read past the last line's end (the terminal gives a line a read; a
    /// pipe gives what it has).
    pending: Vec<u8>,
}

impl Lines {
    /// The next line from `tty`, if it comes by `deadline`.
    fn next(&mut self, tty: &mut impl Keyboard, deadline: Option<Instant>) -> io::Result<Line> {
        loop {
            if let Some(end) = self.pending.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(Line::Read(String::from_utf8_lossy(&line).into_owned()));
            }
            if !tty.wait_for_input(deadline)? {
                self.pending.clear();
                return Ok(Line::Late);
            }
            let mut buffer = [0; 256];
            match tty.read(&mut buffer) {
                Ok(0) if self.pending.is_empty() => return Ok(Line::End),
                Ok(0) => {
                    let line = std::mem::take(&mut self.pending);
                    return Ok(Line::Read(String::from_utf8_lossy(&line).into_owned()));
                }
                Ok(read) => self.pending.extend_from_slice(&buffer[..read]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}

/// Resets the terminal, asks `question` on `tty` and reads the answer,
/// waiting `timeout` for each (`None`: as long as it takes). An answer that
/// is not one of the choices is asked again, with the choices spelled out,
/// [`MAX_UNCLEAR`] times at most; then, or at the end of the input, it is a
/// deny. No answer in time is [`Reply::NotAnswered`]: what was typed of one
/// is dropped, and the prompt's line finished with a note that says so.
fn converse(
    mut tty: impl Keyboard,
    question: &str,
    timeout: Option<Duration>,
) -> io::Result<Reply> {
    // Echo off before the question shows: keys on their way as it comes
    // up are dropped, and must not look taken.
    let echoed = tty.echo(false);
    let asked = (|| {
        tty.write_all(TERMINAL_RESET.as_bytes())?;
        tty.write_all(question.as_bytes())?;
        tty.flush()
    })();
    if asked.is_ok() {
        tty.settle();
    }
    if echoed {
        tty.echo(true);
    }
    asked?;
    tty.write_all(YOUR_CHOICE.as_bytes())?;
    tty.flush()?;
    let mut lines = Lines::default();
    for unclear in 1..=MAX_UNCLEAR {
        // A time-out too long to be a deadline (`Consent::with_timeout`
        // takes any) waits as long as it takes.
        let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
        let line = match lines.next(&mut tty, deadline)? {
            Line::Read(line) => line,
            Line::End => return Ok(Reply::Answered(Answer::Deny)),
            Line::Late => {
                tty.discard_input();
                write!(
                    tty,
                    "\r\n  no answer in {}: denied\r\n",
                    spoken(timeout.unwrap_or_default())
                )?;
                tty.flush()?;
                return Ok(Reply::NotAnswered);
            }
        };
        if let Some(answer) = answer_of(&line) {
            return Ok(Reply::Answered(answer));
        }
        let typed: String = line.trim().chars().take(40).collect();
        write!(
            tty,
            "  `{}` is not one of the choices: type o to allow once, a to allow always, \
             d to deny (Enter alone denies)\r\n",
            crate::inert::inert(&typed),
        )?;
        if unclear == MAX_UNCLEAR {
            write!(
                tty,
                "  denied after {MAX_UNCLEAR} answers that are not choices\r\n"
            )?;
        } else {
            tty.write_all(YOUR_CHOICE.as_bytes())?;
        }
        tty.flush()?;
    }
    Ok(Reply::Answered(Answer::Deny))
}

/// The answer `line` gives, if it is one of the choices. A yes (`y`) is
/// not: it does not say whether once or always.
fn answer_of(line: &str) -> Option<Answer> {
    match line.trim().to_ascii_lowercase().as_str() {
        "o" | "once" => Some(Answer::Once),
        "a" | "always" => Some(Answer::Always),
        "" | "d" | "deny" | "n" | "no" => Some(Answer::Deny),
        _ => None,
    }
}

/// Splits a suggested command the way a shell would (it only uses single
/// quotes) and parses its grant.
fn grant_of(command: &str) -> Option<Grant> {
    let words = shell_words(command)?;
    crate::admin::grant_from_words(&words)
}

/// For "once": the exact target, with the access of the suggestion.
fn once_grant(denial: &Denial, command: &str, _user_home: &std::path::Path) -> Option<Grant> {
    let suggested = grant_of(command)?;
    match suggested {
        Grant::Path(grant) => {
            let exact = escape_glob(&denial.target);
            Some(Grant::Path(PathGrant {
                pattern: PathPattern::parse(&exact).ok()?,
                access: if grant.access == Access::Read {
                    Access::Read
                } else {
                    grant.access
                },
                mode: grant.mode,
            }))
        }
        other => Some(other),
    }
}

fn escape_glob(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            out.push('[');
            out.push(c);
            out.push(']');
        } else {
            out.push(c);
        }
    }
    out
}

fn shell_words(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => current.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                current.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        words.push(current);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prompt_is_off_for_the_usual_ways_of_saying_no() {
        for off in ["", "0", "false", "FALSE", "no", "off", " Off "] {
            assert!(!no_prompt_means_yes(off), "{off:?}");
        }
        for on in ["1", "true", "yes", "on", "anything"] {
            assert!(no_prompt_means_yes(on), "{on:?}");
        }
    }

    #[tokio::test]
    async fn a_panic_on_the_prompts_thread_goes_on_in_the_task() {
        let joined =
            tokio::task::spawn_blocking(|| -> io::Result<Reply> { panic!("a bug in the prompt") })
                .await;
        let resumed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || prompt_answer(joined)));
        assert!(resumed.is_err(), "the panic was taken for no answer");
        let unreadable = tokio::task::spawn_blocking(|| -> io::Result<Reply> {
            Err(io::Error::other("no terminal"))
        })
        .await;
        assert_eq!(prompt_answer(unreadable), None);
    }

    #[test]
    fn suggested_commands_parse_back_into_grants() {
        let grant = grant_of(
            "terminalwire entitlement grant 127.0.0.1:3000 path '~/my reports/**' --write",
        )
        .unwrap();
        let Grant::Path(grant) = grant else {
            panic!("a path grant")
        };
        assert_eq!(grant.pattern.as_str(), "~/my reports/**");
        assert_eq!(grant.access, Access::Write);
        // The exact paths suggested in the home itself and above it.
        for exact in ["~/notes.txt", "~", "/x.txt"] {
            let command =
                format!("terminalwire entitlement grant 127.0.0.1:3000 path '{exact}' --write");
            let Some(Grant::Path(grant)) = grant_of(&command) else {
                panic!("{command} is not a path grant")
            };
            assert_eq!(grant.pattern.as_str(), exact);
        }
        assert!(matches!(
            grant_of("terminalwire entitlement grant example.com env 'EDITOR'"),
            Some(Grant::Env(_))
        ));
        assert!(grant_of("rm -rf /").is_none());
        assert_eq!(
            shell_words("a 'b c' d\\ e").unwrap(),
            vec!["a", "b c", "d e"]
        );
        assert!(shell_words("a 'unterminated").is_none());
    }

    /// A path whose last part (the server's) tries to redraw the prompt:
    /// erase the line, move up, write a harmless request over it, set the
    /// background colour, reverse the rest with bidi controls.
    const HOSTILE_TARGET: &str = "/home/u/.ssh/x\r\x1b[2K\x1b[1A\x1b[0m  wants to read path ~/notes.txt\u{9b}8m\x1b]11;#ffffff\x07\u{202e}txt.ssh\u{2066}\u{200b}";

    fn hostile_denial() -> (Denial, String) {
        let denial = Denial {
            resource: "path".into(),
            action: "write".into(),
            target: HOSTILE_TARGET.into(),
            reason: "not granted\x1b[8m".into(),
            command: None,
        };
        let command =
            format!("terminalwire entitlement grant h path '{HOSTILE_TARGET}/**' --write");
        (denial, command)
    }

    #[test]
    fn server_text_in_the_prompt_is_shown_escaped_and_cannot_redraw_it() {
        let (denial, command) = hostile_denial();
        let question = question("ws://h/terminal", &denial, &command);
        // Only the client's own styling is left; no other escape, control
        // or bidi character, and line breaks are the client's "\r\n".
        let mut bare = question.clone();
        for own in ["\x1b[7m", "\x1b[1m", "\x1b[0m", "\r\n"] {
            bare = bare.replace(own, "");
        }
        let left: Vec<char> = bare
            .chars()
            .filter(|&c| crate::inert::is_unsafe(c))
            .collect();
        assert!(left.is_empty(), "raw {left:?} in {question:?}");
        // The target is there, visibly escaped.
        let shown = crate::inert::inert(HOSTILE_TARGET);
        assert!(shown.contains("\\u{1b}[2K\\u{1b}[1A"), "{shown}");
        assert!(shown.contains("\\u{202e}txt.ssh\\u{2066}"), "{shown}");
        assert!(question.contains(&*shown), "{question:?}");
        // The grant "always" writes is a line of its own.
        let grant_line = format!("      \x1b[1m{}\x1b[0m", crate::inert::inert(&command));
        assert!(
            question.split("\r\n").any(|line| line == grant_line),
            "{question:?}"
        );
    }

    /// A terminal that answers `answer` and records what was written.
    struct FakeTty {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl io::Read for &mut FakeTty {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for &mut FakeTty {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// All of its input is there at once.
    impl Keyboard for &mut FakeTty {
        fn wait_for_input(&mut self, _: Option<Instant>) -> io::Result<bool> {
            Ok(true)
        }
        fn discard_input(&mut self) {}
        fn settle(&mut self) {}
        fn echo(&mut self, _: bool) -> bool {
            true
        }
    }

    #[test]
    fn the_terminal_is_made_legible_before_the_question_without_clearing_it() {
        let mut tty = FakeTty {
            input: io::Cursor::new(b"a\n".to_vec()),
            output: Vec::new(),
        };
        let answer = converse(&mut tty, "the question", None).unwrap();
        assert_eq!(answer, Reply::Answered(Answer::Always));
        let written = String::from_utf8(tty.output).unwrap();
        assert_eq!(
            written,
            format!("{TERMINAL_RESET}the question{YOUR_CHOICE}")
        );
        // Colours, default foreground and background, cursor shown.
        for reset in ["\x1b[0m", "\x1b]110\x1b\\", "\x1b]111\x1b\\", "\x1b[?25h"] {
            assert!(TERMINAL_RESET.contains(reset), "{reset:?} missing");
        }
        // Nothing that clears the screen or moves the cursor.
        for moving in ["\x1bc", "\x1b[2J", "\x1b[H", "\x1b[r", "\x1b[?1049"] {
            assert!(!TERMINAL_RESET.contains(moving), "{moving:?}");
        }
    }

    fn answered(input: &str) -> (Answer, String) {
        let mut tty = FakeTty {
            input: io::Cursor::new(input.as_bytes().to_vec()),
            output: Vec::new(),
        };
        let reply = converse(&mut tty, "Q", Some(Duration::from_secs(60))).unwrap();
        let Reply::Answered(answer) = reply else {
            panic!("{input:?} was not answered")
        };
        let written = String::from_utf8(tty.output).unwrap();
        // The question, then (once it settled) its choice line.
        let written = written.strip_prefix(TERMINAL_RESET).unwrap().replacen(
            &format!("Q{YOUR_CHOICE}"),
            "Q",
            1,
        );
        (answer, written)
    }

    #[test]
    fn an_answer_that_is_not_a_choice_is_asked_again_never_taken() {
        // The choices, and the usual ways of saying no.
        for (input, expected) in [
            ("o\n", Answer::Once),
            ("ONCE\n", Answer::Once),
            (" a \n", Answer::Always),
            ("always\n", Answer::Always),
            ("\n", Answer::Deny),
            ("d\n", Answer::Deny),
            ("deny\n", Answer::Deny),
            ("n\n", Answer::Deny),
            ("No\n", Answer::Deny),
            ("", Answer::Deny),
        ] {
            let (answer, written) = answered(input);
            assert_eq!(answer, expected, "{input:?}");
            assert_eq!(written, "Q", "{input:?} was asked again");
        }
        // A yes says neither once nor always: asked again, with the choices.
        let (answer, written) = answered("y\no\n");
        assert_eq!(answer, Answer::Once);
        assert_eq!(
            written,
            format!(
                "Q  `y` is not one of the choices: type o to allow once, a to allow always, \
                 d to deny (Enter alone denies)\r\n{YOUR_CHOICE}"
            )
        );
        let (answer, _) = answered("yes\nsure\na\n");
        assert_eq!(answer, Answer::Always);
        // Three unclear answers deny; so does the end of the input.
        let (answer, written) = answered("y\nyes\nY\no\n");
        assert_eq!(answer, Answer::Deny);
        assert_eq!(written.matches("is not one of the choices").count(), 3);
        assert_eq!(written.matches(YOUR_CHOICE).count(), 2, "{written:?}");
        assert!(written.ends_with("denied after 3 answers that are not choices\r\n"));
        assert_eq!(answered("y\n").0, Answer::Deny);
        // What was typed is shown inert.
        let (_, written) = answered("\x1b[2Jy\n\n");
        assert!(written.contains("`\\u{1b}[2Jy`"), "{written:?}");
    }

    /// A pseudo-terminal, as a new one is set (cooked, with echo): the
    /// user's side, which types and shows, and the terminal the prompt is
    /// on.
    fn pty() -> (std::fs::File, std::fs::File) {
        use rustix::fs::{Mode, OFlags};
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let user = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&user).unwrap();
        unlockpt(&user).unwrap();
        let name = ptsname(&user, Vec::new()).unwrap();
        let tty = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        (user.into(), tty.into())
    }

    /// What the user's side of a pty shows, read until it shows `wanted`
    /// (failing the test after 10 s).
    fn shown_until(mut user: &std::fs::File, wanted: &str) -> String {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut shown = Vec::new();
        while !String::from_utf8_lossy(&shown).contains(wanted) {
            let ready = user.wait_for_input(Some(deadline)).unwrap();
            assert!(
                ready,
                "{wanted:?} not shown: {:?}",
                String::from_utf8_lossy(&shown)
            );
            let mut buffer = [0; 1024];
            let read = user.read(&mut buffer).unwrap();
            shown.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8_lossy(&shown).into_owned()
    }

    #[test]
    fn a_prompt_nobody_answers_denies_at_its_time_out_and_drops_what_was_typed() {
        let (user, tty) = pty();
        let typing = std::thread::spawn(move || {
            shown_until(&user, YOUR_CHOICE);
            // Typed, not sent: the terminal echoes it and keeps it for Enter.
            (&user).write_all(b"al").unwrap();
            let shown = shown_until(&user, "denied");
            (user, shown)
        });
        let timeout = Duration::from_millis(1500);
        let asked = Instant::now();
        let reply = converse(&tty, "Q", Some(timeout)).unwrap();
        assert_eq!(reply, Reply::NotAnswered);
        assert!(asked.elapsed() >= SETTLE + timeout, "{:?}", asked.elapsed());
        let (mut user, shown) = typing.join().unwrap();
        assert!(
            shown.ends_with("al\r\r\n  no answer in 1.5 seconds: denied\r\r\n"),
            "{shown:?}"
        );
        // The half-typed answer reaches neither the app nor the next prompt:
        // the next line read is the one typed next, alone.
        user.write_all(b"b\n").unwrap();
        let mut next = [0; 64];
        let read = io::Read::read(&mut &tty, &mut next).unwrap();
        assert_eq!(String::from_utf8_lossy(&next[..read]), "b\n");
    }

    #[test]
    fn a_prompt_waits_for_an_answer_and_each_question_has_the_whole_time_out() {
        let (mut user, tty) = pty();
        let answering = std::thread::spawn(move || {
            shown_until(&user, YOUR_CHOICE);
            user.write_all(b"y\n").unwrap();
            shown_until(&user, YOUR_CHOICE);
            user.write_all(b"once\n").unwrap();
            user
        });
        let reply = converse(&tty, "Q", Some(Duration::from_secs(20))).unwrap();
        assert_eq!(reply, Reply::Answered(Answer::Once));
        answering.join().unwrap();
        // As long as it takes, without a time-out.
        let (mut user, tty) = pty();
        let answering = std::thread::spawn(move || {
            shown_until(&user, YOUR_CHOICE);
            user.write_all(b"a\n").unwrap();
            // Kept open: a terminal closed is the end of the input.
            user
        });
        assert_eq!(
            converse(&tty, "Q", None).unwrap(),
            Reply::Answered(Answer::Always)
        );
        answering.join().unwrap();
        // An unclear answer, then nothing: the question asked again gets
        // its own time-out, then denies as not answered.
        let (mut user, tty) = pty();
        let answering = std::thread::spawn(move || {
            shown_until(&user, YOUR_CHOICE);
            user.write_all(b"y\n").unwrap();
            shown_until(&user, "denied")
        });
        let reply = converse(&tty, "Q", Some(Duration::from_millis(1500))).unwrap();
        assert_eq!(reply, Reply::NotAnswered);
        let shown = answering.join().unwrap();
        assert!(shown.contains("is not one of the choices"), "{shown:?}");
        assert!(
            shown.contains("no answer in 1.5 seconds: denied"),
            "{shown:?}"
        );
    }

    #[test]
    fn keys_typed_before_the_choice_line_shows_are_dropped() {
        let (mut user, tty) = pty();
        let answering = std::thread::spawn(move || {
            shown_until(&user, "Q");
            // On its way as the question came up: meant for the app.
            user.write_all(b"a\n").unwrap();
            let shown = shown_until(&user, YOUR_CHOICE);
            user.write_all(b"d\n").unwrap();
            (user, shown)
        });
        let reply = converse(&tty, "Q", Some(Duration::from_secs(20))).unwrap();
        assert_eq!(reply, Reply::Answered(Answer::Deny));
        let (_user, shown) = answering.join().unwrap();
        // Not echoed beside the question either, as if it counted: all
        // that showed after the question is the choice line.
        assert_eq!(shown.replace(YOUR_CHOICE, ""), "", "{shown:?}");
    }

    #[test]
    fn a_time_out_too_long_for_a_deadline_waits_for_the_answer() {
        let (mut user, tty) = pty();
        let answering = std::thread::spawn(move || {
            shown_until(&user, YOUR_CHOICE);
            user.write_all(b"o\n").unwrap();
            user
        });
        let reply = converse(&tty, "Q", Some(Duration::MAX)).unwrap();
        assert_eq!(reply, Reply::Answered(Answer::Once));
        answering.join().unwrap();
    }

    #[test]
    fn a_time_out_is_said_in_words() {
        for (duration, said) in [
            (Duration::from_secs(300), "5 minutes"),
            (Duration::from_secs(60), "1 minute"),
            (Duration::from_secs(90), "90 seconds"),
            (Duration::from_secs(1), "1 second"),
            (Duration::from_millis(2500), "2.5 seconds"),
            (Duration::from_secs(7200), "2 hours"),
        ] {
            assert_eq!(spoken(duration), said);
        }
        assert_eq!(
            not_answered(DEFAULT_PROMPT_TIMEOUT),
            "you did not answer in 5 minutes"
        );
    }

    #[tokio::test]
    async fn a_prompt_not_answered_denies_and_the_session_asks_no_more() {
        let home = tempfile::tempdir().unwrap();
        let consent = Arc::new(consent_in(home.path()).with_timeout(Some(Duration::from_secs(7))));
        let denial = |folder: &str| Denial {
            resource: "path".into(),
            action: "read".into(),
            target: format!("{folder}/x"),
            reason: "not granted".into(),
            command: Some(format!(
                "terminalwire entitlement grant h path '{folder}/**' --read"
            )),
        };
        consent
            .scripted
            .lock()
            .unwrap()
            .extend([Reply::NotAnswered, Answer::Once.into()]);
        assert!(matches!(
            consent.ask(&denial("/srv/a")).await,
            Outcome::NotAnswered { waited } if waited == Duration::from_secs(7)
        ));
        // Neither another grant nor the same one is asked about: not as
        // refused by the user (they did not refuse), as not asked.
        for folder in ["/srv/b", "/srv/a"] {
            assert!(matches!(
                consent.ask(&denial(folder)).await,
                Outcome::Unchanged
            ));
        }
        assert_eq!(consent.scripted.lock().unwrap().len(), 1, "asked again");
    }

    /// Prompts for the server `ws://h/terminal`, the user's home `home` and
    /// the terminalwire home `home/tw`.
    fn consent_in(home: &std::path::Path) -> Consent {
        Consent::new(
            Url::parse("ws://h/terminal").unwrap(),
            Home::at(home.join("tw")),
            home.to_path_buf(),
            Vec::new(),
        )
    }

    /// A terminal that cannot be set back to cooked mode for the prompt
    /// (the app's raw mode would swallow the answer's Enter) is not asked:
    /// the request is denied as by a prompt that could not be shown, and
    /// the session's rules stay as they were.
    #[tokio::test]
    async fn a_terminal_that_cannot_be_set_for_a_prompt_is_not_asked() {
        let home = tempfile::tempdir().unwrap();
        let consent = Arc::new(consent_in(home.path()));
        consent
            .terminal_unsettable
            .store(true, std::sync::atomic::Ordering::Relaxed);
        consent
            .scripted
            .lock()
            .unwrap()
            .push_back(Answer::Once.into());
        let denial = Denial {
            resource: "path".into(),
            action: "read".into(),
            target: "/srv/a/x".into(),
            reason: "not granted".into(),
            command: Some("terminalwire entitlement grant h path '/srv/a/**' --read".into()),
        };
        let outcome = consent.ask(&denial).await;
        assert!(matches!(outcome, Outcome::Unchanged), "{outcome:?}");
    }

    /// "Always" whose grant cannot be saved (here the policy file's lock
    /// cannot be made: a folder stands where it belongs) still allows the
    /// request the user allowed, once, and says why on the terminal; it was
    /// a silent "not granted".
    #[tokio::test]
    async fn an_always_that_cannot_be_saved_allows_once_and_says_why() {
        let home = tempfile::tempdir().unwrap();
        let tw = Home::at(home.path().join("tw"));
        let authority =
            terminalwire_policy::Authority::from_url(&Url::parse("ws://h/terminal").unwrap())
                .unwrap();
        let policy = tw.policy_file(&authority);
        std::fs::create_dir_all(policy.with_extension("toml.lock")).unwrap();
        let consent = Arc::new(consent_in(home.path()));
        consent
            .scripted
            .lock()
            .unwrap()
            .push_back(Answer::Always.into());
        let data = home.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let denial = Denial {
            resource: "path".into(),
            action: "read".into(),
            target: format!("{}/x", data.display()),
            reason: "not granted".into(),
            command: Some(format!(
                "terminalwire entitlement grant h path '{}/**' --read",
                data.display()
            )),
        };
        let Outcome::Allowed(Answer::Once, entitlements) = consent.ask(&denial).await else {
            panic!("not allowed once");
        };
        let allowed = |name: &str| {
            let path =
                terminalwire_policy::resolve(&format!("{}/{name}", data.display()), home.path())
                    .unwrap();
            entitlements
                .check_path(&path, terminalwire_policy::Action::Read)
                .is_ok()
        };
        assert!(allowed("x"));
        assert!(!allowed("y"), "more than the one request allowed");
        assert!(!policy.exists(), "a grant was saved");
        let told = consent.told.lock().unwrap().clone();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(
            told[0].starts_with("allowed this once only: the grant could not be saved: ")
                && told[0].contains("policy.toml.lock"),
            "{told:?}"
        );
    }

    #[tokio::test]
    async fn a_refusal_is_not_asked_again_and_three_end_the_asking() {
        let home = tempfile::tempdir().unwrap();
        let url = Url::parse("ws://h/terminal").unwrap();
        let consent = Arc::new(Consent::new(
            url,
            Home::at(home.path().join("tw")),
            home.path().to_path_buf(),
            Vec::new(),
        ));
        let denial = |target: &str, folder: &str| Denial {
            resource: "path".into(),
            action: "read".into(),
            target: target.into(),
            reason: "not granted".into(),
            command: Some(format!(
                "terminalwire entitlement grant h path '{folder}/**' --read"
            )),
        };
        let scripted = || consent.scripted.lock().unwrap().len();
        consent
            .scripted
            .lock()
            .unwrap()
            .extend([Answer::Deny, Answer::Deny, Answer::Deny, Answer::Once].map(Reply::from));
        // Refused once: every other file that needs the same grant is
        // refused without asking (each would offer "always" for
        // `~/docs/**`).
        assert!(matches!(
            consent.ask(&denial("/home/u/docs/a0", "~/docs")).await,
            Outcome::DeniedByUser { earlier: false }
        ));
        for n in 1..20 {
            let target = format!("/home/u/docs/a{n}");
            assert!(matches!(
                consent.ask(&denial(&target, "~/docs")).await,
                Outcome::DeniedByUser { earlier: true }
            ));
        }
        assert_eq!(
            scripted(),
            3,
            "asked again after a refusal of the same grant"
        );
        // Two more refusals of other grants: three in all, and the session
        // asks no more, whatever the request.
        for (target, folder) in [("/srv/b/x", "/srv/b"), ("/srv/c/x", "/srv/c")] {
            assert!(matches!(
                consent.ask(&denial(target, folder)).await,
                Outcome::DeniedByUser { earlier: false }
            ));
        }
        assert_eq!(scripted(), 1);
        assert!(matches!(
            consent.ask(&denial("/srv/d/x", "/srv/d")).await,
            Outcome::Unchanged
        ));
        assert_eq!(scripted(), 1, "asked after {MAX_DENIALS} refusals");
    }

    #[tokio::test]
    async fn always_saves_its_grant_under_the_lock_keeping_a_revoke_made_meanwhile() {
        let home = tempfile::tempdir().unwrap();
        let tw = Home::at(home.path().join("tw"));
        let path = tw.policy_file(&terminalwire_policy::Authority::parse("h").unwrap());
        let env = |name: &str| Grant::Env(terminalwire_policy::EnvName::parse(name).unwrap());
        let mut policy = Policy::default();
        policy.grant(env("EDITOR"));
        policy.save(&path).unwrap();
        let consent = Arc::new(consent_in(home.path()));
        consent
            .scripted
            .lock()
            .unwrap()
            .push_back(Answer::Always.into());
        // `terminalwire entitlement revoke h env EDITOR` is under way: it
        // has the lock and loaded the file.
        let revoking = Policy::lock(&path).unwrap();
        let asking = tokio::spawn({
            let consent = Arc::clone(&consent);
            async move {
                let denial = Denial {
                    resource: "env".into(),
                    action: "read".into(),
                    target: "PAGER".into(),
                    reason: "not granted".into(),
                    command: Some("terminalwire entitlement grant h env 'PAGER'".into()),
                };
                match consent.ask(&denial).await {
                    Outcome::Allowed(answer, _) => Some(answer),
                    _ => None,
                }
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!asking.is_finished(), "the grant did not wait for the lock");
        policy.revoke(&env("EDITOR"));
        policy.save(&path).unwrap();
        drop(revoking);
        assert_eq!(asking.await.unwrap(), Some(Answer::Always));
        let names: Vec<_> = Policy::load(&path)
            .unwrap()
            .env
            .iter()
            .map(|grant| grant.name.as_str().to_owned())
            .collect();
        assert_eq!(names, ["PAGER"], "the revoke was undone, or the grant lost");
    }

    #[test]
    fn once_grants_the_exact_target_only() {
        let denial = Denial {
            resource: "path".into(),
            action: "write".into(),
            target: "/home/u/re[1]/*.txt".into(),
            reason: "not granted".into(),
            command: None,
        };
        let grant = once_grant(
            &denial,
            "terminalwire entitlement grant h path '/home/u/re[1]/**' --write",
            std::path::Path::new("/home/u"),
        )
        .unwrap();
        let Grant::Path(grant) = grant else {
            panic!("a path grant")
        };
        assert_eq!(grant.pattern.as_str(), "/home/u/re[[]1[]]/[*].txt");
    }
}
