//! The attachment store: file bytes live outside the event stream, addressed
//! by their SHA-256, and events carry `omni-att://sha256/<hex>` references.
//!
//! Content addressing makes a provider's retry (or an IMAP re-fetch after a
//! crash) store nothing new, and lets consumers verify what they read. A
//! connector stores the bytes before it submits the event that names them,
//! so no durable event ever points at a missing file.
//!
//! Files are kept as long as a retained record may name them and then
//! collected (see [`gc`]): storing content that is already there, or
//! naming it in a record the daemon appends ([`FsAttachmentStore::touch`]),
//! refreshes the file's modification time, which the collector reads as
//! "still wanted since then".

pub mod gc;

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use omni_proto::v1::{Attachment, ConversationEvent, TimelineEvent, timeline_event};
use sha2::{Digest, Sha256};

use crate::outbound::DeliveryError;

/// The URI scheme of stored attachments.
pub const URI_PREFIX: &str = "omni-att://sha256/";

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAttachment {
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub size: u64,
    /// `omni-att://sha256/<hex>`.
    pub uri: String,
}

impl StoredAttachment {
    fn of(content: &[u8]) -> Self {
        let sha256 = hex::encode(Sha256::digest(content));
        Self {
            uri: format!("{URI_PREFIX}{sha256}"),
            size: content.len() as u64,
            sha256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("attachment store {path}: {source}")]
pub struct AttachmentError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Where attachment bytes go. `put` returns once the bytes are durable.
#[async_trait]
pub trait AttachmentStore: Send + Sync + std::fmt::Debug + 'static {
    async fn put(&self, content: Bytes) -> Result<StoredAttachment, AttachmentError>;
    /// The content stored under `sha256` (lowercase hex), if any.
    async fn get(&self, sha256: &str) -> Result<Option<Bytes>, AttachmentError>;
}

/// Content-addressed files under a directory: `<root>/<ab>/<abcdef...>`.
/// Written to a temporary name, fsynced, renamed, and the directory fsynced,
/// so a crash leaves either the whole file or none.
#[derive(Debug, Clone)]
pub struct FsAttachmentStore {
    root: PathBuf,
}

impl FsAttachmentStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Refreshes the modification time of the file stored under `sha256`
    /// (lowercase hex) to now: something is about to name it in a record,
    /// so the collector must keep it as long as that record may be
    /// retained. Returns whether the file is there. Blocking: one open
    /// and one metadata write, without an fsync of its own.
    pub fn touch(&self, sha256: &str) -> Result<bool, AttachmentError> {
        let Some(path) = self.path_of(sha256) else {
            return Ok(false);
        };
        refresh(&path).map_err(|source| AttachmentError { path, source })
    }

    fn path_of(&self, sha256: &str) -> Option<PathBuf> {
        let valid = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| self.root.join(&sha256[..2]).join(sha256))
    }
}

/// Sets `path`'s modification time to now, if it exists; under the
/// collector's lock, so a pass that already chose the file sees the new
/// time and keeps it.
fn refresh(path: &Path) -> std::io::Result<bool> {
    let _guard = gc::REFRESH_LOCK.read().unwrap_or_else(|p| p.into_inner());
    match std::fs::File::open(path) {
        Ok(file) => file
            .set_modified(std::time::SystemTime::now())
            .map(|()| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn write_durably(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("attachment paths have a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(content)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A uniquely named temporary file beside the target (same file system, so
/// the rename is atomic).
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

#[async_trait]
impl AttachmentStore for FsAttachmentStore {
    async fn put(&self, content: Bytes) -> Result<StoredAttachment, AttachmentError> {
        let stored = StoredAttachment::of(&content);
        let path = self
            .path_of(&stored.sha256)
            .expect("a computed digest is valid hex");
        let error_path = path.clone();
        tokio::task::spawn_blocking(move || {
            // Already stored (a provider's retry, the same file sent
            // twice): refresh its time so it is kept for the new record.
            match refresh(&path) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // Stored, but not ours to touch (another user's file in a
                // shared directory): the bytes are there, which is what
                // `put` promises; collection may take it early.
                Err(error) if path.exists() => {
                    tracing::warn!(
                        path = %path.display(),
                        error = %error,
                        "attachment already stored but its time could not be refreshed"
                    );
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
            write_durably(&path, &content)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| AttachmentError {
            path: error_path,
            source,
        })?;
        Ok(stored)
    }

    async fn get(&self, sha256: &str) -> Result<Option<Bytes>, AttachmentError> {
        let Some(path) = self.path_of(sha256) else {
            return Ok(None);
        };
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AttachmentError { path, source }),
        }
    }
}

/// Keeps attachments in memory: for tests and `omnid check-config`, where
/// nothing is ingested.
#[derive(Debug, Clone, Default)]
pub struct MemoryAttachmentStore {
    files: Arc<Mutex<std::collections::HashMap<String, Bytes>>>,
}

#[async_trait]
impl AttachmentStore for MemoryAttachmentStore {
    async fn put(&self, content: Bytes) -> Result<StoredAttachment, AttachmentError> {
        let stored = StoredAttachment::of(&content);
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stored.sha256.clone(), content);
        Ok(stored)
    }

    async fn get(&self, sha256: &str) -> Result<Option<Bytes>, AttachmentError> {
        Ok(self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha256)
            .cloned())
    }
}

/// The store digests (lowercase hex) `event` names: its attachments and
/// the file of an attachment-stored update that point into the store.
pub fn referenced_digests(event: &ConversationEvent) -> Vec<String> {
    let mut digests = Vec::new();
    let attachments = event
        .content
        .iter()
        .flat_map(|content| content.attachments.iter())
        .chain(
            event
                .attachment_stored
                .iter()
                .filter_map(|stored| stored.attachment.as_ref()),
        );
    for attachment in attachments {
        push_digest(&mut digests, attachment);
    }
    digests
}

/// The store digests a timeline entry names: those of the message (or
/// automated reply) it carries, and of an attachment-stored entry.
pub fn timeline_digests(entry: &TimelineEvent) -> Vec<String> {
    use timeline_event::Entry;
    match &entry.entry {
        Some(Entry::Message(message)) => message
            .event
            .as_ref()
            .map(referenced_digests)
            .unwrap_or_default(),
        Some(Entry::AutomatedReply(reply)) => reply
            .outbound
            .as_ref()
            .map(referenced_digests)
            .unwrap_or_default(),
        Some(Entry::AttachmentStored(stored)) => {
            let mut digests = Vec::new();
            if let Some(attachment) = &stored.attachment {
                push_digest(&mut digests, attachment);
            }
            digests
        }
        _ => Vec::new(),
    }
}

fn push_digest(digests: &mut Vec<String>, attachment: &Attachment) {
    let Some(hex) = attachment.uri.trim().strip_prefix(URI_PREFIX) else {
        return;
    };
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let digest = hex.to_ascii_lowercase();
        if !digests.contains(&digest) {
            digests.push(digest);
        }
    }
}

/// Longest file name an outbound attachment is sent under (its end is
/// kept, so the extension survives).
pub const MAX_FILE_NAME_CHARS: usize = 200;

/// The name of an outbound attachment whose own name is empty or only a
/// directory.
pub const DEFAULT_FILE_NAME: &str = "attachment";

/// The name an outbound attachment is sent under: the last path component,
/// trimmed, at most [`MAX_FILE_NAME_CHARS`] characters, or
/// [`DEFAULT_FILE_NAME`]. Names are never trusted as paths; line breaks and
/// control characters are rejected rather than stripped.
pub fn outbound_file_name(index: usize, raw: &str) -> Result<String, DeliveryError> {
    if raw.chars().any(char::is_control) {
        return Err(DeliveryError::Rejected(format!(
            "attachments[{index}].name contains a line break or control character"
        )));
    }
    Ok(file_name_base(raw))
}

/// The last path segment of a name without control characters, trimmed
/// and cut to its last [`MAX_FILE_NAME_CHARS`] (so the extension stays),
/// or [`DEFAULT_FILE_NAME`] when nothing usable is left: a name is only
/// a label, never a path.
pub fn file_name_base(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if base.is_empty() || base == "." || base == ".." {
        return DEFAULT_FILE_NAME.to_owned();
    }
    let chars = base.chars().count();
    base.chars()
        .skip(chars.saturating_sub(MAX_FILE_NAME_CHARS))
        .collect()
}

/// The store key an outbound attachment refers to. Only attachment store
/// references (`omni-att://sha256/<hex>`) are accepted: a reply never makes
/// the daemon fetch an arbitrary URL. A `sha256` on the attachment must
/// name the same file.
pub fn outbound_digest(index: usize, attachment: &Attachment) -> Result<String, DeliveryError> {
    let uri = attachment.uri.trim();
    let Some(hex) = uri.strip_prefix(URI_PREFIX) else {
        let shown: String = uri.chars().take(100).collect();
        return Err(DeliveryError::Rejected(format!(
            "attachments[{index}].uri {shown:?} is not an attachment store reference ({URI_PREFIX}<hex>); other urls are never fetched"
        )));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DeliveryError::Rejected(format!(
            "attachments[{index}].uri does not end in a sha256 (64 hex digits)"
        )));
    }
    let digest = hex.to_ascii_lowercase();
    if !attachment.sha256.is_empty() && !attachment.sha256.eq_ignore_ascii_case(&digest) {
        return Err(DeliveryError::Rejected(format!(
            "attachments[{index}].sha256 does not match its uri"
        )));
    }
    Ok(digest)
}

/// Reads every attachment of an outbound message from the store, checked,
/// before anything is sent (so a bad file never leaves a half-sent reply):
/// see [`outbound_digest`]; a file missing from the store or whose bytes
/// do not hash to its name is rejected, a store I/O error is temporary;
/// over `max_total_bytes` in all (declared sizes checked before anything
/// is read, actual sizes as files are read) the reply is rejected, the
/// error naming `limit` (the setting or the provider's limit).
pub async fn load_outbound(
    store: &dyn AttachmentStore,
    attachments: &[Attachment],
    max_total_bytes: u64,
    limit: &str,
) -> Result<Vec<Bytes>, DeliveryError> {
    let over = |total: u64| {
        DeliveryError::Rejected(format!(
            "attachments total {total} bytes, over the limit of {max_total_bytes} ({limit})"
        ))
    };
    let digests = attachments
        .iter()
        .enumerate()
        .map(|(i, a)| outbound_digest(i, a))
        .collect::<Result<Vec<_>, _>>()?;
    let declared = attachments
        .iter()
        .fold(0u64, |sum, a| sum.saturating_add(a.size));
    if declared > max_total_bytes {
        return Err(over(declared));
    }
    let mut files = Vec::with_capacity(attachments.len());
    let mut total = 0u64;
    for (i, digest) in digests.into_iter().enumerate() {
        let content = store
            .get(&digest)
            .await
            .map_err(|e| DeliveryError::temporary(format!("attachments[{i}]: {e}")))?
            .ok_or_else(|| {
                DeliveryError::Rejected(format!(
                    "attachments[{i}] ({URI_PREFIX}{digest}) is not in the attachment store"
                ))
            })?;
        total = total.saturating_add(content.len() as u64);
        if total > max_total_bytes {
            return Err(over(total));
        }
        let (content, actual) = tokio::task::spawn_blocking(move || {
            let actual = hex::encode(Sha256::digest(&content));
            (content, actual)
        })
        .await
        .map_err(|e| DeliveryError::temporary(format!("hashing attachments[{i}] failed: {e}")))?;
        if actual != digest {
            return Err(DeliveryError::Rejected(format!(
                "attachments[{i}]: the stored file {digest} does not match its sha256 (it hashes to {actual})"
            )));
        }
        files.push(content);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fs_store_is_content_addressed_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsAttachmentStore::new(dir.path());
        let a = store.put(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(
            a.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(a.uri, format!("{URI_PREFIX}{}", a.sha256));
        assert_eq!(a.size, 5);
        let again = store.put(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(a, again);
        assert_eq!(
            store.get(&a.sha256).await.unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        let files: Vec<_> = walk(dir.path());
        assert_eq!(files.len(), 1, "one file, no temporaries left: {files:?}");
    }

    #[tokio::test]
    async fn fs_store_rejects_names_that_are_not_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsAttachmentStore::new(dir.path());
        for bad in ["../../etc/passwd", "ABC", &"g".repeat(64), ""] {
            assert_eq!(store.get(bad).await.unwrap(), None);
        }
    }

    #[test]
    fn file_names_lose_directories_and_refuse_line_breaks() {
        assert_eq!(
            outbound_file_name(0, "/tmp/a/report.pdf").unwrap(),
            "report.pdf"
        );
        assert_eq!(
            outbound_file_name(0, "..\\..\\boot.ini").unwrap(),
            "boot.ini"
        );
        assert_eq!(outbound_file_name(0, "").unwrap(), "attachment");
        assert_eq!(outbound_file_name(0, "dir/..").unwrap(), "attachment");
        assert_eq!(outbound_file_name(0, "Счёт.pdf").unwrap(), "Счёт.pdf");
        let long = format!("{}.pdf", "a".repeat(300));
        assert!(outbound_file_name(0, &long).unwrap().ends_with("a.pdf"));
        assert_eq!(
            outbound_file_name(0, &long).unwrap().chars().count(),
            MAX_FILE_NAME_CHARS
        );
        assert!(outbound_file_name(2, "a\r\nb.txt").is_err());
        assert!(outbound_file_name(2, "a\0b.txt").is_err());
    }

    #[test]
    fn only_store_references_are_read() {
        let digest = "AB".repeat(32);
        let mut attachment = Attachment {
            uri: format!("{URI_PREFIX}{digest}"),
            ..Default::default()
        };
        assert_eq!(outbound_digest(0, &attachment).unwrap(), "ab".repeat(32));
        attachment.sha256 = "ab".repeat(32);
        assert!(outbound_digest(0, &attachment).is_ok());
        attachment.sha256 = "cd".repeat(32);
        assert!(outbound_digest(0, &attachment).is_err());
        for uri in [
            "https://example.com/a.pdf",
            "file:///etc/passwd",
            "omni-att://sha256/abc",
            "omni-att://sha256/../../etc/passwd",
        ] {
            let attachment = Attachment {
                uri: uri.into(),
                ..Default::default()
            };
            assert!(
                matches!(
                    outbound_digest(0, &attachment),
                    Err(DeliveryError::Rejected(_))
                ),
                "{uri}"
            );
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
