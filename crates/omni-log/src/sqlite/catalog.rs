//! What records refer to but store once per file: header templates (see
//! [`crate::headers`]) and the zstd dictionaries payloads are compressed
//! with, and the in-memory copies every connection of the log shares.
//!
//! Both are immutable once committed and never deleted (a few hundred
//! bytes per template, 16 KiB per dictionary), so a cached copy never goes
//! stale and an id never changes meaning, even when another process writes
//! to the same file.
//!
//! Payloads: a topic's first [`TRAIN_SAMPLES`] payloads are stored as they
//! are and kept as samples; a background thread then trains a dictionary
//! on them, the writer stores it, and from then on appends to the topic
//! compress with it (on the appending task's thread, not the writer's).
//! Small protobuf payloads barely compress on their own but share much
//! with each other (field tags, channel ids, handles, words), which a
//! dictionary captures. Measured on the API channel's 341-byte events
//! (`examples/compression.rs`): zstd without a dictionary saves 15% at
//! ~7 µs of CPU per payload; with a 16 KiB dictionary trained on 1,000 of
//! them, 55% (152 bytes) at ~2 µs, and ~0.7 µs to decompress. Until the
//! topic has a dictionary, only payloads of at least
//! [`MIN_PLAIN_COMPRESS`] bytes (e-mails) are compressed, without one. A
//! payload is stored compressed only when that saves at least
//! [`MIN_SAVING`] bytes, so reading a record that barely compresses costs
//! no decompression.
//!
//! `payload_codec` of a record: 0 stored as given, -1 zstd without a
//! dictionary, `n > 0` zstd with dictionary `n`. Frames are written without
//! checksum, dictionary id or their 4-byte magic number (SQLite checks its
//! pages; the magic is the same in every frame and put back for
//! decompression); they keep the content size, which bounds decompression.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{Arc, RwLock},
};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension};
use zstd::{
    dict::{DecoderDictionary, EncoderDictionary},
    zstd_safe::{self, CCtx, CParameter, DCtx},
};

use crate::headers::{self, HeaderDecodeError, Template};

/// Codec of a payload stored as given.
pub(super) const RAW: i64 = 0;
/// Codec of a payload compressed without a dictionary.
pub(super) const PLAIN: i64 = -1;

/// zstd level: 1 and 3 differ by ~2% in size on small events, and 1 is the
/// cheaper; CPU per append is what the daemon's budget is tight on.
const LEVEL: i32 = 1;
/// Payloads a topic's dictionary is trained on: ~200 already give most of
/// the gain on the API channel's events, 1,000 cover a wider vocabulary.
pub(super) const TRAIN_SAMPLES: usize = 1000;
/// Bytes of samples kept at most, whatever their count.
pub(super) const TRAIN_BYTES: usize = 4 * 1024 * 1024;
/// The longest prefix of one payload kept as a sample.
pub(super) const MAX_SAMPLE: usize = 16 * 1024;
/// The dictionary's size: 8 to 64 KiB trained on these events compress
/// alike; 16 KiB leaves room for a wider vocabulary.
const DICTIONARY_BYTES: usize = 16 * 1024;
/// Payloads shorter than this are never compressed: nothing to gain.
const MIN_COMPRESS: usize = 32;
/// Smallest payload compressed without a dictionary.
const MIN_PLAIN_COMPRESS: usize = 1024;
/// A compressed payload is stored only if it saves this much.
const MIN_SAVING: usize = 8;
/// The magic number every zstd frame starts with, little-endian.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Templates kept at most: a bound on the table should a producer put a
/// different `ce_source` on every record. Beyond it, records whose
/// template is new store their headers literally.
pub(super) const MAX_TEMPLATES: usize = 4096;

/// A topic's current dictionary, prepared for compression.
pub(super) struct Encoder {
    id: i64,
    dictionary: EncoderDictionary<'static>,
}

/// The templates and dictionaries of one file, shared by the writer, the
/// appending tasks and the readers.
#[derive(Default)]
pub(super) struct Catalog {
    /// Committed templates by their encoding, for appends to find their id.
    template_ids: RwLock<HashMap<Vec<u8>, i64>>,
    /// Decoded templates by id, for reads.
    templates: RwLock<HashMap<i64, Arc<Template>>>,
    /// Per topic name, the dictionary appends compress with.
    encoders: RwLock<HashMap<String, Arc<Encoder>>>,
    /// Dictionaries by id, for reads.
    decoders: RwLock<HashMap<i64, Arc<DecoderDictionary<'static>>>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

/// A payload as it is to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StoredPayload {
    /// [`RAW`], [`PLAIN`] or the dictionary's id.
    pub codec: i64,
    pub bytes: Bytes,
    /// Whether the payload as given is wanted as a sample: its topic has
    /// no dictionary yet.
    pub sample: bool,
}

/// How an append's headers reach the writer.
#[derive(Debug)]
pub(super) enum PendingHeaders {
    /// Ready to store: empty, literal, or templated with a known template.
    Blob(Vec<u8>),
    /// Templated with a template the file may not have yet: the writer
    /// finds or stores it, or, should that make more than
    /// [`MAX_TEMPLATES`], stores the literal blob instead.
    NewTemplate {
        split: headers::Split,
        literal: Vec<u8>,
    },
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Catalog {
    /// Loads every template and each topic's newest dictionary.
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Catalog> {
        let catalog = Catalog::default();
        {
            let mut stmt = conn.prepare("SELECT id, template FROM log_header_templates")?;
            let mut rows = stmt.query([])?;
            let mut ids = write(&catalog.template_ids);
            while let Some(row) = rows.next()? {
                ids.insert(row.get(1)?, row.get(0)?);
            }
        }
        let mut stmt = conn.prepare(
            "SELECT t.name, d.id, d.dictionary FROM log_dictionaries d
             JOIN log_topics t ON t.id = d.topic_id
             WHERE d.id IN (SELECT MAX(id) FROM log_dictionaries GROUP BY topic_id)",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let topic: String = row.get(0)?;
            let id: i64 = row.get(1)?;
            let dictionary = row.get_ref(2)?.as_blob()?;
            catalog.install(&topic, id, dictionary);
        }
        Ok(catalog)
    }

    /// Headers as the writer stores them: templated when the file has the
    /// template or room for it, literal otherwise. `None` if a header is
    /// too large to encode at all.
    pub(super) fn prepare_headers(
        &self,
        record_headers: &[(String, Bytes)],
        payload: &[u8],
        timestamp_ms: i64,
    ) -> Option<PendingHeaders> {
        let Some(split) = headers::split(record_headers, payload, timestamp_ms) else {
            return headers::encode(record_headers).map(PendingHeaders::Blob);
        };
        let ids = read(&self.template_ids);
        if let Some(&id) = ids.get(&split.template) {
            return Some(PendingHeaders::Blob(headers::encode_templated(
                id,
                &split.slots,
            )));
        }
        if ids.len() >= MAX_TEMPLATES {
            return headers::encode(record_headers).map(PendingHeaders::Blob);
        }
        drop(ids);
        // Only the first records of a new shape pay for both encodings.
        let literal = headers::encode(record_headers)?;
        Some(PendingHeaders::NewTemplate { split, literal })
    }

    /// Templates the writer committed, now usable by every append.
    pub(super) fn add_templates(&self, committed: impl IntoIterator<Item = (Vec<u8>, i64)>) {
        write(&self.template_ids).extend(committed);
    }

    /// The id of a committed template, if this process has seen it.
    pub(super) fn template_id(&self, template: &[u8]) -> Option<i64> {
        read(&self.template_ids).get(template).copied()
    }

    /// Templates this process knows the file to have.
    pub(super) fn template_count(&self) -> usize {
        read(&self.template_ids).len()
    }

    /// Whether appends to `topic` compress with a dictionary already.
    pub(super) fn has_encoder(&self, topic: &str) -> bool {
        read(&self.encoders).contains_key(topic)
    }

    /// Makes dictionary `id` the one appends to `topic` compress with.
    pub(super) fn install(&self, topic: &str, id: i64, dictionary: &[u8]) {
        let encoder = Encoder {
            id,
            dictionary: EncoderDictionary::copy(dictionary, LEVEL),
        };
        write(&self.encoders).insert(topic.to_owned(), Arc::new(encoder));
        write(&self.decoders).insert(id, Arc::new(DecoderDictionary::copy(dictionary)));
    }

    /// The payload as it is to be stored. Compression failing (it cannot
    /// for lack of room: the buffer is zstd's bound) stores it as given.
    pub(super) fn compress(&self, topic: &str, payload: &Bytes) -> StoredPayload {
        let raw = |sample| StoredPayload {
            codec: RAW,
            bytes: payload.clone(),
            sample,
        };
        if payload.len() < MIN_COMPRESS {
            return raw(false);
        }
        let encoder = read(&self.encoders).get(topic).cloned();
        let sample = encoder.is_none();
        if encoder.is_none() && payload.len() < MIN_PLAIN_COMPRESS {
            return raw(sample);
        }
        let compressed = COMPRESSOR.with(|cctx| {
            let mut cctx = cctx.borrow_mut();
            let cctx = match cctx.as_mut() {
                Some(cctx) => cctx,
                None => cctx.insert(new_cctx()?),
            };
            let mut out = Vec::with_capacity(zstd_safe::compress_bound(payload.len()));
            // Referenced, not loaded: a prepared dictionary costs nothing to
            // switch to. compress2 (unlike compress_usingCDict) applies the
            // context's frame parameters: no dictionary id, no checksum.
            let referenced = match &encoder {
                Some(encoder) => cctx.ref_cdict(encoder.dictionary.as_cdict()),
                None => cctx.disable_dictionary(),
            };
            let written = referenced.and_then(|_| cctx.compress2(&mut out, payload));
            // The context must not keep a pointer to a dictionary that may
            // be dropped (replaced) before this thread compresses again.
            let _ = cctx.disable_dictionary();
            written.ok()?;
            Some(out)
        });
        match compressed {
            Some(frame)
                if frame.starts_with(&ZSTD_MAGIC)
                    && frame.len() - ZSTD_MAGIC.len() + MIN_SAVING <= payload.len() =>
            {
                StoredPayload {
                    codec: encoder.map_or(PLAIN, |encoder| encoder.id),
                    bytes: Bytes::from(frame).slice(ZSTD_MAGIC.len()..),
                    sample,
                }
            }
            _ => raw(sample),
        }
    }

    /// A template by id, from the cache or the file; `Ok(None)` if the file
    /// does not have it.
    pub(super) fn template(
        &self,
        conn: &Connection,
        id: i64,
    ) -> rusqlite::Result<Option<Result<Arc<Template>, HeaderDecodeError>>> {
        if let Some(template) = read(&self.templates).get(&id) {
            return Ok(Some(Ok(Arc::clone(template))));
        }
        let bytes: Option<Vec<u8>> = conn
            .prepare_cached("SELECT template FROM log_header_templates WHERE id = ?1")?
            .query_row([id], |row| row.get(0))
            .optional()?;
        Ok(bytes.map(|bytes| {
            let template = Arc::new(headers::decode_template(&bytes)?);
            write(&self.templates).insert(id, Arc::clone(&template));
            Ok(template)
        }))
    }

    /// The payload of a stored record, decompressed if it was compressed.
    pub(super) fn decompress(
        &self,
        conn: &Connection,
        codec: i64,
        stored: Vec<u8>,
    ) -> rusqlite::Result<Result<Bytes, HeaderDecodeError>> {
        if codec == RAW {
            return Ok(Ok(Bytes::from(stored)));
        }
        let decoder = if codec == PLAIN {
            None
        } else {
            match self.decoder(conn, codec)? {
                Some(decoder) => Some(decoder),
                None => {
                    return Ok(Err(HeaderDecodeError::Payload(format!(
                        "dictionary {codec} does not exist"
                    ))));
                }
            }
        };
        Ok(decompress_frame(&stored, decoder.as_deref()).map(Bytes::from))
    }

    fn decoder(
        &self,
        conn: &Connection,
        id: i64,
    ) -> rusqlite::Result<Option<Arc<DecoderDictionary<'static>>>> {
        if let Some(decoder) = read(&self.decoders).get(&id) {
            return Ok(Some(Arc::clone(decoder)));
        }
        let bytes: Option<Vec<u8>> = conn
            .prepare_cached("SELECT dictionary FROM log_dictionaries WHERE id = ?1")?
            .query_row([id], |row| row.get(0))
            .optional()?;
        Ok(bytes.map(|bytes| {
            let decoder = Arc::new(DecoderDictionary::copy(&bytes));
            write(&self.decoders).insert(id, Arc::clone(&decoder));
            decoder
        }))
    }
}

thread_local! {
    /// One compression context per appending thread: creating one costs
    /// more than compressing a small payload.
    static COMPRESSOR: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

fn new_cctx() -> Option<CCtx<'static>> {
    let mut cctx = CCtx::try_create()?;
    cctx.set_parameter(CParameter::CompressionLevel(LEVEL))
        .ok()?;
    cctx.set_parameter(CParameter::ChecksumFlag(false)).ok()?;
    cctx.set_parameter(CParameter::DictIdFlag(false)).ok()?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true)).ok()?;
    Some(cctx)
}

/// Decompresses a stored frame (without its magic number).
fn decompress_frame(
    stored: &[u8],
    decoder: Option<&DecoderDictionary<'static>>,
) -> Result<Vec<u8>, HeaderDecodeError> {
    let damaged = |what: &str| HeaderDecodeError::Payload(what.to_owned());
    let mut frame = Vec::with_capacity(ZSTD_MAGIC.len() + stored.len());
    frame.extend_from_slice(&ZSTD_MAGIC);
    frame.extend_from_slice(stored);
    let size = zstd_safe::get_frame_content_size(&frame)
        .map_err(|_| damaged("damaged frame header"))?
        .ok_or_else(|| damaged("frame without content size"))?;
    // The content size comes from the file: a damaged one must not make us
    // allocate gigabytes. No stored payload is larger than SQLite's limit.
    let size = usize::try_from(size)
        .ok()
        .filter(|&size| size <= super::MAX_FIELD_BYTES)
        .ok_or_else(|| damaged("content size out of range"))?;
    let mut out = Vec::with_capacity(size);
    DECOMPRESSOR.with(|dctx| {
        let mut dctx = dctx.borrow_mut();
        let dctx = match dctx.as_mut() {
            Some(dctx) => dctx,
            None => dctx.insert(DCtx::try_create().ok_or_else(|| damaged("out of memory"))?),
        };
        let written = match decoder {
            Some(decoder) => dctx.decompress_using_ddict(&mut out, &frame, decoder.as_ddict()),
            None => dctx.decompress(&mut out, &frame),
        }
        .map_err(|code| HeaderDecodeError::Payload(zstd_safe::get_error_name(code).to_owned()))?;
        if written != size {
            return Err(damaged("content size mismatch"));
        }
        Ok(out)
    })
}

/// Trains a dictionary on a topic's samples; `None` if zstd cannot (too
/// few or too uniform samples), and the topic stays uncompressed.
pub(super) fn train(samples: &[Bytes]) -> Option<Vec<u8>> {
    zstd::dict::from_samples(samples, DICTIONARY_BYTES).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: usize) -> Bytes {
        Bytes::from(format!(
            "event {i:08} from channel api-main, customer customer-{} says: where is my order #{}? it was due on monday",
            i % 97,
            100_000 + i * 7
        ))
    }

    #[test]
    fn payloads_round_trip_through_a_trained_dictionary() {
        let samples: Vec<Bytes> = (0..500).map(payload).collect();
        let dictionary = train(&samples).expect("trainable");
        let catalog = Catalog::default();
        let conn = Connection::open_in_memory().unwrap();
        // Before the topic has a dictionary: small payloads stay as given.
        let before = catalog.compress("t", &payload(1));
        assert_eq!(
            (before.codec, &before.bytes, before.sample),
            (RAW, &payload(1), true)
        );
        catalog.install("t", 7, &dictionary);
        for i in 1000..1100 {
            let original = payload(i);
            let StoredPayload {
                codec,
                bytes: stored,
                sample,
            } = catalog.compress("t", &original);
            assert_eq!((codec, sample), (7, false));
            assert!(stored.len() + MIN_SAVING <= original.len());
            let back = catalog.decompress(&conn, codec, stored.to_vec()).unwrap();
            assert_eq!(back, Ok(original));
        }
        // Another topic has no dictionary yet.
        assert_eq!(catalog.compress("u", &payload(1)).codec, RAW);
    }

    #[test]
    fn large_payloads_compress_without_a_dictionary() {
        let catalog = Catalog::default();
        let conn = Connection::open_in_memory().unwrap();
        let large = Bytes::from("a line of an e-mail body\r\n".repeat(100));
        let StoredPayload {
            codec,
            bytes: stored,
            ..
        } = catalog.compress("t", &large);
        assert_eq!(codec, PLAIN);
        assert!(stored.len() < large.len() / 10);
        assert_eq!(
            catalog.decompress(&conn, codec, stored.to_vec()).unwrap(),
            Ok(large)
        );
        // Incompressible bytes are stored as given.
        let mut state = 1_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 56) as u8
            })
            .collect();
        let noise = Bytes::from(noise);
        let stored = catalog.compress("t", &noise);
        assert_eq!((stored.codec, stored.bytes), (RAW, noise));
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let catalog = Catalog::default();
        let conn = Connection::open_in_memory().unwrap();
        let large = Bytes::from("abcdefgh".repeat(512));
        let StoredPayload {
            codec,
            bytes: stored,
            ..
        } = catalog.compress("t", &large);
        assert_eq!(codec, PLAIN);
        for cut in 0..stored.len() {
            let result = catalog
                .decompress(&conn, codec, stored[..cut].to_vec())
                .unwrap();
            assert!(result.is_err(), "prefix of {cut} bytes decompressed");
        }
        let mut flipped = stored.to_vec();
        for at in 0..flipped.len() {
            flipped[at] ^= 0x5a;
            let _ = catalog.decompress(&conn, codec, flipped.clone()).unwrap();
            flipped[at] ^= 0x5a;
        }
        // A dictionary the file does not have.
        conn.execute_batch(
            "CREATE TABLE log_dictionaries (id INTEGER PRIMARY KEY, dictionary BLOB)",
        )
        .unwrap();
        assert!(matches!(
            catalog.decompress(&conn, 99, stored.to_vec()).unwrap(),
            Err(HeaderDecodeError::Payload(_))
        ));
    }
}
