//! The SMS and Telegram channels inside the real daemon: a provider's
//! signed webhook, posted to the running binary, lands in the log with the
//! right handle and key; a forged one gets 403 and appends nothing.

use omni_testkit::daemon::Deployment;

const PUBLIC: &str = "https://omnid.example.com";

/// A deployment whose daemon knows its public URL (Twilio signs it).
fn deployment() -> Deployment {
    let deployment = Deployment::new();
    let config = std::fs::read_to_string(deployment.config_path()).unwrap();
    std::fs::write(
        deployment.config_path(),
        config.replacen(
            "[http]\n",
            &format!("[http]\npublic_base_url = \"{PUBLIC}\"\n"),
            1,
        ),
    )
    .unwrap();
    deployment
}

fn inbound(deployment: &Deployment, channel: &str) -> Vec<serde_json::Value> {
    deployment
        .tail("inbound")
        .into_iter()
        .filter(|r| r["value"]["channelId"] == channel)
        .collect()
}

#[tokio::test]
async fn a_signed_twilio_webhook_lands_once_and_a_forged_one_is_refused() {
    let deployment = deployment();
    let token = deployment.path().join("twilio-token");
    std::fs::write(&token, "12345").unwrap();
    deployment.write_channel(
        "support-sms",
        &format!(
            "id = \"support-sms\"\nkind = \"twilio\"\naccount_sid = \"AC0123456789abcdef0123456789abcdef\"\n\
             auth_token = {{ file = {:?} }}\ndefault_region = \"US\"\nfrom = \"+14155550100\"\n\
             fetch_media = false\n",
            token.display().to_string()
        ),
    );
    let daemon = deployment.start();
    let params: Vec<(String, String)> = [
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("Body", "Hola, ¿dónde está mi pedido?"),
        ("From", "+14155550123"),
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("NumMedia", "0"),
        ("To", "+14155550100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let body = omni_testkit::daemon::form_body(&params);
    let url = format!("{PUBLIC}/webhooks/support-sms");
    let signature = omni_sms::twilio::signature(b"12345", &url, &params);

    let client = reqwest::Client::new();
    let post = |signature: &str| {
        client
            .post(daemon.url("/webhooks/support-sms"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(body.clone())
            .send()
    };
    let forged = post("c2lnbmF0dXJlIG9mIHNvbWVvbmUgZWxzZQ==").await.unwrap();
    assert_eq!(forged.status(), 403);
    for _ in 0..2 {
        // Twilio retries; the retry carries the same event id.
        let ok = post(&signature).await.unwrap();
        assert_eq!(ok.status(), 200);
    }
    let records = inbound(&deployment, "support-sms");
    assert_eq!(records.len(), 2, "the forged post appended nothing");
    assert_eq!(
        records[0]["headers"]["ce_id"],
        records[1]["headers"]["ce_id"]
    );
    assert_eq!(records[0]["key"], "phone:+14155550123");
    assert_eq!(
        records[0]["value"]["content"]["text"],
        "Hola, ¿dónde está mi pedido?"
    );
    assert_eq!(
        records[0]["value"]["providerMessageId"],
        "SM0123456789abcdef0123456789abcdef"
    );
}

#[tokio::test]
async fn a_telegram_webhook_needs_its_secret_token() {
    let deployment = deployment();
    for (name, value) in [
        ("bot-token", "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"),
        ("tg-secret", "s3cret_token-1"),
    ] {
        std::fs::write(deployment.path().join(name), value).unwrap();
    }
    deployment.write_channel(
        "support-telegram",
        &format!(
            "id = \"support-telegram\"\nkind = \"telegram\"\nmode = \"webhook\"\n\
             bot_token = {{ file = {:?} }}\nsecret_token = {{ file = {:?} }}\nset_webhook = false\n",
            deployment.path().join("bot-token").display().to_string(),
            deployment.path().join("tg-secret").display().to_string(),
        ),
    );
    let daemon = deployment.start();
    // The text message update from the Bot API documentation's examples.
    let update = include_str!("../crates/omni-telegram/tests/payloads/text.json");
    let client = reqwest::Client::new();
    let post = |secret: Option<&str>| {
        let mut request = client
            .post(daemon.url("/webhooks/support-telegram"))
            .header("content-type", "application/json")
            .body(update);
        if let Some(secret) = secret {
            request = request.header("x-telegram-bot-api-secret-token", secret);
        }
        request.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 403);
    assert_eq!(post(Some("guess")).await.unwrap().status(), 403);
    assert_eq!(post(Some("s3cret_token-1")).await.unwrap().status(), 200);
    let records = inbound(&deployment, "support-telegram");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["key"], "telegram:1111111");
    assert_eq!(records[0]["value"]["content"]["text"], "/start");
    assert_eq!(
        records[0]["value"]["threading"]["providerChatId"],
        "1111111"
    );
}
