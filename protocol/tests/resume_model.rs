//! Model test of resuming (proptest): a sender's [`ReplayBuffer`] and a
//! receiver's [`Receipts`] talk over a connection that is cut at random
//! points, losing whatever was in flight (frames and acks alike), and are
//! reconnected with the resume handshake (`received` counts both ways). The
//! receiver must end up with every frame exactly once, in order, and the
//! sender's buffer must never hold more than what is unacknowledged.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::VecDeque;

use proptest::prelude::*;
use terminalwire_protocol::resume::{Receipts, ReplayBuffer};

#[derive(Debug, Clone)]
enum Step {
    /// The sender sends this many new frames.
    Send(u8),
    /// The network delivers up to this many frames to the receiver.
    Deliver(u8),
    /// The network delivers the acks in flight to the sender.
    DeliverAcks,
    /// The receiver acknowledges what it has (its timer fired).
    AckNow,
    /// The connection is cut; everything in flight is lost; both sides
    /// resume on a new one.
    CutAndResume,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..8).prop_map(Step::Send),
        4 => (1u8..8).prop_map(Step::Deliver),
        2 => Just(Step::DeliverAcks),
        1 => Just(Step::AckNow),
        1 => Just(Step::CutAndResume),
    ]
}

struct World {
    sender: ReplayBuffer,
    receiver: Receipts,
    /// Frames on the wire, in order.
    frames: VecDeque<Vec<u8>>,
    /// Acks on the wire, in order.
    acks: VecDeque<u64>,
    /// What the receiver processed, by frame number.
    log: Vec<u64>,
    next: u64,
}

impl World {
    fn send(&mut self) {
        self.next += 1;
        let frame = self.next.to_le_bytes().to_vec();
        self.sender.push(frame.clone());
        self.frames.push_back(frame);
    }

    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(frame) = self.frames.pop_front() else {
                return;
            };
            self.log.push(u64::from_le_bytes(frame.try_into().unwrap()));
            if let Some(seq) = self.receiver.on_frame(8) {
                self.acks.push_back(seq);
            }
        }
    }

    fn cut_and_resume(&mut self) {
        self.frames.clear();
        self.acks.clear();
        // The resume handshake: the receiver says how many it processed…
        let received = self.receiver.received();
        self.receiver.acknowledged_all();
        // …and the sender sends again exactly what is missing.
        let missing = self.sender.replay_after(received).unwrap();
        self.frames.extend(missing);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_frame_arrives_once_and_in_order_across_random_cuts(steps in prop::collection::vec(step(), 1..200)) {
        let mut world = World {
            sender: ReplayBuffer::new(),
            receiver: Receipts::new(),
            frames: VecDeque::new(),
            acks: VecDeque::new(),
            log: Vec::new(),
            next: 0,
        };
        for step in steps {
            match step {
                Step::Send(n) => (0..n).for_each(|_| world.send()),
                Step::Deliver(n) => world.deliver(n.into()),
                Step::DeliverAcks => {
                    while let Some(seq) = world.acks.pop_front() {
                        world.sender.ack(seq).unwrap();
                    }
                }
                Step::AckNow => {
                    if let Some(seq) = world.receiver.pending() {
                        world.acks.push_back(seq);
                    }
                }
                Step::CutAndResume => world.cut_and_resume(),
            }
            // The buffer holds exactly the frames not acknowledged yet.
            prop_assert_eq!(world.sender.len() as u64, world.sender.sent() - world.sender.acked());
            prop_assert!(world.sender.acked() <= world.receiver.received());
        }
        // A last resume, then everything is delivered.
        world.cut_and_resume();
        world.deliver(usize::MAX);
        let expected: Vec<u64> = (1..=world.next).collect();
        prop_assert_eq!(world.log, expected);
    }
}
