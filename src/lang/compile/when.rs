//! Local times in scenario files: `at = "HH:MM"` and `tz = "…"` of `sleep` steps and of
//! yearly triggers.

use super::cx::FileCx;
use crate::lang::dates;
use crate::lang::expr::{Templates, Tmpl};
use crate::lang::model::Yearly;
use crate::lang::raw::{self, Sp};

/// `at = "HH:MM"`, checked with its position.
pub(super) fn time_of_day(cx: &mut FileCx, at: &Sp<String>) -> Option<chrono::NaiveTime> {
    match dates::parse_hhmm(at.get()) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.err(at.span(), e);
            None
        }
    }
}

/// A zone template; one without `{{ }}` must name a known zone.
pub(super) fn zone_tmpl(cx: &mut FileCx, t: &Templates, tz: &Sp<String>) -> Option<Tmpl> {
    let tmpl = cx.tmpl(t, tz)?;
    if let Tmpl::Const(name) = &tmpl {
        if let Err(e) = dates::zone(name) {
            cx.err(tz.span(), e);
            return None;
        }
    }
    Some(tmpl)
}

/// `on = { webhook = "crm", yearly = "event.birthday", at = "09:00", tz = "{{ event.tz }}" }`.
pub(super) fn compile_yearly(
    raw: &raw::ScenarioFile,
    cx: &mut FileCx,
    t: &Templates,
) -> Option<Yearly> {
    let on = raw.on.get();
    let Some(y) = &on.yearly else {
        if let Some(a) = &on.at {
            cx.err(a.span(), "`at` belongs to a `yearly` trigger");
        }
        return None;
    };
    if on.schedule.is_some() || on.click.is_some() || on.status.is_some() {
        cx.err(
            y.span(),
            "`yearly` goes with a webhook, message, call or link trigger",
        );
    }
    if raw.subject.is_none() {
        cx.err(
            y.span(),
            "a yearly trigger keeps one sleeping run per subject: the scenario needs a `subject`",
        );
    }
    let date = cx.expr(t, y);
    let at = match &on.at {
        Some(a) => time_of_day(cx, a),
        None => Some(chrono::NaiveTime::MIN),
    };
    let tz = match &on.tz {
        Some(z) => Some(zone_tmpl(cx, t, z)?),
        None => None,
    };
    Some(Yearly {
        date: date?,
        at: at?,
        tz,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::errors;

    fn one(scenario: &str) -> String {
        let errs = errors(scenario);
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs[0].clone()
    }

    #[test]
    fn local_times_are_checked_where_they_are_written() {
        let step = |s: &str| format!("id = \"a\"\non = {{ webhook = \"h\" }}\n[[step]]\n{s}\n");
        let e = one(&step("sleep = { at = \"9am\" }"));
        assert!(e.starts_with("4:16: '9am' is not a time of day"), "{e}");
        let e = one(&step("sleep = { for = \"1h\", at = \"10:00\" }"));
        assert!(e.contains("`at` goes with `until`"), "{e}");
        let e = one(&step("sleep = { at = \"10:00\", tz = \"Mars/Base\" }"));
        assert!(e.starts_with("4:30: unknown time zone 'Mars/Base'"), "{e}");
        let ok = errors(&step(
            "sleep = { until = \"event.day | add(days=-1)\", at = \"10:00\", tz = \"{{ event.tz }}\" }",
        ));
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn a_yearly_trigger_needs_a_subject_and_a_fitting_trigger() {
        let e = one(
            "id = \"a\"\non = { webhook = \"h\", yearly = \"event.d\" }\n[[step]]\nstop = true\n",
        );
        assert!(
            e.starts_with("2:32: a yearly trigger keeps one sleeping run per subject"),
            "{e}"
        );
        let e = one("id = \"a\"\non = { schedule = \"0 9 * * *\", yearly = \"event.d\" }\nsubject = \"x\"\n[[step]]\nstop = true\n");
        assert!(e.contains("`yearly` goes with a webhook"), "{e}");
        let e =
            one("id = \"a\"\non = { webhook = \"h\", at = \"09:00\" }\n[[step]]\nstop = true\n");
        assert!(e.contains("`at` belongs to a `yearly` trigger"), "{e}");
        let ok = errors("id = \"a\"\non = { webhook = \"h\", yearly = \"event.d\", at = \"09:00\", tz = \"{{ event.tz }}\" }\nsubject = \"c:{{ event.id }}\"\n[[step]]\nstop = true\n");
        assert!(ok.is_empty(), "{ok:?}");
    }
}
