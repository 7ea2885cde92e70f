//! Business hours in the rule set's time zone: weekly opening intervals in
//! local wall-clock time (so 09:00 stays 09:00 across daylight-saving
//! changes) and whole-day holidays.

use std::collections::BTreeSet;

use jiff::{
    Timestamp,
    civil::{Date, DateTime, Time},
    tz::TimeZone,
};

/// Where an instant falls in a rule set's calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hours {
    /// Within an opening interval of a working day.
    Inside,
    /// A working day (or a day with no hours), outside its intervals.
    Outside,
    /// A listed holiday, whatever the weekly hours say.
    Holiday,
}

impl Hours {
    /// The name rule files use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inside => "inside",
            Self::Outside => "outside",
            Self::Holiday => "holiday",
        }
    }
}

/// Minutes in a day; an interval may end at 24:00.
const DAY_MINUTES: u16 = 24 * 60;

/// Business time is searched for this many days ahead at most; a
/// calendar with no opening left in that time falls back to wall-clock
/// time rather than loop.
const MAX_SEARCH_DAYS: u32 = 400;

/// A time zone, weekly hours and holidays.
#[derive(Debug, Clone)]
pub(crate) struct Calendar {
    tz: TimeZone,
    /// Monday first; `[start, end)` minutes after local midnight, sorted
    /// and disjoint.
    weekly: [Vec<(u16, u16)>; 7],
    holidays: BTreeSet<Date>,
}

impl Calendar {
    pub(crate) fn new(
        tz: TimeZone,
        weekly: [Vec<(u16, u16)>; 7],
        holidays: BTreeSet<Date>,
    ) -> Self {
        Self {
            tz,
            weekly,
            holidays,
        }
    }

    /// The local wall-clock time of an instant (`None` beyond jiff's range
    /// of years -9999..=9999).
    pub(crate) fn local(&self, at_ms: i64) -> Option<DateTime> {
        let at = Timestamp::from_millisecond(at_ms).ok()?;
        Some(self.tz.to_datetime(at))
    }

    /// Inside, outside or holiday at `at_ms` (UTC milliseconds). An instant
    /// outside jiff's range is outside.
    pub(crate) fn hours_at(&self, at_ms: i64) -> Hours {
        let Some(local) = self.local(at_ms) else {
            return Hours::Outside;
        };
        if self.holidays.contains(&local.date()) {
            return Hours::Holiday;
        }
        let minute =
            u16::from(local.hour().unsigned_abs()) * 60 + u16::from(local.minute().unsigned_abs());
        let day = &self.weekly[usize::from(local.weekday().to_monday_zero_offset().unsigned_abs())];
        if day
            .iter()
            .any(|&(start, end)| start <= minute && minute < end)
        {
            Hours::Inside
        } else {
            Hours::Outside
        }
    }

    /// The instant `duration_ms` of business time after `from_ms`: time
    /// only runs inside opening intervals of non-holidays. `None` when the
    /// calendar has no such time within [`MAX_SEARCH_DAYS`].
    pub(crate) fn add_business_time(&self, from_ms: i64, duration_ms: i64) -> Option<i64> {
        let mut date = self.local(from_ms)?.date();
        let mut remaining = duration_ms;
        let mut cursor = from_ms;
        for _ in 0..MAX_SEARCH_DAYS {
            if !self.holidays.contains(&date) {
                let day = &self.weekly
                    [usize::from(date.weekday().to_monday_zero_offset().unsigned_abs())];
                for &(start, end) in day {
                    let open = self.instant(date, start)?;
                    let close = self.instant(date, end)?;
                    let from = open.max(cursor);
                    if from < close {
                        let available = close - from;
                        if remaining <= available {
                            return Some(from + remaining);
                        }
                        remaining -= available;
                        cursor = close;
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The instant of a local wall-clock minute on `date`; a minute that
    /// does not exist (a spring-forward gap) is read as the instant after
    /// the gap, a repeated one as its first occurrence.
    fn instant(&self, date: Date, minute: u16) -> Option<i64> {
        let (date, minute) = if minute >= DAY_MINUTES {
            (date.tomorrow().ok()?, minute - DAY_MINUTES)
        } else {
            (date, minute)
        };
        let time = Time::new((minute / 60) as i8, (minute % 60) as i8, 0, 0).ok()?;
        let at = self
            .tz
            .to_ambiguous_timestamp(date.to_datetime(time))
            .compatible()
            .ok()?;
        Some(at.as_millisecond())
    }
}

/// `"09:00-17:30"` as minutes after midnight; the end may be `24:00`.
pub(crate) fn parse_interval(text: &str) -> Result<(u16, u16), String> {
    let invalid =
        || format!("invalid interval `{text}`: use \"HH:MM-HH:MM\", e.g. \"09:00-17:30\"");
    let (start, end) = text.split_once('-').ok_or_else(invalid)?;
    let start = parse_clock(start.trim()).ok_or_else(invalid)?;
    let end = parse_clock(end.trim()).ok_or_else(invalid)?;
    if start >= DAY_MINUTES {
        return Err(invalid());
    }
    if end <= start {
        return Err(format!(
            "interval `{text}` ends before it starts: an interval past midnight is two, \"22:00-24:00\" on one day and \"00:00-02:00\" on the next"
        ));
    }
    Ok((start, end))
}

fn parse_clock(text: &str) -> Option<u16> {
    let (hours, minutes) = text.split_once(':')?;
    if hours.is_empty() || hours.len() > 2 || minutes.len() != 2 {
        return None;
    }
    let hours: u16 = hours.parse().ok()?;
    let minutes: u16 = minutes.parse().ok()?;
    let total = hours.checked_mul(60)?.checked_add(minutes)?;
    (minutes < 60 && total <= DAY_MINUTES).then_some(total)
}

/// Longest holiday range one entry may name.
const MAX_HOLIDAY_RANGE_DAYS: usize = 366;

/// `"2026-03-20"` or an inclusive range `"2026-03-20..2026-03-24"`.
pub(crate) fn parse_holiday(text: &str) -> Result<Vec<Date>, String> {
    let date = |part: &str| {
        part.trim().parse::<Date>().map_err(|_| {
            format!("invalid date `{part}`: use \"YYYY-MM-DD\" or \"YYYY-MM-DD..YYYY-MM-DD\"")
        })
    };
    let Some((first, last)) = text.split_once("..") else {
        return Ok(vec![date(text)?]);
    };
    let (first, last) = (date(first)?, date(last)?);
    if last < first {
        return Err(format!("holiday range `{text}` ends before it starts"));
    }
    let mut dates = vec![first];
    let mut day = first;
    while day < last {
        if dates.len() >= MAX_HOLIDAY_RANGE_DAYS {
            return Err(format!(
                "holiday range `{text}` is longer than {MAX_HOLIDAY_RANGE_DAYS} days"
            ));
        }
        day = day.tomorrow().map_err(|e| e.to_string())?;
        dates.push(day);
    }
    Ok(dates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(utc: &str) -> i64 {
        utc.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn weekdays(interval: (u16, u16)) -> [Vec<(u16, u16)>; 7] {
        let mut weekly: [Vec<(u16, u16)>; 7] = Default::default();
        for day in weekly.iter_mut().take(5) {
            day.push(interval);
        }
        weekly
    }

    fn berlin() -> Calendar {
        let tz = jiff::tz::TimeZoneDatabase::bundled()
            .get("Europe/Berlin")
            .unwrap();
        Calendar::new(
            tz,
            weekdays(parse_interval("09:00-17:00").unwrap()),
            BTreeSet::new(),
        )
    }

    #[test]
    fn local_hours_follow_daylight_saving() {
        let calendar = berlin();
        // Friday before the change: 08:30 UTC is 09:30 CET.
        assert_eq!(calendar.hours_at(at("2026-03-27T08:30:00Z")), Hours::Inside);
        assert_eq!(
            calendar.hours_at(at("2026-03-27T07:30:00Z")),
            Hours::Outside
        );
        // Monday after: 07:30 UTC is 09:30 CEST (it was 08:30 a week before).
        assert_eq!(calendar.hours_at(at("2026-03-30T07:30:00Z")), Hours::Inside);
        // 15:30 UTC is 17:30 CEST: closed, though 16:30 in winter time.
        assert_eq!(
            calendar.hours_at(at("2026-03-30T15:30:00Z")),
            Hours::Outside
        );
        // The last minute is inside, the closing minute is not.
        assert_eq!(calendar.hours_at(at("2026-03-30T14:59:59Z")), Hours::Inside);
        assert_eq!(
            calendar.hours_at(at("2026-03-30T15:00:00Z")),
            Hours::Outside
        );
        // Weekend.
        assert_eq!(
            calendar.hours_at(at("2026-03-28T10:00:00Z")),
            Hours::Outside
        );
        // Autumn: 2026-10-26 (Monday) 08:30 UTC is 09:30 CET again.
        assert_eq!(calendar.hours_at(at("2026-10-26T08:30:00Z")), Hours::Inside);
        assert_eq!(calendar.hours_at(at("2026-10-23T07:30:00Z")), Hours::Inside);
    }

    #[test]
    fn holidays_override_the_weekly_hours() {
        let tz = jiff::tz::TimeZoneDatabase::bundled()
            .get("Asia/Tehran")
            .unwrap();
        let mut weekly: [Vec<(u16, u16)>; 7] = Default::default();
        // Saturday to Wednesday 09:00-17:00, Thursday 09:00-13:00.
        for day in [5, 6, 0, 1, 2] {
            weekly[day].push((9 * 60, 17 * 60));
        }
        weekly[3].push((9 * 60, 13 * 60));
        let holidays = parse_holiday("2026-03-20..2026-03-24")
            .unwrap()
            .into_iter()
            .collect();
        let calendar = Calendar::new(tz, weekly, holidays);
        // Saturday 2026-03-21 10:00 Tehran (06:30 UTC) is Nowruz.
        assert_eq!(
            calendar.hours_at(at("2026-03-21T06:30:00Z")),
            Hours::Holiday
        );
        // Even at night on a holiday.
        assert_eq!(
            calendar.hours_at(at("2026-03-24T20:29:00Z")),
            Hours::Holiday
        );
        // The next Saturday is a working day.
        assert_eq!(calendar.hours_at(at("2026-03-28T06:30:00Z")), Hours::Inside);
        // Thursday afternoon is closed.
        assert_eq!(
            calendar.hours_at(at("2026-03-26T10:00:00Z")),
            Hours::Outside
        );
        // Business time skips the holidays: Thursday 2026-03-19 12:00 local
        // plus 2 h runs 1 h that day, then resumes Wednesday 2026-03-25 09:00.
        let due = calendar
            .add_business_time(at("2026-03-19T08:30:00Z"), 2 * 3_600_000)
            .unwrap();
        assert_eq!(due, at("2026-03-25T06:30:00Z"));
    }

    #[test]
    fn business_time_across_a_daylight_saving_weekend() {
        let calendar = berlin();
        // Friday 16:00 CET + 2 h: 1 h on Friday, 1 h from Monday 09:00 CEST.
        let due = calendar
            .add_business_time(at("2026-03-27T15:00:00Z"), 2 * 3_600_000)
            .unwrap();
        assert_eq!(due, at("2026-03-30T08:00:00Z"));
        // Inside hours with time to spare: plain addition.
        let due = calendar
            .add_business_time(at("2026-03-30T07:00:00Z"), 15 * 60_000)
            .unwrap();
        assert_eq!(due, at("2026-03-30T07:15:00Z"));
        // No hours at all: no business time.
        let empty = Calendar::new(jiff::tz::TimeZone::UTC, Default::default(), BTreeSet::new());
        assert_eq!(empty.add_business_time(0, 1), None);
    }

    #[test]
    fn intervals_and_dates_are_checked() {
        assert_eq!(parse_interval("09:00-17:30"), Ok((540, 1050)));
        assert_eq!(parse_interval("00:00-24:00"), Ok((0, 1440)));
        assert!(
            parse_interval("22:00-02:00")
                .unwrap_err()
                .contains("past midnight")
        );
        assert!(parse_interval("9am-5pm").unwrap_err().contains("HH:MM"));
        assert!(parse_interval("09:60-10:00").is_err());
        assert!(parse_interval("24:00-24:00").is_err());
        assert_eq!(parse_holiday("2026-01-01").unwrap().len(), 1);
        assert_eq!(parse_holiday("2026-12-30..2027-01-02").unwrap().len(), 4);
        assert!(
            parse_holiday("2026-02-30")
                .unwrap_err()
                .contains("invalid date")
        );
        assert!(parse_holiday("2026-03-02..2026-03-01").is_err());
        assert!(
            parse_holiday("2026-01-01..2028-01-01")
                .unwrap_err()
                .contains("longer")
        );
    }
}
