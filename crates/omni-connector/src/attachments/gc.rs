//! Garbage collection of the filesystem attachment store.
//!
//! Deciding whether a retained record still names a file would mean reading
//! every retained record. Instead the store keeps one invariant: a file's
//! modification time is at least the last time something was about to
//! name it, because a `put` of content already stored refreshes it, and
//! the daemon refreshes it again ([`FsAttachmentStore::touch`]) as it
//! appends any record naming it. A record is appended at most a safety
//! margin after that refresh, so once every record the log retains was
//! appended after `T`, a file last refreshed before `T - margin` is named
//! by nothing retained and can go. The caller finds `T` (the embedded log
//! knows its oldest retained record; with Kafka an age limit stands in)
//! and this module does the rest: [`plan`] decides, purely, what to
//! remove; [`FsAttachmentStore::collect_garbage`] walks the directory,
//! plans, and unlinks.
//!
//! Removing is only unlinking: a crash in the middle of a pass leaves some
//! files for the next pass, never a damaged one. A file whose modification
//! time changed between the walk and its removal (a `put` refreshed it)
//! stays: the check and the unlink happen under the same lock that `put`
//! and `touch` take for their refresh.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::RwLock,
    time::{Duration, SystemTime},
};

use super::{AttachmentError, FsAttachmentStore};

/// Temporary files (`.tmp-*`, a write in progress) older than this are
/// left over from a crash and removed: no write of one file takes a day.
pub const STALE_TEMPORARY_AGE: Duration = Duration::from_secs(24 * 3600);

/// Serialises a refresh of a file's modification time (`put`, `touch`)
/// with the collector's last look at it before unlinking, so a file
/// refreshed after the walk is never removed. Process wide: every
/// `FsAttachmentStore` of the process shares it (the daemon builds several
/// over the same directory); each holder keeps it for one file's
/// metadata, never for a write.
pub(super) static REFRESH_LOCK: RwLock<()> = RwLock::new(());

/// What a file of the store is, by its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileName {
    /// A stored file: its SHA-256.
    Stored([u8; 32]),
    /// A write in progress, or left over from a crash.
    Temporary(String),
}

impl FileName {
    /// What `name` is; `None` for a file the store did not write, which
    /// the collector leaves alone.
    pub fn classify(name: &str) -> Option<FileName> {
        if name.starts_with(".tmp-") {
            return Some(FileName::Temporary(name.to_owned()));
        }
        let lower_hex = name.len() == 64
            && name
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !lower_hex {
            return None;
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(name, &mut digest).ok()?;
        Some(FileName::Stored(digest))
    }
}

/// One file as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub name: FileName,
    pub modified: SystemTime,
    pub size: u64,
}

/// Why a file is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Last stored or named before every record still retained.
    Unreferenced,
    /// The oldest files beyond the store's byte limit, whether or not a
    /// retained record still names them.
    MaxBytes,
    /// A temporary file older than [`STALE_TEMPORARY_AGE`].
    StaleTemporary,
}

impl Reason {
    /// The value of the `reason` label of the removal metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreferenced => "unreferenced",
            Reason::MaxBytes => "max_bytes",
            Reason::StaleTemporary => "stale_temporary",
        }
    }
}

/// What one pass may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcRule {
    /// The current time.
    pub now: SystemTime,
    /// Stored files last refreshed before this are named by nothing
    /// retained; `None` removes nothing for that reason (the log keeps
    /// everything, or its retention is not known).
    pub unreferenced_before: Option<SystemTime>,
    /// Stored files are kept at or under this many bytes by removing the
    /// oldest first; `None`: no limit.
    pub max_bytes: Option<u64>,
    /// No file younger than this is removed, whatever the other limits
    /// say: its record may not be appended yet.
    pub min_age: Duration,
    /// Most files removed in one pass; the rest wait for the next pass.
    pub max_removals: usize,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indexes into the planned files, with why each goes: stale
    /// temporaries first, then unreferenced files, then files over the
    /// byte limit, each oldest first.
    pub remove: Vec<(usize, Reason)>,
    /// Stored files (and their bytes) that stay.
    pub kept_files: u64,
    pub kept_bytes: u64,
    /// Removals beyond `max_removals`, left to the next pass.
    pub deferred: u64,
    /// The stored files stay over `max_bytes` even after the planned
    /// removals (the rest are younger than `min_age`, or deferred).
    pub over_max_bytes: bool,
}

/// What to remove of `files`, by `rule`; pure, so every choice is tested
/// without a file system.
pub fn plan(files: &[FileMeta], rule: &GcRule) -> Plan {
    let age = |file: &FileMeta| rule.now.duration_since(file.modified).unwrap_or_default();
    // A modification time in the future counts as brand new.
    let young = |file: &FileMeta| age(file) < rule.min_age || file.modified > rule.now;
    let oldest_first = |a: &usize, b: &usize| {
        (files[*a].modified, &files[*a].name).cmp(&(files[*b].modified, &files[*b].name))
    };

    let mut temporaries = Vec::new();
    let mut unreferenced = Vec::new();
    let mut kept = Vec::new();
    for (index, file) in files.iter().enumerate() {
        match &file.name {
            FileName::Temporary(_) => {
                if !young(file) && age(file) >= STALE_TEMPORARY_AGE {
                    temporaries.push(index);
                }
            }
            FileName::Stored(_) => {
                let before_cutoff = rule
                    .unreferenced_before
                    .is_some_and(|cutoff| file.modified < cutoff);
                if before_cutoff && !young(file) {
                    unreferenced.push(index);
                } else {
                    kept.push(index);
                }
            }
        }
    }
    temporaries.sort_by(oldest_first);
    unreferenced.sort_by(oldest_first);
    kept.sort_by(oldest_first);

    let mut kept_bytes: u64 = kept.iter().map(|&i| files[i].size).sum();
    let mut over_limit = Vec::new();
    if let Some(max) = rule.max_bytes {
        for &index in &kept {
            if kept_bytes <= max || young(&files[index]) {
                // Oldest first: once one is young, all the rest are.
                break;
            }
            over_limit.push(index);
            kept_bytes -= files[index].size;
        }
    }

    let wanted = temporaries
        .into_iter()
        .map(|i| (i, Reason::StaleTemporary))
        .chain(unreferenced.into_iter().map(|i| (i, Reason::Unreferenced)))
        .chain(over_limit.into_iter().map(|i| (i, Reason::MaxBytes)));
    let mut result = Plan::default();
    for (index, reason) in wanted {
        if result.remove.len() < rule.max_removals {
            result.remove.push((index, reason));
        } else {
            result.deferred += 1;
        }
    }
    let removed: std::collections::HashSet<usize> = result.remove.iter().map(|r| r.0).collect();
    for (index, file) in files.iter().enumerate() {
        if matches!(file.name, FileName::Stored(_)) && !removed.contains(&index) {
            result.kept_files += 1;
            result.kept_bytes += file.size;
        }
    }
    result.over_max_bytes = rule.max_bytes.is_some_and(|max| result.kept_bytes > max);
    result
}

/// Files and bytes removed for one reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub files: u64,
    pub bytes: u64,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Stored files (and their bytes) after the pass.
    pub files: u64,
    pub bytes: u64,
    /// Per reason, what went.
    pub removed: BTreeMap<Reason, Removed>,
    /// Removals left to the next pass (`max_removals` reached).
    pub deferred: u64,
    /// Still over `max_bytes` after the pass.
    pub over_max_bytes: bool,
    /// Planned removals skipped because the file was stored or named again
    /// since the walk.
    pub refreshed: u64,
    /// Removals that failed (other than the file being gone already), and
    /// the first error; the next pass tries again.
    pub failed: u64,
    pub first_error: Option<String>,
}

impl FsAttachmentStore {
    /// One garbage collection pass: walks the store, removes what `rule`
    /// says (see [`plan`]) and reports what is left. Blocking: call it
    /// from `spawn_blocking`. A missing store directory is an empty store.
    /// Only the two-hex-digit shard directories are read, and in them only
    /// files the store writes (digests, `.tmp-*`); anything else an
    /// operator put there is neither counted nor touched.
    pub fn collect_garbage(&self, rule: &GcRule) -> Result<GcReport, AttachmentError> {
        let (files, paths) = self.walk()?;
        let plan = plan(&files, rule);
        let mut report = GcReport {
            files: plan.kept_files,
            bytes: plan.kept_bytes,
            deferred: plan.deferred,
            ..GcReport::default()
        };
        for &(index, reason) in &plan.remove {
            let file = &files[index];
            match remove_unchanged(&paths[index], file.modified) {
                Ok(Outcome::Removed) => {
                    let removed = report.removed.entry(reason).or_default();
                    removed.files += 1;
                    removed.bytes += file.size;
                }
                Ok(Outcome::Gone) => {}
                Ok(Outcome::Refreshed) => {
                    report.refreshed += 1;
                    if matches!(file.name, FileName::Stored(_)) {
                        report.files += 1;
                        report.bytes += file.size;
                    }
                }
                Err(error) => {
                    report.failed += 1;
                    if matches!(file.name, FileName::Stored(_)) {
                        report.files += 1;
                        report.bytes += file.size;
                    }
                    report
                        .first_error
                        .get_or_insert_with(|| format!("{}: {error}", paths[index].display()));
                }
            }
        }
        report.over_max_bytes = rule.max_bytes.is_some_and(|max| report.bytes > max);
        Ok(report)
    }

    /// Every file of the store the collector may consider, with its path.
    fn walk(&self) -> Result<(Vec<FileMeta>, Vec<PathBuf>), AttachmentError> {
        let fail = |path: &Path, source| AttachmentError {
            path: path.to_owned(),
            source,
        };
        let shards = match std::fs::read_dir(&self.root) {
            Ok(shards) => shards,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()));
            }
            Err(e) => return Err(fail(&self.root, e)),
        };
        let (mut files, mut paths) = (Vec::new(), Vec::new());
        for shard in shards {
            let shard = shard.map_err(|e| fail(&self.root, e))?;
            let Some(prefix) = shard.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let is_shard = prefix.len() == 2
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !is_shard || !shard.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let entries = match std::fs::read_dir(shard.path()) {
                Ok(entries) => entries,
                // Removed under us (by an operator): nothing to collect.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fail(&shard.path(), e)),
            };
            for entry in entries {
                let Ok(entry) = entry else { continue };
                let Some(name) = entry.file_name().to_str().and_then(FileName::classify) else {
                    continue;
                };
                if let FileName::Stored(digest) = &name
                    && !hex::encode(&digest[..1]).eq(&prefix)
                {
                    continue;
                }
                // Symbolic links and directories are not the store's.
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                if !metadata.is_file() {
                    continue;
                }
                let Ok(modified) = metadata.modified() else {
                    continue;
                };
                files.push(FileMeta {
                    name,
                    modified,
                    size: metadata.len(),
                });
                paths.push(entry.path());
            }
        }
        Ok((files, paths))
    }
}

enum Outcome {
    Removed,
    /// Removed by someone else already.
    Gone,
    /// Its modification time moved since the walk: it stays.
    Refreshed,
}

/// Unlinks `path` if its modification time is still `seen`, under the
/// refresh lock (so no `put` or `touch` refreshes it in between).
fn remove_unchanged(path: &Path, seen: SystemTime) -> std::io::Result<Outcome> {
    let _guard = REFRESH_LOCK.write().unwrap_or_else(|p| p.into_inner());
    let modified = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata.modified()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Gone),
        Err(e) => return Err(e),
    };
    if modified != seen {
        return Ok(Outcome::Refreshed);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(Outcome::Removed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Outcome::Gone),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(hours: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + HOUR * hours as u32
    }

    fn stored(n: u8, modified_hour: u64, size: u64) -> FileMeta {
        FileMeta {
            name: FileName::Stored([n; 32]),
            modified: at(modified_hour),
            size,
        }
    }

    fn temporary(name: &str, modified_hour: u64) -> FileMeta {
        FileMeta {
            name: FileName::Temporary(name.to_owned()),
            modified: at(modified_hour),
            size: 7,
        }
    }

    fn rule(now_hour: u64) -> GcRule {
        GcRule {
            now: at(now_hour),
            unreferenced_before: None,
            max_bytes: None,
            min_age: HOUR,
            max_removals: usize::MAX,
        }
    }

    #[test]
    fn only_digests_and_temporaries_are_the_stores() {
        let digest = "ab".repeat(32);
        assert_eq!(
            FileName::classify(&digest),
            Some(FileName::Stored([0xab; 32]))
        );
        assert_eq!(
            FileName::classify(".tmp-12-3"),
            Some(FileName::Temporary(".tmp-12-3".to_owned()))
        );
        for foreign in [
            "AB".repeat(32).as_str(),
            &"ab".repeat(31),
            &"gg".repeat(32),
            "README",
            "",
        ] {
            assert_eq!(FileName::classify(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn files_last_refreshed_before_the_cutoff_go_oldest_first() {
        let files = [
            stored(1, 10, 100),
            stored(2, 5, 100),
            stored(3, 20, 100),
            stored(4, 19, 100),
        ];
        let plan = plan(
            &files,
            &GcRule {
                unreferenced_before: Some(at(19)),
                ..rule(100)
            },
        );
        assert_eq!(
            plan.remove,
            [(1, Reason::Unreferenced), (0, Reason::Unreferenced)]
        );
        assert_eq!((plan.kept_files, plan.kept_bytes), (2, 200));
        assert!(!plan.over_max_bytes);
    }

    #[test]
    fn nothing_is_removed_without_a_cutoff_or_limit() {
        let files = [stored(1, 0, 100), stored(2, 1, 100)];
        let plan = plan(&files, &rule(1000));
        assert!(plan.remove.is_empty());
        assert_eq!((plan.kept_files, plan.kept_bytes), (2, 200));
    }

    #[test]
    fn a_file_younger_than_the_margin_stays_whatever_the_cutoff() {
        // A cutoff in the future (a clock step, a log of records dated
        // ahead) still spares what was stored in the last hour.
        let files = [stored(1, 99, 100), stored(2, 100, 100), stored(3, 90, 100)];
        let plan = plan(
            &files,
            &GcRule {
                unreferenced_before: Some(at(200)),
                min_age: HOUR * 2,
                ..rule(100)
            },
        );
        assert_eq!(plan.remove, [(2, Reason::Unreferenced)]);
    }

    #[test]
    fn the_byte_limit_removes_the_oldest_kept_files_until_under_it() {
        let files = [
            stored(1, 50, 400),
            stored(2, 10, 300), // unreferenced
            stored(3, 40, 200),
            stored(4, 60, 100),
            stored(5, 70, 50),
        ];
        let plan = plan(
            &files,
            &GcRule {
                unreferenced_before: Some(at(20)),
                max_bytes: Some(400),
                ..rule(100)
            },
        );
        // 750 kept after the unreferenced one; 3 (200) and 1 (400) go,
        // leaving 150.
        assert_eq!(
            plan.remove,
            [
                (1, Reason::Unreferenced),
                (2, Reason::MaxBytes),
                (0, Reason::MaxBytes)
            ]
        );
        assert_eq!((plan.kept_files, plan.kept_bytes), (2, 150));
        assert!(!plan.over_max_bytes);
    }

    #[test]
    fn the_byte_limit_never_removes_young_files() {
        let files = [stored(1, 10, 500), stored(2, 100, 500)];
        let plan = plan(
            &files,
            &GcRule {
                max_bytes: Some(100),
                ..rule(100)
            },
        );
        assert_eq!(plan.remove, [(0, Reason::MaxBytes)]);
        assert_eq!(plan.kept_bytes, 500);
        assert!(plan.over_max_bytes, "the young file alone is over");
    }

    #[test]
    fn stale_temporaries_go_and_fresh_ones_stay() {
        let files = [
            temporary(".tmp-1-1", 10), // 90 hours old
            temporary(".tmp-1-2", 99), // a write in progress
            temporary(".tmp-1-3", 77), // 23 hours: may still be written
            stored(1, 10, 100),
        ];
        let plan = plan(&files, &rule(100));
        assert_eq!(plan.remove, [(0, Reason::StaleTemporary)]);
        assert_eq!(
            (plan.kept_files, plan.kept_bytes),
            (1, 100),
            "temporaries are not counted as stored"
        );
    }

    #[test]
    fn a_pass_removes_at_most_its_batch_and_defers_the_rest() {
        let files = [
            stored(1, 1, 10),
            stored(2, 2, 10),
            stored(3, 3, 10),
            stored(4, 50, 10),
        ];
        let plan = plan(
            &files,
            &GcRule {
                unreferenced_before: Some(at(10)),
                max_removals: 2,
                ..rule(100)
            },
        );
        assert_eq!(
            plan.remove,
            [(0, Reason::Unreferenced), (1, Reason::Unreferenced)]
        );
        assert_eq!(plan.deferred, 1);
        assert_eq!(
            (plan.kept_files, plan.kept_bytes),
            (2, 20),
            "a deferred file is still there"
        );
    }

    #[test]
    fn a_modification_time_in_the_future_counts_as_new() {
        let files = [stored(1, 500, 10)];
        let plan = plan(
            &files,
            &GcRule {
                unreferenced_before: Some(at(1000)),
                max_bytes: Some(0),
                ..rule(100)
            },
        );
        assert!(plan.remove.is_empty());
    }
}
