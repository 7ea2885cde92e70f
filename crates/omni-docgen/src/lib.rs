//! Writes `docs/configuration.md` from the source of the config structs.
//!
//! The reference is generated rather than written because the structs are
//! already the schema: serde reads exactly their fields, with their
//! defaults, and their doc comments say what each key is for. A second,
//! hand-written copy would drift; a test compares the committed file with
//! a fresh generation, so CI fails when a field changes and the docs do
//! not.
//!
//! The generator reads Rust source with `syn` instead of asking the types
//! at run time, so it needs no derive on any config struct and never links
//! the daemon. It finds the daemon's `Settings` and every type that
//! implements `ChannelConfig` (a new channel crate is documented without
//! touching this crate), then follows fields whose types are other config
//! structs into sub-tables.

mod render;
mod source;

use std::path::Path;

pub use source::{Index, SourceError};

/// The generated `docs/configuration.md` for the workspace at `root`.
pub fn generate(root: &Path) -> Result<String, SourceError> {
    let index = Index::load(&root.join("crates"))?;
    Ok(render::document(&index))
}
