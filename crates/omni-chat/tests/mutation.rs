//! Deterministic mutations of sample browser frames through
//! `parse_client_frame`: whatever the bytes, it returns (never panics),
//! refuses with a documented code, and what it accepts is within bounds.

use omni_chat::protocol::{
    ClientFrame, FrameError, Limits, MAX_ATTACHMENTS, is_attachment_id, is_client_message_id,
    parse_client_frame,
};
use omni_testkit::corpus::Rng;

const SAMPLES: &[&str] = &[
    r#"{"type":"hello"}"#,
    r#"{"type":"hello","visitor_id":"v_0123456789ABCDEFGHIJab","visitor_token":"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843","identity":{"kind":"email","value":"ana@example.com","name":"Ana","hash":"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},"locale":"fa-IR"}"#,
    r#"{"type":"message","client_message_id":"m-1","text":"سلام، سفارش ۱۲۳ کجاست؟"}"#,
    r#"{"type":"message","client_message_id":"m_2","text":"مرحبا \"quoted\" \\ \u0000 \ud83d\ude00"}"#,
    r#"{"type":"message","client_message_id":"m-3","text":"","attachments":[{"id":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},{"id":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}]}"#,
    r#"{"type":"typing","on":true}"#,
    r#"{"type":"contact","email":"Zoë.Lima+chat@Bücher.Example"}"#,
    r#"{"type":"read","event_id":"6f1c1b9e-1f5d-5c1a-9a7e-2b1f3c4d5e6f"}"#,
    r#"{"type":"typing","on":false,"future":{"nested":[1,[2,[3]]],"s":"[[[{{{"}}"#,
];

/// Fragments spliced in: JSON syntax, escapes, hostile and non-ASCII text.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    ":",
    ",",
    "null",
    "true",
    "1e999",
    "-0",
    "\\u0000",
    "\\ud800",
    "\"type\":\"message\"",
    "\"text\":\"\"",
    "\"identity\":{}",
    "۱۲۳",
    "😀",
    "\u{202e}",
    "\u{0}",
    "\"on\":\"x\"",
    "[[[[[[[[[[",
    "\"client_message_id\":\"a:b\"",
];

fn mutate(rng: &mut Rng, sample: &str) -> String {
    let mut bytes = sample.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(7) {
            // Flip a bit.
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            // Delete a run.
            1 if at < bytes.len() => {
                let end = (at + 1 + rng.below(8)).min(bytes.len());
                bytes.drain(at..end);
            }
            // Truncate.
            2 => bytes.truncate(at),
            // Splice a fragment.
            3 => {
                let fragment = FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes();
                bytes.splice(at..at, fragment.iter().copied());
            }
            // Duplicate a run.
            4 if at < bytes.len() => {
                let end = (at + 1 + rng.below(16)).min(bytes.len());
                let run = bytes[at..end].to_vec();
                bytes.splice(at..at, run);
            }
            // A random byte.
            5 => bytes.insert(at, (rng.next_u64() & 0xff) as u8),
            // Swap two bytes.
            _ if !bytes.is_empty() => {
                let other = rng.below(bytes.len());
                let at = at.min(bytes.len() - 1);
                bytes.swap(at, other);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What every accepted frame must satisfy, whatever produced it.
fn check_accepted(frame: &ClientFrame, limits: &Limits) {
    match frame {
        ClientFrame::Message {
            client_message_id,
            text,
            attachments,
        } => {
            assert!(
                is_client_message_id(client_message_id),
                "{client_message_id:?}"
            );
            assert!(!text.trim().is_empty() || !attachments.is_empty());
            assert!(attachments.len() <= MAX_ATTACHMENTS);
            assert!(attachments.iter().all(|a| is_attachment_id(&a.id)));
            assert!(text.chars().count() <= limits.max_text_chars);
        }
        ClientFrame::Read { event_id } => assert_eq!(event_id.len(), 36),
        ClientFrame::Hello { locale, .. } => {
            if let Some(locale) = locale {
                assert!(locale.len() <= 35 && !locale.is_empty());
            }
        }
        ClientFrame::Typing { .. } => {}
        ClientFrame::Contact { email } => {
            // Kept normalized: normalizing again changes nothing.
            let again = omni_model::Handle::email(email).expect("a kept address parses");
            assert_eq!(again.value(), email);
        }
    }
}

fn run(limits: &Limits, seed: u64, rounds: usize) -> (usize, usize) {
    let mut rng = Rng::new(seed);
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..rounds {
        let sample = SAMPLES[round % SAMPLES.len()];
        let mutated = mutate(&mut rng, sample);
        match parse_client_frame(&mutated, limits) {
            Ok(frame) => {
                check_accepted(&frame, limits);
                accepted += 1;
            }
            Err(error) => {
                assert!(
                    FrameError::CODES.contains(&error.code()),
                    "{} for {mutated:?}",
                    error.code()
                );
                assert!(error.to_string().len() < 400, "{error}");
                refused += 1;
            }
        }
    }
    (accepted, refused)
}

#[test]
fn every_sample_parses_unmutated() {
    for sample in SAMPLES {
        let frame = parse_client_frame(sample, &Limits::default())
            .unwrap_or_else(|e| panic!("{sample}: {e}"));
        check_accepted(&frame, &Limits::default());
    }
}

#[test]
fn mutated_frames_never_panic_and_stay_bounded() {
    let (accepted, refused) = run(&Limits::default(), 0x9e37_79b9_7f4a_7c15, 20_000);
    // Both outcomes occur, so the mutations exercise the accepting paths too.
    assert!(accepted > 500, "{accepted} accepted");
    assert!(refused > 5_000, "{refused} refused");
}

#[test]
fn mutated_frames_under_tight_limits() {
    let limits = Limits {
        max_frame_bytes: 120,
        max_text_chars: 5,
        max_depth: 2,
    };
    let (_, refused) = run(&limits, 42, 10_000);
    assert!(refused > 0);
}

#[test]
fn huge_and_deep_frames_are_refused_cheaply() {
    let limits = Limits::default();
    let big = format!(
        r#"{{"type":"message","client_message_id":"a","text":"{}"}}"#,
        "ش".repeat(limits.max_frame_bytes)
    );
    assert_eq!(
        parse_client_frame(&big, &limits).unwrap_err().code(),
        "frame_too_large"
    );
    let deep = format!(
        r#"{{"type":"typing","on":true,"x":{}}}"#,
        "[".repeat(limits.max_frame_bytes - 40)
    );
    assert_eq!(
        parse_client_frame(&deep, &limits).unwrap_err().code(),
        "too_deep"
    );
    let objects = "{\"a\":".repeat(1_000);
    assert_eq!(
        parse_client_frame(&objects, &limits).unwrap_err().code(),
        "too_deep"
    );
}
