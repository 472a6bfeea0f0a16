//! Switchboard: a self-hosted chat-bot gateway that turns webhooks, timers and messages into
//! durable scenario runs.
//!
//! An event's path: `http` (ingress) → `engine::ingest` (stored, deduplicated) → `engine`
//! (scenario runs, committed with their effects through `store`) → `outbox` → `channels`.

pub mod app;
pub mod bench;
pub mod channels;
pub mod clock;
pub mod config;
pub mod egress;
pub mod engine;
pub mod http;
pub mod i18n;
pub mod journal;
pub mod lang;
pub mod links;
pub mod outbox;
pub mod reload;
pub mod replicas;
pub mod scenario_test;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod timers;
