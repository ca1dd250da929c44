//! The client's own terminal: echo off for password reads, raw mode for the
//! app (whose keys [`crate::keys`] reads), and always putting the terminal
//! back as it was.
//!
//! One owner decides the terminal's settings. The first change saves them
//! as found; every later setting is made from those, for what is asked at
//! that moment (raw mode, echo off, or neither), and the end of a session
//! (or a panic) restores exactly them. Password reads and raw mode used to
//! save and restore the settings each on their own, which did not nest: a
//! password read still waiting when raw mode began (raw mode saved "echo
//! off") and cancelled at the end left the terminal without echo.

use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use rustix::termios::{self, LocalModes, OptionalActions, Termios};

/// What is asked of the terminal at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wanted {
    /// The app asked for raw mode.
    raw: bool,
    /// Key reads in progress: raw while they last.
    key_reads: usize,
    /// Password reads in progress: no echo while they last.
    passwords: usize,
    /// The client's own prompts on screen: the settings as found (cooked,
    /// with echo) while they last.
    own_prompts: usize,
}

impl Wanted {
    const NOTHING: Wanted = Wanted {
        raw: false,
        key_reads: 0,
        passwords: 0,
        own_prompts: 0,
    };

    fn mode(&self) -> Mode {
        if self.own_prompts > 0 {
            Mode::AsFound
        } else if self.raw || self.key_reads > 0 {
            // Raw mode does not echo either.
            Mode::Raw
        } else if self.passwords > 0 {
            Mode::NoEcho
        } else {
            Mode::AsFound
        }
    }
}

/// The settings the terminal gets, all made from those it was found with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    AsFound,
    NoEcho,
    Raw,
}

/// The owner of the terminal's settings.
struct Owner {
    /// The settings as found; `None` until the first change, and again
    /// after [`restore`].
    found: Option<Termios>,
    wanted: Wanted,
    /// Counts restores: a guard from before one changes nothing.
    generation: u64,
}

static OWNER: Mutex<Owner> = Mutex::new(Owner {
    found: None,
    wanted: Wanted::NOTHING,
    generation: 0,
});

/// The settings as first found, for a panic that happens while [`OWNER`]
/// is held by the panicking thread: its hook cannot take that lock (it
/// would never be given back).
static FIRST_FOUND: OnceLock<Termios> = OnceLock::new();

thread_local! {
    /// This thread holds [`OWNER`] now.
    static HOLDS_OWNER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`OWNER`], held; says so to this thread's panic hook while it is.
struct OwnerGuard(MutexGuard<'static, Owner>);

impl std::ops::Deref for OwnerGuard {
    type Target = Owner;
    fn deref(&self) -> &Owner {
        &self.0
    }
}

impl std::ops::DerefMut for OwnerGuard {
    fn deref_mut(&mut self) -> &mut Owner {
        &mut self.0
    }
}

impl Drop for OwnerGuard {
    fn drop(&mut self) {
        HOLDS_OWNER.with(|holds| holds.set(false));
    }
}

fn owner() -> OwnerGuard {
    #[cfg(test)]
    tests::about_to_wait_for_the_owner();
    let guard = OWNER.lock().unwrap_or_else(PoisonError::into_inner);
    HOLDS_OWNER.with(|holds| holds.set(true));
    OwnerGuard(guard)
}

impl Owner {
    /// Applies `change` to what is wanted and sets the terminal for it; on
    /// failure nothing changes. Returns the generation it was made in.
    fn change(
        &mut self,
        change: impl FnOnce(&mut Wanted),
        how: OptionalActions,
    ) -> io::Result<u64> {
        let mut wanted = self.wanted;
        change(&mut wanted);
        let mode = wanted.mode();
        if self.found.is_none() && mode != Mode::AsFound {
            let found = termios::tcgetattr(rustix::stdio::stdin())?;
            let _ = FIRST_FOUND.set(found.clone());
            self.found = Some(found);
        }
        // The terminal's reader is told before raw mode ends (what it reads
        // then is not filtered for the escapes) and after it begins.
        let pump = crate::keys::pump();
        let paused = wanted.own_prompts > 0;
        if mode != Mode::Raw {
            pump.set_mode(false, paused);
        }
        if how == OptionalActions::Flush {
            // The terminal drops what was typed ahead; the client's reader
            // may have read it already (a `~` it held included).
            pump.flush_input();
        }
        if let Some(found) = &self.found
            && let Err(error) = set(found, mode, how)
        {
            let was_raw = self.wanted.mode() == Mode::Raw;
            pump.set_mode(was_raw, self.wanted.own_prompts > 0);
            return Err(error);
        }
        if mode == Mode::Raw {
            pump.set_mode(true, paused);
        }
        self.wanted = wanted;
        Ok(self.generation)
    }
}

/// Puts the terminal in `mode`, made from `found`. Raw mode is crossterm's
/// (its key parser asks whether it is on); it saves what it finds and puts
/// that back when it ends, so it only ever starts from `found`.
fn set(found: &Termios, mode: Mode, how: OptionalActions) -> io::Result<()> {
    let stdin = rustix::stdio::stdin();
    let raw = crossterm::terminal::is_raw_mode_enabled()?;
    match mode {
        Mode::Raw if raw => Ok(()),
        Mode::Raw => {
            termios::tcsetattr(stdin, OptionalActions::Now, found)?;
            crossterm::terminal::enable_raw_mode()
        }
        Mode::AsFound | Mode::NoEcho => {
            if raw {
                crossterm::terminal::disable_raw_mode()?;
            }
            let mut settings = found.clone();
            if mode == Mode::NoEcho {
                settings.local_modes.remove(LocalModes::ECHO);
                // Keep echoing the newline so the cursor moves on as usual.
                settings.local_modes.insert(LocalModes::ECHONL);
            }
            Ok(termios::tcsetattr(stdin, how, &settings)?)
        }
    }
}

/// Echo is off on stdin's terminal while this lives (unless raw mode,
/// which does not echo either, is on).
#[derive(Debug)]
pub struct EchoOff {
    generation: u64,
}

impl EchoOff {
    /// Turns echo off on the process's stdin terminal.
    pub fn stdin() -> io::Result<EchoOff> {
        let mut owner = owner();
        // Dropping what was typed ahead, but not a prompt's half-typed
        // answer.
        let how = if owner.wanted.own_prompts > 0 {
            OptionalActions::Now
        } else {
            OptionalActions::Flush
        };
        let generation = owner.change(|w| w.passwords += 1, how)?;
        Ok(EchoOff { generation })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let mut owner = owner();
        if owner.generation == self.generation
            && owner
                .change(
                    |w| w.passwords = w.passwords.saturating_sub(1),
                    OptionalActions::Now,
                )
                .is_err()
        {
            // The read is over all the same: prompts must not wait for it.
            owner.wanted.passwords = owner.wanted.passwords.saturating_sub(1);
        }
        if owner.wanted.passwords == 0 {
            PASSWORD_READS_DONE.notify_waiters();
        }
    }
}

/// Woken when the last password read in progress ends.
static PASSWORD_READS_DONE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Returns once no password read is in progress: a prompt of the client's
/// own turns echo on and reads the terminal, so shown during one it would
/// take (and show) what the user types as the password.
pub async fn password_reads_done() {
    while password_read_in_progress() {
        wait_for_password_reads().await;
    }
}

/// Whether a password read is in progress.
pub fn password_read_in_progress() -> bool {
    owner().wanted.passwords > 0
}

async fn wait_for_password_reads() {
    loop {
        let done = PASSWORD_READS_DONE.notified();
        let mut done = std::pin::pin!(done);
        done.as_mut().enable();
        if owner().wanted.passwords == 0 {
            return;
        }
        done.await;
    }
}

/// Raw mode while this lives, for a key read.
#[derive(Debug)]
pub struct RawForKeys {
    generation: u64,
}

impl RawForKeys {
    /// Raw mode on, if it was not.
    pub fn begin() -> io::Result<RawForKeys> {
        let generation = owner().change(|w| w.key_reads += 1, OptionalActions::Now)?;
        Ok(RawForKeys { generation })
    }
}

impl Drop for RawForKeys {
    fn drop(&mut self) {
        let mut owner = owner();
        if owner.generation == self.generation {
            let _ = owner.change(
                |w| w.key_reads = w.key_reads.saturating_sub(1),
                OptionalActions::Now,
            );
        }
    }
}

/// The terminal as it was found while this lives (cooked, with echo), for
/// a prompt of the client's own; then back to what the app asked for.
#[derive(Debug)]
pub struct AsFound {
    generation: u64,
}

impl AsFound {
    /// The settings as found, until dropped.
    pub fn begin() -> io::Result<AsFound> {
        let generation = owner().change(|w| w.own_prompts += 1, OptionalActions::Now)?;
        Ok(AsFound { generation })
    }
}

impl Drop for AsFound {
    fn drop(&mut self) {
        let mut owner = owner();
        if owner.generation == self.generation {
            let _ = owner.change(
                |w| w.own_prompts = w.own_prompts.saturating_sub(1),
                OptionalActions::Now,
            );
        }
    }
}

/// Puts the terminal back as found for a stop (Ctrl-Z), keeping what is
/// asked: [`reassert`] sets it again once the client is continued.
pub fn suspend() -> io::Result<()> {
    let owner = owner();
    match &owner.found {
        Some(found) => set(found, Mode::AsFound, OptionalActions::Now),
        None => Ok(()),
    }
}

/// Sets the terminal again for what is asked now, after the client was
/// stopped (Ctrl-Z at a password prompt, `kill -STOP`) and continued
/// (`fg`): the shell had the terminal meanwhile and set it for itself,
/// cooked and with echo, so a password typed after `fg` showed on the
/// screen, and an app's raw mode was cooked. Nothing to do when the
/// terminal was never changed.
pub fn reassert() -> io::Result<()> {
    let owner = owner();
    let Some(found) = &owner.found else {
        return Ok(());
    };
    // Continued in the background (`bg`): the terminal is the shell's
    // until `fg`, which continues the client again.
    if !in_the_foreground() {
        return Ok(());
    }
    let mode = owner.wanted.mode();
    // crossterm still takes itself for raw and would do nothing: it puts
    // back what it saved (`found`, see `set`) and starts again from there.
    if mode == Mode::Raw && crossterm::terminal::is_raw_mode_enabled()? {
        crossterm::terminal::disable_raw_mode()?;
    }
    set(found, mode, OptionalActions::Now)
}

/// Whether this process's group is the foreground of stdin's terminal.
/// Setting the terminal from the background stops the client again
/// (SIGTTOU) or, where that signal is ignored, changes the terminal under
/// the shell.
fn in_the_foreground() -> bool {
    rustix::termios::tcgetpgrp(rustix::stdio::stdin())
        .is_ok_and(|foreground| foreground == rustix::process::getpgrp())
}

/// Raw mode on (every key to the app, Ctrl-C included) or off, as the app
/// asks.
pub fn set_raw(on: bool) -> io::Result<()> {
    owner().change(|w| w.raw = on, OptionalActions::Now)?;
    Ok(())
}

/// Written when a session ends, on a terminal the app wrote to: the modes
/// an app may switch on and leave behind (the alternate screen, mouse
/// reports, bracketed paste, concealed or coloured text, a hidden cursor)
/// back to a shell's, so that the client's last words show and the shell
/// works. Nothing that moves the cursor, clears the normal screen, or
/// resets the colours the user chose.
const SESSION_END_RESET: &str = concat!(
    "\x0f",        // SI: the G0 character set
    "\x1b(B",      // G0 is ASCII, not line drawing
    "\x1b[0m",     // no colours, no concealed, reversed or blinking text
    "\x1b[?1047l", // the normal screen (nothing happens if already on it)
    "\x1b[?9l\x1b[?1000l\x1b[?1001l\x1b[?1002l\x1b[?1003l\x1b[?1005l\x1b[?1006l\x1b[?1015l", // no mouse reports
    "\x1b[?1004l", // no focus reports
    "\x1b[?2004l", // no bracketed paste
    "\x1b[?1l",    // cursor keys in normal mode
    "\x1b>",       // the keypad in normal mode
    "\x1b[?5l",    // the screen not reversed
    "\x1b[?25h",   // the cursor shown
    "\x1b[?7h",    // long lines wrap
    "\x1b[4l",     // text replaces, not inserts
);

/// Written as well when the app's output switched on a keyboard protocol
/// that would leave the shell reading escape codes for plain keys: kitty's
/// (every flag off, every pushed level popped) and xterm's modifyOtherKeys
/// (back to the terminal's own setting). Only then: a terminal that knows
/// neither sequence could take it for another.
const KEYBOARD_RESET: &str = "\x1b[=0;1u\x1b[<99u\x1b[>4m";

/// Set once an output of the app switched on a keyboard protocol.
static KEYBOARD_PROTOCOL_SEEN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Set once an output of the app held an escape (ESC) or a shift to
/// another character set (SO): only such an app can have left modes on.
static APP_WROTE_CONTROLS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Longest keyboard-protocol sequence looked for (ESC and all).
const LONGEST_KEYBOARD_SEQUENCE: usize = 32;

/// Watches what the app writes to the terminal for a sequence that turns
/// on a keyboard protocol (kitty's `CSI > flags u` and `CSI = flags ; mode
/// u`, xterm's `CSI > 4 ; level m` with a level above 0), also when a
/// sequence is cut between two chunks.
#[derive(Debug, Default)]
pub struct KeyboardWatch {
    /// The end of the last chunk, from an escape it cut short.
    unfinished: Vec<u8>,
    seen: bool,
}

impl KeyboardWatch {
    /// Looks at the next bytes of the stream; true once such a sequence
    /// was seen in it.
    pub fn watch(&mut self, bytes: &[u8]) -> bool {
        if self.seen {
            return true;
        }
        let joined;
        let data = if self.unfinished.is_empty() {
            bytes
        } else {
            let mut both = std::mem::take(&mut self.unfinished);
            both.extend_from_slice(bytes);
            joined = both;
            &joined[..]
        };
        let mut from = 0;
        while let Some(at) = data[from..].iter().position(|&byte| byte == 0x1b) {
            let start = from + at;
            match keyboard_sequence(&data[start..]) {
                Sequence::SwitchesOn => {
                    self.seen = true;
                    return true;
                }
                Sequence::Unfinished => {
                    self.unfinished = data[start..].to_vec();
                    return false;
                }
                Sequence::Other => from = start + 1,
            }
        }
        false
    }

    /// [`KeyboardWatch::watch`], and remembers for the end of the session
    /// ([`reset_what_the_app_left`]) what it saw.
    pub fn watch_output(&mut self, bytes: &[u8]) {
        use std::sync::atomic::Ordering;
        if !APP_WROTE_CONTROLS.load(Ordering::Relaxed)
            && bytes.iter().any(|&byte| byte == 0x1b || byte == 0x0e)
        {
            APP_WROTE_CONTROLS.store(true, Ordering::Relaxed);
        }
        if !self.seen && self.watch(bytes) {
            KEYBOARD_PROTOCOL_SEEN.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What an escape sequence is, to [`KeyboardWatch`].
#[derive(Debug, PartialEq, Eq)]
enum Sequence {
    SwitchesOn,
    /// The bytes end before the sequence does.
    Unfinished,
    Other,
}

/// Reads the sequence at the start of `bytes` (an ESC).
fn keyboard_sequence(bytes: &[u8]) -> Sequence {
    let mut rest = bytes.iter().skip(1);
    match rest.next() {
        None => return Sequence::Unfinished,
        Some(b'[') => {}
        Some(_) => return Sequence::Other,
    }
    let marker = match rest.next() {
        None => return Sequence::Unfinished,
        Some(&marker @ (b'>' | b'=')) => marker,
        Some(_) => return Sequence::Other,
    };
    let mut params = Vec::new();
    for (taken, &byte) in rest.enumerate() {
        if taken + 3 > LONGEST_KEYBOARD_SEQUENCE {
            return Sequence::Other;
        }
        match byte {
            b'0'..=b'9' | b';' => params.push(byte),
            b'u' => return Sequence::SwitchesOn,
            b'm' if marker == b'>' => {
                // modifyOtherKeys (resource 4) set to a level above 0.
                let mut fields = params.split(|&byte| byte == b';');
                let resource = fields.next().unwrap_or_default();
                let level = fields.next().unwrap_or_default();
                let on = resource == b"4" && level.iter().any(|&digit| digit != b'0');
                return if on {
                    Sequence::SwitchesOn
                } else {
                    Sequence::Other
                };
            }
            _ => return Sequence::Other,
        }
    }
    Sequence::Unfinished
}

/// Writes `SESSION_END_RESET` (and `KEYBOARD_RESET` when an output of the
/// app switched a keyboard protocol on) to stderr when the app's output
/// held escapes and both stdout and stderr are a terminal (with stdout
/// piped, the terminal may belong to a pager still showing the output),
/// unless `TERM` is `dumb` (a terminal that knows no escapes, which would
/// show them).
pub fn reset_what_the_app_left() {
    use std::io::{IsTerminal, Write};
    if !APP_WROTE_CONTROLS.load(std::sync::atomic::Ordering::Relaxed)
        || std::env::var_os("TERM").is_some_and(|term| term == "dumb")
    {
        return;
    }
    if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
        let mut reset = String::from(SESSION_END_RESET);
        if KEYBOARD_PROTOCOL_SEEN.load(std::sync::atomic::Ordering::Relaxed) {
            reset.push_str(KEYBOARD_RESET);
        }
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(reset.as_bytes());
        let _ = stderr.flush();
    }
}

/// The terminal back exactly as it was found, whatever was asked since;
/// guards still alive change nothing any more. Every exit path calls it
/// (end of session, signals, panics).
pub fn restore() -> io::Result<()> {
    restore_then(|| crate::keys::pump().end_session())
}

/// [`restore`], telling the key pump with `end_keys`.
fn restore_then(end_keys: impl FnOnce()) -> io::Result<()> {
    let mut owner = owner();
    owner.wanted = Wanted::NOTHING;
    owner.generation += 1;
    PASSWORD_READS_DONE.notify_waiters();
    end_keys();
    match owner.found.take() {
        Some(found) => set(&found, Mode::AsFound, OptionalActions::Now),
        None => Ok(()),
    }
}

/// Restores the terminal if a panic unwinds through the client.
pub fn restore_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_in_panic();
        previous(info);
    }));
}

/// [`restore`] from a panic hook, which must never wait for a lock its
/// own thread holds: when the panic came while this thread was changing
/// the terminal's settings, the settings as first found are put back
/// directly; the key pump is told only if its lock is free (the session's
/// end tells it again). Another thread holding the settings' lock gives it
/// back soon, and is waited for: its change must not land after the
/// restore.
fn restore_in_panic() {
    if HOLDS_OWNER.with(std::cell::Cell::get) {
        if let Some(found) = FIRST_FOUND.get() {
            let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, found);
        }
        return;
    }
    let _ = restore_then(|| crate::keys::pump().try_end_session());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment variable that makes this test binary the process of
    /// [`in_a_process_of_its_own`]: the name of the test it runs.
    const OWN_PROCESS: &str = "TERMINALWIRE_TEST_OWN_PROCESS";

    /// What the test of a panic during another thread's change hears.
    #[derive(Debug, PartialEq, Eq)]
    enum Heard {
        /// A thread is about to wait for the settings' lock.
        Waiting,
        /// The hook returned.
        Returned,
    }

    /// Where [`about_to_wait_for_the_owner`] tells, when a test listens.
    static LISTENER: Mutex<Option<std::sync::mpsc::Sender<Heard>>> = Mutex::new(None);

    /// Called by [`owner`] before it waits for the lock.
    pub(super) fn about_to_wait_for_the_owner() {
        let listener = LISTENER.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(listener) = listener.as_ref() {
            let _ = listener.send(Heard::Waiting);
        }
    }

    /// Longest a test of the panic hook may take in its own process.
    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

    /// Runs `body` as the test `name` (of this module) in a process of its
    /// own: this test binary again, running that test alone. A panic hook
    /// that deadlocked would hang for good on a lock of the whole process
    /// (the terminal's settings, the key pump) that other tests need, and
    /// with them the test binary; here the test fails after [`DEADLINE`],
    /// and only its own process, killed, was stuck.
    fn in_a_process_of_its_own(name: &str, body: impl FnOnce()) {
        use std::io::Read;
        if std::env::var(OWN_PROCESS).as_deref() == Ok(name) {
            body();
            return;
        }
        // Test names leave out the crate's.
        let module = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, module)| module);
        let test = format!("{module}::{name}");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(OWN_PROCESS, name)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let read = |mut from: Box<dyn Read + Send>, ended: Option<std::sync::mpsc::Sender<()>>| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                let _ = from.read_to_end(&mut text);
                // Its end of the pipe closes when the process ends.
                drop(ended);
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let stdout = read(Box::new(child.stdout.take().unwrap()), Some(ended_tx));
        let stderr = read(Box::new(child.stderr.take().unwrap()), None);
        let in_time = matches!(
            ended.recv_timeout(DEADLINE),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
        if !in_time {
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        let output = format!("{}{}", stdout.join().unwrap(), stderr.join().unwrap());
        assert!(
            in_time,
            "{test} did not end within {DEADLINE:?} (a deadlock?), and was killed:\n{output}"
        );
        assert!(
            status.success(),
            "{test} failed in its own process:\n{output}"
        );
        assert!(
            output.contains("test result: ok. 1 passed"),
            "{test} did not run in its own process:\n{output}"
        );
    }

    /// A panic on one thread while another changes the settings (a request
    /// switching raw mode on): the hook waits for that change and then
    /// restores, or the change would land after it.
    #[test]
    fn a_panic_while_another_thread_changes_the_settings_still_restores() {
        in_a_process_of_its_own(
            "a_panic_while_another_thread_changes_the_settings_still_restores",
            || {
                let (held_tx, held_rx) = std::sync::mpsc::channel();
                let (heard_tx, heard_rx) = std::sync::mpsc::channel();
                let other = std::thread::spawn(move || {
                    let owner = owner();
                    let before = owner.generation;
                    held_tx.send(()).unwrap();
                    // Held until the hook waits for it (or, if it does not
                    // wait, has returned): a change in progress.
                    let heard = heard_rx.recv().unwrap();
                    drop(owner);
                    (before, heard)
                });
                held_rx.recv().unwrap();
                *LISTENER.lock().unwrap() = Some(heard_tx.clone());
                restore_in_panic();
                *LISTENER.lock().unwrap() = None;
                let _ = heard_tx.send(Heard::Returned);
                let (before, heard) = other.join().unwrap();
                assert_eq!(
                    heard,
                    Heard::Waiting,
                    "the hook did not wait for the change"
                );
                assert!(
                    owner().generation > before,
                    "the hook gave up on the restore"
                );
            },
        );
    }

    /// A panic while the key pump's lock is held on the panicking thread (a
    /// bug in key parsing) must not hang the hook.
    #[test]
    fn a_panic_while_the_key_pump_is_locked_does_not_hang_its_hook() {
        in_a_process_of_its_own(
            "a_panic_while_the_key_pump_is_locked_does_not_hang_its_hook",
            || crate::keys::pump().hold_for_test(restore_in_panic),
        );
    }

    /// A panic while the terminal's settings are being changed (the lock
    /// held on the panicking thread) must not hang the panic hook.
    #[test]
    fn a_panic_while_the_settings_are_changed_does_not_hang_its_hook() {
        in_a_process_of_its_own(
            "a_panic_while_the_settings_are_changed_does_not_hang_its_hook",
            || {
                let held = owner();
                restore_in_panic();
                drop(held);
            },
        );
    }

    #[test]
    fn keyboard_protocols_the_app_switched_on_are_seen_even_cut_between_chunks() {
        let on: [&[u8]; 5] = [
            b"\x1b[>1u",
            b"\x1b[>31u",
            b"\x1b[=5;1u",
            b"\x1b[>4;1m",
            b"\x1b[>4;2m",
        ];
        for sequence in on {
            let text = [b"before \x1b[1m".as_slice(), sequence, b" after"].concat();
            // Whole, and cut at every place.
            for cut in 0..=text.len() {
                let mut watch = KeyboardWatch::default();
                let (first, second) = text.split_at(cut);
                let seen = watch.watch(first) | watch.watch(second);
                assert!(seen, "{:?} cut at {cut}", String::from_utf8_lossy(&text));
            }
        }
        let off: [&[u8]; 7] = [
            b"plain text",
            b"\x1b[4m underlined \x1b[0m",
            b"\x1b[?u",    // a query of kitty's flags
            b"\x1b[>4;0m", // modifyOtherKeys off
            b"\x1b[>4m",   // back to the terminal's own setting
            b"\x1b[>c",    // a device attributes request
            b"\x1b[>0;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;u", // too long to be one
        ];
        for text in off {
            for cut in 0..=text.len() {
                let mut watch = KeyboardWatch::default();
                let (first, second) = text.split_at(cut);
                let seen = watch.watch(first) | watch.watch(second);
                assert!(!seen, "{:?} cut at {cut}", String::from_utf8_lossy(text));
            }
        }
        // A sequence cut short is kept only from its escape, and only until
        // the next chunk shows what it was.
        let mut watch = KeyboardWatch::default();
        assert!(!watch.watch(&[b'x'; 100_000]));
        assert!(!watch.watch(b"\x1b["));
        assert_eq!(watch.unfinished, b"\x1b[");
        assert!(!watch.watch(b"1mtext"));
        assert!(watch.unfinished.is_empty());
    }

    #[test]
    fn what_is_asked_decides_the_mode_whatever_the_order() {
        let with = |change: &dyn Fn(&mut Wanted)| {
            let mut wanted = Wanted::NOTHING;
            change(&mut wanted);
            wanted.mode()
        };
        assert_eq!(Wanted::NOTHING.mode(), Mode::AsFound);
        assert_eq!(with(&|w| w.passwords = 1), Mode::NoEcho);
        // A password read and raw mode: raw (which does not echo).
        assert_eq!(
            with(&|w| {
                w.passwords = 1;
                w.raw = true;
            }),
            Mode::Raw
        );
        // The app leaves raw mode while a password is read: still no echo.
        assert_eq!(
            with(&|w| {
                w.passwords = 1;
                w.raw = false;
            }),
            Mode::NoEcho
        );
        assert_eq!(with(&|w| w.key_reads = 1), Mode::Raw);
        // The client's own prompt shows the terminal as found, echo on.
        assert_eq!(
            with(&|w| {
                w.raw = true;
                w.passwords = 1;
                w.own_prompts = 1;
            }),
            Mode::AsFound
        );
    }
}
