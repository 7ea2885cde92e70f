//! The rule book through its public API: the example rule file shipped in
//! `config/examples/rules.toml`, realistic customer messages, and load errors.

use omni_rules::{
    ChannelKind, ConversationState, Decision, Facts, Hours, Language, Priority, ReplyDecision,
    ResponseKind, RuleBook, SentAutoReply, SkipReason, SlaStatus, evaluate,
};

const EXAMPLE: &str = include_str!("../../../config/examples/rules.toml");

fn book() -> RuleBook {
    RuleBook::compile([("example.toml", EXAMPLE)]).unwrap()
}

fn ms(utc: &str) -> i64 {
    utc.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// A new Telegram conversation on a Sunday morning in Tehran (inside hours).
fn facts(text: &str) -> Facts<'_> {
    Facts {
        channel_id: "support-telegram",
        channel_kind: ChannelKind::Telegram,
        channel_name: Some("Telegram"),
        conversation_ref: "C-1042",
        conversation: ConversationState::New,
        event_time_ms: ms("2026-03-29T06:30:00Z"),
        text,
        ..Facts::default()
    }
}

fn sent(decision: &ReplyDecision) -> &omni_rules::Reply {
    match decision {
        ReplyDecision::Send(reply) => reply,
        ReplyDecision::Skip(reason) => panic!("expected a reply, skipped: {reason:?}"),
    }
}

fn skipped(decision: &ReplyDecision) -> &SkipReason {
    match decision {
        ReplyDecision::Skip(reason) => reason,
        ReplyDecision::Send(reply) => panic!("expected no reply, got {reply:?}"),
    }
}

#[test]
fn the_example_file_loads() {
    let book = book();
    let [set] = book.rule_sets() else {
        panic!("one rule set");
    };
    assert_eq!(set.name(), "shop-support");
    assert_eq!(set.time_zone(), "Asia/Tehran");
    assert_eq!(set.default_language(), Language::PERSIAN);
    assert_eq!(
        set.rule_names().collect::<Vec<_>>(),
        [
            "refund",
            "vip",
            "returning-open-issue",
            "order-status",
            "opening-hours",
            "after-hours",
            "acknowledge"
        ]
    );
    let languages: Vec<_> = set
        .template("after_hours")
        .unwrap()
        .languages()
        .map(Language::as_str)
        .collect();
    assert_eq!(languages, ["ar", "en", "fa", "zh"]);
    // Every channel falls to this catch-all rule set.
    assert!(book.rule_set_for("anything", ChannelKind::Email).is_some());
}

#[test]
fn persian_after_hours_message_gets_a_persian_acknowledgement() {
    let book = book();
    // Friday 20:00 in Tehran: closed. Telegram says the user's app is in
    // Persian.
    let mut facts = facts("سلام، وقت بخیر. یه سوال داشتم");
    facts.event_time_ms = ms("2026-03-27T16:30:00Z");
    facts.language_hint = Some("fa");
    facts.customer_name = Some("مریم");
    let decision = evaluate(&book, &facts);
    assert_eq!(decision.hours, Some(Hours::Outside));
    assert_eq!(decision.language, Language::PERSIAN);
    let ack = sent(&decision.acknowledgement);
    assert_eq!(ack.rule, "after-hours");
    assert_eq!(ack.template, "after_hours");
    assert_eq!(ack.language, Language::PERSIAN);
    // P3 (default): 4 business hours from Saturday's 09:00 opening.
    assert!(
        ack.text.starts_with("سلام مریم، پیام شما رسید."),
        "{}",
        ack.text
    );
    assert!(
        ack.text.contains("تا 2026-03-28 13:00 پاسخ"),
        "{}",
        ack.text
    );
    assert!(ack.text.ends_with("C-1042"), "{}", ack.text);
    assert_eq!(decision.priority, Priority::P3);
    let sla = decision.sla.unwrap();
    assert_eq!(sla.kind, ResponseKind::First);
    assert_eq!(sla.due_ms, ms("2026-03-28T09:30:00Z"));
    assert_eq!(*skipped(&decision.auto_reply), SkipReason::NoRule);
}

#[test]
fn chinese_full_width_order_number_gets_the_order_status_answer() {
    let book = book();
    let decision = evaluate(&book, &facts("ＯＲＤＥＲ１２３４５到哪里了？"));
    assert_eq!(decision.language, Language::CHINESE);
    let reply = sent(&decision.auto_reply);
    assert_eq!(reply.template, "order_status");
    assert_eq!(reply.language, Language::CHINESE);
    assert!(reply.text.starts_with("查询订单状态"), "{}", reply.text);
    // Inside hours, P3: 10:00 + 4 h, the same day.
    assert!(reply.text.contains("在 14:00 前跟进"), "{}", reply.text);
    // The answer stands in for the acknowledgement.
    assert_eq!(
        *skipped(&decision.acknowledgement),
        SkipReason::AnsweredByAutoReply
    );
    assert_eq!(decision.tags, ["order-status"]);
}

#[test]
fn arabic_refund_with_diacritics_is_urgent_and_not_auto_answered() {
    let book = book();
    let decision = evaluate(&book, &facts("أُرِيدُ الاسْتـــرْدَادَ، طلبي رقم ١٢٣٤٥ من فضلك"));
    assert_eq!(decision.language, Language::ARABIC);
    assert_eq!(
        decision.matched_rules,
        ["refund", "order-status", "acknowledge"]
    );
    assert_eq!(decision.tags, ["refund", "order-status"]);
    assert_eq!(decision.priority, Priority::P1);
    // The refund rule blocks later auto-replies; the customer still gets
    // an acknowledgement in Arabic.
    assert_eq!(
        *skipped(&decision.auto_reply),
        SkipReason::RuleSaidNo {
            rule: "refund".into()
        }
    );
    let ack = sent(&decision.acknowledgement);
    assert_eq!(ack.language, Language::ARABIC);
    assert!(
        ack.text.starts_with("مرحباً بك، وصلتنا رسالتك."),
        "{}",
        ack.text
    );
    assert!(ack.text.contains("قبل 10:15."), "{}", ack.text);
    // P1: 15 minutes; the rule escalates 10 minutes before.
    let sla = decision.sla.unwrap();
    assert_eq!(sla.due_ms, ms("2026-03-29T06:45:00Z"));
    assert_eq!(sla.escalate_at_ms, ms("2026-03-29T06:35:00Z"));
    assert_eq!(sla.status(ms("2026-03-29T06:34:00Z")), SlaStatus::OnTrack);
    assert_eq!(sla.status(ms("2026-03-29T06:36:00Z")), SlaStatus::Escalate);
    assert_eq!(sla.status(ms("2026-03-29T06:46:00Z")), SlaStatus::Breached);
}

#[test]
fn persian_with_zwnj_and_persian_digits() {
    let book = book();
    let decision = evaluate(&book, &facts("سلام، سفارش ۱۲۳۴۵ من کی می‌رسه؟"));
    assert_eq!(decision.language, Language::PERSIAN);
    let reply = sent(&decision.auto_reply);
    assert_eq!(reply.template, "order_status");
    assert!(
        reply.text.starts_with("برای دیدن وضعیت سفارش"),
        "{}",
        reply.text
    );
    // Persian typed on an Arabic keyboard, refund in Persian.
    let decision = evaluate(&book, &facts("ميخواهم پس گرفتن پول سفارشم رو"));
    assert_eq!(decision.priority, Priority::P1);
    assert_eq!(decision.tags, ["refund", "order-status"]);
}

#[test]
fn vip_and_returning_customers_are_prioritised() {
    let book = book();
    let tags = ["VIP".to_owned()];
    let mut facts = facts("Hi, I still have no answer about my broken headphones");
    facts.customer_segment = Some("VIP");
    facts.customer_tags = &tags;
    facts.other_open_conversations = 1;
    let decision = evaluate(&book, &facts);
    assert_eq!(decision.language, Language::ENGLISH);
    assert_eq!(decision.tags, ["vip", "returning-open"]);
    assert_eq!(decision.priority, Priority::P2);
    let ack = sent(&decision.acknowledgement);
    assert_eq!(
        ack.text,
        "Hi there, we got your message. An agent will answer by 11:00. Reference: C-1042"
    );
    // The highest priority wins whatever the order of the rules.
    let decision = evaluate(
        &book,
        &Facts {
            text: "I want a refund",
            ..facts
        },
    );
    assert_eq!(decision.priority, Priority::P1);
    assert_eq!(decision.tags, ["refund", "vip", "returning-open"]);
}

#[test]
fn a_holiday_is_acknowledged_and_the_deadline_waits_for_the_next_working_day() {
    let book = book();
    let mut facts = facts("Hello, is anyone there?");
    // Saturday 2026-03-21, Nowruz.
    facts.event_time_ms = ms("2026-03-21T08:30:00Z");
    let decision = evaluate(&book, &facts);
    assert_eq!(decision.hours, Some(Hours::Holiday));
    let ack = sent(&decision.acknowledgement);
    assert_eq!(ack.template, "after_hours");
    assert!(
        ack.text.contains("will answer by 2026-03-25 13:00."),
        "{}",
        ack.text
    );
}

#[test]
fn opening_hours_question() {
    let book = book();
    let decision = evaluate(&book, &facts("请问你们的营业时间是？"));
    assert_eq!(sent(&decision.auto_reply).template, "opening_hours");
    let decision = evaluate(&book, &facts("What are your OPENING  HOURS?"));
    assert_eq!(
        sent(&decision.auto_reply).text,
        "We are open Saturday to Wednesday 9:00-17:00 and Thursday 9:00-13:00, Tehran time."
    );
}

#[test]
fn automated_messages_get_no_reply_and_no_deadline() {
    let book = book();
    let mut facts = facts("Out of office: I am away until Monday. Re: your order 55821");
    facts.channel_kind = ChannelKind::Email;
    facts.automated = true;
    let decision = evaluate(&book, &facts);
    assert_eq!(*skipped(&decision.acknowledgement), SkipReason::Automated);
    assert_eq!(*skipped(&decision.auto_reply), SkipReason::Automated);
    assert_eq!(decision.sla, None);
    // Tags still tell agents what it was about.
    assert_eq!(decision.tags, ["order-status"]);
}

#[test]
fn acknowledgements_are_rate_limited() {
    let book = book();
    let base = facts("Hello?");
    let hour = 3_600_000;

    let last = base.event_time_ms - hour;
    let decision = evaluate(
        &book,
        &Facts {
            last_acknowledgement_ms: Some(last),
            ..base
        },
    );
    assert_eq!(
        *skipped(&decision.acknowledgement),
        SkipReason::ConversationRateLimited { last_ms: last }
    );
    // Older than the 12 h window: acknowledged again.
    let decision = evaluate(
        &book,
        &Facts {
            last_acknowledgement_ms: Some(base.event_time_ms - 13 * hour),
            ..base
        },
    );
    assert!(decision.acknowledgement.reply().is_some());
    // An acknowledgement recorded after this event (a replay) counts.
    let decision = evaluate(
        &book,
        &Facts {
            last_acknowledgement_ms: Some(base.event_time_ms + 5),
            ..base
        },
    );
    assert!(matches!(
        decision.acknowledgement,
        ReplyDecision::Skip(SkipReason::ConversationRateLimited { .. })
    ));

    let three = [
        base.event_time_ms - 20 * hour,
        base.event_time_ms - 2 * hour,
        base.event_time_ms - hour,
    ];
    let decision = evaluate(
        &book,
        &Facts {
            customer_acknowledgements_ms: &three,
            ..base
        },
    );
    assert_eq!(
        *skipped(&decision.acknowledgement),
        SkipReason::CustomerRateLimited { count: 3 }
    );
    let decision = evaluate(
        &book,
        &Facts {
            customer_acknowledgements_ms: &three[1..],
            ..base
        },
    );
    assert!(decision.acknowledgement.reply().is_some());
}

#[test]
fn the_same_auto_reply_is_not_repeated_within_the_window() {
    let book = book();
    let base = facts("where is my order?");
    let recent = [SentAutoReply {
        template: "order_status".into(),
        at_ms: base.event_time_ms - 10 * 60_000,
    }];
    let decision = evaluate(
        &book,
        &Facts {
            recent_auto_replies: &recent,
            conversation: ConversationState::Ongoing,
            agent_has_replied: true,
            ..base
        },
    );
    assert_eq!(
        *skipped(&decision.auto_reply),
        SkipReason::RepeatedAutoReply {
            last_ms: recent[0].at_ms
        }
    );
    // Ongoing conversation: no acknowledgement rule applies.
    assert_eq!(*skipped(&decision.acknowledgement), SkipReason::NoRule);
    // The next response's target applies (P3: 8 business hours).
    assert_eq!(decision.sla.unwrap().kind, ResponseKind::Next);
}

#[test]
fn the_deadline_follows_the_conversations_priority_when_it_is_more_urgent() {
    let book = book();
    let base = facts("where is my order?");
    let own = evaluate(&book, &base);
    assert_eq!(own.priority, Priority::P3);
    assert_eq!(own.sla.unwrap().priority, Priority::P3);
    // The conversation was a refund (P1): its next message keeps P1's
    // target, while the message's own priority stays what its rules say.
    let urgent = evaluate(
        &book,
        &Facts {
            conversation_priority: Some(Priority::P1),
            ..base
        },
    );
    assert_eq!(urgent.priority, Priority::P3);
    let sla = urgent.sla.unwrap();
    assert_eq!(sla.priority, Priority::P1);
    assert!(sla.due_ms < own.sla.unwrap().due_ms);
    // A less urgent conversation never lowers the message's own.
    let calm = evaluate(
        &book,
        &Facts {
            conversation_priority: Some(Priority::P4),
            ..base
        },
    );
    assert_eq!(calm.sla, own.sla);
}

#[test]
fn a_language_without_a_text_falls_back_to_the_default() {
    let book = book();
    let decision = evaluate(&book, &facts("Здравствуйте, подскажите пожалуйста"));
    assert_eq!(decision.language.as_str(), "ru");
    let ack = sent(&decision.acknowledgement);
    assert_eq!(ack.language, Language::PERSIAN);
}

#[test]
fn decisions_are_deterministic() {
    let book = book();
    let facts = facts("أريد استرجاع المبلغ، الطلب ٩٨٧٦ لم يصل");
    let first: Decision = evaluate(&book, &facts);
    for _ in 0..3 {
        assert_eq!(evaluate(&book, &facts), first);
    }
    // Compiling the same files in another order gives the same book.
    let other = RuleBook::compile([
        ("zz.toml", "name = \"z\"\ntime_zone = \"UTC\"\ndefault_language = \"en\"\nchannel_kinds = [\"sms\"]\n"),
        ("example.toml", EXAMPLE),
    ])
    .unwrap();
    assert_eq!(other.rule_sets()[0].name(), "shop-support");
    assert_eq!(evaluate(&other, &facts), first);
}

const GOOD: &str = r#"
name = "good"
time_zone = "Europe/Berlin"
default_language = "en"
channel_kinds = ["email"]
[templates.thanks]
en = "Thanks!"
"#;

#[test]
fn every_error_names_its_file_key_and_reason() {
    let bad = r#"
name = "bad"
time_zone = "Asia/Tehrn"
default_language = "fa"
default_priority = "P9"

[business_hours]
monday = ["09:00-17:00", "16:00-18:00"]
friday = ["9am-5pm"]
holidays = ["2026-02-30"]

[sla]
clock = "business_hours"
[sla.p1]
first_response = "15 minutes"
next_response = "1h"

[templates.received]
fa = "سلام {customer_nam}"
xx = "hello"
[templates.thanks]
en = "Thanks"

[[rules]]
name = "refund"
[rules.match]
keywords = ["refund", "money back"]
regex = ["order(\\d+"]
conversation = ["brand-new"]
hours = ["night"]
channel_kinds = ["fax"]
[rules.actions]
acknowledge = "recieved"
priority = "P5"

[[rules]]
name = "refund"
[rules.actions]
auto_reply = "thanks"
tags = ["two words"]
"#;
    let error = RuleBook::compile([("a-good.toml", GOOD), ("bad.toml", bad)]).unwrap_err();
    let found: Vec<(&str, &str)> = error
        .errors
        .iter()
        .map(|e| (e.key.as_str(), e.reason.as_str()))
        .collect();
    let expect = |key: &str, reason: &str| {
        assert!(
            found.iter().any(|(k, r)| *k == key && r.contains(reason)),
            "no error at `{key}` containing `{reason}` in {found:#?}"
        );
    };
    assert!(error.errors.iter().all(|e| e.file == "bad.toml"));
    expect("time_zone", "unknown time zone `Asia/Tehrn`");
    expect("default_priority", "out of range");
    expect("business_hours.monday", "overlap");
    expect("business_hours.friday[0]", "HH:MM");
    expect("business_hours.holidays[0]", "invalid date");
    expect("sla.p1.first_response", "invalid duration");
    expect("templates.received.fa", "unknown variable `{customer_nam}`");
    expect("templates.received.xx", "unknown language `xx`");
    expect("templates.thanks", "no text in the default language `fa`");
    expect("rules[0].match.keywords[1]", "phrases");
    expect("rules[0].match.regex[0]", "invalid regex");
    expect(
        "rules[0].match.conversation[0]",
        "unknown conversation state",
    );
    expect("rules[0].match.hours[0]", "unknown hours");
    expect(
        "rules[0].match.channel_kinds[0]",
        "unknown channel kind `fax`",
    );
    expect(
        "rules[0].actions.acknowledge",
        "unknown template `recieved`",
    );
    expect("rules[0].actions.priority", "priority `P5` out of range");
    expect("rules[1].name", "used twice");
    expect("rules[1].actions.tags[0]", "spaces");
    assert_eq!(found.len(), 18, "{found:#?}");

    // The display form is the one `omnid check-config` prints.
    let line = error.errors[0].to_string();
    assert!(line.starts_with("bad.toml: key `"), "{line}");
}

#[test]
fn unknown_keys_and_bad_toml_are_errors() {
    let typo = GOOD.to_owned() + "[[rules]]\nname = \"r\"\n[rules.match]\nkeyword = [\"refund\"]\n";
    let error = RuleBook::compile([("typo.toml", typo.as_str())]).unwrap_err();
    assert_eq!(error.errors.len(), 1, "{error}");
    assert_eq!(error.errors[0].key, "rules[0].match.keyword");
    assert!(error.errors[0].reason.contains("unknown field `keyword`"));

    let top = "timezone = \"UTC\"\n".to_owned() + GOOD;
    let error = RuleBook::compile([("top.toml", top.as_str())]).unwrap_err();
    assert_eq!(error.errors[0].key, "timezone");
    // Below a table header the key belongs to that table: here a template
    // text in a language that does not exist.
    let below = GOOD.to_owned() + "timezone = \"UTC\"\n";
    let error = RuleBook::compile([("below.toml", below.as_str())]).unwrap_err();
    assert_eq!(error.errors[0].key, "templates.thanks.timezone");
    assert!(
        error.errors[0].reason.contains("unknown language"),
        "{error}"
    );

    let ack_true = GOOD.to_owned() + "[[rules]]\nname = \"r\"\nactions.acknowledge = true\n";
    let error = RuleBook::compile([("t.toml", ack_true.as_str())]).unwrap_err();
    assert_eq!(error.errors[0].key, "rules[0].actions.acknowledge");
    assert!(error.errors[0].reason.contains("names no text"), "{error}");

    let error = RuleBook::compile([("broken.toml", "name = ")]).unwrap_err();
    assert_eq!(error.errors[0].key, ".");
    assert!(error.errors[0].reason.starts_with("invalid TOML"));

    let error = RuleBook::compile([(
        "lang.toml",
        GOOD.replace("\"en\"\nchannel", "\"en-US\"\nchannel")
            .as_str(),
    )])
    .unwrap_err();
    assert_eq!(error.errors[0].key, "default_language");
    assert!(
        error.errors[0].reason.contains("primary subtag `en`"),
        "{error}"
    );
}

#[test]
fn rule_sets_cover_channels_without_overlap() {
    let telegram = r#"
name = "telegram"
time_zone = "UTC"
default_language = "en"
channels = ["support-telegram"]
"#;
    let book = RuleBook::compile([
        ("good.toml", GOOD),
        ("example.toml", EXAMPLE),
        ("telegram.toml", telegram),
    ])
    .unwrap();
    let name = |id, kind| book.rule_set_for(id, kind).unwrap().name();
    assert_eq!(name("support-telegram", ChannelKind::Telegram), "telegram");
    assert_eq!(name("support-email", ChannelKind::Email), "good");
    assert_eq!(name("shop-sms", ChannelKind::Sms), "shop-support");
    let decision = evaluate(&book, &facts("hello"));
    assert_eq!(decision.rule_set.as_deref(), Some("telegram"));
    assert_eq!(*skipped(&decision.acknowledgement), SkipReason::NoRule);

    // Without a catch-all, an uncovered channel gets no automation.
    let book = RuleBook::compile([("good.toml", GOOD)]).unwrap();
    let decision = evaluate(&book, &facts("hello"));
    assert_eq!(decision.rule_set, None);
    assert_eq!(*skipped(&decision.acknowledgement), SkipReason::NoRuleSet);

    // Two files covering the same kind, or both everything, are refused.
    let error = RuleBook::compile([
        ("a.toml", GOOD),
        ("b.toml", &GOOD.replace("\"good\"", "\"other\"")),
    ])
    .unwrap_err();
    assert_eq!(error.errors[0].file, "b.toml");
    assert_eq!(error.errors[0].key, "channel_kinds[0]");
    assert!(
        error.errors[0]
            .reason
            .contains("already covered by rule set `good`")
    );
    let error = RuleBook::compile([
        ("a.toml", EXAMPLE),
        ("b.toml", &EXAMPLE.replace("\"shop-support\"", "\"copy\"")),
    ])
    .unwrap_err();
    assert_eq!(error.errors[0].key, ".");

    // check-config can report rule files naming unknown channels.
    let book = RuleBook::compile([("telegram.toml", telegram)]).unwrap();
    let errors = book.unknown_channels(|id| id == "support-email");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].key, "channels[0]");
    assert!(
        book.unknown_channels(|id| id == "support-telegram")
            .is_empty()
    );
}

mod properties {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    fn shared_book() -> &'static RuleBook {
        static BOOK: OnceLock<RuleBook> = OnceLock::new();
        BOOK.get_or_init(book)
    }

    proptest! {
        /// Whatever a customer sends, and whatever the clock and history
        /// say, evaluation returns a decision, and the same one twice.
        #[test]
        fn evaluation_never_panics_and_is_deterministic(
            text in any::<String>(),
            hint in proptest::option::of("[a-zA-Z_-]{0,8}"),
            name in proptest::option::of(any::<String>()),
            event_time_ms in any::<i64>(),
            last_acknowledgement_ms in proptest::option::of(any::<i64>()),
            automated in any::<bool>(),
            agent_has_replied in any::<bool>(),
        ) {
            let facts = Facts {
                text: &text,
                language_hint: hint.as_deref(),
                customer_name: name.as_deref(),
                event_time_ms,
                last_acknowledgement_ms,
                automated,
                agent_has_replied,
                ..facts("")
            };
            let decision = evaluate(shared_book(), &facts);
            prop_assert_eq!(&evaluate(shared_book(), &facts), &decision);
            if automated {
                prop_assert!(decision.acknowledgement.reply().is_none());
                prop_assert!(decision.sla.is_none());
            }
        }
    }
}
