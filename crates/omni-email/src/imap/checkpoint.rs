//! The pure parts of pulling: checkpoints, UID sets, which UIDs are new.

use serde::{Deserialize, Serialize};

/// How far a mailbox is ingested: every message with a UID up to
/// `last_uid` under this `uid_validity` is durable in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub uid_validity: u32,
    pub last_uid: u32,
}

impl Checkpoint {
    /// The state key of a mailbox's checkpoint.
    pub fn key(mailbox: &str) -> String {
        format!("imap/{mailbox}")
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a checkpoint always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Where to resume in a mailbox, from its stored checkpoint and what SELECT
/// reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Carry on after `last_uid`.
    After(u32),
    /// No checkpoint: first start (the configured start point applies).
    Fresh,
    /// The server renumbered the mailbox: walk all of it again, skipping
    /// what was already ingested.
    Renumbered { previous: u32 },
}

pub fn resume(stored: Option<Checkpoint>, uid_validity: u32) -> Resume {
    match stored {
        None => Resume::Fresh,
        Some(c) if c.uid_validity == uid_validity => Resume::After(c.last_uid),
        Some(c) => Resume::Renumbered {
            previous: c.uid_validity,
        },
    }
}

/// Formats sorted UIDs as an IMAP sequence set with ranges (`1:3,7,9:10`),
/// keeping commands short for large batches.
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// The UIDs above `last_uid`, sorted. `UID SEARCH UID n:*` always returns
/// the highest UID even when it is below `n` (RFC 3501: `*` is the largest
/// UID in use), so the result is filtered rather than trusted.
pub fn new_uids(found: impl IntoIterator<Item = u32>, last_uid: u32) -> Vec<u32> {
    let mut uids: Vec<u32> = found.into_iter().filter(|&u| u > last_uid).collect();
    uids.sort_unstable();
    uids.dedup();
    uids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_garbage_is_no_checkpoint() {
        let c = Checkpoint {
            uid_validity: 1_700_000_000,
            last_uid: 42,
        };
        assert_eq!(Checkpoint::decode(&c.encode()), Some(c));
        assert_eq!(Checkpoint::decode(b"{"), None);
    }

    #[test]
    fn resume_follows_uid_validity() {
        let c = Checkpoint {
            uid_validity: 7,
            last_uid: 10,
        };
        assert_eq!(resume(None, 7), Resume::Fresh);
        assert_eq!(resume(Some(c), 7), Resume::After(10));
        assert_eq!(resume(Some(c), 8), Resume::Renumbered { previous: 7 });
    }

    #[test]
    fn uid_sets_use_ranges() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
    }

    #[test]
    fn new_uids_drop_the_star_echo() {
        assert_eq!(new_uids([10], 10), Vec::<u32>::new());
        assert_eq!(new_uids([13, 11, 12, 11], 10), vec![11, 12, 13]);
    }
}
