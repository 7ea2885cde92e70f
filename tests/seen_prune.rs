//! Pruning of seen ids through the real daemon: a `channel-state.sqlite3`
//! written by an earlier run, with marks from long ago (more than one
//! batch of them) and recent ones, is pruned at start: the old marks go,
//! from every channel, the recent ones stay, and the metrics say so.

use std::{sync::Arc, time::Duration};

use omni_connector::{ChannelState, SqliteStateStore, StateStore, StateUpdate, state::Clock};
use omni_testkit::daemon::Deployment;

/// More than one pruning batch (500).
const OLD: usize = 1_200;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn mark(store: Arc<dyn StateStore>, channel: &str, ids: Vec<String>) {
    ChannelState::new(store, channel)
        .commit(StateUpdate {
            seen: ids,
            ..StateUpdate::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn old_seen_ids_are_pruned_at_start_and_recent_ones_kept() {
    let deployment = Deployment::new();
    let path = deployment.data_dir().join("channel-state.sqlite3");
    {
        // Marks from 1970, then marks from now, in two channels.
        let old: Arc<dyn StateStore> = Arc::new(
            SqliteStateStore::open(&path)
                .unwrap()
                .with_clock(Clock::new(|| 1_000_000)),
        );
        let ids = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}-{i}")).collect();
        mark(old.clone(), "shop-api", ids("old", OLD / 2)).await;
        mark(old, "mailbox", ids("old", OLD / 2)).await;
        let now: Arc<dyn StateStore> = Arc::new(SqliteStateStore::open(&path).unwrap());
        mark(
            now.clone(),
            "shop-api",
            vec!["recent-1".into(), "recent-2".into()],
        )
        .await;
        mark(now, "mailbox", vec!["recent-3".into()]).await;
    }

    let mut daemon = deployment.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = daemon.metrics().await;
        let pruned = metric(&text, "omnid_state_seen_pruned_total");
        let kept = metric(&text, "omnid_state_seen_marks");
        if pruned == Some(OLD as f64) && kept == Some(3.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pruned {pruned:?}, kept {kept:?}; daemon log:\n{}",
            daemon.last_lines(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.stop();

    let store: Arc<dyn StateStore> = Arc::new(SqliteStateStore::open(&path).unwrap());
    let shop = ChannelState::new(store.clone(), "shop-api");
    assert_eq!(
        shop.seen(vec!["old-0".into(), "recent-1".into(), "recent-2".into()])
            .await
            .unwrap(),
        [false, true, true]
    );
    let mailbox = ChannelState::new(store.clone(), "mailbox");
    assert_eq!(
        mailbox
            .seen(vec!["old-599".into(), "recent-3".into()])
            .await
            .unwrap(),
        [false, true]
    );
    assert_eq!(store.count_seen().unwrap(), 3);
}
