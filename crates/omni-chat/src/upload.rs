//! Visitor attachments: `POST /channels/{channel_id}/uploads?name=...`
//! stores one image or PDF in the channel's attachment store and answers
//! its id (the SHA-256); a later `message` frame names the ids, and the
//! session turns them into the event's attachments.
//!
//! The browser is untrusted in every respect: the visitor id and token
//! are checked as on the socket, the body is read with a hard bound (never
//! more than `max_attachment_bytes` in memory), its type is decided by its
//! bytes alone ([`sniff`]), and the name is only a label. Concurrent
//! uploads of a channel are bounded by a semaphore, so the memory they
//! take is at most `max_concurrent_uploads × max_attachment_bytes`.
//!
//! What an upload leaves behind is a record in the channel's state keyed
//! by visitor and digest ([`record_key`]): only the visitor who uploaded a
//! file can attach it, and another visitor's id (or a guess) is unknown.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Body,
    extract::{RawQuery, State},
    http::{Extensions, HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use omni_connector::{
    AttachmentStore, StateUpdate,
    attachments::{DEFAULT_FILE_NAME, URI_PREFIX, file_name_base},
};
use omni_proto::v1::Attachment;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::{
    address::{self, AddressSlots},
    identity,
    protocol::{AttachmentRef, is_attachment_id},
    session::Channel,
};

/// Every media type an upload can have, in the order [`sniff`] tries them.
pub const MEDIA_TYPES: [&str; 5] = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
];

/// The header carrying the visitor id.
pub const VISITOR_ID_HEADER: &str = "x-omnid-visitor-id";
/// The header carrying the visitor token.
pub const VISITOR_TOKEN_HEADER: &str = "x-omnid-visitor-token";

/// What `Retry-After` says when every upload permit is taken: a permit
/// frees when an upload ends, which for a large file on a phone takes
/// seconds, not milliseconds.
pub const RETRY_AFTER_SECS: u64 = 5;

/// How long a browser may reuse a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: u64 = 600;

/// The media type of `bytes`, decided by their first bytes only (a
/// declared `Content-Type` or file name is never asked), or `None` for
/// anything but the five types of [`MEDIA_TYPES`].
///
/// Each format must show the smallest well-formed start a real file has,
/// not just its magic number, so a file cut off inside its header is
/// refused: PNG its signature and then the `IHDR` chunk; JPEG the SOI
/// marker and the next marker's `FF xx`; GIF `GIF87a`/`GIF89a` and the
/// logical screen descriptor (13 bytes); WebP `RIFF`, a size, `WEBP` and a
/// `VP8 `/`VP8L`/`VP8X` chunk. PDF, as browsers sniff it, starts with
/// `%PDF-` at the very first byte (no leading whitespace) and a version
/// digit. HTML or SVG (XML) never matches, whatever it is called.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.starts_with(PNG) && bytes.get(12..16) == Some(b"IHDR") {
        return Some("image/png");
    }
    if let [0xFF, 0xD8, 0xFF, marker, ..] = bytes
        && (0xC0..=0xFE).contains(marker)
    {
        return Some("image/jpeg");
    }
    if (bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")) && bytes.len() >= 13 {
        return Some("image/gif");
    }
    if bytes.starts_with(b"RIFF")
        && bytes.get(8..15) == Some(b"WEBPVP8")
        && matches!(bytes.get(15), Some(b' ' | b'L' | b'X'))
    {
        return Some("image/webp");
    }
    if bytes.starts_with(b"%PDF-") && bytes.get(5).is_some_and(u8::is_ascii_digit) {
        return Some("application/pdf");
    }
    None
}

/// The [`MEDIA_TYPES`] entry equal to `value`, for reading
/// `attachment_types`.
pub fn media_type(value: &str) -> Option<&'static str> {
    MEDIA_TYPES.into_iter().find(|t| *t == value)
}

/// The state key of `visitor`'s upload of the file `sha256`.
pub fn record_key(visitor: &str, sha256: &str) -> String {
    format!("upload/{visitor}/{sha256}")
}

/// What the channel keeps of an upload, for the message that attaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub media_type: String,
    pub size: u64,
    pub name: String,
}

impl UploadRecord {
    /// The event's attachment of this upload of `sha256`.
    pub fn attachment(self, sha256: &str) -> Attachment {
        Attachment {
            name: self.name,
            media_type: self.media_type,
            size: self.size,
            sha256: sha256.to_owned(),
            uri: format!("{URI_PREFIX}{sha256}"),
        }
    }
}

/// The attachments a message names, from the state records read for them
/// (`records[i]` under [`record_key`] of `refs[i]`), in the frame's order;
/// the first id without a readable record is the error. The ids are
/// checked again, so no caller can put an unchecked one in a URI.
pub fn resolve(
    refs: &[AttachmentRef],
    records: Vec<Option<Vec<u8>>>,
) -> Result<Vec<Attachment>, String> {
    if refs.len() != records.len() {
        return Err(refs.first().map(|r| r.id.clone()).unwrap_or_default());
    }
    refs.iter()
        .zip(records)
        .map(|(r, record)| {
            record
                .filter(|_| is_attachment_id(&r.id))
                .and_then(|bytes| serde_json::from_slice::<UploadRecord>(&bytes).ok())
                .map(|record| record.attachment(&r.id))
                .ok_or_else(|| r.id.clone())
        })
        .collect()
}

/// The file name of an upload from the request's query: the `name`
/// parameter, percent-decoded (`+` is a space, as in any form-encoded
/// query), control characters removed, only its last path component,
/// trimmed, and at most [`omni_connector::attachments::MAX_FILE_NAME_CHARS`] characters (the end kept,
/// so the extension survives). Absent or empty, [`DEFAULT_FILE_NAME`].
/// A malformed escape or bytes that are not UTF-8 are refused.
pub fn file_name(query: Option<&str>) -> Result<String, UploadError> {
    let raw = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("name="));
    let Some(raw) = raw else {
        return Ok(DEFAULT_FILE_NAME.to_owned());
    };
    let decoded = percent_decode(raw).ok_or(UploadError::InvalidName)?;
    let clean: String = decoded.chars().filter(|c| !c.is_control()).collect();
    Ok(file_name_base(&clean))
}

/// `%XX` escapes and `+` decoded; `None` for a bad escape or a result
/// that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                u8::try_from(hi * 16 + lo).ok()?
            }
            b'+' => b' ',
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

/// Why an upload is refused. Each is one status and one stable code (the
/// JSON body's `code`, a metric label).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("the page's origin may not upload to this channel")]
    OriginNotAllowed,
    #[error("the visitor id and token are missing or do not match")]
    InvalidVisitor,
    #[error("the `name` parameter is not percent-encoded UTF-8")]
    InvalidName,
    #[error("the file is over {max} bytes")]
    TooLarge { max: usize },
    #[error("the file is none of {allowed} (judged by its content)")]
    UnsupportedType { allowed: String },
    #[error("{max} uploads are already running; try again in a few seconds")]
    TooManyUploads { max: usize },
    #[error("the upload was cut off: {0}")]
    IncompleteBody(String),
    /// The detail (a store path, a database error) is for the log; the
    /// browser is only told to send the file again.
    #[error("the file could not be stored: {0}")]
    StorageUnavailable(String),
}

impl UploadError {
    /// Every [`UploadError::code`].
    pub const CODES: [&'static str; 8] = [
        "origin_not_allowed",
        "invalid_visitor",
        "invalid_name",
        "too_large",
        "unsupported_type",
        "too_many_uploads",
        "incomplete_body",
        "storage_unavailable",
    ];

    pub fn code(&self) -> &'static str {
        match self {
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::InvalidVisitor => "invalid_visitor",
            Self::InvalidName => "invalid_name",
            Self::TooLarge { .. } => "too_large",
            Self::UnsupportedType { .. } => "unsupported_type",
            Self::TooManyUploads { .. } => "too_many_uploads",
            Self::IncompleteBody(_) => "incomplete_body",
            Self::StorageUnavailable(_) => "storage_unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::InvalidVisitor => StatusCode::UNAUTHORIZED,
            Self::InvalidName | Self::IncompleteBody(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyUploads { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::StorageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

impl IntoResponse for UploadError {
    fn into_response(self) -> Response {
        let message = match &self {
            Self::StorageUnavailable(_) => "the file could not be stored; send it again".to_owned(),
            other => other.to_string(),
        };
        let body = ErrorBody {
            code: self.code(),
            message,
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let Self::TooManyUploads { .. } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// The answer to a stored upload (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    /// The file's SHA-256 (lowercase hex): what a `message` frame names.
    pub id: String,
    pub media_type: String,
    pub size: u64,
    pub name: String,
}

/// The channel's upload settings.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    /// `max_attachment_bytes`.
    pub max_bytes: usize,
    /// `attachment_types`: what the channel takes, of [`MEDIA_TYPES`].
    pub types: Vec<&'static str>,
    /// `max_concurrent_uploads`.
    pub max_concurrent: usize,
}

/// Uploads in flight at most from one address: a visitor sending a few
/// files at once is served, one machine trickling bodies slowly cannot
/// hold the channel's every permit (visitor ids cost nothing to make up,
/// so a cap per visitor would not stop it).
pub const MAX_UPLOADS_PER_ADDRESS: usize = 2;

/// One channel's upload endpoint.
#[derive(Debug)]
pub struct Uploads {
    channel: Arc<Channel>,
    store: Arc<dyn AttachmentStore>,
    allowed_origins: Arc<[String]>,
    limits: UploadLimits,
    permits: Arc<Semaphore>,
    /// `client_address_header`, as the socket reads it.
    address_header: Option<Arc<str>>,
    addresses: Arc<AddressSlots>,
}

impl Uploads {
    pub fn new(
        channel: Arc<Channel>,
        store: Arc<dyn AttachmentStore>,
        allowed_origins: Arc<[String]>,
        limits: UploadLimits,
        address_header: Option<Arc<str>>,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            address_header,
            addresses: AddressSlots::new(MAX_UPLOADS_PER_ADDRESS),
            channel,
            store,
            allowed_origins,
            limits,
        }
    }

    /// `POST /uploads` and its CORS preflight, relative to the channel.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/uploads", post(upload).options(preflight))
            .with_state(self.clone())
    }

    /// Everything after the origin check: the visitor, the name, the
    /// bounded body, its type, the store, the record.
    async fn accept(
        &self,
        headers: &HeaderMap,
        extensions: &Extensions,
        query: Option<&str>,
        body: Body,
    ) -> Result<Uploaded, UploadError> {
        let visitor = self.visitor(headers)?;
        let name = file_name(query)?;
        let max = self.limits.max_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(UploadError::TooLarge { max });
        }
        let address = address::of_request(self.address_header.as_deref(), headers, extensions);
        let _slot = match address {
            Some(address) => Some(self.addresses.take(address).ok_or(
                UploadError::TooManyUploads {
                    max: MAX_UPLOADS_PER_ADDRESS,
                },
            )?),
            None => None,
        };
        let _permit =
            self.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| UploadError::TooManyUploads {
                    max: self.limits.max_concurrent,
                })?;
        let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(max).min(max));
        let bytes = read_bounded(body, max, capacity).await?;
        let media_type = sniff(&bytes)
            .filter(|t| self.limits.types.contains(t))
            .ok_or_else(|| UploadError::UnsupportedType {
                allowed: self.limits.types.join(", "),
            })?;
        let stored = self
            .store
            .put(bytes)
            .await
            .map_err(|e| UploadError::StorageUnavailable(e.to_string()))?;
        let record = UploadRecord {
            media_type: media_type.to_owned(),
            size: stored.size,
            name,
        };
        let json = serde_json::to_vec(&record)
            .map_err(|e| UploadError::StorageUnavailable(e.to_string()))?;
        self.channel
            .state
            .commit(StateUpdate {
                puts: vec![(record_key(&visitor, &stored.sha256), json)],
                ..Default::default()
            })
            .await
            .map_err(|e| UploadError::StorageUnavailable(e.to_string()))?;
        Ok(Uploaded {
            id: stored.sha256,
            media_type: record.media_type,
            size: record.size,
            name: record.name,
        })
    }

    /// The visitor the headers prove, as the socket's `hello` does.
    fn visitor(&self, headers: &HeaderMap) -> Result<String, UploadError> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match (get(VISITOR_ID_HEADER), get(VISITOR_TOKEN_HEADER)) {
            (Some(id), Some(token))
                if identity::is_visitor_id(id)
                    && identity::verify_visitor_token(self.channel.secret.expose(), id, token) =>
            {
                Ok(id.to_owned())
            }
            _ => Err(UploadError::InvalidVisitor),
        }
    }
}

/// The body, refused once it passes `max` bytes: what is held never
/// exceeds `max` (a chunk that would pass it is not copied).
async fn read_bounded(body: Body, max: usize, capacity: usize) -> Result<Bytes, UploadError> {
    let mut stream = body.into_data_stream();
    let mut buffer = BytesMut::with_capacity(capacity);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| UploadError::IncompleteBody(e.to_string()))?;
        if buffer.len().saturating_add(chunk.len()) > max {
            return Err(UploadError::TooLarge { max });
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// Whether and how a response may be read by the requesting page.
enum Cors {
    /// No `Origin`: not a browser, nothing to allow.
    NoOrigin,
    /// An allowed page: its origin is echoed.
    Allowed(HeaderValue),
    Refused,
}

impl Cors {
    fn of(headers: &HeaderMap, allowed: &[String]) -> Self {
        match headers.get(header::ORIGIN) {
            None => Self::NoOrigin,
            Some(origin) if crate::connector::origin_allowed(headers, allowed) => {
                Self::Allowed(origin.clone())
            }
            Some(_) => Self::Refused,
        }
    }

    /// The headers every answer carries: `Vary: Origin` always (the answer
    /// depends on it), and the allowed origin when there is one.
    fn apply(&self, response: &mut Response) {
        let headers = response.headers_mut();
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Self::Allowed(origin) = self {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            // Not a CORS-safelisted response header: without this the
            // widget could not read when to try again.
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after"),
            );
        }
    }
}

async fn upload(
    State(uploads): State<Arc<Uploads>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
    body: Body,
) -> Response {
    let cors = Cors::of(&headers, &uploads.allowed_origins);
    let result = match cors {
        Cors::Refused => Err(UploadError::OriginNotAllowed),
        _ => {
            uploads
                .accept(&headers, &extensions, query.as_deref(), body)
                .await
        }
    };
    let mut response = match result {
        Ok(uploaded) => {
            tracing::debug!(
                channel = %uploads.channel.channel_id,
                media_type = %uploaded.media_type,
                size = uploaded.size,
                "chat upload stored"
            );
            (StatusCode::CREATED, Json(uploaded)).into_response()
        }
        Err(error) => {
            if let UploadError::StorageUnavailable(_) = error {
                tracing::warn!(channel = %uploads.channel.channel_id, %error, "chat upload not stored");
            }
            uploads.channel.metrics.refused(error.code());
            error.into_response()
        }
    };
    cors.apply(&mut response);
    response
}

/// The CORS preflight of an upload from a shop's page. A refused origin
/// gets no `Access-Control-Allow-*` header, so the browser never sends the
/// upload.
async fn preflight(State(uploads): State<Arc<Uploads>>, headers: HeaderMap) -> Response {
    let cors = Cors::of(&headers, &uploads.allowed_origins);
    let mut response = match cors {
        Cors::Refused => {
            uploads.channel.metrics.refused("origin_not_allowed");
            UploadError::OriginNotAllowed.into_response()
        }
        _ => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("x-omnid-visitor-id, x-omnid-visitor-token, content-type"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(PREFLIGHT_MAX_AGE_SECS),
            );
            response
        }
    };
    cors.apply(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use axum::http::Request;
    use base64::Engine as _;
    use futures::{SinkExt as _, stream};
    use omni_connector::{
        ChannelConfig, ChannelContext, ChannelState, EventSender, LogEntry,
        attachments::{AttachmentError, MemoryAttachmentStore},
        testing::MemorySink,
    };
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::*;
    use crate::WebchatConfig;

    /// A whole 1×1 PNG (signature, IHDR, IDAT, IEND).
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01\
        \x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\x0dIDAT\x78\x9c\x63\xf8\xcf\xc0\xf0\x1f\
        \x00\x05\x00\x01\xff\x89\x99\x3d\x1d\x00\x00\x00\x00IEND\xae\x42\x60\x82";
    /// The 43-byte transparent 1×1 GIF.
    const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\
        \x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
    /// The start of a JFIF JPEG (a camera's Exif one starts `FF D8 FF E1`).
    const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\
        \xff\xdb\x00\x43\x00";
    const PDF: &[u8] =
        b"%PDF-1.7\n%\xb5\xb5\xb5\xb5\n1 0 obj\n<</Type/Catalog/Pages 2 0 R>>\nendobj\n";
    /// 1×1 WebP files, lossless and lossy (the ones feature detection uses).
    const WEBP_LOSSLESS: &str = "UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==";
    const WEBP_LOSSY: &str = "UklGRiIAAABXRUJQVlA4IBYAAAAwAQCdASoBAAEADsD+JaQAA3AAAAAA";

    fn webp(b64: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    #[test]
    fn sniffs_real_files_of_each_type() {
        assert_eq!(sniff(PNG), Some("image/png"));
        assert_eq!(sniff(GIF), Some("image/gif"));
        assert_eq!(
            sniff(b"GIF87a\x01\x00\x01\x00\x00\x00\x00"),
            Some("image/gif")
        );
        assert_eq!(sniff(JPEG), Some("image/jpeg"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe1\x00\x18Exif"), Some("image/jpeg"));
        assert_eq!(sniff(&webp(WEBP_LOSSLESS)), Some("image/webp"));
        assert_eq!(sniff(&webp(WEBP_LOSSY)), Some("image/webp"));
        assert_eq!(sniff(PDF), Some("application/pdf"));
        for found in [PNG, GIF, JPEG, PDF].map(sniff) {
            assert!(MEDIA_TYPES.contains(&found.unwrap()));
        }
    }

    #[test]
    fn files_cut_off_in_their_header_are_refused() {
        // Each format's shortest accepted start, less one byte.
        let lossless = webp(WEBP_LOSSLESS);
        for (file, shortest) in [
            (PNG, 16),
            (GIF, 13),
            (JPEG, 4),
            (PDF, 6),
            (&lossless[..], 16),
        ] {
            assert!(sniff(&file[..shortest]).is_some());
            for end in 0..shortest {
                assert_eq!(sniff(&file[..end]), None, "{:?}", &file[..end]);
            }
        }
    }

    #[test]
    fn markup_and_lookalikes_are_refused_whatever_their_name() {
        for bytes in [
            &b"<!DOCTYPE html><html><script>alert(1)</script>"[..],
            b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>",
            b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>",
            // Browsers want `%PDF-` at the very first byte.
            b" %PDF-1.4\n",
            b"\n%PDF-1.4\n",
            b"\xef\xbb\xbf%PDF-1.4\n",
            b"%PDF-x",
            b"GIF88a\x01\x00\x01\x00\x80\x00\x00",
            b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00",
            b"RIFF\x24\x00\x00\x00WEBPVP9 \x10\x00\x00\x00",
            b"\xff\xd8\xff\x00\x00\x00",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIDAT",
            b"MZ\x90\x00",
            b"PK\x03\x04",
            b"",
        ] {
            assert_eq!(sniff(bytes), None, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn names_are_decoded_cleaned_and_never_paths() {
        let name = |query: &str| file_name(Some(query));
        assert_eq!(file_name(None).unwrap(), DEFAULT_FILE_NAME);
        assert_eq!(name("").unwrap(), DEFAULT_FILE_NAME);
        assert_eq!(name("name=").unwrap(), DEFAULT_FILE_NAME);
        assert_eq!(name("name=photo.png").unwrap(), "photo.png");
        assert_eq!(name("x=1&name=a.pdf&y=2").unwrap(), "a.pdf");
        assert_eq!(name("filename=a.pdf").unwrap(), DEFAULT_FILE_NAME);
        assert_eq!(
            name("name=%D8%B9%DA%A9%D8%B3%20%DB%B1.png").unwrap(),
            "عکس ۱.png"
        );
        assert_eq!(name("name=my+photo%2B1.png").unwrap(), "my photo+1.png");
        assert_eq!(name("name=..%2F..%2Fetc%2Fpasswd").unwrap(), "passwd");
        assert_eq!(name("name=..%5C..%5Cboot.ini").unwrap(), "boot.ini");
        assert_eq!(name("name=dir%2F..").unwrap(), DEFAULT_FILE_NAME);
        assert_eq!(name("name=a%0D%0Ab%00.txt").unwrap(), "ab.txt");
        assert_eq!(name("name=%E2%80%AEgpj.exe").unwrap(), "\u{202e}gpj.exe");
        assert_eq!(name("name=%00%1F").unwrap(), DEFAULT_FILE_NAME);
        let long = format!("name={}.pdf", "a".repeat(300));
        let kept = name(&long).unwrap();
        assert_eq!(
            kept.chars().count(),
            omni_connector::attachments::MAX_FILE_NAME_CHARS
        );
        assert!(kept.ends_with("a.pdf"));
        for bad in ["name=%", "name=%4", "name=%G1", "name=%E2%82", "name=%FF"] {
            assert_eq!(name(bad), Err(UploadError::InvalidName), "{bad}");
        }
    }

    #[test]
    fn only_recorded_uploads_resolve_in_the_frames_order() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let record = |name: &str| {
            serde_json::to_vec(&UploadRecord {
                media_type: "image/png".into(),
                size: 70,
                name: name.into(),
            })
            .unwrap()
        };
        let refs = [
            AttachmentRef { id: b.clone() },
            AttachmentRef { id: a.clone() },
        ];
        let files = resolve(&refs, vec![Some(record("b.png")), Some(record("a.png"))]).unwrap();
        assert_eq!(
            files,
            [
                Attachment {
                    name: "b.png".into(),
                    media_type: "image/png".into(),
                    size: 70,
                    sha256: b.clone(),
                    uri: format!("{URI_PREFIX}{b}"),
                },
                Attachment {
                    name: "a.png".into(),
                    media_type: "image/png".into(),
                    size: 70,
                    sha256: a.clone(),
                    uri: format!("{URI_PREFIX}{a}"),
                },
            ]
        );
        assert_eq!(
            resolve(&refs, vec![Some(record("b.png")), None]),
            Err(a.clone())
        );
        assert_eq!(
            resolve(&refs, vec![Some(b"not json".to_vec()), Some(record("a"))]),
            Err(b.clone())
        );
        let forged = [AttachmentRef { id: "../x".into() }];
        assert_eq!(
            resolve(&forged, vec![Some(record("x"))]),
            Err("../x".to_owned())
        );
        assert!(resolve(&[], Vec::new()).unwrap().is_empty());
        assert_eq!(record_key("v_1", &a), format!("upload/v_1/{a}"));
    }

    #[test]
    fn error_codes_and_statuses_are_the_documented_ones() {
        for (error, status) in [
            (UploadError::OriginNotAllowed, 403),
            (UploadError::InvalidVisitor, 401),
            (UploadError::InvalidName, 400),
            (UploadError::TooLarge { max: 1 }, 413),
            (
                UploadError::UnsupportedType {
                    allowed: String::new(),
                },
                415,
            ),
            (UploadError::TooManyUploads { max: 1 }, 429),
            (UploadError::IncompleteBody(String::new()), 400),
            (UploadError::StorageUnavailable(String::new()), 503),
        ] {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert!(UploadError::CODES.contains(&error.code()));
        }
    }

    // The endpoint, through the channel's own router.

    const SECRET: &[u8] = b"upload-test-secret";
    const SHOP: &str = "https://shop.example";

    struct Chat {
        router: Router,
        store: Arc<MemoryAttachmentStore>,
        state: ChannelState,
        sink: MemorySink,
        _dir: tempfile::TempDir,
    }

    fn chat(extra: &str) -> Chat {
        chat_with(extra, None)
    }

    fn chat_with(extra: &str, store: Option<Arc<dyn AttachmentStore>>) -> Chat {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let text = format!(
            "secret = {{ file = {:?} }}\nallowed_origins = [\"{SHOP}\"]\n{extra}",
            secret.display().to_string()
        );
        let config: WebchatConfig =
            omni_connector::parse_settings(toml::from_str(&text).unwrap()).unwrap();
        let sink = MemorySink::default();
        let memory = Arc::new(MemoryAttachmentStore::default());
        let mut context =
            ChannelContext::new("chat-main", EventSender::new(Arc::new(sink.clone())));
        context.attachments = store.unwrap_or_else(|| memory.clone());
        let state = context.state.clone();
        let connector = config.build(context).unwrap();
        Chat {
            router: connector.routes().unwrap(),
            store: memory,
            state,
            sink,
            _dir: dir,
        }
    }

    fn visitor() -> (String, String) {
        let id = identity::new_visitor_id(&mut rand::rng());
        let token = identity::visitor_token(SECRET, &id);
        (id, token)
    }

    fn post(visitor: &(String, String), query: &str, body: impl Into<Body>) -> Request<Body> {
        Request::post(format!("/uploads?{query}"))
            .header(header::ORIGIN, SHOP)
            .header(VISITOR_ID_HEADER, &visitor.0)
            .header(VISITOR_TOKEN_HEADER, &visitor.1)
            .body(body.into())
            .unwrap()
    }

    async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, json)
    }

    /// The id an upload of `bytes` would have.
    async fn digest(bytes: &'static [u8]) -> String {
        MemoryAttachmentStore::default()
            .put(Bytes::from_static(bytes))
            .await
            .unwrap()
            .sha256
    }

    #[tokio::test]
    async fn a_png_is_stored_and_recorded_for_its_visitor_only() {
        let chat = chat("");
        let ana = visitor();
        let mut request = post(&ana, "name=ph%6Fto%20%DB%B1.png", PNG);
        // The declared type is not asked.
        request
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        let (status, headers, body) = send(&chat.router, request).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = digest(PNG).await;
        assert_eq!(
            body,
            json!({"id": id, "media_type": "image/png", "size": PNG.len(), "name": "photo ۱.png"})
        );
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], SHOP);
        assert_eq!(headers[header::VARY], "origin");
        assert_eq!(
            chat.store.get(&id).await.unwrap().as_deref(),
            Some(PNG),
            "the bytes are in the channel's attachment store"
        );
        let record = chat.state.get(&record_key(&ana.0, &id)).await.unwrap();
        let record: UploadRecord = serde_json::from_slice(&record.unwrap()).unwrap();
        assert_eq!(
            record,
            UploadRecord {
                media_type: "image/png".into(),
                size: PNG.len() as u64,
                name: "photo ۱.png".into(),
            }
        );
        let other = visitor();
        assert_eq!(
            chat.state.get(&record_key(&other.0, &id)).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn every_type_is_taken_unless_the_channel_narrows_the_list() {
        let chat = chat("");
        let ana = visitor();
        for (bytes, media_type) in [
            (GIF, "image/gif"),
            (JPEG, "image/jpeg"),
            (PDF, "application/pdf"),
        ] {
            let (status, _, body) = send(&chat.router, post(&ana, "", bytes)).await;
            assert_eq!(status, StatusCode::CREATED);
            assert_eq!(body["media_type"], media_type);
            assert_eq!(body["name"], DEFAULT_FILE_NAME);
        }
        let pdf_only = chat_with_types("[\"application/pdf\"]");
        let (status, _, body) = send(&pdf_only.router, post(&ana, "", PNG)).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["code"], "unsupported_type");
        let (status, _, _) = send(&pdf_only.router, post(&ana, "", PDF)).await;
        assert_eq!(status, StatusCode::CREATED);
    }

    fn chat_with_types(types: &str) -> Chat {
        chat(&format!("attachment_types = {types}"))
    }

    #[tokio::test]
    async fn html_called_a_png_is_refused() {
        let chat = chat("");
        let html: &'static [u8] = b"<html><script>alert(document.cookie)</script></html>";
        let mut request = post(&visitor(), "name=photo.png", html);
        request
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        let (status, headers, body) = send(&chat.router, request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["code"], "unsupported_type");
        assert!(body["message"].as_str().unwrap().contains("image/png"));
        // The page can read why.
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], SHOP);
        assert_eq!(chat.store.get(&digest(html).await).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_file_over_the_limit_is_refused_declared_or_streamed() {
        let chat = chat("max_attachment_bytes = 1024");
        let ana = visitor();
        let file = |len: usize| {
            let mut bytes = PNG.to_vec();
            bytes.resize(len, 0);
            bytes
        };
        let (status, _, body) = send(&chat.router, post(&ana, "", file(1024))).await;
        assert_eq!(status, StatusCode::CREATED, "exactly the limit: {body}");

        let mut declared = post(&ana, "", file(1025));
        declared
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(1025));
        let (status, _, body) = send(&chat.router, declared).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["code"], "too_large");

        // No length declared: counted as it arrives, in chunks.
        let chunks = file(4000)
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>();
        let streamed = post(&ana, "", Body::from_stream(stream::iter(chunks)));
        let (status, _, body) = send(&chat.router, streamed).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["code"], "too_large");
        // A body that would never end is refused at the limit, not read on.
        let endless =
            stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from_static(&[0; 512])));
        let (status, _, _) = tokio::time::timeout(
            Duration::from_secs(10),
            send(&chat.router, post(&ana, "", Body::from_stream(endless))),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_wrong_or_missing_token_is_refused() {
        let chat = chat("");
        let (ana, _) = visitor();
        let (_, bob_token) = visitor();
        for request in [
            post(&(ana.clone(), bob_token), "", PNG),
            post(&(ana.clone(), "00".repeat(32)), "", PNG),
            post(
                &("v_x".into(), identity::visitor_token(SECRET, "v_x")),
                "",
                PNG,
            ),
            Request::post("/uploads")
                .header(header::ORIGIN, SHOP)
                .body(Body::from(PNG))
                .unwrap(),
        ] {
            let (status, headers, body) = send(&chat.router, request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["code"], "invalid_visitor");
            assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], SHOP);
        }
        assert_eq!(chat.store.get(&digest(PNG).await).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_malformed_name_is_refused() {
        let chat = chat("");
        let (status, _, body) = send(&chat.router, post(&visitor(), "name=%E2%82", PNG)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "invalid_name");
    }

    fn preflight_from(origin: &str) -> Request<Body> {
        Request::options("/uploads")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "x-omnid-visitor-id,x-omnid-visitor-token",
            )
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn only_allowed_origins_pass_the_preflight_and_post() {
        let chat = chat("");
        let (status, headers, _) = send(&chat.router, preflight_from(SHOP)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], SHOP);
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "x-omnid-visitor-id, x-omnid-visitor-token, content-type"
        );
        assert_eq!(headers[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(headers[header::VARY], "origin");

        for origin in [
            "https://evil.example",
            "https://shop.example.evil.example",
            "null",
        ] {
            let (status, headers, body) = send(&chat.router, preflight_from(origin)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{origin}");
            assert_eq!(body["code"], "origin_not_allowed");
            assert!(
                headers
                    .keys()
                    .all(|k| !k.as_str().starts_with("access-control-")),
                "{origin}: {headers:?}"
            );
            assert_eq!(headers[header::VARY], "origin");

            let mut request = post(&visitor(), "", PNG);
            request
                .headers_mut()
                .insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            let (status, headers, body) = send(&chat.router, request).await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert_eq!(body["code"], "origin_not_allowed");
            assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        }
        assert_eq!(chat.store.get(&digest(PNG).await).await.unwrap(), None);

        // The daemon's own demo page: same origin as the request's host.
        let mut own = post(&visitor(), "", PNG);
        own.headers_mut().insert(
            header::ORIGIN,
            HeaderValue::from_static("https://chat.example:8443"),
        );
        own.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("chat.example:8443"));
        let (status, _, _) = send(&chat.router, own).await;
        assert_eq!(status, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn uploads_beyond_the_channels_permits_wait_their_turn() {
        let chat = chat("max_concurrent_uploads = 1");
        let ana = visitor();
        // An upload that never finishes holds the one permit (taken before
        // its body is read, so once its body is asked for)...
        let (reading, read) = tokio::sync::oneshot::channel();
        let stalled = stream::once(async move {
            let _ = reading.send(());
            Ok::<_, std::io::Error>(Bytes::from_static(PNG))
        })
        .chain(stream::pending());
        let first = tokio::spawn(chat.router.clone().oneshot(post(
            &ana,
            "",
            Body::from_stream(stalled),
        )));
        read.await.unwrap();
        let (status, headers, body) = send(&chat.router, post(&ana, "", GIF)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["code"], "too_many_uploads");
        assert_eq!(headers[header::RETRY_AFTER], "5");
        assert_eq!(
            headers[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "retry-after"
        );
        // ...until it ends (here, the browser goes away).
        first.abort();
        let _ = first.await;
        let (status, _, _) = send(&chat.router, post(&ana, "", GIF)).await;
        assert_eq!(status, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn one_address_holds_two_uploads_at_most() {
        let chat = chat("");
        let from = |request: Request<Body>, last: u8| {
            let mut request = request;
            let peer = std::net::SocketAddr::from(([198, 51, 100, last], 40_000));
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            request
        };
        // Two stalled uploads from one machine, each with a visitor id of
        // its own...
        let mut stalled = Vec::new();
        for _ in 0..MAX_UPLOADS_PER_ADDRESS {
            let (reading, read) = tokio::sync::oneshot::channel();
            let body = stream::once(async move {
                let _ = reading.send(());
                Ok::<_, std::io::Error>(Bytes::from_static(PNG))
            })
            .chain(stream::pending());
            let request = from(post(&visitor(), "", Body::from_stream(body)), 7);
            stalled.push(tokio::spawn(chat.router.clone().oneshot(request)));
            read.await.unwrap();
        }
        // ...leave it no third, while another address uploads freely.
        let (status, _, body) = send(&chat.router, from(post(&visitor(), "", GIF), 7)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["code"], "too_many_uploads");
        let (status, _, _) = send(&chat.router, from(post(&visitor(), "", GIF), 8)).await;
        assert_eq!(status, StatusCode::CREATED);
        for upload in stalled {
            upload.abort();
            let _ = upload.await;
        }
        let (status, _, _) = send(&chat.router, from(post(&visitor(), "", GIF), 7)).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "slots come back when uploads end"
        );
    }

    #[derive(Debug)]
    struct BrokenStore;

    #[async_trait]
    impl AttachmentStore for BrokenStore {
        async fn put(&self, _: Bytes) -> Result<omni_connector::StoredAttachment, AttachmentError> {
            Err(AttachmentError {
                path: "/var/lib/omnid/attachments".into(),
                source: std::io::Error::other("disk full"),
            })
        }
        async fn get(&self, _: &str) -> Result<Option<Bytes>, AttachmentError> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_failing_store_is_unavailable_not_accepted() {
        let chat = chat_with("", Some(Arc::new(BrokenStore)));
        let ana = visitor();
        let (status, _, body) = send(&chat.router, post(&ana, "", PNG)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["code"], "storage_unavailable");
        // The store's path and error are for the log, not the browser.
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("send it again"), "{message}");
        assert!(
            !message.contains("disk full") && !message.contains("/var"),
            "{message}"
        );
        let id = digest(PNG).await;
        assert_eq!(
            chat.state.get(&record_key(&ana.0, &id)).await.unwrap(),
            None
        );
    }

    // A message naming uploads, over a real socket.

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn serve(router: Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        address
    }

    async fn next_frame(socket: &mut Socket) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("a frame in time")
                .expect("the socket is open")
                .unwrap();
            if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    /// Connects as `visitor`; the `history` frame's messages.
    async fn connect(
        address: std::net::SocketAddr,
        visitor: &(String, String),
    ) -> (Socket, Vec<Value>) {
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/socket"))
            .await
            .unwrap();
        let hello = json!({"type": "hello", "visitor_id": visitor.0, "visitor_token": visitor.1});
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                hello.to_string(),
            ))
            .await
            .unwrap();
        let welcome = next_frame(&mut socket).await;
        assert_eq!(welcome["visitor_id"], visitor.0.as_str(), "{welcome}");
        let history = next_frame(&mut socket).await;
        assert_eq!(history["type"], "history");
        let messages = history["messages"].as_array().unwrap().clone();
        (socket, messages)
    }

    async fn say(socket: &mut Socket, frame: Value) -> Value {
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                frame.to_string(),
            ))
            .await
            .unwrap();
        loop {
            let answer = next_frame(socket).await;
            if matches!(answer["type"].as_str(), Some("ack" | "error")) {
                return answer;
            }
        }
    }

    fn events(sink: &MemorySink) -> Vec<omni_proto::v1::ConversationEvent> {
        sink.entries()
            .into_iter()
            .filter_map(|entry| match entry {
                LogEntry::Event(event) => Some(*event),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_message_carries_the_visitors_uploads_and_no_one_elses() {
        let chat = chat("");
        let (ana, bob) = (visitor(), visitor());
        let (status, _, pdf) = send(&chat.router, post(&ana, "name=invoice.pdf", PDF)).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _, png) = send(&chat.router, post(&ana, "name=photo.png", PNG)).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _, gif) = send(&chat.router, post(&bob, "name=bob.gif", GIF)).await;
        assert_eq!(status, StatusCode::CREATED);
        let address = serve(chat.router.clone()).await;
        let (mut socket, _) = connect(address, &ana).await;

        let ack = say(
            &mut socket,
            json!({"type": "message", "client_message_id": "m1", "text": "",
                   "attachments": [{"id": png["id"]}, {"id": pdf["id"]}]}),
        )
        .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let [event] = events(&chat.sink).try_into().unwrap();
        assert_eq!(ack["event_id"], event.event_id.as_str());
        let content = event.content.unwrap();
        assert_eq!(content.text, "");
        let expected = |upload: &Value, media_type: &str, size: usize| {
            let sha256 = upload["id"].as_str().unwrap().to_owned();
            Attachment {
                name: upload["name"].as_str().unwrap().into(),
                media_type: media_type.into(),
                size: size as u64,
                uri: format!("{URI_PREFIX}{sha256}"),
                sha256,
            }
        };
        assert_eq!(
            content.attachments,
            [
                expected(&png, "image/png", PNG.len()),
                expected(&pdf, "application/pdf", PDF.len())
            ]
        );
        // Its id is that of the text message it would have been.
        assert_eq!(
            event.event_id,
            crate::normalize::message_event_id("chat-main", &ana.0, "m1")
        );

        // Bob's file, or one nobody uploaded, is not Ana's to attach.
        for (id, unknown) in [
            (gif["id"].as_str().unwrap().to_owned(), gif["id"].clone()),
            ("e".repeat(64), Value::from("e".repeat(64))),
        ] {
            let refused = say(
                &mut socket,
                json!({"type": "message", "client_message_id": "m2", "text": "look",
                       "attachments": [{"id": png["id"]}, {"id": id}]}),
            )
            .await;
            assert_eq!(refused["type"], "error");
            assert_eq!(refused["code"], "unknown_attachment");
            assert_eq!(refused["client_message_id"], "m2");
            assert!(
                refused["message"]
                    .as_str()
                    .unwrap()
                    .contains(unknown.as_str().unwrap())
            );
        }
        assert_eq!(events(&chat.sink).len(), 1, "nothing refused was appended");

        // A message without text needs a file, as before.
        let empty = say(
            &mut socket,
            json!({"type": "message", "client_message_id": "m3", "text": " "}),
        )
        .await;
        assert_eq!(empty["code"], "empty_message");

        // A tab opened later shows the file chips, without the store's URIs.
        drop(socket);
        let (_, history) = connect(address, &ana).await;
        let [entry] = history.as_slice() else {
            panic!("{history:?}")
        };
        assert_eq!(entry["client_message_id"], "m1");
        assert_eq!(
            entry["attachments"],
            json!([
                {"name": "photo.png", "media_type": "image/png", "size": PNG.len()},
                {"name": "invoice.pdf", "media_type": "application/pdf", "size": PDF.len()},
            ])
        );
    }

    #[test]
    fn the_test_files_are_what_their_names_say() {
        // Guards the fixtures above: a typo in a byte string would make the
        // sniffing tests test nothing.
        assert_eq!(PNG.len(), 70);
        assert_eq!(GIF.len(), 43);
        assert_eq!(&webp(WEBP_LOSSY)[8..16], b"WEBPVP8 ");
        assert_eq!(&webp(WEBP_LOSSLESS)[8..16], b"WEBPVP8L");
    }
}
