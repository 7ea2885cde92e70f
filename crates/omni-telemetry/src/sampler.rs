use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Bounds a log line that hostile clients can trigger at will: the first
/// occurrence is logged, then at most one per interval, carrying how many
/// were suppressed in between. Counters still count every occurrence.
#[derive(Debug)]
pub struct LogSampler {
    origin: Instant,
    interval_ms: u64,
    /// Milliseconds after `origin` before which nothing more is logged.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogSampler {
    /// The interval of refusal log lines.
    pub const REFUSAL_INTERVAL: Duration = Duration::from_secs(10);

    pub fn new(interval: Duration) -> Self {
        Self {
            origin: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when this occurrence is to be logged, with the
    /// number left unlogged since the previous line; `None` otherwise.
    pub fn sample(&self) -> Option<u64> {
        self.sample_at(self.origin.elapsed())
    }

    fn sample_at(&self, elapsed: Duration) -> Option<u64> {
        let now = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_logs_the_first_then_one_per_interval_with_the_suppressed_count() {
        let sampler = LogSampler::new(Duration::from_secs(10));
        let at = Duration::from_millis;
        assert_eq!(sampler.sample_at(at(0)), Some(0));
        assert_eq!(sampler.sample_at(at(1)), None);
        assert_eq!(sampler.sample_at(at(9_999)), None);
        assert_eq!(sampler.sample_at(at(10_000)), Some(2));
        assert_eq!(sampler.sample_at(at(10_001)), None);
        // A quiet spell: the next occurrence is logged at once.
        assert_eq!(sampler.sample_at(at(60_000)), Some(1));
        assert_eq!(sampler.sample_at(at(60_001)), None);
    }
}
