//! Spans for OpenTelemetry, and the W3C trace context that carries a trace
//! across the event stream.
//!
//! Spans meant for export are `tracing` spans with target [`TARGET`]. Only
//! the OTLP layer listens to that target (log lines never show these
//! spans), so when no OTLP endpoint is configured no layer is interested in
//! them: the span macros then cost one cached callsite check, their fields
//! are never evaluated, and every helper here returns at once for the
//! disabled span.
//!
//! A trace crosses the event log through the record's `traceparent`
//! header: the producer writes the context of its append span there
//! (`TraceContext::of`, `TraceContext::traceparent`) and a consumer
//! parents (or links) its own span to it (`TraceContext::parse`,
//! `set_parent`, `add_link`). Within one process, a context can be handed
//! from one task to another by key (`Handoff`). All of these come with the
//! `otlp` feature; without it only [`TARGET`] is here.

/// The target of every span meant for export (`tracing::info_span!(target:
/// omni_telemetry::trace::TARGET, ...)`).
pub const TARGET: &str = "omnid_trace";

#[cfg(feature = "otlp")]
pub use otel::*;

#[cfg(feature = "otlp")]
mod otel {
    use std::{
        borrow::Borrow,
        collections::{HashMap, VecDeque},
        hash::Hash,
        sync::{Mutex, PoisonError},
    };

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    /// One span's place in a trace, as a W3C `traceparent` names it: the
    /// trace id, the span id and whether the trace is sampled.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TraceContext {
        trace_id: TraceId,
        span_id: SpanId,
        flags: TraceFlags,
    }

    impl TraceContext {
        /// Reads a `traceparent` value (W3C Trace Context, level 1):
        /// `version-traceid-parentid-flags` in lower-case hex, ids not all
        /// zeros, version not `ff`; a version above `00` may carry more
        /// `-`-separated fields, which are ignored. `None` for anything
        /// else: the spec says to start a new trace then, not to fail.
        pub fn parse(value: &str) -> Option<Self> {
            let b = value.as_bytes();
            if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
                return None;
            }
            let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
            let (version, trace_id, span_id, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
            if ![version, trace_id, span_id, flags].iter().all(|s| hex(s)) || version == b"ff" {
                return None;
            }
            if b.len() > 55 && (version == b"00" || b[55] != b'-') {
                return None;
            }
            // All checked as lower-case hex of the right length above.
            let trace_id = TraceId::from_hex(&value[3..35]).ok()?;
            let span_id = SpanId::from_hex(&value[36..52]).ok()?;
            let flags = u8::from_str_radix(&value[53..55], 16).ok()?;
            if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
                return None;
            }
            Some(Self {
                trace_id,
                span_id,
                // Only the sampled bit is defined; the others are reserved.
                flags: TraceFlags::new(flags) & TraceFlags::SAMPLED,
            })
        }

        /// The context of `span` once it is exported; `None` when it is not
        /// (no OTLP endpoint configured), at the cost of one check.
        pub fn of(span: &tracing::Span) -> Option<Self> {
            if span.is_disabled() {
                return None;
            }
            let context = span.context();
            let span_context = context.span().span_context().clone();
            span_context.is_valid().then(|| Self {
                trace_id: span_context.trace_id(),
                span_id: span_context.span_id(),
                flags: span_context.trace_flags(),
            })
        }

        /// The `traceparent` header value (version `00`).
        pub fn traceparent(&self) -> String {
            format!(
                "00-{}-{}-{:02x}",
                self.trace_id,
                self.span_id,
                self.flags.to_u8()
            )
        }

        /// The trace id, 32 lower-case hex digits.
        pub fn trace_id(&self) -> String {
            self.trace_id.to_string()
        }

        /// The span id, 16 lower-case hex digits.
        pub fn span_id(&self) -> String {
            self.span_id.to_string()
        }

        /// Whether the trace is sampled (exported), as decided where it
        /// began.
        pub fn is_sampled(&self) -> bool {
            self.flags.is_sampled()
        }

        fn span_context(&self) -> SpanContext {
            SpanContext::new(
                self.trace_id,
                self.span_id,
                self.flags,
                true,
                TraceState::default(),
            )
        }
    }

    /// Makes `parent` the parent of `span`, which then joins its trace and
    /// follows its sampling decision. Call it before the span is first
    /// entered; a disabled span is left alone.
    pub fn set_parent(span: &tracing::Span, parent: &TraceContext) {
        if span.is_disabled() {
            return;
        }
        let context = opentelemetry::Context::new().with_remote_span_context(parent.span_context());
        // Fails only for a span already started or not exported, which
        // keeps the parent it has: nothing to report.
        let _ = span.set_parent(context);
    }

    /// Links `span` to `other`: related, but not its parent (a batch and
    /// the messages it covers). A disabled span is left alone.
    pub fn add_link(span: &tracing::Span, other: &TraceContext) {
        if span.is_disabled() {
            return;
        }
        span.add_link(other.span_context());
    }

    /// Span contexts handed from one task to another in the same process,
    /// by key: the threading worker leaves each event's context for the
    /// timeline relay, which publishes the event's entries later.
    ///
    /// Bounded: beyond `capacity` keys the oldest are forgotten, so
    /// contexts nobody takes (another process publishes, an event turned
    /// out a duplicate) cannot grow memory.
    #[derive(Debug)]
    pub struct Handoff<K> {
        capacity: usize,
        state: Mutex<HandoffState<K>>,
    }

    #[derive(Debug)]
    struct HandoffState<K> {
        /// Each key's context and the generation it was left in.
        contexts: HashMap<K, (u64, TraceContext)>,
        /// Keys in the order they were left, with their generation: an
        /// entry whose key was taken and left again is not the one to
        /// forget.
        order: VecDeque<(K, u64)>,
        generation: u64,
    }

    impl<K: Hash + Eq + Clone> Handoff<K> {
        pub fn new(capacity: usize) -> Self {
            Self {
                capacity: capacity.max(1),
                state: Mutex::new(HandoffState {
                    contexts: HashMap::new(),
                    order: VecDeque::new(),
                    generation: 0,
                }),
            }
        }

        /// Leaves `context` under `key`, replacing what was there.
        pub fn put(&self, key: K, context: TraceContext) {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.generation += 1;
            let generation = state.generation;
            state.contexts.insert(key.clone(), (generation, context));
            state.order.push_back((key, generation));
            while state.order.len() > self.capacity {
                let Some((oldest, generation)) = state.order.pop_front() else {
                    break;
                };
                if state
                    .contexts
                    .get(&oldest)
                    .is_some_and(|(current, _)| *current == generation)
                {
                    state.contexts.remove(&oldest);
                }
            }
        }

        /// Takes the context left under `key`, if any.
        pub fn take<Q>(&self, key: &Q) -> Option<TraceContext>
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.contexts.remove(key).map(|(_, context)| context)
        }

        /// How many contexts are waiting.
        pub fn len(&self) -> usize {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.contexts.len()
        }

        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

        #[test]
        fn traceparent_round_trips() {
            let context = TraceContext::parse(TRACEPARENT).unwrap();
            assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(context.span_id(), "00f067aa0ba902b7");
            assert!(context.is_sampled());
            assert_eq!(context.traceparent(), TRACEPARENT);

            let unsampled =
                TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                    .unwrap();
            assert!(!unsampled.is_sampled());
            assert!(unsampled.traceparent().ends_with("-00"));
        }

        #[test]
        fn malformed_traceparents_start_no_trace() {
            for bad in [
                "",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                // Upper case, a sign, a bad separator.
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                // All-zero ids, the forbidden version.
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                // Version 00 has exactly four fields.
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                // A multi-byte character where a separator belongs.
                "00-4bf92f3577b34da6a3ce929d0e0e473é00f067aa0ba902b7-01",
            ] {
                assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
            }
        }

        #[test]
        fn a_later_version_may_carry_more_fields_and_reserved_flags_are_dropped() {
            let context = TraceContext::parse(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-ever",
            )
            .unwrap();
            assert_eq!(context.traceparent(), TRACEPARENT);
        }

        #[test]
        fn a_disabled_span_has_no_context_and_ignores_parents_and_links() {
            let span = tracing::Span::none();
            let parent = TraceContext::parse(TRACEPARENT).unwrap();
            set_parent(&span, &parent);
            add_link(&span, &parent);
            assert_eq!(TraceContext::of(&span), None);
        }

        fn context(n: u8) -> TraceContext {
            TraceContext::parse(&format!(
                "00-4bf92f3577b34da6a3ce929d0e0e47{n:02x}-00f067aa0ba902b7-01"
            ))
            .unwrap()
        }

        #[test]
        fn handoff_gives_each_context_once_and_forgets_the_oldest() {
            let handoff = Handoff::new(2);
            handoff.put("a".to_owned(), context(1));
            handoff.put("b".to_owned(), context(2));
            assert_eq!(handoff.take("a"), Some(context(1)));
            assert_eq!(handoff.take("a"), None);
            handoff.put("c".to_owned(), context(3));
            handoff.put("d".to_owned(), context(4));
            // Two at most: "b" was the oldest.
            assert_eq!(handoff.len(), 2);
            assert_eq!(handoff.take("b"), None);
            assert_eq!(handoff.take("c"), Some(context(3)));
            assert_eq!(handoff.take("d"), Some(context(4)));
            assert!(handoff.is_empty());
        }

        #[test]
        fn a_key_left_again_is_not_forgotten_for_its_earlier_turn() {
            let handoff = Handoff::new(2);
            handoff.put("a".to_owned(), context(1));
            assert_eq!(handoff.take("a"), Some(context(1)));
            handoff.put("a".to_owned(), context(2));
            // Pushes out the first "a" entry of the order, not the second.
            handoff.put("b".to_owned(), context(3));
            assert_eq!(handoff.take("a"), Some(context(2)));
            assert_eq!(handoff.take("b"), Some(context(3)));
        }
    }
}
