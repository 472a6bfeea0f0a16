//! Integration tests: the real gateway on loopback with a real SQLite file.

mod api;
mod browser;
mod cli;
mod crash;
mod engine;
mod fake_telegram;
mod links;
mod support;
mod telegram;
mod webhooks;
