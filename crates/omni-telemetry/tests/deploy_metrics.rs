//! The alert rules and the dashboard under `deploy/` only name metrics the
//! daemon exports: a renamed metric would otherwise leave an alert that can
//! never fire and a panel that stays empty, with nothing to say so.

use std::{collections::BTreeSet, path::PathBuf};

use omni_telemetry::names;

const ALERTS: &str = "deploy/prometheus/omnid-alerts.yml";
const DASHBOARD: &str = "deploy/grafana/omnid-dashboard.json";

/// Series suffixes the Prometheus exporter adds to a summary or histogram.
const SERIES_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn read(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `omnid_[a-z0-9_]+` token of `text` that does not continue an
/// identifier, so `xomnid_a` or `omnid-alerts` are not taken for metrics.
fn metric_tokens(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut tokens = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("omnid_") {
        let start = from + found;
        let mut end = start + "omnid_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if start == 0 || !is_word(bytes[start - 1]) {
            tokens.push(&text[start..end]);
        }
        from = end;
    }
    tokens
}

/// The registered name a token refers to: itself, or itself without a
/// series suffix (`omnid_webhook_duration_seconds_sum`).
fn registered_name<'a>(token: &'a str, known: &[&str]) -> Option<&'a str> {
    if known.contains(&token) {
        return Some(token);
    }
    SERIES_SUFFIXES
        .iter()
        .filter_map(|suffix| token.strip_suffix(suffix))
        .find(|base| known.contains(base))
}

fn unknown_names<'a>(text: &'a str, known: &[&str]) -> BTreeSet<&'a str> {
    metric_tokens(text)
        .into_iter()
        .filter(|t| registered_name(t, known).is_none())
        .collect()
}

/// No YAML parser is in the workspace, so this checks what a rule file
/// needs and what breaks most often: tabs, the `groups:` root, each rule's
/// keys, and brackets and quotes of each rule balanced.
fn check_rules(text: &str) -> Result<BTreeSet<String>, String> {
    if text.contains('\t') {
        return Err("tab characters are not valid YAML indentation".into());
    }
    let body: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    if body.first() != Some(&"groups:") {
        return Err("the first key must be `groups:`".into());
    }
    if let Some(odd) = body
        .iter()
        .find(|l| (l.len() - l.trim_start().len()) % 2 != 0)
    {
        return Err(format!("odd indentation: {odd:?}"));
    }
    let mut alerts = BTreeSet::new();
    let blocks: Vec<&str> = text.split("- alert: ").skip(1).collect();
    if blocks.is_empty() {
        return Err("no rule has `- alert:`".into());
    }
    for block in blocks {
        let block = block.split("\n  - name: ").next().unwrap_or(block);
        let name = block.lines().next().unwrap_or_default().trim().to_owned();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("alert name {name:?} is not a plain identifier"));
        }
        for key in [
            "expr:",
            "for:",
            "labels:",
            "severity:",
            "annotations:",
            "summary:",
            "description:",
        ] {
            if !block.lines().any(|l| l.trim_start().starts_with(key)) {
                return Err(format!("{name}: no `{key}`"));
            }
        }
        let severity = block
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("severity:"))
            .map(str::trim)
            .unwrap_or_default();
        if !["critical", "warning", "info"].contains(&severity) {
            return Err(format!("{name}: severity {severity:?}"));
        }
        let mut open = Vec::new();
        for c in block.chars() {
            match c {
                '(' | '[' | '{' => open.push(c),
                ')' | ']' | '}' => {
                    let expected = match c {
                        ')' => '(',
                        ']' => '[',
                        _ => '{',
                    };
                    if open.pop() != Some(expected) {
                        return Err(format!("{name}: unbalanced {c:?}"));
                    }
                }
                _ => {}
            }
        }
        if !open.is_empty() || block.matches('"').count() % 2 != 0 {
            return Err(format!("{name}: unclosed brackets or quotes"));
        }
        if !alerts.insert(name.clone()) {
            return Err(format!("{name}: defined twice"));
        }
    }
    Ok(alerts)
}

#[test]
fn all_lists_every_name_constant() {
    let source = include_str!("../src/names.rs");
    let declared: BTreeSet<&str> = source
        .lines()
        .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    let listed: BTreeSet<&str> = names::ALL.iter().copied().collect();
    assert_eq!(listed.len(), names::ALL.len(), "names::ALL has duplicates");
    assert_eq!(
        listed, declared,
        "names::ALL differs from the constants of names.rs"
    );
    assert!(
        declared.len() > 30,
        "parsed only {} constants",
        declared.len()
    );
}

#[test]
fn tokens_skip_identifier_tails_and_keep_suffixes() {
    let text = "rate(omnid_a_total[5m]) xomnid_b omnid-alerts {omnid_c_sum} omnid_";
    assert_eq!(
        metric_tokens(text),
        ["omnid_a_total", "omnid_c_sum", "omnid_"]
    );
    let known = ["omnid_c", "omnid_d_count"];
    assert_eq!(registered_name("omnid_c_sum", &known), Some("omnid_c"));
    assert_eq!(
        registered_name("omnid_d_count", &known),
        Some("omnid_d_count")
    );
    assert_eq!(registered_name("omnid_c_total", &known), None);
    assert_eq!(registered_name("omnid_", &known), None);
}

#[test]
fn rule_checker_rejects_malformed_rules() {
    let good = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 1m\n        labels:\n          severity: warning\n        annotations:\n          summary: s\n          description: d\n";
    assert!(check_rules(good).is_ok());
    assert!(check_rules(&good.replace("        for: 1m\n", "")).is_err());
    assert!(check_rules(&good.replace("up == 0", "sum(up == 0")).is_err());
    assert!(check_rules(&good.replace("warning", "loud")).is_err());
    assert!(check_rules(&good.replace("        expr", "\texpr")).is_err());
    assert!(check_rules(&good.replace("      - alert", "     - alert")).is_err());
}

#[test]
fn alert_rules_are_well_formed_and_name_only_exported_metrics() {
    let text = read(ALERTS);
    let alerts = check_rules(&text).unwrap_or_else(|e| panic!("{ALERTS}: {e}"));
    let unknown = unknown_names(&text, names::ALL);
    assert!(
        unknown.is_empty(),
        "{ALERTS} names metrics that do not exist: {unknown:?}"
    );
    for name in [
        names::CHANNEL_UP,
        names::WEBHOOK_REQUESTS_TOTAL,
        names::LOG_APPEND_ERRORS_TOTAL,
        names::DEAD_LETTERS_TOTAL,
        names::IMAP_SESSION_ERRORS_TOTAL,
        names::TELEGRAM_POLL_ERRORS_TOTAL,
        names::OUTBOUND_DELIVERIES_TOTAL,
        names::MEDIA_GIVEN_UP_TOTAL,
        names::WECOM_KF_UNREAD_AGE_SECONDS,
        names::LOG_RETENTION_HELD_BACK_RECORDS,
        names::LOG_RETENTION_FAILURES_TOTAL,
    ] {
        assert!(
            metric_tokens(&text).contains(&name),
            "{ALERTS} has no rule on {name}"
        );
    }
    assert!(alerts.contains("OmnidDown") && text.contains("up{job=\"omnid\"} == 0"));
}

#[test]
fn dashboard_is_valid_json_and_names_only_exported_metrics() {
    let text = read(DASHBOARD);
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert!(
        dashboard["__inputs"]
            .as_array()
            .is_some_and(|inputs| inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS")),
        "no DS_PROMETHEUS input"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric panel id")),
            "panel id of {title} reused"
        );
        assert!(
            panel["gridPos"]["w"].as_u64().is_some(),
            "{title}: no gridPos"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title}: datasource"
        );
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        for target in targets.unwrap_or_else(|| panic!("{title}: no queries")) {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !metric_tokens(expr).is_empty(),
                "{title}: query {expr:?} names no omnid metric"
            );
            exprs += 1;
        }
    }
    assert!(exprs > 20, "only {exprs} queries");
    let unknown = unknown_names(&text, names::ALL);
    assert!(
        unknown.is_empty(),
        "{DASHBOARD} names metrics that do not exist: {unknown:?}"
    );
}
