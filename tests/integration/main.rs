//! Integration tests: the real gateway on loopback with a real SQLite file, and on a
//! PostgreSQL server the tests start.

mod api;
mod broadcast;
mod browser;
mod channels;
mod cli;
mod crash;
mod dates;
mod discord;
mod durability;
mod egress;
mod email;
mod engine;
mod failures;
mod fake_discord;
mod fake_telegram;
mod fake_whatsapp;
mod fuzz;
mod hours;
mod links;
mod mail_servers;
mod migrations;
mod offers;
mod parity;
mod pg;
mod reload;
mod replicas;
mod store;
mod support;
mod telegram;
mod webhooks;
mod whatsapp;
