//! WeCom's callback for WeChat Customer Service. It carries no message,
//! only the news that there are some (`kf_msg_or_event`, with a `Token`
//! that lifts `kf/sync_msg`'s rate limit for ten minutes and the account's
//! `OpenKfId`), so it is answered `success` at once and the account's
//! puller is woken: the messages themselves are acknowledged by the
//! cursor, which moves only after they are durable.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, StatusCode};
use omni_connector::{
    ParseError, Parsed, Refusal, WebhookChannel, WebhookRequest, WebhookResponse,
    webhook::error_response,
};

use crate::{
    callback::{self, CallbackQuery, Keys},
    kf::sync::Wake,
};

/// The webhook of one customer-service app.
#[derive(Debug)]
pub struct KfWebhook {
    pub(crate) keys: Keys,
    pub(crate) wake: Arc<Wake>,
}

#[async_trait]
impl WebhookChannel for KfWebhook {
    fn methods(&self) -> &'static [Method] {
        &[Method::GET, Method::POST]
    }

    fn verifies(&self) -> bool {
        self.keys.token.is_some()
    }

    fn verify(&self, request: &WebhookRequest) -> Result<(), Refusal> {
        let query = CallbackQuery::parse(&request.uri);
        if request.method == Method::GET {
            // WeCom's URL check: the echostr is a ciphertext.
            let echostr = query.echostr.as_deref().unwrap_or("");
            self.keys.verify_msg_signature(&query, echostr)
        } else {
            let encrypted = self.keys.envelope(&request.body)?;
            self.keys.verify_msg_signature(&query, encrypted)
        }
    }

    fn parse(&self, request: &WebhookRequest) -> Result<Parsed, ParseError> {
        if request.method == Method::GET {
            let query = CallbackQuery::parse(&request.uri);
            let echostr = query.echostr.unwrap_or_default();
            return Ok(Parsed::Answer(callback::text(self.keys.decrypt(&echostr)?)));
        }
        let fields = self.keys.open(&request.body)?;
        match (fields.get("MsgType"), fields.get("Event")) {
            (Some("event"), Some("kf_msg_or_event")) => {
                let open_kfid = fields.get("OpenKfId").unwrap_or_default();
                if !super::valid_open_kfid(open_kfid) {
                    return Err(ParseError::new(
                        "invalid_open_kfid",
                        "kf_msg_or_event without a valid OpenKfId",
                    ));
                }
                let token = fields.get("Token").filter(|t| t.len() <= 256);
                self.wake.notify(open_kfid, token);
                Ok(Parsed::Answer(callback::success()))
            }
            (_, event) => Err(ParseError::new(
                "unknown_event",
                format!(
                    "not a customer-service callback (event {})",
                    event.unwrap_or("none")
                ),
            )),
        }
    }

    fn invalid(&self, error: &ParseError) -> WebhookResponse {
        if error.code == "unknown_event" {
            // Authentic (WeCom signed it) and kept on the dead-letter
            // topic; WeCom retries anything but `success`.
            callback::success()
        } else {
            error_response(StatusCode::BAD_REQUEST, error.code, &error.message)
        }
    }
}
