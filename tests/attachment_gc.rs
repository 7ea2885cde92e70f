//! Garbage collection of the attachment store through the real daemon: at
//! start, a file named by no retained record (stored ten days ago, the log
//! empty) is removed and a file stored just now stays, and the metrics say
//! so; a reply naming an old file through `POST /v1/outbound` refreshes it,
//! so the file is kept as long as the reply's record.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use omni_connector::{AttachmentStore, FsAttachmentStore};
use omni_testkit::daemon::Deployment;
use serde_json::json;

const TOKEN: &str = "helpdesk-token-0123456789";
const DAY: Duration = Duration::from_secs(86_400);

fn path_of(root: &Path, sha256: &str) -> PathBuf {
    root.join(&sha256[..2]).join(sha256)
}

fn set_age(path: &Path, age: Duration) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

fn age_of(path: &Path) -> Duration {
    let modified = std::fs::metadata(path).unwrap().modified().unwrap();
    SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn unreferenced_files_go_and_a_file_a_new_record_names_is_refreshed() {
    // One pass at start, the next an hour later: nothing races the test.
    let deployment = Deployment::with_config("[attachments]\ncheck_interval_secs = 3600\n");
    deployment.enable_api(TOKEN);
    deployment.write_channel(
        "support-mail",
        "id = \"support-mail\"\nkind = \"email\"\n[smtp]\nhost = \"127.0.0.1\"\nport = 9\n\
         tls = \"none\"\nfrom = \"Acme Support <support@acme.example>\"\ntimeout_secs = 5\n",
    );
    let root = deployment.data_dir().join("attachments");
    let store = FsAttachmentStore::new(&root);
    let old = store.put(b"old".to_vec().into()).await.unwrap();
    let fresh = store.put(b"fresh".to_vec().into()).await.unwrap();
    set_age(&path_of(&root, &old.sha256), 10 * DAY);

    let daemon = deployment.start();
    let metrics = daemon
        .eventually(
            "the first garbage collection pass",
            Duration::from_secs(30),
            || {
                let text = futures::executor::block_on(daemon.metrics());
                (metric(&text, "omnid_attachments_files")? == 1.0).then_some(text)
            },
        )
        .await;
    assert!(!path_of(&root, &old.sha256).exists());
    assert!(path_of(&root, &fresh.sha256).exists());
    assert_eq!(
        metric(
            &metrics,
            r#"omnid_attachments_removed_files_total{reason="unreferenced"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "omnid_attachments_bytes"),
        Some(fresh.size as f64)
    );

    // A file stored long ago that a reply names now: appending the reply
    // refreshes it.
    let named = store.put(b"a manual".to_vec().into()).await.unwrap();
    let named_path = path_of(&root, &named.sha256);
    set_age(&named_path, 10 * DAY);
    let reply = json!({
        "channelId": "support-mail",
        "providerMessageId": "ticket-7/reply-1",
        "recipients": [{ "kind": "HANDLE_KIND_EMAIL", "value": "sara@shop.example" }],
        "content": {
            "text": "The manual is attached.",
            "attachments": [{
                "name": "manual.txt",
                "uri": named.uri,
                "sha256": named.sha256,
                "size": named.size.to_string()
            }]
        }
    });
    let response = reqwest::Client::new()
        .post(daemon.url("/v1/outbound"))
        .bearer_auth(TOKEN)
        .json(&reply)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(status, 202, "{}", response.text().await.unwrap());
    assert!(
        age_of(&named_path) < Duration::from_secs(600),
        "the reply refreshed the file it names"
    );
}
