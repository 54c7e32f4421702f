//! The flow spec a client submits, and its validation into a [`Dag`].
//!
//! This is part of the pure core: no I/O. Validation collects every problem it
//! finds instead of stopping at the first, so a client fixes its flow in one
//! round trip.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::NodeIdx;

mod notify;
pub use notify::{NotifySpec, MAX_NOTIFY_TARGETS, MAX_NOTIFY_URL_LEN, NOTIFY_EVENTS};

/// Default queue of a node that names none.
pub const DEFAULT_QUEUE: &str = "default";
/// The highest priority a node can have (0 is the lowest).
pub const MAX_PRIORITY: u8 = 9;
/// The priority of a node whose node and flow set none: the middle of the range, so
/// that a user can move work either way without touching the rest.
pub const DEFAULT_PRIORITY: u8 = 5;
/// Default maximum number of nodes in one flow.
pub const DEFAULT_MAX_NODES: usize = 10_000;
/// Default maximum length of a node, handler, queue or flow name, in bytes.
pub const DEFAULT_MAX_NAME_LEN: usize = 256;
/// Default maximum size of one node's `data`, as JSON text, in bytes.
pub const DEFAULT_MAX_DATA_BYTES: usize = 256 * 1024;
/// Default number of times a job may be reclaimed from a dead worker before it fails as stalled.
pub const DEFAULT_MAX_STALLED: u32 = 3;
/// Largest `attempts` a node may ask for; beyond this a typo would retry forever.
pub const MAX_ATTEMPTS: u32 = 1_000;
/// Most problems one [`SpecError`] lists; past it they are only counted, in one last
/// `too_many_problems` problem. Without a cap a 1 MiB spec that repeats one parent
/// 260,000 times under a 256-byte node name made 144 MB of problem text, and a
/// response to match (docs/FUZZING.md, finding 2).
pub const MAX_PROBLEMS: usize = 100;

/// A flow as submitted: nodes and the edges between them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowSpec {
    /// Human-readable name; not an id, need not be unique.
    #[serde(default)]
    pub name: String,
    /// The jobs of the flow.
    pub nodes: Vec<NodeSpec>,
    /// Flow-wide behaviour.
    #[serde(default)]
    pub opts: FlowOpts,
    /// The W3C trace context (`00-{trace id}-{span id}-{flags}`) the flow
    /// continues: its trace becomes a child of that span. `POST /flows` sets it from
    /// its `traceparent` header; an embedder may set it directly. Stored with the
    /// spec, so that a restarted engine continues the same trace; a value that is
    /// not a valid traceparent is ignored (see `trace.rs`), never an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// One node (job) of a flow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique within the flow; children refer to it by this name.
    pub name: String,
    /// Nodes whose results this node needs; it runs after all of them completed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// Nodes that need this node's result; the BullMQ-style way of writing the same edges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// Handler that runs the job; defaults to the node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Queue the job goes to; defaults to [`DEFAULT_QUEUE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The node's own input, handed to its handler next to its parents' results.
    #[serde(default)]
    pub data: serde_json::Value,
    /// Retry, timeout and failure behaviour.
    #[serde(default)]
    pub opts: NodeOpts,
    /// Same as `opts.continueOnFailure`, accepted at the node level too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_failure: bool,
    /// A CEL condition over `parents` (results by parent name) and `data`, evaluated
    /// when the node becomes ready: false skips the node, with the reason recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// What the parents' outcomes must be for the node to run; defaults to
    /// `allSuccess`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerRule>,
    /// Run the node once per element of an array in a parent's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapSpec>,
    /// A node that needs no worker: it waits for a signal or a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitSpec>,
    /// 0 (lowest) to 9 (highest): jobs of higher priority are taken first from a
    /// queue. Overrides the flow's `opts.priority`; the default is 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// At most `limit` jobs with the same key run at once, across every worker
    /// process and every flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencySpec>,
    /// At most `limit` jobs with the same key start per `perMs`, across every worker
    /// process and every flow; the others wait (they do not fail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// A concurrency key: at most `limit` jobs of the same key value at once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConcurrencySpec {
    /// A CEL expression over `data` and `parents` (and `item`, `index` in a map's
    /// elements) that gives the key: a string or a number, e.g. `data.tenant`.
    pub key: String,
    /// How many jobs of one key may run at once (at least 1).
    pub limit: u32,
    /// What a job does when its key is at its limit.
    #[serde(default)]
    pub strategy: ConcurrencyStrategy,
}

/// What a job does when its concurrency key is at its limit.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ConcurrencyStrategy {
    /// Wait for a slot, without holding a worker; keys take turns, so a key with
    /// many waiting jobs does not delay a key with few.
    #[default]
    Queue,
    /// The new job is cancelled (its node ends `cancelled`, with the reason).
    CancelNewest,
    /// The oldest running job of the key is cancelled and the new one takes its
    /// slot.
    CancelInProgress,
}

impl ConcurrencyStrategy {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyStrategy::Queue => "queue",
            ConcurrencyStrategy::CancelNewest => "cancelNewest",
            ConcurrencyStrategy::CancelInProgress => "cancelInProgress",
        }
    }
}

/// A rate limit: at most `limit` jobs of the same key start per `perMs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    /// A CEL expression giving the key, as for [`ConcurrencySpec::key`]; a constant
    /// such as `'payments-api'` makes one limit for every job of the node.
    pub key: String,
    /// How many jobs may start per period (at least 1); up to that many may start at
    /// once after a quiet period.
    pub limit: u32,
    /// The period in ms (at least 1).
    pub per_ms: u64,
}

/// What a node's parents' outcomes must be for it to run. A parent that failed with
/// `continueOnFailure` counts as a success for `allSuccess` (as it always has) and as
/// a failure for the others.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TriggerRule {
    /// Every parent completed (today's behaviour).
    #[default]
    AllSuccess,
    /// Every parent ended, whatever the outcome.
    AllDone,
    /// At least one parent completed; the node runs as soon as one has.
    OneSuccess,
    /// Every parent ended and none failed (skipped parents are fine): the join of
    /// conditional branches.
    NoneFailed,
    /// Every parent failed: an error handler.
    AllFailed,
}

impl TriggerRule {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "allSuccess",
            TriggerRule::AllDone => "allDone",
            TriggerRule::OneSuccess => "oneSuccess",
            TriggerRule::NoneFailed => "noneFailed",
            TriggerRule::AllFailed => "allFailed",
        }
    }
}

/// Default most elements of one map.
pub const DEFAULT_MAP_MAX_ITEMS: u32 = 10_000;
/// Largest `maxItems` a map may ask for.
pub const MAX_MAP_ITEMS: u32 = 100_000;

/// A dynamic fan-out: the node runs once per element of an array found at `path` in
/// the result of its parent `from`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MapSpec {
    /// The parent whose result holds the array.
    pub from: String,
    /// A JSON Pointer (RFC 6901) into that result; `""` is the whole result.
    #[serde(default)]
    pub path: String,
    /// More elements than this fail the node; defaults to 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items: Option<u32>,
    /// At most this many elements are queued or running at once; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
}

/// A node that waits instead of running a job: for a signal, for a duration, or until
/// a time. Exactly one of `signal`, `forMs` and `until`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitSpec {
    /// Completes when this signal is delivered to the node; the payload is its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// With `signal`: how long to wait before failing (or taking `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// With `signal` and `timeoutMs`: the result taken at the timeout instead of failing.
    /// Any JSON value, `null` included (present `null` is a default, absent is none).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub default: Option<serde_json::Value>,
    /// A durable timer: completes this long after the node became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    /// A durable timer: completes at this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// Per-node behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeOpts {
    /// Total tries of the job in one run, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Delay between tries; none means retry at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Time limit of one try; a try that exceeds it fails (retryable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// When the node fails for good, its children still run with `{"error": ...}` in its slot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_failure: bool,
    /// How often a job may be reclaimed from a worker that vanished before it fails as stalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stalled: Option<u32>,
}

fn default_attempts() -> u32 {
    1
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            attempts: 1,
            backoff: None,
            timeout_ms: None,
            continue_on_failure: false,
            max_stalled: None,
        }
    }
}

/// Delay before a retry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    /// How the delay grows with the attempt number.
    #[serde(rename = "type")]
    pub kind: BackoffKind,
    /// Base delay.
    pub delay_ms: u64,
}

/// Shape of a backoff.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum BackoffKind {
    /// The same delay before every retry.
    Fixed,
    /// `delayMs * 2^(n-1)` before the n-th retry.
    Exponential,
}

impl Backoff {
    /// Delay before retry number `retry` (1 for the first retry), capped at one day so
    /// that an exponent cannot overflow into a job that never runs.
    pub fn delay_for(&self, retry: u32) -> u64 {
        const DAY_MS: u64 = 24 * 3600 * 1000;
        let delay = match self.kind {
            BackoffKind::Fixed => self.delay_ms,
            BackoffKind::Exponential => {
                let shift = retry.saturating_sub(1).min(40);
                self.delay_ms.saturating_mul(1u64 << shift)
            }
        };
        delay.min(DAY_MS)
    }
}

/// Flow-wide behaviour.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowOpts {
    /// What a permanent node failure does to the rest of the flow.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The priority of every node that sets none (0 to 9, default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// At most `limit` flows with the same key run at once. The key is a CEL
    /// expression over `name` (the flow's name) and `data` (each node's data by
    /// node name), evaluated when the flow is submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencySpec>,
    /// Where to POST the flow's final view when it ends (callbacks; delivered at
    /// least once by `crate::notify`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifySpec>,
    /// How long this flow is kept once it ended (`90s`, `7d`, `forever`),
    /// whatever its outcome; overrides the engine's `--retain-completed` and
    /// `--retain-failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

/// What a permanent node failure does to the rest of the flow.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    /// Independent branches finish; the failed node's descendants are skipped.
    #[default]
    Continue,
    /// Everything not yet finished is cancelled at the first permanent failure.
    FailFast,
}

/// Limits that keep one flow from exhausting the engine.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most nodes in one flow.
    pub max_nodes: usize,
    /// Longest name (node, handler, queue, flow), in bytes.
    pub max_name_len: usize,
    /// Largest `data` of one node, as JSON text, in bytes.
    pub max_data_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: DEFAULT_MAX_NODES,
            max_name_len: DEFAULT_MAX_NAME_LEN,
            max_data_bytes: DEFAULT_MAX_DATA_BYTES,
        }
    }
}

/// A compiled concurrency key.
#[derive(Debug)]
pub struct ConcurrencyDef {
    /// The key expression.
    pub key: Condition,
    /// Jobs of one key at once.
    pub limit: u32,
    /// What a job does at the limit.
    pub strategy: ConcurrencyStrategy,
}

/// A compiled rate limit.
#[derive(Debug)]
pub struct RateLimitDef {
    /// The key expression.
    pub key: Condition,
    /// Jobs per period.
    pub limit: u32,
    /// The period in ms.
    pub per_ms: u64,
}

/// The most a limit's `limit` may be: beyond it, a limit limits nothing.
pub const MAX_LIMIT: u32 = 1_000_000;

/// One thing wrong with a flow spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Stable machine-readable kind, e.g. `cycle` or `unknown_parent`.
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// The node the problem is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Why a spec was refused: every problem found (up to [`MAX_PROBLEMS`]), not just the first.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid flow: {}", summary(.problems))]
pub struct SpecError {
    /// All problems, in the order found; past [`MAX_PROBLEMS`] a last
    /// `too_many_problems` one counts the rest.
    pub problems: Vec<Problem>,
}

fn summary(problems: &[Problem]) -> String {
    let mut out = problems
        .iter()
        .take(3)
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > 3 {
        out.push_str(&format!(" (and {} more)", problems.len() - 3));
    }
    out
}

/// A compiled CEL expression (a `when` condition or a limit's key), with its source
/// for messages.
#[derive(Debug)]
pub struct Condition {
    /// The expression as written.
    pub source: String,
    /// The compiled CEL program.
    pub program: cel::Program,
}

/// A validated map: the source parent as an index.
#[derive(Debug, Clone)]
pub struct MapDef {
    /// The parent whose result holds the array.
    pub from: NodeIdx,
    /// JSON Pointer into its result.
    pub path: String,
    /// Most elements.
    pub max_items: u32,
    /// Most elements queued or running at once (`u32::MAX`: no cap).
    pub max_parallel: u32,
}

/// What a wait node waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitDef {
    /// A signal delivered to the node.
    Signal {
        /// The signal's name, as the spec gives it (shown to people).
        name: String,
        /// Fail (or take `default`) this long after the wait began.
        timeout_ms: Option<u64>,
        /// The result at the timeout, as JSON text, instead of failing.
        default: Option<Arc<str>>,
    },
    /// This long after the wait began.
    For(u64),
    /// At this time (ms since the epoch).
    Until(u64),
}

/// A node of a validated flow, with defaults filled in and edges as indices.
#[derive(Debug, Clone)]
pub struct DagNode {
    /// Unique name within the flow.
    pub name: Arc<str>,
    /// Handler name (defaulted).
    pub handler: Arc<str>,
    /// Queue name (defaulted).
    pub queue: Arc<str>,
    /// The node's own data as JSON text, kept as text so that building a job's input never re-serializes it.
    pub data: Arc<str>,
    /// Behaviour, with `continueOnFailure` merged from both places it may be written.
    pub opts: NodeOpts,
    /// Parents, in the order first written.
    pub parents: Vec<NodeIdx>,
    /// Children, in the order first written.
    pub children: Vec<NodeIdx>,
    /// The condition, compiled.
    pub when: Option<Arc<Condition>>,
    /// What the parents' outcomes must be.
    pub trigger: TriggerRule,
    /// Set on a map node.
    pub map: Option<MapDef>,
    /// Set on a wait node.
    pub wait: Option<WaitDef>,
    /// The node's priority, or the flow's, or the default.
    pub priority: u8,
    /// Its concurrency key, compiled.
    pub concurrency: Option<Arc<ConcurrencyDef>>,
    /// Its rate limit, compiled.
    pub rate_limit: Option<Arc<RateLimitDef>>,
}

/// A validated flow: acyclic, every edge known, both edge directions agreeing.
#[derive(Debug, Clone)]
pub struct Dag {
    /// The flow's name.
    pub name: String,
    /// Flow-wide behaviour.
    pub opts: FlowOpts,
    /// Nodes by index; the index is the node's position in the submitted spec.
    pub nodes: Vec<DagNode>,
    /// The flow concurrency key, evaluated, with its limit and strategy.
    pub flow_key: Option<(String, u32, ConcurrencyStrategy)>,
    /// `opts.retention`, parsed.
    pub retention: Option<crate::retention::Keep>,
    /// The caller's trace context from the spec, unparsed: the flow actor puts it
    /// (or a span of the same trace) in each job envelope.
    pub traceparent: Option<Arc<str>>,
    index: HashMap<Arc<str>, NodeIdx>,
}

impl Dag {
    /// Index of the node with this name.
    pub fn lookup(&self, name: &str) -> Option<NodeIdx> {
        self.index.get(name).copied()
    }

    /// The node at `idx`. Indices come from this DAG, so they are always in range.
    pub fn node(&self, idx: NodeIdx) -> &DagNode {
        &self.nodes[idx.as_usize()]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A validated DAG is never empty; this exists for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node index.
    pub fn indices(&self) -> impl Iterator<Item = NodeIdx> + '_ {
        (0..self.nodes.len()).map(NodeIdx::from_usize)
    }
}

/// Parses a spec from JSON text, naming the line and column of a syntax error.
pub fn parse(json: &[u8]) -> Result<FlowSpec, serde_json::Error> {
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // serde reads a struct from an array as well (`["x", [{"name": "a"}]]` made
        // a flow): only an object is a spec. Reading the text as an object gives
        // the JSON's own error, malformed or a type error with its position.
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(json)?;
    }
    serde_json::from_slice(json)
}

/// Checks a spec and builds its DAG, reporting every problem at once.
pub fn validate(spec: &FlowSpec, limits: &Limits) -> Result<Dag, SpecError> {
    let mut problems = Vec::new();
    // Problems past MAX_PROBLEMS are counted, not kept: memory stays bounded.
    let mut unlisted = 0usize;
    let mut push = |code: &'static str, node: Option<&str>, message: String| {
        if problems.len() < MAX_PROBLEMS {
            problems.push(Problem {
                code,
                message,
                node: node.map(str::to_owned),
            })
        } else {
            unlisted += 1;
        }
    };

    if spec.nodes.is_empty() {
        push("empty_flow", None, "the flow has no nodes".to_owned());
    }
    let mut flow_key_value = None;
    if let Some(c) = &spec.opts.concurrency {
        match flow_key(spec, c) {
            Ok(key) => flow_key_value = Some((key, c.limit, c.strategy)),
            Err(e) => push(
                "bad_concurrency",
                None,
                format!("the flow's concurrency key `{}` is refused: {e}", c.key),
            ),
        }
        if c.limit == 0 || c.limit > MAX_LIMIT {
            push(
                "bad_concurrency",
                None,
                format!(
                    "the flow's concurrency limit is {}; it must be from 1 to {MAX_LIMIT}",
                    c.limit
                ),
            );
        }
    }
    let mut retention = None;
    if let Some(text) = &spec.opts.retention {
        match text.parse::<crate::retention::Keep>() {
            Ok(keep) => retention = Some(keep),
            Err(e) => push("bad_retention", None, format!("opts.retention: {e}")),
        }
    }
    if let Some(priority) = spec.opts.priority.filter(|p| *p > MAX_PRIORITY) {
        push(
            "bad_priority",
            None,
            format!("the flow has priority {priority}; priorities go from 0 to {MAX_PRIORITY}"),
        );
    }
    for (code, message) in notify::problems(&spec.opts.notify) {
        push(code, None, message);
    }
    if spec.nodes.len() > limits.max_nodes {
        push(
            "too_many_nodes",
            None,
            format!(
                "the flow has {} nodes, more than the limit of {}",
                spec.nodes.len(),
                limits.max_nodes
            ),
        );
        // Checking each of a million nodes would only make the answer huge.
        return Err(SpecError { problems });
    }
    if spec.name.len() > limits.max_name_len {
        push(
            "name_too_long",
            None,
            format!(
                "the flow name is {} bytes, more than the limit of {}",
                spec.name.len(),
                limits.max_name_len
            ),
        );
    }

    let mut index: HashMap<Arc<str>, NodeIdx> = HashMap::with_capacity(spec.nodes.len());
    let mut names: Vec<Arc<str>> = Vec::with_capacity(spec.nodes.len());
    for (i, node) in spec.nodes.iter().enumerate() {
        let name: Arc<str> = Arc::from(node.name.as_str());
        if node.name.is_empty() {
            push("empty_name", None, format!("node #{i} has an empty name"));
        }
        check_name(&mut push, &node.name, "node name", &node.name, limits);
        if let Some(h) = &node.handler {
            if h.is_empty() {
                push(
                    "empty_name",
                    Some(&node.name),
                    format!("node '{}' has an empty handler name", node.name),
                );
            }
            check_name(&mut push, &node.name, "handler name", h, limits);
        }
        if let Some(q) = &node.queue {
            if q.is_empty()
                || !q
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                push(
                    "bad_queue_name",
                    Some(&node.name),
                    format!(
                        "node '{}' names queue '{}': a queue name is ASCII letters, digits, '-', '_' or '.'",
                        node.name, q
                    ),
                );
            }
            check_name(&mut push, &node.name, "queue name", q, limits);
        }
        if node.opts.attempts == 0 || node.opts.attempts > MAX_ATTEMPTS {
            push(
                "bad_attempts",
                Some(&node.name),
                format!(
                    "node '{}' asks for {} attempts; allowed are 1 to {MAX_ATTEMPTS}",
                    node.name, node.opts.attempts
                ),
            );
        }
        if node.opts.timeout_ms == Some(0) {
            push(
                "bad_timeout",
                Some(&node.name),
                format!("node '{}' has a timeout of 0 ms", node.name),
            );
        }
        let data_len = serde_json::to_string(&node.data)
            .map(|s| s.len())
            .unwrap_or(0);
        if data_len > limits.max_data_bytes {
            push(
                "data_too_large",
                Some(&node.name),
                format!(
                    "node '{}' has {data_len} bytes of data, more than the limit of {}",
                    node.name, limits.max_data_bytes
                ),
            );
        }
        if let Some(when) = &node.when {
            if let Err(e) = cel::Program::compile(when) {
                push(
                    "bad_condition",
                    Some(&node.name),
                    format!(
                        "node '{}' has a condition that does not parse: {}",
                        node.name,
                        one_line(&e.to_string())
                    ),
                );
            }
        }
        if let Some(map) = &node.map {
            if !map.path.is_empty() && !map.path.starts_with('/') {
                push(
                    "bad_map",
                    Some(&node.name),
                    format!(
                        "node '{}' maps over path '{}': a JSON Pointer is empty or starts with '/'",
                        node.name, map.path
                    ),
                );
            }
            if map.max_items.is_some_and(|m| m == 0 || m > MAX_MAP_ITEMS) {
                push(
                    "bad_map",
                    Some(&node.name),
                    format!(
                        "node '{}' has maxItems {}; allowed are 1 to {MAX_MAP_ITEMS}",
                        node.name,
                        map.max_items.unwrap_or(0)
                    ),
                );
            }
            if map.max_parallel == Some(0) {
                push(
                    "bad_map",
                    Some(&node.name),
                    format!("node '{}' has maxParallel 0", node.name),
                );
            }
            if node.wait.is_some() {
                push(
                    "bad_wait",
                    Some(&node.name),
                    format!("node '{}' is both a map and a wait", node.name),
                );
            }
        }
        let limit_keys = [
            node.concurrency
                .as_ref()
                .map(|c| ("bad_concurrency", "concurrency", &c.key, c.limit)),
            node.rate_limit
                .as_ref()
                .map(|r| ("bad_rate_limit", "rateLimit", &r.key, r.limit)),
        ];
        // A key may read `data` and `parents`, and `item` and `index` in a map's
        // elements; any other name would only fail when the node runs.
        let known: &[&str] = if node.map.is_some() {
            &["data", "parents", "item", "index"]
        } else {
            &["data", "parents"]
        };
        for (code, what, key, limit) in limit_keys.into_iter().flatten() {
            match cel::Program::compile(key) {
                Err(e) => push(
                    code,
                    Some(&node.name),
                    format!(
                        "node '{}' has a {what} key that does not parse: {}",
                        node.name,
                        one_line(&e.to_string())
                    ),
                ),
                Ok(program) => {
                    let references = program.references();
                    let unknown: Vec<&str> = references
                        .variables()
                        .into_iter()
                        .filter(|v| !known.contains(v))
                        .collect();
                    if !unknown.is_empty() {
                        push(
                            code,
                            Some(&node.name),
                            format!(
                                "node '{}' has a {what} key that reads {}; it may read {}",
                                node.name,
                                unknown.join(", "),
                                known.join(", ")
                            ),
                        );
                    }
                }
            }
            if limit == 0 || limit > MAX_LIMIT {
                push(
                    code,
                    Some(&node.name),
                    format!(
                        "node '{}' has a {what} limit of {limit}; it must be from 1 to {MAX_LIMIT}",
                        node.name
                    ),
                );
            }
            if node.wait.is_some() {
                push(
                    code,
                    Some(&node.name),
                    format!(
                        "node '{}' waits and runs no job, so it takes no {what}",
                        node.name
                    ),
                );
            }
        }
        if node.rate_limit.as_ref().is_some_and(|r| r.per_ms == 0) {
            push(
                "bad_rate_limit",
                Some(&node.name),
                format!("node '{}' has a rateLimit with perMs 0", node.name),
            );
        }
        if node.priority.is_some() && node.wait.is_some() {
            push(
                "bad_priority",
                Some(&node.name),
                format!(
                    "node '{}' waits and runs no job, so it takes no priority",
                    node.name
                ),
            );
        }
        if let Some(priority) = node.priority.filter(|p| *p > MAX_PRIORITY) {
            push(
                "bad_priority",
                Some(&node.name),
                format!(
                    "node '{}' has priority {priority}; priorities go from 0 to {MAX_PRIORITY}",
                    node.name
                ),
            );
        }
        if let Some(wait) = &node.wait {
            let kinds = [
                wait.signal.is_some(),
                wait.for_ms.is_some(),
                wait.until.is_some(),
            ]
            .iter()
            .filter(|k| **k)
            .count();
            if kinds != 1 {
                push(
                    "bad_wait",
                    Some(&node.name),
                    format!(
                        "node '{}' must wait for exactly one of signal, forMs and until",
                        node.name
                    ),
                );
            }
            if wait.signal.is_none() && (wait.timeout_ms.is_some() || wait.default.is_some()) {
                push(
                    "bad_wait",
                    Some(&node.name),
                    format!(
                        "node '{}' gives timeoutMs or default, which only a signal wait takes",
                        node.name
                    ),
                );
            }
            if wait.default.is_some() && wait.timeout_ms.is_none() {
                push(
                    "bad_wait",
                    Some(&node.name),
                    format!("node '{}' gives a default without a timeoutMs", node.name),
                );
            }
            if wait.signal.as_deref() == Some("") {
                push(
                    "bad_wait",
                    Some(&node.name),
                    format!("node '{}' waits for a signal with an empty name", node.name),
                );
            }
        }
        if index.contains_key(&name) {
            push(
                "duplicate_name",
                Some(&node.name),
                format!("node name '{}' is used more than once", node.name),
            );
        } else {
            index.insert(name.clone(), NodeIdx::from_usize(i));
        }
        names.push(name);
    }

    // Each node's written parents and children as sets, so that the edge-mismatch
    // checks below cost one lookup per edge. Scanning the lists instead made them
    // quadratic: a 966 KB spec of 9,500 nodes took 1.2 s to validate
    // (docs/FUZZING.md, finding 1).
    let parent_names: Vec<HashSet<&str>> = spec
        .nodes
        .iter()
        .map(|n| n.parents.iter().map(String::as_str).collect())
        .collect();
    let child_names: Vec<HashSet<&str>> = spec
        .nodes
        .iter()
        .map(|n| n.children.iter().map(String::as_str).collect())
        .collect();

    // Edges, from both directions. An edge written on one side only is fine; written
    // on both sides it must agree, which it does by construction of the set below.
    // It disagrees when a node lists a child that does not list it back while that
    // child does list parents of its own (it then stated its parents completely).
    let mut parents: Vec<Vec<NodeIdx>> = vec![Vec::new(); spec.nodes.len()];
    let mut children: Vec<Vec<NodeIdx>> = vec![Vec::new(); spec.nodes.len()];
    let mut edges: HashSet<(NodeIdx, NodeIdx)> = HashSet::new();
    let mut add_edge = |from: NodeIdx,
                        to: NodeIdx,
                        parents: &mut Vec<Vec<NodeIdx>>,
                        children: &mut Vec<Vec<NodeIdx>>| {
        if edges.insert((from, to)) {
            parents[to.as_usize()].push(from);
            children[from.as_usize()].push(to);
        }
    };
    for (i, node) in spec.nodes.iter().enumerate() {
        let me = NodeIdx::from_usize(i);
        // A duplicate name's edges would be ambiguous; its problem is already reported.
        if index.get(node.name.as_str()) != Some(&me) {
            continue;
        }
        let mut seen_parents = HashSet::new();
        for p in &node.parents {
            if !seen_parents.insert(p.as_str()) {
                push(
                    "duplicate_edge",
                    Some(&node.name),
                    format!("node '{}' lists parent '{p}' more than once", node.name),
                );
                continue;
            }
            if p == &node.name {
                push(
                    "self_edge",
                    Some(&node.name),
                    format!("node '{}' lists itself as a parent", node.name),
                );
                continue;
            }
            match index.get(p.as_str()) {
                Some(&pi) => add_edge(pi, me, &mut parents, &mut children),
                None => push(
                    "unknown_parent",
                    Some(&node.name),
                    format!("node '{}' names unknown parent '{p}'", node.name),
                ),
            }
        }
        let mut seen_children = HashSet::new();
        for c in &node.children {
            if !seen_children.insert(c.as_str()) {
                push(
                    "duplicate_edge",
                    Some(&node.name),
                    format!("node '{}' lists child '{c}' more than once", node.name),
                );
                continue;
            }
            if c == &node.name {
                push(
                    "self_edge",
                    Some(&node.name),
                    format!("node '{}' lists itself as a child", node.name),
                );
                continue;
            }
            match index.get(c.as_str()) {
                Some(&ci) => {
                    let child = &spec.nodes[ci.as_usize()];
                    if !child.parents.is_empty()
                        && !parent_names[ci.as_usize()].contains(node.name.as_str())
                    {
                        push(
                            "edge_mismatch",
                            Some(&node.name),
                            format!(
                                "node '{}' lists child '{c}', but '{c}' does not list '{}' among its parents",
                                node.name, node.name
                            ),
                        );
                        continue;
                    }
                    add_edge(me, ci, &mut parents, &mut children)
                }
                None => push(
                    "unknown_child",
                    Some(&node.name),
                    format!("node '{}' names unknown child '{c}'", node.name),
                ),
            }
        }
    }
    // The other direction of disagreement: a parent that lists its children
    // completely but leaves this node out.
    for (i, node) in spec.nodes.iter().enumerate() {
        let me = NodeIdx::from_usize(i);
        if index.get(node.name.as_str()) != Some(&me) {
            continue;
        }
        for p in &node.parents {
            if let Some(&pi) = index.get(p.as_str()) {
                let parent = &spec.nodes[pi.as_usize()];
                if pi != me
                    && !parent.children.is_empty()
                    && !child_names[pi.as_usize()].contains(node.name.as_str())
                {
                    push(
                        "edge_mismatch",
                        Some(&node.name),
                        format!(
                            "node '{}' lists parent '{p}', but '{p}' does not list '{}' among its children",
                            node.name, node.name
                        ),
                    );
                }
            }
        }
    }

    for (i, node) in spec.nodes.iter().enumerate() {
        if let Some(map) = &node.map {
            let from = index.get(map.from.as_str());
            if !from.is_some_and(|f| parents[i].contains(f)) {
                push(
                    "bad_map",
                    Some(&node.name),
                    format!(
                        "node '{}' maps over '{}', which is not among its parents",
                        node.name, map.from
                    ),
                );
            }
        }
    }
    // A map's elements are named `{map}[{index}]` on the wire and in views: a node
    // may not take such a name.
    for node in &spec.nodes {
        if let Some((base, _)) = element_name(&node.name) {
            if spec.nodes.iter().any(|n| n.name == base && n.map.is_some()) {
                push(
                    "reserved_name",
                    Some(&node.name),
                    format!(
                        "node name '{}' is reserved for an element of the map '{base}'",
                        node.name
                    ),
                );
            }
        }
    }

    if let Some(cycle) = find_cycle(&children) {
        let mut path: Vec<&str> = cycle.iter().map(|i| names[i.as_usize()].as_ref()).collect();
        if let Some(first) = path.first().copied() {
            path.push(first);
        }
        push(
            "cycle",
            Some(&names[cycle[0].as_usize()]),
            format!("the flow has a cycle: {}", path.join(" -> ")),
        );
    }
    if unlisted > 0 {
        problems.push(Problem {
            code: "too_many_problems",
            message: format!(
                "{unlisted} more problems are not listed (at most {MAX_PROBLEMS} are)"
            ),
            node: None,
        });
    }

    if !problems.is_empty() {
        return Err(SpecError { problems });
    }
    let flow_key = flow_key_value;

    // Handler, queue and data strings repeat across a flow's nodes ("default",
    // "null", one handler for a fan-out): one allocation each, shared. A waiting
    // flow lives in memory for as long as it waits (docs/PERFORMANCE.md).
    let mut shared: HashSet<Arc<str>> = HashSet::new();
    let mut intern = |text: &str| -> Arc<str> {
        if let Some(s) = shared.get(text) {
            return Arc::clone(s);
        }
        let s: Arc<str> = Arc::from(text);
        shared.insert(Arc::clone(&s));
        s
    };
    let nodes = spec
        .nodes
        .iter()
        .zip(parents)
        .zip(children)
        .zip(names)
        .map(|(((node, parents), children), name)| {
            let mut opts = node.opts.clone();
            opts.continue_on_failure |= node.continue_on_failure;
            let map = node.map.as_ref().and_then(|m| {
                Some(MapDef {
                    from: *index.get(m.from.as_str())?,
                    path: m.path.clone(),
                    max_items: m.max_items.unwrap_or(DEFAULT_MAP_MAX_ITEMS),
                    max_parallel: m.max_parallel.unwrap_or(u32::MAX),
                })
            });
            let wait = node
                .wait
                .as_ref()
                .map(|w| match (&w.signal, w.for_ms, w.until) {
                    (Some(name), _, _) => WaitDef::Signal {
                        name: name.clone(),
                        timeout_ms: w.timeout_ms,
                        default: w
                            .default
                            .as_ref()
                            .map(|d| Arc::from(d.to_string().as_str())),
                    },
                    (None, Some(ms), _) => WaitDef::For(ms),
                    (None, None, until) => WaitDef::Until(until.unwrap_or(0)),
                });
            DagNode {
                when: node.when.as_ref().and_then(|w| {
                    Some(Arc::new(Condition {
                        source: w.clone(),
                        program: cel::Program::compile(w).ok()?,
                    }))
                }),
                trigger: node.trigger.unwrap_or_default(),
                map,
                wait,
                priority: node
                    .priority
                    .or(spec.opts.priority)
                    .unwrap_or(DEFAULT_PRIORITY),
                concurrency: node.concurrency.as_ref().and_then(|c| {
                    Some(Arc::new(ConcurrencyDef {
                        key: compile(&c.key)?,
                        limit: c.limit,
                        strategy: c.strategy,
                    }))
                }),
                rate_limit: node.rate_limit.as_ref().and_then(|r| {
                    Some(Arc::new(RateLimitDef {
                        key: compile(&r.key)?,
                        limit: r.limit,
                        per_ms: r.per_ms,
                    }))
                }),
                handler: match node.handler.as_deref() {
                    Some(handler) => intern(handler),
                    None => name.clone(),
                },
                queue: intern(node.queue.as_deref().unwrap_or(DEFAULT_QUEUE)),
                data: intern(
                    &serde_json::to_string(&node.data).unwrap_or_else(|_| "null".to_owned()),
                ),
                name,
                opts,
                parents,
                children,
            }
        })
        .collect();
    Ok(Dag {
        name: spec.name.clone(),
        opts: spec.opts.clone(),
        nodes,
        flow_key,
        retention,
        traceparent: spec.traceparent.as_deref().map(Arc::from),
        index,
    })
}

/// Evaluates a flow's concurrency key with `name` and `data` (each node's data by
/// name) bound.
fn flow_key(spec: &FlowSpec, c: &ConcurrencySpec) -> Result<String, String> {
    let program = cel::Program::compile(&c.key)
        .map_err(|e| format!("it does not parse: {}", one_line(&e.to_string())))?;
    let mut data = serde_json::Map::new();
    for node in &spec.nodes {
        data.insert(node.name.clone(), node.data.clone());
    }
    let mut ctx = cel::Context::default();
    ctx.add_variable("name", spec.name.clone())
        .map_err(|e| e.to_string())?;
    ctx.add_variable("data", serde_json::Value::Object(data))
        .map_err(|e| e.to_string())?;
    key_text(program.execute(&ctx).map_err(|e| e.to_string())?)
}

/// A limit key from what its expression gave: a string, or a number or boolean as
/// text, of 1 to [`crate::state::MAX_KEY_LEN`] bytes; the error says what is wrong
/// (the caller names the expression).
pub(crate) fn key_text(value: cel::Value) -> Result<String, String> {
    let key = match value {
        cel::Value::String(s) => s.to_string(),
        cel::Value::Int(n) => n.to_string(),
        cel::Value::UInt(n) => n.to_string(),
        cel::Value::Float(n) => n.to_string(),
        cel::Value::Bool(b) => b.to_string(),
        other => {
            return Err(format!(
                "it must give a string, a number or a boolean, it gave {:?}",
                other.type_of()
            ))
        }
    };
    if key.is_empty() || key.len() > crate::state::MAX_KEY_LEN {
        return Err(format!(
            "it gave a key of {} bytes; it must have 1 to {}",
            key.len(),
            crate::state::MAX_KEY_LEN
        ));
    }
    Ok(key)
}

/// A CEL expression compiled, or `None` when it does not parse (validation has
/// refused the spec by then).
fn compile(source: &str) -> Option<Condition> {
    Some(Condition {
        source: source.to_owned(),
        program: cel::Program::compile(source).ok()?,
    })
}

/// Tells a present `null` (`Some(Null)`) from an absent field (`None`): for serde's
/// `deserialize_with` next to `default`.
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Splits an element name `{map}[{index}]` into the map's name and the index.
pub fn element_name(name: &str) -> Option<(&str, u32)> {
    let inner = name.strip_suffix(']')?;
    let open = inner.rfind('[')?;
    let digits = &inner[open + 1..];
    // One spelling per element: `m[1]`, never `m[01]`.
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    Some((&inner[..open], digits.parse().ok()?))
}

/// An error message on one line (CEL's parse errors span several, with a caret).
fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_name(
    push: &mut impl FnMut(&'static str, Option<&str>, String),
    node: &str,
    what: &str,
    value: &str,
    limits: &Limits,
) {
    if value.len() > limits.max_name_len {
        let mut shown: String = node.chars().take(40).collect();
        if shown.len() < node.len() {
            shown.push('…');
        }
        push(
            "name_too_long",
            Some(&shown),
            format!(
                "{what} of node '{shown}' is {} bytes, more than the limit of {}",
                value.len(),
                limits.max_name_len
            ),
        );
    }
}

/// Finds one cycle, if any, as the list of nodes on it in edge order. Iterative so
/// that a chain of ten thousand nodes cannot overflow the stack.
fn find_cycle(children: &[Vec<NodeIdx>]) -> Option<Vec<NodeIdx>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let n = children.len();
    let mut mark = vec![Mark::New; n];
    for start in 0..n {
        if mark[start] != Mark::New {
            continue;
        }
        // Stack of (node, next child position).
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::OnStack;
        while let Some(&mut (node, ref mut pos)) = stack.last_mut() {
            if let Some(&child) = children[node].get(*pos) {
                *pos += 1;
                let c = child.as_usize();
                match mark[c] {
                    Mark::New => {
                        mark[c] = Mark::OnStack;
                        stack.push((c, 0));
                    }
                    Mark::OnStack => {
                        let from = stack.iter().position(|&(s, _)| s == c).unwrap_or(0);
                        return Some(
                            stack[from..]
                                .iter()
                                .map(|&(s, _)| NodeIdx::from_usize(s))
                                .collect(),
                        );
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
