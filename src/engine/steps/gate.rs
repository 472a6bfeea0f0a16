//! Whether a message step (`send`, `ask`, `offer`) may go now: inside its working hours, and
//! under each recipient's cap on the channel. Otherwise the run is held by a durable timer
//! until the window opens or the cap has room, and the step runs then (so a run's messages
//! keep their order); a `send` over a cap set to `drop` is skipped instead.

use std::sync::Arc;

use chrono_tz::Tz;
use minijinja::value::Value;
use serde_json::{json, Value as Json};

use super::Flow;
use crate::config::{Action, Cap, Hours, Scenario, SendSpec, Step};
use crate::engine::{After, Engine};
use crate::store::{NewTimer, RunRow, RunStatus, StoreError, SubjectLimit, Tx};

/// Under this key (and the recipient) the subject-limit table counts a channel's messages.
fn cap_key(channel: &str) -> String {
    format!("#per_recipient:{channel}")
}

/// One recipient of a step's message.
struct Recipient {
    channel: String,
    to: String,
    tz: Option<Tz>,
}

impl Engine {
    /// `Ok(None)`: the step goes on now. `Ok(Some(flow))`: it was held (the run parks) or
    /// dropped (the run goes on), as `entry` says.
    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    pub(super) async fn gate(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Arc<Scenario>,
        step: &Step,
        ctx: &Value,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Option<Flow>, String>, StoreError> {
        let specs: Vec<&SendSpec> = match &step.action {
            Action::Send(s) => vec![s],
            Action::Ask(a) => vec![&a.question],
            Action::Offer(o) => std::iter::once(&o.message).chain(&o.also).collect(),
            _ => return Ok(Ok(None)),
        };
        let own = step.hours.as_ref().or(sc.hours.as_ref());
        let rules = &self.cfg.gateway.rules;
        if own.is_none()
            && !rules
                .values()
                .any(|r| r.hours.is_some() || r.per_recipient.is_some())
        {
            return Ok(Ok(None));
        }
        let recipients = tryv!(self.recipients(&specs, ctx));
        let now = self.now();

        // Working hours: held until every recipient's window is open at once.
        let mut windows = Vec::new();
        for r in &recipients {
            let Some(hours) = own.or_else(|| rules.get(&r.channel).and_then(|x| x.hours.as_ref()))
            else {
                continue;
            };
            windows.push((hours, self.zone(hours, r, ctx, entry)));
        }
        if !windows.is_empty() {
            // From now, move to the latest next opening until all are open together.
            let mut at = now;
            let mut why = String::new();
            let mut found = false;
            for _ in 0..64 {
                let mut latest: Option<(i64, String)> = None;
                for (hours, zone) in &windows {
                    if let Some((open, local)) = hours.schedule.next_open(at, *zone) {
                        if latest.as_ref().is_none_or(|(l, _)| open > *l) {
                            let text = format!(
                                "hours {} in {}: opens {}",
                                hours.src,
                                zone.name(),
                                local.format("%a %Y-%m-%d %H:%M")
                            );
                            latest = Some((open, text));
                        }
                    }
                }
                match latest {
                    None => {
                        found = true;
                        break;
                    }
                    Some((open, text)) => {
                        at = open;
                        why = text;
                    }
                }
            }
            if !found {
                return Ok(Err(format!(
                    "the recipients' working hours are never open at the same time ({})",
                    windows
                        .iter()
                        .map(|(h, z)| format!("{} in {}", h.src, z.name()))
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
            if at > now {
                return self.hold(tx, run, sc, at, &why, entry, after).await;
            }
        }

        // Per-recipient caps: counted when the step goes. (In one order, so that replicas
        // taking the counters' locks never wait on each other in a circle.)
        let mut counts = Vec::new();
        let mut dropped: Vec<(String, String, String)> = Vec::new();
        let mut sorted: Vec<&Recipient> = recipients.iter().collect();
        sorted.sort_by(|a, b| (&a.channel, &a.to).cmp(&(&b.channel, &b.to)));
        sorted.dedup_by(|a, b| (&a.channel, &a.to) == (&b.channel, &b.to));
        for r in sorted {
            let Some(cap) = rules.get(&r.channel).and_then(|x| x.per_recipient) else {
                continue;
            };
            let key = cap_key(&r.channel);
            let mut state = tx
                .subject_limit(&key, &r.to)
                .await?
                .unwrap_or(SubjectLimit {
                    total: 0,
                    window_start: now,
                    window_count: 0,
                });
            let per = cap.per.as_millis() as i64;
            if now - state.window_start >= per {
                state.window_start = now;
                state.window_count = 0;
            }
            if state.window_count >= cap.n as i64 {
                let why = over(&cap, r);
                if cap.drop && matches!(step.action, Action::Send(_)) {
                    // Only this recipient's message is left out.
                    dropped.push((r.channel.clone(), r.to.clone(), why));
                    continue;
                }
                let until = state.window_start + per;
                return self.hold(tx, run, sc, until, &why, entry, after).await;
            }
            state.total += 1;
            state.window_count += 1;
            counts.push((key, r.to.clone(), state));
        }
        for (key, to, state) in counts {
            tx.put_subject_limit(&key, &to, &state).await?;
        }
        if dropped.is_empty() {
            return Ok(Ok(None));
        }
        let whys: Vec<&str> = dropped.iter().map(|(_, _, w)| w.as_str()).collect();
        entry["result"] = json!(format!("dropped: {}", whys.join("; ")));
        entry["dropped"] = json!(dropped
            .iter()
            .map(|(c, t, _)| json!({"channel": c, "to": t}))
            .collect::<Vec<_>>());
        if dropped.len() == recipients.len() {
            return Ok(Ok(Some(Flow::Next)));
        }
        // The others get theirs.
        after.skip = dropped.into_iter().map(|(c, t, _)| (c, t)).collect();
        Ok(Ok(None))
    }

    /// The run waits at this step until `until`, then runs it again.
    #[expect(
        clippy::too_many_arguments,
        reason = "the interpreter's working set for one step"
    )]
    async fn hold(
        &mut self,
        tx: &mut dyn Tx,
        run: &mut RunRow,
        sc: &Scenario,
        until: i64,
        why: &str,
        entry: &mut Json,
        after: &mut After,
    ) -> Result<Result<Option<Flow>, String>, StoreError> {
        tx.insert_timer(&NewTimer {
            run_id: run.id,
            kind: "hold".into(),
            due_at: until,
            scenario: sc.id.clone(),
            subject: run.subject.clone(),
            key: None,
        })
        .await?;
        after.timers_changed = true;
        entry["result"] = json!(format!(
            "held until {} ({why})",
            crate::clock::rfc3339(until)
        ));
        entry["held_until"] = json!(crate::clock::rfc3339(until));
        run.status = RunStatus::Sleeping;
        Ok(Ok(Some(Flow::Park)))
    }

    /// A held run's time came: the step it waits at runs again (and checks again).
    pub(in crate::engine) fn hold_ended(&self, run: &mut RunRow, now: i64) {
        let entry = json!({"step": run.pc, "result": "released", "at": now});
        super::note(run, entry);
    }

    /// Who a step's messages go to: one recipient per message, staff members on the
    /// channel they are reached on.
    fn recipients(&self, specs: &[&SendSpec], ctx: &Value) -> Result<Vec<Recipient>, String> {
        let gw = &self.cfg.gateway;
        let mut out = Vec::new();
        for s in specs {
            let to = match &s.address {
                Some(a) => a.render(ctx).map_err(|e| e.0)?.trim().to_string(),
                None => String::new(),
            };
            if s.channel == "staff" {
                for m in gw.staff_named(&to) {
                    if let Some((channel, id)) = gw.staff_chat(m) {
                        out.push(Recipient {
                            channel,
                            to: id,
                            tz: m.tz,
                        });
                    }
                }
                continue;
            }
            let tz = gw.staff_on(&s.channel, &to).and_then(|m| m.tz);
            out.push(Recipient {
                channel: s.channel.clone(),
                to,
                tz,
            });
        }
        Ok(out)
    }

    /// The zone hours are read in: the one they name (from the event, or written), the
    /// recipient's, the gateway's. A zone from the event that names none is noted and passed
    /// over.
    fn zone(&self, hours: &Hours, r: &Recipient, ctx: &Value, entry: &mut Json) -> Tz {
        if let Some(t) = &hours.tz {
            match t.render(ctx) {
                Ok(name) if name.trim().is_empty() => {}
                Ok(name) => match name.trim().parse::<Tz>() {
                    Ok(z) => return z,
                    Err(_) => entry["zone_ignored"] = json!(format!("'{name}' is not a time zone")),
                },
                Err(e) => entry["zone_ignored"] = json!(e.0),
            }
        }
        hours.zone.or(r.tz).unwrap_or(self.cfg.gateway.timezone)
    }
}

fn over(cap: &Cap, r: &Recipient) -> String {
    format!(
        "{} on {} already had {} messages in {}",
        r.to,
        r.channel,
        cap.n,
        humantime::format_duration(cap.per)
    )
}
