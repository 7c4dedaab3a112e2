//! Broker-wide memory budgets, so that many clients at once cannot take
//! more memory than the operator allowed.
//!
//! - Request bytes in flight (`queued.max.request.bytes`): a connection's
//!   reader takes a frame's size from [`RequestBudget`] before reading the
//!   frame, and gives it back once the request has been answered (a request
//!   with a second phase, once its first phase is done: the frame is no
//!   longer needed while it waits for replication or data). With the
//!   budget spent, readers wait (the client's bytes stay in the socket), as
//!   Kafka stops reading from sockets when its memory pool is empty.
//! - Decompression ([`DecompressionBudget`], the same size): checking a
//!   compressed produce batch takes memory as the records come out of the
//!   codec, a chunk at a time. When the budget runs out part-way, the batch
//!   gives back what it has and waits for its whole bound at once, so that
//!   nobody waits while holding memory another waiter needs (no deadlock),
//!   and at most the budget is in use however many batches arrive together.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Request bytes read and not yet answered, across all connections.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    /// `None`: unbounded (`queued.max.request.bytes` = -1).
    bytes: Option<(Arc<Semaphore>, u32)>,
}

/// A request's share of the [`RequestBudget`], given back on drop.
#[derive(Debug)]
pub struct RequestLease {
    _permit: Option<OwnedSemaphorePermit>,
}

impl RequestBudget {
    /// A budget of `max_bytes` (`None` for unbounded). Semaphores count in
    /// `u32`; a budget above 4 GiB is treated as 4 GiB.
    pub fn new(max_bytes: Option<usize>) -> Self {
        Self {
            bytes: max_bytes.map(|max| {
                let max = u32::try_from(max).unwrap_or(u32::MAX);
                (Arc::new(Semaphore::new(max as usize)), max)
            }),
        }
    }

    /// Waits until `size` bytes are free and takes them. A frame larger than
    /// the whole budget (impossible once the config is checked) takes all.
    pub async fn acquire(&self, size: usize) -> RequestLease {
        let Some((semaphore, max)) = &self.bytes else {
            return RequestLease { _permit: None };
        };
        let n = u32::try_from(size).unwrap_or(u32::MAX).min(*max);
        // The semaphore is never closed.
        RequestLease {
            _permit: Arc::clone(semaphore).acquire_many_owned(n).await.ok(),
        }
    }
}

/// Memory for decompressing produced batches, across all requests.
#[derive(Debug)]
pub struct DecompressionBudget {
    /// The whole budget; `usize::MAX` for unbounded.
    total: usize,
    /// Bytes not lent out.
    available: Mutex<usize>,
    /// Signalled when bytes come back.
    returned: Condvar,
}

impl DecompressionBudget {
    /// A budget of `max_bytes` (`None` for unbounded).
    pub fn new(max_bytes: Option<usize>) -> Self {
        let total = max_bytes.unwrap_or(usize::MAX);
        Self {
            total,
            available: Mutex::new(total),
            returned: Condvar::new(),
        }
    }

    /// The whole budget.
    pub fn total(&self) -> usize {
        self.total
    }

    /// An empty lease, to grow with [`DecompressionLease::try_grow`].
    pub fn lease(&self) -> DecompressionLease<'_> {
        DecompressionLease {
            budget: self,
            bytes: 0,
        }
    }

    /// Blocks until `bytes` (at most the whole budget) are free, and takes
    /// them. Call it holding no other lease of this budget.
    pub fn wait_for(&self, bytes: usize) -> DecompressionLease<'_> {
        let bytes = bytes.min(self.total);
        let mut available = self.available.lock();
        while *available < bytes {
            self.returned.wait(&mut available);
        }
        *available -= bytes;
        DecompressionLease {
            budget: self,
            bytes,
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut available = self.available.lock();
        *available += bytes;
        debug_assert!(*available <= self.total, "more returned than lent");
        self.returned.notify_all();
    }
}

/// Memory taken from a [`DecompressionBudget`], given back on drop.
#[derive(Debug)]
pub struct DecompressionLease<'a> {
    budget: &'a DecompressionBudget,
    bytes: usize,
}

impl DecompressionLease<'_> {
    /// Takes `more` bytes if they are free now; `false` if not.
    pub fn try_grow(&mut self, more: usize) -> bool {
        let mut available = self.budget.available.lock();
        if *available < more {
            return false;
        }
        *available -= more;
        self.bytes += more;
        true
    }

    /// The bytes this lease holds.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DecompressionLease<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_come_back_and_waiters_get_their_turn() {
        let budget = Arc::new(DecompressionBudget::new(Some(100)));
        let mut a = budget.lease();
        assert!(a.try_grow(60));
        let mut b = budget.lease();
        assert!(!b.try_grow(50), "only 40 left");
        assert!(b.try_grow(40));
        drop(b);
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.wait_for(1_000).bytes())
        };
        drop(a);
        assert_eq!(
            waiter.join().unwrap(),
            100,
            "a wait takes at most the whole budget"
        );
        assert!(budget.lease().try_grow(100), "everything came back");
    }

    #[tokio::test]
    async fn request_bytes_are_bounded() {
        let budget = RequestBudget::new(Some(10));
        let first = budget.acquire(8).await;
        let second = budget.acquire(5);
        tokio::pin!(second);
        assert!(futures_poll_once(&mut second).await.is_none(), "waits");
        drop(first);
        let _second = second.await;
        // Unbounded never waits.
        let _big = RequestBudget::new(None).acquire(usize::MAX).await;
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            () = std::future::ready(()) => None,
        }
    }
}
