//! The webhook of all three kinds: Meta's URL check (`GET`) and its signed
//! updates (`POST`).
//!
//! - `GET ?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`: the
//!   token is compared in constant time and the challenge echoed.
//! - `POST`: `X-Hub-Signature-256: sha256=<hex>` must be the HMAC-SHA256
//!   of the raw body with the app secret (or, during a rotation, the
//!   previous one), checked before a byte is parsed. The SDK's driver
//!   answers 200 only once every update of the POST is durable, and a 5xx
//!   otherwise, so Meta redelivers.
//! - Redeliveries: Meta retries for up to 7 days and sometimes delivers an
//!   update again after a 200. Event ids come from Meta's message ids, and
//!   the ids appended are marked in the channel's durable state once the
//!   log holds them ([`Marks`], committed in groups), so a repeat, however
//!   late, is dropped before the log. (If the daemon dies before a mark is
//!   committed, the repeat is appended again with the same event id, and
//!   the threading service drops it.)
//! - The customer-service window: each customer's latest message time is
//!   recorded with the same marks, for the reply senders.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, StatusCode};
use omni_connector::{
    EnrichError, ParseError, Parsed, Refusal, Secret, WebhookChannel, WebhookRequest,
    WebhookResponse, driver::static_response, signature,
};
use omni_proto::v1::{Direction, EventKind};
use omni_telemetry::emit;

use crate::{
    envelope::{Envelope, Limits},
    events::{DuplicatesDropped, MetaMetrics, UpdatesParsed},
    marks::Marks,
    messaging::normalize::{self as messaging, MessagingContext, Platform},
    whatsapp::normalize::{self as whatsapp, WaContext},
};

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Longest `hub.challenge` echoed (Meta sends a short number).
const MAX_CHALLENGE: usize = 256;

/// Which product a channel receives.
#[derive(Debug, Clone)]
pub enum Product {
    /// WhatsApp: changes for this phone number id.
    Whatsapp { phone_number_id: String },
    /// Messenger or Instagram: messaging items for this Page or account,
    /// with the app's own id to recognise echoes of Omnid's replies.
    Messaging {
        platform: Platform,
        account_id: String,
        own_app_id: Option<String>,
    },
}

impl Product {
    /// The envelope's `object` for this product.
    fn object(&self) -> &'static str {
        match self {
            Product::Whatsapp { .. } => "whatsapp_business_account",
            Product::Messaging { platform, .. } => platform.object(),
        }
    }
}

/// The app secrets a POST may be signed with.
#[derive(Debug)]
pub struct AppSecrets {
    pub current: Secret,
    /// The secret before the last reset, while Meta's retries signed with
    /// it may still arrive.
    pub previous: Option<Secret>,
}

/// One channel's webhook.
#[derive(Debug)]
pub struct MetaWebhook {
    pub(crate) channel_id: String,
    pub(crate) product: Product,
    /// None when an admin turned signature checks off.
    pub(crate) secrets: Option<AppSecrets>,
    pub(crate) verify_token: Secret,
    pub(crate) marks: Arc<Marks>,
    pub(crate) limits: Limits,
    pub(crate) metrics: MetaMetrics,
}

impl MetaWebhook {
    /// The URL check: `hub.mode=subscribe` and the verify token.
    fn verify_subscription(&self, request: &WebhookRequest) -> Result<(), Refusal> {
        let query = HubQuery::parse(request);
        if query.mode.as_deref() != Some("subscribe") {
            return Err(Refusal::new(
                "invalid_hub_mode",
                "a URL check needs hub.mode=subscribe",
            ));
        }
        let token = query.verify_token.unwrap_or_default();
        if !signature::constant_time_eq(token.as_bytes(), self.verify_token.expose()) {
            return Err(Refusal::new(
                "invalid_verify_token",
                "hub.verify_token is not this channel's verify token",
            ));
        }
        Ok(())
    }

    /// `X-Hub-Signature-256` against the current and previous secrets.
    fn verify_signature(
        &self,
        secrets: &AppSecrets,
        request: &WebhookRequest,
    ) -> Result<(), Refusal> {
        let Some(header) = request.header(SIGNATURE_HEADER) else {
            return Err(Refusal::new(
                "missing_signature",
                "no X-Hub-Signature-256 header",
            ));
        };
        let Some(provided) = header.trim().strip_prefix("sha256=") else {
            return Err(Refusal::new(
                "invalid_signature",
                "X-Hub-Signature-256 is not sha256=<hex>",
            ));
        };
        let matches = |secret: &Secret| {
            signature::eq_hex(
                &signature::hmac_sha256(secret.expose(), &[&request.body]),
                provided,
            )
        };
        if matches(&secrets.current) || secrets.previous.as_ref().is_some_and(matches) {
            Ok(())
        } else {
            Err(Refusal::new(
                "invalid_signature",
                "X-Hub-Signature-256 does not match the body and the app secret",
            ))
        }
    }
}

#[async_trait]
impl WebhookChannel for MetaWebhook {
    fn methods(&self) -> &'static [Method] {
        &[Method::GET, Method::POST]
    }

    fn verifies(&self) -> bool {
        self.secrets.is_some()
    }

    fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal> {
        if request.method == Method::GET {
            // The URL check proves the admin typed our token into Meta's
            // dashboard; it is checked even with signatures off.
            return self.verify_subscription(request);
        }
        match &self.secrets {
            Some(secrets) => self.verify_signature(secrets, request),
            None => Ok(()),
        }
    }

    fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError> {
        if request.method == Method::GET {
            let challenge = HubQuery::parse(request).challenge.unwrap_or_default();
            if challenge.is_empty()
                || challenge.len() > MAX_CHALLENGE
                || !challenge.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(ParseError::new(
                    "invalid_challenge",
                    format!("hub.challenge must be 1 to {MAX_CHALLENGE} printable characters"),
                ));
            }
            let mut answer = http::Response::new(bytes::Bytes::from(challenge));
            answer.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(Parsed::Answer(answer));
        }
        let envelope = Envelope::parse(&request.body, self.product.object(), &self.limits)?;
        let received_at = omni_proto::timestamp(request.received_at);
        let (events, unreadable, own_echoes) = match &self.product {
            Product::Whatsapp { phone_number_id } => {
                let cx = WaContext {
                    channel_id: &self.channel_id,
                    phone_number_id,
                    received_at,
                };
                let (events, unreadable) = whatsapp::normalize(&envelope, &cx);
                (events, unreadable, 0)
            }
            Product::Messaging {
                platform,
                account_id,
                own_app_id,
            } => {
                let cx = MessagingContext {
                    channel_id: &self.channel_id,
                    platform: *platform,
                    account_id,
                    own_app_id: own_app_id.as_deref(),
                    received_at,
                };
                let normalized = messaging::normalize(&envelope, &cx);
                (
                    normalized.events,
                    normalized.unreadable,
                    normalized.own_echoes,
                )
            }
        };
        emit!(UpdatesParsed {
            events: 0,
            dead_lettered: unreadable.len() as u64,
            own_echoes: own_echoes as u64,
        } => &self.metrics);
        Ok(Parsed::Append { events, unreadable })
    }

    /// Drops updates already appended (a redelivery), and repeats within
    /// the POST itself; notes when customers wrote, for the reply window
    /// (a customer who wrote opened it, whether or not the append
    /// succeeds: Meta redelivers until it does).
    async fn enrich(
        &self,
        _request: &WebhookRequest,
        mut parsed: Parsed,
    ) -> Result<Parsed, EnrichError> {
        let Parsed::Append { events, .. } = &mut parsed else {
            return Ok(parsed);
        };
        if events.is_empty() {
            return Ok(parsed);
        }
        let ids: Vec<String> = events.iter().map(|e| e.event.event_id.clone()).collect();
        let seen = self
            .marks
            .seen(&ids)
            .await
            .map_err(|e| EnrichError::Unavailable(e.to_string()))?;
        let before = events.len();
        let mut kept = std::collections::HashSet::with_capacity(before);
        let mut index = 0;
        events.retain(|_| {
            let keep = !seen[index] && kept.insert(ids[index].as_str());
            index += 1;
            keep
        });
        let dropped = (before - events.len()) as u64;
        if dropped > 0 {
            emit!(DuplicatesDropped { channel: &self.channel_id, count: dropped } => &self.metrics);
        }
        emit!(UpdatesParsed {
            events: events.len() as u64,
            dead_lettered: 0,
            own_echoes: 0,
        } => &self.metrics);
        self.marks.wrote(
            events
                .iter()
                .filter_map(|inbound| customer_wrote(&inbound.event)),
        );
        Ok(parsed)
    }

    /// Marks the appended ids seen (committed in groups, see [`Marks`]).
    async fn appended(&self, _request: &WebhookRequest, event_ids: &[String]) {
        self.marks.appended(event_ids);
    }

    fn accepted(&self, _event_ids: &[String]) -> WebhookResponse {
        // Meta reads only the status.
        static_response(StatusCode::OK, "text/plain; charset=utf-8", "ok")
    }
}

/// The `hub.*` parameters of a URL check.
#[derive(Debug, Default)]
struct HubQuery {
    mode: Option<String>,
    verify_token: Option<String>,
    challenge: Option<String>,
}

impl HubQuery {
    fn parse(request: &WebhookRequest) -> Self {
        let mut query = Self::default();
        let Some(text) = request.uri.query() else {
            return query;
        };
        for (key, value) in form_urlencoded::parse(text.as_bytes()) {
            let slot = match key.as_ref() {
                "hub.mode" => &mut query.mode,
                "hub.verify_token" => &mut query.verify_token,
                "hub.challenge" => &mut query.challenge,
                _ => continue,
            };
            // The first of repeated parameters counts, as in most servers.
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        query
    }
}

/// Who wrote when (customer id, seconds since the epoch), if `event` is a
/// customer's message: Meta's window opens with each, by its own time.
/// Echoes, statuses and activities (reactions, reads) do not count.
pub fn customer_wrote(event: &omni_proto::v1::ConversationEvent) -> Option<(String, i64)> {
    if event.kind != EventKind::Message as i32 || event.direction != Direction::Inbound as i32 {
        return None;
    }
    let sender = event.sender.as_ref()?;
    let at = event.sent_at.as_ref().map_or(0, |t| t.seconds);
    (at > 0).then(|| (sender.value.clone(), at))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, Uri};

    use super::*;

    const SECRET: &[u8] = b"app-secret";

    fn webhook(product: Product, previous: Option<&[u8]>) -> MetaWebhook {
        MetaWebhook {
            channel_id: "wa".into(),
            product,
            secrets: Some(AppSecrets {
                current: Secret::new(SECRET.to_vec()),
                previous: previous.map(|p| Secret::new(p.to_vec())),
            }),
            verify_token: Secret::new(b"verify-me".to_vec()),
            marks: Arc::new(Marks::new(omni_connector::ChannelState::memory("wa"), "wa")),
            limits: Limits::default(),
            metrics: MetaMetrics::register("wa"),
        }
    }

    fn whatsapp() -> Product {
        Product::Whatsapp {
            phone_number_id: "106540352242922".into(),
        }
    }

    fn request(
        method: Method,
        uri: &str,
        body: &[u8],
        signature: Option<String>,
    ) -> WebhookRequest {
        let mut headers = HeaderMap::new();
        if let Some(signature) = signature {
            headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(&signature).unwrap());
        }
        WebhookRequest {
            method,
            uri: uri.parse::<Uri>().unwrap(),
            headers,
            body: Bytes::copy_from_slice(body),
            received_at: SystemTime::now(),
            public_url: None,
        }
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        format!(
            "sha256={}",
            hex::encode(signature::hmac_sha256(secret, &[body]))
        )
    }

    #[test]
    fn the_url_check_needs_subscribe_and_the_token() {
        let hook = webhook(whatsapp(), None);
        let check = |query: &str| {
            let request = request(Method::GET, &format!("/webhooks/wa?{query}"), b"", None);
            hook.verify(&request).map_err(|r| r.code)?;
            match hook.parse(&request) {
                Ok(Parsed::Answer(response)) => {
                    Ok(String::from_utf8(response.body().to_vec()).unwrap())
                }
                Ok(_) => panic!("a URL check appends nothing"),
                Err(e) => Err(e.code),
            }
        };
        assert_eq!(
            check("hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444"),
            Ok("1158201444".to_owned())
        );
        assert_eq!(
            check("hub.mode=subscribe&hub.verify_token=verify-mf&hub.challenge=1"),
            Err("invalid_verify_token")
        );
        assert_eq!(
            check("hub.mode=subscribe&hub.challenge=1"),
            Err("invalid_verify_token")
        );
        assert_eq!(
            check("hub.mode=unsubscribe&hub.verify_token=verify-me&hub.challenge=1"),
            Err("invalid_hub_mode")
        );
        assert_eq!(
            check("hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=%3Cscript%3E%20x"),
            Err("invalid_challenge")
        );
    }

    #[test]
    fn posts_need_the_signature_of_the_current_or_previous_secret() {
        let hook = webhook(whatsapp(), Some(b"old-secret"));
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let code = |signature: Option<String>| {
            hook.verify(&request(Method::POST, "/webhooks/wa", body, signature))
                .map_err(|r| r.code)
        };
        assert_eq!(code(Some(sign(SECRET, body))), Ok(()));
        assert_eq!(
            code(Some(
                sign(SECRET, body)
                    .to_uppercase()
                    .replace("SHA256", "sha256")
            )),
            Ok(())
        );
        assert_eq!(code(Some(sign(b"old-secret", body))), Ok(()));
        assert_eq!(code(Some(sign(b"wrong", body))), Err("invalid_signature"));
        assert_eq!(
            code(Some(sign(SECRET, b"other body"))),
            Err("invalid_signature")
        );
        assert_eq!(
            code(Some(sign(SECRET, body).replace("sha256=", "sha1="))),
            Err("invalid_signature")
        );
        assert_eq!(code(Some("sha256=".into())), Err("invalid_signature"));
        assert_eq!(code(None), Err("missing_signature"));
        let current_only = webhook(whatsapp(), None);
        assert_eq!(
            current_only
                .verify(&request(
                    Method::POST,
                    "/",
                    body,
                    Some(sign(b"old-secret", body))
                ))
                .map_err(|r| r.code),
            Err("invalid_signature")
        );
    }

    /// Who opened the reply window in a POST, as the webhook records it.
    fn wrote(hook: &MetaWebhook, body: &[u8]) -> Vec<(String, i64)> {
        let Ok(Parsed::Append { events, .. }) = hook.parse(&request(Method::POST, "/", body, None))
        else {
            panic!("not appended");
        };
        events
            .iter()
            .filter_map(|i| customer_wrote(&i.event))
            .collect()
    }

    #[test]
    fn customer_message_times_skip_echoes_statuses_and_other_accounts() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[
            {"field":"messages","value":{"metadata":{"phone_number_id":"106540352242922"},
             "messages":[{"from":"15551234567","id":"wamid.1","timestamp":"1700000000","type":"text","text":{"body":"hi"}}],
             "statuses":[{"id":"wamid.2","recipient_id":"15550000000","status":"read","timestamp":"1700000100"}]}},
            {"field":"messages","value":{"metadata":{"phone_number_id":"999"},
             "messages":[{"from":"15559999999","id":"wamid.3","timestamp":"1700000000","type":"text"}]}}]}]}"#;
        assert_eq!(
            wrote(&webhook(whatsapp(), None), body),
            [("15551234567".to_owned(), 1_700_000_000)]
        );
        let body = br#"{"object":"page","entry":[{"id":"42","messaging":[
            {"sender":{"id":"7"},"recipient":{"id":"42"},"timestamp":1700000000123,"message":{"mid":"m1","text":"hi"}},
            {"sender":{"id":"42"},"recipient":{"id":"7"},"timestamp":1700000500000,"message":{"mid":"m2","is_echo":true}},
            {"sender":{"id":"8"},"recipient":{"id":"42"},"timestamp":1700000600000,"postback":{"payload":"P"}},
            {"sender":{"id":"9"},"recipient":{"id":"42"},"timestamp":1700000700000,"read":{"watermark":1}}]},
            {"id":"43","messaging":[{"sender":{"id":"10"},"timestamp":1,"message":{"mid":"m3"}}]}]}"#;
        let product = Product::Messaging {
            platform: Platform::Messenger,
            account_id: "42".into(),
            own_app_id: None,
        };
        assert_eq!(
            wrote(&webhook(product, None), body),
            [
                ("7".to_owned(), 1_700_000_000),
                ("8".to_owned(), 1_700_000_600)
            ]
        );
    }
}
