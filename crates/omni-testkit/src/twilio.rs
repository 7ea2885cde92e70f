//! Twilio as the daemon sees it, for end-to-end tests of the `twilio` SMS
//! channel: the messaging webhook Twilio posts (form fields, signed with
//! `X-Twilio-Signature`) and a local server playing the Messages API the
//! channel sends replies with.
//!
//! The signature is written here from Twilio's published scheme with the
//! `hmac` and `sha1` crates, independently of `omni-sms`: a test that
//! checked the channel with the channel's own code would only prove it
//! agrees with itself. The webhook's fields and the API's answers follow
//! Twilio's messaging webhook and Message resource references.
//!
//! - [`signature`], [`incoming_sms`], [`signed_post`]: what Twilio sends.
//! - [`FakeTwilio`]: `api.twilio.com`'s `Messages.json` on loopback,
//!   recording every message it was asked to send.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha1::Sha1;

/// The header Twilio signs each webhook POST in.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
/// The API version of every path and resource.
const API_VERSION: &str = "2010-04-01";

// ---------------------------------------------------------------------------
// What Twilio posts to the daemon
// ---------------------------------------------------------------------------

/// The `X-Twilio-Signature` of a form POST to `url` (the URL Twilio was
/// configured with, as the daemon's public base URL makes it): base64 of
/// the HMAC-SHA1, keyed with the auth token, of the URL followed by every
/// parameter's name and value, sorted by name.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac =
        Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key size");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The fields of Twilio's messaging webhook for an SMS `body` from `from`
/// to the business number `to`, as Twilio posts them (the geographic
/// fields are Twilio's guesses from the numbers; empty when unknown).
pub fn incoming_sms(
    account_sid: &str,
    message_sid: &str,
    from: &str,
    to: &str,
    body: &str,
) -> Vec<(String, String)> {
    [
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", message_sid),
        ("NumMedia", "0"),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", ""),
        ("SmsSid", message_sid),
        ("FromState", ""),
        ("SmsStatus", "received"),
        ("FromCity", ""),
        ("Body", body),
        ("FromCountry", ""),
        ("To", to),
        ("ToZip", "94105"),
        ("NumSegments", &segments(body).to_string()),
        ("MessageSid", message_sid),
        ("AccountSid", account_sid),
        ("From", from),
        ("ApiVersion", API_VERSION),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

/// A POST of `params` to `url` (where the daemon listens) as Twilio makes
/// it: form-encoded, signed for `public_url` (the webhook URL Twilio was
/// given, which is what it signs).
pub fn signed_post(
    client: &reqwest::Client,
    url: &str,
    public_url: &str,
    auth_token: &str,
    params: &[(String, String)],
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .header(header::USER_AGENT, "TwilioProxy/1.1")
        .header(SIGNATURE_HEADER, signature(auth_token, public_url, params))
        .body(crate::daemon::form_body(params))
}

/// SMS segments of `text`: 160 characters in one (153 each when split)
/// in GSM-7, 70 (67) once a character needs UCS-2. ASCII stands in for
/// GSM-7, which is close enough for what a test sends.
fn segments(text: &str) -> usize {
    let (single, part) = if text.is_ascii() {
        (160, 153)
    } else {
        (70, 67)
    };
    let units: usize = if text.is_ascii() {
        text.len()
    } else {
        text.chars().map(char::len_utf16).sum()
    };
    if units <= single {
        1
    } else {
        units.div_ceil(part)
    }
}

// ---------------------------------------------------------------------------
// The Messages API
// ---------------------------------------------------------------------------

/// One message the daemon asked Twilio to send (`POST
/// /2010-04-01/Accounts/{sid}/Messages.json`, authenticated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub to: String,
    pub from: String,
    pub body: String,
    /// The `StatusCallback` URL, if the daemon asked for callbacks.
    pub status_callback: Option<String>,
    /// The message sid answered (`SM` and 32 hex digits).
    pub sid: String,
}

#[derive(Debug)]
struct Inner {
    account_sid: String,
    auth_token: String,
    sent: Vec<Sent>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(inner: &Shared) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

/// Twilio's Messages API for one account on a loopback port: a send with
/// the account's credentials is recorded and answered as Twilio answers
/// it (201, the Message resource, status `queued`); one without them gets
/// Twilio's 401.
#[derive(Debug, Clone)]
pub struct FakeTwilio {
    base_url: String,
    inner: Shared,
}

impl FakeTwilio {
    /// Listens on a free loopback port, on the caller's runtime, for the
    /// account `account_sid` whose auth token is `auth_token`.
    pub async fn start(account_sid: &str, auth_token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            sent: Vec::new(),
        }));
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(create))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base_url = format!("http://{}", listener.local_addr().expect("local addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base_url, inner }
    }

    /// `http://127.0.0.1:PORT`: the channel's `api_base`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Every message sent so far, in arrival order.
    pub fn sent(&self) -> Vec<Sent> {
        lock(&self.inner).sent.clone()
    }

    /// Adds a `twilio` channel `channel_id` to `deployment`, sending from
    /// `from` through this server, for this account: the daemon's public
    /// base URL (what Twilio signs webhooks for), the auth token in a
    /// secret file, and the channel file.
    pub fn add_channel(
        &self,
        deployment: &crate::daemon::Deployment,
        channel_id: &str,
        public_base_url: &str,
        from: &str,
    ) {
        let config = std::fs::read_to_string(deployment.config_path()).expect("read omnid.toml");
        deployment.write_config(&config.replacen(
            "[http]\n",
            &format!("[http]\npublic_base_url = \"{public_base_url}\"\n"),
            1,
        ));
        let (account_sid, auth_token) = {
            let inner = lock(&self.inner);
            (inner.account_sid.clone(), inner.auth_token.clone())
        };
        let token = deployment.path().join(format!("{channel_id}-twilio-token"));
        std::fs::write(&token, auth_token).expect("write the auth token");
        deployment.write_channel(
            channel_id,
            &format!(
                "id = \"{channel_id}\"\nkind = \"twilio\"\naccount_sid = \"{account_sid}\"\n\
                 auth_token = {{ file = {:?} }}\ndefault_region = \"US\"\nfrom = \"{from}\"\n\
                 fetch_media = false\napi_base = \"{}\"\n",
                token.display().to_string(),
                self.base_url,
            ),
        );
    }

    /// (To, From, Body) of every message sent so far, in arrival order.
    pub fn messages(&self) -> Vec<(String, String, String)> {
        lock(&self.inner)
            .sent
            .iter()
            .map(|s| (s.to.clone(), s.from.clone(), s.body.clone()))
            .collect()
    }
}

/// Twilio's error resource.
fn error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    json_response(status, &body)
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        value.to_string(),
    )
        .into_response()
}

/// Whether `headers` carry HTTP Basic credentials `user:password`.
fn basic_auth(headers: &HeaderMap, user: &str, password: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v.trim()).ok())
        .is_some_and(|decoded| decoded == format!("{user}:{password}").as_bytes())
}

async fn create(
    State(inner): State<Shared>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut inner = lock(&inner);
    if sid != inner.account_sid || !basic_auth(&headers, &inner.account_sid, &inner.auth_token) {
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let (Some(to), Some(text)) = (field("To"), field("Body")) else {
        return error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number and a 'Body' are required.",
        );
    };
    let from = field("From").unwrap_or_default();
    let message_sid = format!("SM{:032x}", inner.sent.len() + 1);
    inner.sent.push(Sent {
        to: to.clone(),
        from: from.clone(),
        body: text.clone(),
        status_callback: field("StatusCallback"),
        sid: message_sid.clone(),
    });
    let now = rfc2822(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    let uri = format!("/{API_VERSION}/Accounts/{sid}/Messages/{message_sid}");
    let resource = json!({
        "account_sid": sid,
        "api_version": API_VERSION,
        "body": text,
        "date_created": now,
        "date_sent": null,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from,
        "messaging_service_sid": field("MessagingServiceSid"),
        "num_media": "0",
        "num_segments": segments(&text).to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": message_sid,
        "status": "queued",
        "subresource_uris": { "media": format!("{uri}/Media.json") },
        "to": to,
        "uri": format!("{uri}.json"),
    });
    json_response(StatusCode::CREATED, &resource)
}

/// `Sun, 06 Dec 2026 21:04:05 +0000`, as Twilio writes its dates.
fn rfc2822(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_example_of_twilios_security_documentation() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn dates_are_written_as_twilio_writes_them() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(1_796_591_045), "Sun, 06 Dec 2026 21:04:05 +0000");
        assert_eq!(rfc2822(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn segments_count_ucs2_characters() {
        assert_eq!(segments("Hello"), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments("پیام شما رسید"), 1);
        assert_eq!(segments(&"س".repeat(71)), 2);
    }

    #[tokio::test]
    async fn sends_with_the_accounts_credentials_are_recorded_and_queued() {
        let twilio = FakeTwilio::start("AC00000000000000000000000000000001", "token").await;
        let url = format!(
            "{}/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages.json",
            twilio.base_url()
        );
        let client = reqwest::Client::new();
        let form = [
            ("To", "+14155550123"),
            ("From", "+14155550100"),
            ("Body", "سلام"),
        ];
        let denied = client
            .post(&url)
            .basic_auth("AC00000000000000000000000000000001", Some("wrong"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 401);
        let created = client
            .post(&url)
            .basic_auth("AC00000000000000000000000000000001", Some("token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let resource: Value = serde_json::from_str(&created.text().await.unwrap()).unwrap();
        assert_eq!(resource["status"], "queued");
        assert_eq!(resource["body"], "سلام");
        assert_eq!(resource["sid"], twilio.sent()[0].sid);
        assert_eq!(
            twilio.messages(),
            [(
                "+14155550123".to_owned(),
                "+14155550100".to_owned(),
                "سلام".to_owned()
            )]
        );
    }
}
