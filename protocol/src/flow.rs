//! Credit-based flow control.
//!
//! The receiver of a stream grants the sender a window of bytes (initially in
//! `hello`/`welcome`, later with `window` frames). The sender never sends more
//! than its credit; the receiver grants more only after it has consumed
//! (written out) what it received. So at most one window of bytes per stream is
//! ever buffered or in flight, whatever either side does.

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

/// The receiver's side: how much credit the peer holds and when to grant more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveWindow {
    window: u32,
    /// Credit the peer holds (granted, not yet used).
    peer_credit: u64,
    /// Bytes consumed since the last grant.
    consumed: u64,
}

impl ReceiveWindow {
    /// A window of `window` bytes, all of it granted up front.
    pub fn new(window: u32) -> Self {
        ReceiveWindow {
            window,
            peer_credit: u64::from(window),
            consumed: 0,
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
    /// that there is about one `window` frame per half window of data.
    pub fn on_consumed(&mut self, len: usize) -> Option<u32> {
        self.consumed += len as u64;
        if self.consumed * 2 >= u64::from(self.window) {
            // `consumed` never exceeds the window: it only counts bytes that
            // were received within credit and not yet re-granted.
            let grant = u32::try_from(self.consumed).unwrap_or(u32::MAX);
            self.consumed -= u64::from(grant);
            self.peer_credit += u64::from(grant);
            Some(grant)
        } else {
            None
        }
    }
}

impl ReceiveWindow {
    /// Grants back every byte received and not granted yet, consumed or
    /// not (before the receiver goes away, dropping what it still holds, so
    /// that the next receiver can start from a full window).
    pub fn grant_all(&mut self) -> Option<u32> {
        let outstanding = u64::from(self.window).saturating_sub(self.peer_credit);
        if outstanding == 0 {
            return None;
        }
        self.consumed = 0;
        self.peer_credit = u64::from(self.window);
        Some(u32::try_from(outstanding).unwrap_or(u32::MAX))
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
        assert_eq!(window.grant_all(), None);
        window.on_receive(70).unwrap();
        assert_eq!(window.on_consumed(10), None);
        // 10 consumed, 60 still buffered: all 70 go back.
        assert_eq!(window.grant_all(), Some(70));
        assert!(window.is_full());
        window.on_receive(100).unwrap();
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
