//! A stream that is polled only when it asked to be: [`WokenOnly`].
//!
//! `tokio::select!` polls every branch each time its task wakes, for
//! whatever reason. Polling the WebSocket when nothing arrived is not free:
//! tungstenite zeroes its whole read buffer before each read attempt (3 µs
//! for its default 128 KiB; the client's is 32 KiB). The session loop wakes for many other reasons (an
//! answer to send, output written, a timer, and while it lingers, every
//! few microseconds), so each of those paid it. [`WokenOnly`] gives the
//! inner stream a waker of its own and skips the poll until that waker
//! fires, as `FuturesUnordered` does for its futures.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::Stream;
use futures_util::task::AtomicWaker;

/// Polls `inner` only after it woke its waker (or returned an item, since a
/// stream owes no wake-up for an item it already holds). The inner stream
/// must wake the waker of its last poll when it can make progress, as the
/// `Stream` contract says: one that shares a single waker slot with its
/// sink half (overwritten by the sink's polls) would never be polled again.
pub struct WokenOnly<St> {
    inner: St,
    gate: Arc<Gate>,
    /// `gate` as a waker, made once.
    waker: Waker,
}

struct Gate {
    /// The inner stream may make progress: poll it.
    woken: AtomicBool,
    /// The task polling the [`WokenOnly`] now.
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<St> WokenOnly<St> {
    /// Wraps `inner`; the first poll goes through.
    pub fn new(inner: St) -> Self {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(gate.clone());
        WokenOnly { inner, gate, waker }
    }
}

impl<St: Stream + Unpin> Stream for WokenOnly<St> {
    type Item = St::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<St::Item>> {
        let this = self.get_mut();
        // Registered before the flag is read: a wake-up in between is not lost.
        this.gate.task.register(cx.waker());
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.inner).poll_next(&mut Context::from_waker(&this.waker));
        if polled.is_ready() {
            // More may be buffered, and no wake-up will say so.
            this.gate.woken.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready with `Some(())` when `ready` is set, else
    /// pending, keeping the waker it was polled with.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Stream for Probe {
        type Item = ();
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.swap(false, Ordering::SeqCst) {
                Poll::Ready(Some(()))
            } else {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn polls_the_inner_stream_only_after_its_wake_up_or_an_item() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(true));
        let inner_waker = Arc::new(std::sync::Mutex::new(None));
        let mut stream = WokenOnly::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        });
        let task = Arc::new(Counter(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let mut poll = |stream: &mut WokenOnly<Probe>| Pin::new(stream).poll_next(&mut cx);

        assert_eq!(poll(&mut stream), Poll::Ready(Some(())));
        // After an item: polled again, found pending.
        assert_eq!(poll(&mut stream), Poll::Pending);
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        // Woken for some other reason: the inner stream is not polled.
        for _ in 0..5 {
            assert_eq!(poll(&mut stream), Poll::Pending);
        }
        assert_eq!(polls.load(Ordering::SeqCst), 2, "polled without a wake-up");
        // Its own wake-up reaches the task and lets the next poll through.
        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was not woken");
        assert_eq!(poll(&mut stream), Poll::Ready(Some(())));
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }
}
