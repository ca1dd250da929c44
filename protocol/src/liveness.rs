//! When to give up on a silent peer, and one timer for several deadlines:
//! the bookkeeping both ends' session loops share, without a clock of its own
//! (the caller passes `now`, from `std` or from its runtime's clock).
//!
//! Both loops hear from their peer many thousand times a second when busy.
//! Moving the idle deadline on every frame, or registering a new timer for
//! every turn of the loop, cost a timer-wheel update per frame (on the
//! server, a wake-up of the timer driver on another thread). So
//! [`IdleWatch`] only records when the peer was last heard from and moves the
//! deadline when it passes, and [`Alarm`] keeps one timer that is only ever
//! set to an earlier time.

use std::ops::Add;
use std::time::Duration;

/// The idle deadline of a peer that must show a sign of life (any frame)
/// every `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct IdleWatch<I> {
    timeout: Duration,
    deadline: I,
    last_heard: I,
}

/// What an [`IdleWatch`] says when its deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// The peer was heard from since: the deadline moved; go on.
    Moved,
    /// Nothing was heard for the whole timeout: the peer is gone.
    Silent,
}

impl<I: Copy + Ord + Add<Duration, Output = I>> IdleWatch<I> {
    /// A peer just heard from (or just connected) at `now`.
    pub fn new(timeout: Duration, now: I) -> Self {
        IdleWatch {
            timeout,
            deadline: now + timeout,
            last_heard: now,
        }
    }

    /// The timeout this watch was made with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The peer showed a sign of life at `now`. Cheap: the deadline itself
    /// moves only when it passes.
    pub fn heard(&mut self, now: I) {
        self.last_heard = now;
    }

    /// A new connection at `now`: the full timeout starts again.
    pub fn restart(&mut self, now: I) {
        *self = IdleWatch::new(self.timeout, now);
    }

    /// When to call [`deadline_passed`](Self::deadline_passed) next.
    pub fn deadline(&self) -> I {
        self.deadline
    }

    /// The deadline passed at `now`: moves it up to the last sign of life,
    /// or says the peer is silent.
    pub fn deadline_passed(&mut self, now: I) -> Idle {
        let moved = self.last_heard + self.timeout;
        if moved > now {
            self.deadline = moved;
            Idle::Moved
        } else {
            Idle::Silent
        }
    }
}

/// One timer for the nearest of several deadlines. The caller owns the timer
/// itself; this says when to set it. It is reset only to an earlier time:
/// when the deadline it was set for moves away or goes, it fires for
/// nothing, and the caller checks its deadlines and calls
/// [`rearm`](Self::rearm) again.
#[derive(Debug, Clone, Copy)]
pub struct Alarm<I> {
    armed: Option<I>,
}

impl<I> Default for Alarm<I> {
    fn default() -> Self {
        Alarm { armed: None }
    }
}

impl<I: Copy + Ord> Alarm<I> {
    /// Not set.
    pub fn new() -> Self {
        Alarm::default()
    }

    /// Given the nearest deadline (if any), the time to set the timer to, or
    /// `None` when it is already set early enough.
    pub fn rearm(&mut self, nearest: Option<I>) -> Option<I> {
        let at = nearest?;
        if self.armed.is_some_and(|armed| armed <= at) {
            return None;
        }
        self.armed = Some(at);
        Some(at)
    }

    /// Whether the timer is set (and so worth waiting for).
    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// The timer fired: it is no longer set.
    pub fn fired(&mut self) {
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_deadline_moves_up_to_the_last_sign_of_life_only_when_it_passes() {
        let start = Instant::now();
        let mut watch = IdleWatch::new(10 * SECOND, start);
        watch.heard(start + 4 * SECOND);
        assert_eq!(watch.deadline(), start + 10 * SECOND, "not moved per frame");
        assert_eq!(watch.deadline_passed(start + 10 * SECOND), Idle::Moved);
        assert_eq!(watch.deadline(), start + 14 * SECOND);
        assert_eq!(watch.deadline_passed(start + 14 * SECOND), Idle::Silent);
        watch.restart(start + 20 * SECOND);
        assert_eq!(watch.deadline(), start + 30 * SECOND);
        assert_eq!(watch.deadline_passed(start + 29 * SECOND), Idle::Moved);
        assert_eq!(watch.timeout(), 10 * SECOND);
    }

    #[test]
    fn the_alarm_is_only_ever_set_earlier_until_it_fires() {
        let start = Instant::now();
        let mut alarm = Alarm::new();
        assert_eq!(alarm.rearm(None), None);
        assert!(!alarm.is_armed());
        assert_eq!(
            alarm.rearm(Some(start + 5 * SECOND)),
            Some(start + 5 * SECOND)
        );
        assert_eq!(alarm.rearm(Some(start + 7 * SECOND)), None, "later: kept");
        assert_eq!(alarm.rearm(Some(start + 5 * SECOND)), None, "same: kept");
        assert_eq!(
            alarm.rearm(Some(start + 2 * SECOND)),
            Some(start + 2 * SECOND)
        );
        assert!(alarm.is_armed());
        alarm.fired();
        assert!(!alarm.is_armed());
        assert_eq!(
            alarm.rearm(Some(start + 7 * SECOND)),
            Some(start + 7 * SECOND)
        );
    }
}
