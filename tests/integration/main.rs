//! Integration tests: the real gateway on loopback with a real SQLite file.

mod cli;
mod crash;
mod engine;
mod support;
mod webhooks;
