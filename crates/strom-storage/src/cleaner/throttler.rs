//! A limit on the cleaner's I/O rate (`log.cleaner.io.max.bytes.per.second`),
//! as Kafka's `Throttler`: bytes read and written are counted, and once per
//! check interval, if they came faster than the rate, the cleaner pauses
//! long enough to bring the interval's rate down to it.

use std::time::{Duration, Instant};

/// How often the rate is checked: Kafka's cleaner throttler uses 300 ms.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(300);

/// Counts the cleaner's I/O and says when to pause.
#[derive(Debug)]
pub(crate) struct Throttler {
    /// `None`: unlimited.
    bytes_per_second: Option<f64>,
    period_start: Instant,
    observed: f64,
}

impl Throttler {
    /// A throttler for `bytes_per_second`; a value that is not finite and
    /// positive, or Kafka's default `Double.MaxValue`, means no limit.
    pub(crate) fn new(bytes_per_second: f64) -> Self {
        let limited =
            bytes_per_second.is_finite() && bytes_per_second > 0.0 && bytes_per_second < f64::MAX;
        Self {
            bytes_per_second: limited.then_some(bytes_per_second),
            period_start: Instant::now(),
            observed: 0.0,
        }
    }

    /// Counts `bytes` of I/O; returns how long to pause now, if at all.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn observe(&mut self, bytes: u64) -> Option<Duration> {
        let rate = self.bytes_per_second?;
        self.observed += bytes as f64;
        let now = Instant::now();
        let elapsed = now.duration_since(self.period_start);
        if elapsed <= CHECK_INTERVAL {
            return None;
        }
        let pause = pause_for(self.observed, elapsed, rate);
        // The next interval starts after the pause.
        self.period_start = now + pause.unwrap_or_default();
        self.observed = 0.0;
        pause
    }
}

/// The pause that brings `observed` bytes over `elapsed` down to `rate`
/// bytes per second (Kafka: `observed / desiredRate - elapsed`).
/// The longest single pause: an absurdly low rate (a config typo) must not
/// put the cleaner to sleep for days, nor overflow a `Duration`.
const MAX_PAUSE_SECS: f64 = 1.0;

pub(crate) fn pause_for(observed: f64, elapsed: Duration, rate: f64) -> Option<Duration> {
    if observed <= 0.0 || rate <= 0.0 {
        return None;
    }
    let pause = (observed / rate - elapsed.as_secs_f64()).min(MAX_PAUSE_SECS);
    (pause > 0.0)
        .then(|| Duration::try_from_secs_f64(pause).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_only_above_the_rate() {
        let second = Duration::from_secs(1);
        // 2 MB in one second at 1 MB/s: one more second.
        assert_eq!(pause_for(2e6, second, 1e6), Some(second));
        assert_eq!(pause_for(1e6, second, 1e6), None);
        assert_eq!(pause_for(5e5, second, 1e6), None);
        assert_eq!(pause_for(0.0, second, 1e6), None);
    }

    #[test]
    fn unlimited_never_pauses() {
        for rate in [f64::MAX, f64::INFINITY, f64::NAN, 0.0, -1.0] {
            let mut throttler = Throttler::new(rate);
            assert_eq!(throttler.observe(u64::MAX), None);
        }
    }
}
