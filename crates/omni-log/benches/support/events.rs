//! Records as the daemon writes them for the API channel: the channel's own
//! JSON normalized by `omni_api::message::parse` into a `ConversationEvent`,
//! encoded as protobuf, with the CloudEvents headers and timestamp that
//! `omnid`'s log sink sets (`crates/omnid/src/sink.rs`). Shared by the
//! append benchmark and the `record-size` and `compression` examples.

// Each target that includes this module uses part of it.
#![allow(dead_code)]

use std::time::SystemTime;

use bytes::Bytes;
use omni_log::Record;
use omni_model::cloudevents::{self, CloudEvent};
use omni_proto::Message;
use omni_testkit::corpus;

pub(crate) const TOPIC: &str = "omni.inbound.v1";
pub(crate) const CHANNEL: &str = "bench-api";

/// What the message text looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Text {
    /// 200 bytes of `x`, what `omni-loadgen` posts: compresses to nothing.
    Filler,
    /// About 200 bytes of customer-service sentences from a small
    /// vocabulary, with order numbers and e-mail addresses (which do not
    /// compress) in some of them.
    Words,
}

impl Text {
    pub(crate) fn parse(name: &str) -> Option<Text> {
        match name {
            "x" | "filler" => Some(Text::Filler),
            "words" => Some(Text::Words),
            _ => None,
        }
    }
}

/// Words of short messages beside the support desk's vocabulary
/// ([`corpus::WORDS`]): greetings, function words and more of what
/// customers ask about (shops, subscriptions, bills, damaged items).
const CHAT_WORDS: &[&str] = &[
    "hello",
    "hi",
    "thanks",
    "a",
    "and",
    "to",
    "is",
    "for",
    "on",
    "this",
    "that",
    "have",
    "can",
    "your",
    "we",
    "me",
    "what",
    "about",
    "today",
    "tomorrow",
    "morning",
    "evening",
    "store",
    "online",
    "shop",
    "app",
    "website",
    "email",
    "phone",
    "call",
    "back",
    "cancel",
    "subscription",
    "plan",
    "upgrade",
    "bill",
    "receipt",
    "missing",
    "item",
    "box",
    "damaged",
    "broken",
    "photo",
    "attached",
    "sent",
    "received",
    "confirm",
    "confirmation",
    "weekend",
    "Friday",
    "any",
    "update",
    "sorry",
    "problem",
    "issue",
    "again",
    "last",
    "time",
    "first",
    "new",
    "old",
];

/// Word `i` of the vocabulary: [`corpus::WORDS`], then [`CHAT_WORDS`].
fn nth_word(i: usize) -> &'static str {
    corpus::WORDS
        .get(i)
        .copied()
        .unwrap_or_else(|| CHAT_WORDS[i - corpus::WORDS.len()])
}

/// How many words [`nth_word`] knows.
const VOCABULARY: u64 = (corpus::WORDS.len() + CHAT_WORDS.len()) as u64;

/// A small deterministic generator (xorshift), so runs are comparable.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// About `bytes` bytes of message text.
pub(crate) fn text(kind: Text, bytes: usize, rng: &mut Rng) -> String {
    match kind {
        Text::Filler => "x".repeat(bytes),
        Text::Words => {
            let mut text = String::with_capacity(bytes + 16);
            let mut sentence_start = true;
            while text.len() < bytes {
                if !text.is_empty() {
                    text.push(' ');
                }
                match rng.below(40) {
                    0 => text.push_str(&format!("#{}", 100_000 + rng.below(900_000))),
                    1 => text.push_str(&format!(
                        "{}.{}@example.com",
                        nth_word(rng.below(VOCABULARY) as usize),
                        rng.below(10_000)
                    )),
                    _ => {
                        let word = nth_word(rng.below(VOCABULARY) as usize);
                        if sentence_start {
                            let mut chars = word.chars();
                            if let Some(first) = chars.next() {
                                text.extend(first.to_uppercase());
                                text.push_str(chars.as_str());
                            }
                        } else {
                            text.push_str(word);
                        }
                    }
                }
                sentence_start = rng.below(8) == 0;
                if sentence_start {
                    text.push(if rng.below(4) == 0 { '?' } else { '.' });
                }
            }
            text
        }
    }
}

/// The API channel request body of message `n`, as `omni-loadgen` posts it
/// (one of 1,000 customers), with the given text.
pub(crate) fn api_body(n: u64, text: &str) -> Vec<u8> {
    serde_json::json!({
        "external_id": format!("lg-{:x}-{}", 0x5eed_u64 * 7919, n),
        "sender": { "kind": "external", "value": format!("customer-{}", n % 1000) },
        "text": text,
    })
    .to_string()
    .into_bytes()
}

/// Record `n` of the stream, built as the daemon builds it at `now`.
pub(crate) fn record(n: u64, kind: Text, rng: &mut Rng, now: SystemTime) -> Record {
    let body = api_body(n, &text(kind, 200, rng));
    let options = omni_api::message::NormalizeOptions {
        channel_id: CHANNEL,
        default_region: None,
        trust_sender: false,
        received_at: omni_proto::timestamp(now),
    };
    let event = omni_api::message::parse(&body, &options).expect("valid API message");
    let ce = CloudEvent {
        id: event.event_id.clone(),
        source: cloudevents::source_for_channel(&event.channel_id),
        ty: cloudevents::TYPE_CONVERSATION_EVENT.to_owned(),
        time: now,
        content_type: cloudevents::CONTENT_TYPE_PROTOBUF.to_owned(),
        traceparent: None,
    };
    let key = event
        .sender
        .as_ref()
        .map(omni_model::proto::partition_key)
        .unwrap_or_default();
    let timestamp_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Record {
        topic: TOPIC.to_owned(),
        key: Bytes::from(key),
        headers: ce
            .to_headers()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Bytes::from(value)))
            .collect(),
        payload: Bytes::from(event.encode_to_vec()),
        timestamp_ms,
    }
}
