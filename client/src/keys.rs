//! The terminal's input: one reader of the terminal for the whole client,
//! the keys the app reads in raw mode, and the client's own escapes there.
//!
//! In raw mode the terminal sends no signals: Ctrl-C and Ctrl-\ are keys
//! like any other. A server that put the terminal in raw mode and never
//! read a key (or kept a byte read waiting, whose reader took every key)
//! left the user no way out but killing the client from elsewhere. So one
//! thread is the only reader of the terminal: while the terminal is raw,
//! or once the app has read its stdin, it reads what the terminal sends
//! into one bounded buffer. The app's byte and line reads ([`TtyStdin`])
//! and its key reads ([`KeyPump::next_key`], decoded here) take from that
//! buffer, in the order typed, across mode changes. In raw mode the client
//! keeps escapes of its own that the server cannot hold off, as ssh does
//! ([`Escapes`]): `~.` right after Enter (or as the first keys) disconnects,
//! `~?` lists the escapes, `~~` sends one `~`; in a resumable session
//! Ctrl-\ detaches. The thread stops reading at once while the client's own
//! prompt is on screen (it reads `/dev/tty` itself), and its buffer is
//! emptied then, as the prompt flushes what was typed ahead.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use terminalwire_protocol::frame::Key;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;

/// Bytes kept for the app while it does not read them; later ones are
/// dropped (a terminal's own input queue holds 4 KiB).
pub const MAX_BUFFERED: usize = 1 << 20;

/// How long a lone ESC waits for the rest of a key's sequence before it is
/// the Esc key.
pub const ESC_WAIT: Duration = Duration::from_millis(50);

/// How long the end of raw mode, or a prompt of the client's own, waits for
/// the reading thread to stop (it wakes at once; this bounds a stuck one).
const STOP_WAIT: Duration = Duration::from_millis(200);

/// How long after `~.` the session has to end on its own before the
/// client restores the terminal and exits anyway (a session loop held up
/// by a server that reads slowly must not hold off the escape).
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// The text `~?` shows (raw mode: `\r\n` line ends).
pub const ESCAPE_HELP: &str = "\r\nterminalwire escapes (after Enter):\r\n\
    \x20 ~.  disconnect\r\n\
    \x20 ~?  this list\r\n\
    \x20 ~~  send ~\r\n";

/// Ctrl-\ as the terminal sends it.
const CTRL_BACKSLASH: u8 = 0x1c;
const ESC: u8 = 0x1b;
/// Longest terminal sequence (a reply to a query, say) kept whole.
const MAX_SEQUENCE: usize = 4096;

/// An escape of the client's own, typed in raw mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `~.`: the user wants out of the session now.
    Disconnect,
    /// Ctrl-\ in a resumable session: detach.
    Detach,
    /// `~?`: show the escapes.
    Help,
}

/// Where the escape recogniser is in a terminal sequence (`ESC ...`). The
/// bytes of a sequence (a key such as an arrow, or the terminal's reply to
/// a query the server sent) pass through and change nothing: a server
/// cannot break the user's `Enter ~ .` by making the terminal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sequence {
    None,
    /// After ESC.
    Esc,
    /// `ESC [` parameters, up to a final byte.
    Csi,
    /// `ESC ]` or `ESC P` (a string), up to BEL or `ESC \`.
    Text,
    /// ESC inside a string: `\` ends it.
    TextEsc,
    /// `ESC O`: one more byte.
    Ss3,
}

/// Recognises the escapes in the bytes typed in raw mode.
#[derive(Debug, Clone)]
pub struct Escapes {
    /// The last key was Enter, or none was typed yet.
    at_line_start: bool,
    /// A `~` at a line's start, and the terminal sequences after it, held
    /// until the next key says what the `~` is.
    held: Vec<u8>,
    sequence: Sequence,
    sequence_len: usize,
}

impl Default for Escapes {
    fn default() -> Self {
        Escapes {
            at_line_start: true,
            held: Vec::new(),
            sequence: Sequence::None,
            sequence_len: 0,
        }
    }
}

impl Escapes {
    /// Filters `bytes`: what is for the app goes to `out`; the escapes
    /// typed are returned in order. `detach_key`: Ctrl-\ detaches.
    pub fn feed(&mut self, bytes: &[u8], detach_key: bool, out: &mut Vec<u8>) -> Vec<Escape> {
        let mut escapes = Vec::new();
        for &byte in bytes {
            if let Some(escape) = self.feed_byte(byte, detach_key, out) {
                escapes.push(escape);
            }
        }
        escapes
    }

    fn feed_byte(&mut self, byte: u8, detach_key: bool, out: &mut Vec<u8>) -> Option<Escape> {
        if self.sequence != Sequence::None || byte == ESC {
            self.sequence = self.next_in_sequence(byte);
            if self.held.is_empty() {
                out.push(byte);
            } else {
                self.held.push(byte);
                if self.held.len() > MAX_SEQUENCE {
                    out.append(&mut self.held);
                }
            }
            return None;
        }
        if !self.held.is_empty() {
            match byte {
                b'.' => {
                    self.held.clear();
                    return Some(Escape::Disconnect);
                }
                b'?' => {
                    // Another escape may follow at once.
                    self.held.clear();
                    self.at_line_start = true;
                    return Some(Escape::Help);
                }
                b'~' => {
                    // `~~` is one `~`.
                    out.append(&mut self.held);
                    self.at_line_start = false;
                    return None;
                }
                _ => out.append(&mut self.held),
            }
        }
        if detach_key && byte == CTRL_BACKSLASH {
            return Some(Escape::Detach);
        }
        if self.at_line_start && byte == b'~' {
            self.held.push(byte);
            return None;
        }
        self.at_line_start = byte == b'\r' || byte == b'\n';
        out.push(byte);
        None
    }

    fn next_in_sequence(&mut self, byte: u8) -> Sequence {
        self.sequence_len = if self.sequence == Sequence::None {
            1
        } else {
            self.sequence_len + 1
        };
        if self.sequence_len > MAX_SEQUENCE {
            return Sequence::None;
        }
        match (self.sequence, byte) {
            (Sequence::None, _) => Sequence::Esc,
            (Sequence::Esc, b'[') => Sequence::Csi,
            (Sequence::Esc, b']' | b'P') => Sequence::Text,
            (Sequence::Esc, b'O') => Sequence::Ss3,
            // ESC ESC: the second may start a sequence of its own.
            (Sequence::Esc, ESC) => Sequence::Esc,
            // Alt and a key.
            (Sequence::Esc, _) => Sequence::None,
            (Sequence::Csi, 0x20..=0x3f) => Sequence::Csi,
            (Sequence::Csi, _) => Sequence::None,
            (Sequence::Text, 0x07) => Sequence::None,
            (Sequence::Text, ESC) => Sequence::TextEsc,
            (Sequence::Text, _) => Sequence::Text,
            (Sequence::TextEsc, b'\\') => Sequence::None,
            (Sequence::TextEsc, _) => Sequence::Text,
            (Sequence::Ss3, _) => Sequence::None,
        }
    }
}

/// What [`decode_key`] found at the start of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A key, and how many bytes it took.
    Key(Key, usize),
    /// Bytes that are no key the protocol names (an unknown sequence, a
    /// terminal's reply): skip them.
    Skip(usize),
    /// The start of a key whose rest has not come yet.
    Incomplete,
}

fn key(name: &str, ctrl: bool, alt: bool, shift: bool) -> Key {
    Key {
        key: name.to_owned(),
        ctrl,
        alt,
        shift,
    }
}

/// Decodes the key at the start of `input` (not empty). With `complete`,
/// nothing more is coming soon: a lone ESC is the Esc key.
pub fn decode_key(input: &[u8], complete: bool) -> Decoded {
    let Some(&first) = input.first() else {
        return Decoded::Incomplete;
    };
    if first != ESC {
        return match decode_plain(input) {
            Some((key, len)) => Decoded::Key(key, len),
            None if input.len() < utf8_len(first) && !complete => Decoded::Incomplete,
            None => Decoded::Skip(1),
        };
    }
    let Some(&second) = input.get(1) else {
        return if complete {
            Decoded::Key(key("esc", false, false, false), 1)
        } else {
            Decoded::Incomplete
        };
    };
    match second {
        b'[' => decode_csi(input, complete),
        b'O' => match input.get(2) {
            None if complete => Decoded::Key(key("O", false, true, true), 2),
            None => Decoded::Incomplete,
            Some(&third) => {
                let name = match third {
                    b'P' => "f1",
                    b'Q' => "f2",
                    b'R' => "f3",
                    b'S' => "f4",
                    b'A' => "up",
                    b'B' => "down",
                    b'C' => "right",
                    b'D' => "left",
                    b'H' => "home",
                    b'F' => "end",
                    _ => return Decoded::Skip(3),
                };
                Decoded::Key(key(name, false, false, false), 3)
            }
        },
        b']' | b'P' => match skip_text(input) {
            Some(len) => Decoded::Skip(len),
            None if complete || input.len() > MAX_SEQUENCE => Decoded::Skip(input.len()),
            None => Decoded::Incomplete,
        },
        // ESC ESC: Esc, then whatever the second starts.
        ESC => Decoded::Key(key("esc", false, false, false), 1),
        _ => match decode_plain(&input[1..]) {
            Some((mut key, len)) => {
                key.alt = true;
                Decoded::Key(key, len + 1)
            }
            None if input.len() - 1 < utf8_len(second) && !complete => Decoded::Incomplete,
            None => Decoded::Skip(2),
        },
    }
}

/// A key that is not a sequence: a control byte or a character.
fn decode_plain(input: &[u8]) -> Option<(Key, usize)> {
    let first = *input.first()?;
    let control = |name: &str| Some((key(name, false, false, false), 1));
    match first {
        b'\r' | b'\n' => control("enter"),
        b'\t' => control("tab"),
        0x7f | 0x08 => control("backspace"),
        0x00 => Some((key(" ", true, false, false), 1)),
        0x01..=0x1a => Some((
            key(
                &char::from(b'a' + first - 1).to_string(),
                true,
                false,
                false,
            ),
            1,
        )),
        CTRL_BACKSLASH => Some((key("\\", true, false, false), 1)),
        0x1d => Some((key("]", true, false, false), 1)),
        0x1e => Some((key("^", true, false, false), 1)),
        0x1f => Some((key("_", true, false, false), 1)),
        _ => {
            let len = utf8_len(first);
            let text = std::str::from_utf8(input.get(..len)?).ok()?;
            let shift = text.chars().all(char::is_uppercase);
            Some((key(text, false, false, shift), len))
        }
    }
}

/// The length of the UTF-8 character `first` starts (1 for a stray byte).
fn utf8_len(first: u8) -> usize {
    match first {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// `ESC [ parameters final`: arrows, Home and End, Insert, Delete, page
/// keys, F1–F12 and Shift-Tab, with their modifiers.
fn decode_csi(input: &[u8], complete: bool) -> Decoded {
    let Some(end) = input[2..]
        .iter()
        .position(|byte| !(0x20..=0x3f).contains(byte))
        .map(|at| at + 2)
    else {
        return if complete || input.len() > MAX_SEQUENCE {
            Decoded::Skip(input.len())
        } else {
            Decoded::Incomplete
        };
    };
    let len = end + 1;
    let Ok(parameters) = std::str::from_utf8(&input[2..end]) else {
        return Decoded::Skip(len);
    };
    let mut numbers = parameters.split(';').map(|n| n.parse::<u32>().unwrap_or(1));
    let first = numbers.next().unwrap_or(1);
    // xterm's modifier parameter: 1 + (shift 1, alt 2, ctrl 4).
    let modifiers = numbers.next().unwrap_or(1).saturating_sub(1);
    let name = match input[end] {
        b'A' => "up",
        b'B' => "down",
        b'C' => "right",
        b'D' => "left",
        b'H' => "home",
        b'F' => "end",
        b'P' => "f1",
        b'Q' => "f2",
        b'R' => "f3",
        b'S' => "f4",
        b'Z' => return Decoded::Key(key("tab", false, false, true), len),
        b'~' => match first {
            1 | 7 => "home",
            4 | 8 => "end",
            2 => "insert",
            3 => "delete",
            5 => "page_up",
            6 => "page_down",
            11 => "f1",
            12 => "f2",
            13 => "f3",
            14 => "f4",
            15 => "f5",
            17 => "f6",
            18 => "f7",
            19 => "f8",
            20 => "f9",
            21 => "f10",
            23 => "f11",
            24 => "f12",
            _ => return Decoded::Skip(len),
        },
        _ => return Decoded::Skip(len),
    };
    Decoded::Key(
        key(
            name,
            modifiers & 4 != 0,
            modifiers & 2 != 0,
            modifiers & 1 != 0,
        ),
        len,
    )
}

/// The length of an `ESC ]` or `ESC P` string ended by BEL or `ESC \`.
fn skip_text(input: &[u8]) -> Option<usize> {
    let mut at = 2;
    while at < input.len() {
        match input[at] {
            0x07 => return Some(at + 1),
            ESC if input.get(at + 1) == Some(&b'\\') => return Some(at + 2),
            _ => at += 1,
        }
    }
    None
}

/// The terminal's reader, shared by its thread and the session.
pub struct KeyPump {
    state: Mutex<State>,
    /// The reading thread waits here while nothing is to be read.
    wanted: Condvar,
    /// The reading thread is not reading (for raw mode's end, a prompt).
    stopped: Condvar,
    /// Wakes the reading thread from its wait for the terminal.
    wake: Option<(OwnedFd, OwnedFd)>,
    /// Input arrived, or reading failed.
    arrived: Notify,
    disconnect: Notify,
    detach: Notify,
}

#[derive(Default)]
struct State {
    /// The terminal is raw: what is read is filtered for the escapes.
    raw: bool,
    /// The app has read its stdin: lines are read for it in cooked mode too.
    bytes_wanted: bool,
    /// The client's own prompt is on screen: nothing is read.
    paused: bool,
    input: VecDeque<u8>,
    /// Where in `input` the terminal's end of file (Ctrl-D in cooked
    /// mode) is.
    eof_at: Option<usize>,
    /// The byte reader waiting for input.
    byte_waker: Option<Waker>,
    escapes: Escapes,
    /// Ctrl-\ detaches instead of going to the app.
    detach_key: bool,
    /// Why reading failed (the terminal went away): reads end.
    failed: Option<String>,
    thread: bool,
    /// The reading thread is reading (or waiting for) the terminal.
    reading: bool,
}

impl State {
    fn wants_input(&self) -> bool {
        (self.raw || self.bytes_wanted) && !self.paused && self.failed.is_none()
    }

    /// Keeps what came from the terminal (filtered in raw mode).
    fn keep(&mut self, bytes: &[u8]) -> Vec<Escape> {
        let mut kept = Vec::with_capacity(bytes.len());
        let escapes = if self.raw {
            let detach_key = self.detach_key;
            self.escapes.feed(bytes, detach_key, &mut kept)
        } else {
            kept.extend_from_slice(bytes);
            Vec::new()
        };
        let room = MAX_BUFFERED.saturating_sub(self.input.len());
        self.input.extend(&kept[..kept.len().min(room)]);
        escapes
    }

    /// Takes up to `max` bytes for the app; `None` at the terminal's end
    /// of file.
    fn take(&mut self, max: usize) -> Option<Vec<u8>> {
        if self.eof_at == Some(0) {
            self.eof_at = None;
            return None;
        }
        let n = max
            .min(self.input.len())
            .min(self.eof_at.unwrap_or(usize::MAX));
        if let Some(at) = &mut self.eof_at {
            *at -= n;
        }
        Some(self.input.drain(..n).collect())
    }

    fn wake_readers(&mut self, arrived: &Notify) {
        arrived.notify_one();
        if let Some(waker) = self.byte_waker.take() {
            waker.wake();
        }
    }
}

static PUMP: OnceLock<KeyPump> = OnceLock::new();

/// The process's terminal reader (there is one terminal).
pub fn pump() -> &'static KeyPump {
    PUMP.get_or_init(|| KeyPump {
        state: Mutex::new(State::default()),
        wanted: Condvar::new(),
        stopped: Condvar::new(),
        wake: wake_pipe().ok(),
        arrived: Notify::new(),
        disconnect: Notify::new(),
        detach: Notify::new(),
    })
}

/// A pipe whose write end wakes the reading thread; not inherited by
/// programs the client starts (a browser opener).
fn wake_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::io::{FdFlags, fcntl_setfd, ioctl_fionbio};
    let (read, write) = rustix::pipe::pipe()?;
    for end in [&read, &write] {
        ioctl_fionbio(end, true)?;
        fcntl_setfd(end, FdFlags::CLOEXEC)?;
    }
    Ok((read, write))
}

impl KeyPump {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The terminal's mode changed: raw or not, and whether the client's
    /// own prompt is on screen. Called by the terminal's owner before the
    /// terminal leaves raw mode or the prompt shows, and after it enters
    /// raw mode; returns once the reading thread stopped reading if it must.
    pub(crate) fn set_mode(&'static self, raw: bool, paused: bool) {
        let mut state = self.state();
        if state.raw == raw && state.paused == paused {
            return;
        }
        if paused && !state.paused {
            // The prompt flushes what was typed ahead; so is this.
            state.input.clear();
            state.eof_at = None;
        }
        if raw && !state.raw {
            // A new raw period tries the terminal again.
            state.failed = None;
        }
        state.raw = raw;
        state.paused = paused;
        self.wanted_changed(state);
    }

    /// Whether Ctrl-\ detaches (a resumable session) or goes to the app.
    pub fn set_detach_key(&self, on: bool) {
        self.state().detach_key = on;
    }

    /// Starts or stops the reading thread for what is now wanted.
    fn wanted_changed(&'static self, mut state: MutexGuard<'_, State>) {
        if state.wants_input() {
            self.wanted.notify_all();
            self.spawn(&mut state);
            return;
        }
        if let Some((_, write)) = &self.wake {
            // A full pipe wakes the thread as well.
            let _ = rustix::io::write(write, &[0]);
        }
        let _ = self
            .stopped
            .wait_timeout_while(state, STOP_WAIT, |state| state.reading)
            .unwrap_or_else(PoisonError::into_inner);
    }

    fn spawn(&'static self, state: &mut State) {
        if state.thread {
            return;
        }
        let Some((wake, _)) = &self.wake else {
            state.failed = Some("no wake-up pipe".to_owned());
            state.wake_readers(&self.arrived);
            return;
        };
        let started = std::thread::Builder::new()
            .name("terminalwire-tty".to_owned())
            .spawn(move || self.read_terminal(wake.as_fd()));
        match started {
            Ok(_) => state.thread = true,
            Err(error) => {
                state.failed = Some(format!("cannot start reading the terminal: {error}"));
                state.wake_readers(&self.arrived);
            }
        }
    }

    /// The next key for the app, in the order typed.
    pub async fn next_key(&self) -> io::Result<Key> {
        let mut complete = false;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let partial = match self.take_key(complete)? {
                Ok(key) => return Ok(key),
                Err(partial) => partial,
            };
            if partial {
                // Its rest comes at once, or it was the Esc key on its own.
                complete = tokio::time::timeout(ESC_WAIT, arrived).await.is_err();
            } else {
                complete = false;
                arrived.await;
            }
        }
    }

    /// A key from the input if there is one; else whether the input holds
    /// the start of one.
    fn take_key(&self, complete: bool) -> io::Result<Result<Key, bool>> {
        let mut state = self.state();
        while !state.input.is_empty() {
            let input = state.input.make_contiguous();
            let (key, len) = match decode_key(input, complete) {
                Decoded::Key(key, len) => (Some(key), len),
                Decoded::Skip(len) => (None, len),
                Decoded::Incomplete => break,
            };
            state.input.drain(..len);
            state.eof_at = state.eof_at.map(|at| at.saturating_sub(len));
            if let Some(key) = key {
                return Ok(Ok(key));
            }
        }
        if let Some(failed) = &state.failed {
            return Err(io::Error::other(format!(
                "cannot read the terminal: {failed}"
            )));
        }
        Ok(Err(!state.input.is_empty()))
    }

    /// Completes when the user typed `~.`.
    pub async fn disconnect_typed(&self) {
        self.disconnect.notified().await;
    }

    /// Completes when the user typed Ctrl-\ in a resumable session.
    pub async fn detach_typed(&self) {
        self.detach.notified().await;
    }

    /// The reading thread: reads the terminal while input is wanted.
    fn read_terminal(&'static self, wake: BorrowedFd<'_>) {
        // A panic here must not leave a mode change waiting on `reading`.
        struct Stopped(&'static KeyPump);
        impl Drop for Stopped {
            fn drop(&mut self) {
                let mut state = self.0.state();
                state.reading = false;
                state.thread = false;
                if state.failed.is_none() && std::thread::panicking() {
                    state.failed = Some("the terminal reader failed".to_owned());
                }
                state.wake_readers(&self.0.arrived);
                self.0.stopped.notify_all();
            }
        }
        let _stopped = Stopped(self);
        let mut buffer = vec![0u8; 4096];
        loop {
            {
                let mut state = self.state();
                state.reading = false;
                self.stopped.notify_all();
                while !state.wants_input() {
                    if state.failed.is_some() {
                        return;
                    }
                    state = self
                        .wanted
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                state.reading = true;
            }
            match self.read_once(wake, &mut buffer) {
                Ok(escapes) => self.act_on(&escapes),
                Err(error) => {
                    let mut state = self.state();
                    state.failed = Some(error.to_string());
                    state.wake_readers(&self.arrived);
                    return;
                }
            }
        }
    }

    /// Waits for the terminal (or a wake-up) and keeps what it read.
    fn read_once(&self, wake: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<Vec<Escape>> {
        use rustix::event::{PollFd, PollFlags};
        let stdin = rustix::stdio::stdin();
        let mut fds = [
            PollFd::new(&stdin, PollFlags::IN),
            PollFd::from_borrowed_fd(wake, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
        let terminal = fds[0].revents();
        let mut drained = [0u8; 64];
        while matches!(rustix::io::read(wake, &mut drained), Ok(n) if n > 0) {}
        if !self.state().wants_input() {
            return Ok(Vec::new());
        }
        if terminal.intersects(PollFlags::ERR | PollFlags::NVAL) {
            return Err(io::Error::other("the terminal is gone"));
        }
        if terminal.is_empty() {
            return Ok(Vec::new());
        }
        // Readable: this thread is the terminal's only reader, so the
        // read returns at once.
        let n = match rustix::io::read(stdin, &mut *buffer) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut state = self.state();
        if n == 0 {
            if terminal.contains(PollFlags::HUP) {
                return Err(io::Error::other("the terminal hung up"));
            }
            // Ctrl-D in cooked mode: the end of this input.
            state.eof_at = Some(state.input.len());
            state.wake_readers(&self.arrived);
            return Ok(Vec::new());
        }
        let escapes = state.keep(&buffer[..n]);
        state.wake_readers(&self.arrived);
        Ok(escapes)
    }

    fn act_on(&self, escapes: &[Escape]) {
        for escape in escapes {
            match escape {
                Escape::Disconnect => {
                    self.disconnect.notify_one();
                    // The session ends the client; should it be held up,
                    // the escape still works.
                    let _ = std::thread::Builder::new()
                        .name("terminalwire-disconnect".to_owned())
                        .spawn(|| {
                            std::thread::sleep(DISCONNECT_GRACE);
                            let _ = crate::terminal::restore();
                            eprintln!("terminalwire: disconnected (~.)");
                            std::process::exit(i32::from(crate::exit_code::INTERRUPTED));
                        });
                }
                Escape::Detach => self.detach.notify_one(),
                Escape::Help => {
                    // Not under the state's lock: stderr may block.
                    let mut stderr = io::stderr().lock();
                    let _ = stderr.write_all(ESCAPE_HELP.as_bytes());
                    let _ = stderr.flush();
                }
            }
        }
    }
}

/// The app's stdin when it is the terminal: what [`KeyPump`] read.
#[derive(Debug, Default)]
pub struct TtyStdin;

impl AsyncRead for TtyStdin {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let pump = pump();
        let mut state = pump.state();
        if state.input.is_empty() && state.eof_at != Some(0) {
            if state.failed.is_some() {
                // The terminal is gone: the end of input.
                return Poll::Ready(Ok(()));
            }
            state.byte_waker = Some(cx.waker().clone());
            if !state.bytes_wanted {
                state.bytes_wanted = true;
                if state.wants_input() {
                    pump.wanted.notify_all();
                    pump.spawn(&mut state);
                }
            }
            return Poll::Pending;
        }
        if let Some(bytes) = state.take(buf.remaining()) {
            buf.put_slice(&bytes);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(text: &str) -> Key {
        key(text, false, false, false)
    }

    /// The app's bytes and the escapes for `typed`, fed in pieces of
    /// `piece` bytes.
    fn filtered(typed: &[u8], detach_key: bool, piece: usize) -> (Vec<u8>, Vec<Escape>) {
        let mut escapes = Escapes::default();
        let mut out = Vec::new();
        let mut found = Vec::new();
        for chunk in typed.chunks(piece) {
            found.extend(escapes.feed(chunk, detach_key, &mut out));
        }
        (out, found)
    }

    #[test]
    fn tilde_dot_disconnects_at_the_start_and_after_enter_only() {
        for piece in [1, 64] {
            assert_eq!(
                filtered(b"~.", false, piece),
                (vec![], vec![Escape::Disconnect])
            );
            assert_eq!(filtered(b"a~.", false, piece), (b"a~.".to_vec(), vec![]));
            assert_eq!(
                filtered(b"a\r~.", false, piece),
                (b"a\r".to_vec(), vec![Escape::Disconnect])
            );
        }
    }

    #[test]
    fn a_held_tilde_goes_to_the_app_before_any_other_key() {
        assert_eq!(filtered(b"~x", false, 1), (b"~x".to_vec(), vec![]));
        // `~~` is one `~`, and what follows is not at a line's start.
        assert_eq!(filtered(b"~~~.", false, 1), (b"~~.".to_vec(), vec![]));
        assert_eq!(
            filtered(b"~\r~.", false, 1),
            (b"~\r".to_vec(), vec![Escape::Disconnect])
        );
        // An arrow after a held tilde comes after it.
        assert_eq!(
            filtered(b"~\x1b[Ax", false, 1),
            (b"~\x1b[Ax".to_vec(), vec![])
        );
    }

    #[test]
    fn terminal_sequences_neither_start_nor_break_an_escape() {
        // A reply to a query (OSC 11) between Enter, `~` and `.`.
        let reply = b"\x1b]11;rgb:0000/0000/0000\x07";
        let mut typed = b"ab\r".to_vec();
        typed.extend_from_slice(reply);
        typed.push(b'~');
        typed.extend_from_slice(b"\x1b[I");
        typed.push(b'.');
        let mut expected = b"ab\r".to_vec();
        expected.extend_from_slice(reply);
        assert_eq!(
            filtered(&typed, false, 1),
            (expected, vec![Escape::Disconnect])
        );
        // A tilde inside a sequence is not the escape.
        assert_eq!(
            filtered(b"\x1b]~.\x07", false, 1),
            (b"\x1b]~.\x07".to_vec(), vec![])
        );
    }

    #[test]
    fn help_keeps_the_line_start_and_ctrl_backslash_detaches_when_it_can() {
        assert_eq!(
            filtered(b"~?~.", false, 1),
            (vec![], vec![Escape::Help, Escape::Disconnect])
        );
        assert_eq!(
            filtered(b"a\x1cb", true, 1),
            (b"ab".to_vec(), vec![Escape::Detach])
        );
        assert_eq!(filtered(b"a\x1cb", false, 1), (b"a\x1cb".to_vec(), vec![]));
    }

    #[test]
    fn keys_decode_from_what_terminals_send() {
        let decoded = |bytes: &[u8]| match decode_key(bytes, true) {
            Decoded::Key(key, len) => {
                assert_eq!(len, bytes.len(), "{bytes:?}");
                key
            }
            other => panic!("{bytes:?}: {other:?}"),
        };
        assert_eq!(decoded(b"a"), plain("a"));
        assert_eq!(decoded(b"Z"), key("Z", false, false, true));
        assert_eq!(decoded("é".as_bytes()), plain("é"));
        assert_eq!(decoded(b"\r"), plain("enter"));
        assert_eq!(decoded(b"\t"), plain("tab"));
        assert_eq!(decoded(b"\x7f"), plain("backspace"));
        assert_eq!(decoded(b"\x03"), key("c", true, false, false));
        assert_eq!(decoded(b"\x1c"), key("\\", true, false, false));
        assert_eq!(decoded(b"\x1b"), plain("esc"));
        assert_eq!(decoded(b"\x1bx"), key("x", false, true, false));
        assert_eq!(decoded(b"\x1b[A"), plain("up"));
        assert_eq!(decoded(b"\x1bOD"), plain("left"));
        assert_eq!(decoded(b"\x1b[1;5C"), key("right", true, false, false));
        assert_eq!(decoded(b"\x1b[3~"), plain("delete"));
        assert_eq!(decoded(b"\x1b[15~"), plain("f5"));
        assert_eq!(decoded(b"\x1b[24;2~"), key("f12", false, false, true));
        assert_eq!(decoded(b"\x1bOP"), plain("f1"));
        assert_eq!(decoded(b"\x1b[Z"), key("tab", false, false, true));
    }

    #[test]
    fn partial_keys_wait_and_unknown_sequences_are_skipped() {
        for partial in [&b"\x1b"[..], b"\x1b[", b"\x1b[1;5", b"\xc3", b"\x1b]11;rgb"] {
            assert_eq!(
                decode_key(partial, false),
                Decoded::Incomplete,
                "{partial:?}"
            );
        }
        assert_eq!(
            decode_key(b"\x1b]11;rgb:0/0/0\x07x", false),
            Decoded::Skip(15)
        );
        assert_eq!(decode_key(b"\x1b[?1;2c", false), Decoded::Skip(7));
        assert_eq!(decode_key(b"\xff", false), Decoded::Skip(1));
    }

    #[test]
    fn the_app_reads_up_to_the_end_of_file_then_past_it() {
        let mut state = State::default();
        state.keep(b"abc\n");
        state.eof_at = Some(state.input.len());
        state.keep(b"more\n");
        assert_eq!(state.take(2).unwrap(), b"ab");
        assert_eq!(state.take(100).unwrap(), b"c\n");
        assert_eq!(state.take(100), None);
        assert_eq!(state.take(100).unwrap(), b"more\n");
    }
}
