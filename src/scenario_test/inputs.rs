//! What a test plays after its event: replies, webhook events and presses on an offer's
//! buttons, as the channels would report them.

use std::sync::Arc;

use serde_json::{json, Value as Json};

use crate::clock::Clock;
use crate::config::{Action, Config};
use crate::engine::{EventItem, Work};
use crate::lang::raw::TestInput;
use crate::store::{IngestOutcome, NewEvent, RunRow, RunStatus, Store};

/// The work one input makes: a reply to the asking (or waiting) run, or the event a waiting
/// run gets.
pub(super) async fn next_work(
    store: &Arc<dyn Store>,
    cfg: &Config,
    clock: &Clock,
    input: &TestInput,
) -> anyhow::Result<Result<Vec<Work>, String>> {
    let mut waiting = Vec::new();
    let filter = crate::store::RunFilter {
        status: Some(RunStatus::Waiting),
        limit: 1000,
        ..Default::default()
    };
    let mut ids: Vec<i64> = store
        .list_runs(&filter)
        .await?
        .iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    for id in ids {
        waiting.extend(store.run(id).await?);
    }
    let step_of = |r: &RunRow| {
        cfg.scenario(&r.scenario)
            .and_then(|sc| sc.steps.get(r.pc as usize))
            .map(|s| &s.action)
    };
    if let Some(text) = &input.reply {
        for run in &waiting {
            match step_of(run) {
                Some(Action::Ask(a)) => {
                    let now = clock.now_ms();
                    let Some(ev) = crate::simulate::reply_to_ask(store, run, a, text, now).await?
                    else {
                        anyhow::bail!("the reply was not accepted");
                    };
                    return Ok(Ok(vec![Work::Event(ev)]));
                }
                Some(Action::Wait(_)) => {
                    return Ok(Ok(vec![Work::Answer {
                        run_id: run.id,
                        data: json!({"text": text}),
                    }]))
                }
                _ => {}
            }
        }
        return Ok(Err(format!("reply {text:?}: no run asks or waits for one")));
    }
    if let Some(button) = &input.click {
        for run in &waiting {
            if let Some(Action::Offer(o)) = step_of(run) {
                return click(store, cfg, clock, run, o, button, input.by.as_deref()).await;
            }
        }
        return Ok(Err(format!("click {button:?}: no run waits on an offer")));
    }
    if let Some(body) = &input.webhook {
        if let Some(run) = waiting
            .iter()
            .find(|r| matches!(step_of(r), Some(Action::Wait(_))))
        {
            return Ok(Ok(vec![Work::Answer {
                run_id: run.id,
                data: Json::Object(body.clone()),
            }]));
        }
        return Ok(Err("webhook: no run waits for one".into()));
    }
    Ok(Err(
        "an input needs `reply`, `webhook`, `click` or `after`".into()
    ))
}

/// A press on a button of the offer `run` waits on, from `by` (a staff member, who presses on
/// their own message, or a user id), as the channel would report it.
async fn click(
    store: &Arc<dyn Store>,
    cfg: &Config,
    clock: &Clock,
    run: &RunRow,
    o: &crate::config::OfferSpec,
    button: &str,
    by: Option<&str>,
) -> anyhow::Result<Result<Vec<Work>, String>> {
    let Some(index) = o.buttons.iter().position(|b| b.id == button) else {
        let ids: Vec<&str> = o.buttons.iter().map(|b| b.id.as_str()).collect();
        return Ok(Err(format!(
            "click {button:?}: the offer has no such button (it has {})",
            ids.join(", ")
        )));
    };
    let mut tx = store.begin().await?;
    let Some(offer) = tx.open_offer_of(run.id).await? else {
        return Ok(Err(format!("click {button:?}: the offer is not open")));
    };
    let messages = tx.offer_messages(offer.id).await?;
    tx.commit().await?;
    let gw = &cfg.gateway;
    let staff = by.and_then(|b| gw.staff.iter().find(|s| s.id == b));
    // The clicker's own message when the offer went to them, else the first one.
    let own = |m: &&crate::store::OfferMessage| {
        staff.is_some_and(|s| {
            gw.staff_id(s, &m.channel)
                .is_some_and(|id| id.trim_start_matches('@') == m.chat_id)
        })
    };
    let Some(m) = messages.iter().find(own).or(messages.first()) else {
        return Ok(Err(format!(
            "click {button:?}: the offer has no message yet"
        )));
    };
    let (user, name) = match staff {
        Some(s) => (
            gw.staff_id(s, &m.channel)
                .map(|id| id.trim_start_matches('@').to_string())
                .unwrap_or_else(|| s.id.clone()),
            s.name.clone(),
        ),
        None => {
            let who = by.unwrap_or("1").to_string();
            (who.clone(), who)
        }
    };
    let ev = NewEvent {
        kind: "click".into(),
        source: m.channel.clone(),
        dedupe_key: None,
        data: json!({
            "click": format!("test-{}-{index}", offer.id),
            "data": format!("o:{}:{index}", offer.id),
            "message": m.message_id,
            "chat": {"id": m.chat_id},
            "from": {"id": user, "first_name": name},
        }),
        meta: json!({}),
        rejected: None,
        received_at: clock.now_ms(),
    };
    let IngestOutcome::Accepted(id) = store.ingest(std::slice::from_ref(&ev)).await?[0] else {
        anyhow::bail!("the click was not accepted");
    };
    Ok(Ok(vec![Work::Event(EventItem::stored(id, ev))]))
}
