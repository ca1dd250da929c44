//! Requests waiting for their answers, and the input of reads given up.
//!
//! A command may stop waiting for a read of the user's input (a
//! `tokio::time::timeout` around `read_line`, a `select!`). The client may
//! have taken a line for it by then, typed by the user: that line must not be
//! lost. So a read given up before its answer is *abandoned*, not forgotten:
//! its answer, when it comes, is kept as a *leftover*, and the next read of
//! the same kind takes it instead of asking the client again: bytes and keys
//! for any read of bytes or keys, a line only for a line read with the same
//! prompt (typed for another question, it is dropped when a read with
//! another prompt comes), a password never (the next password read asks
//! again). Reads wait for abandoned reads to be answered first (a client that
//! knows `cancel` answers them with `cancelled` as soon as it hears of it,
//! unless it had started on the input), so input stays in the order it was
//! typed. Leftovers are kept in that order, across kinds, by the id of the
//! read that brought them (the client reads stdin for reads of bytes, lines
//! and passwords in the order they were sent; keys, read apart, are only
//! ever taken by key reads), bytes a reader puts back too: a line read
//! finds a line typed for an earlier read given up before bytes typed
//! after it.

use std::collections::{HashMap, VecDeque};

use serde_bytes::ByteBuf;
use terminalwire_protocol::frame::{Operation, Reply, Response};
use tokio::sync::oneshot;

/// Which kind of input a read takes: only a read of the same kind may take
/// another's leftover (a line typed with echo is no password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InputKind {
    /// `stdin_read_line` with this prompt.
    Line(Option<String>),
    /// `stdin_read_password`.
    Password,
    /// `stdin_read`: bytes as they come.
    Bytes,
    /// `read_key`.
    Key,
}

impl InputKind {
    /// Whether `op` reads the user's input (see [`InputKind::of`]).
    pub(crate) fn reads_input(op: &Operation) -> bool {
        matches!(
            op,
            Operation::StdinReadLine { .. }
                | Operation::StdinReadPassword { .. }
                | Operation::StdinRead { .. }
                | Operation::ReadKey
        )
    }

    /// Most bytes an answer to `op` may carry: a byte read's `max` (more
    /// is refused, as `data_reply` refuses it), no bound for other reads.
    pub(crate) fn most_bytes(op: &Operation) -> u32 {
        match op {
            Operation::StdinRead { max } => *max,
            _ => u32::MAX,
        }
    }

    /// The kind of input `op` reads, if it reads the user's input.
    pub(crate) fn of(op: &Operation) -> Option<Self> {
        match op {
            Operation::StdinReadLine { prompt } => Some(Self::Line(prompt.clone())),
            Operation::StdinReadPassword { .. } => Some(Self::Password),
            Operation::StdinRead { .. } => Some(Self::Bytes),
            Operation::ReadKey => Some(Self::Key),
            _ => None,
        }
    }
}

/// The requests of one session that wait for an answer.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Where each request's answer goes, by id.
    waiters: HashMap<u64, oneshot::Sender<Response>>,
    /// Allocated at the first read given up: every idle session pays for
    /// this struct, few ever give a read up.
    given_up: Option<Box<GivenUp>>,
}

/// Reads given up and the input they took.
#[derive(Debug, Default)]
struct GivenUp {
    /// Reads given up before their answer came, in the order they were
    /// sent, with the most bytes their answer may carry.
    abandoned: Vec<(u64, InputKind, u32)>,
    /// Input that abandoned reads took, oldest first.
    leftovers: VecDeque<Leftover>,
}

/// The input of one read given up, as the next reads take it.
#[derive(Debug)]
struct Leftover {
    kind: InputKind,
    /// The id of the read that brought it: when it was typed.
    typed: u64,
    reply: Reply,
    /// Bytes of a data reply already taken: a byte read takes a piece, and
    /// the rest stays where it is (cut off instead, every small read after
    /// a large answer copied all the rest, and kept its allocation).
    taken: usize,
}

impl Leftover {
    fn new(kind: InputKind, typed: u64, reply: Reply) -> Self {
        Leftover {
            kind,
            typed,
            reply,
            taken: 0,
        }
    }
}

/// The start of a line, from bytes of stdin kept for byte reads
/// ([`Pending::take_line_bytes`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct KeptLine {
    /// The id of the read that brought the first of them.
    pub(crate) typed: u64,
    /// The bytes, with the newline that ended them if one did.
    pub(crate) bytes: Vec<u8>,
    /// A newline or the end of input ended them.
    pub(crate) ended: bool,
}

/// What became of an answer handed to [`Pending::complete`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Completed {
    /// Its requester had it.
    Delivered,
    /// It answered an abandoned read; `settled` when no abandoned read is
    /// left unanswered.
    Abandoned {
        /// No abandoned read waits any more.
        settled: bool,
    },
    /// Nobody waited for it.
    Unclaimed,
}

impl Pending {
    /// Registers the request `id`; its answer goes to `waiter`. Whether it
    /// is the only request in flight.
    pub(crate) fn insert(&mut self, id: u64, waiter: oneshot::Sender<Response>) -> bool {
        self.waiters.insert(id, waiter);
        self.waiters.len() == 1
    }

    /// Hands `response` to its requester. Done under the lock, so that a
    /// requester giving up at the same time either still waits (and is
    /// abandoned) or finds the answer in its channel.
    pub(crate) fn complete(&mut self, response: Response) -> Completed {
        let id = response.id.0;
        if let Some(waiter) = self.waiters.remove(&id) {
            // Only a dropped receiver refuses, and a requester drops it
            // after taking the lock (`give_up`).
            let _ = waiter.send(response);
            return Completed::Delivered;
        }
        let Some(given_up) = self.given_up.as_deref_mut() else {
            return Completed::Unclaimed;
        };
        let Some(at) = given_up
            .abandoned
            .iter()
            .position(|&(abandoned, _, _)| abandoned == id)
        else {
            return Completed::Unclaimed;
        };
        let (_, kind, most) = given_up.abandoned.remove(at);
        given_up.keep(kind, most, response);
        Completed::Abandoned {
            settled: given_up.abandoned.is_empty(),
        }
    }

    /// The requester of `id` stops waiting. A read of input (`input`) still
    /// unanswered is abandoned, and `true` says so (the client may be told
    /// to cancel it); one answered meanwhile leaves its input, if any, in
    /// `answer` for the next read. An answer of more than `most` bytes
    /// (the read's [`InputKind::most_bytes`]) is not kept.
    pub(crate) fn give_up(
        &mut self,
        id: u64,
        input: Option<InputKind>,
        most: u32,
        answer: &mut oneshot::Receiver<Response>,
    ) -> bool {
        let waiting = self.waiters.remove(&id).is_some();
        let Some(kind) = input else {
            return false;
        };
        if waiting {
            self.given_up().abandoned.push((id, kind, most));
            return true;
        }
        if let Ok(response) = answer.try_recv() {
            self.given_up().keep(kind, most, response);
        }
        false
    }

    /// Puts `chunks` of stdin (in order, each with the id of the read that
    /// brought it) back for the next byte reads: input a reader had taken
    /// and not handed on. Each goes where it was typed among the leftovers:
    /// before what later reads brought, and before the rest of its own
    /// read's answer, which is what followed it.
    pub(crate) fn unread(&mut self, chunks: Vec<(u64, Vec<u8>)>) {
        let leftovers = &mut self.given_up().leftovers;
        for (typed, bytes) in chunks.into_iter().rev() {
            let reply = Reply::Data {
                bytes: ByteBuf::from(bytes),
                eof: false,
            };
            let at = leftovers.partition_point(|left| left.typed < typed);
            leftovers.insert(at, Leftover::new(InputKind::Bytes, typed, reply));
        }
    }

    fn given_up(&mut self) -> &mut GivenUp {
        self.given_up.get_or_insert_default()
    }

    /// Whether abandoned reads still wait for their answers.
    pub(crate) fn has_abandoned(&self) -> bool {
        self.given_up
            .as_ref()
            .is_some_and(|given_up| !given_up.abandoned.is_empty())
    }

    /// Bytes of stdin kept for byte reads (what a reader took ahead and
    /// did not hand on, answers to byte reads given up), oldest first, up
    /// to and including the first newline: the start of the next line,
    /// which a line read takes before it asks the client for more. `None`
    /// when no bytes are kept, or when a line kept for this line read
    /// (`line`, its kind) was typed before them: the read takes that line
    /// first ([`take_leftover`](Pending::take_leftover)). `ended` when a
    /// newline or the end of input ended them (the client has nothing more
    /// of this line). Bytes without a newline go on with the next bytes
    /// kept, past a line kept between them (typed for a line read, it was
    /// no part of these bytes' line).
    pub(crate) fn take_line_bytes(&mut self, line: &InputKind) -> Option<KeptLine> {
        let leftovers = &mut self.given_up.as_deref_mut()?.leftovers;
        let first = leftovers
            .iter()
            .find(|left| left.kind == InputKind::Bytes || left.kind == *line)?;
        if first.kind != InputKind::Bytes {
            return None;
        }
        let mut kept: Option<KeptLine> = None;
        let mut at = 0;
        while at < leftovers.len() {
            let left = &mut leftovers[at];
            let Reply::Data { bytes, eof } = &left.reply else {
                at += 1;
                continue;
            };
            if left.kind != InputKind::Bytes {
                at += 1;
                continue;
            }
            let rest = &bytes[left.taken..];
            let line = kept.get_or_insert_with(|| KeptLine {
                typed: left.typed,
                ..KeptLine::default()
            });
            match rest.iter().position(|&byte| byte == b'\n') {
                Some(newline) => {
                    line.bytes.extend_from_slice(&rest[..=newline]);
                    line.ended = true;
                    left.taken += newline + 1;
                    if left.taken == bytes.len() {
                        leftovers.remove(at);
                    }
                    return kept;
                }
                None => {
                    line.bytes.extend_from_slice(rest);
                    line.ended = *eof;
                    leftovers.remove(at);
                    if line.ended {
                        return kept;
                    }
                }
            }
        }
        kept
    }

    /// Input an abandoned read took that answers `op`, oldest first, with
    /// the id of the read that brought it. A byte read takes at most its
    /// `max` bytes; the rest stays for the next.
    pub(crate) fn take_leftover(&mut self, op: &Operation) -> Option<(u64, Reply)> {
        let kind = InputKind::of(op)?;
        let leftovers = &mut self.given_up.as_deref_mut()?.leftovers;
        if let InputKind::Line(_) = kind {
            // Lines typed for another question are not this one's answer.
            leftovers.retain(|left| !matches!(left.kind, InputKind::Line(_)) || left.kind == kind);
        }
        let at = leftovers.iter().position(|left| left.kind == kind)?;
        if let (Operation::StdinRead { max }, Some(left)) = (op, leftovers.get_mut(at))
            && let Reply::Data { bytes, eof } = &left.reply
        {
            let max = (*max as usize).max(1);
            let rest = &bytes[left.taken..];
            if left.taken > 0 || rest.len() > max {
                // A piece, copied alone: a read costs what it returns.
                let piece = rest[..rest.len().min(max)].to_vec();
                let last = piece.len() == rest.len();
                // Bytes are no end of input, but the last ones of an answer
                // that ended it.
                let eof = last && *eof;
                left.taken += piece.len();
                let typed = left.typed;
                if last {
                    leftovers.remove(at);
                }
                return Some((
                    typed,
                    Reply::Data {
                        bytes: ByteBuf::from(piece),
                        eof,
                    },
                ));
            }
        }
        leftovers.remove(at).map(|left| (left.typed, left.reply))
    }
}

impl GivenUp {
    /// Keeps the input in the answer to a read of `kind`, if it has any
    /// and carries at most `most` bytes.
    fn keep(&mut self, kind: InputKind, most: u32, response: Response) {
        // A password is never kept for another read.
        if kind == InputKind::Password {
            return;
        }
        if let Some(reply) = response.ok.filter(|_| response.error.is_none())
            && carries_input(&reply)
        {
            // More than the read asked for: a hostile client's bytes, which
            // the read would have refused (`data_reply`).
            if let Reply::Data { bytes, .. } = &reply
                && bytes.len() as u64 > u64::from(most)
            {
                return;
            }
            // In the order typed: answers come in the order their reads
            // were sent, so this is almost always the end.
            let typed = response.id.0;
            let at = self.leftovers.partition_point(|left| left.typed <= typed);
            self.leftovers.insert(at, Leftover::new(kind, typed, reply));
        }
    }
}

/// Whether `reply` holds something the user typed (not the end of input:
/// a new read finds that again).
fn carries_input(reply: &Reply) -> bool {
    match reply {
        Reply::Line { line } => line.is_some(),
        Reply::Data { bytes, .. } => !bytes.is_empty(),
        Reply::Key(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terminalwire_protocol::RequestId;
    use terminalwire_protocol::frame::{ErrorCode, OpError};

    fn line(text: &str) -> Reply {
        Reply::Line {
            line: Some(text.into()),
        }
    }

    /// The reply a leftover gives `op`, without the id of its read.
    fn reply_to(pending: &mut Pending, op: &Operation) -> Option<Reply> {
        pending.take_leftover(op).map(|(_, reply)| reply)
    }

    fn read_line() -> Operation {
        Operation::StdinReadLine { prompt: None }
    }

    /// A request sent and registered, as the session does.
    fn sent(pending: &mut Pending, id: u64) -> oneshot::Receiver<Response> {
        let (waiter, answer) = oneshot::channel();
        pending.insert(id, waiter);
        answer
    }

    #[test]
    fn a_line_read_for_an_abandoned_read_goes_to_the_next_line_read() {
        let mut pending = Pending::default();
        let mut answer = sent(&mut pending, 1);
        assert!(pending.give_up(1, Some(InputKind::Line(None)), u32::MAX, &mut answer));
        assert!(pending.has_abandoned());
        assert_eq!(
            pending.complete(Response::ok(RequestId(1), line("yes"))),
            Completed::Abandoned { settled: true }
        );
        assert!(!pending.has_abandoned());
        // Not for a password or a key read: it was typed for a line.
        assert_eq!(
            reply_to(&mut pending, &Operation::StdinReadPassword { prompt: None }),
            None
        );
        assert_eq!(reply_to(&mut pending, &Operation::ReadKey), None);
        assert_eq!(reply_to(&mut pending, &read_line()), Some(line("yes")));
        assert_eq!(reply_to(&mut pending, &read_line()), None);
    }

    #[test]
    fn an_answer_that_came_before_the_requester_gave_up_is_kept_too() {
        let mut pending = Pending::default();
        let mut answer = sent(&mut pending, 1);
        assert_eq!(
            pending.complete(Response::ok(RequestId(1), line("typed"))),
            Completed::Delivered
        );
        // The requester was dropped with the answer in its channel.
        assert!(!pending.give_up(1, Some(InputKind::Line(None)), u32::MAX, &mut answer));
        assert!(!pending.has_abandoned());
        assert_eq!(reply_to(&mut pending, &read_line()), Some(line("typed")));
    }

    #[test]
    fn cancelled_reads_failures_and_the_end_of_input_leave_nothing() {
        let mut pending = Pending::default();
        let answers = [
            Response::error(
                RequestId(1),
                OpError::new(ErrorCode::Cancelled, "the server gave up"),
            ),
            Response::ok(RequestId(2), Reply::Line { line: None }),
            Response::ok(
                RequestId(3),
                Reply::Data {
                    bytes: ByteBuf::new(),
                    eof: true,
                },
            ),
        ];
        for response in answers {
            let id = response.id.0;
            let mut answer = sent(&mut pending, id);
            assert!(pending.give_up(id, Some(InputKind::Line(None)), u32::MAX, &mut answer));
            assert!(matches!(
                pending.complete(response),
                Completed::Abandoned { settled: true }
            ));
        }
        assert_eq!(reply_to(&mut pending, &read_line()), None);
    }

    #[test]
    fn other_requests_given_up_are_forgotten_and_their_answers_unclaimed() {
        let mut pending = Pending::default();
        let mut answer = sent(&mut pending, 4);
        assert!(!pending.give_up(4, None, u32::MAX, &mut answer));
        assert!(!pending.has_abandoned());
        assert_eq!(
            pending.complete(Response::ok(RequestId(4), Reply::Unit)),
            Completed::Unclaimed
        );
    }

    #[test]
    fn a_line_goes_only_to_the_same_question_and_a_password_to_none() {
        let mut pending = Pending::default();
        let ask = |prompt: &str| Operation::StdinReadLine {
            prompt: Some(prompt.into()),
        };
        let password = Operation::StdinReadPassword {
            prompt: Some("Password: ".into()),
        };
        for (id, op, typed) in [
            (1, ask("Name? "), "Ada"),
            (2, password.clone(), "hunter2"),
            (3, ask("Name? "), "Bob"),
        ] {
            let mut answer = sent(&mut pending, id);
            assert!(pending.give_up(id, InputKind::of(&op), u32::MAX, &mut answer));
            pending.complete(Response::ok(RequestId(id), line(typed)));
        }
        assert_eq!(reply_to(&mut pending, &password), None);
        assert_eq!(reply_to(&mut pending, &ask("Name? ")), Some(line("Ada")));
        // Another question: "Bob" was typed for "Name? ", and is dropped.
        assert_eq!(reply_to(&mut pending, &ask("Age? ")), None);
        assert_eq!(reply_to(&mut pending, &ask("Name? ")), None);
    }

    #[test]
    fn a_byte_read_takes_at_most_what_it_asked_for_and_leaves_the_rest() {
        let mut pending = Pending::default();
        let mut answer = sent(&mut pending, 1);
        assert!(pending.give_up(1, Some(InputKind::Bytes), 100, &mut answer));
        let data = |bytes: &[u8], eof| Reply::Data {
            bytes: ByteBuf::from(bytes.to_vec()),
            eof,
        };
        pending.complete(Response::ok(RequestId(1), data(b"abcdef", false)));
        let read = |max| Operation::StdinRead { max };
        assert_eq!(reply_to(&mut pending, &read(4)), Some(data(b"abcd", false)));
        assert_eq!(reply_to(&mut pending, &read(4)), Some(data(b"ef", false)));
        assert_eq!(reply_to(&mut pending, &read(4)), None);
    }

    /// Small reads after a large answer to a read given up take it a piece
    /// at a time, in order, each piece copied alone: the rest is neither
    /// copied nor held by the pieces (each read copied all the rest, and
    /// each piece kept the whole allocation: 64 KiB read a byte at a time
    /// copied some 2 GB).
    #[test]
    fn small_reads_of_a_large_leftover_copy_only_what_they_take() {
        const LEN: usize = 64 * 1024;
        let mut pending = Pending::default();
        let mut answer = sent(&mut pending, 1);
        assert!(pending.give_up(1, Some(InputKind::Bytes), LEN as u32, &mut answer));
        let typed: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
        let bytes = ByteBuf::from(typed.clone());
        let kept_at = bytes.as_ptr();
        pending.complete(Response::ok(RequestId(1), Reply::Data { bytes, eof: true }));
        let mut read = Vec::new();
        for max in (1..=5).cycle() {
            let Some(Reply::Data { bytes, eof }) =
                reply_to(&mut pending, &Operation::StdinRead { max })
            else {
                break;
            };
            assert!(bytes.len() <= max as usize);
            assert!(
                bytes.capacity() <= max as usize,
                "a piece holds {} bytes",
                bytes.capacity()
            );
            read.extend_from_slice(&bytes);
            // Only the last bytes end the input.
            assert_eq!(eof, read.len() == LEN);
            if let Some(Leftover {
                reply: Reply::Data { bytes, .. },
                ..
            }) = pending.given_up.as_ref().unwrap().leftovers.front()
            {
                assert_eq!(bytes.as_ptr(), kept_at, "the rest was copied");
            }
        }
        assert!(read == typed, "the bytes came out changed or out of order");
        assert!(pending.given_up.as_ref().unwrap().leftovers.is_empty());
    }

    #[test]
    fn an_answer_of_more_bytes_than_the_read_asked_for_is_not_kept() {
        let mut pending = Pending::default();
        for (id, answered) in [(1, &b"abcdefg"[..]), (2, b"abcdef")] {
            let mut answer = sent(&mut pending, id);
            assert!(pending.give_up(id, Some(InputKind::Bytes), 6, &mut answer));
            let reply = Reply::Data {
                bytes: ByteBuf::from(answered.to_vec()),
                eof: false,
            };
            pending.complete(Response::ok(RequestId(id), reply));
        }
        let kept = reply_to(&mut pending, &Operation::StdinRead { max: 100 });
        assert!(
            matches!(&kept, Some(Reply::Data { bytes, .. }) if bytes.as_slice() == b"abcdef"),
            "{kept:?}"
        );
        assert_eq!(
            reply_to(&mut pending, &Operation::StdinRead { max: 100 }),
            None
        );
    }

    #[test]
    fn a_line_is_taken_from_the_bytes_kept_up_to_its_newline() {
        let mut pending = Pending::default();
        let line_read = InputKind::Line(None);
        assert_eq!(pending.take_line_bytes(&line_read), None);
        let mut answer = sent(&mut pending, 5);
        assert!(pending.give_up(5, Some(InputKind::Line(None)), 0, &mut answer));
        pending.complete(Response::ok(RequestId(5), line("typed for a line read")));
        // Brought by reads 2 and 3, before the line read.
        pending.unread(vec![(2, b"one\ntw".to_vec()), (3, b"o\nthr".to_vec())]);
        let kept = |typed, bytes: &[u8], ended| {
            Some(KeptLine {
                typed,
                bytes: bytes.to_vec(),
                ended,
            })
        };
        assert_eq!(pending.take_line_bytes(&line_read), kept(2, b"one\n", true));
        // A line over two chunks.
        assert_eq!(pending.take_line_bytes(&line_read), kept(2, b"two\n", true));
        // The start of a line whose rest the client has.
        assert_eq!(pending.take_line_bytes(&line_read), kept(3, b"thr", false));
        assert_eq!(pending.take_line_bytes(&line_read), None);
        // A line read's own input is no byte read's.
        assert_eq!(
            reply_to(&mut pending, &read_line()),
            Some(line("typed for a line read"))
        );
        // Bytes that end the input end the line.
        pending.unread(vec![(6, b"last".to_vec())]);
        let Some(Leftover {
            reply: Reply::Data { eof, .. },
            ..
        }) = pending.given_up.as_mut().unwrap().leftovers.front_mut()
        else {
            panic!("nothing kept");
        };
        *eof = true;
        assert_eq!(pending.take_line_bytes(&line_read), kept(6, b"last", true));
    }

    #[test]
    fn bytes_put_back_come_before_the_input_of_reads_given_up() {
        let mut pending = Pending::default();
        let mut answer = sent(&mut pending, 3);
        assert!(pending.give_up(3, Some(InputKind::Bytes), 100, &mut answer));
        // Brought by reads 1 and 2, before the read given up.
        pending.unread(vec![(1, b"held".to_vec()), (2, b"brought".to_vec())]);
        pending.complete(Response::ok(
            RequestId(3),
            Reply::Data {
                bytes: ByteBuf::from(b"late".to_vec()),
                eof: false,
            },
        ));
        let mut read = Vec::new();
        while let Some(Reply::Data { bytes, .. }) =
            reply_to(&mut pending, &Operation::StdinRead { max: 100 })
        {
            read.push(String::from_utf8(bytes.into_vec()).unwrap());
        }
        assert_eq!(read, ["held", "brought", "late"]);
    }

    #[test]
    fn leftovers_go_in_the_order_they_were_typed() {
        let mut pending = Pending::default();
        let mut first = sent(&mut pending, 1);
        let mut second = sent(&mut pending, 2);
        assert!(pending.give_up(1, Some(InputKind::Line(None)), u32::MAX, &mut first));
        assert!(pending.give_up(2, Some(InputKind::Line(None)), u32::MAX, &mut second));
        assert_eq!(
            pending.complete(Response::ok(RequestId(1), line("one"))),
            Completed::Abandoned { settled: false }
        );
        assert_eq!(
            pending.complete(Response::ok(RequestId(2), line("two"))),
            Completed::Abandoned { settled: true }
        );
        assert_eq!(reply_to(&mut pending, &read_line()), Some(line("one")));
        assert_eq!(reply_to(&mut pending, &read_line()), Some(line("two")));
    }

    /// A line typed for a line read given up, then bytes a reader took
    /// after it and put back: the next line read with that prompt gets the
    /// line first, as typed. (The bytes came first: they were put back in
    /// front of every leftover.) Bytes typed before the line still come
    /// before it.
    #[test]
    fn a_line_typed_for_a_read_given_up_comes_before_bytes_typed_after_it() {
        let mut pending = Pending::default();
        let line_read = InputKind::Line(Some("p ".into()));
        let mut answer = sent(&mut pending, 4);
        assert!(pending.give_up(4, Some(line_read.clone()), u32::MAX, &mut answer));
        pending.complete(Response::ok(RequestId(4), line("typed first")));
        // Read 5 brought "B\nC\n"; a reader handed on "B\n", put back the
        // rest. Read 2 brought what another reader put back: typed before.
        pending.unread(vec![(5, b"C\n".to_vec())]);
        pending.unread(vec![(2, b"before\n".to_vec())]);
        let kept = |typed, bytes: &[u8]| {
            Some(KeptLine {
                typed,
                bytes: bytes.to_vec(),
                ended: true,
            })
        };
        assert_eq!(pending.take_line_bytes(&line_read), kept(2, b"before\n"));
        assert_eq!(pending.take_line_bytes(&line_read), None);
        let ask = Operation::StdinReadLine {
            prompt: Some("p ".into()),
        };
        assert_eq!(reply_to(&mut pending, &ask), Some(line("typed first")));
        assert_eq!(pending.take_line_bytes(&line_read), kept(5, b"C\n"));
        // A line read with another prompt does not wait for that line.
        let mut pending = Pending::default();
        let mut answer = sent(&mut pending, 4);
        assert!(pending.give_up(4, Some(line_read.clone()), u32::MAX, &mut answer));
        pending.complete(Response::ok(RequestId(4), line("typed first")));
        pending.unread(vec![(5, b"C\n".to_vec())]);
        assert_eq!(
            pending.take_line_bytes(&InputKind::Line(Some("other ".into()))),
            kept(5, b"C\n")
        );
    }
}
