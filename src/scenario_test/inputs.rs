//! What a test plays after its event: replies, webhook events and presses on an offer's
//! buttons, as the channels would report them.

use std::sync::Arc;

use serde_json::{json, Value as Json};

use crate::clock::Clock;
use crate::config::{Action, Config};
use crate::engine::{EventItem, Work};
use crate::lang::raw::TestInput;
use crate::store::{IngestOutcome, NewEvent, RunRow, RunStatus, Store};

/// What the inputs of one test remember between them.
#[derive(Default)]
pub(super) struct Played {
    /// The offer the last press went to: once it is over, a press goes there still (and is
    /// told the offer is taken or expired).
    last_offer: Option<i64>,
}

/// The work one input makes: a reply to the asking (or waiting) run, or the event a waiting
/// run gets.
pub(super) async fn next_work(
    store: &Arc<dyn Store>,
    cfg: &Config,
    clock: &Clock,
    input: &TestInput,
    played: &mut Played,
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
        let by = input.by.as_deref();
        for run in &waiting {
            match step_of(run) {
                Some(Action::Offer(_)) => {
                    let mut tx = store.begin().await?;
                    let offer = tx.open_offer_of(run.id).await?;
                    tx.commit().await?;
                    let Some(offer) = offer else {
                        return Ok(Err(format!("click {button:?}: the offer is not open")));
                    };
                    played.last_offer = Some(offer.id);
                    return press_offer(store, cfg, clock, &offer, button, by).await;
                }
                Some(Action::Ask(a)) if a.inline => {
                    if let Some(i) = a.labels.iter().position(|l| l == button) {
                        return press_ask(store, clock, run, a, i, by).await;
                    }
                }
                _ => {}
            }
        }
        // A press on an offer that is over: the clicker is told it is taken (or expired).
        if let Some(id) = played.last_offer {
            let mut tx = store.begin().await?;
            let offer = tx.load_offer(id).await?;
            tx.commit().await?;
            if let Some(offer) = offer {
                return press_offer(store, cfg, clock, &offer, button, by).await;
            }
        }
        return press_sent(store, clock, button, by).await;
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

/// A press on a button of `offer` from `by` (a staff member, who presses on their own message,
/// or a user id), as the channel would report it.
async fn press_offer(
    store: &Arc<dyn Store>,
    cfg: &Config,
    clock: &Clock,
    offer: &crate::store::OfferRow,
    button: &str,
    by: Option<&str>,
) -> anyhow::Result<Result<Vec<Work>, String>> {
    let Some(run) = store.run(offer.run_id).await? else {
        return Ok(Err(format!("click {button:?}: the offer's run is gone")));
    };
    let spec = cfg
        .scenario(&run.scenario)
        .and_then(|sc| sc.steps.get(offer.step as usize))
        .and_then(|s| match &s.action {
            Action::Offer(o) => Some(o),
            _ => None,
        });
    let Some(o) = spec else {
        return Ok(Err(format!("click {button:?}: the offer's step moved")));
    };
    let Some(index) = o.buttons.iter().position(|b| b.id == button) else {
        let ids: Vec<&str> = o.buttons.iter().map(|b| b.id.as_str()).collect();
        return Ok(Err(format!(
            "click {button:?}: the offer has no such button (it has {})",
            ids.join(", ")
        )));
    };
    let mut tx = store.begin().await?;
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
    let (user, name) = clicker(cfg, &m.channel, by);
    let data = json!({
        "click": format!("test-{}-{index}", offer.id),
        "data": format!("o:{}:{index}", offer.id),
        "message": m.message_id,
        "chat": {"id": m.chat_id},
        "from": {"id": user, "first_name": name},
    });
    click_event(store, clock, &m.channel, data).await
}

/// Who presses: a staff member by id (their id on `channel`), else the user id given.
fn clicker(cfg: &Config, channel: &str, by: Option<&str>) -> (String, String) {
    let gw = &cfg.gateway;
    match by.and_then(|b| gw.staff.iter().find(|s| s.id == b)) {
        Some(s) => (
            gw.staff_id(s, channel)
                .map(|id| id.trim_start_matches('@').to_string())
                .unwrap_or_else(|| s.id.clone()),
            s.name.clone(),
        ),
        None => {
            let who = by.unwrap_or("1").to_string();
            (who.clone(), who)
        }
    }
}

/// A press on choice `index` of the question `run` asks, from the chat it went to.
async fn press_ask(
    store: &Arc<dyn Store>,
    clock: &Clock,
    run: &RunRow,
    ask: &crate::config::AskSpec,
    index: usize,
    by: Option<&str>,
) -> anyhow::Result<Result<Vec<Work>, String>> {
    let rows = store.outbox_for_run(run.id).await?;
    let Some(asked) = rows.iter().rev().find(|o| o.kind == "send") else {
        return Ok(Err("click: the question was not sent".into()));
    };
    let chat = asked.request["to"].as_str().unwrap_or_default().to_string();
    let data = json!({
        "click": format!("test-a-{}-{index}", run.id),
        "data": format!("{}{}:{}:{index}", crate::engine::ASK_PREFIX, run.id, run.pc),
        "message": format!("m{}", asked.id),
        "chat": {"id": chat},
        "from": {"id": by.unwrap_or(&chat), "first_name": by.unwrap_or(&chat)},
    });
    click_event(store, &clock.clone(), &ask.question.channel, data).await
}

/// A press on the button `button` (its id or its text) of the latest message sent with it:
/// a `send` step's button, which starts the scenarios that listen to it.
async fn press_sent(
    store: &Arc<dyn Store>,
    clock: &Clock,
    button: &str,
    by: Option<&str>,
) -> anyhow::Result<Result<Vec<Work>, String>> {
    let mut rows = Vec::new();
    let filter = crate::store::RunFilter {
        limit: 1000,
        ..Default::default()
    };
    for r in store.list_runs(&filter).await? {
        rows.extend(store.outbox_for_run(r.id).await?);
    }
    rows.sort_by_key(|o| std::cmp::Reverse(o.id));
    let wanted = format!("{}{button}", crate::engine::BUTTON_PREFIX);
    for row in rows.iter().filter(|o| o.kind == "send") {
        let Ok(crate::channels::Outbound::Send(m)) =
            crate::channels::Outbound::from_json(&row.request)
        else {
            continue;
        };
        let Some(choice) = m.choices.iter().find(|c| {
            c.data == wanted
                || (c.text == button && c.data.starts_with(crate::engine::BUTTON_PREFIX))
        }) else {
            continue;
        };
        let data = json!({
            "click": format!("test-b-{}", row.id),
            "data": choice.data,
            "message": format!("m{}", row.id),
            "chat": {"id": m.to},
            "from": {"id": by.unwrap_or(&m.to), "first_name": by.unwrap_or(&m.to)},
        });
        return click_event(store, clock, &row.channel, data).await;
    }
    Ok(Err(format!(
        "click {button:?}: no offer waits, no question asks with such a button, and no message was sent with one"
    )))
}

/// Stores a click as the channel would, ready for the engine.
async fn click_event(
    store: &Arc<dyn Store>,
    clock: &Clock,
    channel: &str,
    data: Json,
) -> anyhow::Result<Result<Vec<Work>, String>> {
    let ev = NewEvent {
        kind: "click".into(),
        source: channel.to_string(),
        dedupe_key: None,
        data,
        meta: json!({}),
        rejected: None,
        received_at: clock.now_ms(),
    };
    let IngestOutcome::Accepted(id) = store.ingest(std::slice::from_ref(&ev)).await?[0] else {
        anyhow::bail!("the click was not accepted");
    };
    Ok(Ok(vec![Work::Event(EventItem::stored(id, ev))]))
}
