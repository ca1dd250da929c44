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
//! trip that lingering missed turns it off for the next round trip, and
//! each further miss (without a catch between) for twice as many, up to
//! [`MAX_BACKOFF`]: where round trips are a little too slow to catch, an
//! end spends at most one `budget` of CPU every few dozen round trips.

use std::ops::{Add, Sub};
use std::time::Duration;

/// The budget of a server's request alone in flight unless configured
/// otherwise: long enough for a client on the same host to answer, short
/// enough to cost nothing noticeable where it does not.
pub const DEFAULT_BUDGET: Duration = Duration::from_micros(50);

/// The client's budget unless configured otherwise, twice the server's: what
/// it waits for is the server's whole turn (its answer read, the app's next
/// step, the next request), which on a server with several worker threads
/// often includes waking one of them; and a streaming server sends its
/// chunks in pairs, with a longer gap after each pair. On this project's
/// bench machine, 100 000 sequential requests took a median of 2.69–2.70 s
/// against 2.96–3.59 s with 50 µs (two series), and a client streaming a GiB
/// into a file still slept between pairs with 50 µs (`bench/PROFILE.md`).
pub const CLIENT_BUDGET: Duration = Duration::from_micros(100);

/// The longest budget: longer ones are cut to it.
pub const MAX_BUDGET: Duration = Duration::from_secs(3600);

/// [`Linger::with_budget`]: a round trip at most this many budgets long,
/// measured without lingering, turns lingering on.
pub const WORTH_FACTOR: u32 = 3;

/// Most round trips lingering stays off after a miss (the backoff doubles
/// from one with each miss in a row).
pub const MAX_BACKOFF: u32 = 64;

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
    /// Round trips still to be measured without lingering, after a miss.
    skip: u32,
    /// The `skip` the last miss gave (0 after a catch): doubles with each
    /// miss in a row.
    backoff: u32,
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
    /// Lingers `budget` after each send once a round trip took at most
    /// `worth`, and as long as lingering catches the answers (within
    /// `budget`). Off until the first round trip says otherwise.
    pub fn new(budget: Duration, worth: Duration) -> Self {
        // Any longer is no longer a short wait, and `now + budget` must not
        // overflow.
        let budget = budget.min(MAX_BUDGET);
        Linger {
            budget,
            worth: worth.max(budget),
            worthwhile: false,
            skip: 0,
            backoff: 0,
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
            if self.budget.is_zero() {
                self.worthwhile = false;
            } else if lingered {
                if round_trip <= self.budget {
                    self.backoff = 0;
                } else {
                    // Missed: the next one would likely be missed too.
                    self.backoff = (self.backoff.saturating_mul(2)).clamp(1, MAX_BACKOFF);
                    self.skip = self.backoff;
                    self.worthwhile = false;
                }
            } else if self.skip > 0 {
                self.skip -= 1;
            } else {
                // Measured with the wake-ups that lingering would save.
                self.worthwhile = round_trip <= self.worth;
            }
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

    /// One round trip of `took` µs starting at `at`.
    fn round_trip(linger: &mut Linger<At>, at: u64, took: u64) {
        linger.sent(At(at));
        linger.heard(At(at + took));
    }

    #[test]
    fn while_lingering_only_a_caught_answer_keeps_it_on() {
        let mut linger = linger();
        round_trip(&mut linger, 0, 100);
        // Lingering now: an answer after 80 µs was not caught by 50 µs.
        round_trip(&mut linger, 1000, 80);
        assert!(!linger.worthwhile(), "missed while lingering");
        // One round trip is skipped after a first miss...
        round_trip(&mut linger, 2000, 80);
        assert!(!linger.worthwhile(), "skipped");
        // ...then one measured without lingering may turn it on again.
        round_trip(&mut linger, 3000, 80);
        assert!(linger.worthwhile());
        round_trip(&mut linger, 4000, 40);
        assert!(linger.worthwhile(), "caught");
    }

    /// Round trips just too slow to catch: lingering, on each time a round
    /// trip without it looks fast enough, runs for fewer and fewer of them.
    #[test]
    fn misses_in_a_row_back_off_to_one_round_trip_in_sixty_six() {
        let mut linger = linger();
        let mut lingered = Vec::new();
        for i in 0..1000 {
            lingered.push(linger.worthwhile());
            round_trip(&mut linger, i * 1000, 100);
        }
        let first: Vec<usize> = (0..lingered.len())
            .filter(|&i| lingered[i])
            .take(5)
            .collect();
        // Lingered, missed, skipped 1, 2, 4, 8 round trips, measured one.
        assert_eq!(first, vec![1, 4, 8, 14, 24]);
        let late = lingered[500..].iter().filter(|&&on| on).count();
        assert!(
            late <= 500 / 66 + 1,
            "lingered {late} times in the last 500"
        );
        assert!(late >= 1, "never tried again");
        // A caught answer resets the backoff.
        while !linger.worthwhile() {
            round_trip(&mut linger, 2_000_000, 10);
        }
        round_trip(&mut linger, 3_000_000, 10);
        assert!(linger.worthwhile(), "caught");
        round_trip(&mut linger, 4_000_000, 100);
        round_trip(&mut linger, 5_000_000, 10);
        assert!(!linger.worthwhile(), "one skipped after the first miss");
        round_trip(&mut linger, 6_000_000, 10);
        assert!(linger.worthwhile());
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
