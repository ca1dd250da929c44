//! The client's last resort: the signals that end it, watched on a thread
//! of their own, and the end of the process should its session not end
//! when told.
//!
//! The session's loop handles its signals itself, and its sends and waits
//! stop once told to end (`session::until_told_to_exit`). Both need the
//! loop's thread to run: a stat of a path on a hung network mount (answered
//! on that thread, `resources::Resources::perform_now`) holds it in the
//! kernel, and tokio's signal handling with it. This thread hears SIGINT,
//! SIGTERM and SIGHUP whatever the loop does (and SIGTSTP, Ctrl-Z: see
//! `stop`); once one says the client must
//! end, it tells the session, and if the session has not ended
//! [`GRACE`] later (or [`ENDING`] more, when the session is writing out
//! what it must), it restores the terminal and ends the process with the
//! status the session would have given.
//!
//! # Layout
//!
//! - `ExitNow`: why the user wants the client to end now.
//! - `SignalWatch`: the watching thread, stopped when dropped.
//! - `Interrupts`: a second Ctrl-C soon after the first.
//! - `end_process`: the end itself, shared with the `~.` escape.
//! - `stop`: Ctrl-Z, with the terminal given back to the shell meanwhile,
//!   and `group_orphaned`, which says when nobody could continue the client.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGTSTP};

use crate::error::ClientError;
use crate::session::DOUBLE_INTERRUPT;

/// How long after the user said "end" the session has to end on its own
/// before the client restores the terminal and exits anyway.
pub const GRACE: Duration = Duration::from_secs(2);

/// How much longer the client waits once the session is ending (writing out
/// what it must: the audit log waits up to 5 s).
pub const ENDING: Duration = Duration::from_secs(10);

/// Longest the end waits for the terminal's restore and its message (a
/// stderr nobody reads must not keep the process alive).
const LAST_WORDS: Duration = Duration::from_millis(500);

/// Why the user wants the client to end now, whatever it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitNow {
    /// A second Ctrl-C within [`DOUBLE_INTERRUPT`] of the first.
    Interrupted,
    /// SIGTERM (15) or SIGHUP (1).
    Terminated(i32),
    /// `~.` typed.
    Disconnected,
}

impl From<ExitNow> for ClientError {
    fn from(exit: ExitNow) -> ClientError {
        match exit {
            ExitNow::Interrupted => ClientError::Interrupted,
            ExitNow::Disconnected => ClientError::Disconnected,
            ExitNow::Terminated(number) => ClientError::Terminated(number),
        }
    }
}

/// Ctrl-C presses, as the client counts them: the app's, but a second one
/// within [`DOUBLE_INTERRUPT`] of the one before ends the client.
#[derive(Debug, Default)]
pub(crate) struct Interrupts {
    last: Option<Instant>,
}

impl Interrupts {
    /// Counts a Ctrl-C pressed `at`; whether it is a second one.
    pub(crate) fn second(&mut self, at: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| at.saturating_duration_since(last) < DOUBLE_INTERRUPT)
        {
            return true;
        }
        self.last = Some(at);
        false
    }
}

/// Where the session is, as the watching thread needs to know.
#[derive(Debug, Clone, Default)]
pub(crate) struct SessionState {
    /// Welcomed or resumed: Ctrl-C is the app's now (before, one ends the
    /// client, as it ends a program that has not started its work).
    pub(crate) opened: Arc<AtomicBool>,
    /// The session's loop is over and it is writing out what it must.
    pub(crate) ending: Arc<AtomicBool>,
}

/// The thread that watches the signals that end the client. Dropped, it
/// stops watching and gives up any end it was waiting to make.
pub(crate) struct SignalWatch {
    handle: signal_hook::iterator::Handle,
    /// Dropped to tell a thread counting down that the session ended.
    ended: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SignalWatch {
    /// Starts watching: `tell` hears the first signal that ends the client;
    /// `end` is called (in production, [`end_process`]) should the watch
    /// not be dropped within the grace that follows.
    pub(crate) fn start(
        state: SessionState,
        tell: impl Fn(ExitNow) + Send + 'static,
        end: impl FnOnce(ExitNow) + Send + 'static,
    ) -> io::Result<SignalWatch> {
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGTSTP])?;
        let handle = signals.handle();
        let (ended, session_ended) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("terminalwire-signals".to_owned())
            .spawn(move || {
                let mut interrupts = Interrupts::default();
                let opened = &state.opened;
                let exit = signals.forever().find_map(|signal| match signal {
                    SIGINT => {
                        let ends =
                            !opened.load(Ordering::Acquire) || interrupts.second(Instant::now());
                        ends.then_some(ExitNow::Interrupted)
                    }
                    SIGTERM => Some(ExitNow::Terminated(15)),
                    SIGHUP => Some(ExitNow::Terminated(1)),
                    SIGTSTP => {
                        stop();
                        None
                    }
                    _ => None,
                });
                // `None`: the watch was dropped.
                let Some(exit) = exit else { return };
                tell(exit);
                if !still_running(&session_ended, GRACE) {
                    return;
                }
                if state.ending.load(Ordering::Acquire) && !still_running(&session_ended, ENDING) {
                    return;
                }
                end(exit);
            })?;
        Ok(SignalWatch {
            handle,
            ended: Some(ended),
            thread: Some(thread),
        })
    }
}

/// Ctrl-Z (SIGTSTP, caught while a session runs): the terminal as it was
/// found while the client is stopped, then the stop itself (SIGSTOP, which
/// cannot be caught). Not caught, a stop at a password prompt left echo off
/// (or an app's raw mode on) for a shell that does not set the terminal
/// for itself (dash). Once continued, the session loop sets the terminal
/// again for what is going on (SIGCONT, `terminal::reassert`). In raw mode
/// Ctrl-Z is a key for the app, and only `kill -TSTP` comes here.
///
/// The kernel discards Ctrl-Z for an orphaned process group (`exec
/// terminalwire ...` from a login shell, `ssh -t host terminalwire ...`):
/// nobody could continue it. Caught, the signal comes here all the same,
/// so such a client does not stop either.
fn stop() {
    if group_orphaned() {
        return;
    }
    if let Err(error) = crate::terminal::suspend() {
        tracing::warn!(%error, "cannot give the terminal back before stopping");
    }
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
}

/// Whether this process's group is orphaned, as the kernel decides for
/// Ctrl-Z: no member's parent is in another group of the same session (the
/// job-control shell that would continue it). Walked from this process up
/// through its ancestors in its group (a launcher that runs the client
/// as its child is one): the first parent outside the group says. A group
/// this cannot prove continuable counts as orphaned: stopped for good with
/// nobody to continue it, the client would hang, where ignoring Ctrl-Z is
/// what the kernel itself does for such a group.
fn group_orphaned() -> bool {
    use rustix::process::{getpgid, getpgrp, getpid, getsid};
    let (group, Ok(session)) = (getpgrp(), getsid(None)) else {
        return true;
    };
    let mut member = getpid();
    // A bound, should the process table change under the walk.
    for _ in 0..64 {
        let Some(parent) = parent_of(member) else {
            return true;
        };
        let Ok(parent_group) = getpgid(Some(parent)) else {
            return true;
        };
        if parent_group != group {
            return getsid(Some(parent)).ok() != Some(session);
        }
        member = parent;
    }
    true
}

/// The parent of `pid`: this process's from the kernel, another's from
/// `/proc` where there is one.
fn parent_of(pid: rustix::process::Pid) -> Option<rustix::process::Pid> {
    if pid == rustix::process::getpid() {
        return rustix::process::getppid();
    }
    // `/proc/PID/stat`: "PID (NAME) STATE PPID ...", the name may hold
    // anything, parentheses included.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let parent: i32 = after_name.split_whitespace().nth(1)?.parse().ok()?;
    rustix::process::Pid::from_raw(parent)
}

/// Whether the session is still running after `wait` (its watch not
/// dropped).
fn still_running(session_ended: &mpsc::Receiver<()>, wait: Duration) -> bool {
    matches!(
        session_ended.recv_timeout(wait),
        Err(mpsc::RecvTimeoutError::Timeout)
    )
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        self.handle.close();
        self.ended.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ends the process as the session would have for `error`: the terminal
/// restored and what the app left undone, one line on stderr saying why,
/// and `error`'s exit status. Each of these is given at most
/// [`LAST_WORDS`]: nothing may keep the process alive.
pub(crate) fn end_process(error: &ClientError, why: &str) -> ! {
    let code = error.exit_code();
    let message = format!("terminalwire: {error} ({why})\n");
    let (said, saying) = mpsc::channel::<()>();
    let _ = std::thread::Builder::new()
        .name("terminalwire-last-words".to_owned())
        .spawn(move || {
            let _ = crate::terminal::restore();
            crate::terminal::reset_what_the_app_left();
            let _ = io::stderr().lock().write_all(message.as_bytes());
            let _ = said.send(());
        });
    let _ = saying.recv_timeout(LAST_WORDS);
    std::process::exit(i32::from(code));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_interrupt_soon_after_the_first_ends_the_client() {
        let mut interrupts = Interrupts::default();
        let start = Instant::now();
        assert!(!interrupts.second(start));
        assert!(interrupts.second(start + DOUBLE_INTERRUPT / 2));
    }

    #[test]
    fn an_interrupt_long_after_the_last_is_the_apps_again() {
        let mut interrupts = Interrupts::default();
        let start = Instant::now();
        assert!(!interrupts.second(start));
        let later = start + DOUBLE_INTERRUPT + Duration::from_millis(1);
        assert!(!interrupts.second(later));
        // Counted from the one before it, not the first.
        assert!(interrupts.second(later + Duration::from_millis(1)));
    }
}
