//! Garbage collection of the filesystem attachment store on a real
//! directory: files aged by setting their modification time, one pass, and
//! exactly the files the rule names are gone.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use omni_connector::{
    AttachmentStore, FsAttachmentStore,
    attachments::gc::{GcRule, Reason},
};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn path_of(root: &Path, sha256: &str) -> PathBuf {
    root.join(&sha256[..2]).join(sha256)
}

fn age(path: &Path, by: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - by)
        .unwrap();
}

fn rule(unreferenced_before: Option<SystemTime>, max_bytes: Option<u64>) -> GcRule {
    GcRule {
        now: SystemTime::now(),
        unreferenced_before,
        max_bytes,
        min_age: HOUR,
        max_removals: 10_000,
    }
}

#[tokio::test]
async fn a_pass_removes_exactly_the_files_last_stored_before_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("attachments");
    let store = FsAttachmentStore::new(&root);
    let old = store
        .put(Bytes::from_static(b"ten days old"))
        .await
        .unwrap();
    let stored_again = store
        .put(Bytes::from_static(b"old, sent again"))
        .await
        .unwrap();
    let recent = store
        .put(Bytes::from_static(b"two days old"))
        .await
        .unwrap();
    let named_again = store
        .put(Bytes::from_static(b"old, named again"))
        .await
        .unwrap();
    let new = store.put(Bytes::from_static(b"just stored")).await.unwrap();
    for stored in [&old, &stored_again, &named_again] {
        age(&path_of(&root, &stored.sha256), 10 * DAY);
    }
    age(&path_of(&root, &recent.sha256), 2 * DAY);
    // The same content stored again, and a record about to name a file:
    // both refresh the file, which then counts as new.
    store
        .put(Bytes::from_static(b"old, sent again"))
        .await
        .unwrap();
    assert!(store.touch(&named_again.sha256).unwrap());
    assert!(!store.touch(&"0".repeat(64)).unwrap(), "not stored");

    // A crash's leftover temporary, a write in progress, and a file the
    // store did not write.
    let shard = path_of(&root, &old.sha256).parent().unwrap().to_owned();
    let stale_tmp = shard.join(".tmp-1-1");
    let fresh_tmp = shard.join(".tmp-1-2");
    let foreign = shard.join("notes.txt");
    for path in [&stale_tmp, &fresh_tmp, &foreign] {
        std::fs::write(path, b"partial").unwrap();
    }
    age(&stale_tmp, 3 * DAY);
    age(&foreign, 30 * DAY);

    let cutoff = SystemTime::now() - 5 * DAY;
    let report = store.collect_garbage(&rule(Some(cutoff), None)).unwrap();

    assert!(!path_of(&root, &old.sha256).exists());
    assert!(!stale_tmp.exists());
    for kept in [&stored_again, &recent, &named_again, &new] {
        assert!(path_of(&root, &kept.sha256).exists(), "{kept:?}");
        assert!(store.get(&kept.sha256).await.unwrap().is_some());
    }
    assert!(fresh_tmp.exists(), "a write in progress stays");
    assert!(foreign.exists(), "what the store did not write stays");
    assert_eq!(store.get(&old.sha256).await.unwrap(), None);

    let unreferenced = report.removed[&Reason::Unreferenced];
    assert_eq!((unreferenced.files, unreferenced.bytes), (1, old.size));
    assert_eq!(report.removed[&Reason::StaleTemporary].files, 1);
    assert_eq!(report.files, 4);
    assert_eq!(
        report.bytes,
        stored_again.size + recent.size + named_again.size + new.size
    );
    assert_eq!((report.deferred, report.failed), (0, 0));

    // The next pass finds nothing more to do.
    let again = store.collect_garbage(&rule(Some(cutoff), None)).unwrap();
    assert!(again.removed.is_empty());
    assert_eq!(again.files, 4);
}

#[tokio::test]
async fn the_byte_limit_removes_the_oldest_files_but_never_one_just_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsAttachmentStore::new(dir.path());
    let content = |n: u8| Bytes::from(vec![n; 1000]);
    let mut stored = Vec::new();
    for (n, days_old) in [(1u8, 6u32), (2, 4), (3, 5), (4, 1)] {
        let file = store.put(content(n)).await.unwrap();
        age(&path_of(dir.path(), &file.sha256), DAY * days_old);
        stored.push(file);
    }
    let just_stored = store.put(content(5)).await.unwrap();

    // 5000 bytes, at most 500: every old file goes, oldest first; the one
    // stored now is spared although it alone is over the limit.
    let report = store.collect_garbage(&rule(None, Some(500))).unwrap();
    let gone: Vec<bool> = stored
        .iter()
        .map(|file| !path_of(dir.path(), &file.sha256).exists())
        .collect();
    assert_eq!(gone, [true, true, true, true]);
    assert!(path_of(dir.path(), &just_stored.sha256).exists());
    assert_eq!(report.removed[&Reason::MaxBytes].files, 4);
    assert_eq!((report.files, report.bytes), (1, 1000));
    assert!(report.over_max_bytes);

    let mut more = Vec::new();
    for (n, days_old) in [(6u8, 3u32), (7, 2)] {
        let file = store.put(content(n)).await.unwrap();
        age(&path_of(dir.path(), &file.sha256), DAY * days_old);
        more.push(file);
    }
    let report = store.collect_garbage(&rule(None, Some(2000))).unwrap();
    assert!(!path_of(dir.path(), &more[0].sha256).exists(), "the oldest");
    assert!(path_of(dir.path(), &more[1].sha256).exists());
    assert_eq!((report.files, report.bytes), (2, 2000));
    assert!(!report.over_max_bytes);
}

#[tokio::test]
async fn a_pass_is_bounded_and_the_next_one_continues() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsAttachmentStore::new(dir.path());
    for n in 0..5u8 {
        let file = store.put(Bytes::from(vec![n; 10])).await.unwrap();
        age(&path_of(dir.path(), &file.sha256), 10 * DAY);
    }
    let bounded = GcRule {
        max_removals: 3,
        ..rule(Some(SystemTime::now() - DAY), None)
    };
    let first = store.collect_garbage(&bounded).unwrap();
    assert_eq!(first.removed[&Reason::Unreferenced].files, 3);
    assert_eq!((first.deferred, first.files), (2, 2));
    let second = store.collect_garbage(&bounded).unwrap();
    assert_eq!(second.removed[&Reason::Unreferenced].files, 2);
    assert_eq!((second.deferred, second.files, second.bytes), (0, 0, 0));
}

#[tokio::test]
async fn a_missing_store_directory_is_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsAttachmentStore::new(dir.path().join("never-written"));
    let report = store
        .collect_garbage(&rule(Some(SystemTime::now()), Some(0)))
        .unwrap();
    assert_eq!((report.files, report.bytes), (0, 0));
}
