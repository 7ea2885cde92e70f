//! Telemetry for Omnid, kept in one small crate so every component reports
//! the same way.
//!
//! Following Vector's instrumentation spec, each thing worth reporting is
//! an [`InternalEvent`]: a struct, owned by the crate that emits it, whose
//! `emit` writes its log line and updates its metrics in one place, called
//! through [`emit!`]. Metric handles are registered once (per channel, at
//! build time), never looked up per event, and every label value comes
//! from a bounded set, so a hostile input can never create unbounded
//! series. What stays here is what every crate shares: the trait and the
//! macro, the catalogue of metric [`names`], [`LogSampler`] and tracing
//! set-up, with the export of [`trace`] spans over OTLP (feature `otlp`).

mod internal_event;
pub mod names;
#[cfg(feature = "otlp")]
mod otlp;
mod sampler;
mod setup;
pub mod trace;

pub use internal_event::InternalEvent;
#[cfg(feature = "otlp")]
pub use otlp::{OtlpConfig, OtlpExporter, TRACES_PATH};
pub use sampler::LogSampler;
#[cfg(feature = "otlp")]
pub use setup::init_tracing_with_otlp;
pub use setup::{LogFormat, TelemetryError, init_tracing};
