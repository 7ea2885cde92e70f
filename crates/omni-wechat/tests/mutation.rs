//! Deterministic mutation testing of the pure halves: valid inputs (the
//! documentation's sample XMLs and kf items, WeChat's and WeCom's sample
//! ciphertexts and signatures) are damaged thousands of ways with a fixed
//! seed. Nothing may panic, a damaged signature never verifies, and a
//! damaged ciphertext that passes the signature check is impossible: what
//! `decrypt_verified` accepts is exactly the original.

use omni_testkit::corpus::Rng;
use std::time::{Duration, Instant};

use omni_proto::Timestamp;
use omni_wechat::{
    crypto::{self, AesKey, CryptoError, MsgCrypt},
    kf::normalize::{KfContext, normalize as kf_normalize},
    oa::normalize::{OaContext, normalize as oa_normalize, provider_message_id},
    xml::{self, XmlError, XmlLimits},
};
use serde_json::Value;

const AT: Timestamp = Timestamp {
    seconds: 1_700_000_000,
    nanos: 0,
};

const OA_CX: OaContext<'static> = OaContext {
    channel_id: "oa",
    app_id: "wx1234567890abcdef",
    unionid_scope: None,
    received_at: AT,
};

const KF_CX: KfContext<'static> = KfContext {
    channel_id: "kf",
    corp_id: "ww1234567890",
    received_at: AT,
};

/// WeCom's published sample (token, key, corp id, message signature).
const WECOM_TOKEN: &str = "QDG6eK";
const WECOM_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const WECOM_CORP: &str = "wx5823bf96d3bd56c7";
const WECOM_TIMESTAMP: &str = "1409659813";
const WECOM_NONCE: &str = "1372623149";
const WECOM_SIGNATURE: &str = "477715d11cdb4164915debcba66cb864d751f3e6";
const WECOM_ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";

/// WeChat's Official Account sample.
const OA_TOKEN: &str = "spamtest";
const OA_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const OA_APP_ID: &str = "wx2c2769f8efd9abc2";
const OA_TIMESTAMP: &str = "1409735669";
const OA_NONCE: &str = "1320562132";
const OA_SIGNATURE: &str = "5d197aaffba7e9b25a30732f161a50dee96bd5fa";
const OA_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";

fn fixtures_dir() -> String {
    format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"))
}

/// Every Official Account sample body.
fn oa_samples() -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(format!("{}/oa", fixtures_dir()))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "xml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "{paths:?}");
    paths
        .iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect()
}

/// Every kf sample item.
fn kf_samples() -> Vec<Value> {
    let text =
        std::fs::read_to_string(format!("{}/kf/sync_msg_items.json", fixtures_dir())).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    all.as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .map(|(_, item)| item.clone())
        .collect()
}

/// One random damage to a byte string.
fn mutate_bytes(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    if out.is_empty() {
        out.push(rng.byte());
        return out;
    }
    let at = rng.below(out.len());
    match rng.below(6) {
        0 => out[at] ^= 1 << rng.below(8),
        1 => out.insert(at, rng.byte()),
        2 => {
            out.remove(at);
        }
        3 => out.truncate(at),
        4 => {
            let end = (at + 1 + rng.below(16)).min(out.len());
            let chunk = out[at..end].to_vec();
            out.splice(at..at, chunk);
        }
        _ => out[at] = rng.byte(),
    }
    out
}

/// Where `needle` next occurs in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The byte ranges of the elements `<Name>...</Name>` below the root.
fn elements(body: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = find(body, b"<", from) {
        let Some(close) = find(body, b">", open) else {
            break;
        };
        let name = &body[open + 1..close];
        if !name.is_empty()
            && name != b"xml"
            && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            let end_tag = [&b"</"[..], name, b">"].concat();
            if let Some(end) = find(body, &end_tag, close) {
                found.push((open, end + end_tag.len()));
            }
        }
        from = close;
    }
    found
}

/// One random damage aimed at XML: structure, references, declarations.
fn mutate_xml(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let at = rng.below(out.len().max(1));
    let insert = |out: &mut Vec<u8>, at: usize, what: &[u8]| {
        let at = at.min(out.len());
        out.splice(at..at, what.iter().copied());
    };
    match rng.below(10) {
        0..=2 => return mutate_bytes(rng, input),
        3 => {
            // Duplicate a field.
            let found = elements(&out);
            if let Some(&(start, end)) = found.get(rng.below(found.len().max(1))) {
                let copy = out[start..end].to_vec();
                insert(&mut out, end, &copy);
            }
        }
        4 => {
            // Nest a field in more elements.
            let found = elements(&out);
            if let Some(&(start, end)) = found.get(rng.below(found.len().max(1))) {
                let depth = 1 + rng.below(6);
                insert(&mut out, end, &b"</N>".repeat(depth));
                insert(&mut out, start, &b"<N>".repeat(depth));
            }
        }
        5 => {
            if let Some(b) = out.get_mut(at) {
                *b = b'&';
            }
        }
        6 => insert(&mut out, at, b"<!DOCTYPE xml [<!ENTITY e \"boom\">]>"),
        7 => {
            let references: [&[u8]; 6] =
                [b"&e;", b"&#0;", b"&#x110000;", b"&amp;", b"&#x41;", b"&"];
            let chosen = *rng.pick(&references);
            insert(&mut out, at, chosen);
        }
        8 => {
            let markup: [&[u8]; 7] = [
                b"<?pi x?>",
                b"<![CDATA[",
                b"]]>",
                b"<!--",
                b"-->",
                b"</xml>",
                b"<xml>",
            ];
            let chosen = *rng.pick(&markup);
            insert(&mut out, at, chosen);
        }
        _ => {
            // Overwrite a whole element's text with random bytes.
            let found = elements(&out);
            if let Some(&(start, end)) = found.get(rng.below(found.len().max(1))) {
                let len = end - start;
                let junk: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                out.splice(start..end, junk);
            }
        }
    }
    out
}

/// Parses and normalizes; only panics (and the checks here) can fail.
/// Returns the XML error code, or the normalization's error code, or
/// `ok`.
fn exercise_oa(body: &[u8]) -> &'static str {
    let limits = XmlLimits::default();
    match xml::parse(body, &limits) {
        Ok(fields) => {
            assert!(fields.len() <= limits.max_fields);
            for (name, _) in fields.iter() {
                assert!(!name.is_empty() && !name.starts_with('/') && !name.ends_with('/'));
                assert!(name.split('/').count() < limits.max_depth);
            }
            let _ = provider_message_id(&fields);
            match oa_normalize(&fields, &OA_CX) {
                Ok(inbound) => {
                    let event = &inbound.event;
                    assert!(!event.event_id.is_empty());
                    assert!(event.sender.is_some());
                    let attachments = event.content.as_ref().map_or(0, |c| c.attachments.len());
                    for media in &inbound.media {
                        assert!((media.attachment as usize) < attachments);
                        assert!(media.source.starts_with("media:"));
                    }
                    "ok"
                }
                Err(error) => error.code,
            }
        }
        Err(error) => {
            assert!(XmlError::CODES.contains(&error.code()), "{error:?}");
            error.code()
        }
    }
}

#[test]
fn mutated_xml_never_panics() {
    let samples = oa_samples();
    for sample in &samples {
        exercise_oa(sample);
        assert!(oa_normalize(&xml::parse(sample, &XmlLimits::default()).unwrap(), &OA_CX).is_ok());
    }
    let mut rng = Rng::new(0x5eed_0001);
    let mut outcomes = std::collections::BTreeMap::new();
    for _ in 0..6000 {
        let mut body = rng.pick(&samples).clone();
        for _ in 0..1 + rng.below(3) {
            body = mutate_xml(&mut rng, &body);
        }
        *outcomes.entry(exercise_oa(&body)).or_insert(0) += 1;
    }
    // The damage reached every check, and some bodies stayed readable.
    for code in [
        "ok",
        "invalid_xml",
        "xml_doctype",
        "xml_entity",
        "xml_processing_instruction",
        "xml_duplicate_field",
        "xml_too_deep",
        "xml_not_utf8",
        "missing_field",
    ] {
        assert!(
            outcomes.contains_key(code),
            "{code} never reached: {outcomes:?}"
        );
    }
}

#[test]
fn mutated_doctypes_and_entities_are_always_refused() {
    let samples = oa_samples();
    let mut rng = Rng::new(0x5eed_0002);
    for _ in 0..1000 {
        let sample = rng.pick(&samples);
        // Before the root, where a DOCTYPE belongs.
        let mut body = b"<!DOCTYPE xml [<!ENTITY e \"boom\">]>".to_vec();
        body.extend_from_slice(sample);
        assert_eq!(
            xml::parse(&body, &XmlLimits::default()).unwrap_err(),
            XmlError::Doctype
        );
        // An undefined entity in a field's text (outside CDATA).
        let text = String::from_utf8(sample.clone()).unwrap();
        let with_ref = text.replacen("</CreateTime>", "&e;</CreateTime>", 1);
        assert_eq!(
            xml::parse(with_ref.as_bytes(), &XmlLimits::default())
                .unwrap_err()
                .code(),
            "xml_entity"
        );
    }
}

#[test]
fn billion_laughs_is_refused_quickly() {
    let mut bomb =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
    for level in 1..=9 {
        let previous = if level == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", level - 1)
        };
        bomb.push_str(&format!(
            " <!ENTITY lol{level} \"{}\">\n",
            format!("&{previous};").repeat(10)
        ));
    }
    bomb.push_str("]>\n<xml><Content>&lol9;</Content></xml>");
    let started = Instant::now();
    let error = xml::parse(bomb.as_bytes(), &XmlLimits::default()).unwrap_err();
    assert_eq!(error, XmlError::Doctype);
    // Without the DOCTYPE the reference is simply unknown.
    let bare = "<xml><Content>&lol9;</Content></xml>";
    assert_eq!(
        xml::parse(bare.as_bytes(), &XmlLimits::default())
            .unwrap_err()
            .code(),
        "xml_entity"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn ten_megabytes_are_refused_quickly() {
    let started = Instant::now();
    let mut body = b"<xml><Content><![CDATA[".to_vec();
    body.resize(10 * 1024 * 1024, b'a');
    body.extend_from_slice(b"]]></Content></xml>");
    assert!(matches!(
        xml::parse(&body, &XmlLimits::default()),
        Err(XmlError::TooLarge { .. })
    ));
    // With the size limit lifted, the other limits still stop deep or
    // wide documents early.
    let unbounded = XmlLimits {
        max_bytes: usize::MAX,
        ..XmlLimits::default()
    };
    let deep = format!("<xml>{}", "<a>".repeat(3 * 1024 * 1024));
    assert_eq!(
        xml::parse(deep.as_bytes(), &unbounded).unwrap_err(),
        XmlError::TooDeep {
            max: XmlLimits::default().max_depth
        }
    );
    let wide: String = std::iter::once("<xml>".to_owned())
        .chain((0..500_000).map(|i| format!("<F{i}>x</F{i}>")))
        .collect();
    assert!(wide.len() > 5_000_000);
    assert_eq!(
        xml::parse(wide.as_bytes(), &unbounded).unwrap_err(),
        XmlError::TooManyFields { max: 64 }
    );
    // And a big field's text is read in linear time.
    let huge_field = XmlLimits {
        max_bytes: 16 * 1024 * 1024,
        ..XmlLimits::default()
    };
    assert_eq!(
        xml::parse(&body, &huge_field)
            .unwrap()
            .get("Content")
            .map(str::len),
        Some(body.len() - 42)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A channel's crypto and one valid, signed ciphertext of it.
struct Sealed {
    crypt: MsgCrypt,
    token: &'static str,
    timestamp: &'static str,
    nonce: &'static str,
    signature: String,
    encrypted: String,
    plain: Vec<u8>,
}

fn sealed_samples() -> Vec<Sealed> {
    let wecom = MsgCrypt::new(
        AesKey::from_encoding_aes_key(WECOM_KEY).unwrap(),
        None,
        WECOM_CORP,
    );
    let oa = MsgCrypt::new(
        AesKey::from_encoding_aes_key(OA_KEY).unwrap(),
        Some(AesKey::from_encoding_aes_key(WECOM_KEY).unwrap()),
        OA_APP_ID,
    );
    let mut all = vec![
        Sealed {
            plain: wecom.decrypt(WECOM_ENCRYPT).unwrap(),
            crypt: wecom.clone(),
            token: WECOM_TOKEN,
            timestamp: WECOM_TIMESTAMP,
            nonce: WECOM_NONCE,
            signature: WECOM_SIGNATURE.to_owned(),
            encrypted: WECOM_ENCRYPT.to_owned(),
        },
        Sealed {
            plain: oa.decrypt(OA_ENCRYPT).unwrap(),
            crypt: oa.clone(),
            token: OA_TOKEN,
            timestamp: OA_TIMESTAMP,
            nonce: OA_NONCE,
            signature: OA_SIGNATURE.to_owned(),
            encrypted: OA_ENCRYPT.to_owned(),
        },
    ];
    // Short and empty messages too, so damage reaches every part of the
    // framing.
    for (i, message) in [&b""[..], b"x", b"<xml><A>1</A></xml>"].iter().enumerate() {
        let encrypted = wecom.encrypt_with(message, [i as u8; 16]);
        all.push(Sealed {
            signature: crypto::sign(WECOM_TOKEN.as_bytes(), &["1700000000", "nonce", &encrypted]),
            crypt: wecom.clone(),
            token: WECOM_TOKEN,
            timestamp: "1700000000",
            nonce: "nonce",
            encrypted,
            plain: message.to_vec(),
        });
    }
    all
}

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";

/// One random damage to a base64 string (sometimes staying in the
/// alphabet, so it reaches the cipher).
fn mutate_base64(rng: &mut Rng, input: &str) -> String {
    let mut out = input.as_bytes().to_vec();
    let at = rng.below(out.len());
    match rng.below(4) {
        0 => out[at] = *rng.pick(BASE64),
        1 => {
            // Replace a whole 4-character group: always valid base64 when
            // it is not the padded end.
            let group = at / 4 * 4;
            for b in out.iter_mut().skip(group).take(4) {
                *b = *rng.pick(&BASE64[..64]);
            }
        }
        _ => out = mutate_bytes(rng, &out),
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn mutated_ciphertexts_never_pass_as_another_message() {
    let samples = sealed_samples();
    let mut rng = Rng::new(0x5eed_0003);
    let mut opened_unverified = 0;
    for _ in 0..4000 {
        let sample = rng.pick(&samples);
        let mutated = mutate_base64(&mut rng, &sample.encrypted);
        // Alone, decrypt only must not panic: CBC cannot tell every change
        // (see `cbc_is_malleable_so_the_signature_is_the_integrity_check`).
        match sample.crypt.decrypt(&mutated) {
            Ok(message) => {
                assert!(message.len() <= mutated.len());
                opened_unverified += 1;
            }
            Err(error) => assert!(CryptoError::CODES.contains(&error.code())),
        }
        // Behind the signature, only the original opens.
        match sample.crypt.decrypt_verified(
            sample.token.as_bytes(),
            sample.timestamp,
            sample.nonce,
            &sample.signature,
            &mutated,
        ) {
            Ok(message) => {
                assert_eq!(mutated, sample.encrypted);
                assert_eq!(message, sample.plain);
            }
            Err(error) => {
                assert_ne!(mutated, sample.encrypted);
                assert_eq!(error, CryptoError::BadSignature);
            }
        }
    }
    // The mutations did reach the cipher and the framing checks.
    assert!(opened_unverified > 0);
}

#[test]
fn mutated_ciphertext_bytes_are_errors_or_whole_messages() {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let samples = sealed_samples();
    let mut rng = Rng::new(0x5eed_0004);
    let mut errors = std::collections::BTreeSet::new();
    for _ in 0..4000 {
        let sample = rng.pick(&samples);
        let bytes = STANDARD.decode(&sample.encrypted).unwrap();
        let mutated = STANDARD.encode(mutate_bytes(&mut rng, &bytes));
        match sample.crypt.decrypt(&mutated) {
            Ok(message) => assert!(message.len() < bytes.len()),
            Err(error) => {
                errors.insert(error.code());
            }
        }
    }
    for code in [
        "bad_block_length",
        "bad_padding",
        "truncated_plaintext",
        "wrong_receive_id",
    ] {
        assert!(errors.contains(code), "{code} never reached: {errors:?}");
    }
}

#[test]
fn cbc_is_malleable_so_the_signature_is_the_integrity_check() {
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    let crypt = MsgCrypt::new(
        AesKey::from_encoding_aes_key(WECOM_KEY).unwrap(),
        None,
        WECOM_CORP,
    );
    let mut bytes = STANDARD.decode(WECOM_ENCRYPT).unwrap();
    // Byte 5 of the first block steers byte 5 of the second block, which
    // is the second byte of the message (`<xml>` becomes `<yml>`).
    bytes[5] ^= b'x' ^ b'y';
    let tampered = STANDARD.encode(&bytes);
    let message = crypt.decrypt(&tampered).unwrap();
    assert!(message.starts_with(b"<yml>"));
    assert_eq!(
        crypt.decrypt_verified(
            WECOM_TOKEN.as_bytes(),
            WECOM_TIMESTAMP,
            WECOM_NONCE,
            WECOM_SIGNATURE,
            &tampered
        ),
        Err(CryptoError::BadSignature)
    );
}

/// One random damage to a lowercase hex signature.
fn mutate_signature(rng: &mut Rng, input: &str) -> String {
    let mut out = input.as_bytes().to_vec();
    let at = rng.below(out.len());
    match rng.below(4) {
        0 => out[at] = *rng.pick(b"0123456789abcdef"),
        1 => out[at] = out[at].to_ascii_uppercase(),
        _ => out = mutate_bytes(rng, &out),
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn mutated_signatures_never_verify() {
    let samples = sealed_samples();
    let mut rng = Rng::new(0x5eed_0005);
    for _ in 0..4000 {
        let sample = rng.pick(&samples);
        let parts = [sample.timestamp, sample.nonce, sample.encrypted.as_str()];
        let mutated = mutate_signature(&mut rng, &sample.signature);
        let verified = crypto::verify(sample.token.as_bytes(), &parts, &mutated);
        assert_eq!(verified, mutated == sample.signature, "{mutated}");
        // A damaged token, timestamp or nonce does not verify either.
        let token =
            String::from_utf8_lossy(&mutate_bytes(&mut rng, sample.token.as_bytes())).into_owned();
        if token != sample.token {
            assert!(!crypto::verify(token.as_bytes(), &parts, &sample.signature));
        }
        let nonce =
            String::from_utf8_lossy(&mutate_bytes(&mut rng, sample.nonce.as_bytes())).into_owned();
        if nonce != sample.nonce {
            let parts = [sample.timestamp, nonce.as_str(), sample.encrypted.as_str()];
            assert!(!crypto::verify(
                sample.token.as_bytes(),
                &parts,
                &sample.signature
            ));
        }
    }
}

#[test]
fn decrypted_samples_survive_mutation_as_xml() {
    let samples = sealed_samples();
    let mut rng = Rng::new(0x5eed_0006);
    let plains: Vec<_> = samples
        .iter()
        .map(|s| s.plain.clone())
        .filter(|p| p.starts_with(b"<xml>"))
        .collect();
    for _ in 0..1500 {
        let plain = rng.pick(&plains).clone();
        let body = mutate_xml(&mut rng, &plain);
        exercise_oa(&body);
    }
}

/// A random JSON value, to put where a sample had something else.
fn random_value(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => Value::from(rng.next_u64() as i64),
        3 => Value::from(f64::from_bits(rng.next_u64())).clone(),
        4 => Value::from(""),
        5 => Value::from("\u{0}\u{202e}x".repeat(rng.below(200))),
        6 => Value::from(vec![Value::from(1), Value::Null]),
        7 => serde_json::json!({"content": "x", "media_id": "m", "event_type": "enter_session"}),
        _ => Value::from(1e300),
    }
}

/// One random damage to a JSON item's structure.
fn mutate_item(rng: &mut Rng, item: &mut Value) {
    // Walk down to a random object.
    let mut target = item;
    for _ in 0..rng.below(3) {
        let Some(object) = target.as_object() else {
            break;
        };
        let keys: Vec<String> = object
            .iter()
            .filter(|(_, v)| v.is_object())
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            break;
        }
        let key = rng.pick(&keys).clone();
        target = &mut target[key.as_str()];
    }
    let Some(object) = target.as_object_mut() else {
        *target = random_value(rng);
        return;
    };
    let keys: Vec<String> = object.keys().cloned().collect();
    if keys.is_empty() {
        object.insert("x".into(), random_value(rng));
        return;
    }
    let key = rng.pick(&keys).clone();
    match rng.below(4) {
        0 => {
            object.remove(&key);
        }
        1 => {
            let inner = object.remove(&key).unwrap_or(Value::Null);
            object.insert(key, serde_json::json!({ "nested": inner }));
        }
        _ => {
            object.insert(key, random_value(rng));
        }
    }
}

fn exercise_kf(item: &Value) {
    if let Ok(inbound) = kf_normalize(item, &KF_CX) {
        let event = &inbound.event;
        assert!(!event.provider_message_id.is_empty());
        assert!(event.sender.is_some() || !event.recipients.is_empty());
        let attachments = event.content.as_ref().map_or(0, |c| c.attachments.len());
        for media in &inbound.media {
            assert!((media.attachment as usize) < attachments);
        }
    }
}

#[test]
fn mutated_kf_items_never_panic() {
    let samples = kf_samples();
    for sample in &samples {
        let result = kf_normalize(sample, &KF_CX);
        assert!(
            result.is_ok() || result.as_ref().is_err_and(|e| e.code == "servicer_event"),
            "{sample}: {result:?}"
        );
    }
    let mut rng = Rng::new(0x5eed_0007);
    for _ in 0..3000 {
        let mut item = rng.pick(&samples).clone();
        for _ in 0..1 + rng.below(3) {
            mutate_item(&mut rng, &mut item);
        }
        exercise_kf(&item);
    }
    // Damaged JSON text, where it still parses.
    for _ in 0..3000 {
        let text = serde_json::to_vec(rng.pick(&samples)).unwrap();
        let mutated = mutate_bytes(&mut rng, &text);
        if let Ok(item) = serde_json::from_slice::<Value>(&mutated) {
            exercise_kf(&item);
        }
    }
}
