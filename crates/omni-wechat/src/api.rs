//! The one client of WeChat's and WeCom's HTTP APIs, with the access-token
//! manager the whole process shares per app.
//!
//! Both platforms authenticate every call with an access token good for
//! about two hours, fetched with the app's secret (Official Account:
//! `cgi-bin/token`, WeCom: `cgi-bin/gettoken`). Fetching a new one can
//! invalidate the old one and is itself rate limited, so the token is
//! cached until shortly before it expires, and at most one fetch is in
//! flight however many tasks need it: callers wait for that fetch and share
//! its outcome. A call answered with an invalid-token code (a token revoked
//! early, or replaced by another process using the same secret) refreshes
//! the token once and is retried once; a task whose token was already
//! replaced by another task's refresh just uses the new one.
//!
//! The manager is shared process-wide per (API base, app, secret): two
//! channels of one account, or a channel and its reloaded successor, never
//! fetch tokens that invalidate each other's.
//!
//! Secrets and tokens travel in query strings, as both platforms require,
//! so they never appear in an error: reqwest's errors are stripped of their
//! URL, and only the configured base URL ever receives them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use omni_connector::{ConfigError, FetchError, Fetched, Secret};
use serde_json::Value;
use tokio::{sync::Mutex, time::Instant};

/// Largest JSON answer read (the biggest, a full `kf/sync_msg` page, is
/// well below it).
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// A token is used until this long before it expires...
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);

/// ...and never refreshed after less than half its life.
const MIN_LIFE_FRACTION: u32 = 2;

/// The token lifetime assumed when an answer does not say (both platforms
/// document 7200 seconds).
const DEFAULT_EXPIRES_IN: u64 = 7200;

/// A longer lifetime in an answer is taken as this (tokens live two
/// hours; a broken answer must not pin a token for years).
const MAX_EXPIRES_IN: u64 = 24 * 3600;

/// Largest `kf/sync_msg` page (WeCom's maximum `limit`).
pub const MAX_SYNC_LIMIT: u32 = 1000;

/// Which platform and credentials.
#[derive(Clone)]
pub enum Credentials {
    /// An Official Account: its AppID and AppSecret.
    OfficialAccount { app_id: String, app_secret: Secret },
    /// A WeCom corporation: its corp id and an app's secret (for WeChat
    /// Customer Service, the 微信客服 secret).
    WeCom { corp_id: String, secret: Secret },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OfficialAccount { app_id, .. } => f
                .debug_struct("OfficialAccount")
                .field("app_id", app_id)
                .finish_non_exhaustive(),
            Self::WeCom { corp_id, .. } => f
                .debug_struct("WeCom")
                .field("corp_id", corp_id)
                .finish_non_exhaustive(),
        }
    }
}

impl Credentials {
    /// The AppID or corp id: the account the tokens belong to.
    pub fn account_id(&self) -> &str {
        match self {
            Self::OfficialAccount { app_id, .. } => app_id,
            Self::WeCom { corp_id, .. } => corp_id,
        }
    }

    /// Whether `errcode` says the access token was not accepted, so a
    /// fresh one may succeed. 40001 is "invalid credential" on Official
    /// Accounts but "invalid secret" on WeCom, where a new token cannot
    /// help.
    fn is_invalid_token(&self, errcode: i64) -> bool {
        match self {
            Self::OfficialAccount { .. } => matches!(errcode, 40001 | 40014 | 41001 | 42001),
            Self::WeCom { .. } => matches!(errcode, 40014 | 41001 | 42001),
        }
    }
}

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request did not complete (connect, timeout, reset).
    #[error("{api}: request failed: {message}")]
    Transport { api: &'static str, message: String },
    /// An HTTP status other than 2xx.
    #[error("{api}: http status {status}")]
    Http { api: &'static str, status: u16 },
    /// The platform's `{"errcode": .., "errmsg": ..}`.
    #[error("{api}: errcode {errcode}: {errmsg}")]
    Platform {
        api: &'static str,
        errcode: i64,
        errmsg: String,
    },
    /// An answer that is not what the API documents.
    #[error("{api}: unreadable answer: {message}")]
    Unreadable { api: &'static str, message: String },
}

/// The APIs that issue tokens.
const TOKEN_APIS: [&str; 2] = ["token", "gettoken"];

/// Error codes of `api` that say "not now": system busy (-1), call quotas
/// (45009 daily or per-minute quota, 45011 minute quota, 45033 concurrent
/// calls on WeCom) and, except from the token APIs (where 40001 means a
/// wrong secret), refused tokens: another process may be replacing the
/// same app's token.
fn is_temporary_errcode(api: &str, errcode: i64) -> bool {
    match errcode {
        -1 | 45009 | 45011 | 45033 => true,
        40001 | 40014 | 41001 | 42001 => !TOKEN_APIS.contains(&api),
        _ => false,
    }
}

impl ApiError {
    /// Whether the same call may succeed later.
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Http { status, .. } => *status == 429 || *status >= 500,
            Self::Platform { api, errcode, .. } => is_temporary_errcode(api, *errcode),
            Self::Unreadable { .. } => false,
        }
    }

    /// The platform's error code, if the platform answered with one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            Self::Platform { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    fn transport(api: &'static str, error: reqwest::Error) -> Self {
        // Without the URL: it carries the token or the secret.
        let error = error.without_url();
        let message = if error.is_timeout() {
            "timed out".to_owned()
        } else {
            error_chain(&error)
        };
        Self::Transport { api, message }
    }
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

/// The `errcode` of an answer, when it is an error (absent or 0 is
/// success).
fn platform_error(api: &'static str, body: &Value) -> Option<ApiError> {
    let errcode = body.get("errcode")?.as_i64()?;
    (errcode != 0).then(|| ApiError::Platform {
        api,
        errcode,
        errmsg: body
            .get("errmsg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect(),
    })
}

/// A cached token and when to stop using it.
#[derive(Debug, Clone)]
struct CachedToken {
    token: Arc<str>,
    refresh_at: Instant,
}

#[derive(Default)]
struct TokenState {
    cached: Option<CachedToken>,
    /// The outcome of the last fetch, if it failed.
    last_error: Option<ApiError>,
}

/// Fetches and caches one app's access token; see the module docs.
struct TokenManager {
    credentials: Credentials,
    state: Mutex<TokenState>,
    /// Fetches finished so far (read without the lock): a caller that
    /// waited for the lock while a fetch ran shares its outcome rather
    /// than starting another.
    fetched: AtomicU64,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// The token manager of an app, shared by every client of it in this
/// process while any is alive. Keyed by a digest of the secret too, so a
/// rotated secret gets its own manager rather than the old one's token.
fn shared_manager(base: &str, credentials: Credentials) -> Arc<TokenManager> {
    use sha1::Digest as _;
    type Managers = std::collections::HashMap<String, std::sync::Weak<TokenManager>>;
    static MANAGERS: std::sync::OnceLock<std::sync::Mutex<Managers>> = std::sync::OnceLock::new();
    let (platform, secret) = match &credentials {
        Credentials::OfficialAccount { app_secret, .. } => ("oa", app_secret),
        Credentials::WeCom { secret, .. } => ("wecom", secret),
    };
    let key = format!(
        "{platform}\u{0}{base}\u{0}{}\u{0}{}",
        credentials.account_id(),
        hex::encode(sha1::Sha1::digest(secret.expose()))
    );
    let mut managers = MANAGERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    managers.retain(|_, manager| manager.strong_count() > 0);
    if let Some(manager) = managers.get(&key).and_then(std::sync::Weak::upgrade) {
        return manager;
    }
    let manager = Arc::new(TokenManager {
        credentials,
        state: Mutex::new(TokenState::default()),
        fetched: AtomicU64::new(0),
    });
    managers.insert(key, Arc::downgrade(&manager));
    manager
}

/// When a token valid for `expires_in` seconds from `now` is replaced.
fn refresh_at(now: Instant, expires_in: u64) -> Instant {
    let life = Duration::from_secs(expires_in);
    let early = life.saturating_sub(EXPIRY_MARGIN);
    now + early.max(life / MIN_LIFE_FRACTION)
}

/// Reads a token answer: `{access_token, expires_in}` (WeCom adds
/// `errcode: 0`).
fn parse_token(api: &'static str, body: &Value) -> Result<(Arc<str>, u64), ApiError> {
    if let Some(error) = platform_error(api, body) {
        return Err(error);
    }
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 2048 && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::Unreadable {
            api,
            message: "no access_token in the answer".into(),
        })?;
    let expires_in = body
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_EXPIRES_IN)
        .min(MAX_EXPIRES_IN);
    Ok((Arc::from(token), expires_in))
}

/// A JSON call waiting for its token.
type BuildRequest<'a> = dyn Fn(&str) -> reqwest::RequestBuilder + Send + Sync + 'a;

/// The client of one app's API (one Official Account, or one WeCom
/// corporation's customer-service app). Clones share the token.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// The base URL without a trailing `/`.
    base: Arc<str>,
    tokens: Arc<TokenManager>,
}

impl ApiClient {
    /// A client of `api_base` (`https://api.weixin.qq.com` or
    /// `https://qyapi.weixin.qq.com`; tests use a local server); `timeout`
    /// bounds each request, downloads included.
    pub fn new(
        api_base: &str,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<ApiClient, ConfigError> {
        let base = api_base.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(base)
            .map_err(|e| ConfigError::new("api_base", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.query().is_some()
        {
            return Err(ConfigError::new(
                "api_base",
                "an http(s) URL without a query",
            ));
        }
        if timeout.is_zero() {
            return Err(ConfigError::new(
                "request_timeout_secs",
                "must be at least 1",
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ConfigError::new("api_base", format!("http client: {e}")))?;
        Ok(ApiClient {
            http,
            base: Arc::from(base),
            tokens: shared_manager(base, credentials),
        })
    }

    /// The credentials' account: the AppID or corp id.
    pub fn account_id(&self) -> &str {
        self.tokens.credentials.account_id()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// A valid access token: the cached one, or a fresh one.
    pub async fn access_token(&self) -> Result<Arc<str>, ApiError> {
        self.token(None).await
    }

    /// The cached token unless it is `stale` (the token a call just saw
    /// refused) or expiring; otherwise the outcome of one fetch, shared by
    /// every caller that waited for it.
    async fn token(&self, stale: Option<&str>) -> Result<Arc<str>, ApiError> {
        let manager = &self.tokens;
        let seen = manager.fetched.load(Ordering::Acquire);
        let mut state = manager.state.lock().await;
        if let Some(cached) = &state.cached
            && Instant::now() < cached.refresh_at
            && stale != Some(&*cached.token)
        {
            return Ok(cached.token.clone());
        }
        if manager.fetched.load(Ordering::Acquire) != seen
            && let Some(error) = &state.last_error
        {
            return Err(error.clone());
        }
        let outcome = self.fetch_token().await;
        manager.fetched.fetch_add(1, Ordering::AcqRel);
        match outcome {
            Ok((token, expires_in)) => {
                state.cached = Some(CachedToken {
                    token: token.clone(),
                    refresh_at: refresh_at(Instant::now(), expires_in),
                });
                state.last_error = None;
                Ok(token)
            }
            Err(error) => {
                // A token refused by the API is not used again.
                if stale.is_some() {
                    state.cached = None;
                }
                state.last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// One request to the token endpoint.
    async fn fetch_token(&self) -> Result<(Arc<str>, u64), ApiError> {
        let (api, request) = match &self.tokens.credentials {
            Credentials::OfficialAccount { app_id, app_secret } => (
                "token",
                self.http.get(self.url("cgi-bin/token")).query(&[
                    ("grant_type", "client_credential"),
                    ("appid", app_id.as_str()),
                    ("secret", &String::from_utf8_lossy(app_secret.expose())),
                ]),
            ),
            Credentials::WeCom { corp_id, secret } => (
                "gettoken",
                self.http.get(self.url("cgi-bin/gettoken")).query(&[
                    ("corpid", corp_id.as_str()),
                    ("corpsecret", &String::from_utf8_lossy(secret.expose())),
                ]),
            ),
        };
        let body = send_json(api, request).await?;
        debug_assert!(TOKEN_APIS.contains(&api));
        tracing::debug!(api, account = self.account_id(), "fetched an access token");
        parse_token(api, &body)
    }

    /// Runs `build` with a token; on an invalid-token code, once more with
    /// a fresh one.
    async fn with_token(
        &self,
        api: &'static str,
        build: &BuildRequest<'_>,
    ) -> Result<Value, ApiError> {
        let token = self.access_token().await?;
        match send_json(api, build(&token)).await {
            Err(ApiError::Platform { errcode, .. })
                if self.tokens.credentials.is_invalid_token(errcode) =>
            {
                tracing::info!(api, errcode, "access token refused; refreshing it once");
                let token = self.token(Some(&token)).await?;
                send_json(api, build(&token)).await
            }
            other => other,
        }
    }

    /// POSTs `body` as JSON to `{base}/{path}?access_token=..`: the answer
    /// when its `errcode` is 0 or absent.
    pub async fn post_json(
        &self,
        api: &'static str,
        path: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let url = self.url(path);
        self.with_token(api, &|token| {
            self.http
                .post(&url)
                .query(&[("access_token", token)])
                .json(body)
        })
        .await
    }

    /// GETs `{base}/{path}?access_token=..&{query}`.
    pub async fn get_json(
        &self,
        api: &'static str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Value, ApiError> {
        let url = self.url(path);
        self.with_token(api, &|token| {
            self.http
                .get(&url)
                .query(&[("access_token", token)])
                .query(query)
        })
        .await
    }

    /// Downloads a file with `cgi-bin/media/get` (both platforms; Official
    /// Accounts keep temporary media 3 days, WeCom 3 days too). An answer
    /// in JSON is the platform's error, or, for an Official Account's
    /// video, `{"video_url": ..}` naming where the file is (downloaded
    /// without the token). More than `max_bytes` is refused without
    /// reading the rest.
    pub async fn media_get(&self, media_id: &str, max_bytes: u64) -> Result<Fetched, FetchError> {
        const API: &str = "media/get";
        if media_id.is_empty()
            || media_id.len() > 256
            || !media_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(FetchError::Permanent(format!("{API}: not a media id")));
        }
        let token = self.access_token().await.map_err(fetch_error)?;
        match self.media_get_once(&token, media_id, max_bytes).await {
            Err(MediaError::Api(ApiError::Platform { errcode, .. }))
                if self.tokens.credentials.is_invalid_token(errcode) =>
            {
                tracing::info!(
                    api = API,
                    errcode,
                    "access token refused; refreshing it once"
                );
                let token = self.token(Some(&token)).await.map_err(fetch_error)?;
                self.media_get_once(&token, media_id, max_bytes).await
            }
            other => other,
        }
        .map_err(MediaError::into_fetch_error)
    }

    async fn media_get_once(
        &self,
        token: &str,
        media_id: &str,
        max_bytes: u64,
    ) -> Result<Fetched, MediaError> {
        const API: &str = "media/get";
        let request = self
            .http
            .get(self.url("cgi-bin/media/get"))
            .query(&[("access_token", token), ("media_id", media_id)]);
        let fetched = download(API, request, max_bytes).await?;
        let Some(body) = json_answer(API, &fetched)? else {
            return Ok(fetched.file);
        };
        let Some(url) = body
            .get("video_url")
            .and_then(Value::as_str)
            .filter(|url| url.starts_with("https://") || url.starts_with("http://"))
        else {
            return Err(MediaError::Api(ApiError::Unreadable {
                api: API,
                message: "a JSON answer without a file".into(),
            }));
        };
        let video = download(API, self.http.get(url), max_bytes).await?;
        if json_answer(API, &video)?.is_some() {
            return Err(MediaError::Api(ApiError::Unreadable {
                api: API,
                message: "the video link answered JSON, not a file".into(),
            }));
        }
        Ok(video.file)
    }

    /// Uploads a temporary file with `cgi-bin/media/upload?type=..`
    /// (multipart field `media`); its `media_id`, valid 3 days. `kind` is
    /// `image`, `voice`, `video` or `file` (WeCom only) and `thumb`
    /// (Official Accounts).
    pub async fn media_upload(
        &self,
        kind: &str,
        file_name: &str,
        media_type: &str,
        content: Bytes,
    ) -> Result<String, ApiError> {
        const API: &str = "media/upload";
        let url = self.url("cgi-bin/media/upload");
        let part = |content: &Bytes| {
            let named = || {
                let length = content.len() as u64;
                reqwest::multipart::Part::stream_with_length(content.clone(), length)
                    .file_name(file_name.to_owned())
            };
            // Checked below, so the fallback is never taken.
            named().mime_str(media_type).unwrap_or_else(|_| named())
        };
        if reqwest::multipart::Part::bytes(Vec::new())
            .mime_str(media_type)
            .is_err()
        {
            return Err(ApiError::Unreadable {
                api: API,
                message: format!("{media_type:?} is not a media type"),
            });
        }
        let body = self
            .with_token(API, &|token| {
                let form = reqwest::multipart::Form::new().part("media", part(&content));
                self.http
                    .post(&url)
                    .query(&[("access_token", token), ("type", kind)])
                    .multipart(form)
            })
            .await?;
        body.get("media_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Unreadable {
                api: API,
                message: "no media_id in the answer".into(),
            })
    }

    /// An Official Account follower's unionid, from `cgi-bin/user/info`
    /// (present when the account is bound to an Open Platform account).
    pub async fn user_unionid(&self, openid: &str) -> Result<Option<String>, ApiError> {
        let body = self
            .get_json(
                "user/info",
                "cgi-bin/user/info",
                &[("openid", openid), ("lang", "zh_CN")],
            )
            .await?;
        Ok(body
            .get("unionid")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned))
    }

    /// One page of a customer-service account's messages, with
    /// `cgi-bin/kf/sync_msg` (voice as AMR, `voice_format: 0`).
    pub async fn sync_msg(&self, request: &SyncRequest) -> Result<SyncPage, ApiError> {
        const API: &str = "kf/sync_msg";
        let body = self
            .post_json(API, "cgi-bin/kf/sync_msg", &sync_body(request))
            .await?;
        parse_sync_page(API, &body)
    }
}

/// Official Accounts and WeCom answer errors (and OA video links) as JSON,
/// sometimes labelled `text/plain`; a file comes with a
/// `Content-Disposition`. A text file without one that parses as JSON is
/// taken for an answer only if it carries an `errcode` or `video_url`.
fn looks_like_json(fetched: &Download) -> bool {
    fetched.declared_json || (fetched.plain_text && !fetched.has_disposition)
}

/// The JSON answer a download is instead of a file: the platform's error
/// (as an error), or an answer without one (`video_url`); None for a file.
/// A text file that happens to parse as JSON is taken for a file unless it
/// carries `errcode` or `video_url`.
fn json_answer(api: &'static str, fetched: &Download) -> Result<Option<Value>, MediaError> {
    if !looks_like_json(fetched) {
        return Ok(None);
    }
    let parsed = serde_json::from_slice::<Value>(&fetched.file.content)
        .ok()
        .filter(Value::is_object);
    let Some(body) = parsed else {
        return if fetched.declared_json {
            Err(MediaError::Api(ApiError::Unreadable {
                api,
                message: "the answer is labelled JSON but is not".into(),
            }))
        } else {
            Ok(None)
        };
    };
    if let Some(error) = platform_error(api, &body) {
        return Err(MediaError::Api(error));
    }
    let is_answer =
        fetched.declared_json || body.get("errcode").is_some() || body.get("video_url").is_some();
    Ok(is_answer.then_some(body))
}

/// Why a download failed: the API said no, or the file is too large.
#[derive(Debug)]
enum MediaError {
    Api(ApiError),
    TooLarge(u64),
}

impl MediaError {
    fn into_fetch_error(self) -> FetchError {
        match self {
            Self::Api(error) => fetch_error(error),
            Self::TooLarge(max) => {
                FetchError::Permanent(format!("media/get: larger than {max} bytes"))
            }
        }
    }
}

fn fetch_error(error: ApiError) -> FetchError {
    if error.is_temporary() {
        FetchError::Temporary(error.to_string())
    } else {
        FetchError::Permanent(error.to_string())
    }
}

/// A downloaded answer and what its headers said.
struct Download {
    file: Fetched,
    declared_json: bool,
    plain_text: bool,
    has_disposition: bool,
}

/// The answer's body, up to `max_bytes` (a JSON answer is read up to
/// [`MAX_JSON_BYTES`] whatever the cap, so a small cap does not hide an
/// error).
async fn download(
    api: &'static str,
    request: reqwest::RequestBuilder,
    max_bytes: u64,
) -> Result<Download, MediaError> {
    let mut response = request
        .send()
        .await
        .map_err(|e| MediaError::Api(ApiError::transport(api, e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(MediaError::Api(ApiError::Http {
            api,
            status: status.as_u16(),
        }));
    }
    let headers = response.headers();
    let media_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_owned();
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let declared_json = essence == "application/json";
    let plain_text = essence == "text/plain";
    let has_disposition = headers.contains_key(reqwest::header::CONTENT_DISPOSITION);
    let cap = if declared_json || plain_text {
        max_bytes.max(MAX_JSON_BYTES as u64)
    } else {
        max_bytes
    };
    if response.content_length().is_some_and(|len| len > cap) {
        return Err(MediaError::TooLarge(max_bytes));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| MediaError::Api(ApiError::transport(api, e)))?
    {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(MediaError::TooLarge(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    let download = Download {
        file: Fetched {
            content: Bytes::from(body),
            media_type,
        },
        declared_json,
        plain_text,
        has_disposition,
    };
    if !looks_like_json(&download) && download.file.content.len() as u64 > max_bytes {
        return Err(MediaError::TooLarge(max_bytes));
    }
    Ok(download)
}

/// Sends a request and reads its JSON answer (at most
/// [`MAX_JSON_BYTES`]): the answer, or the platform's error in it.
async fn send_json(api: &'static str, request: reqwest::RequestBuilder) -> Result<Value, ApiError> {
    let mut response = request
        .send()
        .await
        .map_err(|e| ApiError::transport(api, e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(ApiError::Http {
            api,
            status: status.as_u16(),
        });
    }
    let too_large = || ApiError::Unreadable {
        api,
        message: format!("answer larger than {MAX_JSON_BYTES} bytes"),
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_JSON_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ApiError::transport(api, e))?
    {
        if body.len() + chunk.len() > MAX_JSON_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| ApiError::Unreadable {
        api,
        message: format!("not JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(ApiError::Unreadable {
            api,
            message: "not a JSON object".into(),
        });
    }
    match platform_error(api, &value) {
        Some(error) => Err(error),
        None => Ok(value),
    }
}

/// What `kf/sync_msg` is asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncRequest {
    /// Where the last page ended (`next_cursor`); None the first time.
    pub cursor: Option<String>,
    /// The callback's `Token`, which lets the call through WeCom's stricter
    /// limit on calls without one (valid 10 minutes).
    pub token: Option<String>,
    /// Messages per page, 1 to [`MAX_SYNC_LIMIT`] (0 asks for the maximum).
    pub limit: u32,
    pub open_kfid: String,
}

/// One page of `kf/sync_msg`.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncPage {
    /// The cursor of the next call (store it once the page is durable).
    pub next_cursor: String,
    pub has_more: bool,
    /// The messages, as WeCom sent them (read by [`crate::kf::normalize`]).
    pub msg_list: Vec<Value>,
}

/// The JSON body of a `kf/sync_msg` call.
fn sync_body(request: &SyncRequest) -> Value {
    let limit = match request.limit {
        0 => MAX_SYNC_LIMIT,
        limit => limit.min(MAX_SYNC_LIMIT),
    };
    let mut body = serde_json::Map::new();
    if let Some(cursor) = request.cursor.as_deref().filter(|c| !c.is_empty()) {
        body.insert("cursor".into(), cursor.into());
    }
    if let Some(token) = request.token.as_deref().filter(|t| !t.is_empty()) {
        body.insert("token".into(), token.into());
    }
    body.insert("limit".into(), limit.into());
    body.insert("voice_format".into(), 0.into());
    body.insert("open_kfid".into(), request.open_kfid.clone().into());
    Value::Object(body)
}

/// Reads a `kf/sync_msg` answer (`has_more` is 0 or 1).
fn parse_sync_page(api: &'static str, body: &Value) -> Result<SyncPage, ApiError> {
    let unreadable = |message: &str| ApiError::Unreadable {
        api,
        message: message.to_owned(),
    };
    let next_cursor = match body.get("next_cursor") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(cursor)) => cursor.clone(),
        Some(_) => return Err(unreadable("next_cursor is not a string")),
    };
    let has_more = match body.get("has_more") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(more)) => *more,
        Some(Value::Number(n)) => n.as_i64() != Some(0),
        Some(_) => return Err(unreadable("has_more is not a number")),
    };
    let msg_list = match body.get("msg_list") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.clone(),
        Some(_) => return Err(unreadable("msg_list is not a list")),
    };
    if has_more && next_cursor.is_empty() {
        return Err(unreadable("has_more without a next_cursor"));
    }
    Ok(SyncPage {
        next_cursor,
        has_more,
        msg_list,
    })
}

/// A fake of both platforms' API servers on a loopback port, for the tests
/// of this module, [`crate::outbound`] and [`crate::media`].
#[cfg(test)]
pub(crate) mod fake {
    use std::{
        collections::{HashMap, HashSet, VecDeque},
        sync::{
            Arc, Mutex,
            atomic::{AtomicU64, AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use axum::{
        body::Body,
        extract::{FromRequest, Multipart, Request, State},
        http::{StatusCode, header},
        response::{IntoResponse, Response},
    };
    use omni_connector::{Secret, SecretRef};
    use serde_json::{Value, json};

    use super::{ApiClient, Credentials};

    pub(crate) const APP_ID: &str = "wx0123456789abcdef";
    pub(crate) const APP_SECRET: &str = "app-s3cret-value";
    pub(crate) const CORP_ID: &str = "ww0123456789";
    pub(crate) const CORP_SECRET: &str = "corp-s3cret-value";

    /// A scripted answer.
    #[derive(Debug, Clone)]
    pub(crate) enum Reply {
        Json(Value),
        Status(u16),
        File {
            content_type: String,
            disposition: bool,
            bytes: Vec<u8>,
        },
    }

    /// One request the fake received.
    #[derive(Debug, Clone)]
    pub(crate) struct Seen {
        pub(crate) path: String,
        pub(crate) query: HashMap<String, String>,
        pub(crate) json: Option<Value>,
        /// For uploads: (field name, file name, content type, bytes).
        pub(crate) upload: Option<(String, String, String, Vec<u8>)>,
    }

    #[derive(Debug, Default)]
    pub(crate) struct Fake {
        pub(crate) base: String,
        token_calls: AtomicUsize,
        issued: AtomicUsize,
        uploads: AtomicUsize,
        pub(crate) expires_in: AtomicU64,
        pub(crate) token_delay_ms: AtomicU64,
        /// Answer token requests with this errcode.
        pub(crate) token_errcode: Mutex<Option<i64>>,
        valid: Mutex<HashSet<String>>,
        scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
        media: Mutex<HashMap<String, Reply>>,
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
                expires_in: AtomicU64::new(7200),
                ..Fake::default()
            });
            let app = axum::Router::new()
                .fallback(handle)
                .with_state(fake.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            fake
        }

        pub(crate) fn oa_client(&self) -> ApiClient {
            let credentials = Credentials::OfficialAccount {
                app_id: APP_ID.into(),
                app_secret: secret(APP_SECRET),
            };
            ApiClient::new(&self.base, credentials, Duration::from_secs(5)).unwrap()
        }

        pub(crate) fn wecom_client(&self) -> ApiClient {
            let credentials = Credentials::WeCom {
                corp_id: CORP_ID.into(),
                secret: secret(CORP_SECRET),
            };
            ApiClient::new(&self.base, credentials, Duration::from_secs(5)).unwrap()
        }

        pub(crate) fn token_calls(&self) -> usize {
            self.token_calls.load(Ordering::SeqCst)
        }

        /// Every token issued so far stops working.
        pub(crate) fn revoke_tokens(&self) {
            lock(&self.valid).clear();
        }

        /// The next answers of `path` (after them, the default).
        pub(crate) fn script(&self, path: &str, replies: Vec<Reply>) {
            lock(&self.scripts)
                .entry(path.to_owned())
                .or_default()
                .extend(replies);
        }

        pub(crate) fn add_media(&self, media_id: &str, reply: Reply) {
            lock(&self.media).insert(media_id.to_owned(), reply);
        }

        /// The requests to `path`, in order.
        pub(crate) fn seen(&self, path: &str) -> Vec<Seen> {
            lock(&self.seen)
                .iter()
                .filter(|s| s.path == path)
                .cloned()
                .collect()
        }

        /// Every request's path, in order (token requests left out).
        pub(crate) fn calls(&self) -> Vec<String> {
            lock(&self.seen)
                .iter()
                .map(|s| s.path.clone())
                .filter(|p| !p.ends_with("token"))
                .collect()
        }

        fn issue(&self) -> Reply {
            if let Some(errcode) = *lock(&self.token_errcode) {
                return Reply::Json(json!({"errcode": errcode, "errmsg": "invalid credential"}));
            }
            let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("TOKEN-{n}");
            lock(&self.valid).insert(token.clone());
            Reply::Json(json!({
                "access_token": token,
                "expires_in": self.expires_in.load(Ordering::SeqCst),
            }))
        }
    }

    /// A resolved secret with `value` (secrets only come from files or the
    /// environment).
    pub(crate) fn secret(value: &str) -> Secret {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), value).unwrap();
        SecretRef::File(file.path().to_owned()).resolve().unwrap()
    }

    fn respond(reply: Reply) -> Response {
        match reply {
            Reply::Json(value) => axum::Json(value).into_response(),
            Reply::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
            Reply::File {
                content_type,
                disposition,
                bytes,
            } => {
                let mut response = Response::new(Body::from(bytes));
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
                if disposition {
                    headers.insert(
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"f.bin\"".parse().unwrap(),
                    );
                }
                response
            }
        }
    }

    async fn handle(State(fake): State<Arc<Fake>>, request: Request) -> Response {
        let path = request.uri().path().to_owned();
        let query: HashMap<String, String> =
            reqwest::Url::parse(&format!("http://fake{}", request.uri()))
                .unwrap()
                .query_pairs()
                .into_owned()
                .collect();
        let mut seen = Seen {
            path: path.clone(),
            query: query.clone(),
            json: None,
            upload: None,
        };
        if path == "/cgi-bin/media/upload" {
            let mut form = Multipart::from_request(request, &()).await.unwrap();
            if let Some(field) = form.next_field().await.unwrap() {
                let name = field.name().unwrap_or_default().to_owned();
                let file_name = field.file_name().unwrap_or_default().to_owned();
                let content_type = field.content_type().unwrap_or_default().to_owned();
                let bytes = field.bytes().await.unwrap().to_vec();
                seen.upload = Some((name, file_name, content_type, bytes));
            }
        } else {
            let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .unwrap();
            seen.json = serde_json::from_slice(&body).ok();
        }
        lock(&fake.seen).push(seen);

        let q = |name: &str| query.get(name).map(String::as_str);
        match path.as_str() {
            "/cgi-bin/token" => {
                fake.token_calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(
                    fake.token_delay_ms.load(Ordering::SeqCst),
                ))
                .await;
                if q("grant_type") != Some("client_credential")
                    || q("appid") != Some(APP_ID)
                    || q("secret") != Some(APP_SECRET)
                {
                    return respond(Reply::Json(
                        json!({"errcode": 40125, "errmsg": "invalid appsecret"}),
                    ));
                }
                return respond(fake.issue());
            }
            "/cgi-bin/gettoken" => {
                fake.token_calls.fetch_add(1, Ordering::SeqCst);
                if q("corpid") != Some(CORP_ID) || q("corpsecret") != Some(CORP_SECRET) {
                    return respond(Reply::Json(
                        json!({"errcode": 40001, "errmsg": "invalid secret"}),
                    ));
                }
                let mut issued = fake.issue();
                if let Reply::Json(Value::Object(map)) = &mut issued {
                    map.insert("errcode".into(), 0.into());
                    map.insert("errmsg".into(), "ok".into());
                }
                return respond(issued);
            }
            _ => {}
        }
        let token_ok = path.starts_with("/video/")
            || q("access_token").is_some_and(|t| lock(&fake.valid).contains(t));
        if !token_ok {
            return respond(Reply::Json(
                json!({"errcode": 42001, "errmsg": "access_token expired"}),
            ));
        }
        let scripted = lock(&fake.scripts)
            .get_mut(&path)
            .and_then(VecDeque::pop_front);
        if let Some(reply) = scripted {
            return respond(reply);
        }
        let reply = match path.as_str() {
            "/cgi-bin/media/upload" => {
                let n = fake.uploads.fetch_add(1, Ordering::SeqCst) + 1;
                Reply::Json(json!({
                    "type": q("type").unwrap_or_default(),
                    "media_id": format!("MEDIA-{n}"),
                    "created_at": 1_700_000_000,
                }))
            }
            "/cgi-bin/media/get" => lock(&fake.media)
                .get(q("media_id").unwrap_or_default())
                .cloned()
                .unwrap_or_else(|| {
                    Reply::Json(json!({"errcode": 40007, "errmsg": "invalid media_id"}))
                }),
            "/cgi-bin/kf/send_msg" | "/cgi-bin/kf/send_msg_on_event" => {
                let msgid = lock(&fake.seen)
                    .last()
                    .and_then(|s| s.json.as_ref())
                    .and_then(|j| j.get("msgid").cloned())
                    .unwrap_or_else(|| "GENERATED".into());
                Reply::Json(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
            }
            _ => Reply::Json(json!({"errcode": 0, "errmsg": "ok"})),
        };
        respond(reply)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use serde_json::json;

    use super::{
        fake::{APP_SECRET, CORP_SECRET, Fake, Reply},
        *,
    };

    const SEND: &str = "/cgi-bin/message/custom/send";

    fn send_body() -> Value {
        json!({"touser": "o1", "msgtype": "text", "text": {"content": "hi"}})
    }

    #[tokio::test]
    async fn the_token_is_cached() {
        let fake = Fake::start().await;
        let api = fake.oa_client();
        for _ in 0..3 {
            api.post_json(
                "message/custom/send",
                "cgi-bin/message/custom/send",
                &send_body(),
            )
            .await
            .unwrap();
        }
        assert_eq!(fake.token_calls(), 1);
        let sends = fake.seen(SEND);
        assert_eq!(sends.len(), 3);
        assert_eq!(sends[0].query["access_token"], "TOKEN-1");
        assert_eq!(sends[0].json.as_ref().unwrap(), &send_body());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fifty_concurrent_callers_make_one_token_request() {
        let fake = Fake::start().await;
        fake.token_delay_ms.store(200, Ordering::SeqCst);
        let api = fake.oa_client();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let api = api.clone();
            tasks.spawn(async move { api.access_token().await });
        }
        while let Some(token) = tasks.join_next().await {
            assert_eq!(&*token.unwrap().unwrap(), "TOKEN-1");
        }
        assert_eq!(fake.token_calls(), 1);
    }

    #[tokio::test]
    async fn clients_of_one_app_share_its_token_until_none_is_left() {
        let fake = Fake::start().await;
        // Two channels of one account (or a channel and its reloaded
        // successor): one token between them.
        let (first, second) = (fake.oa_client(), fake.oa_client());
        assert_eq!(&*first.access_token().await.unwrap(), "TOKEN-1");
        assert_eq!(&*second.access_token().await.unwrap(), "TOKEN-1");
        assert_eq!(fake.token_calls(), 1);
        drop((first, second));
        // Once no client is left, the next one starts afresh.
        assert_eq!(&*fake.oa_client().access_token().await.unwrap(), "TOKEN-2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_a_failed_fetch() {
        let fake = Fake::start().await;
        fake.token_delay_ms.store(200, Ordering::SeqCst);
        *fake.token_errcode.lock().unwrap() = Some(40125);
        let api = fake.oa_client();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let api = api.clone();
            tasks.spawn(async move { api.access_token().await });
        }
        while let Some(result) = tasks.join_next().await {
            let error = result.unwrap().unwrap_err();
            assert_eq!(error.errcode(), Some(40125));
            assert!(!error.is_temporary());
        }
        assert_eq!(fake.token_calls(), 1);
        // A later caller tries again.
        *fake.token_errcode.lock().unwrap() = None;
        assert_eq!(&*api.access_token().await.unwrap(), "TOKEN-1");
        assert_eq!(fake.token_calls(), 2);
    }

    #[tokio::test]
    async fn an_expiring_token_is_replaced() {
        let fake = Fake::start().await;
        fake.expires_in.store(2, Ordering::SeqCst);
        let api = fake.oa_client();
        assert_eq!(&*api.access_token().await.unwrap(), "TOKEN-1");
        assert_eq!(&*api.access_token().await.unwrap(), "TOKEN-1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(&*api.access_token().await.unwrap(), "TOKEN-2");
        assert_eq!(fake.token_calls(), 2);
    }

    #[test]
    fn tokens_are_replaced_five_minutes_early_but_not_before_half_their_life() {
        let now = Instant::now();
        assert_eq!(refresh_at(now, 7200) - now, Duration::from_secs(6900));
        assert_eq!(refresh_at(now, 400) - now, Duration::from_secs(200));
        assert_eq!(refresh_at(now, 0), now);
        let (_, expires_in) = parse_token(
            "token",
            &json!({"access_token": "T", "expires_in": u64::MAX}),
        )
        .unwrap();
        assert_eq!(expires_in, MAX_EXPIRES_IN);
        assert!(parse_token("token", &json!({"access_token": "a b"})).is_err());
        assert!(parse_token("token", &json!({"expires_in": 7200})).is_err());
    }

    #[tokio::test]
    async fn an_invalid_token_is_refreshed_once_and_the_call_retried_once() {
        let fake = Fake::start().await;
        let api = fake.oa_client();
        api.access_token().await.unwrap();
        fake.revoke_tokens();
        api.post_json(
            "message/custom/send",
            "cgi-bin/message/custom/send",
            &send_body(),
        )
        .await
        .unwrap();
        assert_eq!(fake.token_calls(), 2);
        let sends = fake.seen(SEND);
        assert_eq!(sends.len(), 2);
        assert_eq!(sends[0].query["access_token"], "TOKEN-1");
        assert_eq!(sends[1].query["access_token"], "TOKEN-2");

        // Refused again: no loop, the error is reported.
        fake.script(
            SEND,
            vec![
                Reply::Json(json!({"errcode": 40001, "errmsg": "invalid credential"})),
                Reply::Json(json!({"errcode": 40001, "errmsg": "invalid credential"})),
            ],
        );
        let error = api
            .post_json(
                "message/custom/send",
                "cgi-bin/message/custom/send",
                &send_body(),
            )
            .await
            .unwrap_err();
        assert_eq!(error.errcode(), Some(40001));
        assert!(error.is_temporary());
        assert_eq!(fake.token_calls(), 3);
        assert_eq!(fake.seen(SEND).len(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn callers_refused_the_same_token_refresh_it_once() {
        let fake = Fake::start().await;
        let api = fake.oa_client();
        api.access_token().await.unwrap();
        fake.revoke_tokens();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let api = api.clone();
            tasks.spawn(async move {
                api.post_json(
                    "message/custom/send",
                    "cgi-bin/message/custom/send",
                    &send_body(),
                )
                .await
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
        assert_eq!(fake.token_calls(), 2);
    }

    #[tokio::test]
    async fn wecom_tokens_and_sync_msg() {
        let fake = Fake::start().await;
        fake.script(
            "/cgi-bin/kf/sync_msg",
            vec![Reply::Json(json!({
                "errcode": 0,
                "errmsg": "ok",
                "next_cursor": "4gw7MepFLfgF2VC5npN",
                "has_more": 1,
                "msg_list": [{"msgid": "from_msgid_4622416642169452483", "msgtype": "text"}],
            }))],
        );
        let api = fake.wecom_client();
        let page = api
            .sync_msg(&SyncRequest {
                cursor: Some("CURSOR".into()),
                token: Some("ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR".into()),
                limit: 1000,
                open_kfid: "wkxxxxxxxxxxxxxxxxxx".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            page,
            SyncPage {
                next_cursor: "4gw7MepFLfgF2VC5npN".into(),
                has_more: true,
                msg_list: vec![
                    json!({"msgid": "from_msgid_4622416642169452483", "msgtype": "text"})
                ],
            }
        );
        let seen = fake.seen("/cgi-bin/kf/sync_msg");
        assert_eq!(
            seen[0].json.as_ref().unwrap(),
            &json!({
                "cursor": "CURSOR",
                "token": "ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR",
                "limit": 1000,
                "voice_format": 0,
                "open_kfid": "wkxxxxxxxxxxxxxxxxxx",
            })
        );
        assert_eq!(
            fake.seen("/cgi-bin/gettoken")[0].query["corpsecret"],
            CORP_SECRET
        );

        // The first call has neither cursor nor token; the last page says so.
        let page = api
            .sync_msg(&SyncRequest {
                limit: 0,
                open_kfid: "wk1".into(),
                ..SyncRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(page.next_cursor, "");
        assert!(!page.has_more);
        assert!(page.msg_list.is_empty());
        assert_eq!(
            fake.seen("/cgi-bin/kf/sync_msg")[1].json.as_ref().unwrap(),
            &json!({"limit": 1000, "voice_format": 0, "open_kfid": "wk1"})
        );
    }

    #[test]
    fn sync_pages_are_checked() {
        let page = parse_sync_page(
            "kf/sync_msg",
            &json!({"next_cursor": "c", "has_more": 0, "msg_list": []}),
        )
        .unwrap();
        assert!(!page.has_more);
        for bad in [
            json!({"next_cursor": 5}),
            json!({"has_more": "yes"}),
            json!({"msg_list": {}}),
            json!({"has_more": 1}),
        ] {
            assert!(parse_sync_page("kf/sync_msg", &bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn http_statuses_are_classified() {
        let fake = Fake::start().await;
        let api = fake.oa_client();
        fake.script(
            SEND,
            vec![Reply::Status(502), Reply::Status(429), Reply::Status(404)],
        );
        for (status, temporary) in [(502, true), (429, true), (404, false)] {
            let error = api
                .post_json(
                    "message/custom/send",
                    "cgi-bin/message/custom/send",
                    &send_body(),
                )
                .await
                .unwrap_err();
            assert_eq!(
                error,
                ApiError::Http {
                    api: "message/custom/send",
                    status
                }
            );
            assert_eq!(error.is_temporary(), temporary);
        }
        fake.script(
            SEND,
            vec![Reply::Json(json!({"errcode": -1, "errmsg": "system busy"}))],
        );
        let error = api
            .post_json(
                "message/custom/send",
                "cgi-bin/message/custom/send",
                &send_body(),
            )
            .await
            .unwrap_err();
        assert!(error.is_temporary());
        assert_eq!(error.errcode(), Some(-1));
    }

    #[tokio::test]
    async fn errors_and_debug_output_never_show_secrets_or_tokens() {
        // A port nothing listens on.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let credentials = Credentials::OfficialAccount {
            app_id: "wx0123456789abcdef".into(),
            app_secret: fake::secret(APP_SECRET),
        };
        let api = ApiClient::new(
            &format!("http://127.0.0.1:{port}"),
            credentials,
            Duration::from_secs(2),
        )
        .unwrap();
        let error = api.access_token().await.unwrap_err();
        assert!(error.is_temporary(), "{error:?}");
        for shown in [error.to_string(), format!("{error:?}"), format!("{api:?}")] {
            assert!(!shown.contains(APP_SECRET), "{shown}");
            assert!(!shown.contains("secret="), "{shown}");
        }

        let fake = Fake::start().await;
        let api = fake.oa_client();
        api.access_token().await.unwrap();
        let shown = format!("{api:?}");
        assert!(
            !shown.contains(APP_SECRET) && !shown.contains("TOKEN-1"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_wrong_secret_is_not_temporary() {
        let fake = Fake::start().await;
        let credentials = Credentials::WeCom {
            corp_id: super::fake::CORP_ID.into(),
            secret: fake::secret("wrong"),
        };
        let api = ApiClient::new(&fake.base, credentials, Duration::from_secs(2)).unwrap();
        let error = api.access_token().await.unwrap_err();
        assert_eq!(error.errcode(), Some(40001));
        assert!(!error.is_temporary(), "{error}");
    }

    #[test]
    fn bad_api_bases_are_refused() {
        for base in ["ftp://example.com", "not a url", "http://example.com/?a=b"] {
            let credentials = Credentials::WeCom {
                corp_id: "ww1".into(),
                secret: fake::secret("x"),
            };
            assert!(ApiClient::new(base, credentials, Duration::from_secs(1)).is_err());
        }
    }

    #[tokio::test]
    async fn media_get_returns_the_file_and_its_type() {
        let fake = Fake::start().await;
        fake.add_media(
            "MEDIA_ID",
            Reply::File {
                content_type: "image/jpeg".into(),
                disposition: true,
                bytes: b"\xff\xd8jpeg".to_vec(),
            },
        );
        let api = fake.oa_client();
        let fetched = api.media_get("MEDIA_ID", 1000).await.unwrap();
        assert_eq!(&fetched.content[..], b"\xff\xd8jpeg");
        assert_eq!(fetched.media_type, "image/jpeg");
        assert_eq!(
            fake.seen("/cgi-bin/media/get")[0].query["media_id"],
            "MEDIA_ID"
        );

        // A text file (with its Content-Disposition) is a file even if it
        // reads as JSON.
        fake.add_media(
            "TEXT",
            Reply::File {
                content_type: "text/plain".into(),
                disposition: true,
                bytes: br#"{"errcode": 1}"#.to_vec(),
            },
        );
        let fetched = api.media_get("TEXT", 1000).await.unwrap();
        assert_eq!(&fetched.content[..], br#"{"errcode": 1}"#);
    }

    #[tokio::test]
    async fn media_get_errors() {
        let fake = Fake::start().await;
        let api = fake.wecom_client();
        // Unknown media: the JSON error.
        let error = api.media_get("GONE", 1000).await.unwrap_err();
        assert!(
            matches!(&error, FetchError::Permanent(m) if m.contains("40007")),
            "{error:?}"
        );
        // An error labelled text/plain, without a disposition.
        fake.add_media(
            "BUSY",
            Reply::File {
                content_type: "text/plain".into(),
                disposition: false,
                bytes: br#"{"errcode":-1,"errmsg":"system busy"}"#.to_vec(),
            },
        );
        let error = api.media_get("BUSY", 1000).await.unwrap_err();
        assert!(
            matches!(&error, FetchError::Temporary(m) if m.contains("-1")),
            "{error:?}"
        );
        // Too large.
        fake.add_media(
            "BIG",
            Reply::File {
                content_type: "video/mp4".into(),
                disposition: true,
                bytes: vec![0; 5000],
            },
        );
        let error = api.media_get("BIG", 4999).await.unwrap_err();
        assert!(
            matches!(&error, FetchError::Permanent(m) if m.contains("larger than 4999")),
            "{error:?}"
        );
        assert!(api.media_get("BIG", 5000).await.is_ok());
        // 5xx.
        fake.script("/cgi-bin/media/get", vec![Reply::Status(503)]);
        assert!(matches!(
            api.media_get("BIG", 5000).await,
            Err(FetchError::Temporary(_))
        ));
        // Not a media id.
        assert!(matches!(
            api.media_get("a b", 5000).await,
            Err(FetchError::Permanent(_))
        ));
    }

    #[tokio::test]
    async fn media_get_refreshes_an_invalid_token_once() {
        let fake = Fake::start().await;
        fake.add_media(
            "M",
            Reply::File {
                content_type: "audio/amr".into(),
                disposition: true,
                bytes: b"#!AMR".to_vec(),
            },
        );
        let api = fake.wecom_client();
        api.access_token().await.unwrap();
        fake.revoke_tokens();
        let fetched = api.media_get("M", 100).await.unwrap();
        assert_eq!(&fetched.content[..], b"#!AMR");
        assert_eq!(fake.token_calls(), 2);
        assert_eq!(fake.seen("/cgi-bin/media/get").len(), 2);
    }

    #[tokio::test]
    async fn media_get_follows_an_official_account_video_url() {
        let fake = Fake::start().await;
        fake.add_media(
            "VIDEO",
            Reply::Json(json!({"video_url": format!("{}/video/file.mp4", fake.base)})),
        );
        fake.script(
            "/video/file.mp4",
            vec![Reply::File {
                content_type: "video/mp4".into(),
                disposition: false,
                bytes: b"mp4data".to_vec(),
            }],
        );
        let api = fake.oa_client();
        let fetched = api.media_get("VIDEO", 100).await.unwrap();
        assert_eq!(&fetched.content[..], b"mp4data");
        assert_eq!(fetched.media_type, "video/mp4");
        // The token is not sent there.
        let seen = fake.seen("/video/file.mp4");
        assert_eq!(seen.len(), 1);
        assert!(seen[0].query.is_empty());

        // A link that answers JSON is no file.
        fake.script("/video/file.mp4", vec![Reply::Json(json!({"errcode": 0}))]);
        assert!(matches!(
            api.media_get("VIDEO", 100).await,
            Err(FetchError::Permanent(_))
        ));
    }

    #[tokio::test]
    async fn media_upload_sends_one_multipart_field() {
        let fake = Fake::start().await;
        let api = fake.wecom_client();
        let media_id = api
            .media_upload(
                "image",
                "photo.png",
                "image/png",
                Bytes::from_static(b"\x89PNG"),
            )
            .await
            .unwrap();
        assert_eq!(media_id, "MEDIA-1");
        let seen = fake.seen("/cgi-bin/media/upload");
        assert_eq!(seen[0].query["type"], "image");
        assert_eq!(
            seen[0].upload.as_ref().unwrap(),
            &(
                "media".to_owned(),
                "photo.png".to_owned(),
                "image/png".to_owned(),
                b"\x89PNG".to_vec()
            )
        );
        let error = api
            .media_upload("image", "x", "not a type", Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(error, ApiError::Unreadable { .. }));
    }

    #[tokio::test]
    async fn user_unionid_reads_user_info() {
        let fake = Fake::start().await;
        fake.script(
            "/cgi-bin/user/info",
            vec![
                Reply::Json(json!({"subscribe": 1, "openid": "o1", "unionid": "u1"})),
                Reply::Json(json!({"subscribe": 0, "openid": "o2"})),
            ],
        );
        let api = fake.oa_client();
        assert_eq!(api.user_unionid("o1").await.unwrap().as_deref(), Some("u1"));
        assert_eq!(api.user_unionid("o2").await.unwrap(), None);
        let seen = fake.seen("/cgi-bin/user/info");
        assert_eq!(seen[0].query["openid"], "o1");
        assert_eq!(seen[0].query["lang"], "zh_CN");
    }

    #[tokio::test]
    async fn oversized_or_garbled_answers_are_unreadable() {
        let fake = Fake::start().await;
        let api = fake.oa_client();
        fake.script(
            SEND,
            vec![
                Reply::File {
                    content_type: "application/json".into(),
                    disposition: false,
                    bytes: vec![b' '; MAX_JSON_BYTES + 1],
                },
                Reply::File {
                    content_type: "text/html".into(),
                    disposition: false,
                    bytes: b"<html>".to_vec(),
                },
            ],
        );
        for _ in 0..2 {
            let error = api
                .post_json(
                    "message/custom/send",
                    "cgi-bin/message/custom/send",
                    &send_body(),
                )
                .await
                .unwrap_err();
            assert!(matches!(error, ApiError::Unreadable { .. }), "{error:?}");
        }
    }
}
