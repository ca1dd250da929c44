//! Resuming a session over a new connection: sequence numbers,
//! acknowledgements, replay and duplicate suppression, free of I/O.
//!
//! With the `resume` capability, each side numbers the *sequenced* frames it
//! sends (`ClientFrame::is_sequenced`, `ServerFrame::is_sequenced`) 1, 2, 3, …
//! for the whole session, across connections. The numbers are implied by the
//! order, never written: a connection carries frames in order, and a new
//! connection starts by telling the peer how many it has processed
//! (`resume.received`, `resumed.received`). Each side:
//!
//! - keeps what it sent until the peer acknowledges it ([`ReplayBuffer`]),
//!   and after a reconnection sends again exactly the frames the peer lacks;
//! - counts what it has processed and acknowledges it now and then with an
//!   `ack` frame ([`Receipts`]), so the peer can forget those frames.
//!
//! So no frame is lost or processed twice, and a request is executed once.
//! The client also keeps the answers to recent requests ([`RecentRequests`])
//! so that a request id it has already executed is answered again, never
//! re-executed, whatever the server sends.
//!
//! # Layout
//!
//! - [`ReplayBuffer`]: the sender's unacknowledged frames.
//! - [`Receipts`]: the receiver's count and when to acknowledge it.
//! - [`RecentRequests`]: the client's answers to recently executed requests.
//! - [`Token`]: the resume secret.

use std::collections::{HashMap, VecDeque};

/// The `resume` capability.
pub const CAPABILITY: &str = "resume";

/// Acknowledge after this many unacknowledged sequenced frames…
pub const ACK_EVERY_FRAMES: u64 = 32;
/// …or after this many bytes of them, whichever comes first. Receivers also
/// acknowledge whatever is left after a short delay (the reference programs:
/// [`ACK_DELAY_MS`]), so a sender never waits long to free its buffer.
pub const ACK_EVERY_BYTES: u64 = 512 * 1024;
/// Longest a receiver waits before acknowledging what it has processed.
pub const ACK_DELAY_MS: u64 = 100;

/// A problem with what the peer said about sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// The peer acknowledged frames that were never sent.
    #[error("the peer acknowledged {acked} frames but only {sent} were sent")]
    AckBeyondSent {
        /// What the peer acknowledged.
        acked: u64,
        /// What was sent.
        sent: u64,
    },
    /// The peer asked for frames this side no longer holds (it had
    /// acknowledged them before).
    #[error(
        "the peer asked for frames after {from}, but frames up to {forgotten} were already acknowledged and forgotten"
    )]
    AlreadyForgotten {
        /// The peer's count.
        from: u64,
        /// Everything up to here was acknowledged earlier.
        forgotten: u64,
    },
    /// An acknowledgement went backwards.
    #[error("the peer's acknowledgement went back from {before} to {now}")]
    AckWentBack {
        /// The earlier acknowledgement.
        before: u64,
        /// The new one.
        now: u64,
    },
}

/// The frames a side has sent and the peer has not acknowledged yet, as
/// encoded bytes (before any sealing: a new connection seals them anew).
///
/// `F` is how a frame's bytes are held: a `Vec<u8>` by default, or a
/// shared, reference-counted buffer, so that a sender can keep a frame and
/// hand the same bytes to its transport without copying them.
#[derive(Debug, Clone)]
pub struct ReplayBuffer<F = Vec<u8>> {
    /// Frames `acked + 1 ..= sent`, oldest first.
    frames: VecDeque<F>,
    /// Sequenced frames sent so far (the number of the last one).
    sent: u64,
    /// Frames up to here are acknowledged and forgotten.
    acked: u64,
    /// Sum of the lengths in `frames`.
    bytes: u64,
}

impl<F> Default for ReplayBuffer<F> {
    fn default() -> Self {
        ReplayBuffer {
            frames: VecDeque::new(),
            sent: 0,
            acked: 0,
            bytes: 0,
        }
    }
}

impl<F: AsRef<[u8]> + Clone> ReplayBuffer<F> {
    /// An empty buffer at the start of a session.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer that continues a session in another process: `sent` frames
    /// were sent, and `unacked` are the last of them, oldest first (only
    /// the last `sent` of them are kept, should there be more).
    pub fn restore(sent: u64, mut unacked: Vec<F>) -> Self {
        let extra = unacked
            .len()
            .saturating_sub(usize::try_from(sent).unwrap_or(usize::MAX));
        unacked.drain(..extra);
        let acked = sent - unacked.len() as u64;
        let bytes = unacked
            .iter()
            .map(|frame| frame.as_ref().len() as u64)
            .sum();
        ReplayBuffer {
            frames: unacked.into(),
            sent,
            acked,
            bytes,
        }
    }

    /// Records a sequenced frame about to be sent; returns its number.
    pub fn push(&mut self, encoded: F) -> u64 {
        self.bytes += encoded.as_ref().len() as u64;
        self.frames.push_back(encoded);
        self.sent += 1;
        self.sent
    }

    /// The peer processed every frame up to `seq`: forget them. An
    /// acknowledgement older than an earlier one is harmless and ignored
    /// (acks may cross a reconnection).
    pub fn ack(&mut self, seq: u64) -> Result<(), ResumeError> {
        if seq > self.sent {
            return Err(ResumeError::AckBeyondSent {
                acked: seq,
                sent: self.sent,
            });
        }
        while self.acked < seq {
            if let Some(frame) = self.frames.pop_front() {
                self.bytes -= frame.as_ref().len() as u64;
            }
            self.acked += 1;
        }
        Ok(())
    }

    /// After a reconnection: the peer has processed `received` frames. Forgets
    /// those and returns the ones it lacks, oldest first, to send again.
    pub fn replay_after(&mut self, received: u64) -> Result<Vec<F>, ResumeError> {
        if received < self.acked {
            return Err(ResumeError::AlreadyForgotten {
                from: received,
                forgotten: self.acked,
            });
        }
        self.ack(received)?;
        Ok(self.frames.iter().cloned().collect())
    }

    /// Sequenced frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Frames up to here are acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Unacknowledged frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether every sent frame is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes held for replay.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The unacknowledged frames, oldest first (to save a detached session).
    pub fn unacked(&self) -> impl Iterator<Item = &[u8]> {
        self.frames.iter().map(AsRef::as_ref)
    }
}

/// The receiver's books: how many sequenced frames it has processed, and
/// when to say so.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Receipts {
    received: u64,
    acked: u64,
    bytes_since_ack: u64,
}

impl Receipts {
    /// Nothing received yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues a session in which `received` frames were processed and
    /// acknowledged (by the resume handshake).
    pub fn restore(received: u64) -> Self {
        Receipts {
            received,
            acked: received,
            bytes_since_ack: 0,
        }
    }

    /// Records one processed sequenced frame of `len` bytes. Returns the
    /// number to acknowledge when an `ack` is due now.
    pub fn on_frame(&mut self, len: usize) -> Option<u64> {
        self.received += 1;
        self.bytes_since_ack += len as u64;
        let due = self.received - self.acked >= ACK_EVERY_FRAMES
            || self.bytes_since_ack >= ACK_EVERY_BYTES;
        due.then(|| self.take_ack())
    }

    /// The number to acknowledge if anything is unacknowledged (on a timer,
    /// or before closing).
    pub fn pending(&mut self) -> Option<u64> {
        (self.received > self.acked).then(|| self.take_ack())
    }

    /// Marks everything received as acknowledged (the count went out in a
    /// `resume` or `resumed` frame).
    pub fn acknowledged_all(&mut self) {
        self.acked = self.received;
        self.bytes_since_ack = 0;
    }

    fn take_ack(&mut self) -> u64 {
        self.acknowledged_all();
        self.received
    }

    /// Sequenced frames processed so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

/// Most request answers the client keeps.
pub const RECENT_REQUESTS: usize = 1024;
/// Most bytes of answers the client keeps; larger answers are remembered as
/// executed without their bytes.
pub const RECENT_BYTES: usize = 4 * 1024 * 1024;

/// What the client knows of a request id it has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Never seen (or long forgotten): execute it.
    New,
    /// Being executed now: its answer will come; do nothing.
    Running,
    /// Executed; here is its encoded answer to send again.
    Answered(Vec<u8>),
    /// Executed, but the answer was too large to keep: answer with an error,
    /// never execute again.
    AnsweredNotKept,
}

/// One remembered request.
#[derive(Debug)]
enum Entry {
    Running,
    Kept(Vec<u8>),
    NotKept,
}

/// The client's memory of recent requests, so that a request id seen twice
/// is never executed twice.
#[derive(Debug, Default)]
pub struct RecentRequests {
    entries: HashMap<u64, Entry>,
    order: VecDeque<u64>,
    bytes: usize,
}

impl RecentRequests {
    /// Remembers nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks `id` up; a new id is remembered as running.
    pub fn begin(&mut self, id: u64) -> Seen {
        match self.entries.get(&id) {
            None => {
                self.entries.insert(id, Entry::Running);
                self.order.push_back(id);
                self.trim();
                Seen::New
            }
            Some(Entry::Running) => Seen::Running,
            Some(Entry::Kept(answer)) => Seen::Answered(answer.clone()),
            Some(Entry::NotKept) => Seen::AnsweredNotKept,
        }
    }

    /// Records the encoded answer to `id`.
    pub fn finish(&mut self, id: u64, answer: &[u8]) {
        // One answer may take at most a sixteenth of the budget.
        let keep = answer.len() <= RECENT_BYTES / 16;
        if let Some(entry) = self.entries.get_mut(&id) {
            *entry = if keep {
                self.bytes += answer.len();
                Entry::Kept(answer.to_vec())
            } else {
                Entry::NotKept
            };
        }
        self.trim();
    }

    /// Requests remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets the oldest requests over the budgets, but never one still
    /// running (a read waiting for input while a thousand newer requests
    /// come and go): forgotten, a repeat of its id would run it again. It
    /// goes to the back instead; running requests are at most the ones a
    /// server may have in flight.
    fn trim(&mut self) {
        let mut kept_running = 0;
        while (self.order.len() > RECENT_REQUESTS || self.bytes > RECENT_BYTES)
            && kept_running < self.order.len()
        {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            match self.entries.get(&oldest) {
                Some(Entry::Running) => {
                    self.order.push_back(oldest);
                    kept_running += 1;
                }
                _ => {
                    if let Some(Entry::Kept(answer)) = self.entries.remove(&oldest) {
                        self.bytes -= answer.len();
                    }
                }
            }
        }
    }
}

/// A resume token: 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub [u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never in logs.
        f.write_str("Token(…)")
    }
}

impl Token {
    /// Compares with bytes from the wire in time independent of where they
    /// differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        if presented.len() != self.0.len() {
            return false;
        }
        let diff = self
            .0
            .iter()
            .zip(presented)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b));
        diff == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Vec<u8> {
        vec![n; usize::from(n)]
    }

    #[test]
    fn replay_sends_exactly_what_the_peer_lacks() {
        let mut buffer = ReplayBuffer::new();
        for n in 1..=5 {
            assert_eq!(buffer.push(frame(n)), u64::from(n));
        }
        buffer.ack(2).unwrap();
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.bytes(), 3 + 4 + 5);
        // The peer got frame 3 but its ack was lost with the connection.
        assert_eq!(buffer.replay_after(3).unwrap(), vec![frame(4), frame(5)]);
        assert_eq!(buffer.acked(), 3);
        assert_eq!(buffer.push(frame(6)), 6);
        assert_eq!(buffer.replay_after(5).unwrap(), vec![frame(6)]);
        assert_eq!(buffer.replay_after(6).unwrap(), Vec::<Vec<u8>>::new());
        assert!(buffer.is_empty());
        assert_eq!(buffer.bytes(), 0);
    }

    #[test]
    fn impossible_counts_are_errors() {
        let mut buffer = ReplayBuffer::new();
        buffer.push(frame(1));
        buffer.push(frame(2));
        assert_eq!(
            buffer.ack(3),
            Err(ResumeError::AckBeyondSent { acked: 3, sent: 2 })
        );
        buffer.ack(2).unwrap();
        // A stale ack is harmless.
        buffer.ack(1).unwrap();
        assert_eq!(
            buffer.replay_after(1),
            Err(ResumeError::AlreadyForgotten {
                from: 1,
                forgotten: 2
            })
        );
        assert!(matches!(
            buffer.replay_after(9),
            Err(ResumeError::AckBeyondSent { .. })
        ));
    }

    #[test]
    fn restored_buffer_continues_the_numbering() {
        let mut buffer = ReplayBuffer::restore(10, vec![frame(9), frame(10)]);
        assert_eq!(buffer.acked(), 8);
        assert_eq!(buffer.replay_after(9).unwrap(), vec![frame(10)]);
        assert_eq!(buffer.push(frame(11)), 11);
        let unacked: Vec<&[u8]> = buffer.unacked().collect();
        assert_eq!(unacked, vec![&frame(10)[..], &frame(11)[..]]);
    }

    /// More unacknowledged frames than were sent (a damaged record): only
    /// the last `sent` are kept, under the numbers they had.
    #[test]
    fn a_restore_with_more_unacked_frames_than_sent_keeps_the_last() {
        let mut buffer = ReplayBuffer::restore(1, vec![frame(0), frame(1)]);
        assert_eq!(buffer.acked(), 0);
        assert_eq!(buffer.replay_after(0).unwrap(), vec![frame(1)]);
    }

    #[test]
    fn receipts_ack_by_count_and_by_bytes() {
        let mut receipts = Receipts::new();
        for n in 1..ACK_EVERY_FRAMES {
            assert_eq!(receipts.on_frame(10), None, "frame {n}");
        }
        assert_eq!(receipts.on_frame(10), Some(ACK_EVERY_FRAMES));
        assert_eq!(receipts.pending(), None);
        assert_eq!(
            receipts.on_frame(ACK_EVERY_BYTES as usize),
            Some(ACK_EVERY_FRAMES + 1)
        );
        assert_eq!(receipts.on_frame(1), None);
        assert_eq!(receipts.pending(), Some(ACK_EVERY_FRAMES + 2));
        assert_eq!(receipts.pending(), None);
        let mut restored = Receipts::restore(7);
        assert_eq!(restored.pending(), None);
        restored.on_frame(1);
        assert_eq!(restored.pending(), Some(8));
    }

    #[test]
    fn a_request_is_executed_once() {
        let mut recent = RecentRequests::new();
        assert_eq!(recent.begin(1), Seen::New);
        assert_eq!(recent.begin(1), Seen::Running);
        recent.finish(1, b"answer");
        assert_eq!(recent.begin(1), Seen::Answered(b"answer".to_vec()));
        assert_eq!(recent.begin(2), Seen::New);
        recent.finish(2, &vec![0; RECENT_BYTES]);
        assert_eq!(recent.begin(2), Seen::AnsweredNotKept);
    }

    #[test]
    fn recent_requests_stay_bounded() {
        let mut recent = RecentRequests::new();
        for id in 0..(RECENT_REQUESTS as u64 * 3) {
            assert_eq!(recent.begin(id), Seen::New);
            recent.finish(id, &[0; 100_000]);
        }
        assert!(recent.len() <= RECENT_REQUESTS);
        assert!(recent.bytes <= RECENT_BYTES);
        // The newest are still known, the oldest forgotten.
        let newest = RECENT_REQUESTS as u64 * 3 - 1;
        assert!(matches!(recent.begin(newest), Seen::Answered(_)));
        assert_eq!(recent.begin(0), Seen::New);
    }

    /// A read waiting for input while a thousand and more newer requests
    /// come and go is still known as running: its id repeated is not run a
    /// second time (it took a second line of input).
    #[test]
    fn a_running_request_is_never_forgotten() {
        let mut recent = RecentRequests::new();
        assert_eq!(recent.begin(1), Seen::New);
        for id in 2..=(RECENT_REQUESTS as u64 * 2) {
            assert_eq!(recent.begin(id), Seen::New);
            recent.finish(id, b"answer");
        }
        assert!(recent.len() <= RECENT_REQUESTS);
        assert_eq!(recent.begin(1), Seen::Running);
        // Once answered, it is forgotten in its turn like any other.
        recent.finish(1, b"answer");
        for id in (RECENT_REQUESTS as u64 * 2 + 1)..=(RECENT_REQUESTS as u64 * 4) {
            recent.begin(id);
            recent.finish(id, b"answer");
        }
        assert_eq!(recent.begin(1), Seen::New);
    }

    #[test]
    fn tokens_compare_whole() {
        let token = Token([7; 32]);
        assert!(token.matches(&[7; 32]));
        assert!(!token.matches(&[7; 31]));
        let mut other = [7; 32];
        other[31] = 8;
        assert!(!token.matches(&other));
        assert_eq!(format!("{token:?}"), "Token(…)");
    }
}
