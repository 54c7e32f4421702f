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

use crate::spec::{DEFAULT_PRIORITY, MAX_PRIORITY};

/// Number of lanes per queue: two per priority.
pub const LANES: usize = 2 * (MAX_PRIORITY as usize + 1);

/// Where a ready job waits within its queue. Each lane is its own stream; workers
/// take from the best non-empty lane first: higher priorities first and, within a
/// priority, jobs of flows that have started (continuations) before the first jobs
/// of flows that have not (`fresh`), so that a burst of new flows does not delay the
/// flows already running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lane {
    /// 0 (lowest) to 9 (highest).
    pub priority: u8,
    /// A first job of a flow that has not started yet (a root, attempt 1).
    pub fresh: bool,
}

impl Lane {
    /// Every lane in the order workers serve them: priority 9 continuations, priority
    /// 9 fresh jobs, priority 8 continuations, ..., priority 0 fresh jobs.
    pub const ALL: [Lane; LANES] = {
        let mut all = [Lane {
            priority: 0,
            fresh: false,
        }; LANES];
        let mut i = 0;
        while i < LANES {
            all[i] = Lane {
                priority: MAX_PRIORITY - (i / 2) as u8,
                fresh: i % 2 == 1,
            };
            i += 1;
        }
        all
    };

    /// A lane; priorities above [`MAX_PRIORITY`] are taken as the maximum.
    pub fn new(priority: u8, fresh: bool) -> Lane {
        Lane {
            priority: priority.min(MAX_PRIORITY),
            fresh,
        }
    }

    /// Position in [`Lane::ALL`] (0 is served first); stored in the jobs hash as `l`.
    pub fn index(self) -> usize {
        usize::from(MAX_PRIORITY - self.priority.min(MAX_PRIORITY)) * 2 + usize::from(self.fresh)
    }
}

impl Default for Lane {
    fn default() -> Self {
        Lane::new(DEFAULT_PRIORITY, false)
    }
}

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

    /// The stream of one lane of a queue, read by group `workers`:
    /// `P:q:{queue}:{priority}` for jobs of flows that have started,
    /// `P:q:{queue}:{priority}:new` for the first jobs of flows that have not.
    pub fn lane(&self, queue: &str, lane: Lane) -> String {
        if lane.fresh {
            format!("{}:q:{queue}:{}:new", self.prefix, lane.priority)
        } else {
            format!("{}:q:{queue}:{}", self.prefix, lane.priority)
        }
    }

    /// Every lane stream of a queue, in the order they are served
    /// ([`Lane::ALL`]): what `take.lua` and `cleanup.lua` are given.
    pub fn lanes(&self, queue: &str) -> Vec<String> {
        Lane::ALL.iter().map(|&l| self.lane(queue, l)).collect()
    }

    /// `P:q:{queue}:takes`: how many jobs the queue has handed out, which decides
    /// the turns that go to lower priorities (`take.lua`).
    pub fn takes(&self, queue: &str) -> String {
        format!("{}:q:{queue}:takes", self.prefix)
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

    /// `P:rl:due`: rate-limit keys with waiting jobs, scored by when the engine
    /// looks at them next (ms); see `lua/limits.lua` for the other limit keys.
    pub fn rate_due(&self) -> String {
        format!("{}:rl:due", self.prefix)
    }

    /// `P:q:{queue}:held`: how many jobs of the queue each limit key holds back
    /// (member `c:{key}` for a concurrency key, `r:{key}` for a rate limit).
    pub fn held(&self, queue: &str) -> String {
        format!("{}:q:{queue}:held", self.prefix)
    }

    /// `P:ck:{key}:run`: the jobs holding a slot of a concurrency key.
    pub fn concurrency_running(&self, key: &str) -> String {
        format!("{}:ck:{key}:run", self.prefix)
    }

    /// `P:ck:{key}:wait`: the jobs waiting for a slot of a concurrency key.
    pub fn concurrency_waiting(&self, key: &str) -> String {
        format!("{}:ck:{key}:wait", self.prefix)
    }

    /// `P:rl:{key}:tat`: a rate limit's next token time (GCRA, ms by the Redis
    /// clock); it expires one period after the last token.
    pub fn rate_token(&self, key: &str) -> String {
        format!("{}:rl:{key}:tat", self.prefix)
    }

    /// `P:rl:{key}:wait`: the jobs waiting for a token of a rate limit.
    pub fn rate_waiting(&self, key: &str) -> String {
        format!("{}:rl:{key}:wait", self.prefix)
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
        assert_eq!(keys.lane("gpu", Lane::new(5, false)), "P:q:gpu:5");
        assert_eq!(keys.lane("gpu", Lane::new(9, true)), "P:q:gpu:9:new");
        assert_eq!(keys.takes("gpu"), "P:q:gpu:takes");
        let lanes = keys.lanes("gpu");
        assert_eq!(lanes.len(), LANES);
        assert_eq!(lanes[0], "P:q:gpu:9");
        assert_eq!(lanes[1], "P:q:gpu:9:new");
        assert_eq!(lanes[LANES - 1], "P:q:gpu:0:new");
        for (i, lane) in Lane::ALL.iter().enumerate() {
            assert_eq!(lane.index(), i);
        }
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
