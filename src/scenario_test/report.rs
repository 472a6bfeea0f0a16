//! The outcomes of a test run: lines for the terminal, JUnit XML for CI.

use std::time::Duration;

use super::Outcome;

/// The outcomes as JUnit XML (one suite per scenario).
pub fn junit(outcomes: &[Outcome]) -> anyhow::Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("switchboard");
    let mut suites: Vec<TestSuite> = Vec::new();
    for o in outcomes {
        let status = if o.passed() {
            TestCaseStatus::success()
        } else {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(
                o.failures
                    .iter()
                    .map(|(p, m)| format!("{}:{}:{}: {m}", o.file.display(), p.line, p.col))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            s
        };
        let mut case = TestCase::new(o.name.clone(), status);
        case.set_time(o.took);
        case.set_classname(o.scenario.clone());
        match suites.iter_mut().find(|s| s.name.as_str() == o.scenario) {
            Some(s) => {
                s.add_test_case(case);
            }
            None => {
                let mut s = TestSuite::new(o.scenario.clone());
                s.add_test_case(case);
                suites.push(s);
            }
        }
    }
    report.add_test_suites(suites);
    Ok(report.to_string()?)
}

/// Prints and returns whether every test passed.
pub fn report(outcomes: &[Outcome], out: &mut dyn std::io::Write) -> std::io::Result<bool> {
    let mut failed = 0;
    for o in outcomes {
        let ms = o.took.as_secs_f64() * 1000.0;
        if o.passed() {
            writeln!(out, "ok    {} › {} ({ms:.1} ms)", o.scenario, o.name)?;
        } else {
            failed += 1;
            writeln!(out, "FAIL  {} › {} ({ms:.1} ms)", o.scenario, o.name)?;
            for (p, m) in &o.failures {
                writeln!(out, "{}:{}:{}: {m}", o.file.display(), p.line, p.col)?;
            }
        }
    }
    let total: Duration = outcomes.iter().map(|o| o.took).sum();
    writeln!(
        out,
        "{} passed, {failed} failed ({} tests in {:.0} ms)",
        outcomes.len() - failed,
        outcomes.len(),
        total.as_secs_f64() * 1000.0
    )?;
    Ok(failed == 0)
}
