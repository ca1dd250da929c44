//! Credit-based flow control.
//!
//! The receiver of a stream grants the sender a window of bytes (initially in
//! `hello`/`welcome`, later with `window` frames). The sender never sends more
//! than its credit; the receiver grants more only after it has consumed
//! (written out) what it received. So at most one window of bytes per stream is
//! ever buffered or in flight, whatever either side does (after the receiver
//! shrinks its window, the larger one until the excess is consumed).
//!
//! A receiver may grow its window by granting more than it consumed
//! ([`ReceiveWindow::with_growth`]): it starts small, so that little data
//! waits in socket buffers on a fast link, and doubles when a half window
//! drains in less than a round trip, so that a long link is kept full.

use std::time::{Duration, Instant};

/// A flow-control violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The peer sent more bytes than it had credit for.
    #[error("peer sent {len} bytes with only {credit} bytes of credit")]
    CreditExceeded {
        /// Bytes received.
        len: u64,
        /// Credit the peer had.
        credit: u64,
    },
    /// The peer granted credit beyond the largest possible window.
    #[error("peer granted {granted} bytes on top of {credit}, beyond the limit of {limit}")]
    GrantOverflow {
        /// Credit before.
        credit: u64,
        /// Bytes granted.
        granted: u64,
        /// The limit.
        limit: u64,
    },
}

/// Largest credit a sender accepts to hold; more means a confused or hostile peer.
pub const MAX_CREDIT: u64 = 1 << 32;

/// The sender's side: how many bytes it may still send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendCredit {
    credit: u64,
}

impl SendCredit {
    /// Starts with the peer's initial window.
    pub fn new(initial: u32) -> Self {
        SendCredit {
            credit: u64::from(initial),
        }
    }

    /// Bytes that may be sent now.
    pub fn available(&self) -> u64 {
        self.credit
    }

    /// Reserves up to `want` bytes and returns how many were reserved (0 when
    /// the sender must wait for a grant).
    pub fn take(&mut self, want: usize) -> usize {
        let n = (want as u64).min(self.credit);
        self.credit -= n;
        n as usize
    }

    /// Gives back `n` bytes that [`take`](Self::take) reserved but that
    /// were never sent (the peer grants again only what it receives).
    pub fn untake(&mut self, n: usize) {
        self.credit = self.credit.saturating_add(n as u64);
    }

    /// Adds a grant from the peer.
    pub fn grant(&mut self, bytes: u32) -> Result<(), FlowError> {
        let granted = u64::from(bytes);
        if self.credit + granted > MAX_CREDIT {
            return Err(FlowError::GrantOverflow {
                credit: self.credit,
                granted,
                limit: MAX_CREDIT,
            });
        }
        self.credit += granted;
        Ok(())
    }
}

/// Largest window a [`ReceiveWindow`] grows to (16 MiB): enough for about
/// 100 MB/s over a 100 ms round trip, and a bound on what a client buffers
/// per stream when its output stalls after the window grew.
pub const MAX_GROWN_WINDOW: u32 = 16 * 1024 * 1024;

/// Round trips shorter than this never grow a window: below it, the initial
/// window already carries hundreds of MB/s, and a bigger one only lets more
/// data wait in socket buffers (where it goes cold in the CPU caches).
pub const MIN_GROWTH_RTT: Duration = Duration::from_millis(1);

/// How a [`ReceiveWindow`] grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// The connection's round-trip time (the reference client takes one
    /// request and its answer, which a server can make as long as it
    /// likes: grow only windows whose bytes do not wait in memory).
    pub rtt: Duration,
    /// The window never grows beyond this.
    pub max: u32,
}

/// The receiver's side: how much credit the peer holds and when to grant more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveWindow {
    window: u32,
    /// Credit the peer holds (granted, not yet used).
    peer_credit: u64,
    /// Bytes consumed since the last grant.
    consumed: u64,
    /// How the window grows, if it does.
    growth: Option<Growth>,
    /// When the last grant was made (only kept when the window may grow).
    last_grant: Option<Instant>,
    /// Consumed bytes still to keep rather than grant, after a shrink.
    withheld: u64,
}

impl ReceiveWindow {
    /// A window of `window` bytes, all of it granted up front; it never grows.
    pub fn new(window: u32) -> Self {
        ReceiveWindow {
            window,
            peer_credit: u64::from(window),
            consumed: 0,
            growth: None,
            last_grant: None,
            withheld: 0,
        }
    }

    /// A window that starts at `window` bytes and doubles, up to
    /// `growth.max` (itself at most [`MAX_GROWN_WINDOW`]), each time a grant comes less than `growth.rtt` after
    /// the previous one: half a window drained in less than a round trip,
    /// so the sender would run out of credit before the grant reached it.
    /// The growth is granted with the consumed bytes
    /// ([`on_consumed_at`](Self::on_consumed_at)). A round trip under
    /// [`MIN_GROWTH_RTT`] never grows the window.
    pub fn with_growth(window: u32, growth: Growth) -> Self {
        ReceiveWindow {
            growth: Some(Growth {
                rtt: growth.rtt,
                max: growth.max.min(MAX_GROWN_WINDOW),
            })
            .filter(|growth| growth.rtt >= MIN_GROWTH_RTT && growth.max > window),
            ..Self::new(window)
        }
    }

    /// The window size.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Records `len` received bytes; an error when the peer exceeded its credit.
    pub fn on_receive(&mut self, len: usize) -> Result<(), FlowError> {
        let len = len as u64;
        if len > self.peer_credit {
            return Err(FlowError::CreditExceeded {
                len,
                credit: self.peer_credit,
            });
        }
        self.peer_credit -= len;
        Ok(())
    }

    /// Records that `len` received bytes were consumed (written out). Returns a
    /// grant to send once at least half a window is consumed, batching grants so
    /// that there is about one `window` frame per half window of data. The
    /// window does not grow (see [`on_consumed_at`](Self::on_consumed_at)).
    pub fn on_consumed(&mut self, len: usize) -> Option<u32> {
        self.consume(len, None)
    }

    /// [`on_consumed`](Self::on_consumed) at time `now`: a window made
    /// [`with_growth`](Self::with_growth) may grow, and the grant then
    /// includes the growth.
    pub fn on_consumed_at(&mut self, len: usize, now: Instant) -> Option<u32> {
        self.consume(len, Some(now))
    }

    fn consume(&mut self, len: usize, now: Option<Instant>) -> Option<u32> {
        let kept = self.withheld.min(len as u64);
        self.withheld -= kept;
        self.consumed += len as u64 - kept;
        if self.consumed * 2 < u64::from(self.window) {
            return None;
        }
        // `consumed` never exceeds the window: it only counts bytes that
        // were received within credit and not yet re-granted.
        let mut grant = self.consumed;
        self.consumed = 0;
        if let (Some(growth), Some(now)) = (self.growth, now) {
            let quick = self
                .last_grant
                .is_some_and(|last| now.saturating_duration_since(last) < growth.rtt);
            if quick && self.window < growth.max {
                let grown = self.window.saturating_mul(2).min(growth.max);
                grant += u64::from(grown - self.window);
                self.window = grown;
            }
            self.last_grant = Some(now);
        }
        self.peer_credit += grant;
        // At most a window consumed plus a window of growth: far below 4 GiB.
        Some(u32::try_from(grant).unwrap_or(u32::MAX))
    }
}

impl ReceiveWindow {
    /// Shrinks the window to `size` bytes, if it is larger. Credit cannot be
    /// taken back: the first consumed bytes, as many as the window shrank
    /// by, are simply not granted again, and from then on the peer holds at
    /// most `size` bytes of credit.
    pub fn shrink_to(&mut self, size: u32) {
        if let Some(excess) = self.window.checked_sub(size) {
            self.withheld += u64::from(excess);
            self.window = size;
        }
    }

    /// Grants back every byte received and not granted yet, consumed or
    /// not (before the receiver goes away, dropping what it still holds, so
    /// that the next receiver can start from a full window), and enough more
    /// that the peer then holds `at_least` bytes of credit, or the window if
    /// larger. The window becomes what the peer holds: after a shrink whose
    /// excess is not consumed yet, that is the larger credit it still has.
    pub fn grant_all(&mut self, at_least: u32) -> Option<u32> {
        self.withheld = 0;
        self.consumed = 0;
        self.window = self.full_size().max(at_least);
        let outstanding = u64::from(self.window) - self.peer_credit;
        if outstanding == 0 {
            return None;
        }
        self.peer_credit = u64::from(self.window);
        Some(u32::try_from(outstanding).unwrap_or(u32::MAX))
    }

    /// What the window becomes with [`grant_all`](Self::grant_all): the
    /// window, or the credit the peer holds if larger.
    pub fn full_size(&self) -> u32 {
        // Credit stays below 4 GiB: it never exceeds windows granted as u32.
        let held = u32::try_from(self.peer_credit).unwrap_or(u32::MAX);
        self.window.max(held)
    }

    /// Whether the peer holds the whole window as credit: nothing is in
    /// flight, buffered or awaiting a grant.
    pub fn is_full(&self) -> bool {
        self.peer_credit == u64::from(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_never_exceeds_credit() {
        let mut credit = SendCredit::new(100);
        assert_eq!(credit.take(60), 60);
        assert_eq!(credit.take(60), 40);
        assert_eq!(credit.take(1), 0);
        credit.grant(10).unwrap();
        assert_eq!(credit.take(usize::MAX), 10);
    }

    #[test]
    fn grant_all_gives_back_the_whole_window() {
        let mut window = ReceiveWindow::new(100);
        assert_eq!(window.grant_all(0), None);
        window.on_receive(70).unwrap();
        assert_eq!(window.on_consumed(10), None);
        // 10 consumed, 60 still buffered: all 70 go back.
        assert_eq!(window.grant_all(0), Some(70));
        assert!(window.is_full());
        window.on_receive(100).unwrap();
        // And more, to a size the next receiver expects.
        assert_eq!(window.grant_all(150), Some(150));
        assert_eq!(window.window(), 150);
        window.on_receive(150).unwrap();
        assert!(window.on_receive(1).is_err());
    }

    #[test]
    fn a_shrunk_window_withholds_the_excess_then_grants_half_windows() {
        let mut window = ReceiveWindow::new(100);
        window.shrink_to(200);
        assert_eq!(window.window(), 100);
        window.shrink_to(40);
        assert_eq!(window.window(), 40);
        // The peer holds the credit of the first window still.
        window.on_receive(100).unwrap();
        assert!(window.on_receive(1).is_err());
        // The first 60 bytes consumed are not granted again...
        assert_eq!(window.on_consumed(59), None);
        assert_eq!(window.on_consumed(20), None);
        // ...then half of the new window is.
        assert_eq!(window.on_consumed(1), Some(20));
        assert_eq!(window.on_consumed(20), Some(20));
        assert!(window.is_full());
        assert!(window.on_receive(41).is_err());
    }

    #[test]
    fn grant_all_after_a_shrink_leaves_the_peer_what_it_holds() {
        let mut window = ReceiveWindow::new(100);
        window.shrink_to(40);
        window.on_receive(30).unwrap();
        // The peer holds 70, more than the new window: nothing to grant,
        // and the window is what the peer holds.
        assert_eq!(window.full_size(), 70);
        assert_eq!(window.grant_all(0), None);
        assert_eq!(window.window(), 70);
        window.on_receive(70).unwrap();
        assert_eq!(window.grant_all(0), Some(70));
        assert!(window.is_full());
    }

    #[test]
    fn runaway_grants_are_refused() {
        let mut credit = SendCredit::new(u32::MAX);
        credit.grant(1).unwrap();
        assert!(matches!(
            credit.grant(1),
            Err(FlowError::GrantOverflow { .. })
        ));
    }

    #[test]
    fn receiver_detects_excess_and_regrants_half_windows() {
        let mut window = ReceiveWindow::new(100);
        window.on_receive(70).unwrap();
        assert_eq!(window.on_consumed(30), None);
        assert_eq!(window.on_consumed(20), Some(50));
        // The peer had 30 left plus 50 granted.
        assert!(matches!(
            window.on_receive(81),
            Err(FlowError::CreditExceeded {
                len: 81,
                credit: 80
            })
        ));
        window.on_receive(80).unwrap();
        assert!(window.on_receive(1).is_err());
    }

    const RTT: Duration = Duration::from_millis(40);

    fn growing(window: u32, max: u32) -> ReceiveWindow {
        ReceiveWindow::with_growth(window, Growth { rtt: RTT, max })
    }

    #[test]
    fn a_window_drained_within_a_round_trip_doubles_and_grants_the_growth() {
        let start = Instant::now();
        let mut window = growing(100, 400);
        window.on_receive(100).unwrap();
        // The first grant has nothing to compare with.
        assert_eq!(window.on_consumed_at(50, start), Some(50));
        // Half a window again 10 ms later, within the 40 ms round trip:
        // the window doubles and the grant carries the extra 100 bytes.
        assert_eq!(
            window.on_consumed_at(50, start + Duration::from_millis(10)),
            Some(150)
        );
        assert_eq!(window.window(), 200);
        assert!(window.is_full());
        // The peer may now send 200 bytes at once, and not one more.
        window.on_receive(200).unwrap();
        assert!(window.on_receive(1).is_err());
        assert_eq!(
            window.on_consumed_at(200, start + Duration::from_millis(20)),
            Some(400)
        );
        assert_eq!(window.window(), 400);
        // At the maximum it stays there.
        window.on_receive(400).unwrap();
        assert_eq!(
            window.on_consumed_at(400, start + Duration::from_millis(30)),
            Some(400)
        );
        assert_eq!(window.window(), 400);
    }

    #[test]
    fn a_window_drained_slower_than_a_round_trip_stays() {
        let start = Instant::now();
        let mut window = growing(100, 400);
        for step in 0..10u32 {
            window.on_receive(50).unwrap();
            let now = start + RTT * step;
            assert_eq!(window.on_consumed_at(50, now), Some(50), "step {step}");
        }
        assert_eq!(window.window(), 100);
    }

    #[test]
    fn short_round_trips_and_plain_consumption_never_grow_a_window() {
        let start = Instant::now();
        let rtt = MIN_GROWTH_RTT - Duration::from_micros(1);
        let mut fast_link = ReceiveWindow::with_growth(100, Growth { rtt, max: 400 });
        let mut plain = ReceiveWindow::new(100);
        for step in 0..10u32 {
            fast_link.on_receive(50).unwrap();
            plain.on_receive(50).unwrap();
            let now = start + Duration::from_nanos(u64::from(step));
            assert_eq!(fast_link.on_consumed_at(50, now), Some(50));
            assert_eq!(plain.on_consumed_at(50, now), Some(50));
        }
        assert_eq!((fast_link.window(), plain.window()), (100, 100));
        // Nor does a maximum above `MAX_GROWN_WINDOW`.
        let mut capped = growing(MAX_GROWN_WINDOW / 2, u32::MAX);
        for step in 0..4u32 {
            capped.on_receive(capped.window() as usize).unwrap();
            let now = start + Duration::from_millis(u64::from(step));
            capped
                .on_consumed_at(capped.window() as usize, now)
                .unwrap();
        }
        assert_eq!(capped.window(), MAX_GROWN_WINDOW);
    }

    #[test]
    fn sender_and_receiver_agree_while_the_window_grows() {
        // The receiver consumes quickly (a grant every 1 ms of a 40 ms
        // round trip): every byte of the current window is somewhere, and
        // the window grows to its maximum and no further.
        let start = Instant::now();
        let mut send = SendCredit::new(1000);
        let mut recv = growing(1000, 64_000);
        let (mut buffered, mut ungranted) = (0usize, 0usize);
        for step in 0..20_000u32 {
            let n = send.take(1 + step as usize % 333);
            recv.on_receive(n).unwrap();
            buffered += n;
            let consume = buffered.min(1 + step as usize % 217);
            buffered -= consume;
            ungranted += consume;
            let now = start + Duration::from_micros(u64::from(step) * 50);
            if let Some(grant) = recv.on_consumed_at(consume, now) {
                send.grant(grant).unwrap();
                ungranted = 0;
            }
            assert_eq!(
                send.available() as usize + buffered + ungranted,
                recv.window() as usize,
                "step {step}"
            );
        }
        assert_eq!(recv.window(), 64_000);
    }

    #[test]
    fn sender_and_receiver_agree_over_a_long_exchange() {
        // Simulates a stream where the receiver consumes in odd-sized pieces:
        // bytes in flight plus bytes buffered never exceed the window.
        let window_size = 1000u32;
        let window = window_size as usize;
        let mut send = SendCredit::new(window_size);
        let mut recv = ReceiveWindow::new(window_size);
        let mut buffered = 0usize;
        // Consumed by the receiver but not yet granted back.
        let mut ungranted = 0usize;
        let mut total = 0usize;
        for step in 0..10_000usize {
            let n = send.take(1 + step % 333);
            recv.on_receive(n).unwrap();
            buffered += n;
            total += n;
            assert!(buffered <= window);
            let consume = buffered.min(1 + step % 217);
            buffered -= consume;
            ungranted += consume;
            if let Some(grant) = recv.on_consumed(consume) {
                send.grant(grant).unwrap();
                ungranted -= grant as usize;
            }
            // Every byte of the window is somewhere: sendable, buffered, or
            // consumed and awaiting a grant; and less than half a window ever
            // awaits a grant, so an idle receiver never starves the sender.
            assert_eq!(send.available() as usize + buffered + ungranted, window);
            assert!(ungranted * 2 < window, "step {step}: {ungranted} ungranted");
        }
        // The consumer's schedule allows about 1.09 MB; even granting every
        // consumed byte at once, this schedule moves only about 882 kB.
        assert!(total > 850_000, "stream stalled after {total} bytes");
    }
}
