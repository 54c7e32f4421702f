//! When a schedule's ticks fall: the cron expression in its time zone, as pure
//! functions of instants (milliseconds since the epoch), with no clock and no I/O.
//!
//! croner does the calendar work, chrono-tz the zone rules. Around DST transitions
//! the rules are croner's: a wall-clock time that does not exist (spring forward)
//! fires at the first real instant after the gap; a fixed time that occurs twice
//! (fall back) fires once, at the earlier instant; an interval pattern (`*/15` in the
//! minute or hour field) keeps its real-time interval through both passes of the
//! repeated hour. Ticks are whole seconds.

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use croner::Cron;

/// A parsed cron expression and its zone: everything needed to find ticks.
#[derive(Debug, Clone)]
pub struct Timetable {
    cron: Cron,
    zone: Tz,
}

/// Why an expression or a zone was refused; the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimetableError {
    /// The cron expression does not parse, or has the wrong number of fields.
    #[error("{0}")]
    Cron(String),
    /// Not an IANA time zone name.
    #[error("unknown time zone '{0}' (want an IANA name such as Europe/Berlin or UTC)")]
    Zone(String),
}

impl Timetable {
    /// Parses `cron` (five fields, or six with seconds first; `@hourly`-style
    /// aliases too) and the IANA zone `timezone`.
    pub fn new(cron: &str, timezone: &str) -> Result<Timetable, TimetableError> {
        let trimmed = cron.trim();
        let fields = trimmed.split_whitespace().count();
        // croner also takes a seventh (year) field; the API promises five or six.
        if !trimmed.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(TimetableError::Cron(format!(
                "cron expression has {fields} fields; want 5 (minute hour day month weekday) or 6 (seconds first)"
            )));
        }
        let cron = trimmed
            .parse::<Cron>()
            .map_err(|e| TimetableError::Cron(format!("invalid cron expression: {e}")))?;
        let zone = timezone
            .parse::<Tz>()
            .map_err(|_| TimetableError::Zone(timezone.chars().take(128).collect()))?;
        Ok(Timetable { cron, zone })
    }

    /// The first tick strictly after `after_ms`, or `None` when the pattern has no
    /// further occurrence (a date that never comes, such as February 30th).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let start = self.at(after_ms)?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        u64::try_from(next.timestamp_millis()).ok()
    }

    /// Ticks in `(after_ms, until_ms]`, oldest first, at most `max` of them: the
    /// ones past `max` are counted in the second value, not listed, so a schedule
    /// that fires every second and was down a year costs no memory.
    pub fn due(&self, after_ms: u64, until_ms: u64, max: usize) -> (Vec<u64>, u64) {
        let mut ticks = std::collections::VecDeque::new();
        let mut dropped = 0u64;
        let mut cursor = after_ms;
        // Counting ticks one by one over a long downtime of an every-second
        // schedule is bounded work: at most a day of seconds is walked; older ticks
        // than that are dropped without being counted one by one.
        const MAX_WALK: u64 = 86_400;
        let mut walked = 0u64;
        if until_ms.saturating_sub(after_ms) > MAX_WALK * 1000 * 2 {
            // Jump close to the end; what lies before is dropped uncounted.
            cursor = until_ms.saturating_sub(MAX_WALK * 1000);
        }
        while let Some(tick) = self.next_after(cursor) {
            if tick > until_ms {
                break;
            }
            ticks.push_back(tick);
            if ticks.len() > max {
                ticks.pop_front();
                dropped += 1;
            }
            cursor = tick;
            walked += 1;
            if walked > MAX_WALK {
                break;
            }
        }
        (ticks.into(), dropped)
    }

    /// The instant as a time in this zone.
    fn at(&self, ms: u64) -> Option<DateTime<Tz>> {
        let ms = i64::try_from(ms).ok()?;
        self.zone.timestamp_millis_opt(ms).single()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use chrono::NaiveDate;

    /// Milliseconds of a UTC date-time.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap()
            .and_utc()
            .timestamp_millis() as u64
    }

    /// The next `n` ticks after `from`, as local wall-clock strings with offsets.
    fn ticks(t: &Timetable, from: u64, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = from;
        for _ in 0..n {
            at = t.next_after(at).unwrap();
            out.push(t.at(at).unwrap().format("%Y-%m-%d %H:%M:%S %z").to_string());
        }
        out
    }

    #[test]
    fn five_and_six_fields_parse_others_are_refused() {
        assert!(Timetable::new("*/5 * * * *", "UTC").is_ok());
        assert!(Timetable::new("*/2 * * * * *", "UTC").is_ok());
        assert!(Timetable::new("@hourly", "UTC").is_ok());
        let four = Timetable::new("* * * *", "UTC").unwrap_err();
        assert!(four.to_string().contains("4 fields"), "{four}");
        assert!(Timetable::new("0 0 0 1 1 * 2030", "UTC").is_err());
        let bad = Timetable::new("61 * * * *", "UTC").unwrap_err();
        assert!(matches!(bad, TimetableError::Cron(_)), "{bad}");
        let zone = Timetable::new("* * * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(zone, TimetableError::Zone("Mars/Olympus".to_owned()));
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let t = Timetable::new("*/2 * * * * *", "UTC").unwrap();
        let from = utc(2026, 1, 1, 0, 0, 0) + 500;
        assert_eq!(t.next_after(from), Some(utc(2026, 1, 1, 0, 0, 2)));
        // Strictly after: a tick is never its own successor.
        assert_eq!(
            t.next_after(utc(2026, 1, 1, 0, 0, 2)),
            Some(utc(2026, 1, 1, 0, 0, 4))
        );
    }

    #[test]
    fn the_zone_decides_the_wall_clock() {
        // 09:00 every day in Berlin is 08:00 UTC in winter, 07:00 in summer.
        let t = Timetable::new("0 9 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            t.next_after(utc(2026, 1, 10, 12, 0, 0)),
            Some(utc(2026, 1, 11, 8, 0, 0))
        );
        assert_eq!(
            t.next_after(utc(2026, 7, 10, 12, 0, 0)),
            Some(utc(2026, 7, 11, 7, 0, 0))
        );
    }

    #[test]
    fn a_time_skipped_by_spring_forward_fires_after_the_gap() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
        let t = Timetable::new("30 2 * * *", "America/New_York").unwrap();
        let got = ticks(&t, utc(2026, 3, 6, 12, 0, 0), 3);
        assert_eq!(
            got,
            [
                "2026-03-07 02:30:00 -0500",
                // The first real instant after the gap, once.
                "2026-03-08 03:00:00 -0400",
                "2026-03-09 02:30:00 -0400",
            ]
        );
    }

    #[test]
    fn a_repeated_fixed_time_fires_once_at_fall_back() {
        // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 occurs twice.
        let t = Timetable::new("30 1 * * *", "America/New_York").unwrap();
        let got = ticks(&t, utc(2026, 10, 30, 12, 0, 0), 3);
        assert_eq!(
            got,
            [
                "2026-10-31 01:30:00 -0400",
                "2026-11-01 01:30:00 -0400",
                "2026-11-02 01:30:00 -0500",
            ]
        );
        // Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:15 occurs twice.
        let t = Timetable::new("15 2 * * *", "Europe/Berlin").unwrap();
        let got = ticks(&t, utc(2026, 10, 24, 12, 0, 0), 2);
        assert_eq!(
            got,
            ["2026-10-25 02:15:00 +0200", "2026-10-26 02:15:00 +0100"]
        );
    }

    #[test]
    fn berlin_spring_forward_skips_to_after_the_gap() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        let t = Timetable::new("15 2 * * *", "Europe/Berlin").unwrap();
        let got = ticks(&t, utc(2026, 3, 28, 12, 0, 0), 2);
        assert_eq!(
            got,
            ["2026-03-29 03:00:00 +0200", "2026-03-30 02:15:00 +0200"]
        );
    }

    #[test]
    fn an_interval_keeps_real_time_through_the_repeated_hour() {
        // Every 30 minutes across New York's fall back: the hour from 01:00 to
        // 02:00 happens twice, and so do its two ticks (real time is 30 min apart).
        let t = Timetable::new("*/30 * * * *", "America/New_York").unwrap();
        let got = ticks(&t, utc(2026, 11, 1, 4, 45, 0), 6);
        assert_eq!(
            got,
            [
                "2026-11-01 01:00:00 -0400",
                "2026-11-01 01:30:00 -0400",
                "2026-11-01 01:00:00 -0500",
                "2026-11-01 01:30:00 -0500",
                "2026-11-01 02:00:00 -0500",
                "2026-11-01 02:30:00 -0500",
            ]
        );
        // Each tick is strictly later than the one before: no instant twice.
        let mut at = utc(2026, 11, 1, 4, 45, 0);
        for _ in 0..6 {
            let next = t.next_after(at).unwrap();
            assert_eq!(
                next - at,
                if at == utc(2026, 11, 1, 4, 45, 0) {
                    15 * 60_000
                } else {
                    30 * 60_000
                }
            );
            at = next;
        }
    }

    #[test]
    fn due_lists_the_window_and_bounds_it() {
        let t = Timetable::new("* * * * * *", "UTC").unwrap();
        let from = utc(2026, 1, 1, 0, 0, 0);
        let (ticks, dropped) = t.due(from, from + 10_000, 100);
        assert_eq!(ticks.len(), 10);
        assert_eq!(dropped, 0);
        assert_eq!(ticks[0], from + 1000);
        assert_eq!(ticks[9], from + 10_000);
        let (ticks, dropped) = t.due(from, from + 10_000, 3);
        assert_eq!(ticks, [from + 8000, from + 9000, from + 10_000]);
        assert_eq!(dropped, 7);
        // A year of every-second ticks: bounded work, the newest kept.
        let year = 365 * 86_400_000;
        let (ticks, _) = t.due(from, from + year, 5);
        assert_eq!(ticks.last(), Some(&(from + year)));
        assert_eq!(ticks.len(), 5);
    }
}
