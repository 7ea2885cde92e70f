/// Something worth reporting that happened inside Omnid, as a value.
///
/// Each event is a struct owned by the crate that emits it, and its
/// [`emit`](InternalEvent::emit) is the one place where it becomes both its
/// log line and its metric updates, so the two can never disagree. Metrics
/// go through `Handles`, registered once (per channel, mailbox or topic, at
/// build time) and never looked up per event; an event that updates no
/// metric uses `()`. Emit through [`emit!`](crate::emit), so every call site
/// reads the same.
pub trait InternalEvent: Sized {
    /// The pre-registered metric handles (and log samplers) the event
    /// updates.
    type Handles: ?Sized;

    fn emit(self, handles: &Self::Handles);
}

/// Emits an [`InternalEvent`](crate::InternalEvent): its log line and its
/// metrics together.
///
/// ```
/// use omni_telemetry::{InternalEvent, emit};
///
/// struct Started;
///
/// impl InternalEvent for Started {
///     type Handles = ();
///     fn emit(self, _: &()) {
///         tracing::info!("started");
///     }
/// }
///
/// struct Received {
///     bytes: u64,
/// }
///
/// impl InternalEvent for Received {
///     type Handles = metrics::Counter;
///     fn emit(self, bytes_total: &metrics::Counter) {
///         bytes_total.increment(self.bytes);
///     }
/// }
///
/// let bytes_total = metrics::counter!("example_bytes_total");
/// emit!(Started);
/// emit!(Received { bytes: 42 } => &bytes_total);
/// ```
#[macro_export]
macro_rules! emit {
    ($event:expr => $handles:expr $(,)?) => {
        $crate::InternalEvent::emit($event, $handles)
    };
    ($event:expr $(,)?) => {
        $crate::InternalEvent::emit($event, &())
    };
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use crate::InternalEvent;

    /// Handles the test can read back.
    #[derive(Debug, Default)]
    struct Tally {
        events: AtomicU64,
        bytes: AtomicU64,
    }

    struct Received<'a> {
        bytes: u64,
        /// A borrowed field, like most events' log-only details.
        from: &'a str,
    }

    impl InternalEvent for Received<'_> {
        type Handles = Tally;

        fn emit(self, tally: &Tally) {
            tally.events.fetch_add(1, Ordering::Relaxed);
            tally.bytes.fetch_add(self.bytes, Ordering::Relaxed);
            tracing::debug!(from = self.from, bytes = self.bytes, "received");
        }
    }

    struct Counted<'a>(&'a AtomicU64);

    impl InternalEvent for Counted<'_> {
        type Handles = ();

        fn emit(self, (): &()) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn emit_hands_the_event_its_handles() {
        let tally = Tally::default();
        let from = String::from("shop");
        emit!(Received { bytes: 3, from: &from } => &tally);
        emit!(Received { bytes: 4, from: &from } => &tally,);
        assert_eq!(tally.events.load(Ordering::Relaxed), 2);
        assert_eq!(tally.bytes.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn an_event_without_metrics_needs_no_handles() {
        let seen = AtomicU64::new(0);
        emit!(Counted(&seen));
        emit!(Counted(&seen) => &());
        assert_eq!(seen.load(Ordering::Relaxed), 2);
    }
}
