//! The date functions and filters of templates: `now`, `date`, `add`, `format_date`, …
//! Templates read the engine's clock from their context (`meta.now_ms`).

use std::fmt;
use std::sync::Arc;

use chrono::{Datelike, Timelike, Utc};
use chrono_tz::Tz;
use minijinja::value::{Kwargs, Object, ObjectRepr, Value};
use minijinja::{Error, ErrorKind, State};

use super::{locale, zone, When, Zone};

fn bad(why: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, why.into())
}

/// A date in a template: shows (and is stored) as its text, and keeps its zone for the
/// next filter.
#[derive(Debug)]
pub struct DateValue(pub When);

impl Object for DateValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

fn value(w: When) -> Value {
    Value::from_object(DateValue(w))
}

/// The strftime pattern of a named style in a language: the numeric date of the locale
/// (`short`), the date with the month's abbreviation (`medium`) or name (`long`), and with the
/// weekday (`full`). `None`: not a style name (then it is a pattern).
fn style_pattern(style: &str, lang: &str) -> Option<String> {
    let base = lang.split(['-', '_']).next().unwrap_or("").to_lowercase();
    let (medium, long, full) = match base.as_str() {
        "en" => ("%b %-d, %Y", "%B %-d, %Y", "%A, %B %-d, %Y"),
        "de" | "da" | "nb" | "no" | "fi" | "cs" | "sk" | "sl" | "hr" | "et" => {
            ("%-d. %b %Y", "%-d. %B %Y", "%A, %-d. %B %Y")
        }
        "ja" | "zh" | "ko" | "hu" | "lt" | "lv" => ("%Y %b %-d", "%Y %B %-d", "%Y %B %-d, %A"),
        _ => ("%-d %b %Y", "%-d %B %Y", "%A, %-d %B %Y"),
    };
    Some(match style {
        "short" => "%x".to_string(),
        "medium" => medium.to_string(),
        "long" => long.to_string(),
        "full" => full.to_string(),
        _ => return None,
    })
}

/// The engine's clock as the template's context carries it; the wall clock elsewhere.
fn now_ms(state: &State) -> i64 {
    state
        .lookup("meta")
        .and_then(|m| m.get_attr("now_ms").ok())
        .and_then(|v| i64::try_from(v).ok())
        .unwrap_or_else(|| Utc::now().timestamp_millis())
}

fn kw_zone(kwargs: &Kwargs) -> Result<Option<Tz>, Error> {
    match kwargs.get::<Option<String>>("tz")? {
        Some(name) if !name.trim().is_empty() => zone(&name).map(Some).map_err(bad),
        _ => Ok(None),
    }
}

fn read(v: &Value, kwargs: &Kwargs) -> Result<When, Error> {
    let format = kwargs.get::<Option<String>>("format")?;
    let w = When::from_value(v, format.as_deref()).map_err(bad)?;
    match kw_zone(kwargs)? {
        Some(tz) => w.in_zone(tz).map_err(bad),
        None => Ok(w),
    }
}

/// `now(tz="Europe/Warsaw")`: the current time, in a zone (default UTC).
fn now(state: &State, kwargs: Kwargs) -> Result<Value, Error> {
    let tz = kw_zone(&kwargs)?.unwrap_or(Tz::UTC);
    let w = When::at_ms(now_ms(state), Zone::Named(tz)).ok_or_else(|| bad("no time"))?;
    kwargs.assert_all_used()?;
    Ok(value(w))
}

/// `date(tz=…, format=…)` / `parse_date(format=…)`: text or a number as a date, read in a zone.
fn date(v: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let w = read(&v, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(value(w))
}

fn weekday(v: Value, kwargs: Kwargs) -> Result<u32, Error> {
    let w = read(&v, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(w.local().weekday().number_from_monday())
}

fn weekday_name(v: Value, kwargs: Kwargs) -> Result<String, Error> {
    let w = read(&v, &kwargs)?;
    let lang = kwargs.get::<Option<String>>("lang")?;
    kwargs.assert_all_used()?;
    let loc = locale(lang.as_deref().unwrap_or("en")).map_err(bad)?;
    w.format("%A", loc).map_err(bad)
}

fn hour(v: Value, kwargs: Kwargs) -> Result<u32, Error> {
    let w = read(&v, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(w.local().hour())
}

/// Unix seconds; a time without a zone is read in UTC unless `tz` says otherwise.
fn timestamp(v: Value, kwargs: Kwargs) -> Result<i64, Error> {
    let w = read(&v, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(w.timestamp_ms(Tz::UTC).map_err(bad)?.div_euclid(1000))
}

fn add(v: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let w = read(&v, &kwargs)?;
    let n = |k: &str| -> Result<i64, Error> { Ok(kwargs.get::<Option<i64>>(k)?.unwrap_or(0)) };
    let (years, months, weeks, days, hours, minutes) = (
        n("years")?,
        n("months")?,
        n("weeks")?,
        n("days")?,
        n("hours")?,
        n("minutes")?,
    );
    kwargs.assert_all_used()?;
    let range = |x: Option<i64>| x.ok_or_else(|| bad("the amount to add is out of range"));
    let months = range(years.checked_mul(12).and_then(|y| y.checked_add(months)))?;
    let days = range(weeks.checked_mul(7).and_then(|w| w.checked_add(days)))?;
    let minutes = range(hours.checked_mul(60).and_then(|h| h.checked_add(minutes)))?;
    Ok(value(w.add(months, days, minutes).map_err(bad)?))
}

fn start_of_day(v: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let w = read(&v, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(value(w.start_of_day().map_err(bad)?))
}

/// `format_date("long", lang="pl", tz=…)`: a style (`short`, `medium`, `long`, `full`) or a
/// strftime pattern, in a language (default English).
fn format_date(v: Value, style: Option<String>, kwargs: Kwargs) -> Result<String, Error> {
    let w = read(&v, &kwargs)?;
    let lang = kwargs
        .get::<Option<String>>("lang")?
        .unwrap_or_else(|| "en".into());
    let style = match style {
        Some(s) => Some(s),
        None => kwargs.get::<Option<String>>("style")?,
    }
    .unwrap_or_else(|| "medium".into());
    kwargs.assert_all_used()?;
    let loc = locale(&lang).map_err(bad)?;
    let pattern = style_pattern(&style, &lang).unwrap_or(style);
    w.format(&pattern, loc).map_err(bad)
}

/// Adds the date functions and filters to a template environment.
pub fn register(env: &mut minijinja::Environment<'_>) {
    env.add_function("now", now);
    env.add_filter("date", date);
    env.add_filter("parse_date", date);
    env.add_filter("weekday", weekday);
    env.add_filter("weekday_name", weekday_name);
    env.add_filter("hour", hour);
    env.add_filter("timestamp", timestamp);
    env.add_filter("add", add);
    env.add_filter("start_of_day", start_of_day);
    env.add_filter("format_date", format_date);
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::Environment;
    use serde_json::json;

    fn env() -> Environment<'static> {
        let mut env = Environment::new();
        register(&mut env);
        env
    }

    fn render(src: &str, ctx: serde_json::Value) -> Result<String, String> {
        env()
            .render_str(src, ctx)
            .map_err(|e| format!("{e} {}", e.detail().unwrap_or("")))
    }

    fn ok(src: &str) -> String {
        render(src, json!({})).unwrap()
    }

    #[test]
    fn now_reads_the_engines_clock_in_a_zone() {
        // 2026-03-27T20:30:00Z
        let ctx = json!({"meta": {"now_ms": 1_774_643_400_000_i64}});
        assert_eq!(
            render("{{ now() }}", ctx.clone()).unwrap(),
            "2026-03-27T20:30:00Z"
        );
        assert_eq!(
            render("{{ now(tz='Europe/Warsaw') }}", ctx.clone()).unwrap(),
            "2026-03-27T21:30:00+01:00"
        );
        assert_eq!(
            render("{{ now(tz='Europe/Warsaw') | add(days=2) }}", ctx).unwrap(),
            "2026-03-29T21:30:00+02:00"
        );
        let env = env();
        let e = env
            .compile_expression("now(tz='Asia/Tokyo') | add(days=1) | hour")
            .unwrap();
        let v = e
            .eval(json!({"meta": {"now_ms": 1_774_643_400_000_i64}}))
            .unwrap();
        assert_eq!(v.as_i64(), Some(5));
        assert!(render("{{ now(tz='Mars/Base') }}", json!({}))
            .unwrap_err()
            .contains("unknown time zone 'Mars/Base'"));
    }

    #[test]
    fn the_usual_formats_parse() {
        assert_eq!(ok("{{ '2026-03-30' | date }}"), "2026-03-30");
        assert_eq!(ok("{{ '30.03.2026' | date }}"), "2026-03-30");
        assert_eq!(ok("{{ '30/03/2026' | date }}"), "2026-03-30");
        assert_eq!(ok("{{ '2026-03-30 10:15' | date }}"), "2026-03-30T10:15:00");
        assert_eq!(
            ok("{{ '2026-03-30 10:15' | date(tz='Europe/Warsaw') }}"),
            "2026-03-30T10:15:00+02:00"
        );
        assert_eq!(
            ok("{{ '2026-03-30T08:00:00Z' | date(tz='Europe/Warsaw') }}"),
            "2026-03-30T10:00:00+02:00"
        );
        assert_eq!(ok("{{ 1774857600 | date }}"), "2026-03-30T08:00:00Z");
        assert_eq!(ok("{{ 1774857600000 | date }}"), "2026-03-30T08:00:00Z");
        assert_eq!(ok("{{ '1774857600' | date }}"), "2026-03-30T08:00:00Z");
        assert_eq!(
            ok("{{ 'March 30 2026' | parse_date(format='%B %d %Y') }}"),
            "2026-03-30"
        );
        let err = render("{{ 'soon' | date }}", json!({})).unwrap_err();
        assert!(err.contains("'soon' is not a date"), "{err}");
        let err = render("{{ 'x' | parse_date(format='%d %m') }}", json!({})).unwrap_err();
        assert!(err.contains("does not match the format"), "{err}");
        let err = render("{{ event.missing | date }}", json!({"event": {}})).unwrap_err();
        assert!(err.contains("no date given"), "{err}");
        let err = render("{{ '2026-03-30' | date(zone='UTC') }}", json!({})).unwrap_err();
        assert!(err.contains("zone"), "{err}");
    }

    #[test]
    fn weekday_hour_and_names() {
        assert_eq!(ok("{{ '2026-03-30' | weekday }}"), "1");
        assert_eq!(ok("{{ '2026-03-29' | weekday }}"), "7");
        assert_eq!(ok("{{ '2026-03-30' | weekday_name }}"), "Monday");
        assert_eq!(
            ok("{{ '2026-03-30' | weekday_name(lang='pl') }}"),
            "poniedziałek"
        );
        assert_eq!(
            ok("{{ '2026-03-30T23:30:00Z' | hour(tz='Europe/Warsaw') }}"),
            "1"
        );
        assert_eq!(ok("{{ '2026-03-30T23:30:00Z' | timestamp }}"), "1774913400");
    }

    #[test]
    fn calendar_arithmetic_keeps_the_local_time_across_daylight_saving() {
        assert_eq!(
            ok("{{ '2026-03-28 10:00' | date(tz='Europe/Warsaw') | add(days=1) }}"),
            "2026-03-29T10:00:00+02:00"
        );
        assert_eq!(
            ok("{{ '2026-03-28 10:00' | date(tz='Europe/Warsaw') | add(hours=24) }}"),
            "2026-03-29T11:00:00+02:00"
        );
        assert_eq!(ok("{{ '2026-03-30' | add(days=-1) }}"), "2026-03-29");
        assert_eq!(ok("{{ '2026-01-31' | add(months=1) }}"), "2026-02-28");
        assert_eq!(ok("{{ '2024-02-29' | add(years=1) }}"), "2025-02-28");
        assert_eq!(
            ok("{{ '2026-03-30' | add(weeks=1, hours=2) }}"),
            "2026-04-06T02:00:00"
        );
        // 02:30 does not exist in Warsaw that night: the first valid time after it.
        assert_eq!(
            ok("{{ '2026-03-28 02:30' | date(tz='Europe/Warsaw') | add(days=1) }}"),
            "2026-03-29T03:00:00+02:00"
        );
        assert_eq!(
            ok("{{ '2026-03-29T15:00:00+02:00' | date(tz='Europe/Warsaw') | start_of_day }}"),
            "2026-03-29T00:00:00+01:00"
        );
        assert!(render("{{ '2026-03-30' | add(days='x') }}", json!({})).is_err());
    }

    #[test]
    fn dates_format_in_a_language() {
        assert_eq!(
            ok("{{ '2026-12-01' | format_date('long', lang='pl') }}"),
            "1 grudnia 2026"
        );
        assert_eq!(
            ok("{{ '2026-12-01' | format_date('long', lang='en') }}"),
            "December 1, 2026"
        );
        assert_eq!(
            ok("{{ '2026-12-01' | format_date('short', lang='pl') }}"),
            "01.12.2026"
        );
        assert_eq!(
            ok("{{ '2026-12-01' | format_date('full', lang='de') }}"),
            "Dienstag, 1. Dezember 2026"
        );
        assert_eq!(
            ok("{{ '2026-12-01T09:00:00Z' | format_date('%H:%M %Z', tz='Europe/Warsaw') }}"),
            "10:00 +01:00"
        );
        let err = render(
            "{{ '2026-12-01' | format_date('long', lang='xx') }}",
            json!({}),
        )
        .unwrap_err();
        assert!(
            err.contains("no date formats for the language 'xx'"),
            "{err}"
        );
        let err = render("{{ '2026-12-01' | format_date('%H %z') }}", json!({})).unwrap_err();
        assert!(err.contains("no time zone"), "{err}");
        let err = render("{{ '2026-12-01' | format_date('%Q') }}", json!({})).unwrap_err();
        assert!(err.contains("not a valid date format"), "{err}");
    }
}
