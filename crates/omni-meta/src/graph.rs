//! The one client of Meta's Graph API in the crate: WhatsApp media lookups
//! and downloads, Messenger and Instagram CDN downloads, and every reply.
//!
//! Every Graph call carries the access token as `Authorization: Bearer`
//! (never in a query string), so no URL this client builds or logs holds
//! it; reqwest's errors are stripped of their URL anyway, because CDN
//! links carry Meta's own signatures. Answers are read in bounded chunks:
//! JSON answers up to [`MAX_JSON_BYTES`], files up to the caller's cap,
//! refused as soon as the declared length or the bytes read pass it.
//!
//! Errors are sorted by [`classify`], a pure function of the status, the
//! `Retry-After` header and the body, so the table below is unit tested
//! on the documentation's error bodies.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use omni_connector::{ConfigError, DeliveryError, FetchError, Fetched, Secret, parse_retry_after};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde_json::Value;

/// Largest JSON answer read: Graph's answers to the calls made here
/// (a media lookup, a send, an upload) are a few hundred bytes.
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// How long a throttled caller waits when Meta does not say (it rarely
/// sends `Retry-After`; its rate limits are counted over rolling windows
/// of minutes to an hour, so retrying sooner mostly counts against it).
pub const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(60);

/// Longest error message kept from an answer.
const MAX_MESSAGE_CHARS: usize = 500;

/// Most redirects a download follows (Meta's CDN answers directly; a chain
/// is a misconfiguration or a trap).
const MAX_REDIRECTS: usize = 5;

/// Graph error codes that mean "throttled: slow down and retry".
///
/// From Meta's Graph API "Handling Errors" and "Rate Limits" guides
/// (<https://developers.facebook.com/docs/graph-api/guides/error-handling>,
/// <https://developers.facebook.com/docs/graph-api/overview/rate-limiting>),
/// the WhatsApp Cloud API error codes
/// (<https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes>)
/// and the Messenger Platform's error codes
/// (<https://developers.facebook.com/docs/messenger-platform/error-codes>):
///
/// | code | meaning |
/// |---|---|
/// | 4 | API Too Many Calls: the app's rate limit |
/// | 17 | API User Too Many Calls: the user's (token's) rate limit |
/// | 32 | Page request limit reached |
/// | 341 | Application limit reached ("wait and retry") |
/// | 613 | Calls to this API have exceeded the rate limit |
/// | 80000–80014 | Business Use Case rate limits (80001 Pages, 80002 Instagram, 80006 Messenger, 80007 WhatsApp Business Management, …) |
/// | 130429 | WhatsApp: Cloud API message throughput reached |
/// | 131048 | WhatsApp: spam rate limit (too many messages blocked or flagged) |
/// | 131056 | WhatsApp: pair rate limit (too many messages to one customer) |
/// | 133016 | WhatsApp: register/deregister rate limit |
pub fn is_throttle_code(code: i64) -> bool {
    matches!(
        code,
        4 | 17 | 32 | 341 | 613 | 80_000..=80_014 | 130_429 | 131_048 | 131_056 | 133_016
    )
}

/// Graph error codes that mean "temporarily unavailable: retry later"
/// (same sources as [`is_throttle_code`]); Meta also marks such errors
/// `"is_transient": true`, which is honoured whatever the code.
///
/// | code | meaning |
/// |---|---|
/// | 1 | API Unknown: "possibly a temporary issue due to downtime" (not with subcode 99, which Messenger uses for missing permissions) |
/// | 2 | API Service: temporary downtime or overload |
/// | 1200 | Messenger: temporary send message failure |
/// | 131000 | WhatsApp: something went wrong (Meta advises retrying) |
/// | 131016 | WhatsApp: a service is temporarily unavailable |
/// | 133004 | WhatsApp: server temporarily unavailable |
pub fn is_transient_code(code: i64, subcode: Option<i64>) -> bool {
    match code {
        1 => subcode != Some(99),
        2 | 1200 | 131_000 | 131_016 | 133_004 => true,
        _ => false,
    }
}

/// Why a Graph call (or a download) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// HTTP 429 or a throttling code: retry after `retry_after`.
    #[error("graph throttled{}: {message}", code_suffix(*code))]
    Throttled {
        code: Option<i64>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// HTTP 5xx, a transient code, or `is_transient`: retry later.
    #[error("graph temporarily unavailable (http {status}{}): {message}", code_suffix(*code))]
    Unavailable {
        status: u16,
        code: Option<i64>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Meta refused the request for good (bad parameter, unknown object,
    /// permissions, policy). `code` is 0 when the answer carried no Graph
    /// error (a bare 404 from a CDN).
    #[error("{}", rejected_text(*status, *code, *subcode, message))]
    Rejected {
        status: u16,
        code: i64,
        subcode: Option<i64>,
        message: String,
    },
    /// The request did not complete (connect, timeout, reset).
    #[error("graph request failed: {0}")]
    Transport(String),
    /// An answer that is not what the API documents.
    #[error("unreadable graph answer: {0}")]
    InvalidResponse(String),
    /// A request this client will not make: no access token, an id or URL
    /// it will not put a token on, a file larger than allowed.
    #[error("{0}")]
    Refused(String),
}

fn code_suffix(code: Option<i64>) -> String {
    code.map(|c| format!(", code {c}")).unwrap_or_default()
}

fn rejected_text(status: u16, code: i64, subcode: Option<i64>, message: &str) -> String {
    match (code, subcode) {
        (0, _) => format!("graph error (http {status}): {message}"),
        (code, Some(subcode)) => format!("graph error {code}/{subcode}: {message}"),
        (code, None) => format!("graph error {code}: {message}"),
    }
}

impl GraphError {
    /// Whether the same call may succeed later.
    pub fn temporary(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Unavailable { .. } | Self::Transport(_)
        )
    }

    /// Meta's error code, when the answer carried one.
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Throttled { code, .. } | Self::Unavailable { code, .. } => *code,
            Self::Rejected { code, .. } => (*code != 0).then_some(*code),
            _ => None,
        }
    }

    /// The outcome of a reply: throttling waits as long as Meta asked,
    /// other temporary failures are retried with backoff, the rest fail.
    pub fn into_delivery(self) -> DeliveryError {
        let reason = self.to_string();
        match self {
            Self::Throttled { retry_after, .. } | Self::Unavailable { retry_after, .. } => {
                DeliveryError::Temporary {
                    reason,
                    retry_after,
                }
            }
            Self::Transport(_) => DeliveryError::temporary(reason),
            Self::Rejected { .. } | Self::InvalidResponse(_) | Self::Refused(_) => {
                DeliveryError::Rejected(reason)
            }
        }
    }

    /// The outcome of a download.
    pub fn into_fetch(self) -> FetchError {
        if self.temporary() {
            FetchError::Temporary(self.to_string())
        } else {
            FetchError::Permanent(self.to_string())
        }
    }

    /// The same error with `secret` (the token) cut out of its text, in
    /// case an answer ever echoes it.
    fn redacted(self, secret: Option<&str>) -> Self {
        let Some(secret) = secret.filter(|s| !s.is_empty()) else {
            return self;
        };
        let clean = |text: String| {
            if text.contains(secret) {
                text.replace(secret, "<redacted>")
            } else {
                text
            }
        };
        match self {
            Self::Throttled {
                code,
                message,
                retry_after,
            } => Self::Throttled {
                code,
                message: clean(message),
                retry_after,
            },
            Self::Unavailable {
                status,
                code,
                message,
                retry_after,
            } => Self::Unavailable {
                status,
                code,
                message: clean(message),
                retry_after,
            },
            Self::Rejected {
                status,
                code,
                subcode,
                message,
            } => Self::Rejected {
                status,
                code,
                subcode,
                message: clean(message),
            },
            Self::Transport(m) => Self::Transport(clean(m)),
            Self::InvalidResponse(m) => Self::InvalidResponse(clean(m)),
            Self::Refused(m) => Self::Refused(clean(m)),
        }
    }
}

/// The parts of a Graph error body
/// (`{"error": {"message", "type", "code", "error_subcode", "is_transient",
/// "error_user_title", "error_user_msg", "error_data": {"details"},
/// "fbtrace_id"}}`) that decide and explain a failure.
#[derive(Debug, Default, PartialEq, Eq)]
struct ErrorBody {
    code: Option<i64>,
    subcode: Option<i64>,
    transient: bool,
    message: String,
}

fn parse_error_body(body: &[u8]) -> Option<ErrorBody> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?.as_object()?;
    let text = |key: &str| {
        error
            .get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let mut message = text("message").unwrap_or("no message").to_owned();
    let details = error
        .get("error_data")
        .and_then(|d| d.get("details"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|d| !d.is_empty());
    if let Some(details) = details.filter(|d| !message.contains(d)) {
        message = format!("{message} ({details})");
    }
    if let Some(user) = text("error_user_msg").filter(|m| !message.contains(m)) {
        message = format!("{message}: {user}");
    }
    if let Some(trace) = text("fbtrace_id") {
        message = format!("{message} [fbtrace_id {trace}]");
    }
    Some(ErrorBody {
        code: error.get("code").and_then(Value::as_i64),
        subcode: error.get("error_subcode").and_then(Value::as_i64),
        transient: error
            .get("is_transient")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        message: bounded(&message),
    })
}

/// `text` on one line, at most [`MAX_MESSAGE_CHARS`] characters.
fn bounded(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if text.chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

/// What a failed answer means; see [`is_throttle_code`] and
/// [`is_transient_code`] for the tables.
///
/// HTTP 429 or a throttling code is [`GraphError::Throttled`], waiting for
/// `Retry-After` (delta-seconds, capped by the SDK) or
/// [`DEFAULT_THROTTLE_WAIT`]; HTTP 5xx, a transient code or
/// `"is_transient": true` is [`GraphError::Unavailable`]; anything else is
/// [`GraphError::Rejected`] with Meta's code, subcode and message (a body
/// without a Graph error is rejected with its HTTP status).
pub fn classify(status: http::StatusCode, retry_after: Option<&str>, body: &[u8]) -> GraphError {
    let parsed = parse_error_body(body);
    let wait = retry_after.and_then(parse_retry_after);
    let (code, subcode) = parsed
        .as_ref()
        .map_or((None, None), |p| (p.code, p.subcode));
    let message = parsed.as_ref().map_or_else(
        || format!("http status {status} without a Graph error"),
        |p| p.message.clone(),
    );
    if status == http::StatusCode::TOO_MANY_REQUESTS || code.is_some_and(is_throttle_code) {
        return GraphError::Throttled {
            code,
            message,
            retry_after: Some(wait.unwrap_or(DEFAULT_THROTTLE_WAIT)),
        };
    }
    let transient = parsed.as_ref().is_some_and(|p| p.transient)
        || code.is_some_and(|c| is_transient_code(c, subcode));
    if status.is_server_error() || transient {
        return GraphError::Unavailable {
            status: status.as_u16(),
            code,
            message,
            retry_after: wait,
        };
    }
    GraphError::Rejected {
        status: status.as_u16(),
        code: code.unwrap_or(0),
        subcode,
        message,
    }
}

/// A WhatsApp media object, from `GET /{media-id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    /// Where the file is, for 5 minutes; downloaded with the token.
    pub url: String,
    pub mime_type: String,
    /// Hex SHA-256 of the file, as Meta states it (may be empty).
    pub sha256: String,
    /// The size Meta states, if it does.
    pub file_size: Option<u64>,
    pub id: String,
}

impl MediaInfo {
    fn parse(body: &Value) -> Result<Self, GraphError> {
        let text = |key: &str| {
            body.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let url = text("url");
        if url.is_empty() {
            return Err(GraphError::InvalidResponse(
                "the media object has no url".into(),
            ));
        }
        // Meta has sent file_size both as a number and as a string.
        let file_size = match body.get("file_size") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        Ok(Self {
            url,
            mime_type: text("mime_type"),
            sha256: text("sha256"),
            file_size,
            id: text("id"),
        })
    }
}

/// A file sent in a multipart request.
#[derive(Debug, Clone)]
pub struct FilePart {
    /// The form field (`file` for WhatsApp uploads, `filedata` for the
    /// Send API).
    pub field: String,
    pub file_name: String,
    pub media_type: String,
    pub content: Bytes,
}

/// A client of the Graph API with one access token. Clones share the
/// connection pool.
#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    /// The base URL without a trailing `/`.
    base: Arc<str>,
    version: Arc<str>,
    /// `Bearer {token}`, marked sensitive; None for a client that only
    /// downloads signed CDN links.
    auth: Option<HeaderValue>,
    /// The token, only to cut it out of error messages.
    token: Option<Arc<str>>,
    /// Whether the base is plain http (a local test server): only then are
    /// http links downloaded.
    insecure: bool,
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.base)
            .field("version", &self.version)
            .field("has_token", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// A client of `base` (`https://graph.facebook.com`; tests use a local
    /// server) at API `version` (`v23.0`), authenticating with
    /// `access_token`; `timeout` bounds each request, downloads included.
    pub fn new(
        base: &str,
        version: &str,
        access_token: Secret,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let token = std::str::from_utf8(access_token.expose())
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ConfigError::new(
                    "access_token",
                    "an access token is printable ASCII without spaces",
                )
            })?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ConfigError::new("access_token", "not usable in a header"))?;
        auth.set_sensitive(true);
        let mut client = Self::anonymous(base, version, timeout)?;
        client.auth = Some(auth);
        client.token = Some(Arc::from(token));
        Ok(client)
    }

    /// A client without a token: it downloads Messenger and Instagram CDN
    /// links (signed by Meta, no token needed) for a channel configured
    /// without one; every Graph call is refused.
    pub fn anonymous(base: &str, version: &str, timeout: Duration) -> Result<Self, ConfigError> {
        let base = base.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(base)
            .map_err(|e| ConfigError::new("graph_base", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.query().is_some()
        {
            return Err(ConfigError::new(
                "graph_base",
                "an http(s) URL with a host and without a query",
            ));
        }
        let version = version.trim().trim_matches('/');
        if version.is_empty()
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.')
        {
            return Err(ConfigError::new(
                "api_version",
                "a Graph API version such as \"v23.0\"",
            ));
        }
        if timeout.is_zero() {
            return Err(ConfigError::new(
                "request_timeout_secs",
                "must be at least 1",
            ));
        }
        let insecure = url.scheme() == "http";
        // Redirects stay on https (or on http for a local test base), so a
        // CDN link cannot bounce a download to a plain-http or other-scheme
        // address. reqwest drops Authorization on a redirect to another
        // host.
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let allowed = match attempt.url().scheme() {
                "https" => true,
                "http" => insecure,
                _ => false,
            };
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if allowed {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(redirects)
            .build()
            .map_err(|e| ConfigError::new("graph_base", format!("http client: {e}")))?;
        Ok(Self {
            http,
            base: Arc::from(base),
            version: Arc::from(version),
            auth: None,
            token: None,
            insecure,
        })
    }

    /// Whether this client has an access token.
    pub fn has_token(&self) -> bool {
        self.auth.is_some()
    }

    /// Whether plain-http links may be downloaded: only when the Graph base
    /// itself is http, which is a local test server (Meta serves
    /// everything over https, so an http link in production is refused
    /// rather than fetched in the clear).
    pub fn allows_http(&self) -> bool {
        self.insecure
    }

    /// Whether `url` is a link this client downloads: https, or http when
    /// [`Self::allows_http`].
    pub fn downloadable(&self, url: &str) -> bool {
        match reqwest::Url::parse(url) {
            Ok(url) if url.host_str().is_some() => match url.scheme() {
                "https" => true,
                "http" => self.insecure,
                _ => false,
            },
            _ => false,
        }
    }

    /// `{base}/{version}/{path}`.
    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}/{}",
            self.base,
            self.version,
            path.trim_start_matches('/')
        )
    }

    fn authorized(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, GraphError> {
        let auth = self.auth.clone().ok_or_else(|| {
            GraphError::Refused("no access token configured, so no Graph API call is made".into())
        })?;
        Ok(request.header(AUTHORIZATION, auth))
    }

    fn transport(&self, error: reqwest::Error) -> GraphError {
        // Without the URL: CDN links carry signatures.
        let error = error.without_url();
        let message = if error.is_timeout() {
            "timed out".to_owned()
        } else {
            error_chain(&error)
        };
        GraphError::Transport(message).redacted(self.token.as_deref())
    }

    /// Sends `request` and reads its JSON object answer, or classifies
    /// the failure.
    async fn send_json(&self, request: reqwest::RequestBuilder) -> Result<Value, GraphError> {
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let retry_after = header_text(&response, RETRY_AFTER);
        let body = self.read_bounded(response, MAX_JSON_BYTES as u64).await;
        let body = match body {
            Ok(body) => body,
            Err(ReadError::TooLarge) if !status.is_success() => Vec::new(),
            Err(ReadError::TooLarge) => {
                return Err(GraphError::InvalidResponse(format!(
                    "answer larger than {MAX_JSON_BYTES} bytes"
                )));
            }
            Err(ReadError::Graph(error)) => return Err(error),
        };
        if !status.is_success() {
            return Err(
                classify(status, retry_after.as_deref(), &body).redacted(self.token.as_deref())
            );
        }
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| GraphError::InvalidResponse(format!("not JSON: {e}")))?;
        if let Some(error) = value.get("error").filter(|e| e.is_object()) {
            // A 200 carrying an error (batch-style answers): classified as
            // if Meta had sent 400.
            let body =
                serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap_or_default();
            return Err(classify(http::StatusCode::BAD_REQUEST, None, &body)
                .redacted(self.token.as_deref()));
        }
        if !value.is_object() {
            return Err(GraphError::InvalidResponse("not a JSON object".into()));
        }
        Ok(value)
    }

    /// Up to `cap` bytes of `response`'s body.
    async fn read_bounded(
        &self,
        mut response: reqwest::Response,
        cap: u64,
    ) -> Result<Vec<u8>, ReadError> {
        if response.content_length().is_some_and(|len| len > cap) {
            return Err(ReadError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ReadError::Graph(self.transport(e)))?
        {
            if (body.len() + chunk.len()) as u64 > cap {
                return Err(ReadError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Looks up a WhatsApp media id: `GET /{media-id}`.
    pub async fn media_info(&self, media_id: &str) -> Result<MediaInfo, GraphError> {
        if media_id.is_empty()
            || media_id.len() > 128
            || !media_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(GraphError::Refused(format!(
                "{:?} is not a media id",
                media_id.chars().take(64).collect::<String>()
            )));
        }
        let request = self.authorized(self.http.get(self.url(media_id)))?;
        let body = self.send_json(request).await?;
        MediaInfo::parse(&body)
    }

    /// Downloads `url`, with the token when `bearer` (WhatsApp media
    /// links need it; CDN links are signed and must not receive it). More
    /// than `max_bytes` is refused without reading the rest; the media
    /// type is the answer's `Content-Type`.
    pub async fn download(
        &self,
        url: &str,
        bearer: bool,
        max_bytes: u64,
    ) -> Result<Fetched, GraphError> {
        if !self.downloadable(url) {
            return Err(GraphError::Refused(format!(
                "not an https link: {:?}",
                url.chars().take(64).collect::<String>()
            )));
        }
        let mut request = self.http.get(url);
        if bearer {
            request = self.authorized(request)?;
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = header_text(&response, RETRY_AFTER);
            let body = self
                .read_bounded(response, MAX_JSON_BYTES as u64)
                .await
                .unwrap_or_default();
            return Err(
                classify(status, retry_after.as_deref(), &body).redacted(self.token.as_deref())
            );
        }
        let media_type = header_text(&response, CONTENT_TYPE).unwrap_or_default();
        let content = match self.read_bounded(response, max_bytes).await {
            Ok(content) => content,
            Err(ReadError::TooLarge) => {
                return Err(GraphError::Refused(format!(
                    "the file is too large: more than {max_bytes} bytes"
                )));
            }
            Err(ReadError::Graph(error)) => return Err(error),
        };
        Ok(Fetched {
            content: Bytes::from(content),
            media_type,
        })
    }

    /// `POST /{path}` with a JSON body; the answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, GraphError> {
        let request = self.authorized(self.http.post(self.url(path)))?.json(body);
        self.send_json(request).await
    }

    /// `POST /{path}` as `multipart/form-data`: the text `fields`, then the
    /// file. The answer.
    pub async fn post_multipart(
        &self,
        path: &str,
        fields: &[(&str, String)],
        file: FilePart,
    ) -> Result<Value, GraphError> {
        let length = file.content.len() as u64;
        let part = reqwest::multipart::Part::stream_with_length(file.content, length)
            .file_name(file.file_name)
            .mime_str(&file.media_type)
            .map_err(|_| {
                GraphError::Refused(format!(
                    "{:?} is not a media type",
                    file.media_type.chars().take(64).collect::<String>()
                ))
            })?;
        let mut form = reqwest::multipart::Form::new();
        for (name, value) in fields {
            form = form.text(name.to_string(), value.clone());
        }
        form = form.part(file.field, part);
        let request = self
            .authorized(self.http.post(self.url(path)))?
            .multipart(form);
        self.send_json(request).await
    }

    /// Uploads a file for WhatsApp messages (`POST /{phone-number-id}/media`,
    /// kept by Meta for 30 days): its media id.
    pub async fn upload_whatsapp_media(
        &self,
        phone_number_id: &str,
        content: Bytes,
        media_type: &str,
        file_name: &str,
    ) -> Result<String, GraphError> {
        let file = FilePart {
            field: "file".into(),
            file_name: file_name.to_owned(),
            media_type: media_type.to_owned(),
            content,
        };
        let fields = [
            ("messaging_product", "whatsapp".to_owned()),
            ("type", media_type.to_owned()),
        ];
        let answer = self
            .post_multipart(&format!("{phone_number_id}/media"), &fields, file)
            .await?;
        answer
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| GraphError::InvalidResponse("the upload answer has no id".into()))
    }
}

/// Why a body was not read.
enum ReadError {
    TooLarge,
    Graph(GraphError),
}

fn header_text(response: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

/// An error and its sources, one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

/// A fake Graph API and CDN on a loopback port, for the tests of this
/// module, [`crate::media`] and [`crate::outbound`].
#[cfg(test)]
pub(crate) mod fake {
    use std::{
        collections::{HashMap, VecDeque},
        sync::{
            Arc, Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use axum::{
        body::Body,
        extract::{FromRequest, Multipart, Request, State},
        http::{StatusCode, header},
        response::Response,
    };
    use omni_connector::Secret;
    use serde_json::{Value, json};

    use super::GraphClient;

    pub(crate) const TOKEN: &str = "EAAGtest-t0ken-value";
    pub(crate) const VERSION: &str = "v23.0";

    /// A scripted answer.
    #[derive(Debug, Clone)]
    pub(crate) struct Reply {
        pub(crate) status: u16,
        pub(crate) headers: Vec<(String, String)>,
        pub(crate) body: Vec<u8>,
    }

    impl Reply {
        pub(crate) fn json(status: u16, value: Value) -> Self {
            Self {
                status,
                headers: vec![("content-type".into(), "application/json".into())],
                body: serde_json::to_vec(&value).unwrap(),
            }
        }

        /// Meta's error body.
        pub(crate) fn error(status: u16, code: i64, subcode: Option<i64>, message: &str) -> Self {
            let mut error = json!({
                "message": message,
                "type": "OAuthException",
                "code": code,
                "fbtrace_id": "AbCdEf123",
            });
            if let Some(subcode) = subcode {
                error["error_subcode"] = subcode.into();
            }
            Self::json(status, json!({ "error": error }))
        }

        pub(crate) fn file(content_type: &str, bytes: &[u8]) -> Self {
            Self {
                status: 200,
                headers: vec![("content-type".into(), content_type.into())],
                body: bytes.to_vec(),
            }
        }

        pub(crate) fn with_header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.into(), value.into()));
            self
        }
    }

    /// One field of a multipart request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Field {
        pub(crate) name: String,
        pub(crate) file_name: Option<String>,
        pub(crate) content_type: Option<String>,
        pub(crate) bytes: Vec<u8>,
    }

    /// One request the fake received.
    #[derive(Debug, Clone)]
    pub(crate) struct Seen {
        pub(crate) method: String,
        pub(crate) path: String,
        pub(crate) authorization: Option<String>,
        pub(crate) json: Option<Value>,
        pub(crate) form: Vec<Field>,
    }

    impl Seen {
        /// The text of form field `name`.
        pub(crate) fn field(&self, name: &str) -> Option<String> {
            self.form
                .iter()
                .find(|f| f.name == name)
                .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct Fake {
        pub(crate) base: String,
        counter: AtomicUsize,
        scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
        /// Graph media ids: (mime type, bytes), downloadable at
        /// `/files/{id}` with the token.
        media: Mutex<HashMap<String, (String, Vec<u8>)>>,
        /// Files at `/cdn/...`, downloadable without a token.
        cdn: Mutex<HashMap<String, (String, Vec<u8>)>>,
        seen: Mutex<Vec<Seen>>,
    }

    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(|p| p.into_inner())
    }

    impl Fake {
        pub(crate) async fn start() -> Arc<Fake> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let fake = Arc::new(Fake {
                base: format!("http://{}", listener.local_addr().unwrap()),
                ..Fake::default()
            });
            let app = axum::Router::new()
                .fallback(handle)
                .with_state(fake.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            fake
        }

        pub(crate) fn client(&self) -> GraphClient {
            GraphClient::new(
                &self.base,
                VERSION,
                Secret::new(TOKEN),
                Duration::from_secs(5),
            )
            .unwrap()
        }

        /// The path of a Graph call, `/{VERSION}/{path}`.
        pub(crate) fn graph_path(path: &str) -> String {
            format!("/{VERSION}/{path}")
        }

        /// The next answers of `path` (after them, the default).
        pub(crate) fn script(&self, path: &str, replies: Vec<Reply>) {
            lock(&self.scripts)
                .entry(path.to_owned())
                .or_default()
                .extend(replies);
        }

        pub(crate) fn add_media(&self, media_id: &str, mime_type: &str, bytes: &[u8]) {
            lock(&self.media).insert(media_id.into(), (mime_type.into(), bytes.to_vec()));
        }

        /// A CDN file; its URL.
        pub(crate) fn add_cdn(&self, name: &str, mime_type: &str, bytes: &[u8]) -> String {
            lock(&self.cdn).insert(format!("/cdn/{name}"), (mime_type.into(), bytes.to_vec()));
            format!("{}/cdn/{name}", self.base)
        }

        /// The requests to `path`, in order.
        pub(crate) fn seen(&self, path: &str) -> Vec<Seen> {
            lock(&self.seen)
                .iter()
                .filter(|s| s.path == path)
                .cloned()
                .collect()
        }

        /// Every request, as `METHOD path`, in order.
        pub(crate) fn calls(&self) -> Vec<String> {
            lock(&self.seen)
                .iter()
                .map(|s| format!("{} {}", s.method, s.path))
                .collect()
        }

        fn next(&self) -> usize {
            self.counter.fetch_add(1, Ordering::SeqCst) + 1
        }
    }

    fn respond(reply: Reply) -> Response {
        let mut response = Response::new(Body::from(reply.body));
        *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
        for (name, value) in reply.headers {
            response.headers_mut().insert(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        response
    }

    async fn handle(State(fake): State<Arc<Fake>>, request: Request) -> Response {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let multipart = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        let mut seen = Seen {
            method: method.clone(),
            path: path.clone(),
            authorization: authorization.clone(),
            json: None,
            form: Vec::new(),
        };
        if multipart {
            let mut form = Multipart::from_request(request, &()).await.unwrap();
            while let Some(field) = form.next_field().await.unwrap() {
                let name = field.name().unwrap_or_default().to_owned();
                let file_name = field.file_name().map(str::to_owned);
                let content_type = field.content_type().map(str::to_owned);
                let bytes = field.bytes().await.unwrap().to_vec();
                seen.form.push(Field {
                    name,
                    file_name,
                    content_type,
                    bytes,
                });
            }
        } else {
            let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .unwrap();
            seen.json = serde_json::from_slice(&body).ok();
        }
        lock(&fake.seen).push(seen.clone());

        if let Some(reply) = lock(&fake.scripts)
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
        {
            return respond(reply);
        }
        let bearer_ok = authorization.as_deref() == Some(&format!("Bearer {TOKEN}"));
        let not_found = || Reply::error(404, 100, Some(33), "Unsupported get request");
        if let Some(cdn) = lock(&fake.cdn).get(&path).cloned() {
            return respond(Reply::file(&cdn.0, &cdn.1));
        }
        if let Some(id) = path.strip_prefix("/files/") {
            if !bearer_ok {
                return respond(Reply::error(401, 190, None, "Invalid OAuth access token"));
            }
            return respond(match lock(&fake.media).get(id) {
                Some((mime, bytes)) => Reply::file(mime, bytes),
                None => not_found(),
            });
        }
        let Some(graph) = path.strip_prefix(&format!("/{VERSION}/")) else {
            return respond(not_found());
        };
        if !bearer_ok {
            return respond(Reply::error(
                401,
                190,
                None,
                "Invalid OAuth access token - Cannot parse access token",
            ));
        }
        let reply = match (method.as_str(), graph) {
            ("GET", id) => match lock(&fake.media).get(id) {
                Some((mime, bytes)) => Reply::json(
                    200,
                    json!({
                        "messaging_product": "whatsapp",
                        "url": format!("{}/files/{id}", fake.base),
                        "mime_type": mime,
                        // The file's digest; ids starting `corrupt` announce
                        // another file's, as a damaged transfer would look.
                        "sha256": if id.starts_with("corrupt") {
                            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"another file"))
                        } else {
                            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
                        },
                        "file_size": bytes.len(),
                        "id": id,
                    }),
                ),
                None => not_found(),
            },
            ("POST", "me/messages") => {
                let recipient = seen
                    .json
                    .as_ref()
                    .and_then(|j| j["recipient"]["id"].as_str().map(str::to_owned))
                    .or_else(|| {
                        seen.field("recipient")
                            .and_then(|r| serde_json::from_str::<Value>(&r).ok())
                            .and_then(|r| r["id"].as_str().map(str::to_owned))
                    })
                    .unwrap_or_default();
                Reply::json(
                    200,
                    json!({"recipient_id": recipient, "message_id": format!("m_{}", fake.next())}),
                )
            }
            ("POST", p) if p.ends_with("/media") => {
                Reply::json(200, json!({"id": format!("MEDIA-{}", fake.next())}))
            }
            ("POST", p) if p.ends_with("/messages") => {
                let to = seen
                    .json
                    .as_ref()
                    .and_then(|j| j["to"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                Reply::json(
                    200,
                    json!({
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": to, "wa_id": to}],
                        "messages": [{"id": format!("wamid.{}", fake.next())}],
                    }),
                )
            }
            _ => not_found(),
        };
        respond(reply)
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use serde_json::json;

    use super::{
        fake::{Fake, Reply, TOKEN, VERSION},
        *,
    };

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn throttling_codes_are_throttled_with_a_default_wait() {
        // WhatsApp's documented throughput error.
        let error = classify(
            StatusCode::BAD_REQUEST,
            None,
            &body(json!({"error": {
                "message": "(#130429) Rate limit hit",
                "type": "OAuthException",
                "code": 130429,
                "error_data": {
                    "messaging_product": "whatsapp",
                    "details": "Cloud API message throughput has been reached."
                },
                "error_subcode": 2494055,
                "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"
            }})),
        );
        assert_eq!(
            error,
            GraphError::Throttled {
                code: Some(130429),
                message: "(#130429) Rate limit hit (Cloud API message throughput has been reached.) [fbtrace_id Az8or2yhqkZfEZ-_4Qn_Bam]".into(),
                retry_after: Some(DEFAULT_THROTTLE_WAIT),
            }
        );
        assert!(error.temporary());
        for code in [4, 17, 32, 613, 80007, 131048, 131056] {
            let error = classify(
                StatusCode::FORBIDDEN,
                None,
                &body(json!({"error": {"message": "slow down", "code": code}})),
            );
            assert!(
                matches!(error, GraphError::Throttled { .. }),
                "{code}: {error:?}"
            );
        }
    }

    #[test]
    fn http_429_uses_retry_after() {
        let error = classify(StatusCode::TOO_MANY_REQUESTS, Some("17"), b"");
        assert!(
            matches!(&error, GraphError::Throttled { code: None, retry_after: Some(wait), .. } if *wait == Duration::from_secs(17)),
            "{error:?}"
        );
        match error.into_delivery() {
            DeliveryError::Temporary { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(17)))
            }
            other => panic!("{other:?}"),
        }
        // An HTTP date is not trusted: the default applies.
        let error = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Wed, 21 Oct 2015 07:28:00 GMT"),
            b"",
        );
        assert_eq!(
            error,
            GraphError::Throttled {
                code: None,
                message: "http status 429 Too Many Requests without a Graph error".into(),
                retry_after: Some(DEFAULT_THROTTLE_WAIT),
            }
        );
    }

    #[test]
    fn transient_codes_and_5xx_are_unavailable() {
        for (status, error) in [
            (
                StatusCode::BAD_REQUEST,
                json!({"code": 2, "message": "Service temporarily unavailable"}),
            ),
            (
                StatusCode::BAD_REQUEST,
                json!({"code": 131016, "message": "Service unavailable"}),
            ),
            (
                StatusCode::BAD_REQUEST,
                json!({"code": 133004, "message": "Server temporarily unavailable"}),
            ),
            (
                StatusCode::BAD_REQUEST,
                json!({"code": 131000, "message": "Something went wrong"}),
            ),
            (
                StatusCode::BAD_REQUEST,
                json!({"code": 1200, "message": "Temporary send message failure"}),
            ),
            (
                StatusCode::BAD_REQUEST,
                json!({"code": 1, "message": "An unknown error occurred"}),
            ),
            (
                StatusCode::BAD_REQUEST,
                json!({"code": 100, "is_transient": true, "message": "x"}),
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"code": 100, "message": "x"}),
            ),
        ] {
            let classified = classify(status, None, &body(json!({ "error": error })));
            assert!(
                matches!(classified, GraphError::Unavailable { .. }),
                "{error}: {classified:?}"
            );
            assert!(classified.temporary());
            assert_eq!(classified.code(), error["code"].as_i64());
        }
        // A 503 with a garbled body and a Retry-After.
        let error = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("5"),
            b"<html>busy</html>",
        );
        assert_eq!(
            error,
            GraphError::Unavailable {
                status: 503,
                code: None,
                message: "http status 503 Service Unavailable without a Graph error".into(),
                retry_after: Some(Duration::from_secs(5)),
            }
        );
        // Messenger's "unknown error" with subcode 99 is missing permissions.
        let error = classify(
            StatusCode::BAD_REQUEST,
            None,
            &body(
                json!({"error": {"code": 1, "error_subcode": 99, "message": "An unknown error occurred."}}),
            ),
        );
        assert!(matches!(error, GraphError::Rejected { .. }), "{error:?}");
    }

    #[test]
    fn other_errors_are_rejected_with_code_subcode_and_message() {
        let error = classify(
            StatusCode::BAD_REQUEST,
            None,
            &body(json!({"error": {
                "message": "(#100) Invalid parameter",
                "type": "OAuthException",
                "code": 100,
                "error_subcode": 2018001,
                "error_user_title": "t",
                "error_user_msg": "No matching user found",
                "fbtrace_id": "EJplcsCHuLu"
            }})),
        );
        assert_eq!(
            error.to_string(),
            "graph error 100/2018001: (#100) Invalid parameter: No matching user found [fbtrace_id EJplcsCHuLu]"
        );
        assert!(!error.temporary());
        assert_eq!(error.code(), Some(100));
        assert!(
            matches!(error.clone().into_delivery(), DeliveryError::Rejected(r) if r.starts_with("graph error 100/2018001"))
        );
        assert!(matches!(error.into_fetch(), FetchError::Permanent(_)));

        // WhatsApp's re-engagement error, without a subcode.
        let error = classify(
            StatusCode::BAD_REQUEST,
            None,
            &body(json!({"error": {
                "message": "(#131047) Re-engagement message",
                "code": 131047,
                "error_data": {"details": "More than 24 hours have passed since the recipient last replied."}
            }})),
        );
        assert_eq!(
            error.to_string(),
            "graph error 131047: (#131047) Re-engagement message (More than 24 hours have passed since the recipient last replied.)"
        );
    }

    #[test]
    fn garbage_bodies_are_classified_by_status() {
        let error = classify(StatusCode::NOT_FOUND, None, b"\x00\xffnot json");
        assert_eq!(
            error,
            GraphError::Rejected {
                status: 404,
                code: 0,
                subcode: None,
                message: "http status 404 Not Found without a Graph error".into(),
            }
        );
        assert_eq!(
            error.to_string(),
            "graph error (http 404): http status 404 Not Found without a Graph error"
        );
        assert_eq!(error.code(), None);
        // JSON that is not a Graph error.
        let error = classify(StatusCode::BAD_REQUEST, None, br#"{"error": "nope"}"#);
        assert!(
            matches!(error, GraphError::Rejected { code: 0, .. }),
            "{error:?}"
        );
        // Long and multi-line messages are bounded to one line.
        let long = "x\n".repeat(2000);
        let error = classify(
            StatusCode::BAD_REQUEST,
            None,
            &body(json!({"error": {"message": long, "code": 100}})),
        );
        let GraphError::Rejected { message, .. } = error else {
            panic!()
        };
        assert!(message.chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert!(!message.contains('\n'));
    }

    #[tokio::test]
    async fn media_lookup_and_download_carry_the_bearer_token() {
        let fake = Fake::start().await;
        fake.add_media("1037543291543636", "image/jpeg", b"\xff\xd8jpeg");
        let client = fake.client();
        let info = client.media_info("1037543291543636").await.unwrap();
        assert_eq!(info.url, format!("{}/files/1037543291543636", fake.base));
        assert_eq!(info.mime_type, "image/jpeg");
        assert_eq!(info.file_size, Some(6));
        assert_eq!(info.id, "1037543291543636");
        let lookup = &fake.seen(&Fake::graph_path("1037543291543636"))[0];
        assert_eq!(lookup.method, "GET");
        assert_eq!(
            lookup.authorization.as_deref(),
            Some(&*format!("Bearer {TOKEN}"))
        );

        let fetched = client.download(&info.url, true, 100).await.unwrap();
        assert_eq!(&fetched.content[..], b"\xff\xd8jpeg");
        assert_eq!(fetched.media_type, "image/jpeg");
        let download = &fake.seen("/files/1037543291543636")[0];
        assert_eq!(
            download.authorization.as_deref(),
            Some(&*format!("Bearer {TOKEN}"))
        );

        // A CDN link gets no token.
        let url = fake.add_cdn("a.png", "image/png", b"png");
        let fetched = client.download(&url, false, 100).await.unwrap();
        assert_eq!(&fetched.content[..], b"png");
        assert_eq!(fake.seen("/cdn/a.png")[0].authorization, None);
    }

    #[tokio::test]
    async fn oversized_downloads_are_refused() {
        let fake = Fake::start().await;
        let url = fake.add_cdn("big.mp4", "video/mp4", &[7; 5000]);
        let client = fake.client();
        let error = client.download(&url, false, 4999).await.unwrap_err();
        assert_eq!(
            error,
            GraphError::Refused("the file is too large: more than 4999 bytes".into())
        );
        assert!(matches!(error.into_fetch(), FetchError::Permanent(m) if m.contains("too large")));
        assert_eq!(
            client
                .download(&url, false, 5000)
                .await
                .unwrap()
                .content
                .len(),
            5000
        );
    }

    #[tokio::test]
    async fn unknown_media_is_rejected_and_5xx_is_temporary() {
        let fake = Fake::start().await;
        let client = fake.client();
        let error = client.media_info("404404").await.unwrap_err();
        assert!(
            matches!(
                &error,
                GraphError::Rejected {
                    status: 404,
                    code: 100,
                    subcode: Some(33),
                    ..
                }
            ),
            "{error:?}"
        );
        fake.script(&Fake::graph_path("5"), vec![Reply::json(502, json!({}))]);
        assert!(client.media_info("5").await.unwrap_err().temporary());
        // Ids that would change the path are never sent.
        for bad in ["", "../me", "a/b", "a?b"] {
            assert!(
                matches!(client.media_info(bad).await, Err(GraphError::Refused(_))),
                "{bad}"
            );
        }
        assert!(
            fake.calls().iter().all(|c| !c.contains("me")),
            "{:?}",
            fake.calls()
        );
    }

    #[tokio::test]
    async fn post_sends_json_and_reads_the_answer() {
        let fake = Fake::start().await;
        let client = fake.client();
        let answer = client
            .post("123/messages", &json!({"to": "15551234567"}))
            .await
            .unwrap();
        assert_eq!(answer["messages"][0]["id"], "wamid.1");
        let seen = &fake.seen(&Fake::graph_path("123/messages"))[0];
        assert_eq!(seen.json.as_ref().unwrap(), &json!({"to": "15551234567"}));

        // Oversized and non-JSON answers are unreadable.
        fake.script(
            &Fake::graph_path("123/messages"),
            vec![
                Reply::file("application/json", &vec![b' '; MAX_JSON_BYTES + 1]),
                Reply::file("text/html", b"<html>"),
                Reply::json(200, json!({"error": {"code": 4, "message": "later"}})),
            ],
        );
        for _ in 0..2 {
            let error = client.post("123/messages", &json!({})).await.unwrap_err();
            assert!(matches!(error, GraphError::InvalidResponse(_)), "{error:?}");
        }
        // An error inside a 200 is still an error.
        let error = client.post("123/messages", &json!({})).await.unwrap_err();
        assert!(
            matches!(error, GraphError::Throttled { code: Some(4), .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn whatsapp_uploads_are_multipart() {
        let fake = Fake::start().await;
        let client = fake.client();
        let id = client
            .upload_whatsapp_media("123", Bytes::from_static(b"\x89PNG"), "image/png", "a.png")
            .await
            .unwrap();
        assert_eq!(id, "MEDIA-1");
        let seen = &fake.seen(&Fake::graph_path("123/media"))[0];
        assert_eq!(seen.field("messaging_product").as_deref(), Some("whatsapp"));
        assert_eq!(seen.field("type").as_deref(), Some("image/png"));
        let file = seen.form.iter().find(|f| f.name == "file").unwrap();
        assert_eq!(file.file_name.as_deref(), Some("a.png"));
        assert_eq!(file.content_type.as_deref(), Some("image/png"));
        assert_eq!(file.bytes, b"\x89PNG");
        let error = client
            .upload_whatsapp_media("123", Bytes::new(), "not a\ntype", "x")
            .await
            .unwrap_err();
        assert!(matches!(error, GraphError::Refused(_)), "{error:?}");
    }

    #[tokio::test]
    async fn tokens_never_show_in_errors_or_debug_output() {
        // A port nothing listens on.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = GraphClient::new(
            &format!("http://127.0.0.1:{port}"),
            VERSION,
            Secret::new(TOKEN),
            Duration::from_secs(2),
        )
        .unwrap();
        let error = client.media_info("1").await.unwrap_err();
        assert!(matches!(error, GraphError::Transport(_)), "{error:?}");
        assert!(error.temporary());
        for shown in [
            error.to_string(),
            format!("{error:?}"),
            format!("{client:?}"),
        ] {
            assert!(!shown.contains(TOKEN), "{shown}");
        }
        // An answer echoing the token is redacted.
        let fake = Fake::start().await;
        fake.script(
            &Fake::graph_path("1"),
            vec![Reply::error(400, 190, None, &format!("bad token {TOKEN}"))],
        );
        let error = fake.client().media_info("1").await.unwrap_err();
        assert!(!error.to_string().contains(TOKEN), "{error}");
        assert!(error.to_string().contains("<redacted>"), "{error}");
    }

    #[tokio::test]
    async fn clients_without_a_token_only_download() {
        let fake = Fake::start().await;
        let client = GraphClient::anonymous(&fake.base, VERSION, Duration::from_secs(5)).unwrap();
        assert!(!client.has_token());
        assert!(matches!(
            client.media_info("1").await,
            Err(GraphError::Refused(_))
        ));
        assert!(matches!(
            client.post("me/messages", &json!({})).await,
            Err(GraphError::Refused(_))
        ));
        let url = fake.add_cdn("x", "image/gif", b"gif");
        assert_eq!(
            &client.download(&url, false, 10).await.unwrap().content[..],
            b"gif"
        );
        assert!(
            fake.calls().iter().all(|c| c.contains("/cdn/")),
            "{:?}",
            fake.calls()
        );
    }

    #[test]
    fn settings_are_checked() {
        let ok = |base: &str, version: &str| {
            GraphClient::new(base, version, Secret::new("t"), Duration::from_secs(1)).is_ok()
        };
        assert!(ok("https://graph.facebook.com/", "v23.0"));
        assert!(!ok("ftp://graph.facebook.com", "v23.0"));
        assert!(!ok("https://graph.facebook.com/?a=b", "v23.0"));
        assert!(!ok("https://graph.facebook.com", "v23/../x"));
        assert!(
            GraphClient::new(
                "https://g",
                "v1",
                Secret::new("a b"),
                Duration::from_secs(1)
            )
            .is_err()
        );
        assert!(GraphClient::new("https://g", "v1", Secret::new("t"), Duration::ZERO).is_err());
        let client = GraphClient::new(
            "https://graph.facebook.com",
            "v23.0",
            Secret::new("t"),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!client.allows_http());
        assert!(client.downloadable("https://lookaside.fbsbx.com/x?y=1"));
        assert!(!client.downloadable("http://lookaside.fbsbx.com/x"));
        assert!(!client.downloadable("file:///etc/passwd"));
        assert_eq!(
            client.url("/me/messages"),
            "https://graph.facebook.com/v23.0/me/messages"
        );
    }
}
