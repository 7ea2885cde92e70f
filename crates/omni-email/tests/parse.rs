//! `parse_message` on a corpus of messages in the forms real clients send
//! (see `corpus/generate.py`), on limit-breaking messages, and on random
//! mutations of the corpus.

use omni_email::{ParseLimits, ParsedEmail, parse_message};
use omni_proto::{
    Timestamp,
    v1::{ChannelKind, Content, Direction, EventKind, HandleKind, IdentityHandle, ThreadingHints},
};
use sha2::{Digest, Sha256};

const CHANNEL: &str = "acme-mail";
const RECEIVED: Timestamp = Timestamp {
    seconds: 1_795_200_000,
    nanos: 0,
};

fn corpus(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn corpus_names() -> Vec<String> {
    let dir = format!("{}/tests/corpus", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    names.sort();
    names
}

fn parse(name: &str) -> ParsedEmail {
    parse_message(&corpus(name), CHANNEL, RECEIVED, &ParseLimits::default())
        .unwrap_or_else(|e| panic!("{name}: {} ({})", e.message, e.code))
}

fn parse_raw(raw: &[u8]) -> Result<ParsedEmail, omni_email::ParseError> {
    parse_message(raw, CHANNEL, RECEIVED, &ParseLimits::default())
}

fn content(p: &ParsedEmail) -> &Content {
    p.event.content.as_ref().unwrap()
}

fn threading(p: &ParsedEmail) -> &ThreadingHints {
    p.event.threading.as_ref().unwrap()
}

fn sender(p: &ParsedEmail) -> &IdentityHandle {
    p.event.sender.as_ref().unwrap()
}

fn recipients(p: &ParsedEmail) -> Vec<(&str, &str)> {
    p.event
        .recipients
        .iter()
        .map(|r| (r.value.as_str(), r.display_name.as_str()))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks what every parsed message has in common.
fn assert_envelope(p: &ParsedEmail, provider_message_id: &str) {
    let e = &p.event;
    assert_eq!(e.channel_id, CHANNEL);
    assert_eq!(e.channel_kind, ChannelKind::Email as i32);
    assert_eq!(e.direction, Direction::Inbound as i32);
    assert_eq!(e.kind, EventKind::Message as i32);
    assert_eq!(e.provider_message_id, provider_message_id);
    assert_eq!(
        e.event_id,
        omni_model::event_id(CHANNEL, provider_message_id).to_string()
    );
    assert_eq!(e.received_at, Some(RECEIVED));
    assert_eq!(e.ingested_at, Some(RECEIVED));
    let s = sender(p);
    assert_eq!(s.kind, HandleKind::Email as i32);
    assert!(!s.verified, "email senders are never verified");
    // Attachment bodies line up with the event's fetched attachments.
    let fetched: Vec<_> = content(p)
        .attachments
        .iter()
        .filter(|a| !a.sha256.is_empty())
        .collect();
    assert_eq!(fetched.len(), p.attachments.len());
    for (listed, body) in fetched.iter().zip(&p.attachments) {
        assert_eq!(listed.sha256, body.sha256);
        assert_eq!(listed.sha256, sha256_hex(&body.bytes));
        assert_eq!(listed.size, body.bytes.len() as u64);
        assert_eq!(listed.media_type, body.media_type);
        assert_eq!(listed.uri, format!("omni-att://sha256/{}", listed.sha256));
    }
}

#[test]
fn thunderbird_multipart_alternative() {
    let p = parse("thunderbird_alternative.eml");
    assert_envelope(&p, "5f1c2a9e-8d3b-4c7a-9f21-3e6b7d0a1c42@mueller.example");
    let s = sender(&p);
    assert_eq!(s.value, "zoe.mueller@mueller.example");
    assert_eq!(s.display_name, "Zoë Müller");
    assert_eq!(
        recipients(&p),
        [
            ("support@acme.example", "Acme Support"),
            ("juergen.weiss@mueller.example", "Jürgen Weiß"),
            ("buchhaltung@mueller.example", ""),
        ]
    );
    assert_eq!(p.event.sent_at.unwrap().seconds, 1_795_162_443);
    let c = content(&p);
    assert_eq!(c.subject, "Bestellung 7781 – Lieferung verspätet");
    // format=flowed is undone: the soft break after "bitte " is joined.
    assert_eq!(
        c.text,
        "Hallo Acme-Team,\n\nmeine Bestellung 7781 ist immer noch nicht angekommen. \
         Können Sie bitte nachsehen, wo das Paket gerade ist?\n\nViele Grüße\nZoë Müller"
    );
    assert!(c.html.contains("<p>Hallo Acme-Team,</p>"));
    assert_eq!(c.new_text, "");
    assert!(c.attachments.is_empty());
    let t = threading(&p);
    assert_eq!(
        t.message_id,
        "5f1c2a9e-8d3b-4c7a-9f21-3e6b7d0a1c42@mueller.example"
    );
    assert!(t.in_reply_to.is_empty() && t.references.is_empty());
    assert_eq!(
        t.normalized_subject,
        "Bestellung 7781 – Lieferung verspätet"
    );
    assert!(!p.classification.is_noise());
    assert!(p.event.provider_metadata.is_empty());
}

#[test]
fn outlook_nested_related_with_inline_image_and_pdf() {
    let p = parse("outlook_nested_attachments.eml");
    assert_envelope(
        &p,
        "AM6PR02MB428012C4A1B2C3D4E5F6A7B8C9D0E@AM6PR02MB4280.eurprd02.prod.outlook.example",
    );
    assert_eq!(sender(&p).value, "bob.smith@contoso.example");
    assert_eq!(sender(&p).display_name, "Bob Smith");
    let c = content(&p);
    assert_eq!(c.subject, "RE: Invoice 7781 - wrong amount");
    assert!(
        c.text.starts_with(
            "Hello,\n\nThe attached invoice shows 118.00 EUR but the order total was 98.00 EUR. Could you"
        ),
        "{}",
        c.text
    );
    assert!(c.html.contains("cid:image001.png@01DB3B1E.5C2F7A30"));
    assert_eq!(c.attachments.len(), 2);
    let image = &c.attachments[0];
    assert_eq!(image.name, "image001.png");
    assert_eq!(image.media_type, "image/png");
    assert_eq!(image.size, 70);
    assert_eq!(
        image.sha256,
        "2b8f238e51d479665e34e7c3993ed75b8272e64bc0c57a462f76e79763fe8731"
    );
    let pdf = &c.attachments[1];
    assert_eq!(pdf.name, "invoice-7781.pdf");
    assert_eq!(pdf.media_type, "application/pdf");
    assert_eq!(pdf.size, 296);
    assert_eq!(
        pdf.sha256,
        "3011d02d8f9762cfb702febdfe874447c2104903f9df11a3a265aa44c8e5e9f0"
    );
    assert!(p.attachments[1].bytes.starts_with(b"%PDF-1.4\n"));
    assert!(p.attachments[0].bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    let t = threading(&p);
    assert_eq!(t.in_reply_to, ["ticket-7781-1@acme.example"]);
    assert_eq!(t.references, ["ticket-7781-1@acme.example"]);
    assert_eq!(t.normalized_subject, "Invoice 7781 - wrong amount");
}

#[test]
fn gbk_reply_with_chinese_quote() {
    let p = parse("gbk_reply_zh.eml");
    assert_envelope(&p, "tencent_3F2E1D0C9B8A7F6E5D4C3B2A@qq.example");
    assert_eq!(sender(&p).value, "li.wei@example.cn");
    assert_eq!(sender(&p).display_name, "李伟");
    assert_eq!(recipients(&p), [("support@acme.example", "Acme 客服")]);
    assert_eq!(p.event.sent_at.unwrap().seconds, 1_795_170_031);
    let c = content(&p);
    assert_eq!(c.subject, "回复：订单7781还没到");
    assert!(
        c.text
            .contains("在 2026年11月20日 10:02，Acme 客服 <support@acme.example> 写道：")
    );
    assert!(c.text.contains("> 您好，您的订单 7781 已于今天发出"));
    assert_eq!(c.new_text, "好的，谢谢！我明天在家等快递。\n\n李伟");
    // The GBK-named attachment keeps its GBK bytes as sent.
    assert_eq!(c.attachments.len(), 1);
    let note = &c.attachments[0];
    assert_eq!(note.name, "地址.txt");
    assert_eq!(note.media_type, "application/octet-stream");
    assert_eq!(note.size, 38);
    assert_eq!(
        note.sha256,
        "af766ad9a0c3b67efb1c211b82a46cc693209af7cfa24a005d715c79d3065d88"
    );
    let t = threading(&p);
    assert_eq!(t.in_reply_to, ["ticket-7781-2@acme.example"]);
    assert_eq!(
        t.references,
        ["ticket-7781-1@acme.example", "ticket-7781-2@acme.example"]
    );
    assert_eq!(t.normalized_subject, "订单7781还没到");
}

#[test]
fn big5_outlook_reply() {
    let p = parse("big5_outlook_zh_tw.eml");
    assert_envelope(&p, "000001db3b2a$8f1e2d30$ad5a8790$@example.tw");
    assert_eq!(sender(&p).display_name, "陳小明");
    let c = content(&p);
    assert_eq!(c.subject, "回覆: 商品瑕疵");
    assert!(c.text.contains("於 2026年11月20日 週五 上午10:02 寫道："));
    assert_eq!(
        c.new_text,
        "您好，\n\n我收到的商品有瑕疵，請問可以換貨嗎？\n\n陳小明"
    );
    assert_eq!(threading(&p).normalized_subject, "商品瑕疵");
    assert_eq!(threading(&p).in_reply_to, ["ticket-9001@acme.example"]);
}

#[test]
fn shift_jis_message() {
    let p = parse("shift_jis_ja.eml");
    assert_envelope(&p, "20261120190355.A1B2.5C3D7E1F@example.jp");
    assert_eq!(sender(&p).value, "taro.yamada@example.jp");
    assert_eq!(sender(&p).display_name, "山田 太郎");
    let c = content(&p);
    assert_eq!(c.subject, "配送状況について");
    assert_eq!(
        c.text,
        "Acme サポート様\n\nお世話になっております。山田です。\n注文番号 7781 の配送状況を教えていただけますか。\n\nよろしくお願いいたします。\n山田 太郎"
    );
    assert_eq!(c.new_text, "");
}

#[test]
fn iso_2022_jp_message() {
    let p = parse("iso2022jp_ja.eml");
    assert_envelope(&p, "8c1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6@example.ne.jp");
    assert_eq!(sender(&p).display_name, "佐藤 花子");
    let c = content(&p);
    assert_eq!(c.subject, "Re: 返品について");
    assert!(
        c.text
            .starts_with("サポートご担当者様\n\n返品の手続きについて質問があります。")
    );
    assert!(c.text.ends_with("佐藤 花子"));
    assert_eq!(threading(&p).normalized_subject, "返品について");
}

#[test]
fn windows_1256_arabic_reply() {
    let p = parse("windows1256_ar.eml");
    assert_envelope(&p, "001501db3b39$aa11bb22$cc33dd44$@Example.SA");
    assert_eq!(sender(&p).value, "m.ali@example.sa");
    assert_eq!(sender(&p).display_name, "محمد علي");
    let c = content(&p);
    assert_eq!(c.subject, "رد: طلبي لم يصل");
    assert!(c.text.contains("-----Original Message-----"));
    assert_eq!(
        c.new_text,
        "مرحبا،\n\nلم يصل طلبي رقم 7781 حتى الآن. أرجو المساعدة.\n\nمع الشكر،\nمحمد علي"
    );
    assert_eq!(threading(&p).normalized_subject, "طلبي لم يصل");
}

#[test]
fn iso_8859_1_quoted_printable() {
    let p = parse("iso8859_1_qp_fr.eml");
    assert_envelope(&p, "4A7B2C91.3040506@example.fr");
    assert_eq!(sender(&p).display_name, "Amélie Lefèvre");
    let c = content(&p);
    assert_eq!(c.subject, "Échange d'article - taille trop petite");
    // The QP soft line breaks are joined and the Latin-1 bytes decoded.
    assert!(c.text.contains(
        "J'ai reçu le colis, mais la taille ne convient pas. Est-il possible d'échanger l'article contre une taille au-dessus ? Merci"
    ), "{}", c.text);
    assert!(c.text.ends_with("Cordialement,\nAmélie Lefèvre"));
}

#[test]
fn outlook_original_message_reply() {
    let p = parse("outlook_original_message.eml");
    assert_envelope(&p, "002a01db3b4e$1c2d3e40$54687ac0$@contoso.example");
    // Outlook's quotes around the name are dropped.
    assert_eq!(recipients(&p), [("support@acme.example", "Acme Support")]);
    let c = content(&p);
    assert_eq!(
        c.new_text,
        "Hi,\n\nThe corrected invoice arrived, thanks for the quick help!\n\nBob"
    );
    assert!(
        c.text
            .ends_with("Please find the corrected invoice attached.\n\nAcme Support")
    );
    let t = threading(&p);
    assert_eq!(t.in_reply_to, ["ticket-7781-3@acme.example"]);
    assert_eq!(
        t.references,
        ["ticket-7781-1@acme.example", "ticket-7781-3@acme.example"]
    );
    assert_eq!(t.normalized_subject, "Invoice 7781 - wrong amount");
}

#[test]
fn gmail_reply_with_attribution_and_quotes() {
    let p = parse("gmail_reply.eml");
    assert_envelope(&p, "CAKx9dQm4F7yWq+u2VJ0sZ=GtqX4a@mail.gmail.com");
    assert_eq!(sender(&p).value, "jane.doe@gmail.example");
    assert_eq!(p.event.sent_at.unwrap().seconds, 1_795_200_441);
    let c = content(&p);
    assert_eq!(c.subject, "Re: Your return request #5512");
    assert!(c.text.contains("> Your return label is attached."));
    assert_eq!(
        c.new_text,
        "Thanks, I printed the label and will drop the box off tomorrow.\n\nJane"
    );
    assert!(c.html.contains("gmail_quote"));
    let t = threading(&p);
    assert_eq!(t.message_id, "CAKx9dQm4F7yWq+u2VJ0sZ=GtqX4a@mail.gmail.com");
    assert_eq!(t.in_reply_to, ["ticket-5512-2@acme.example"]);
    assert_eq!(
        t.references,
        [
            "ticket-5512-1@acme.example",
            "CAJ5xK3p9Q@mail.gmail.com",
            "ticket-5512-2@acme.example"
        ]
    );
    assert_eq!(t.normalized_subject, "Your return request #5512");
    assert!(!p.classification.is_noise());
}

#[test]
fn postfix_bounce_is_classified_and_keeps_the_returned_message_as_attachment() {
    let p = parse("postfix_dsn_bounce.eml");
    assert_envelope(&p, "20261120100517.4F2A11C0E3@mx1.acme.example");
    assert_eq!(sender(&p).value, "mailer-daemon@mx1.acme.example");
    let c = content(&p);
    assert!(
        c.text
            .starts_with("This is the mail system at host mx1.acme.example.")
    );
    // The returned message is an attachment, not the body.
    assert!(!c.text.contains("your order has shipped"));
    let types: Vec<&str> = c
        .attachments
        .iter()
        .map(|a| a.media_type.as_str())
        .collect();
    assert_eq!(types, ["message/delivery-status", "message/rfc822"]);
    let returned = &p.attachments[1].bytes;
    assert!(returned.starts_with(b"Return-Path: <support@acme.example>"));
    assert!(
        std::str::from_utf8(returned)
            .unwrap()
            .contains("Hello, your order has shipped.")
    );
    let cl = &p.classification;
    assert!(cl.bounce && cl.is_noise());
    // Postfix also marks bounces Auto-Submitted.
    assert!(cl.auto_reply);
    assert!(!cl.bulk);
    assert_eq!(
        cl.reasons,
        ["auto_submitted", "dsn_report", "mailer_daemon"]
    );
    let meta = &p.event.provider_metadata;
    assert_eq!(meta["bounce"], "true");
    assert_eq!(meta["auto_reply"], "true");
    assert!(!meta.contains_key("bulk"));
    assert_eq!(
        meta["noise_reasons"],
        "auto_submitted,dsn_report,mailer_daemon"
    );
}

#[test]
fn exchange_auto_reply() {
    let p = parse("exchange_auto_reply.eml");
    assert_envelope(&p, "7d3f8e2a1b0c4d5e9f6a7b8c9d0e1f2a@EX01.corp.example");
    let cl = &p.classification;
    assert!(cl.auto_reply && !cl.bounce && !cl.bulk);
    assert_eq!(cl.reasons, ["auto_submitted", "x_auto_response_suppress"]);
    assert_eq!(p.event.provider_metadata["auto_reply"], "true");
    assert!(
        content(&p)
            .text
            .starts_with("Ich bin bis zum 30.11.2026 nicht im Büro")
    );
}

#[test]
fn mailing_list_message() {
    let p = parse("mailman_list.eml");
    assert_envelope(&p, "a9f8e7d6-c5b4-a392-8170-6f5e4d3c2b1a@lee.example");
    assert_eq!(
        content(&p).subject,
        "[acme-users] Re: Export to CSV broken?"
    );
    assert_eq!(threading(&p).normalized_subject, "Export to CSV broken?");
    let cl = &p.classification;
    assert!(cl.bulk && !cl.auto_reply && !cl.bounce);
    assert_eq!(
        cl.reasons,
        ["precedence_list", "list_id", "list_unsubscribe"]
    );
    assert_eq!(p.event.provider_metadata["bulk"], "true");
}

#[test]
fn message_without_message_id_gets_a_content_hash_id() {
    let raw = corpus("no_message_id.eml");
    let p = parse("no_message_id.eml");
    let id = format!("sha256:{}", sha256_hex(&raw));
    assert_eq!(
        id,
        "sha256:1c0c45017f8dfbd3e815c46c52163d6e11119a6ba504acf44ee30f8dc48c1828"
    );
    assert_envelope(&p, &id);
    assert_eq!(threading(&p).message_id, "");
    assert_eq!(sender(&p).display_name, "سارا محمدی");
    assert_eq!(content(&p).subject, "\u{200F}پاسخ: سفارش من");
    assert_eq!(threading(&p).normalized_subject, "سفارش من");
    assert_eq!(content(&p).text, "سلام، سفارش من هنوز نرسیده است.");
    assert_eq!(p.event.sent_at.unwrap().seconds, 1_795_172_400);
    // The same bytes fetched again, later, give the same event.
    let later = Timestamp {
        seconds: RECEIVED.seconds + 3600,
        nanos: 0,
    };
    let again = parse_message(&raw, CHANNEL, later, &ParseLimits::default()).unwrap();
    assert_eq!(again.event.event_id, p.event.event_id);
}

#[test]
fn html_only_message() {
    let p = parse("html_only.eml");
    assert_envelope(&p, "form-20261120160000-1234@shop.example");
    let c = content(&p);
    assert_eq!(
        c.text,
        "New message\n\nName: Carlos Ruiz\nProduct: Café Maker “Deluxe”\n\n- Color: red\n- Size: L\n\nDoes it work with 110 V? Thanks & regards."
    );
    assert!(c.html.starts_with("<html><head><style>"));
    assert_eq!(
        p.event.provider_metadata["reply_to"],
        "carlos.ruiz@example.es"
    );
}

#[test]
fn every_corpus_message_parses() {
    let names = corpus_names();
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        let p = parse(&name);
        assert!(!sender(&p).value.is_empty(), "{name}");
        assert!(!content(&p).text.is_empty(), "{name}");
    }
}

// ---- sender rules ----

#[test]
fn sender_falls_back_only_without_from() {
    let p = parse_raw(
        b"Sender: Ops <ops@example.com>\r\nReturn-Path: <bounce@example.com>\r\nSubject: x\r\n\r\nhi\r\n",
    )
    .unwrap();
    assert_eq!(sender(&p).value, "ops@example.com");
    assert_eq!(sender(&p).display_name, "Ops");
    let p = parse_raw(b"Return-Path: <bounce@Example.COM>\r\nSubject: x\r\n\r\nhi\r\n").unwrap();
    assert_eq!(sender(&p).value, "bounce@example.com");

    let err = parse_raw(b"Subject: x\r\nTo: a@example.com\r\n\r\nhi\r\n").unwrap_err();
    assert_eq!(err.code, "missing_sender");
    let err = parse_raw(b"Return-Path: <>\r\nSubject: x\r\n\r\nhi\r\n").unwrap_err();
    assert_eq!(err.code, "invalid_sender");
    // A broken From is not replaced by Sender.
    let err = parse_raw(b"From: Jane Doe\r\nSender: ops@example.com\r\nSubject: x\r\n\r\nhi\r\n")
        .unwrap_err();
    assert_eq!(err.code, "invalid_sender");
    let err = parse_raw(b"From: <jane@exa mple.com>\r\n\r\nhi\r\n").unwrap_err();
    assert_eq!(err.code, "invalid_sender");
    let err =
        parse_raw(b"From: ceo@acme.example\r\nFrom: jane@example.com\r\nSubject: x\r\n\r\nhi\r\n")
            .unwrap_err();
    assert_eq!(err.code, "invalid_sender");
    assert!(err.message.contains("2 From headers"), "{err}");
}

#[test]
fn not_a_message() {
    for raw in [&b""[..], b"\r\n\r\n", b"\x00\x01\x02\xff\xfe"] {
        let err = parse_raw(raw).unwrap_err();
        assert!(
            ["not_rfc5322", "missing_sender"].contains(&err.code),
            "{raw:?}: {err:?}"
        );
    }
    assert_eq!(parse_raw(b"").unwrap_err().code, "not_rfc5322");
}

#[test]
fn attachment_names_are_never_paths() {
    let raw = b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee files\r\n--b\r\nContent-Type: application/octet-stream; name=\"../../etc/passwd\"\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"C:\\\\Users\\\\bob\\\\a.pdf\"\r\n\r\n%PDF\r\n--b\r\nContent-Type: image/png; name=\"..\"\r\n\r\nx\r\n--b--\r\n";
    let p = parse_raw(raw).unwrap();
    let names: Vec<&str> = content(&p)
        .attachments
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["passwd", "a.pdf", ""]);
    assert_eq!(&p.attachments[0].bytes[..], b"hi");
}

#[test]
fn text_attachments_keep_their_bytes_and_charset() {
    // A GB18030 CSV attached with quoted-printable; the stored file is the
    // bytes as sent, not a UTF-8 re-encoding.
    let csv = "订单,状态\r\n7781,未到\r\n";
    let gb = encode_gb18030_sample();
    let raw = format!(
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee csv\r\n--b\r\nContent-Type: text/csv; charset=GB18030; name=orders.csv\r\nContent-Disposition: attachment; filename=orders.csv\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        base64_encode(&gb)
    );
    let _ = csv;
    let p = parse_raw(raw.as_bytes()).unwrap();
    let c = content(&p);
    assert_eq!(c.text, "see csv");
    assert_eq!(c.attachments.len(), 1);
    assert_eq!(c.attachments[0].name, "orders.csv");
    assert_eq!(c.attachments[0].media_type, "text/csv; charset=gb18030");
    assert_eq!(&p.attachments[0].bytes[..], &gb[..]);
}

/// "订单,状态\r\n7781,未到\r\n" in GB18030 (produced with Python's codecs).
fn encode_gb18030_sample() -> Vec<u8> {
    vec![
        0xb6, 0xa9, 0xb5, 0xa5, b',', 0xd7, 0xb4, 0xcc, 0xac, b'\r', b'\n', b'7', b'7', b'8', b'1',
        b',', 0xce, 0xb4, 0xb5, 0xbd, b'\r', b'\n',
    ]
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- limits ----

fn nested_multipart(levels: usize) -> Vec<u8> {
    let mut raw = String::from("From: a@example.com\r\nSubject: deep\r\n");
    for i in 0..levels {
        raw.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    raw.push_str("Content-Type: text/plain\r\n\r\nbottom\r\n");
    for i in (0..levels).rev() {
        raw.push_str(&format!("--b{i}--\r\n"));
    }
    raw.into_bytes()
}

#[test]
fn nesting_limit() {
    let err = parse_raw(&nested_multipart(50)).unwrap_err();
    assert_eq!(err.code, "too_deep", "{err}");
    // The limit itself is fine: ten multiparts put the text at depth 10.
    let p = parse_raw(&nested_multipart(10)).unwrap();
    assert_eq!(content(&p).text, "bottom");
    assert_eq!(
        parse_raw(&nested_multipart(11)).unwrap_err().code,
        "too_deep"
    );
}

#[test]
fn nesting_through_encoded_attached_messages_counts() {
    // message/rfc822 parts sent base64-encoded, each holding the next.
    let mut inner = b"From: z@example.com\r\nSubject: core\r\n\r\ncore\r\n".to_vec();
    for _ in 0..12 {
        inner = format!(
            "From: a@example.com\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            base64_encode(&inner)
        )
        .into_bytes();
    }
    assert_eq!(parse_raw(&inner).unwrap_err().code, "too_deep");
}

#[test]
fn part_count_limit() {
    let mut raw =
        String::from("From: a@example.com\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n");
    for i in 0..250 {
        raw.push_str(&format!(
            "--x\r\nContent-Type: application/octet-stream; name=f{i}.bin\r\n\r\n{i}\r\n"
        ));
    }
    raw.push_str("--x--\r\n");
    let err = parse_raw(raw.as_bytes()).unwrap_err();
    assert_eq!(err.code, "too_many_parts", "{err}");

    // A hostile 10 MB of delimiters is refused without building the parts.
    let mut flood =
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n".to_vec();
    while flood.len() < 10 << 20 {
        flood.extend_from_slice(b"--x\r\n\r\n");
    }
    let start = std::time::Instant::now();
    assert_eq!(parse_raw(&flood).unwrap_err().code, "too_many_parts");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));

    // Under the limit, every part is an attachment.
    let limits = ParseLimits::default();
    let mut raw =
        String::from("From: a@example.com\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n");
    for i in 0..limits.max_parts - 1 {
        raw.push_str(&format!(
            "--x\r\nContent-Type: application/octet-stream; name=f{i}.bin\r\n\r\n{i}\r\n"
        ));
    }
    raw.push_str("--x--\r\n");
    let p = parse_raw(raw.as_bytes()).unwrap();
    assert_eq!(content(&p).attachments.len(), limits.max_parts - 1);
}

#[test]
fn size_limit() {
    let limits = ParseLimits::default();
    let mut raw = b"From: a@example.com\r\nSubject: big\r\n\r\n".to_vec();
    raw.resize(limits.max_message_bytes + 1, b'a');
    let err = parse_raw(&raw).unwrap_err();
    assert_eq!(err.code, "too_large");
    let small = ParseLimits {
        max_message_bytes: 100,
        ..ParseLimits::default()
    };
    let err = parse_message(&corpus("gmail_reply.eml"), CHANNEL, RECEIVED, &small).unwrap_err();
    assert_eq!(err.code, "too_large");
}

#[test]
fn header_floods_are_refused_early() {
    let mut raw = b"From: a@example.com\r\n".to_vec();
    while raw.len() < 20 << 20 {
        raw.extend_from_slice(b"X:y\r\n");
    }
    raw.extend_from_slice(b"\r\nbody\r\n");
    let start = std::time::Instant::now();
    assert_eq!(parse_raw(&raw).unwrap_err().code, "headers_too_large");
    assert!(start.elapsed() < std::time::Duration::from_secs(2));

    let mut raw = b"From: a@example.com\r\nTo: ".to_vec();
    while raw.len() < omni_email::parse::MAX_HEADER_BYTES + 10 {
        raw.extend_from_slice(b"a@example.com,\r\n ");
    }
    raw.extend_from_slice(b"b@example.com\r\n\r\nbody\r\n");
    assert_eq!(parse_raw(&raw).unwrap_err().code, "headers_too_large");
}

#[test]
fn long_boundaries_are_refused() {
    let boundary = "b".repeat(300);
    let raw = format!(
        "From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    assert_eq!(parse_raw(raw.as_bytes()).unwrap_err().code, "invalid_mime");
}

#[test]
fn oversized_attachments_are_listed_not_kept() {
    let limits = ParseLimits {
        max_attachment_bytes: 100,
        ..ParseLimits::default()
    };
    let p = parse_message(
        &corpus("outlook_nested_attachments.eml"),
        CHANNEL,
        RECEIVED,
        &limits,
    )
    .unwrap();
    assert_envelope(&p, &p.event.provider_message_id.clone());
    let c = content(&p);
    assert_eq!(c.attachments.len(), 2);
    // The 70-byte image is kept; the 296-byte PDF is listed by size only.
    assert_eq!(c.attachments[0].size, 70);
    assert!(!c.attachments[0].sha256.is_empty());
    let pdf = &c.attachments[1];
    assert_eq!((pdf.name.as_str(), pdf.size), ("invoice-7781.pdf", 296));
    assert!(pdf.sha256.is_empty() && pdf.uri.is_empty());
    assert_eq!(p.attachments.len(), 1);
    assert_eq!(p.event.provider_metadata["attachments_skipped"], "1");
}

#[test]
fn long_bodies_are_cut_on_a_char_boundary() {
    let limits = ParseLimits {
        max_text_bytes: 10,
        ..ParseLimits::default()
    };
    // "Acme サポート様" is 4 + 1 + 3 bytes per kana: byte 10 falls inside "ポ".
    let p = parse_message(&corpus("shift_jis_ja.eml"), CHANNEL, RECEIVED, &limits).unwrap();
    assert_eq!(content(&p).text, "Acme サ");
    assert_eq!(p.event.provider_metadata["truncated"], "true");
    let full = parse("shift_jis_ja.eml");
    assert!(!full.event.provider_metadata.contains_key("truncated"));
}

#[test]
fn references_are_bounded() {
    let ids: Vec<String> = (0..1000).map(|i| format!("<m{i}@example.com>")).collect();
    let raw = format!(
        "From: a@example.com\r\nReferences: {}\r\n\r\nhi\r\n",
        ids.join("\r\n ")
    );
    let p = parse_raw(raw.as_bytes()).unwrap();
    let refs = &threading(&p).references;
    assert_eq!(refs.len(), omni_email::parse::MAX_REFERENCES);
    assert_eq!(refs[0], "m0@example.com");
    assert_eq!(refs[refs.len() - 1], "m999@example.com");
    assert_eq!(refs[1], format!("m{}@example.com", 1000 - refs.len() + 1));
}

// ---- robustness ----

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"--",
    b"=?GBK?B?",
    b"?=",
    b"=\r\n",
    b"Content-Type: multipart/mixed; boundary=\"z\"\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"\r\n--z\r\n",
    b"<",
    b">",
    b"\xff\xfe",
    b"&#x",
    b"From: <@>\r\n",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut raw = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        let len = raw.len().max(1);
        match rng.below(6) {
            0 => {
                let at = rng.below(len);
                if let Some(b) = raw.get_mut(at) {
                    *b = rng.next() as u8;
                }
            }
            1 => {
                let at = rng.below(len);
                raw.truncate(at);
            }
            2 => {
                let at = rng.below(len).min(raw.len());
                let token = TOKENS[rng.below(TOKENS.len())];
                raw.splice(at..at, token.iter().copied());
            }
            3 => {
                let at = rng.below(len).min(raw.len());
                let end = (at + rng.below(64)).min(raw.len());
                raw.drain(at..end);
            }
            4 => {
                // Duplicate a slice (repeats boundaries and headers).
                let at = rng.below(len).min(raw.len());
                let end = (at + rng.below(256)).min(raw.len());
                let copy = raw[at..end].to_vec();
                let to = rng.below(len).min(raw.len());
                raw.splice(to..to, copy);
            }
            _ => {
                let at = rng.below(len);
                if let Some(b) = raw.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
    }
    raw
}

/// `mail-parser` has `debug_assert!`s reachable by malformed input; the
/// parse contains them (see `parse_mime`), but the default hook would still
/// print each one. Other panics are printed as usual.
fn quiet_parser_debug_asserts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_parser = info
                .location()
                .is_some_and(|l| l.file().contains("mail-parser"));
            if !in_parser {
                default(info);
            }
        }));
    });
}

#[test]
fn mutated_corpus_never_panics() {
    quiet_parser_debug_asserts();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let seeds: Vec<Vec<u8>> = corpus_names().iter().map(|n| corpus(n)).collect();
    let mut parsed = 0;
    let mut rejected = 0;
    for i in 0..4000 {
        let seed = &seeds[i % seeds.len()];
        let raw = mutate(&mut rng, seed);
        match parse_raw(&raw) {
            Ok(p) => {
                parsed += 1;
                // Whatever parsed is still a well-formed event.
                assert_eq!(p.event.channel_kind, ChannelKind::Email as i32);
                assert!(!p.event.provider_message_id.is_empty());
                assert!(!p.event.event_id.is_empty());
                let fetched = content(&p)
                    .attachments
                    .iter()
                    .filter(|a| !a.sha256.is_empty())
                    .count();
                assert_eq!(fetched, p.attachments.len());
            }
            Err(e) => {
                rejected += 1;
                assert!(
                    [
                        "too_large",
                        "too_deep",
                        "too_many_parts",
                        "headers_too_large",
                        "invalid_mime",
                        "not_rfc5322",
                        "missing_sender",
                        "invalid_sender"
                    ]
                    .contains(&e.code),
                    "unexpected code {}",
                    e.code
                );
            }
        }
    }
    // The mutations exercise both paths.
    assert!(
        parsed > 1000 && rejected > 50,
        "{parsed} parsed, {rejected} rejected"
    );
}
