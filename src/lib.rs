//! dagflow: the server and CLI around the embeddable engine.
//!
//! The engine itself lives in `dagflow-actors` and is re-exported here as
//! [`engine`], so that a program depending on `dagflow` gets both.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod handlers;

pub use dagflow_actors as engine;
