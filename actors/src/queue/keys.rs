//! Every Redis key and group name the queue protocol uses, built in one place.
//!
//! `docs/PROTOCOL.md` documents the same names for workers written in other
//! languages; a change here is a protocol change.

/// The key prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "dagflow";

/// The consumer group on every queue stream, shared by all workers of that queue.
pub const WORKERS_GROUP: &str = "workers";

/// The consumer group on the completions stream, read by the engine's router.
pub const ENGINE_GROUP: &str = "engine";

/// Builds the name of every key under one prefix.
///
/// Every key starts with the prefix, so several deployments, and every test, can
/// share one Redis without seeing each other's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// The configured prefix, without the trailing `:`.
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (`P` in the protocol).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix, as configured; workers in other processes must use the same one.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `P:q:{queue}`: the stream of ready jobs of one queue, read by group `workers`.
    pub fn queue(&self, queue: &str) -> String {
        format!("{}:q:{queue}", self.prefix)
    }

    /// `P:q:{queue}:delayed`: jobs waiting for their retry backoff, scored by due time (ms).
    pub fn delayed(&self, queue: &str) -> String {
        format!("{}:q:{queue}:delayed", self.prefix)
    }

    /// `P:flow:{flow_id}:jobs`: one field per job of the flow; makes enqueue idempotent
    /// and lets a flow's jobs be deleted exactly.
    pub fn flow_jobs(&self, flow_id: &str) -> String {
        format!("{}:flow:{flow_id}:jobs", self.prefix)
    }

    /// `P:completions`: records from workers in other processes, read by group `engine`.
    pub fn completions(&self) -> String {
        format!("{}:completions", self.prefix)
    }

    /// `P:cancel`: pub/sub channel carrying ids of jobs whose handlers must stop.
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// `P:workers`: heartbeats of live workers, one field per worker id.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// `P:marker`: set by the engine; when it is missing, Redis lost its data since the
    /// engine last looked, and the snapshots must re-enqueue the lost jobs.
    pub fn marker(&self) -> String {
        format!("{}:marker", self.prefix)
    }

    /// `P:config`: the engine's settings that workers in other processes must share,
    /// such as the job lease (`leaseMs`).
    pub fn config(&self) -> String {
        format!("{}:config", self.prefix)
    }

    /// `P:queues:delayed`: names of the queues that have had delayed jobs (retries
    /// waiting for their backoff), so that the engine promotes them for every queue,
    /// whoever serves it.
    pub fn delayed_queues(&self) -> String {
        format!("{}:queues:delayed", self.prefix)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_protocol() {
        let keys = Keys::new("P");
        assert_eq!(keys.queue("gpu"), "P:q:gpu");
        assert_eq!(keys.delayed("gpu"), "P:q:gpu:delayed");
        assert_eq!(keys.flow_jobs("f1"), "P:flow:f1:jobs");
        assert_eq!(keys.completions(), "P:completions");
        assert_eq!(keys.cancel_channel(), "P:cancel");
        assert_eq!(keys.workers(), "P:workers");
        assert_eq!(keys.marker(), "P:marker");
        assert_eq!(keys.config(), "P:config");
        assert_eq!(keys.delayed_queues(), "P:queues:delayed");
        assert_eq!(Keys::default().prefix(), "dagflow");
    }
}
