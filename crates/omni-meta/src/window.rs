//! Meta's customer-service window: a business may answer freely for 24
//! hours after the customer's last message; after that WhatsApp takes only
//! approved templates, and Messenger and Instagram only messages tagged
//! `HUMAN_AGENT` (for 7 days, where the app has that permission).
//!
//! The webhook records each customer's latest message time in the
//! channel's durable state once the message is in the log; the senders
//! read it before each reply. The time is the customer's own (the
//! message's `timestamp`), as Meta counts the window from it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use omni_connector::{ChannelState, StateUpdate, state::StateError};

/// The free-form window after a customer's message.
pub const STANDARD: Duration = Duration::from_secs(24 * 3600);
/// How long after a customer's message `HUMAN_AGENT` replies are allowed.
pub const HUMAN_AGENT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The state key of a customer's latest message time (`wa_id`, PSID or
/// IGSID).
pub fn key(customer: &str) -> String {
    format!("window/{customer}")
}

/// When the customer last wrote (seconds since the epoch), if they have.
pub async fn last_message(state: &ChannelState, customer: &str) -> Result<Option<i64>, StateError> {
    Ok(parse(state.get(&key(customer)).await?.as_deref()))
}

fn parse(stored: Option<&[u8]>) -> Option<i64> {
    std::str::from_utf8(stored?).ok()?.parse().ok()
}

/// Records that each `(customer, seconds)` wrote then, keeping the later
/// time when one is already stored (Meta may deliver out of order).
pub async fn record(
    state: &ChannelState,
    messages: impl IntoIterator<Item = (String, i64)>,
    seen: Vec<String>,
) -> Result<(), StateError> {
    let mut latest: Vec<(String, i64)> = Vec::new();
    for (customer, at) in messages {
        match latest.iter_mut().find(|(c, _)| *c == customer) {
            Some((_, time)) => *time = (*time).max(at),
            None => latest.push((customer, at)),
        }
    }
    // The stored times, read in one trip, so only later ones are written.
    let stored = state
        .get_many(latest.iter().map(|(customer, _)| key(customer)).collect())
        .await?;
    let puts: Vec<(String, Vec<u8>)> = latest
        .into_iter()
        .zip(stored)
        .filter(|((_, at), stored)| parse(stored.as_deref()).is_none_or(|stored| stored < *at))
        .map(|((customer, at), _)| (key(&customer), at.to_string().into_bytes()))
        .collect();
    if puts.is_empty() && seen.is_empty() {
        return Ok(());
    }
    state
        .commit(StateUpdate {
            puts,
            seen,
            deletes: Vec::new(),
        })
        .await
}

/// How long ago `at` (seconds since the epoch) was, by `now`; zero when
/// `at` is in the future (a customer's clock ahead of ours).
pub fn age(at: i64, now: SystemTime) -> Duration {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    Duration::from_secs(now.saturating_sub(at).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_latest_message_time_per_customer() {
        let state = ChannelState::memory("wa");
        assert_eq!(last_message(&state, "15551234567").await.unwrap(), None);
        record(
            &state,
            [
                ("15551234567".to_owned(), 200),
                ("15551234567".to_owned(), 100),
            ],
            vec!["seen-1".into()],
        )
        .await
        .unwrap();
        assert_eq!(
            last_message(&state, "15551234567").await.unwrap(),
            Some(200)
        );
        record(&state, [("15551234567".to_owned(), 150)], Vec::new())
            .await
            .unwrap();
        assert_eq!(
            last_message(&state, "15551234567").await.unwrap(),
            Some(200)
        );
        assert_eq!(
            state.seen(vec!["seen-1".into(), "x".into()]).await.unwrap(),
            [true, false]
        );
    }

    #[test]
    fn age_is_never_negative() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(age(400, now), Duration::from_secs(600));
        assert_eq!(age(5000, now), Duration::ZERO);
    }
}
