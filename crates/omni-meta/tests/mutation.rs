//! Deterministic mutation testing of the pure halves: the documentation's
//! payloads (`tests/fixtures/<kind>/*.json`) are damaged thousands of ways
//! with a fixed seed (byte flips, truncations, duplicated and removed
//! spans, values of the wrong type, huge strings, deep nesting) and run
//! through [`Envelope::parse`] and the kind's normalizer. Nothing may
//! panic, and every outcome is accounted for: events, dead letters with a
//! known code, or an [`EnvelopeError`], never more of them than the body
//! has items.
//!
//! One test function per kind; the helpers above them are shared.

use omni_testkit::corpus::Rng;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use omni_meta::{
    envelope::{Envelope, EnvelopeError, Limits},
    whatsapp::normalize::{self as whatsapp, WaContext},
};
use omni_proto::{
    Timestamp,
    v1::{ChannelKind, EventKind},
};
use serde_json::{Value, value::RawValue};

const AT: Timestamp = Timestamp {
    seconds: 1_700_000_000,
    nanos: 0,
};

/// Every fixture of a kind (`tests/fixtures/<kind>/*.json`), by name.
fn fixtures(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = format!("{}/tests/fixtures/{kind}", env!("CARGO_MANIFEST_DIR"));
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(path).unwrap())
        })
        .collect()
}

/// One random damage to the bytes of a body.
fn mutate_bytes(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    if out.is_empty() {
        out.push(rng.byte());
        return out;
    }
    let at = rng.below(out.len());
    match rng.below(8) {
        0 => out[at] ^= 1 << rng.below(8),
        1 => out.insert(at, rng.byte()),
        2 => {
            out.remove(at);
        }
        3 => out.truncate(at),
        4 => {
            // Duplicate a span.
            let end = (at + 1 + rng.below(64)).min(out.len());
            let chunk = out[at..end].to_vec();
            out.splice(at..at, chunk);
        }
        5 => {
            // Remove a span.
            let end = (at + 1 + rng.below(64)).min(out.len());
            out.drain(at..end);
        }
        6 => {
            // A JSON token where it may not belong.
            let tokens: [&[u8]; 10] = [
                b"\"", b",", b":", b"{", b"}", b"[", b"]", b"null", b"\\u0000", b"1e999",
            ];
            let token = *rng.pick(&tokens);
            out.splice(at..at, token.iter().copied());
        }
        _ => out[at] = rng.byte(),
    }
    out
}

/// A value of another type, to put where a payload had something else.
fn random_value(rng: &mut Rng) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => Value::from(rng.next_u64() as i64),
        3 => Value::from(rng.next_u64()),
        4 => Value::from(-1.5e300),
        5 => Value::from(""),
        6 => Value::from("x".repeat(10 * 1024 + rng.below(64 * 1024))),
        7 => Value::from("\u{0}\u{202e}\u{feff}é\n".repeat(rng.below(300))),
        8 => Value::from(vec![Value::from(1), Value::Null, Value::from("a")]),
        9 => Value::Object(serde_json::Map::new()),
        10 => Value::from(Vec::<Value>::new()),
        11 => Value::from(
            [
                "text",
                "image",
                "reaction",
                "failed",
                "read",
                "messages",
                "unsupported",
            ][rng.below(7)],
        ),
        12 => Value::from("1739321024"),
        _ => {
            let mut nested = Value::from(1);
            for _ in 0..1 + rng.below(40) {
                nested = Value::from(vec![nested]);
            }
            nested
        }
    }
}

/// One random structural damage to a JSON document: a node replaced by a
/// value of another type, a key removed or renamed, an array item
/// duplicated or removed, a node wrapped in more nesting.
fn mutate_json(rng: &mut Rng, root: &mut Value) {
    // Any node, the deep ones (a message's id) as likely as the root.
    let mut pointers = Vec::new();
    all_pointers(root, &mut String::new(), &mut pointers);
    let pointer = rng.pick(&pointers).clone();
    let target = root.pointer_mut(&pointer).unwrap();
    match target {
        Value::Object(map) if !map.is_empty() && rng.below(3) > 0 => {
            let key = map.keys().nth(rng.below(map.len())).cloned().unwrap();
            match rng.below(4) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    let value = map.remove(&key).unwrap();
                    map.insert(format!("{key}_"), value);
                }
                _ => {
                    map.insert(key, random_value(rng));
                }
            }
        }
        Value::Array(items) if !items.is_empty() && rng.below(3) > 0 => {
            let at = rng.below(items.len());
            match rng.below(3) {
                0 => {
                    items.remove(at);
                }
                1 => {
                    let copy = items[at].clone();
                    for _ in 0..1 + rng.below(4) {
                        items.insert(at, copy.clone());
                    }
                }
                _ => items[at] = random_value(rng),
            }
        }
        other => {
            if rng.below(4) == 0 {
                let inner = other.take();
                *other = serde_json::json!({ "nested": [inner] });
            } else {
                *other = random_value(rng);
            }
        }
    }
}

/// The JSON pointer of every node below and including `node`.
fn all_pointers(node: &Value, at: &mut String, out: &mut Vec<String>) {
    out.push(at.clone());
    let len = at.len();
    match node {
        Value::Object(map) => {
            for (key, child) in map {
                at.push('/');
                at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                all_pointers(child, at, out);
                at.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                at.push('/');
                at.push_str(&i.to_string());
                all_pointers(child, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// A damaged copy of `sample`: structural damage (then, sometimes, byte
/// damage on top) or byte damage alone.
fn mutate(rng: &mut Rng, sample: &[u8]) -> Vec<u8> {
    let (structural, bytes) = match rng.below(10) {
        0..=4 => (true, false),
        5..=7 => (false, true),
        _ => (true, true),
    };
    let mut body = sample.to_vec();
    if structural {
        let mut value: Value = serde_json::from_slice(sample).unwrap();
        for _ in 0..1 + rng.below(3) {
            mutate_json(rng, &mut value);
        }
        body = serde_json::to_vec(&value).unwrap();
    }
    if bytes {
        for _ in 0..1 + rng.below(3) {
            body = mutate_bytes(rng, &body);
        }
    }
    body
}

/// The length of the array `key` of a change value, when it is one.
fn array_len(value: &Value, key: &str) -> usize {
    value.get(key).and_then(Value::as_array).map_or(0, Vec::len)
}

// --- WhatsApp -----------------------------------------------------------

const WA_OBJECT: &str = "whatsapp_business_account";

const WA_CX: WaContext<'static> = WaContext {
    channel_id: "wa",
    phone_number_id: "106540352242922",
    received_at: AT,
};

/// The most outcomes a WhatsApp POST may have: per change one for the
/// change itself or one per message, status and error in it, and one per
/// `messaging` item.
fn whatsapp_items(envelope: &Envelope<'_>) -> usize {
    envelope
        .entry
        .iter()
        .map(|entry| {
            let changes: usize = entry
                .changes
                .iter()
                .map(|change| {
                    let value = change
                        .value
                        .and_then(|v| serde_json::from_str::<Value>(v.get()).ok())
                        .unwrap_or_default();
                    1 + array_len(&value, "messages")
                        + array_len(&value, "statuses")
                        + array_len(&value, "errors")
                })
                .sum();
            changes + entry.messaging.len()
        })
        .sum()
}

/// Parses and normalizes one body, checks every outcome, and names it:
/// the envelope error's code, or per item `event` or the dead letter's
/// code.
fn exercise_whatsapp(body: &[u8], outcomes: &mut BTreeMap<&'static str, usize>) {
    let envelope = match Envelope::parse(body, WA_OBJECT, &Limits::default()) {
        Ok(envelope) => envelope,
        Err(error) => {
            assert!(EnvelopeError::CODES.contains(&error.code()), "{error:?}");
            *outcomes.entry(error.code()).or_default() += 1;
            return;
        }
    };
    let (events, unreadable) = whatsapp::normalize(&envelope, &WA_CX);
    let items = whatsapp_items(&envelope);
    assert!(
        events.len() + unreadable.len() <= items,
        "{} events and {} dead letters from {items} items",
        events.len(),
        unreadable.len()
    );
    for inbound in &events {
        let e = &inbound.event;
        assert!(!e.event_id.is_empty());
        assert_eq!(e.channel_id, "wa");
        assert_eq!(e.channel_kind, ChannelKind::Whatsapp as i32);
        assert!(!e.provider_message_id.is_empty());
        assert!(e.provider_message_id.len() <= whatsapp::MAX_ID_BYTES);
        assert_eq!(e.received_at, Some(AT));
        assert_eq!(
            e.provider_metadata
                .get("whatsapp.phone_number_id")
                .map(String::as_str),
            Some(WA_CX.phone_number_id)
        );
        if e.kind == EventKind::DeliveryStatus as i32 {
            assert!(e.sender.is_none());
            assert!(e.delivery.is_some());
            assert!(inbound.media.is_empty());
        } else {
            let sender = e.sender.as_ref().expect("a message has a sender");
            assert!(!sender.value.is_empty());
            assert!(sender.value.len() <= whatsapp::MAX_WA_ID_DIGITS);
            assert!(sender.value.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(e.kind == EventKind::Activity as i32, e.activity.is_some());
            assert_eq!(e.content.is_some(), e.activity.is_none());
        }
        let attachments = e.content.as_ref().map_or(0, |c| c.attachments.len());
        for media in &inbound.media {
            assert!((media.attachment as usize) < attachments);
            assert!(
                media
                    .source
                    .starts_with(omni_meta::media::GRAPH_MEDIA_PREFIX)
            );
        }
        *outcomes.entry("event").or_default() += 1;
    }
    for dead in &unreadable {
        assert!(
            whatsapp::CODES.contains(&dead.error.code),
            "{:?}",
            dead.error
        );
        assert!(dead.error.message.len() < 2_000, "{:?}", dead.error);
        // Each dead letter is the JSON of its own part of the body.
        let raw = std::str::from_utf8(&dead.raw).expect("a part of a UTF-8 body");
        assert!(
            serde_json::from_str::<&RawValue>(raw).is_ok(),
            "{}",
            &raw[..raw.len().min(200)]
        );
        *outcomes.entry(dead.error.code).or_default() += 1;
    }
    // Pure: the same body gives the same result.
    assert_eq!(whatsapp::normalize(&envelope, &WA_CX), (events, unreadable));
}

#[test]
fn whatsapp_payloads_survive_mutation() {
    let started = Instant::now();
    let samples = fixtures("whatsapp");
    assert!(samples.len() >= 20, "{:?}", samples.len());
    let mut outcomes = BTreeMap::new();
    // Undamaged, every sample reads, and only the samples of what is not
    // ingested are dead letters.
    for (name, body) in &samples {
        let mut before = BTreeMap::new();
        exercise_whatsapp(body, &mut before);
        let dead: usize = before
            .iter()
            .filter(|(code, _)| **code != "event")
            .map(|(_, n)| n)
            .sum();
        let expected = match name.as_str() {
            "template_status.json" | "unsupported.json" | "webhook_error.json" => 1,
            "batch.json" => 2,
            _ => 0,
        };
        assert_eq!(dead, expected, "{name}: {before:?}");
    }
    let mut rng = Rng::new(0x5eed_0a11);
    for _ in 0..6_000 {
        let (_, sample) = rng.pick(&samples);
        let body = mutate(&mut rng, sample);
        exercise_whatsapp(&body, &mut outcomes);
    }
    // The damage reached the envelope's checks and every stage of the
    // normalizer, and some bodies stayed readable (`too_many_items` needs
    // a bigger body than any sample).
    let envelope_codes = EnvelopeError::CODES
        .into_iter()
        .filter(|code| *code != "too_many_items");
    for code in ["event"]
        .into_iter()
        .chain(envelope_codes)
        .chain(whatsapp::CODES)
    {
        assert!(
            outcomes.contains_key(code),
            "{code} never reached: {outcomes:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn whatsapp_hostile_batches_stay_bounded() {
    let started = Instant::now();
    // Thousands of messages in one change, each a little different: every
    // one is accounted for, one by one.
    let message = |i: usize| -> String {
        match i % 5 {
            0 => format!(
                r#"{{"from":"1650555{i:04}","id":"wamid.{i}","type":"text","text":{{"body":"{i}"}}}}"#
            ),
            1 => format!(r#"{{"from":"1","id":"wamid.{i}","type":"text","text":{{"body":{i}}}}}"#),
            2 => {
                format!(r#"{{"from":"x{i}","id":"wamid.{i}","type":"text","text":{{"body":"a"}}}}"#)
            }
            3 => format!(r#"{{"from":"1","id":"wamid.{i}","type":"poll"}}"#),
            _ => format!(r#"[{i}]"#),
        }
    };
    let messages: Vec<String> = (0..5_000).map(message).collect();
    let body = format!(
        r#"{{"object":"{WA_OBJECT}","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"metadata":{{"phone_number_id":"{}"}},"messages":[{}]}}}}]}}]}}"#,
        WA_CX.phone_number_id,
        messages.join(",")
    );
    let envelope = Envelope::parse(body.as_bytes(), WA_OBJECT, &Limits::default()).unwrap();
    let (events, unreadable) = whatsapp::normalize(&envelope, &WA_CX);
    assert_eq!(events.len(), 1_000);
    assert_eq!(unreadable.len(), 4_000);
    let mut codes = BTreeMap::new();
    for dead in &unreadable {
        *codes.entry(dead.error.code).or_insert(0) += 1;
    }
    assert_eq!(
        codes,
        BTreeMap::from([
            ("invalid_message", 2_000),
            ("invalid_sender", 1_000),
            ("unsupported_message", 1_000)
        ])
    );
    // In the POST's order.
    assert_eq!(events[1].event.provider_message_id, "wamid.5");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

// --- Messenger and Instagram -------------------------------------------

/// The Messenger and Instagram normalizer under the same damage, plus
/// damage aimed at its flags: nothing panics, every part of a POST is an
/// event, a dead letter or a counted own echo, and an echo never passes
/// for the customer's message.
mod messaging {
    use std::collections::BTreeMap;

    use omni_meta::{
        envelope::{Envelope, EnvelopeError, Limits},
        messaging::normalize::{
            CODES, MAX_ATTACHMENTS, MessagingContext, Normalized, Platform, normalize,
        },
    };
    use omni_proto::v1::{Direction, EventKind};
    use serde_json::{Value, json, value::RawValue};

    use super::{AT, Rng, fixtures, mutate};

    /// The app id of the fixtures' own echoes.
    const OWN_APP: &str = "1517776481860111";

    fn context(platform: Platform) -> MessagingContext<'static> {
        match platform {
            Platform::Messenger => MessagingContext {
                channel_id: "fb",
                platform,
                account_id: "106712345678901",
                own_app_id: Some(OWN_APP),
                received_at: AT,
            },
            Platform::Instagram => MessagingContext {
                channel_id: "ig",
                platform,
                account_id: "17841405822304914",
                own_app_id: Some(OWN_APP),
                received_at: AT,
            },
        }
    }

    /// Every sample POST of both products.
    fn samples() -> Vec<(Platform, Vec<u8>)> {
        let mut all = Vec::new();
        for platform in [Platform::Messenger, Platform::Instagram] {
            let found = fixtures(platform.prefix());
            assert!(found.len() >= 10, "{}: {}", platform.prefix(), found.len());
            all.extend(found.into_iter().map(|(_, body)| (platform, body)));
        }
        all
    }

    /// Normalizes `body` and checks what must hold of any POST. Returns the
    /// outcomes seen (`event:message`, `event:activity`, `own_echo`, a
    /// dead-letter code, or the envelope's error code).
    fn exercise(platform: Platform, body: &[u8]) -> Vec<String> {
        let cx = context(platform);
        let envelope = match Envelope::parse(body, platform.object(), &Limits::default()) {
            Ok(envelope) => envelope,
            Err(error) => {
                assert!(EnvelopeError::CODES.contains(&error.code()), "{error:?}");
                return vec![error.code().to_owned()];
            }
        };
        let out = normalize(&envelope, &cx);
        // Every part of the POST is accounted for, once.
        let parts: usize = envelope
            .entry
            .iter()
            .map(|e| {
                if e.id == cx.account_id {
                    e.messaging.len() + e.changes.len()
                } else {
                    1
                }
            })
            .sum();
        assert_eq!(
            out.events.len() + out.unreadable.len() + out.own_echoes,
            parts
        );
        // The same POST again is the same result (a retry dedupes).
        assert_eq!(out, normalize(&envelope, &cx));
        check(&cx, &out);

        let mut outcomes: Vec<String> = out
            .events
            .iter()
            .map(|i| match EventKind::try_from(i.event.kind) {
                Ok(EventKind::Message) => "event:message".to_owned(),
                Ok(EventKind::Activity) => "event:activity".to_owned(),
                other => panic!("{other:?}"),
            })
            .collect();
        outcomes.extend(out.unreadable.iter().map(|u| u.error.code.to_owned()));
        outcomes.extend((0..out.own_echoes).map(|_| "own_echo".to_owned()));
        outcomes
    }

    fn check(cx: &MessagingContext<'_>, out: &Normalized) {
        let prefix = cx.platform.prefix();
        let echo_key = format!("{prefix}.echo");
        for inbound in &out.events {
            let e = &inbound.event;
            assert!(!e.provider_message_id.is_empty());
            assert_eq!(
                e.event_id,
                omni_model::event_id(cx.channel_id, &e.provider_message_id).to_string()
            );
            assert_eq!(e.channel_kind, cx.platform.channel_kind() as i32);
            let customer = match Direction::try_from(e.direction) {
                Ok(Direction::Inbound) => {
                    assert!(e.recipients.is_empty());
                    assert!(!e.provider_metadata.contains_key(&echo_key), "{e:?}");
                    e.sender.as_ref().unwrap()
                }
                Ok(Direction::Outbound) => {
                    // The business's own message: never a customer's.
                    assert!(e.sender.is_none());
                    assert_eq!(e.provider_metadata[&echo_key], "true");
                    assert_eq!(e.recipients.len(), 1);
                    &e.recipients[0]
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(
                customer.kind,
                omni_model::proto::kind_to_proto(cx.platform.handle_kind()) as i32
            );
            assert_eq!(customer.scope, cx.account_id);
            assert!(customer.verified);
            assert!(!customer.value.is_empty() && customer.value.len() <= 256);
            assert_eq!(
                e.threading.as_ref().unwrap().provider_chat_id,
                customer.value
            );
            assert_eq!(e.received_at, Some(AT));
            match EventKind::try_from(e.kind) {
                Ok(EventKind::Activity) => {
                    assert!(e.content.is_none());
                    assert!(inbound.media.is_empty());
                    assert!(!e.activity.as_ref().unwrap().name.is_empty());
                }
                Ok(EventKind::Message) => assert!(e.activity.is_none()),
                other => panic!("{other:?}"),
            }
            let attachments = e.content.as_ref().map_or(0, |c| c.attachments.len());
            assert!(attachments <= MAX_ATTACHMENTS);
            for media in &inbound.media {
                assert!((media.attachment as usize) < attachments);
                assert!(media.source.starts_with("https://"), "{}", media.source);
            }
            for attachment in e.content.iter().flat_map(|c| &c.attachments) {
                assert!(attachment.uri.is_empty() || attachment.uri.starts_with("https://"));
            }
        }
        for unreadable in &out.unreadable {
            assert!(CODES.contains(&unreadable.error.code), "{unreadable:?}");
            // Dead letters keep the part as JSON text (byte for byte when it
            // is an item, whose numbers serde may still refuse to read).
            serde_json::from_slice::<Box<RawValue>>(&unreadable.raw)
                .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&unreadable.raw)));
        }
    }

    /// A value to put where a sample had something else.
    fn targeted_value(rng: &mut Rng) -> Value {
        match rng.below(16) {
            0 => Value::Null,
            1 => Value::Bool(rng.below(2) == 0),
            2 => Value::from(rng.next_u64() as i64),
            3 => Value::from(rng.next_u64()),
            4 => Value::from(1.5e300),
            5 => Value::from(""),
            6 => Value::from("\u{0}\u{202e}x".repeat(rng.below(100))),
            7 => Value::from("9".repeat(rng.below(600))),
            8 => Value::from(vec![Value::from(1), Value::Null]),
            9 => json!({"id": "6251234567890123"}),
            10 => json!({"type": "image", "payload": {"url": "javascript:alert(1)"}}),
            11 => json!([{"type": "story_mention", "payload": {"url": "https://cdn.example/s"}}]),
            12 => Value::from("https://cdn.example/x.jpg"),
            13 => json!({"mid": "m_x", "is_echo": true, "app_id": OWN_APP, "text": "x"}),
            14 => Value::from(true),
            _ => Value::from("1458692752478"),
        }
    }

    /// A random object somewhere in `value` (the root included).
    fn random_object<'v>(rng: &mut Rng, value: &'v mut Value) -> Option<&'v mut Value> {
        let mut target = value;
        for _ in 0..rng.below(6) {
            let children: Vec<usize> = match &*target {
                Value::Object(map) => (0..map.len())
                    .filter(|&i| {
                        map.values()
                            .nth(i)
                            .is_some_and(|v| v.is_object() || v.is_array())
                    })
                    .collect(),
                Value::Array(items) => (0..items.len())
                    .filter(|&i| items[i].is_object() || items[i].is_array())
                    .collect(),
                _ => Vec::new(),
            };
            if children.is_empty() {
                break;
            }
            let child = *rng.pick(&children);
            target = match target {
                Value::Object(map) => map.values_mut().nth(child).unwrap(),
                Value::Array(items) => &mut items[child],
                _ => unreachable!(),
            };
        }
        target.is_object().then_some(target)
    }

    fn first_entry(post: &mut Value) -> Option<&mut Value> {
        post.get_mut("entry")?.get_mut(0)
    }

    /// One random damage to a POST's structure.
    fn mutate_item(rng: &mut Rng, post: &mut Value) {
        if rng.below(8) == 0 {
            // Copy an item: a batch of more than one.
            if let Some(items) = first_entry(post)
                .and_then(|e| e.get_mut("messaging"))
                .and_then(Value::as_array_mut)
                && let Some(item) = items.first().cloned()
            {
                items.push(item);
            }
            return;
        }
        if rng.below(10) == 0 {
            // An entry for another account.
            if let Some(entry) = first_entry(post).and_then(Value::as_object_mut) {
                entry.insert("id".into(), Value::from("999"));
            }
            return;
        }
        let Some(target) = random_object(rng, post) else {
            return;
        };
        let object = target.as_object_mut().unwrap();
        let keys: Vec<String> = object.keys().cloned().collect();
        if keys.is_empty() || rng.below(6) == 0 {
            let key = *rng.pick(&[
                "is_echo",
                "is_deleted",
                "is_unsupported",
                "reply_to",
                "attachments",
                "quick_reply",
                "mid",
                "timestamp",
                "x",
            ]);
            object.insert(key.into(), targeted_value(rng));
            return;
        }
        let key = rng.pick(&keys).clone();
        match rng.below(4) {
            0 => {
                object.remove(&key);
            }
            1 => {
                let inner = object.remove(&key).unwrap_or(Value::Null);
                object.insert(key, json!({ "nested": inner }));
            }
            _ => {
                object.insert(key, targeted_value(rng));
            }
        }
    }

    #[test]
    fn mutated_messaging_posts_never_panic() {
        let samples = samples();
        let mut outcomes = BTreeMap::<String, usize>::new();
        for (platform, body) in &samples {
            for outcome in exercise(*platform, body) {
                *outcomes.entry(outcome).or_default() += 1;
            }
        }
        // The samples themselves reach every kind of outcome.
        for outcome in [
            "event:message",
            "event:activity",
            "own_echo",
            "other_account",
            "unsupported_event",
            "unsupported_field",
            "unsupported_message",
            "invalid_item",
        ] {
            assert!(outcomes.contains_key(outcome), "{outcome}: {outcomes:?}");
        }

        let mut rng = Rng::new(0x5eed_4d45_5441);
        let mut damaged = BTreeMap::<String, usize>::new();
        for round in 0..8000 {
            let (platform, sample) = rng.pick(&samples);
            let body = if round % 2 == 0 {
                // The shared damage: any node, any byte.
                mutate(&mut rng, sample)
            } else {
                // Damage aimed at this format's flags and fields.
                let mut post: Value = serde_json::from_slice(sample).unwrap();
                for _ in 0..1 + rng.below(3) {
                    mutate_item(&mut rng, &mut post);
                }
                serde_json::to_vec(&post).unwrap()
            };
            for outcome in exercise(*platform, &body) {
                *damaged.entry(outcome).or_default() += 1;
            }
        }
        // The damage reached every check, and much stayed readable.
        for outcome in [
            "event:message",
            "event:activity",
            "own_echo",
            "other_account",
            "invalid_item",
            "invalid_sender",
            "invalid_recipient",
            "invalid_timestamp",
            "unsupported_event",
            "unsupported_message",
            "invalid_json",
        ] {
            assert!(damaged.contains_key(outcome), "{outcome}: {damaged:?}");
        }
    }

    #[test]
    fn echoes_never_become_customer_messages() {
        // Whatever else is damaged, a message marked `is_echo` is the
        // business's: outbound, skipped as our own, or dead-lettered.
        let samples = samples();
        let mut rng = Rng::new(0x5eed_ec40);
        let mut outbound = 0;
        for _ in 0..2000 {
            let (platform, body) = rng.pick(&samples);
            let mut post: Value = serde_json::from_slice(body).unwrap();
            mutate_item(&mut rng, &mut post);
            let mut echoed = Vec::new();
            if let Some(items) = first_entry(&mut post)
                .and_then(|e| e.get_mut("messaging"))
                .and_then(Value::as_array_mut)
            {
                for item in items.iter_mut() {
                    if let Some(message) = item.get_mut("message").and_then(Value::as_object_mut) {
                        message.insert("is_echo".into(), Value::Bool(true));
                        echoed.extend(
                            message
                                .get("mid")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                        );
                    }
                }
            }
            let body = serde_json::to_vec(&post).unwrap();
            let Ok(envelope) = Envelope::parse(&body, platform.object(), &Limits::default()) else {
                continue;
            };
            let out = normalize(&envelope, &context(*platform));
            for inbound in &out.events {
                let e = &inbound.event;
                if e.direction == Direction::Outbound as i32 {
                    outbound += 1;
                } else {
                    assert!(
                        !echoed.contains(&e.provider_message_id),
                        "an echo became the customer's: {e:?}"
                    );
                }
            }
        }
        assert!(outbound > 100, "{outbound}");
    }

    #[test]
    fn huge_batches_are_bounded_by_the_envelope() {
        let item = r#"{"sender":{"id":"6251234567890123"},"timestamp":1,"message":{"mid":"m","text":"x"}}"#;
        let body = format!(
            r#"{{"object":"page","entry":[{{"id":"106712345678901","messaging":[{}]}}]}}"#,
            vec![item; 5000].join(",")
        );
        let error = Envelope::parse(body.as_bytes(), "page", &Limits::default()).unwrap_err();
        assert_eq!(error.code(), "too_many_items");
        let body = format!(
            r#"{{"object":"page","entry":[{{"id":"106712345678901","messaging":[{}]}}]}}"#,
            vec![item; 1500].join(",")
        );
        let envelope = Envelope::parse(body.as_bytes(), "page", &Limits::default()).unwrap();
        let out = normalize(&envelope, &context(Platform::Messenger));
        // One mid, 1500 deliveries of it: one event id, for the log to dedupe.
        assert_eq!(out.events.len(), 1500);
        assert!(
            out.events
                .iter()
                .all(|i| i.event.event_id == out.events[0].event.event_id)
        );
    }
}
