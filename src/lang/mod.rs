//! The scenario language: the files of `bot-configs/` as written (with spans), their
//! compilation into the checked model the engine runs, expressions and templates, and the
//! JSON Schema of the format. No I/O: the config loader reads the folder and passes in what
//! the compiler asks of the rest of the gateway (channel capabilities, Fluent messages,
//! environment variables); trigger links are signed through [`expr::LinkSigner`].

pub mod capabilities;
pub mod channel;
pub mod compile;
pub mod dates;
pub mod error;
pub mod expr;
pub mod graph;
pub mod hours;
pub mod interpolate;
pub mod model;
pub mod raw;
pub mod schema;
mod schema_examples;

pub use capabilities::{Capabilities, ChoiceLimits, Markup};
pub use error::{ConfigError, ConfigErrors, Position};
