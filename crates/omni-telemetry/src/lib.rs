//! Telemetry for Omnid, kept in one small crate so every component reports
//! the same way.
//!
//! Following Vector's instrumentation spec, each thing worth reporting is a
//! struct in [`events`] that emits its log line and updates its metrics in
//! one place. Metric handles are registered once (per channel, at build
//! time), never looked up per event, and every label value comes from a
//! bounded set, so a hostile input can never create unbounded series.

pub mod events;
mod setup;

pub use setup::{LogFormat, TelemetryError, init_tracing};
