//! openraft's async runtime for the quorum: tokio, with two changes that
//! make a simulated run (one current-thread runtime with paused time)
//! replay from its seed:
//!
//! - the randomness openraft draws (its election timeouts) comes from a
//!   generator a simulation can seed ([`seed_thread_rng`]); without a seed
//!   (production) every draw is seeded from the thread's entropy-seeded
//!   generator, as with tokio's runtime;
//! - its watch channels wake their waiters in order ([`watch`]). tokio's
//!   `watch` spreads waiters over 8 queues picked by tokio's own random
//!   generator, which only `--cfg tokio_unstable` can seed, so replication
//!   tasks waiting on one channel would resume in a different order in
//!   every run.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use openraft::rt::{AsyncRuntime, OptionalSend};
use rand_0_10::SeedableRng;
use rand_0_10::rngs::SmallRng;

// openraft's re-export of `openraft_rt_tokio::TokioRuntime`, deprecated in
// favour of depending on that crate, which would be one more dependency.
#[allow(deprecated)]
type Tokio = openraft::impls::TokioRuntime;

thread_local! {
    /// The next draw's seed on this thread, when a simulation set one.
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes openraft's random draws on this thread (election timeouts) follow
/// `seed` (None: entropy again). A simulation runs every node of a run on
/// one current-thread runtime and sets this first.
#[doc(hidden)]
pub fn seed_thread_rng(seed: Option<u64>) {
    SEED.set(seed);
}

/// SplitMix64: the next seed of the sequence.
fn next_seed(seed: u64) -> u64 {
    let z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// tokio, with a seedable [`AsyncRuntime::thread_rng`].
#[derive(Debug)]
pub struct Runtime(Tokio);

impl AsyncRuntime for Runtime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match SEED.get() {
            Some(seed) => {
                SEED.set(Some(next_seed(seed)));
                SmallRng::seed_from_u64(seed)
            }
            None => SmallRng::from_rng(&mut rand_0_10::rng()),
        }
    }

    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = watch::OrderedWatch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        Self(Tokio::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}

pub(crate) mod watch {
    //! A watch channel with tokio's semantics whose waiters wake in the
    //! order they started waiting: one value behind a lock, a version
    //! bumped under that lock at every change, and one `Notify`.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    use openraft::rt::watch::{RecvError, SendError, Watch, WatchReceiver, WatchSender};
    use openraft::rt::{OptionalSend, OptionalSync};
    use parking_lot::{RwLock, RwLockReadGuard};
    use tokio::sync::Notify;

    /// The watch channel family of [`super::Runtime`].
    #[derive(Debug)]
    pub struct OrderedWatch;

    struct Shared<T> {
        value: RwLock<T>,
        /// Bumped (under the write lock) at every change.
        version: AtomicU64,
        /// Set when the last sender is dropped.
        closed: AtomicBool,
        senders: AtomicUsize,
        /// `send` fails without receivers, as tokio's does.
        receivers: AtomicUsize,
        changed: Notify,
    }

    pub struct Sender<T>(Arc<Shared<T>>);

    pub struct Receiver<T> {
        shared: Arc<Shared<T>>,
        /// The version this receiver has seen.
        seen: u64,
    }

    impl<T> std::fmt::Debug for Sender<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("watch::Sender").finish_non_exhaustive()
        }
    }

    impl<T> std::fmt::Debug for Receiver<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("watch::Receiver")
                .field("seen", &self.seen)
                .finish_non_exhaustive()
        }
    }

    impl Watch for OrderedWatch {
        type Sender<T: OptionalSend + OptionalSync> = Sender<T>;
        type Receiver<T: OptionalSend + OptionalSync> = Receiver<T>;
        type Ref<'a, T: OptionalSend + 'a> = RwLockReadGuard<'a, T>;

        fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Sender<T>, Receiver<T>) {
            let shared = Arc::new(Shared {
                value: RwLock::new(init),
                version: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                senders: AtomicUsize::new(1),
                receivers: AtomicUsize::new(1),
                changed: Notify::new(),
            });
            let receiver = Receiver {
                shared: Arc::clone(&shared),
                seen: 0,
            };
            (Sender(shared), receiver)
        }
    }

    impl<T> Clone for Sender<T> {
        fn clone(&self) -> Self {
            self.0.senders.fetch_add(1, Ordering::AcqRel);
            Self(Arc::clone(&self.0))
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.0.closed.store(true, Ordering::Release);
                self.0.changed.notify_waiters();
            }
        }
    }

    impl<T> Clone for Receiver<T> {
        fn clone(&self) -> Self {
            self.shared.receivers.fetch_add(1, Ordering::AcqRel);
            Self {
                shared: Arc::clone(&self.shared),
                seen: self.seen,
            }
        }
    }

    impl<T> Drop for Receiver<T> {
        fn drop(&mut self) {
            self.shared.receivers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    impl<T: OptionalSend + OptionalSync> WatchSender<OrderedWatch, T> for Sender<T> {
        fn send(&self, value: T) -> Result<(), SendError<T>> {
            if self.0.receivers.load(Ordering::Acquire) == 0 {
                return Err(SendError(value));
            }
            {
                let mut current = self.0.value.write();
                *current = value;
                self.0.version.fetch_add(1, Ordering::AcqRel);
            }
            self.0.changed.notify_waiters();
            Ok(())
        }

        fn send_if_modified<F>(&self, modify: F) -> bool
        where
            F: FnOnce(&mut T) -> bool,
        {
            let modified = {
                let mut current = self.0.value.write();
                let modified = modify(&mut current);
                if modified {
                    self.0.version.fetch_add(1, Ordering::AcqRel);
                }
                modified
            };
            if modified {
                self.0.changed.notify_waiters();
            }
            modified
        }

        fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
            self.0.value.read()
        }

        fn subscribe(&self) -> Receiver<T> {
            // The version read under the lock: the value it names.
            let seen = {
                let _value = self.0.value.read();
                self.0.version.load(Ordering::Acquire)
            };
            self.0.receivers.fetch_add(1, Ordering::AcqRel);
            Receiver {
                shared: Arc::clone(&self.0),
                seen,
            }
        }
    }

    impl<T: OptionalSend + OptionalSync> WatchReceiver<OrderedWatch, T> for Receiver<T> {
        async fn changed(&mut self) -> Result<(), RecvError> {
            loop {
                // Registered before the checks, so a change between the
                // checks and the wait still wakes it.
                let notified = self.shared.changed.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                let version = self.shared.version.load(Ordering::Acquire);
                if version != self.seen {
                    self.seen = version;
                    return Ok(());
                }
                if self.shared.closed.load(Ordering::Acquire) {
                    return Err(RecvError(()));
                }
                notified.await;
            }
        }

        fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
            self.shared.value.read()
        }

        fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
            let value = self.shared.value.read();
            // No writer can bump the version while the read lock is held.
            self.seen = self.shared.version.load(Ordering::Acquire);
            value
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn a_change_wakes_every_receiver_and_the_last_sender_closes() {
            let (tx, mut rx) = OrderedWatch::channel(0);
            let mut rx2 = tx.subscribe();
            let waiter = tokio::spawn(async move {
                rx2.changed().await.unwrap();
                let value = *rx2.borrow_and_update();
                (value, rx2.changed().await.is_err())
            });
            tokio::task::yield_now().await;
            tx.send(1).unwrap();
            assert!(tx.send_if_modified(|v| {
                *v += 1;
                true
            }));
            assert!(!tx.send_if_modified(|_| false));
            rx.changed().await.unwrap();
            assert_eq!(*rx.borrow_and_update(), 2);
            drop(tx);
            assert!(rx.changed().await.is_err());
            let (value, closed) = waiter.await.unwrap();
            assert!(value >= 1);
            assert!(closed);
        }

        #[tokio::test]
        async fn send_fails_without_receivers() {
            let (tx, rx) = OrderedWatch::channel(0);
            drop(rx);
            assert!(tx.send(1).is_err());
            assert_eq!(*tx.borrow_watched(), 0);
            let _rx = tx.subscribe();
            assert!(tx.send(1).is_ok());
        }
    }
}
