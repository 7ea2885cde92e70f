//! RFC 3339 timestamps for `ce_time`, written by hand because the whole need
//! is one UTC format and its parser; a calendar library would be the largest
//! dependency of this crate.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::CloudEventError;

const SECONDS_PER_DAY: i64 = 86_400;
const NANOS_PER_SECOND: u32 = 1_000_000_000;
/// 0000-01-01T00:00:00Z; RFC 3339 has four-digit years only.
const MIN_UNIX_SECONDS: i64 = -62_167_219_200;
/// 9999-12-31T23:59:59Z.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;
/// The longest form: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const MAX_LEN: usize = 30;
/// `YYYY-MM-DDTHH:MM:SS`.
const DATE_TIME_LEN: usize = 19;

thread_local! {
    /// The last second [`Rfc3339`] wrote on this thread and its
    /// `YYYY-MM-DDTHH:MM:SS`: records come many to a second, and copying
    /// these 19 bytes instead of redoing the calendar arithmetic saves about
    /// 30% of the instructions of a [`format_rfc3339`] call (callgrind: 480
    /// rather than 700, allocation included). `i64::MIN` is no second it
    /// writes.
    static LAST_SECOND: Cell<(i64, [u8; DATE_TIME_LEN])> =
        const { Cell::new((i64::MIN, [0; DATE_TIME_LEN])) };
}

/// Formats a time as RFC 3339 in UTC with a `Z`, e.g.
/// `2026-11-23T07:04:05.123456Z`: the text of [`Rfc3339`].
///
/// The fraction has 0, 3, 6 or 9 digits, the fewest that represent the time
/// exactly, so [`parse_rfc3339`] gives back the same instant. Times outside
/// years 0000–9999 (which RFC 3339 cannot express) saturate to the nearest
/// end of that range.
pub fn format_rfc3339(time: SystemTime) -> String {
    let (seconds, nanos) = match unix_parts(time) {
        (seconds, _) if seconds < MIN_UNIX_SECONDS => (MIN_UNIX_SECONDS, 0),
        (seconds, _) if seconds > MAX_UNIX_SECONDS => (MAX_UNIX_SECONDS, NANOS_PER_SECOND - 1),
        parts => parts,
    };
    Rfc3339::write(seconds, nanos).as_str().to_owned()
}

/// An instant as `ce_time` spells it: RFC 3339 in UTC with a `Z` and the
/// fewest of 0, 3, 6 or 9 fraction digits that represent it exactly.
///
/// The text is built in place, without the formatting machinery, and held
/// in a fixed buffer, because every record the daemon writes carries one
/// and the event log reads it back per record: a caller that only compares
/// the text, or copies it into a buffer of its own, allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rfc3339 {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl Rfc3339 {
    /// The instant `nanos` nanoseconds after second `seconds` since the Unix
    /// epoch (negative before 1970); `None` outside years 0000–9999, which
    /// RFC 3339 cannot express, or where `nanos` is a second or more.
    pub fn from_unix(seconds: i64, nanos: u32) -> Option<Rfc3339> {
        ((MIN_UNIX_SECONDS..=MAX_UNIX_SECONDS).contains(&seconds) && nanos < NANOS_PER_SECOND)
            .then(|| Rfc3339::write(seconds, nanos))
    }

    /// The seconds and nanoseconds [`Rfc3339::from_unix`] takes, if `text`
    /// is exactly what it writes for them; other spellings of an instant
    /// (an offset, lower-case `t` or `z`, more fraction digits than
    /// needed), other text and dates that do not exist are `None`. For a
    /// store that keeps the instant instead of the text and must give back
    /// the same bytes.
    pub fn parse_exact(text: &[u8]) -> Option<(i64, u32)> {
        if !matches!(text.len(), 20 | 24 | 27 | 30) {
            return None;
        }
        let (seconds, nanos) = parse_unix_bytes(text)?;
        (Rfc3339::from_unix(seconds, nanos)?.as_bytes() == text).then_some((seconds, nanos))
    }

    /// The text, e.g. `2026-11-23T07:04:05.123456Z`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Writes an instant within years 0000–9999 (`nanos` below a second).
    fn write(seconds: i64, nanos: u32) -> Rfc3339 {
        let mut bytes = *b"0000-00-00T00:00:00.000000000Z";
        let (last, date_time) = LAST_SECOND.get();
        if last == seconds {
            bytes[..DATE_TIME_LEN].copy_from_slice(&date_time);
        } else {
            let (year, month, day) = civil_from_days(seconds.div_euclid(SECONDS_PER_DAY));
            let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
            for (at, value) in [
                (0..4, year),
                (5..7, month),
                (8..10, day),
                (11..13, second_of_day / 3600),
                (14..16, second_of_day % 3600 / 60),
                (17..19, second_of_day % 60),
            ] {
                put_digits(&mut bytes[at], value.unsigned_abs());
            }
            let mut date_time = [0; DATE_TIME_LEN];
            date_time.copy_from_slice(&bytes[..DATE_TIME_LEN]);
            LAST_SECOND.set((seconds, date_time));
        }
        let (fraction, width) = if nanos == 0 {
            (0, 0)
        } else if nanos.is_multiple_of(1_000_000) {
            (nanos / 1_000_000, 3)
        } else if nanos.is_multiple_of(1_000) {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        // Without a fraction the `Z` takes the place of the `.`.
        let end = if width == 0 { 19 } else { 20 + width };
        if width > 0 {
            put_digits(&mut bytes[20..end], u64::from(fraction));
        }
        bytes[end] = b'Z';
        Rfc3339 {
            bytes,
            len: (end + 1) as u8,
        }
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Writes the last `out.len()` decimal digits of `value`, zero-padded.
fn put_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Parses an RFC 3339 date-time (`date-time` of §5.6): `T`/`Z` in either
/// case, any number of fraction digits (beyond nanoseconds truncated), and a
/// `Z` or numeric offset, since other producers on the topic may write
/// either. Leap seconds (`:60`) are rejected: `SystemTime` cannot hold them.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, CloudEventError> {
    parse_unix_parts(text)
        .and_then(|(seconds, nanos)| from_unix_parts(seconds, nanos))
        .ok_or_else(|| CloudEventError::InvalidTime(text.chars().take(64).collect()))
}

/// Seconds since the Unix epoch and nanoseconds (`0..1e9`) of an RFC 3339
/// date-time, in the grammar of [`parse_rfc3339`].
pub(crate) fn parse_unix_parts(text: &str) -> Option<(i64, u32)> {
    parse_unix_bytes(text.as_bytes())
}

/// [`parse_unix_parts`] of text that need not be UTF-8 (a header value).
fn parse_unix_bytes(b: &[u8]) -> Option<(i64, u32)> {
    let mut p = Parser { b, pos: 0 };
    let year = p.digits(4)?;
    p.expect(b'-')?;
    let month = p.digits(2)?;
    p.expect(b'-')?;
    let day = p.digits(2)?;
    p.expect_ignore_case(b'T')?;
    let hour = p.digits(2)?;
    p.expect(b':')?;
    let minute = p.digits(2)?;
    p.expect(b':')?;
    let second = p.digits(2)?;
    let mut nanos: u32 = 0;
    if p.peek() == Some(b'.') {
        p.pos += 1;
        let start = p.pos;
        while let Some(d @ b'0'..=b'9') = p.peek() {
            if p.pos - start < 9 {
                nanos = nanos * 10 + u32::from(d - b'0');
            }
            p.pos += 1;
        }
        let count = p.pos - start;
        if count == 0 {
            return None;
        }
        for _ in count..9 {
            nanos *= 10;
        }
    }
    let offset_seconds = match p.next()? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let hours = p.digits(2)?;
            p.expect(b':')?;
            let minutes = p.digits(2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    if p.pos != b.len() {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds =
        days_from_civil(year, month, day) * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second
            - offset_seconds;
    Some((seconds, nanos))
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn expect_ignore_case(&mut self, want: u8) -> Option<()> {
        self.next()?.eq_ignore_ascii_case(&want).then_some(())
    }

    fn digits(&mut self, count: usize) -> Option<i64> {
        let mut value = 0;
        for _ in 0..count {
            match self.next()? {
                d @ b'0'..=b'9' => value = value * 10 + i64::from(d - b'0'),
                _ => return None,
            }
        }
        Some(value)
    }
}

/// Seconds and nanoseconds since the Unix epoch, floor-divided so that the
/// nanoseconds are always non-negative, as in protobuf's `Timestamp`.
fn unix_parts(time: SystemTime) -> (i64, u32) {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (
            i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            after.subsec_nanos(),
        ),
        Err(before) => {
            let before = before.duration();
            let seconds = i64::try_from(before.as_secs()).map_or(i64::MIN, |s| -s);
            match before.subsec_nanos() {
                0 => (seconds, 0),
                n => (seconds.saturating_sub(1), NANOS_PER_SECOND - n),
            }
        }
    }
}

fn from_unix_parts(seconds: i64, nanos: u32) -> Option<SystemTime> {
    let whole = Duration::from_secs(seconds.unsigned_abs());
    let base = if seconds >= 0 {
        UNIX_EPOCH.checked_add(whole)?
    } else {
        UNIX_EPOCH.checked_sub(whole)?
    };
    base.checked_add(Duration::from_nanos(u64::from(nanos)))
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date; Howard Hinnant's
/// `days_from_civil`, exact for every year this module handles.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01; Howard
/// Hinnant's `civil_from_days`, the inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, nanos: u32) -> SystemTime {
        from_unix_parts(seconds, nanos).unwrap()
    }

    #[test]
    fn formats_known_instants() {
        // Values cross-checked with `date -u -d @<seconds>`.
        let cases = [
            (0, 0, "1970-01-01T00:00:00Z"),
            (951_782_400, 0, "2000-02-29T00:00:00Z"),
            (951_868_799, 0, "2000-02-29T23:59:59Z"),
            (1_709_164_800, 0, "2024-02-29T00:00:00Z"),
            (1_709_251_200, 0, "2024-03-01T00:00:00Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00Z"),
            (1_798_009_445, 123_456_000, "2026-12-23T07:04:05.123456Z"),
            (1_795_417_445, 123_456_000, "2026-11-23T07:04:05.123456Z"),
            (1_795_417_445, 500_000_000, "2026-11-23T07:04:05.500Z"),
            (1_795_417_445, 1, "2026-11-23T07:04:05.000000001Z"),
            (-1, 0, "1969-12-31T23:59:59Z"),
            (-1, 999_000_000, "1969-12-31T23:59:59.999Z"),
            (-2_208_988_800, 0, "1900-01-01T00:00:00Z"),
            (MIN_UNIX_SECONDS, 0, "0000-01-01T00:00:00Z"),
            (MAX_UNIX_SECONDS, 0, "9999-12-31T23:59:59Z"),
            (MAX_UNIX_SECONDS, 7, "9999-12-31T23:59:59.000000007Z"),
            (-2, 500_000_000, "1969-12-31T23:59:58.500Z"),
            (1_763_884_799, 999_999_999, "2025-11-23T07:59:59.999999999Z"),
            (1_763_884_800, 120_000, "2025-11-23T08:00:00.000120Z"),
        ];
        for (seconds, nanos, text) in cases {
            let time = at(seconds, nanos);
            assert_eq!(format_rfc3339(time), text, "{seconds}.{nanos}");
            assert_eq!(parse_rfc3339(text), Ok(time), "{text}");
            let written = Rfc3339::from_unix(seconds, nanos).unwrap();
            assert_eq!(written.as_str(), text);
            assert_eq!(written.to_string(), text);
            assert_eq!(
                Rfc3339::parse_exact(text.as_bytes()),
                Some((seconds, nanos))
            );
        }
    }

    #[test]
    fn written_text_reads_back_at_every_precision() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let span = (MAX_UNIX_SECONDS - MIN_UNIX_SECONDS + 1) as u64;
        for _ in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let seconds = MIN_UNIX_SECONDS + (state % span) as i64;
            let (nanos, digits) = match state >> 60 & 3 {
                0 => (0, 0),
                1 => ((state >> 20) as u32 % 1000 * 1_000_000, 3),
                2 => ((state >> 20) as u32 % 1_000_000 * 1000, 6),
                _ => ((state >> 20) as u32 % NANOS_PER_SECOND, 9),
            };
            let written = Rfc3339::from_unix(seconds, nanos).unwrap();
            let text = written.as_str();
            // Never more fraction digits than the value needs.
            let len = if digits == 0 { 20 } else { 21 + digits };
            assert!(text.len() <= len, "{text}");
            assert_eq!(
                Rfc3339::parse_exact(text.as_bytes()),
                Some((seconds, nanos))
            );
            assert_eq!(parse_rfc3339(text), Ok(at(seconds, nanos)), "{text}");
        }
    }

    #[test]
    fn seconds_written_in_turn_keep_their_own_date() {
        // Many times within one second (its date and time of day written
        // once), the next seconds and back again, the last second RFC 3339
        // can write and seconds before 1970.
        for seconds in [
            1_763_884_799,
            1_763_884_800,
            1_763_884_801,
            1_763_884_799,
            0,
            -1,
            951_782_400,
            MAX_UNIX_SECONDS,
            -2,
        ] {
            let whole = Rfc3339::from_unix(seconds, 0).unwrap();
            assert_eq!(parse_rfc3339(whole.as_str()), Ok(at(seconds, 0)));
            for nanos in [
                0,
                1,
                100,
                120_000,
                5_000_000,
                123_456_789,
                999_000_000,
                999_999_999,
            ] {
                let text = Rfc3339::from_unix(seconds, nanos).unwrap();
                assert_eq!(
                    parse_rfc3339(text.as_str()),
                    Ok(at(seconds, nanos)),
                    "{text}"
                );
                assert_eq!(text.as_bytes()[..19], whole.as_bytes()[..19], "{text}");
            }
        }
    }

    #[test]
    fn exact_parsing_takes_only_the_written_form() {
        let written = [
            "2023-11-14T22:13:20Z",
            "2023-11-14T22:13:20.120Z",
            "2023-11-14T22:13:20.123456Z",
            "2023-11-14T22:13:20.123456789Z",
            "2024-02-29T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
        ];
        for text in written {
            assert!(Rfc3339::parse_exact(text.as_bytes()).is_some(), "{text}");
        }
        for text in [
            "",
            "2023-11-14T22:13:20.100000Z",
            "2023-11-14T22:13:20.000Z",
            "2023-11-14T22:13:20.1Z",
            "2023-11-14T22:13:20.1234567890Z",
            "2023-11-14T22:13:20+00:00",
            "2023-11-14t22:13:20Z",
            "2023-11-14T22:13:20z",
            "2023-02-29T00:00:00Z",
            "2023-02-30T22:13:20Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20.12Z",
        ] {
            assert_eq!(Rfc3339::parse_exact(text.as_bytes()), None, "{text}");
        }
        assert_eq!(Rfc3339::parse_exact(b"2023-11-14T22:13:2\xff.123Z"), None);
    }

    #[test]
    fn days_round_trip_over_four_centuries() {
        for days in -800_000..=800_000 {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn out_of_range_saturates() {
        assert_eq!(
            format_rfc3339(at(MAX_UNIX_SECONDS + 10, 0)),
            "9999-12-31T23:59:59.999999999Z"
        );
        assert_eq!(
            format_rfc3339(at(MIN_UNIX_SECONDS - 10, 5)),
            "0000-01-01T00:00:00Z"
        );
        assert_eq!(
            format_rfc3339(at(MAX_UNIX_SECONDS + 1, 0)),
            "9999-12-31T23:59:59.999999999Z"
        );
        // What cannot be written exactly is not written at all.
        assert_eq!(Rfc3339::from_unix(MAX_UNIX_SECONDS + 1, 0), None);
        assert_eq!(Rfc3339::from_unix(MIN_UNIX_SECONDS - 1, 999), None);
        assert_eq!(Rfc3339::from_unix(0, NANOS_PER_SECOND), None);
    }

    #[test]
    fn parses_offsets_and_fractions() {
        let utc = parse_rfc3339("2026-11-23T07:04:05Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-23t07:04:05z"), Ok(utc));
        assert_eq!(parse_rfc3339("2026-11-23T10:34:05+03:30"), Ok(utc));
        assert_eq!(parse_rfc3339("2026-11-22T23:04:05-08:00"), Ok(utc));
        assert_eq!(
            parse_rfc3339("2026-11-23T07:04:05.1234567891234Z"),
            Ok(utc + Duration::from_nanos(123_456_789))
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T07:04:05.1Z"),
            Ok(utc + Duration::from_millis(100))
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "2026-11-23",
            "2026-11-23T07:04:05",
            "2026-11-23 07:04:05Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T07:60:00Z",
            "2026-11-23T07:04:60Z",
            "2026-11-23T07:04:05.Z",
            "2026-11-23T07:04:05+0330",
            "2026-11-23T07:04:05+24:00",
            "2026-11-23T07:04:05Zjunk",
            "+2026-11-23T07:04:05Z",
            "２０２６-11-23T07:04:05Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?}");
        }
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_ok());
        assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_ok());
    }
}
