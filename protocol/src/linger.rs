//! Lingering: staying awake for a few microseconds after a send that the
//! peer answers at once, rather than going to sleep until the answer comes.
//! The bookkeeping only; the caller passes `now` and does the polling (for
//! a task, yielding to its runtime, which polls for I/O on every yield).
//!
//! A thread that sleeps lets its CPU idle, and waking an idle CPU takes tens
//! of microseconds on a virtual machine (on this project's bench machine, a
//! blocking TCP ping-pong does 16 k round trips/s; with both ends polling
//! for 20 µs before they sleep, 110 k/s). When the peer is on the same host
//! or the next rack, its answer comes sooner than that, and a round trip at
//! a time (a script's requests, one after the other) pays two wake-ups per
//! request. Over a real network the answer never comes that soon: a round
//! trip that is slower than lingering could catch turns lingering off until
//! round trips are fast again, so the cost there is at most one `budget`
//! of CPU now and then.

use std::ops::{Add, Sub};
use std::time::Duration;

/// The longest budget: longer ones are cut to it.
pub const MAX_BUDGET: Duration = Duration::from_secs(3600);

/// [`Linger::with_budget`]: a round trip at most this many budgets long,
/// measured without lingering, turns lingering on.
pub const WORTH_FACTOR: u32 = 3;

/// How long to stay awake after sending, and whether it is worth it.
#[derive(Debug, Clone, Copy)]
pub struct Linger<I> {
    /// How long to keep polling after a send.
    budget: Duration,
    /// A round trip at most this long, measured without lingering, says
    /// lingering would catch the next one.
    worth: Duration,
    /// Polling is worth it: the last round trip was fast.
    worthwhile: bool,
    /// The first send since the peer was last heard from, and whether
    /// lingering was on when it left.
    outstanding: Option<(I, bool)>,
    /// Stay awake until then.
    until: Option<I>,
}

impl<I> Linger<I>
where
    I: Copy + Ord + Add<Duration, Output = I> + Sub<I, Output = Duration>,
{
    /// Lingers `budget` after each send once a round trip took at
    /// most `worth` (and, while lingering, at most `budget`). Off until
    /// the first round trip says otherwise.
    pub fn new(budget: Duration, worth: Duration) -> Self {
        // Any longer is no longer a short wait, and `now + budget` must not
        // overflow.
        let budget = budget.min(MAX_BUDGET);
        Linger {
            budget,
            worth: worth.max(budget),
            worthwhile: false,
            outstanding: None,
            until: None,
        }
    }

    /// Lingers `budget`, once a round trip took at most [`WORTH_FACTOR`]
    /// times that (a round trip measured without lingering includes the
    /// wake-ups that lingering saves).
    pub fn with_budget(budget: Duration) -> Self {
        Linger::new(budget, budget.saturating_mul(WORTH_FACTOR))
    }

    /// Never lingers.
    pub fn off() -> Self {
        Linger::new(Duration::ZERO, Duration::ZERO)
    }

    /// Something the peer answers left at `now`.
    pub fn sent(&mut self, now: I) {
        if self.outstanding.is_none() {
            self.outstanding = Some((now, self.worthwhile));
        }
        self.until = self.worthwhile.then(|| now + self.budget);
    }

    /// The peer's answer (or its next request, for the side that answers)
    /// arrived at `now`: measures the round trip of the first send since
    /// last time, and stops lingering until the next send. Only what
    /// answers a send counts: output that was on its way says nothing of
    /// how fast the peer answers.
    pub fn heard(&mut self, now: I) {
        if let Some((sent, lingered)) = self.outstanding.take() {
            let round_trip = now - sent;
            // While lingering, only a round trip that it caught counts as
            // fast: one that it missed would be missed again.
            let bound = if lingered { self.budget } else { self.worth };
            self.worthwhile = !self.budget.is_zero() && round_trip <= bound;
        }
        self.until = None;
    }

    /// Whether to poll rather than sleep at `now`.
    pub fn awake(&self, now: I) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Whether the last round trip was fast enough to linger after.
    pub fn worthwhile(&self) -> bool {
        self.worthwhile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microseconds as an instant.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct At(u64);

    impl Add<Duration> for At {
        type Output = At;
        fn add(self, d: Duration) -> At {
            At(self.0 + u64::try_from(d.as_micros()).unwrap())
        }
    }

    impl Sub<At> for At {
        type Output = Duration;
        fn sub(self, earlier: At) -> Duration {
            Duration::from_micros(self.0 - earlier.0)
        }
    }

    fn linger() -> Linger<At> {
        Linger::new(Duration::from_micros(50), Duration::from_micros(200))
    }

    #[test]
    fn off_until_a_round_trip_is_fast() {
        let mut linger = linger();
        linger.sent(At(0));
        assert!(!linger.awake(At(1)), "no round trip measured yet");
        linger.heard(At(150));
        assert!(linger.worthwhile());
        assert!(
            !linger.awake(At(160)),
            "heard: awake again only after a send"
        );
        linger.sent(At(1000));
        assert!(linger.awake(At(1049)));
        assert!(!linger.awake(At(1050)));
    }

    #[test]
    fn a_slow_round_trip_turns_it_off() {
        let mut linger = linger();
        linger.sent(At(0));
        linger.heard(At(201));
        assert!(!linger.worthwhile());
        linger.sent(At(300));
        assert!(!linger.awake(At(301)));
    }

    #[test]
    fn while_lingering_only_a_caught_answer_keeps_it_on() {
        let mut linger = linger();
        linger.sent(At(0));
        linger.heard(At(100));
        // Lingering now: an answer after 80 µs was not caught by 50 µs.
        linger.sent(At(1000));
        linger.heard(At(1080));
        assert!(!linger.worthwhile(), "missed while lingering");
        // Measured without lingering again: 80 µs may be the wake-ups.
        linger.sent(At(2000));
        linger.heard(At(2080));
        assert!(linger.worthwhile());
        linger.sent(At(3000));
        linger.heard(At(3040));
        assert!(linger.worthwhile(), "caught");
    }

    #[test]
    fn a_round_trip_is_timed_from_the_first_send_since_the_peer_was_heard() {
        let mut linger = linger();
        linger.sent(At(0));
        linger.sent(At(190));
        linger.heard(At(250));
        assert!(!linger.worthwhile(), "250 µs since the first send");
        linger.heard(At(260));
        assert!(
            !linger.worthwhile(),
            "no send outstanding: nothing measured"
        );
    }

    #[test]
    fn with_budget_turns_on_at_three_budgets() {
        let mut linger = Linger::<At>::with_budget(Duration::from_micros(50));
        linger.sent(At(0));
        linger.heard(At(150));
        assert!(linger.worthwhile());
        let mut linger = Linger::<At>::with_budget(Duration::from_micros(50));
        linger.sent(At(0));
        linger.heard(At(151));
        assert!(!linger.worthwhile());
    }

    #[test]
    fn an_answer_ends_the_lingering_and_only_a_send_starts_it() {
        let mut linger = linger();
        linger.sent(At(0));
        linger.heard(At(10));
        linger.sent(At(100));
        assert!(linger.awake(At(120)));
        linger.heard(At(130));
        assert!(!linger.awake(At(131)), "nothing left to wait for");
        linger.heard(At(140));
        assert!(!linger.awake(At(141)), "hearing more starts nothing");
        assert!(linger.worthwhile(), "no send outstanding: nothing measured");
    }

    #[test]
    fn a_huge_budget_is_cut_to_an_hour() {
        let mut linger = Linger::new(Duration::MAX, Duration::MAX);
        let now = std::time::Instant::now();
        linger.sent(now);
        linger.heard(now);
        linger.sent(now);
        assert!(linger.awake(now + Duration::from_secs(3599)));
        assert!(!linger.awake(now + MAX_BUDGET));
    }

    #[test]
    fn off_never_lingers() {
        let mut linger = Linger::<At>::off();
        linger.sent(At(0));
        linger.heard(At(0));
        assert!(!linger.worthwhile());
        assert!(!linger.awake(At(0)));
    }
}
