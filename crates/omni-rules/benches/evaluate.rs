//! Cost of one rule evaluation with 1,000 rules loaded: keywords and
//! phrases in four languages, regexes, business-hours, conversation and
//! segment conditions, over realistic messages in Persian, Arabic,
//! Chinese and English (and a long email).
//!
//! Besides criterion's wall-clock figures, prints the CPU time per message
//! of this thread over a fixed run (from /proc/thread-self/schedstat, on
//! Linux), since the wall clock of a shared machine includes other
//! processes' time.

use std::{hint::black_box, time::Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use omni_rules::{
    ChannelKind, ConversationState, Facts, Language, RuleBook, detect_language, evaluate, normalize,
};

const RULES: usize = 1000;

/// Words customers really write, in four languages; rules combine them so
/// that many patterns are shared and some message words hit many rules.
const WORDS: &[&str] = &[
    "refund",
    "order",
    "delivery",
    "invoice",
    "cancel",
    "broken",
    "warranty",
    "password",
    "account",
    "shipping",
    "return",
    "exchange",
    "discount",
    "coupon",
    "payment",
    "سفارش",
    "بازپرداخت",
    "ارسال",
    "فاکتور",
    "لغو",
    "خراب",
    "گارانتی",
    "رمز",
    "حساب",
    "تخفیف",
    "پرداخت",
    "مرسوله",
    "طلب",
    "استرداد",
    "الشحن",
    "فاتورة",
    "إلغاء",
    "مكسور",
    "ضمان",
    "كلمة",
    "حساب",
    "خصم",
    "دفع",
    "退款",
    "订单",
    "快递",
    "发票",
    "取消",
    "坏了",
    "保修",
    "密码",
    "账户",
    "优惠券",
    "付款",
    "物流",
];

fn rule_file() -> String {
    let mut text = String::from(
        r#"
name = "bench"
time_zone = "Asia/Tehran"
default_language = "fa"
[business_hours]
saturday = ["09:00-17:00"]
sunday = ["09:00-17:00"]
monday = ["09:00-17:00"]
tuesday = ["09:00-17:00"]
wednesday = ["09:00-17:00"]
thursday = ["09:00-13:00"]
holidays = ["2026-03-20..2026-03-24"]
[sla]
clock = "business_hours"
[sla.p1]
first_response = "15m"
next_response = "30m"
escalate_before = "5m"
[sla.p3]
first_response = "4h"
next_response = "8h"
[templates.received]
fa = "سلام {customer_name|دوست عزیز}، پیام شما رسید و تا {expected_response} پاسخ می‌دهیم. {conversation_ref}"
ar = "مرحباً {customer_name|بك}، وصلتنا رسالتك وسنرد قبل {expected_response}. {conversation_ref}"
zh = "您好{customer_name|}！我们已收到您的消息，将在 {expected_response} 前回复。{conversation_ref}"
en = "Hi {customer_name|there}, we got your message and will answer by {expected_response}. {conversation_ref}"
[templates.answer]
fa = "پاسخ"
ar = "جواب"
zh = "回答"
en = "Answer"
"#,
    );
    for i in 0..RULES {
        let w = |k: usize| WORDS[(i * 7 + k * 13) % WORDS.len()];
        text.push_str(&format!(
            "\n[[rules]]\nname = \"rule-{i}\"\n[rules.match]\n"
        ));
        match i % 5 {
            0 => text.push_str(&format!(
                "keywords = [\"{}\", \"{}\", \"{}*\", \"sku{i}\"]\n",
                w(0),
                w(1),
                w(2)
            )),
            1 => text.push_str(&format!(
                "regex = ['\\b(?:order|invoice|سفارش|طلب)\\s*#?{i}\\d{{2,}}']\n"
            )),
            2 => text.push_str(&format!(
                "hours = [\"outside\", \"holiday\"]\nconversation = [\"new\"]\nkeywords = [\"{}\", \"{}\"]\n",
                w(0),
                w(3)
            )),
            3 => text.push_str(&format!(
                "segments = [\"vip\", \"seg{i}\"]\nphrases = [\"{} {}\", \"{} please\"]\n",
                w(1),
                w(2),
                w(4)
            )),
            _ => text.push_str(&format!(
                "channel_kinds = [\"email\"]\nlanguages = [\"en\"]\nregex = ['(?:ticket|case)-{i}-\\d+']\nkeywords = [\"{}\"]\n",
                w(5)
            )),
        }
        text.push_str("[rules.actions]\n");
        text.push_str(&format!("tags = [\"t{}\"]\n", i % 40));
        match i % 7 {
            0 => text.push_str("priority = \"P1\"\n"),
            1 => text.push_str("auto_reply = \"answer\"\n"),
            _ => {}
        }
    }
    text.push_str(
        "\n[[rules]]\nname = \"acknowledge\"\n[rules.match]\nconversation = [\"new\"]\n[rules.actions]\nacknowledge = \"received\"\n",
    );
    text
}

fn messages() -> Vec<(&'static str, String)> {
    let email =
        "Hello,\n\nI ordered a pair of headphones three weeks ago (order 55821) and they still \
                 have not arrived. The tracking page says the parcel left the warehouse on the 3rd \
                 but nothing since. Could you please check with the courier, and if it is lost I \
                 would like a refund or a replacement.\n\nThanks,\nSara\n\n"
            .repeat(4);
    vec![
        (
            "fa",
            "سلام، سفارش ۱۲۳۴۵ من کی می‌رسه؟ خیلی وقته منتظرم".to_owned(),
        ),
        (
            "ar",
            "أُرِيدُ اسْتِرْدَادَ المـــال، طلبي رقم ١٢٣٤٥ لم يصل بعد".to_owned(),
        ),
        (
            "zh",
            "你好，我的订单ＯＲＤＥＲ１２３４５还没到，可以退款吗？".to_owned(),
        ),
        (
            "en",
            "Hi, where is my order? It hasn't arrived yet.".to_owned(),
        ),
        ("email-2k", email),
    ]
}

fn facts(text: &str) -> Facts<'_> {
    Facts {
        channel_id: "support-telegram",
        channel_kind: ChannelKind::Telegram,
        conversation_ref: "C-1042",
        conversation: ConversationState::New,
        event_time_ms: 1_774_765_800_000,
        text,
        ..Facts::default()
    }
}

/// CPU time of this thread (ns), where the kernel reports it.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

fn bench(c: &mut Criterion) {
    let source = rule_file();
    let started = Instant::now();
    let book = RuleBook::compile([("bench.toml", source.as_str())]).expect("bench rules compile");
    println!(
        "compiled {} rules in {:.1} ms",
        RULES + 1,
        started.elapsed().as_secs_f64() * 1e3
    );
    let messages = messages();
    for (language, text) in &messages {
        let decision = evaluate(&book, &facts(text));
        println!(
            "{language}: {} rules matched, priority {}",
            decision.matched_rules.len(),
            decision.priority
        );
    }

    c.bench_function("compile/1000_rules", |b| {
        b.iter(|| RuleBook::compile([("bench.toml", black_box(source.as_str()))]).unwrap())
    });
    let mut group = c.benchmark_group("evaluate/1000_rules");
    for (language, text) in &messages {
        group.bench_function(*language, |b| {
            b.iter(|| evaluate(black_box(&book), black_box(&facts(text))))
        });
    }
    group.finish();
    // The parts every message pays whatever the rules.
    let mut group = c.benchmark_group("parts");
    for (language, text) in &messages {
        group.bench_function(format!("normalize/{language}"), |b| {
            b.iter(|| normalize(black_box(text)))
        });
        group.bench_function(format!("detect_language/{language}"), |b| {
            b.iter(|| detect_language(black_box(text), None, Language::PERSIAN))
        });
    }
    group.finish();

    // Wall and CPU time per message over fixed runs.
    const ROUNDS: usize = 2000;
    let measure = |texts: &[&str]| {
        let cpu_before = thread_cpu_ns();
        let wall = Instant::now();
        for _ in 0..ROUNDS {
            for text in texts {
                black_box(evaluate(&book, &facts(text)));
            }
        }
        let count = (ROUNDS * texts.len()) as f64;
        let wall_us = wall.elapsed().as_secs_f64() * 1e6 / count;
        let cpu_us = cpu_before
            .zip(thread_cpu_ns())
            .map(|(before, after)| (after - before) as f64 / 1e3 / count);
        (wall_us, cpu_us)
    };
    let mut all = Vec::new();
    for (language, text) in &messages {
        all.push(text.as_str());
        let (wall_us, cpu_us) = measure(&[text.as_str()]);
        match cpu_us {
            Some(cpu_us) => {
                println!("{language}: {wall_us:.1} µs wall, {cpu_us:.1} µs CPU per message")
            }
            None => println!("{language}: {wall_us:.1} µs wall per message"),
        }
    }
    let (wall_us, cpu_us) = measure(&all);
    match cpu_us {
        Some(cpu_us) => println!("mixed: {wall_us:.1} µs wall, {cpu_us:.1} µs CPU per message"),
        None => println!("mixed: {wall_us:.1} µs wall per message"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
