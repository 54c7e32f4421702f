//! The embeddable dagflow engine.
//!
//! A flow is a DAG of jobs. Each flow lives in a [`ractor`] actor that owns its
//! pure [`state::FlowState`], persists every change to sled before anything outside
//! sees it, puts ready jobs on Redis streams and hands each child the results of all
//! its parents. Start here: [`Engine`].

pub mod ids;
pub mod spec;
pub mod state;
pub mod store;
pub mod handler;
pub mod view;
pub mod queue;
#[doc(hidden)]
pub mod testing;
