//! Meta's platforms as the daemon sees them, for end-to-end tests of the
//! `whatsapp`, `messenger` and `instagram` channels: the webhooks Meta
//! posts (signed with `X-Hub-Signature-256`), its URL check, and a local
//! server playing the Graph API the channels call (media lookup and
//! download, WhatsApp's `messages` and `media`, the Send API).
//!
//! The signature is written here from Meta's published scheme with the
//! `hmac` and `sha2` crates, independently of `omni-meta`: a test that
//! checked the channel with the channel's own code would only prove it
//! agrees with itself. The payloads follow the samples of Meta's webhook
//! references (WhatsApp Cloud API `messages` field, the Messenger
//! Platform's `messages` event, Instagram messaging).
//!
//! - [`sign`], [`signed_post`], [`verification_url`]: what Meta sends.
//! - [`whatsapp_text`], [`whatsapp_image`], [`whatsapp_status`],
//!   [`messenger_text`], [`instagram_text`]: one update each, as a whole
//!   POST body; [`Batch`] combines them into the multi-entry,
//!   multi-change bodies Meta batches.
//! - [`FakeGraph`]: `graph.facebook.com` on loopback, with programmable
//!   failures and a record of every request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    Extension, Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State},
    http::{HeaderMap, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use crate::wechat::unix_now;

/// The WhatsApp Business Account id in the `entry[].id` of WhatsApp
/// webhooks built here (the channels key on the phone number id).
pub const WABA_ID: &str = "102290129340398";
/// The business's display phone number in `metadata`.
pub const DISPLAY_PHONE_NUMBER: &str = "15550783881";
/// The header Meta signs each POST in.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Largest body the fake reads: far above anything the channels send.
const MAX_FAKE_BODY: usize = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Signatures and requests to the daemon
// ---------------------------------------------------------------------------

/// The `X-Hub-Signature-256` value of `body`: `sha256=` and the lowercase
/// hex HMAC-SHA256 of the raw bytes, keyed with the app secret.
pub fn sign(app_secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key size");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Lowercase hex SHA-256, as WhatsApp gives a file's `sha256` and the
/// attachment store names files.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The query of Meta's URL check (`hub.mode=subscribe`, the token, the
/// challenge), form-encoded.
pub fn verification_query(verify_token: &str, challenge: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("hub.mode", "subscribe")
        .append_pair("hub.verify_token", verify_token)
        .append_pair("hub.challenge", challenge)
        .finish()
}

/// `endpoint?hub.mode=subscribe&hub.verify_token=..&hub.challenge=..`; the
/// right answer is 200 with the challenge as the body.
pub fn verification_url(endpoint: &str, verify_token: &str, challenge: &str) -> String {
    format!("{endpoint}?{}", verification_query(verify_token, challenge))
}

/// A POST of `body` to `url` as Meta makes it: JSON, signed with
/// `app_secret`.
pub fn signed_post(
    client: &reqwest::Client,
    url: &str,
    app_secret: &str,
    body: impl Into<Vec<u8>>,
) -> reqwest::RequestBuilder {
    let body = body.into();
    let signature = sign(app_secret, &body);
    post_with_signature(client, url, Some(&signature), body)
}

/// A POST of `body` with `signature` as the header's value as given
/// (forged, malformed), or without the header.
pub fn post_with_signature(
    client: &reqwest::Client,
    url: &str,
    signature: Option<&str>,
    body: impl Into<Vec<u8>>,
) -> reqwest::RequestBuilder {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "facebookexternalua");
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    request.body(body.into())
}

// ---------------------------------------------------------------------------
// Webhook payloads
// ---------------------------------------------------------------------------

/// One WhatsApp `messages` change for `phone_number_id` carrying `value`'s
/// fields beside the metadata, in a whole body.
fn whatsapp_body(phone_number_id: &str, value: Value) -> Value {
    let mut full = json!({
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": DISPLAY_PHONE_NUMBER,
            "phone_number_id": phone_number_id,
        },
    });
    if let (Some(full), Value::Object(fields)) = (full.as_object_mut(), value) {
        full.extend(fields);
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": WABA_ID,
            "changes": [{ "value": full, "field": "messages" }],
        }],
    })
}

fn contact(wa_id: &str, name: &str) -> Value {
    json!({ "profile": { "name": name }, "wa_id": wa_id })
}

/// A customer's text message (WhatsApp Cloud API, `messages` webhook):
/// `timestamp` is the customer's send time in seconds, sent as a string.
pub fn whatsapp_text(
    phone_number_id: &str,
    wa_id: &str,
    name: &str,
    wamid: &str,
    text: &str,
    timestamp: u64,
) -> Value {
    whatsapp_body(
        phone_number_id,
        json!({
            "contacts": [contact(wa_id, name)],
            "messages": [{
                "from": wa_id,
                "id": wamid,
                "timestamp": timestamp.to_string(),
                "text": { "body": text },
                "type": "text",
            }],
        }),
    )
}

/// A file a WhatsApp media message names: its media id (what the Graph
/// API looks it up by), type and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub id: String,
    pub mime_type: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    pub caption: Option<String>,
}

impl MediaRef {
    /// The reference to `bytes` under `id`.
    pub fn of(id: &str, mime_type: &str, bytes: &[u8]) -> Self {
        Self {
            id: id.to_owned(),
            mime_type: mime_type.to_owned(),
            sha256: sha256_hex(bytes),
            caption: None,
        }
    }

    pub fn with_caption(mut self, caption: &str) -> Self {
        self.caption = Some(caption.to_owned());
        self
    }
}

/// A customer's image: the `image` object names the media id; the file
/// itself comes from the Graph API ([`FakeGraph::add_media`]).
pub fn whatsapp_image(
    phone_number_id: &str,
    wa_id: &str,
    name: &str,
    wamid: &str,
    image: &MediaRef,
    timestamp: u64,
) -> Value {
    let mut object = json!({
        "mime_type": image.mime_type,
        "sha256": image.sha256,
        "id": image.id,
    });
    if let Some(caption) = &image.caption {
        object["caption"] = json!(caption);
    }
    whatsapp_body(
        phone_number_id,
        json!({
            "contacts": [contact(wa_id, name)],
            "messages": [{
                "from": wa_id,
                "id": wamid,
                "timestamp": timestamp.to_string(),
                "type": "image",
                "image": object,
            }],
        }),
    )
}

/// A status update of a message the business sent (`sent`, `delivered`,
/// `read`, `failed`), with the `biz_opaque_callback_data` the send carried.
/// A `failed` status gets an `errors` array (131026, undeliverable).
pub fn whatsapp_status(
    phone_number_id: &str,
    wamid: &str,
    recipient_id: &str,
    status: &str,
    timestamp: u64,
    biz_opaque_callback_data: Option<&str>,
) -> Value {
    let mut object = json!({
        "id": wamid,
        "status": status,
        "timestamp": timestamp.to_string(),
        "recipient_id": recipient_id,
    });
    if let Some(data) = biz_opaque_callback_data {
        object["biz_opaque_callback_data"] = json!(data);
    }
    if status == "failed" {
        object["errors"] = json!([{
            "code": 131026,
            "title": "Message undeliverable",
            "message": "Message undeliverable",
            "error_data": { "details": "Message Undeliverable." },
        }]);
    } else {
        object["conversation"] = json!({
            "id": "CONVERSATION_ID_7c4d1f",
            "origin": { "type": "service" },
        });
        object["pricing"] = json!({
            "billable": true,
            "pricing_model": "PMP",
            "category": "service",
        });
    }
    whatsapp_body(phone_number_id, json!({ "statuses": [object] }))
}

/// One `messaging[]` item in a Messenger or Instagram body.
fn messaging_body(object: &str, account_id: &str, item: Value, time_ms: u64) -> Value {
    json!({
        "object": object,
        "entry": [{ "id": account_id, "time": time_ms, "messaging": [item] }],
    })
}

/// A customer's Messenger text to a Page (`object: "page"`): `psid` is
/// the page-scoped sender id, `ts_ms` milliseconds since the epoch.
pub fn messenger_text(page_id: &str, psid: &str, mid: &str, text: &str, ts_ms: u64) -> Value {
    messaging_body(
        "page",
        page_id,
        json!({
            "sender": { "id": psid },
            "recipient": { "id": page_id },
            "timestamp": ts_ms,
            "message": { "mid": mid, "text": text },
        }),
        ts_ms,
    )
}

/// A customer's Instagram Direct text to a professional account
/// (`object: "instagram"`): `igsid` is the Instagram-scoped sender id.
pub fn instagram_text(account_id: &str, igsid: &str, mid: &str, text: &str, ts_ms: u64) -> Value {
    messaging_body(
        "instagram",
        account_id,
        json!({
            "sender": { "id": igsid },
            "recipient": { "id": account_id },
            "timestamp": ts_ms,
            "message": { "mid": mid, "text": text },
        }),
        ts_ms,
    )
}

/// Several updates in one POST body, the way Meta batches them: whole
/// bodies of the builders above merged as entries of their own, as
/// changes (or `messaging` items) of the last entry, or as messages and
/// statuses of the last change.
///
/// ```
/// # use omni_testkit::meta::*;
/// let body = Batch::new(whatsapp_text("1065", "15551234567", "Ana", "wamid.A", "hi", 1))
///     .into_change(whatsapp_text("1065", "15557654321", "Bo", "wamid.B", "yo", 2))
///     .into_entry(whatsapp_status("1065", "wamid.C", "15551234567", "read", 3, None))
///     .push_entry(whatsapp_text("1065", "15551234567", "Ana", "wamid.D", "?", 4))
///     .build();
/// assert_eq!(body["entry"].as_array().unwrap().len(), 2);
/// assert_eq!(body["entry"][0]["changes"].as_array().unwrap().len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct Batch {
    body: Value,
}

impl Batch {
    /// Starts from one whole body.
    pub fn new(first: Value) -> Self {
        Self { body: first }
    }

    fn entries(&mut self) -> &mut Vec<Value> {
        if !self.body["entry"].is_array() {
            self.body["entry"] = json!([]);
        }
        self.body["entry"]
            .as_array_mut()
            .expect("made an array above")
    }

    fn last_entry(&mut self) -> &mut Value {
        let entries = self.entries();
        if entries.is_empty() {
            entries.push(json!({ "id": WABA_ID }));
        }
        entries.last_mut().expect("not empty")
    }

    /// Adds `body`'s entries as entries of their own.
    pub fn push_entry(mut self, body: Value) -> Self {
        let more = array(&body["entry"]);
        self.entries().extend(more);
        self
    }

    /// Adds the changes and `messaging` items of `body`'s entries to the
    /// last entry.
    pub fn into_entry(mut self, body: Value) -> Self {
        for entry in array(&body["entry"]) {
            for list in ["changes", "messaging"] {
                let items = array(&entry[list]);
                if items.is_empty() {
                    continue;
                }
                let last = self.last_entry();
                if !last[list].is_array() {
                    last[list] = json!([]);
                }
                if let Some(target) = last[list].as_array_mut() {
                    target.extend(items);
                }
            }
        }
        self
    }

    /// Adds the messages, statuses and contacts of `body`'s WhatsApp
    /// changes to the last change of the last entry (a contact already
    /// there is not repeated). Messenger and Instagram have no changes:
    /// their items go to the last entry as with [`Self::into_entry`].
    pub fn into_change(mut self, body: Value) -> Self {
        for entry in array(&body["entry"]) {
            if entry["changes"].is_null() {
                self = self.into_entry(json!({ "entry": [entry] }));
                continue;
            }
            for change in array(&entry["changes"]) {
                let last = self.last_entry();
                if !last["changes"].is_array() || array(&last["changes"]).is_empty() {
                    last["changes"] = json!([change]);
                    continue;
                }
                let Some(target) = last["changes"]
                    .as_array_mut()
                    .and_then(|changes| changes.last_mut())
                else {
                    continue;
                };
                for list in ["contacts", "messages", "statuses"] {
                    for item in array(&change["value"][list]) {
                        if !target["value"][list].is_array() {
                            target["value"][list] = json!([]);
                        }
                        if let Some(items) = target["value"][list].as_array_mut()
                            && !(list == "contacts" && items.contains(&item))
                        {
                            items.push(item);
                        }
                    }
                }
            }
        }
        self
    }

    pub fn build(self) -> Value {
        self.body
    }

    /// The body's bytes, as posted (and signed).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.body.to_string().into_bytes()
    }
}

fn array(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

/// The error body of the Graph API:
/// `{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`.
pub fn graph_error(code: i64, error_subcode: Option<i64>, message: &str) -> Value {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": format!("A{:016x}", rand::random::<u64>()),
    });
    if let Some(subcode) = error_subcode {
        error["error_subcode"] = json!(subcode);
    }
    json!({ "error": error })
}

// ---------------------------------------------------------------------------
// The fake Graph API
// ---------------------------------------------------------------------------

/// An API of [`FakeGraph`] that can be told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /{version}/{media_id}`.
    MediaLookup,
    /// `GET /download/{media_id}` (the URL the lookup answers).
    Download,
    /// `POST /{version}/{phone_number_id}/messages`.
    WhatsappMessages,
    /// `POST /{version}/{phone_number_id}/media`.
    MediaUpload,
    /// `POST /{version}/me/messages` (Messenger and Instagram).
    SendApi,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
    /// Header names lowercase, values as text (lossy).
    pub headers: Vec<(String, String)>,
    pub body: RecordedBody,
    /// The status answered, once answered.
    pub status: Option<u16>,
}

impl Recorded {
    /// A header's value (first of its name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, when it was JSON.
    pub fn json(&self) -> Option<&Value> {
        match &self.body {
            RecordedBody::Json(value) => Some(value),
            _ => None,
        }
    }
}

/// A recorded request's body.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordedBody {
    Empty,
    Json(Value),
    /// The fields of a `multipart/form-data` body.
    Multipart(Vec<Part>),
    /// Anything else, as bytes.
    Raw(Vec<u8>),
}

/// One field of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// A WhatsApp `messages` call with a valid token.
#[derive(Debug, Clone)]
pub struct WhatsappSend {
    /// The phone number id of the path.
    pub phone_number_id: String,
    pub body: Value,
    /// The `wamid` answered, when it succeeded.
    pub wamid: Option<String>,
}

/// A Send API call (Messenger or Instagram) with a valid token.
#[derive(Debug, Clone)]
pub struct SendApiCall {
    /// `me`, or the Page or account id of the path.
    pub sender: String,
    pub body: Value,
    /// The `message_id` answered, when it succeeded.
    pub message_id: Option<String>,
}

/// A file uploaded through WhatsApp's `media` endpoint.
#[derive(Debug, Clone)]
pub struct Upload {
    pub phone_number_id: String,
    /// The media id answered.
    pub id: String,
    /// The `type` field (the file's MIME type).
    pub mime_type: String,
    pub file_name: Option<String>,
    /// The `file` part's own Content-Type.
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Failure {
    status: u16,
    body: Value,
    /// `None`: until told otherwise.
    remaining: Option<usize>,
}

#[derive(Debug, Clone)]
struct Media {
    mime_type: String,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Inner {
    tokens: Vec<String>,
    media: HashMap<String, Media>,
    requests: Vec<Recorded>,
    media_lookups: Vec<String>,
    downloads: Vec<String>,
    whatsapp_sends: Vec<WhatsappSend>,
    send_api_calls: Vec<SendApiCall>,
    uploads: Vec<Upload>,
    failures: HashMap<Endpoint, Failure>,
    next_id: u64,
}

impl Inner {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The programmed failure of `endpoint` for this call, if any.
    fn failure(&mut self, endpoint: Endpoint) -> Option<Response> {
        let failure = self.failures.get_mut(&endpoint)?;
        let answer = (failure.status, failure.body.clone());
        match &mut failure.remaining {
            None => {}
            Some(0) => {
                self.failures.remove(&endpoint);
                return None;
            }
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.failures.remove(&endpoint);
                }
            }
        }
        let status = StatusCode::from_u16(answer.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Some(json_response(status, &answer.1))
    }

    /// Whether the request carries a token the fake issued, as
    /// `Authorization: Bearer` or `?access_token=`.
    fn authorized(&self, headers: &HeaderMap, query: &HashMap<String, String>) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let token = bearer.or_else(|| query.get("access_token").map(String::as_str));
        token.is_some_and(|t| !t.is_empty() && self.tokens.iter().any(|known| known == t))
    }
}

type Shared = Arc<Mutex<Inner>>;
type Params = Query<HashMap<String, String>>;

/// Which record a request is (set by the recording middleware).
#[derive(Debug, Clone, Copy)]
struct RecordIndex(usize);

fn lock(inner: &Shared) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        value.to_string(),
    )
        .into_response()
}

/// Meta's answer to a missing or unknown token.
fn invalid_token() -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        &graph_error(
            190,
            None,
            "Invalid OAuth access token - Cannot parse access token",
        ),
    )
}

/// Meta's answer to a request it cannot use.
fn invalid_parameter(message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &graph_error(100, None, &format!("(#100) {message}")),
    )
}

/// The Graph API on one loopback port: WhatsApp media lookup and download,
/// `messages` and `media` of a phone number, and the Send API of Pages and
/// Instagram accounts. Requests need a token given to
/// [`FakeGraph::allow_token`].
#[derive(Debug, Clone)]
pub struct FakeGraph {
    base_url: String,
    inner: Shared,
}

impl FakeGraph {
    /// Listens on a free loopback port, on the caller's runtime.
    pub async fn start() -> Self {
        let inner = Shared::default();
        let app = Router::new()
            .route("/download/{media_id}", get(download))
            .route("/{version}/{id}", get(media_lookup))
            .route("/{version}/{id}/messages", post(messages))
            .route("/{version}/{id}/media", post(media_upload))
            .fallback(unknown)
            .layer(axum::middleware::from_fn_with_state(inner.clone(), record))
            .layer(DefaultBodyLimit::max(MAX_FAKE_BODY))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base_url = format!("http://{}", listener.local_addr().expect("local addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base_url, inner }
    }

    /// `http://127.0.0.1:PORT`: the channels' `graph_base`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// An access token the fake accepts (a channel's `access_token`).
    pub fn allow_token(&self, token: &str) {
        self.lock().tokens.push(token.to_owned());
    }

    /// A file the media lookup and download serve under `media_id`.
    pub fn add_media(&self, media_id: &str, mime_type: &str, bytes: &[u8]) {
        self.lock().media.insert(
            media_id.to_owned(),
            Media {
                mime_type: mime_type.to_owned(),
                bytes: bytes.to_vec(),
            },
        );
    }

    /// The next `times` calls of `endpoint` (with a valid token) are
    /// answered `status` with `body`.
    pub fn fail(&self, endpoint: Endpoint, status: u16, body: Value, times: usize) {
        self.lock().failures.insert(
            endpoint,
            Failure {
                status,
                body,
                remaining: Some(times),
            },
        );
    }

    /// Every call of `endpoint` is answered `status` with `body` until
    /// [`Self::recover`].
    pub fn fail_always(&self, endpoint: Endpoint, status: u16, body: Value) {
        self.lock().failures.insert(
            endpoint,
            Failure {
                status,
                body,
                remaining: None,
            },
        );
    }

    /// `endpoint` answers normally again.
    pub fn recover(&self, endpoint: Endpoint) {
        self.lock().failures.remove(&endpoint);
    }

    /// The next `times` file downloads fail with 500 (a transient error
    /// of Meta's CDN).
    pub fn fail_downloads(&self, times: usize) {
        self.fail(
            Endpoint::Download,
            500,
            graph_error(
                2,
                None,
                "An unexpected error has occurred. Please retry your request later.",
            ),
            times,
        );
    }

    /// The next `times` WhatsApp `messages` calls are answered `status`
    /// with `body` (e.g. [`graph_error`] 131047, re-engagement).
    pub fn fail_messages(&self, status: u16, body: Value, times: usize) {
        self.fail(Endpoint::WhatsappMessages, status, body, times);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The media ids looked up with a valid token.
    pub fn media_lookups(&self) -> Vec<String> {
        self.lock().media_lookups.clone()
    }

    /// The media ids whose download was tried with a valid token
    /// (failed ones included).
    pub fn downloads(&self) -> Vec<String> {
        self.lock().downloads.clone()
    }

    /// WhatsApp `messages` calls with a valid token, failed ones
    /// included.
    pub fn whatsapp_sends(&self) -> Vec<WhatsappSend> {
        self.lock().whatsapp_sends.clone()
    }

    /// Send API calls with a valid token, failed ones included.
    pub fn send_api_calls(&self) -> Vec<SendApiCall> {
        self.lock().send_api_calls.clone()
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.lock().uploads.clone()
    }

    /// `METHOD path?query -> status` of every request, for failure
    /// messages.
    pub fn log(&self) -> Vec<String> {
        self.lock()
            .requests
            .iter()
            .map(|r| {
                let query = if r.query.is_empty() {
                    String::new()
                } else {
                    format!("?{}", r.query)
                };
                let status = r.status.map_or("-".to_owned(), |s| s.to_string());
                format!("{} {}{query} -> {status}", r.method, r.path)
            })
            .collect()
    }
}

/// Records every request (its body read whole) before its handler, and
/// its status after.
async fn record(State(inner): State<Shared>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FAKE_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let recorded_body = if bytes.is_empty() {
        RecordedBody::Empty
    } else if let Some(value) = is_json
        .then(|| serde_json::from_slice::<Value>(&bytes).ok())
        .flatten()
    {
        RecordedBody::Json(value)
    } else {
        RecordedBody::Raw(bytes.to_vec())
    };
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: recorded_body,
        status: None,
    };
    let index = {
        let mut inner = lock(&inner);
        inner.requests.push(recorded);
        inner.requests.len() - 1
    };
    parts.extensions.insert(RecordIndex(index));
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if let Some(recorded) = lock(&inner).requests.get_mut(index) {
        recorded.status = Some(response.status().as_u16());
    }
    response
}

async fn unknown(uri: Uri) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &graph_error(
            803,
            None,
            &format!("the fake Graph API does not serve {uri}"),
        ),
    )
}

/// `GET /{version}/{media_id}`: where the file is, its type, hash and
/// size; the URL needs the same token.
async fn media_lookup(
    State(shared): State<Shared>,
    Path((_version, media_id)): Path<(String, String)>,
    Query(query): Params,
    headers: HeaderMap,
) -> Response {
    let mut inner = lock(&shared);
    if !inner.authorized(&headers, &query) {
        return invalid_token();
    }
    inner.media_lookups.push(media_id.clone());
    if let Some(failure) = inner.failure(Endpoint::MediaLookup) {
        return failure;
    }
    let Some(media) = inner.media.get(&media_id).cloned() else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &graph_error(
                100,
                Some(33),
                &format!(
                    "Unsupported get request. Object with ID '{media_id}' does not exist, \
                     cannot be loaded due to missing permissions, or does not support this operation."
                ),
            ),
        );
    };
    drop(inner);
    let base = shared_base(&headers);
    json_response(
        StatusCode::OK,
        &json!({
            "messaging_product": "whatsapp",
            "url": format!("{base}/download/{media_id}"),
            "mime_type": media.mime_type,
            "sha256": sha256_hex(&media.bytes),
            "file_size": media.bytes.len(),
            "id": media_id,
        }),
    )
}

/// `http://<Host>`: the fake's own base as the client reached it.
fn shared_base(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// `GET /download/{media_id}`: the bytes, with the bearer token.
async fn download(
    State(shared): State<Shared>,
    Path(media_id): Path<String>,
    Query(query): Params,
    headers: HeaderMap,
) -> Response {
    let mut inner = lock(&shared);
    if !inner.authorized(&headers, &query) {
        return invalid_token();
    }
    inner.downloads.push(media_id.clone());
    if let Some(failure) = inner.failure(Endpoint::Download) {
        return failure;
    }
    match inner.media.get(&media_id) {
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
        Some(media) => (
            [(header::CONTENT_TYPE, media.mime_type.clone())],
            media.bytes.clone(),
        )
            .into_response(),
    }
}

/// The message types WhatsApp's `messages` endpoint sends.
const WHATSAPP_TYPES: &[&str] = &[
    "text",
    "template",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "reaction",
];

/// `POST /{version}/{id}/messages`: WhatsApp's send when the body says
/// `messaging_product: whatsapp`, the Send API otherwise (`id` is `me` or
/// a Page or account id).
async fn messages(
    State(shared): State<Shared>,
    Path((_version, id)): Path<(String, String)>,
    Query(query): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = lock(&shared);
    if !inner.authorized(&headers, &query) {
        return invalid_token();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return invalid_parameter("the body is not JSON");
    };
    if body.get("messaging_product").and_then(Value::as_str) == Some("whatsapp") {
        whatsapp_send(&mut inner, id, body)
    } else {
        send_api(&mut inner, id, body)
    }
}

fn whatsapp_send(inner: &mut Inner, phone_number_id: String, body: Value) -> Response {
    let index = inner.whatsapp_sends.len();
    inner.whatsapp_sends.push(WhatsappSend {
        phone_number_id,
        body: body.clone(),
        wamid: None,
    });
    let to = body.get("to").and_then(Value::as_str).unwrap_or_default();
    let kind = body.get("type").and_then(Value::as_str).unwrap_or("text");
    if to.is_empty() {
        return invalid_parameter("The parameter to is required.");
    }
    if !WHATSAPP_TYPES.contains(&kind) || body.get(kind).is_none_or(Value::is_null) {
        return invalid_parameter(&format!(
            "Invalid parameter: a {kind:?} message needs {kind:?}"
        ));
    }
    if let Some(failure) = inner.failure(Endpoint::WhatsappMessages) {
        return failure;
    }
    let wamid = format!(
        "wamid.HBgL{:012}FQIAERgS{:016X}",
        inner.next_id(),
        rand::random::<u64>()
    );
    if let Some(send) = inner.whatsapp_sends.get_mut(index) {
        send.wamid = Some(wamid.clone());
    }
    let mut message = json!({ "id": wamid });
    if kind == "template" {
        message["message_status"] = json!("accepted");
    }
    json_response(
        StatusCode::OK,
        &json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": to, "wa_id": to.trim_start_matches('+') }],
            "messages": [message],
        }),
    )
}

fn send_api(inner: &mut Inner, sender: String, body: Value) -> Response {
    let index = inner.send_api_calls.len();
    inner.send_api_calls.push(SendApiCall {
        sender,
        body: body.clone(),
        message_id: None,
    });
    let recipient = body
        .pointer("/recipient/id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if recipient.is_empty() {
        return invalid_parameter("param recipient must be non-empty.");
    }
    if body.get("message").is_none() && body.get("sender_action").is_none() {
        return invalid_parameter("param message must be non-empty.");
    }
    if let Some(failure) = inner.failure(Endpoint::SendApi) {
        return failure;
    }
    let message_id = format!("m_{:08}{:016x}", inner.next_id(), rand::random::<u64>());
    if let Some(call) = inner.send_api_calls.get_mut(index) {
        call.message_id = Some(message_id.clone());
    }
    json_response(
        StatusCode::OK,
        &json!({ "recipient_id": recipient, "message_id": message_id }),
    )
}

/// `POST /{version}/{phone_number_id}/media`: multipart with
/// `messaging_product`, `type` and `file`; the new media id.
async fn media_upload(
    State(shared): State<Shared>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    Query(query): Params,
    Extension(RecordIndex(index)): Extension<RecordIndex>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    if !lock(&shared).authorized(&headers, &query) {
        return invalid_token();
    }
    let mut parts = Vec::new();
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                let file_name = field.file_name().map(str::to_owned);
                let content_type = field.content_type().map(str::to_owned);
                let Ok(bytes) = field.bytes().await else {
                    return invalid_parameter("a multipart field could not be read");
                };
                parts.push(Part {
                    name,
                    file_name,
                    content_type,
                    bytes: bytes.to_vec(),
                });
            }
            Ok(None) => break,
            Err(_) => return invalid_parameter("the body is not multipart/form-data"),
        }
    }
    let mut inner = lock(&shared);
    if let Some(recorded) = inner.requests.get_mut(index) {
        recorded.body = RecordedBody::Multipart(parts.clone());
    }
    let text = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name)
            .map(|p| String::from_utf8_lossy(&p.bytes).into_owned())
    };
    if text("messaging_product").as_deref() != Some("whatsapp") {
        return invalid_parameter("The parameter messaging_product is required.");
    }
    let Some(file) = parts.iter().find(|p| p.name == "file").cloned() else {
        return invalid_parameter("The parameter file is required.");
    };
    let mime_type = text("type")
        .or_else(|| file.content_type.clone())
        .unwrap_or_default();
    if mime_type.is_empty() {
        return invalid_parameter("The parameter type is required.");
    }
    if let Some(failure) = inner.failure(Endpoint::MediaUpload) {
        return failure;
    }
    let id = format!(
        "{}{:06}",
        1_000_000_000u64 + rand::random::<u32>() as u64,
        inner.next_id()
    );
    inner.media.insert(
        id.clone(),
        Media {
            mime_type: mime_type.clone(),
            bytes: file.bytes.clone(),
        },
    );
    inner.uploads.push(Upload {
        phone_number_id,
        id: id.clone(),
        mime_type,
        file_name: file.file_name,
        content_type: file.content_type,
        bytes: file.bytes,
    });
    json_response(StatusCode::OK, &json!({ "id": id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE_NUMBER_ID: &str = "106540352242922";

    #[test]
    fn the_signature_is_hmac_sha256_of_the_raw_body() {
        // RFC 4231, test case 2: key "Jefe".
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = whatsapp_text(PHONE_NUMBER_ID, "15551234567", "Ana", "wamid.A", "hi", 1);
        let bytes = body.to_string().into_bytes();
        assert_ne!(sign("secret", &bytes), sign("other", &bytes));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_verification_query_is_form_encoded() {
        assert_eq!(
            verification_url("http://d/webhooks/wa", "t o&k", "1158201444"),
            "http://d/webhooks/wa?hub.mode=subscribe&hub.verify_token=t+o%26k&hub.challenge=1158201444"
        );
    }

    #[test]
    fn payloads_follow_the_documented_shapes() {
        let text = whatsapp_text(
            PHONE_NUMBER_ID,
            "15551234567",
            "Ana",
            "wamid.A",
            "hi",
            1_700_000_000,
        );
        assert_eq!(text["object"], "whatsapp_business_account");
        let value = &text["entry"][0]["changes"][0]["value"];
        assert_eq!(text["entry"][0]["changes"][0]["field"], "messages");
        assert_eq!(value["messaging_product"], "whatsapp");
        assert_eq!(value["metadata"]["phone_number_id"], PHONE_NUMBER_ID);
        assert_eq!(value["contacts"][0]["wa_id"], "15551234567");
        assert_eq!(value["messages"][0]["timestamp"], "1700000000");
        assert_eq!(value["messages"][0]["text"]["body"], "hi");

        let image = MediaRef::of("1234", "image/jpeg", b"jpeg").with_caption("look");
        let body = whatsapp_image(PHONE_NUMBER_ID, "15551234567", "Ana", "wamid.B", &image, 5);
        let message = &body["entry"][0]["changes"][0]["value"]["messages"][0];
        assert_eq!(message["type"], "image");
        assert_eq!(message["image"]["id"], "1234");
        assert_eq!(message["image"]["sha256"], sha256_hex(b"jpeg"));
        assert_eq!(message["image"]["caption"], "look");

        let status = whatsapp_status(
            PHONE_NUMBER_ID,
            "wamid.C",
            "15551234567",
            "delivered",
            9,
            Some("evt-1"),
        );
        let status = &status["entry"][0]["changes"][0]["value"]["statuses"][0];
        assert_eq!(status["biz_opaque_callback_data"], "evt-1");
        assert!(status["errors"].is_null());

        let messenger =
            messenger_text("1234567890", "6543210987", "m_1", "hola", 1_700_000_000_123);
        assert_eq!(messenger["object"], "page");
        assert_eq!(
            messenger["entry"][0]["messaging"][0]["sender"]["id"],
            "6543210987"
        );
        assert_eq!(
            messenger["entry"][0]["messaging"][0]["message"]["mid"],
            "m_1"
        );
        let instagram = instagram_text("17841400000000000", "9876", "aWdf", "hey", 1);
        assert_eq!(instagram["object"], "instagram");
        assert_eq!(
            instagram["entry"][0]["messaging"][0]["recipient"]["id"],
            "17841400000000000"
        );
    }

    #[test]
    fn batches_merge_at_every_level() {
        let text = |wa: &str, id: &str| whatsapp_text(PHONE_NUMBER_ID, wa, "N", id, "x", 1);
        let body = Batch::new(text("1", "a"))
            .into_change(text("1", "b"))
            .into_change(text("2", "c"))
            .into_entry(whatsapp_status(PHONE_NUMBER_ID, "s", "1", "read", 2, None))
            .push_entry(text("3", "d"))
            .build();
        let entries = body["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        let changes = entries[0]["changes"].as_array().unwrap();
        assert_eq!(changes.len(), 2);
        let ids: Vec<&str> = changes[0]["value"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(
            changes[0]["value"]["contacts"].as_array().unwrap().len(),
            2,
            "a contact is not repeated"
        );
        assert_eq!(changes[1]["value"]["statuses"][0]["id"], "s");

        let messenger = Batch::new(messenger_text("1", "2", "m_1", "a", 1))
            .into_change(messenger_text("1", "3", "m_2", "b", 2))
            .build();
        assert_eq!(
            messenger["entry"][0]["messaging"].as_array().unwrap().len(),
            2
        );
    }

    async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn json_post(http: &reqwest::Client, url: String, body: &Value) -> reqwest::RequestBuilder {
        http.post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    #[tokio::test]
    async fn the_fake_checks_tokens_serves_media_and_records_sends() {
        let fake = FakeGraph::start().await;
        fake.allow_token("WA_TOKEN");
        fake.add_media("4490709327384033", "image/jpeg", b"jpeg bytes");
        let http = reqwest::Client::new();
        let url = |path: &str| format!("{}{path}", fake.base_url());

        let (status, _) = answer(http.get(url("/v23.0/4490709327384033"))).await;
        assert_eq!(status, 401);
        let (status, lookup) = answer(
            http.get(url("/v23.0/4490709327384033"))
                .bearer_auth("WA_TOKEN"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(lookup["mime_type"], "image/jpeg");
        assert_eq!(lookup["file_size"], 10);
        assert_eq!(lookup["sha256"], sha256_hex(b"jpeg bytes"));
        let file_url = lookup["url"].as_str().unwrap().to_owned();
        assert!(file_url.starts_with(fake.base_url()), "{file_url}");
        assert_eq!(http.get(&file_url).send().await.unwrap().status(), 401);
        let (status, _) = answer(http.get(url("/v23.0/404")).bearer_auth("WA_TOKEN")).await;
        assert_eq!(status, 400, "an unknown media id");

        fake.fail_downloads(1);
        let failed = http
            .get(&file_url)
            .bearer_auth("WA_TOKEN")
            .send()
            .await
            .unwrap();
        assert_eq!(failed.status(), 500);
        let served = http
            .get(&file_url)
            .bearer_auth("WA_TOKEN")
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), 200);
        assert_eq!(&served.bytes().await.unwrap()[..], b"jpeg bytes");
        assert_eq!(fake.downloads().len(), 2);

        let messages_url = url(&format!("/v23.0/{PHONE_NUMBER_ID}/messages"));
        let send = |body: Value| {
            answer(json_post(&http, messages_url.clone(), &body).bearer_auth("WA_TOKEN"))
        };
        let text = json!({
            "messaging_product": "whatsapp", "to": "15551234567", "type": "text",
            "text": { "body": "hello" },
        });
        fake.fail_messages(400, graph_error(131047, None, "Re-engagement message"), 1);
        let (status, refused) = send(text.clone()).await;
        assert_eq!(status, 400);
        assert_eq!(refused["error"]["code"], 131047);
        assert_eq!(refused["error"]["type"], "OAuthException");
        let (status, sent) = send(text.clone()).await;
        assert_eq!(status, 200);
        let wamid = sent["messages"][0]["id"].as_str().unwrap().to_owned();
        assert!(wamid.starts_with("wamid."), "{sent}");
        assert_eq!(sent["contacts"][0]["wa_id"], "15551234567");
        let (status, _) =
            send(json!({ "messaging_product": "whatsapp", "to": "1", "type": "text" })).await;
        assert_eq!(status, 400, "a text message without text");
        let sends = fake.whatsapp_sends();
        assert_eq!(sends.len(), 3);
        assert_eq!(sends[0].wamid, None);
        assert_eq!(sends[1].wamid.as_deref(), Some(wamid.as_str()));
        assert_eq!(sends[1].phone_number_id, PHONE_NUMBER_ID);
        assert_eq!(sends[1].body, text);

        // A multipart upload, written out by hand.
        let boundary = "XyZ0123";
        let mut form = Vec::new();
        for (name, value) in [("messaging_product", "whatsapp"), ("type", "image/png")] {
            form.extend_from_slice(
                format!("--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                    .as_bytes(),
            );
        }
        form.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\
                 content-type: image/png\r\n\r\npng\r\n--{boundary}--\r\n"
            )
            .as_bytes(),
        );
        let (status, uploaded) = answer(
            http.post(url(&format!("/v23.0/{PHONE_NUMBER_ID}/media")))
                .bearer_auth("WA_TOKEN")
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(form),
        )
        .await;
        assert_eq!(status, 200, "{uploaded}");
        let uploads = fake.uploads();
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploaded["id"], uploads[0].id.as_str());
        assert_eq!(uploads[0].bytes, b"png");
        assert_eq!(uploads[0].mime_type, "image/png");
        assert_eq!(uploads[0].file_name.as_deref(), Some("a.png"));

        let (status, messenger) = answer(json_post(
            &http,
            url("/v23.0/me/messages?access_token=WA_TOKEN"),
            &json!({
                "recipient": { "id": "6543210987" },
                "messaging_type": "RESPONSE",
                "message": { "text": "hi" },
            }),
        ))
        .await;
        assert_eq!(status, 200);
        assert_eq!(messenger["recipient_id"], "6543210987");
        assert!(messenger["message_id"].as_str().unwrap().starts_with("m_"));
        assert_eq!(fake.send_api_calls()[0].sender, "me");

        let requests = fake.requests();
        let upload = requests
            .iter()
            .find(|r| r.path.ends_with("/media"))
            .unwrap();
        let RecordedBody::Multipart(parts) = &upload.body else {
            panic!("the upload is recorded as multipart: {upload:?}");
        };
        assert!(
            parts
                .iter()
                .any(|p| p.name == "file" && p.file_name.as_deref() == Some("a.png"))
        );
        assert_eq!(upload.header("authorization"), Some("Bearer WA_TOKEN"));
        assert!(requests.iter().all(|r| r.status.is_some()));
        assert_eq!(
            requests.iter().filter(|r| r.json().is_some()).count(),
            4,
            "{:?}",
            fake.log()
        );
    }
}
