//! Identity handles as they appear on the stream; the conversion lives in
//! [`omni_model::proto`], so connectors, the sink and the threading service
//! cannot disagree on it.

pub use omni_model::proto::{kind_from_proto, kind_to_proto, partition_key, to_proto};
