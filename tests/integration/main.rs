//! Integration tests: the real gateway on loopback with a real SQLite file.

mod api;
mod browser;
mod cli;
mod crash;
mod engine;
mod links;
mod support;
mod webhooks;
