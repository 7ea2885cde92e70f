//! Priorities and SLA targets as pure functions of times in UTC
//! milliseconds: the deadline of a response, whether it is breached, and
//! when to escalate before it is.

use std::fmt;

/// How urgent a conversation is; `P1` is the most urgent. Ordered so that
/// the most urgent is the smallest (`P1 < P4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    P1,
    P2,
    P3,
    P4,
}

impl Priority {
    pub const ALL: [Self; 4] = [Self::P1, Self::P2, Self::P3, Self::P4];

    /// `"P1"`..`"P4"` (either case).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "P1" | "p1" => Ok(Self::P1),
            "P2" | "p2" => Ok(Self::P2),
            "P3" | "p3" => Ok(Self::P3),
            "P4" | "p4" => Ok(Self::P4),
            other => {
                let digits = other.trim_start_matches(['P', 'p']);
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    Err(format!(
                        "priority `{other}` out of range: expected P1 (most urgent) to P4"
                    ))
                } else {
                    Err(format!(
                        "invalid priority `{other}`: expected P1 (most urgent) to P4"
                    ))
                }
            }
        }
    }

    /// The more urgent of two priorities.
    pub fn most_urgent(self, other: Self) -> Self {
        self.min(other)
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::P1 => "P1",
            Self::P2 => "P2",
            Self::P3 => "P3",
            Self::P4 => "P4",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which response a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseKind {
    /// No agent has answered in this conversation yet.
    First,
    /// An agent has answered before; the customer wrote again.
    Next,
}

/// How SLA time runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlaClock {
    /// Wall-clock time: a 1 h target at 23:00 is due at 00:00.
    #[default]
    Calendar,
    /// Only inside business hours on non-holidays: a 1 h target at 23:00
    /// is due an hour after the next opening.
    BusinessHours,
}

/// A priority's targets, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaTarget {
    pub first_response_ms: i64,
    pub next_response_ms: i64,
    /// Escalate this long before the deadline (0: only at breach).
    pub escalate_before_ms: i64,
}

impl SlaTarget {
    pub const fn for_kind(&self, kind: ResponseKind) -> i64 {
        match kind {
            ResponseKind::First => self.first_response_ms,
            ResponseKind::Next => self.next_response_ms,
        }
    }
}

/// When a response is due, and when to escalate if it has not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaDeadline {
    pub kind: ResponseKind,
    pub priority: Priority,
    /// The target as configured (milliseconds of SLA time).
    pub target_ms: i64,
    /// The deadline (UTC milliseconds).
    pub due_ms: i64,
    /// When to escalate (UTC milliseconds, never before the message).
    pub escalate_at_ms: i64,
}

/// Where a pending response stands at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlaStatus {
    OnTrack,
    /// Within the escalation margin of the deadline.
    Escalate,
    /// Past the deadline.
    Breached,
}

/// Whether a response due at `due_ms` is late at `now_ms`: the deadline
/// itself is still in time.
pub const fn is_breached(due_ms: i64, now_ms: i64) -> bool {
    now_ms > due_ms
}

impl SlaDeadline {
    /// A deadline `target_ms` of wall-clock time after `message_ms`,
    /// escalating `escalate_before_ms` earlier (clamped to the message).
    pub fn calendar(
        kind: ResponseKind,
        priority: Priority,
        message_ms: i64,
        target_ms: i64,
        escalate_before_ms: i64,
    ) -> Self {
        let due_ms = message_ms.saturating_add(target_ms);
        Self::with_due(
            kind,
            priority,
            message_ms,
            target_ms,
            due_ms,
            escalate_before_ms,
        )
    }

    pub(crate) fn with_due(
        kind: ResponseKind,
        priority: Priority,
        message_ms: i64,
        target_ms: i64,
        due_ms: i64,
        escalate_before_ms: i64,
    ) -> Self {
        let escalate_at_ms = due_ms.saturating_sub(escalate_before_ms).max(message_ms);
        Self {
            kind,
            priority,
            target_ms,
            due_ms,
            escalate_at_ms,
        }
    }

    pub const fn is_breached(&self, now_ms: i64) -> bool {
        is_breached(self.due_ms, now_ms)
    }

    /// On track, to escalate (from `escalate_at_ms` on), or breached.
    pub const fn status(&self, now_ms: i64) -> SlaStatus {
        if self.is_breached(now_ms) {
            SlaStatus::Breached
        } else if now_ms >= self.escalate_at_ms && self.escalate_at_ms < self.due_ms {
            SlaStatus::Escalate
        } else {
            SlaStatus::OnTrack
        }
    }
}

/// Longest duration a rule file may name (30 days).
const MAX_DURATION_MS: i64 = 30 * 24 * 3_600_000;

/// `"90s"`, `"15m"`, `"4h"`, `"1d"` or combinations (`"1h30m"`) as
/// milliseconds: positive, at most 30 days.
pub(crate) fn parse_duration(text: &str) -> Result<i64, String> {
    let invalid = || {
        format!(
            "invalid duration `{text}`: use a number and a unit (s, m, h, d), e.g. \"90s\", \"15m\", \"4h\", \"1h30m\""
        )
    };
    let mut total: i64 = 0;
    let mut number: Option<i64> = None;
    for c in text.trim().chars() {
        if let Some(digit) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(i64::from(digit)))
                    .filter(|&n| n <= MAX_DURATION_MS)
                    .ok_or_else(|| format!("duration `{text}` is longer than 30 days"))?,
            );
            continue;
        }
        let unit: i64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(invalid()),
        };
        let n = number.take().ok_or_else(invalid)?;
        total = n
            .checked_mul(unit)
            .and_then(|ms| total.checked_add(ms))
            .filter(|&ms| ms <= MAX_DURATION_MS)
            .ok_or_else(|| format!("duration `{text}` is longer than 30 days"))?;
    }
    if number.is_some() || text.trim().is_empty() {
        return Err(invalid());
    }
    if total == 0 {
        return Err(format!("duration `{text}` must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_and_order() {
        assert_eq!(Priority::parse("P1"), Ok(Priority::P1));
        assert_eq!(Priority::parse("p4"), Ok(Priority::P4));
        assert!(Priority::parse("P5").unwrap_err().contains("out of range"));
        assert!(Priority::parse("P0").unwrap_err().contains("out of range"));
        assert!(
            Priority::parse("urgent")
                .unwrap_err()
                .contains("invalid priority")
        );
        assert_eq!(Priority::P3.most_urgent(Priority::P1), Priority::P1);
        assert!(Priority::P1 < Priority::P2);
    }

    #[test]
    fn deadlines_breaches_and_escalation() {
        let message = 1_000_000;
        let deadline =
            SlaDeadline::calendar(ResponseKind::First, Priority::P1, message, 900_000, 300_000);
        assert_eq!(deadline.due_ms, 1_900_000);
        assert_eq!(deadline.escalate_at_ms, 1_600_000);
        assert_eq!(deadline.status(1_599_999), SlaStatus::OnTrack);
        assert_eq!(deadline.status(1_600_000), SlaStatus::Escalate);
        assert_eq!(deadline.status(1_900_000), SlaStatus::Escalate);
        assert!(!deadline.is_breached(1_900_000));
        assert_eq!(deadline.status(1_900_001), SlaStatus::Breached);
        // A margin longer than the target escalates at once, not before
        // the message existed.
        let deadline =
            SlaDeadline::calendar(ResponseKind::Next, Priority::P2, message, 60_000, 600_000);
        assert_eq!(deadline.escalate_at_ms, message);
        // No margin: on track until breached.
        let deadline = SlaDeadline::calendar(ResponseKind::Next, Priority::P2, message, 60_000, 0);
        assert_eq!(deadline.status(1_060_000), SlaStatus::OnTrack);
        assert_eq!(deadline.status(1_060_001), SlaStatus::Breached);
        assert!(is_breached(10, 11));
        assert!(!is_breached(10, 10));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("15m"), Ok(900_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("2d"), Ok(172_800_000));
        assert!(
            parse_duration("15")
                .unwrap_err()
                .contains("invalid duration")
        );
        assert!(
            parse_duration("15 minutes")
                .unwrap_err()
                .contains("invalid duration")
        );
        assert!(parse_duration("").unwrap_err().contains("invalid duration"));
        assert!(
            parse_duration("0m")
                .unwrap_err()
                .contains("longer than zero")
        );
        assert!(parse_duration("31d").unwrap_err().contains("30 days"));
        assert!(
            parse_duration("99999999999999999999s")
                .unwrap_err()
                .contains("30 days")
        );
    }
}
