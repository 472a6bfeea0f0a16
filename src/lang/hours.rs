//! Working and quiet hours: when messages may go out. `allow = "Mon-Fri 09:00-20:00, Sat
//! 10:00-14:00"` lists the open windows of each weekday, `quiet = "Mon-Sun 21:00-08:00"` the
//! closed ones (a window may run past midnight), `holidays` whole days off (`2026-12-24`, or
//! `12-25` every year). Times are local to a zone chosen when a message is sent.

use chrono::{Datelike, Duration as Days, LocalResult, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

use super::expr::Tmpl;

const DAY: u16 = 24 * 60;

/// A day off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holiday {
    On(NaiveDate),
    /// Every year on (month, day).
    Yearly(u32, u32),
}

/// When messages may go out: per weekday (Monday first) the open minutes of the day as
/// half-open ranges, sorted and disjoint.
#[derive(Debug, Clone)]
pub struct Schedule {
    open: [Vec<(u16, u16)>; 7],
    holidays: Vec<Holiday>,
}

/// A `hours` setting: the schedule and the zone it is read in (a template; empty means the
/// recipient's or the gateway's zone).
pub struct Hours {
    pub schedule: Schedule,
    /// A zone written as a name.
    pub zone: Option<Tz>,
    /// A zone that depends on the event (`{{ event.tz }}`).
    pub tz: Option<Tmpl>,
    /// As written, for the journal.
    pub src: String,
}

fn weekday(name: &str) -> Option<usize> {
    let n = name.to_ascii_lowercase();
    const NAMES: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    // `Mon`, `Tues`, `Monday`: three letters at least.
    NAMES
        .iter()
        .position(|full| n.len() >= 3 && full.starts_with(&n))
}

/// `09:00` → minutes; `24:00` is the end of the day.
fn minutes(s: &str) -> Result<u16, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not a time like 09:00"))?;
    let bad = || format!("'{s}' is not a time like 09:00");
    if m.len() != 2 || h.is_empty() || h.len() > 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = match (h.parse::<u16>(), m.parse::<u16>()) {
        (Ok(h), Ok(m)) if m < 60 && (h < 24 || (h == 24 && m == 0)) => (h, m),
        _ => return Err(bad()),
    };
    Ok(h * 60 + m)
}

/// Days a part names: `Mon`, `Mon-Fri`, `Fri-Mon`, `Sat/Sun`.
fn days(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split('/') {
        let day = |d: &str| {
            weekday(d).ok_or_else(|| {
                format!("'{d}' is not a weekday (Mon, Tue, … or a range like Mon-Fri)")
            })
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    out.push(d);
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None if part.eq_ignore_ascii_case("daily") => out.extend(0..7),
            None => out.push(day(part)?),
        }
    }
    Ok(out)
}

/// Windows per weekday from `Mon-Fri 09:00-13:00 14:00-18:00, Sat 10:00-14:00`; a window
/// past midnight goes on into the next day.
fn windows(text: &str) -> Result<[Vec<(u16, u16)>; 7], String> {
    let mut out: [Vec<(u16, u16)>; 7] = Default::default();
    for group in text.split([',', ';']) {
        let mut words = group.split_whitespace();
        let Some(first) = words.next() else {
            continue;
        };
        let (which, ranges): (Vec<usize>, Vec<&str>) = if first.contains(':') {
            (
                (0..7).collect(),
                std::iter::once(first).chain(words).collect(),
            )
        } else {
            (days(first)?, words.collect())
        };
        if ranges.is_empty() {
            return Err(format!(
                "'{}' names no times (like 09:00-18:00)",
                group.trim()
            ));
        }
        for r in ranges {
            let (a, b) = r
                .split_once('-')
                .ok_or_else(|| format!("'{r}' is not a range of times like 09:00-18:00"))?;
            let (a, b) = (minutes(a)?, minutes(b)?);
            if a == b {
                return Err(format!("'{r}' is empty"));
            }
            for &d in &which {
                if a < b {
                    out[d].push((a, b));
                } else {
                    out[d].push((a, DAY));
                    if b > 0 {
                        out[(d + 1) % 7].push((0, b));
                    }
                }
            }
        }
    }
    for day in &mut out {
        *day = merged(std::mem::take(day));
    }
    Ok(out)
}

fn merged(mut v: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    v.sort();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The minutes of `open` outside `closed` (both sorted and disjoint).
fn minus(open: &[(u16, u16)], closed: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for &(mut a, b) in open {
        for &(c, d) in closed {
            if d <= a || c >= b {
                continue;
            }
            if c > a {
                out.push((a, c));
            }
            a = a.max(d);
        }
        if a < b {
            out.push((a, b));
        }
    }
    out
}

fn holiday(s: &str) -> Result<Holiday, String> {
    let s = s.trim();
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(Holiday::On(d));
    }
    // Checked against a leap year, so that 02-29 is allowed.
    match NaiveDate::parse_from_str(&format!("2000-{s}"), "%Y-%m-%d") {
        Ok(d) if s.len() == 5 => Ok(Holiday::Yearly(d.month(), d.day())),
        _ => Err(format!(
            "'{s}' is not a date like 2026-12-24 (or 12-25 for every year)"
        )),
    }
}

impl Schedule {
    /// The schedule of `allow` minus `quiet` (either may be left out, not both), without
    /// the `holidays`.
    pub fn parse(
        allow: Option<&str>,
        quiet: Option<&str>,
        holidays: &[&str],
    ) -> Result<Schedule, String> {
        let mut open = match allow {
            Some(a) => windows(a).map_err(|e| format!("allow: {e}"))?,
            None if quiet.is_some() => std::array::from_fn(|_| vec![(0, DAY)]),
            None => return Err("hours need `allow` (open times) or `quiet` (closed times)".into()),
        };
        if let Some(q) = quiet {
            let closed = windows(q).map_err(|e| format!("quiet: {e}"))?;
            for (d, day) in open.iter_mut().enumerate() {
                *day = minus(day, &closed[d]);
            }
        }
        if open.iter().all(Vec::is_empty) {
            return Err("these hours are never open".into());
        }
        let holidays = holidays
            .iter()
            .map(|h| holiday(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("holidays: {e}"))?;
        Ok(Schedule { open, holidays })
    }

    fn is_holiday(&self, d: NaiveDate) -> bool {
        self.holidays.iter().any(|h| match *h {
            Holiday::On(x) => x == d,
            Holiday::Yearly(m, day) => d.month() == m && d.day() == day,
        })
    }

    /// `None` when open at `now` (Unix ms), else when it opens next (Unix ms) and the local
    /// time of that opening.
    pub fn next_open(&self, now: i64, tz: Tz) -> Option<(i64, NaiveDateTime)> {
        let utc = chrono::DateTime::from_timestamp_millis(now)?;
        let local = utc.with_timezone(&tz).naive_local();
        let today = local.date();
        let minute = (local
            .time()
            .signed_duration_since(chrono::NaiveTime::MIN)
            .num_minutes()) as u16;
        // Holidays are finite and every week has an open window: within a bit over a year
        // of days off in a row there is an opening.
        for ahead in 0..(366 + 8 + self.holidays.len() as i64) {
            let day = today + Days::days(ahead);
            if self.is_holiday(day) {
                continue;
            }
            for &(a, b) in &self.open[day.weekday().num_days_from_monday() as usize] {
                if ahead == 0 && minute >= b {
                    continue;
                }
                if ahead == 0 && minute >= a {
                    return None;
                }
                // A window that goes on from the day before is no new opening, unless
                // that day was closed.
                if a == 0 && ahead > 0 && self.open_until_midnight(day - Days::days(1)) {
                    continue;
                }
                let at = day.and_time(chrono::NaiveTime::MIN) + Days::minutes(a as i64);
                return Some((instant(tz, at), at));
            }
        }
        None
    }

    fn open_until_midnight(&self, day: NaiveDate) -> bool {
        !self.is_holiday(day)
            && self.open[day.weekday().num_days_from_monday() as usize]
                .last()
                .is_some_and(|w| w.1 == DAY)
    }
}

/// The instant a local time names: a time skipped by a clock change is the first instant
/// after the gap, a repeated one the earlier.
pub fn instant(tz: Tz, at: NaiveDateTime) -> i64 {
    let mut t = at;
    for _ in 0..(4 * 60) {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(d) => return d.timestamp_millis(),
            LocalResult::Ambiguous(a, _) => return a.timestamp_millis(),
            LocalResult::None => t += Days::minutes(1),
        }
    }
    tz.from_utc_datetime(&at).timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    fn opens(s: &Schedule, now: &str, tz: Tz) -> Option<String> {
        s.next_open(ms(now), tz).map(|(at, _)| {
            chrono::DateTime::from_timestamp_millis(at)
                .unwrap()
                .with_timezone(&tz)
                .to_rfc3339()
        })
    }

    const WARSAW: Tz = chrono_tz::Europe::Warsaw;

    #[test]
    fn friday_evening_waits_for_monday_morning() {
        let s = Schedule::parse(Some("Mon-Fri 09:00-20:00, Sat 10:00-14:00"), None, &[]).unwrap();
        // Friday 2026-03-27 21:30 in Warsaw: Saturday 10:00 is next.
        assert_eq!(
            opens(&s, "2026-03-27T21:30:00+01:00", WARSAW).as_deref(),
            Some("2026-03-28T10:00:00+01:00")
        );
        let weekdays = Schedule::parse(Some("Mon-Fri 09:00-20:00"), None, &[]).unwrap();
        // Across the change to summer time on Sunday.
        assert_eq!(
            opens(&weekdays, "2026-03-27T21:30:00+01:00", WARSAW).as_deref(),
            Some("2026-03-30T09:00:00+02:00")
        );
        assert_eq!(opens(&weekdays, "2026-03-27T19:59:00+01:00", WARSAW), None);
        assert_eq!(
            opens(&weekdays, "2026-03-27T08:59:00+01:00", WARSAW).as_deref(),
            Some("2026-03-27T09:00:00+01:00")
        );
    }

    #[test]
    fn holidays_are_skipped_once_or_every_year() {
        let s =
            Schedule::parse(Some("Mon-Fri 09:00-17:00"), None, &["2026-12-24", "12-25"]).unwrap();
        // Wednesday the 23rd after hours: Thursday and Friday are off, then the weekend.
        assert_eq!(
            opens(&s, "2026-12-23T18:00:00+01:00", WARSAW).as_deref(),
            Some("2026-12-28T09:00:00+01:00")
        );
        // The yearly one is off the next year too (a Monday in 2028), the dated one not.
        assert_eq!(
            opens(&s, "2028-12-24T12:00:00+01:00", WARSAW).as_deref(),
            Some("2028-12-26T09:00:00+01:00")
        );
    }

    #[test]
    fn quiet_hours_and_windows_past_midnight() {
        let s = Schedule::parse(None, Some("daily 21:00-08:00"), &[]).unwrap();
        assert_eq!(
            opens(&s, "2026-06-01T23:00:00Z", chrono_tz::UTC).as_deref(),
            Some("2026-06-02T08:00:00+00:00")
        );
        assert_eq!(opens(&s, "2026-06-01T12:00:00Z", chrono_tz::UTC), None);
        let night = Schedule::parse(Some("Fri 22:00-02:00"), None, &[]).unwrap();
        // Saturday 01:00 is still Friday night's window.
        assert_eq!(opens(&night, "2026-06-06T01:00:00Z", chrono_tz::UTC), None);
        assert_eq!(
            opens(&night, "2026-06-06T03:00:00Z", chrono_tz::UTC).as_deref(),
            Some("2026-06-12T22:00:00+00:00")
        );
        let both = Schedule::parse(
            Some("Mon-Fri 08:00-20:00"),
            Some("Mon-Fri 12:00-13:00"),
            &[],
        )
        .unwrap();
        assert_eq!(
            opens(&both, "2026-06-01T12:30:00Z", chrono_tz::UTC).as_deref(),
            Some("2026-06-01T13:00:00+00:00")
        );
    }

    #[test]
    fn an_opening_in_a_skipped_hour_is_the_first_instant_after() {
        let s = Schedule::parse(Some("Sun 02:30-04:00"), None, &[]).unwrap();
        // 02:30 does not exist in Warsaw on 2026-03-29: the window opens at 03:00 CEST.
        assert_eq!(
            opens(&s, "2026-03-28T12:00:00+01:00", WARSAW).as_deref(),
            Some("2026-03-29T03:00:00+02:00")
        );
    }

    #[test]
    fn mistakes_are_told() {
        let bad = |a: &str| Schedule::parse(Some(a), None, &[]).unwrap_err();
        assert!(
            bad("Mon-Fry 09:00-20:00").contains("'Fry' is not a weekday"),
            "{}",
            bad("Mon-Fry 09:00-20:00")
        );
        assert!(bad("Mon 9-17").contains("not a time"));
        assert!(bad("Mon 25:00-26:00").contains("not a time"));
        assert!(bad("Mon").contains("names no times"));
        assert!(Schedule::parse(Some("Mon 09:00-10:00"), None, &["24.12"])
            .unwrap_err()
            .contains("holidays"));
        assert!(
            Schedule::parse(Some("Mon 09:00-10:00"), Some("daily 00:00-24:00"), &[])
                .unwrap_err()
                .contains("never open")
        );
        assert!(Schedule::parse(None, None, &[]).is_err());
        // Days in full, in any case.
        assert!(Schedule::parse(Some("monday-FRIDAY 09:00-10:00"), None, &[]).is_ok());
    }
}
