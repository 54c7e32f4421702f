//! The embeddable dagflow engine.
//!
//! A flow is a DAG of jobs. Each flow lives in a [`ractor`] actor that owns its
//! pure [`state::FlowState`], persists every change to sled before anything outside
//! sees it, puts ready jobs on Redis streams and hands each child the results of all
//! its parents. Start here: [`Engine`].

pub mod actors;
pub mod clock;
pub mod engine;
pub mod error;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod handler;
pub mod hub;
pub mod ids;
pub mod notify;
pub mod outbox;
pub mod queue;
pub mod records;
pub mod retention;
pub mod schedule;
pub mod spec;
pub mod state;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod trace;
pub mod view;

pub use engine::{Engine, EngineBuilder, ListQuery, Subscription};
pub use error::EngineError;
pub use filter::{FlowCounts, FlowFilter};
pub use handler::{handler_fn, Handler, JobContext, JobError};
pub use ids::{FlowId, JobId, NodeIdx};
pub use schedule::{ScheduleError, ScheduleRun, ScheduleSpec, ScheduleView};
pub use spec::{FlowSpec, Limits};
pub use state::{FlowStatus, NodeStatus};
pub use view::{AttemptView, FlowEvent, FlowPage, FlowSummary, FlowView, NodeView};
