//! WhatsApp Business Cloud API: webhook payloads to events.

pub mod normalize;
