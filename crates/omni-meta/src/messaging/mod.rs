//! Messenger and Instagram Direct: webhook `messaging[]` events to
//! stream events.

pub mod normalize;
