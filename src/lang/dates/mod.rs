//! Dates and local times: the formats events carry, calendar arithmetic in a zone, local
//! times of day for `sleep` and yearly triggers, and the languages dates are written in.
//! `filters` makes them template functions and filters.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, FixedOffset, LocalResult, Months, NaiveDate, NaiveDateTime,
    NaiveTime, Offset, SecondsFormat, TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use minijinja::value::Value;

mod filters;

pub use filters::{register, DateValue};

/// The zone a time is read in: a named zone follows its daylight-saving rules, an offset
/// written in the text (`+02:00`) stays fixed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    Named(Tz),
    Fixed(FixedOffset),
}

impl Zone {
    fn offset_at(&self, utc: &DateTime<Utc>) -> FixedOffset {
        match self {
            Zone::Named(tz) => tz.offset_from_utc_datetime(&utc.naive_utc()).fix(),
            Zone::Fixed(o) => *o,
        }
    }

    fn local(&self, utc: &DateTime<Utc>) -> DateTime<FixedOffset> {
        utc.with_timezone(&self.offset_at(utc))
    }

    /// The instant of a local time: in a gap (clocks moved forward) the first valid minute
    /// after it, of two (clocks moved back) the earlier one.
    pub fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let tz = match self {
            Zone::Fixed(o) => return o.from_local_datetime(&local).single().map(|d| d.to_utc()),
            Zone::Named(tz) => tz,
        };
        match tz.from_local_datetime(&local) {
            LocalResult::Single(d) => Some(d.to_utc()),
            LocalResult::Ambiguous(a, b) => Some(a.min(b).to_utc()),
            LocalResult::None => {
                // Gaps last an hour or two; a few zones once skipped a whole day.
                let start = local.with_second(0)?.with_nanosecond(0)?;
                (1..=48 * 60).find_map(|m| {
                    tz.from_local_datetime(&(start + TimeDelta::minutes(m)))
                        .earliest()
                        .map(|d| d.to_utc())
                })
            }
        }
    }
}

/// A zone by its IANA name, e.g. `Europe/Warsaw`.
pub fn zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name.trim()).map_err(|_| format!("unknown time zone '{name}'"))
}

/// A point in time as templates see it.
#[derive(Debug, Clone, PartialEq)]
pub enum When {
    /// A date or local time written without a zone (`2026-03-30`, `2026-03-30 10:00`).
    Floating {
        local: NaiveDateTime,
        date_only: bool,
    },
    /// An instant, read in a zone.
    Zoned { utc: DateTime<Utc>, zone: Zone },
}

const FLOATING_DATETIMES: [&str; 4] = [
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
];
const FLOATING_DATES: [&str; 3] = ["%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y"];

impl When {
    pub fn at_ms(ms: i64, zone: Zone) -> Option<When> {
        Some(When::Zoned {
            utc: DateTime::from_timestamp_millis(ms)?,
            zone,
        })
    }

    fn from_number(x: f64) -> Option<When> {
        if !x.is_finite() {
            return None;
        }
        // Large numbers are milliseconds (Unix seconds reach 1e12 only in the year 33658).
        let ms = if x.abs() > 1e12 { x } else { x * 1000.0 };
        When::at_ms(ms as i64, Zone::Fixed(Utc.fix()))
    }

    /// Reads a date from text in one of the usual formats, or with a strftime `format`.
    pub fn parse_str(s: &str, format: Option<&str>) -> Result<When, String> {
        let t = s.trim();
        if let Some(f) = format {
            if let Ok(d) = DateTime::parse_from_str(t, f) {
                return Ok(When::Zoned {
                    utc: d.to_utc(),
                    zone: Zone::Fixed(*d.offset()),
                });
            }
            if let Ok(local) = NaiveDateTime::parse_from_str(t, f) {
                return Ok(When::Floating {
                    local,
                    date_only: false,
                });
            }
            return NaiveDate::parse_from_str(t, f)
                .map(|d| When::Floating {
                    local: d.and_time(NaiveTime::MIN),
                    date_only: true,
                })
                .map_err(|e| format!("'{s}' does not match the format '{f}': {e}"));
        }
        if let Ok(d) = DateTime::parse_from_rfc3339(t) {
            return Ok(When::Zoned {
                utc: d.to_utc(),
                zone: Zone::Fixed(*d.offset()),
            });
        }
        for f in FLOATING_DATETIMES {
            if let Ok(local) = NaiveDateTime::parse_from_str(t, f) {
                return Ok(When::Floating {
                    local,
                    date_only: false,
                });
            }
        }
        for f in FLOATING_DATES {
            if let Ok(d) = NaiveDate::parse_from_str(t, f) {
                return Ok(When::Floating {
                    local: d.and_time(NaiveTime::MIN),
                    date_only: true,
                });
            }
        }
        if let Some(w) = t.parse::<f64>().ok().and_then(When::from_number) {
            return Ok(w);
        }
        Err(format!(
            "'{s}' is not a date (RFC 3339, YYYY-MM-DD, YYYY-MM-DD HH:MM, DD.MM.YYYY, DD/MM/YYYY or Unix seconds; give a format= for others)"
        ))
    }

    /// A template value as a date: a date from another filter, text or a number.
    pub fn from_value(v: &Value, format: Option<&str>) -> Result<When, String> {
        if let Some(w) = v.downcast_object_ref::<DateValue>() {
            return Ok(w.0.clone());
        }
        if let Some(s) = v.as_str() {
            return When::parse_str(s, format);
        }
        if let Ok(x) = f64::try_from(v.clone()) {
            if !v.is_undefined() && !v.is_none() {
                return When::from_number(x).ok_or_else(|| format!("{v} is not a time"));
            }
        }
        if v.is_undefined() || v.is_none() {
            return Err("no date given (the value is empty)".into());
        }
        Err(format!("{v} is not a date"))
    }

    /// The same moment read in `tz`; a floating time is taken as a local time there.
    pub fn in_zone(&self, tz: Tz) -> Result<When, String> {
        let utc = match self {
            When::Zoned { utc, .. } => *utc,
            When::Floating { local, .. } => Zone::Named(tz)
                .resolve(*local)
                .ok_or_else(|| format!("{local} does not exist in {tz}"))?,
        };
        Ok(When::Zoned {
            utc,
            zone: Zone::Named(tz),
        })
    }

    /// The wall-clock date and time (with the offset, when known).
    pub fn local(&self) -> NaiveDateTime {
        match self {
            When::Floating { local, .. } => *local,
            When::Zoned { utc, zone } => zone.local(utc).naive_local(),
        }
    }

    /// Unix milliseconds; a floating time is read in `tz`.
    pub fn timestamp_ms(&self, tz: Tz) -> Result<i64, String> {
        match self {
            When::Zoned { utc, .. } => Ok(utc.timestamp_millis()),
            When::Floating { local, .. } => Zone::Named(tz)
                .resolve(*local)
                .map(|u| u.timestamp_millis())
                .ok_or_else(|| format!("{local} does not exist in {tz}")),
        }
    }

    /// Calendar arithmetic: years, months, weeks and days move the wall-clock date (a day
    /// across a daylight-saving change keeps the local time; the 31st plus a month is the
    /// month's last day), hours and minutes move the instant.
    pub fn add(&self, months: i64, days: i64, minutes: i64) -> Result<When, String> {
        let overflow = || "the date is out of range".to_string();
        let shift_date = |local: NaiveDateTime| -> Option<NaiveDateTime> {
            let m = Months::new(u32::try_from(months.unsigned_abs()).ok()?);
            let d = Days::new(days.unsigned_abs());
            let l = if months >= 0 {
                local.checked_add_months(m)?
            } else {
                local.checked_sub_months(m)?
            };
            if days >= 0 {
                l.checked_add_days(d)
            } else {
                l.checked_sub_days(d)
            }
        };
        let by = TimeDelta::try_minutes(minutes).ok_or_else(overflow)?;
        match self {
            When::Floating { local, date_only } => Ok(When::Floating {
                local: shift_date(*local)
                    .and_then(|l| l.checked_add_signed(by))
                    .ok_or_else(overflow)?,
                date_only: *date_only && minutes == 0,
            }),
            When::Zoned { utc, zone } => {
                let mut utc = *utc;
                if months != 0 || days != 0 {
                    let local = shift_date(zone.local(&utc).naive_local()).ok_or_else(overflow)?;
                    utc = zone.resolve(local).ok_or_else(overflow)?;
                }
                Ok(When::Zoned {
                    utc: utc.checked_add_signed(by).ok_or_else(overflow)?,
                    zone: *zone,
                })
            }
        }
    }

    pub fn start_of_day(&self) -> Result<When, String> {
        match self {
            When::Floating { local, .. } => Ok(When::Floating {
                local: local.date().and_time(NaiveTime::MIN),
                date_only: true,
            }),
            When::Zoned { utc, zone } => {
                let day = zone.local(utc).date_naive().and_time(NaiveTime::MIN);
                Ok(When::Zoned {
                    utc: zone
                        .resolve(day)
                        .ok_or_else(|| "the day has no start".to_string())?,
                    zone: *zone,
                })
            }
        }
    }

    /// Formats with a strftime pattern in a locale; `%z` needs a zone.
    pub fn format(&self, pattern: &str, locale: chrono::Locale) -> Result<String, String> {
        let mut out = String::new();
        let done = match self {
            When::Floating { local, .. } => {
                if pattern.contains("%z") || pattern.contains("%Z") || pattern.contains("%:z") {
                    return Err(format!(
                        "{self} has no time zone to show: give tz= or a time with an offset"
                    ));
                }
                // A local time formatted as if it were UTC shows the same fields.
                write!(
                    out,
                    "{}",
                    Utc.from_utc_datetime(local)
                        .format_localized(pattern, locale)
                )
            }
            When::Zoned { utc, zone } => {
                write!(out, "{}", zone.local(utc).format_localized(pattern, locale))
            }
        };
        done.map_err(|_| format!("'{pattern}' is not a valid date format"))?;
        Ok(out)
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            When::Floating {
                local,
                date_only: true,
            } => write!(f, "{}", local.format("%Y-%m-%d")),
            When::Floating { local, .. } => write!(f, "{}", local.format("%Y-%m-%dT%H:%M:%S")),
            When::Zoned { utc, zone } => {
                let l = zone.local(utc);
                let secs = if l.nanosecond() == 0 {
                    SecondsFormat::Secs
                } else {
                    SecondsFormat::Millis
                };
                f.write_str(&l.to_rfc3339_opts(secs, true))
            }
        }
    }
}

/// The locale of a language code (`pl`, `en`, `pt-BR`, `de_AT`).
pub fn locale(lang: &str) -> Result<chrono::Locale, String> {
    let l = lang.trim().replace('-', "_");
    let unknown = || format!("no date formats for the language '{lang}'");
    let (base, region) = match l.split_once('_') {
        Some((b, r)) => (b.to_ascii_lowercase(), Some(r.to_ascii_uppercase())),
        None => (l.to_ascii_lowercase(), None),
    };
    if base.is_empty() || !base.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(unknown());
    }
    if let Some(r) = region {
        return chrono::Locale::try_from(format!("{base}_{r}").as_str()).map_err(|_| unknown());
    }
    // The language's main country where its code is not the country's.
    let main = match base.as_str() {
        "en" => "en_US",
        "ar" => "ar_SA",
        "be" => "be_BY",
        "ca" => "ca_ES",
        "cs" => "cs_CZ",
        "da" => "da_DK",
        "el" => "el_GR",
        "et" => "et_EE",
        "fa" => "fa_IR",
        "ga" => "ga_IE",
        "he" => "he_IL",
        "hi" => "hi_IN",
        "hy" => "hy_AM",
        "ja" => "ja_JP",
        "ka" => "ka_GE",
        "kk" => "kk_KZ",
        "ko" => "ko_KR",
        "ms" => "ms_MY",
        "nb" | "no" => "nb_NO",
        "sl" => "sl_SI",
        "sq" => "sq_AL",
        "sr" => "sr_RS",
        "sv" => "sv_SE",
        "uk" => "uk_UA",
        "vi" => "vi_VN",
        "zh" => "zh_CN",
        _ => "",
    };
    if !main.is_empty() {
        return chrono::Locale::try_from(main).map_err(|_| unknown());
    }
    chrono::Locale::try_from(format!("{base}_{}", base.to_ascii_uppercase()).as_str())
        .map_err(|_| unknown())
}

/// A local time of day written `HH:MM`.
pub fn parse_hhmm(s: &str) -> Result<NaiveTime, String> {
    let t = s.trim();
    let ok = t.len() == 5 && t.as_bytes()[2] == b':';
    ok.then(|| NaiveTime::parse_from_str(t, "%H:%M").ok())
        .flatten()
        .ok_or_else(|| format!("'{s}' is not a time of day written HH:MM, e.g. 09:30"))
}

/// The instant of `time` on `day` in `tz` (a gap moves it forward, an overlap takes the
/// earlier one).
pub fn at_local(day: NaiveDate, time: NaiveTime, tz: Tz) -> Option<DateTime<Tz>> {
    Zone::Named(tz)
        .resolve(day.and_time(time))
        .map(|u| u.with_timezone(&tz))
}

/// The next `time` in `tz` after `after_ms`.
pub fn next_time_of_day(after_ms: i64, time: NaiveTime, tz: Tz) -> Option<DateTime<Tz>> {
    let after = DateTime::from_timestamp_millis(after_ms)?;
    let today = after.with_timezone(&tz).date_naive();
    [
        today,
        today.succ_opt()?,
        today.checked_add_days(Days::new(2))?,
    ]
    .into_iter()
    .filter_map(|d| at_local(d, time, tz))
    .find(|d| d.timestamp_millis() > after_ms)
}

/// The next anniversary of `date` (its month and day; 29 February is the 28th in other
/// years) at `time` in `tz`, after `after_ms`.
pub fn next_anniversary(
    date: NaiveDate,
    time: NaiveTime,
    tz: Tz,
    after_ms: i64,
) -> Option<DateTime<Tz>> {
    let after = DateTime::from_timestamp_millis(after_ms)?;
    let year = after.with_timezone(&tz).year();
    (year - 1..=year + 1).find_map(|y| {
        let day = NaiveDate::from_ymd_opt(y, date.month(), date.day())
            .or_else(|| NaiveDate::from_ymd_opt(y, date.month(), date.day() - 1))?;
        at_local(day, time, tz).filter(|d| d.timestamp_millis() > after_ms)
    })
}

/// RFC 3339 in a zone, e.g. `2026-03-29T10:00:00+02:00`.
pub fn rfc3339_in(ms: i64, tz: Tz) -> String {
    When::at_ms(ms, Zone::Named(tz))
        .map(|w| w.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_resolve_gaps_forward_and_overlaps_to_the_earlier() {
        let tz = zone("Europe/Warsaw").unwrap();
        let t = |s| parse_hhmm(s).unwrap();
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(
            at_local(d("2026-03-29"), t("02:30"), tz)
                .unwrap()
                .to_rfc3339(),
            "2026-03-29T03:00:00+02:00"
        );
        assert_eq!(
            at_local(d("2026-10-25"), t("02:30"), tz)
                .unwrap()
                .to_rfc3339(),
            "2026-10-25T02:30:00+02:00"
        );
        assert!(parse_hhmm("9:00").is_err());
        assert!(parse_hhmm("24:00").is_err());
    }

    #[test]
    fn anniversaries_come_once_a_year_and_leap_days_fall_on_the_28th() {
        let tz = zone("Europe/Warsaw").unwrap();
        let nine = parse_hhmm("09:00").unwrap();
        let ms = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
        let bday = NaiveDate::from_ymd_opt(1990, 5, 17).unwrap();
        let n = next_anniversary(bday, nine, tz, ms("2026-03-27T12:00:00Z")).unwrap();
        assert_eq!(n.to_rfc3339(), "2026-05-17T09:00:00+02:00");
        let n = next_anniversary(bday, nine, tz, n.timestamp_millis()).unwrap();
        assert_eq!(n.to_rfc3339(), "2027-05-17T09:00:00+02:00");
        let leap = NaiveDate::from_ymd_opt(2000, 2, 29).unwrap();
        let n = next_anniversary(leap, nine, tz, ms("2026-03-27T12:00:00Z")).unwrap();
        assert_eq!(n.to_rfc3339(), "2027-02-28T09:00:00+01:00");
        let n = next_time_of_day(ms("2026-03-27T12:00:00Z"), nine, tz).unwrap();
        assert_eq!(n.to_rfc3339(), "2026-03-28T09:00:00+01:00");
    }
}
