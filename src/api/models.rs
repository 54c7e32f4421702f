//! The wire types of the API: request parameters, replies the API makes itself,
//! WebSocket messages, and schema mirrors of the engine's views for the OpenAPI
//! description.
//!
//! The engine's views (`FlowView`, `NodeView`, `FlowSummary`, `FlowPage`,
//! `FlowEvent`) are the REST bodies as they are; the engine crate does not depend
//! on utoipa, so each has a mirror here that only describes it. A test checks that
//! every mirror names exactly the fields its view serializes, so the description
//! cannot drift from the wire.

use std::collections::HashMap;
use std::str::FromStr;

use dagflow_actors::engine::MAX_PAGE;
use dagflow_actors::{FlowEvent, FlowFilter, FlowId, FlowStatus, FlowView, ListQuery};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::errors::HttpError;

/// Longest `Idempotency-Key` accepted; keys are stored with the flow.
pub(crate) const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// The answer to `POST /flows`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatedFlow {
    /// The new flow's id (or, with a repeated `Idempotency-Key`, the first flow's).
    #[schema(example = "0194e5c2-7b1d-7c3e-9a40-2f6c1d8e9b10")]
    pub(crate) flow_id: String,
}

/// `GET /healthz` and a passing `GET /readyz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Health {
    /// `ok` (alive) or `ready`.
    pub(crate) status: String,
    /// Each readiness check and its outcome (`ok` or the error); only on `/readyz`.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub(crate) checks: HashMap<String, String>,
}

/// The error shape of every failed request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub(crate) error: ErrorObject,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ErrorObject {
    /// Stable and machine-readable: `malformed_json`, `invalid_flow`, `flow_not_found`,
    /// `node_not_found`, `unknown_queue`, `conflict`, `unauthorized`,
    /// `redis_unavailable`, ...
    #[schema(example = "invalid_flow")]
    pub(crate) code: String,
    /// For people.
    pub(crate) message: String,
    /// Context: `{"problems": [...]}` for an invalid flow, `{"line", "column"}` for
    /// malformed JSON, otherwise `null`. Each problem is `{"code", "message",
    /// "node"?}`; its `code` is one of `empty_flow`, `too_many_nodes`,
    /// `name_too_long`, `empty_name`, `reserved_name`, `duplicate_name`,
    /// `bad_queue_name`, `bad_attempts`, `bad_timeout`, `data_too_large`,
    /// `bad_condition`, `bad_map`, `bad_wait`, `bad_priority`, `bad_concurrency`,
    /// `bad_rate_limit`, `bad_retention`, `bad_notify`, `unknown_parent`, `unknown_child`, `self_edge`,
    /// `duplicate_edge`, `edge_mismatch`, `cycle`, `too_many_problems` (the count of
    /// those past the first 100), or `invalid_spec` (JSON that is not a flow spec,
    /// with `line` and `column`).
    #[schema(value_type = Object, nullable)]
    pub(crate) details: serde_json::Value,
}

/// The query of `GET /flows`, checked.
pub(crate) fn list_query(params: &HashMap<String, String>) -> Result<ListQuery, HttpError> {
    let mut query = ListQuery::default();
    for (key, value) in params {
        match key.as_str() {
            "status" => {
                query.status = Some(FlowStatus::parse(value).ok_or_else(|| {
                    HttpError::bad_request(
                        "invalid_query",
                        format!(
                            "status '{value}' is not one of running, completed, failed, cancelled"
                        ),
                    )
                })?)
            }
            "limit" => {
                query.limit = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            HttpError::bad_request(
                                "invalid_query",
                                format!("limit '{value}' is not a number from 1 to {MAX_PAGE}"),
                            )
                        })?,
                )
            }
            "cursor" => {
                // Checked here: the engine calls a bad cursor a conflict, which is
                // the wrong status for a malformed query. Only the hyphenated form
                // that `nextCursor` has, as the published pattern says: the other
                // spellings a UUID parser takes would make the document lie.
                let hyphenated = value.len() == 36;
                hyphenated
                    .then_some(())
                    .ok_or(())
                    .and_then(|()| FlowId::from_str(value).map_err(|_| ()))
                    .map_err(|_| {
                        HttpError::bad_request(
                            "invalid_query",
                            "cursor is not valid: pass the nextCursor of the previous page",
                        )
                    })?;
                query.cursor = Some(value.clone());
            }
            other => {
                if !filter_param(other, value, &mut query.filter)? {
                    return Err(HttpError::bad_request(
                        "invalid_query",
                        format!(
                            "unknown query parameter '{other}': use status, limit, cursor, q, \
                             createdAfter or createdBefore"
                        ),
                    ));
                }
            }
        }
    }
    Ok(query)
}

/// Longest name search `q` takes (a name is at most 256 bytes; the search is a
/// part of one).
pub(crate) const MAX_SEARCH: usize = 256;

/// The query of `GET /flows/counts`, checked: the search parameters of `GET /flows`.
pub(crate) fn counts_query(params: &HashMap<String, String>) -> Result<FlowFilter, HttpError> {
    let mut filter = FlowFilter::default();
    for (key, value) in params {
        if !filter_param(key, value, &mut filter)? {
            return Err(HttpError::bad_request(
                "invalid_query",
                format!("unknown query parameter '{key}': use q, createdAfter or createdBefore"),
            ));
        }
    }
    Ok(filter)
}

/// Reads one search parameter (`q`, `createdAfter`, `createdBefore`) into `filter`;
/// `false` when `key` is not one of them.
fn filter_param(key: &str, value: &str, filter: &mut FlowFilter) -> Result<bool, HttpError> {
    let time = |value: &str| {
        value.parse::<u64>().map_err(|_| {
            HttpError::bad_request(
                "invalid_query",
                format!("{key} '{value}' is not a time in ms since the epoch"),
            )
        })
    };
    match key {
        "q" => {
            if value.chars().count() > MAX_SEARCH {
                return Err(HttpError::bad_request(
                    "invalid_query",
                    format!("q is longer than {MAX_SEARCH} characters"),
                ));
            }
            *filter = std::mem::take(filter).name_contains(value);
        }
        "createdAfter" => filter.created_after = Some(time(value)?),
        "createdBefore" => filter.created_before = Some(time(value)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// A message from a WebSocket client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub(crate) enum ClientMessage {
    /// Start receiving a flow's events (`"*"`: every flow's).
    Subscribe {
        /// A flow id, or `*`.
        #[serde(rename = "flowId")]
        flow_id: String,
    },
    /// Stop receiving them.
    Unsubscribe {
        /// A flow id, or `*`.
        #[serde(rename = "flowId")]
        flow_id: String,
    },
}

/// A message to a WebSocket client.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub(crate) enum ServerMessage<'a> {
    /// The flow as of `flow.seq`; its `flow:updated` events follow.
    #[serde(rename = "snapshot")]
    Snapshot {
        /// The flow.
        flow: &'a FlowView,
    },
    /// One change of a flow.
    #[serde(rename = "flow:updated")]
    Updated(&'a FlowEvent),
    /// Now subscribed to every flow (`flowId` is `*`).
    #[serde(rename = "subscribed")]
    Subscribed {
        /// What was subscribed to.
        #[serde(rename = "flowId")]
        flow_id: &'a str,
    },
    /// No longer subscribed.
    #[serde(rename = "unsubscribed")]
    Unsubscribed {
        /// What was unsubscribed from.
        #[serde(rename = "flowId")]
        flow_id: &'a str,
    },
    /// The client fell behind by `missed` engine events; fresh snapshots follow.
    #[serde(rename = "lagged")]
    Lagged {
        /// Engine events (of any flow) that went by unseen.
        missed: u64,
    },
    /// A message could not be handled; the connection stays open.
    #[serde(rename = "error")]
    Error {
        /// What was wrong.
        message: String,
        /// The flow it was about, if any.
        #[serde(rename = "flowId", skip_serializing_if = "Option::is_none")]
        flow_id: Option<&'a str>,
    },
}

/// Describes [`ServerMessage`] in the OpenAPI document. Each variant is its own
/// named schema, told apart by the `type` property (a `oneOf` with a discriminator),
/// so that a generated client gets one type per message.
#[derive(ToSchema)]
#[schema(as = ServerMessage)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum ServerMessageSchema {
    /// `{"type":"snapshot","flow"}`.
    Snapshot(SnapshotMessage),
    /// `{"type":"flow:updated", ...the event's fields}`.
    Updated(UpdatedMessage),
    /// `{"type":"subscribed","flowId":"*"}`.
    Subscribed(SubscribedMessage),
    /// `{"type":"unsubscribed","flowId"}`.
    Unsubscribed(UnsubscribedMessage),
    /// `{"type":"lagged","missed"}`.
    Lagged(LaggedMessage),
    /// `{"type":"error","message","flowId"?}`.
    Error(ErrorMessage),
}

/// The `type` of a [`SnapshotMessage`].
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) enum SnapshotType {
    /// The only value.
    #[serde(rename = "snapshot")]
    Snapshot,
}

/// The flow as of `flow.seq`, sent on subscribing (and after `lagged`); its
/// `flow:updated` events follow, starting at `flow.seq + 1`.
#[derive(ToSchema)]
#[schema(as = SnapshotMessage)]
#[allow(dead_code)]
pub(crate) struct SnapshotMessage {
    /// `snapshot`.
    #[schema(inline)]
    r#type: SnapshotType,
    /// The flow.
    flow: FlowViewSchema,
}

/// The `type` of an [`UpdatedMessage`].
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) enum UpdatedType {
    /// The only value.
    #[serde(rename = "flow:updated")]
    Updated,
}

/// One change of a flow: a [`FlowEventSchema`]'s fields next to `type`.
#[derive(ToSchema)]
#[schema(as = UpdatedMessage)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct UpdatedMessage {
    /// `flow:updated`.
    #[schema(inline)]
    r#type: UpdatedType,
    /// The flow.
    #[schema(format = "uuid")]
    flow_id: String,
    /// The node; absent for a change of the flow itself.
    #[schema(nullable = false)]
    node: Option<String>,
    /// The node's (or, without `node`, the flow's) new status.
    status: EventStatusSchema,
    /// The node's attempt; 0 for flow events.
    attempt: u32,
    /// Strictly increasing per flow, without gaps.
    seq: u64,
    /// Time of the change, ms since the epoch.
    ts: u64,
    /// The progress a worker reported (any JSON value); only on progress events.
    progress: Option<serde_json::Value>,
    /// The error, on failures and on retries.
    #[schema(nullable = false)]
    error: Option<String>,
}

/// The `type` of a [`SubscribedMessage`].
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) enum SubscribedType {
    /// The only value.
    #[serde(rename = "subscribed")]
    Subscribed,
}

/// Now subscribed to every flow; no snapshot follows, only events.
#[derive(ToSchema)]
#[schema(as = SubscribedMessage)]
#[allow(dead_code)]
pub(crate) struct SubscribedMessage {
    /// `subscribed`.
    #[schema(inline)]
    r#type: SubscribedType,
    /// What was subscribed to: `*`.
    #[serde(rename = "flowId")]
    flow_id: String,
}

/// The `type` of an [`UnsubscribedMessage`].
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) enum UnsubscribedType {
    /// The only value.
    #[serde(rename = "unsubscribed")]
    Unsubscribed,
}

/// No longer subscribed.
#[derive(ToSchema)]
#[schema(as = UnsubscribedMessage)]
#[allow(dead_code)]
pub(crate) struct UnsubscribedMessage {
    /// `unsubscribed`.
    #[schema(inline)]
    r#type: UnsubscribedType,
    /// What was unsubscribed from: a flow id or `*`.
    #[serde(rename = "flowId")]
    flow_id: String,
}

/// The `type` of a [`LaggedMessage`].
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) enum LaggedType {
    /// The only value.
    #[serde(rename = "lagged")]
    Lagged,
}

/// The client read so slowly that `missed` engine events went by unseen; a fresh
/// snapshot of each subscribed flow follows.
#[derive(ToSchema)]
#[schema(as = LaggedMessage)]
#[allow(dead_code)]
pub(crate) struct LaggedMessage {
    /// `lagged`.
    #[schema(inline)]
    r#type: LaggedType,
    /// Engine events (of any flow) that went by unseen; at least 1.
    #[schema(minimum = 1)]
    missed: u64,
}

/// The `type` of an [`ErrorMessage`].
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) enum ErrorType {
    /// The only value.
    #[serde(rename = "error")]
    Error,
}

/// A client message could not be handled; the connection stays open.
#[derive(ToSchema)]
#[schema(as = ErrorMessage)]
#[allow(dead_code)]
pub(crate) struct ErrorMessage {
    /// `error`.
    #[schema(inline)]
    r#type: ErrorType,
    /// What was wrong.
    message: String,
    /// The flow it was about, when it was about one.
    #[serde(rename = "flowId")]
    #[schema(nullable = false)]
    flow_id: Option<String>,
}

/// Where a flow is: `running`, then `completed`, `failed` or `cancelled`.
#[derive(ToSchema)]
#[schema(as = FlowStatus)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum FlowStatusSchema {
    /// Some node is not terminal yet.
    Running,
    /// Every node completed.
    Completed,
    /// Some node failed for good.
    Failed,
    /// A client cancelled it.
    Cancelled,
}

/// Where a node is.
#[derive(ToSchema)]
#[schema(as = NodeStatus)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum NodeStatusSchema {
    /// Waiting for its parents.
    Pending,
    /// In its queue, or waiting out a retry backoff.
    Queued,
    /// A worker runs it; a map node: its elements run.
    Active,
    /// A wait node waits for its signal or its time.
    Waiting,
    /// Finished with a result.
    Completed,
    /// Failed for good.
    Failed,
    /// Will not run: its trigger rule or its condition ruled it out (see `reason`).
    Skipped,
    /// Will not run, or stopped: the flow was cancelled or failed fast, or a
    /// concurrency key's strategy (the node's own or its flow's) cancelled its job
    /// (see `reason`).
    Cancelled,
}

/// The status an event announces: a node's ([`NodeStatusSchema`]) when the event
/// names a node, else the flow's ([`FlowStatusSchema`]).
#[derive(ToSchema)]
#[schema(as = EventStatus)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum EventStatusSchema {
    /// Flow: started (or retried).
    Running,
    /// Node: waiting for its parents.
    Pending,
    /// Node: queued (a retry too, with `error`).
    Queued,
    /// Node: a worker runs it (repeated with `progress`); a map node: expanded.
    Active,
    /// Node: a wait began.
    Waiting,
    /// Node or flow: done.
    Completed,
    /// Node or flow: failed for good.
    Failed,
    /// Node: will not run.
    Skipped,
    /// Node or flow: cancelled.
    Cancelled,
}

/// A flow with every node (`GET /flows/{id}`, WebSocket snapshots).
#[derive(ToSchema)]
#[schema(as = FlowView)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct FlowViewSchema {
    /// The flow's id (a UUIDv7).
    #[schema(format = "uuid")]
    id: String,
    /// Its name from the spec (empty when it had none).
    name: String,
    /// Where it is.
    status: FlowStatusSchema,
    /// Events so far; events after this view have a larger `seq`.
    seq: u64,
    /// Creation time, ms since the epoch.
    created_at: u64,
    /// Last change, ms.
    updated_at: u64,
    /// When it ended, ms; absent while it runs.
    #[schema(nullable = false)]
    finished_at: Option<u64>,
    /// Why the engine failed the flow, when it did (not a node's error).
    #[schema(nullable = false)]
    error: Option<String>,
    /// Every node, in spec order, then the elements of each map node
    /// (`{map}[{index}]`, with `mapOf` and `index`).
    nodes: Vec<NodeViewSchema>,
}

/// One node of a flow (`GET /flows/{id}/nodes/{name}` adds `input`). Optional
/// fields are absent, never `null`, until they apply.
#[derive(ToSchema)]
#[schema(as = NodeView)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct NodeViewSchema {
    /// Unique within the flow.
    name: String,
    /// Where it is.
    status: NodeStatusSchema,
    /// Current attempt, 0 before the first.
    attempt: u32,
    /// The queue it runs on.
    queue: String,
    /// The handler that runs it.
    handler: String,
    /// Parent names.
    parents: Vec<String>,
    /// Child names.
    children: Vec<String>,
    /// The current attempt's job id, `{flowId}:{node}:{attempt}`; from the first attempt on.
    #[schema(nullable = false)]
    job_id: Option<String>,
    /// When the current attempt was queued, ms.
    #[schema(nullable = false)]
    queued_at: Option<u64>,
    /// When a delayed retry is due, or a wait node's deadline (its timer, its
    /// signal's timeout), ms.
    #[schema(nullable = false)]
    due_at: Option<u64>,
    /// When a worker started it, ms.
    #[schema(nullable = false)]
    started_at: Option<u64>,
    /// When it ended, ms.
    #[schema(nullable = false)]
    finished_at: Option<u64>,
    /// Last progress reported: any JSON value (a number, an object, even `null`).
    progress: Option<serde_json::Value>,
    /// Last error (also while a retry waits).
    #[schema(nullable = false)]
    error: Option<String>,
    /// The handler's result once completed: any JSON value, `null` included.
    result: Option<serde_json::Value>,
    /// `{"data", "parents"}` as its handler gets it (a map element also `item` and
    /// `index`); only in the single-node view, once every parent is done.
    input: Option<serde_json::Value>,
    /// Why it was skipped (its trigger rule or its condition), or why it was
    /// cancelled (the flow was cancelled, failed fast or aborted, or a concurrency
    /// key, its own or its flow's, cancelled it).
    #[schema(nullable = false)]
    reason: Option<String>,
    /// Its trigger rule, when not `allSuccess`.
    #[schema(nullable = false)]
    trigger: Option<TriggerRuleSchema>,
    /// Its condition, as written.
    #[schema(nullable = false)]
    when: Option<String>,
    /// On a wait node: what it waits for (its deadline is `dueAt`).
    #[schema(nullable = false)]
    wait: Option<WaitViewSchema>,
    /// On a map node: its source and its elements' counts.
    #[schema(nullable = false)]
    map: Option<MapViewSchema>,
    /// On a map element: its map node.
    #[schema(nullable = false)]
    map_of: Option<String>,
    /// On a map element: its position in the array.
    #[schema(nullable = false)]
    index: Option<u32>,
    /// 0 (lowest) to 9 (highest): its node's `priority`, else its flow's
    /// `opts.priority`, else 5. Ready jobs of a higher priority are taken first.
    /// This server always sends it; servers from before priorities did not, so
    /// the schema leaves it optional.
    #[schema(nullable = false, minimum = 0, maximum = 9)]
    priority: Option<u8>,
    /// Its concurrency key, when it has one.
    #[schema(nullable = false)]
    concurrency: Option<LimitViewSchema>,
    /// Its rate limit, when it has one.
    #[schema(nullable = false)]
    rate_limit: Option<LimitViewSchema>,
    /// Every attempt kept, oldest first, the current one last: the last 20 at
    /// most (older ones are dropped). Only in the single-node view
    /// (`GET /flows/{id}/nodes/{name}`); empty before the node was first queued.
    #[schema(nullable = false, max_items = 20)]
    attempts: Option<Vec<AttemptViewSchema>>,
}

/// One attempt of a node: when it was queued, started and ended, the worker that
/// ran it, and how it ended. Optional fields are absent, never `null`.
#[derive(ToSchema)]
#[schema(as = AttemptView)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct AttemptViewSchema {
    /// Its number; the job id of the attempt ends with it.
    #[schema(minimum = 1)]
    attempt: u32,
    /// When it was queued, ms since the epoch.
    #[schema(nullable = false)]
    queued_at: Option<u64>,
    /// When a worker started it, ms.
    #[schema(nullable = false)]
    started_at: Option<u64>,
    /// When it ended, ms.
    #[schema(nullable = false)]
    finished_at: Option<u64>,
    /// The consumer name of the worker that started it, when the worker sent it
    /// (with its `started` report).
    #[schema(nullable = false)]
    worker: Option<String>,
    /// `queued`, `running` or `waiting` while it is the current attempt;
    /// `completed`, `failed` or `cancelled` once it is over; `stalled` (the workers
    /// that took it stopped responding more often than `maxStalled` allows) and
    /// `timedOut` (it ran past `timeoutMs`) are failures whose worker said why.
    #[schema(pattern = "^(queued|running|waiting|completed|failed|cancelled|stalled|timedOut)$")]
    outcome: String,
    /// Its error (a failure; cut to 2048 bytes on earlier attempts), or why it
    /// was stopped (a cancellation).
    #[schema(nullable = false)]
    error: Option<String>,
}

/// A node's concurrency key or rate limit: as the spec wrote it, and the key its
/// job runs under once the node is ready.
#[derive(ToSchema)]
#[schema(as = LimitView)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct LimitViewSchema {
    /// The key expression (CEL), as written.
    key: String,
    /// The evaluated key, once the node's job exists; absent on a map node (each
    /// element has its own).
    #[schema(nullable = false)]
    value: Option<String>,
    /// Jobs of one key at once (concurrency), or started per `perMs` (rate limit).
    #[schema(minimum = 1)]
    limit: u32,
    /// A concurrency key's strategy.
    #[schema(nullable = false)]
    strategy: Option<ConcurrencyStrategySchema>,
    /// A rate limit's period, ms.
    #[schema(nullable = false, minimum = 1)]
    per_ms: Option<u64>,
}

/// What a wait node waits for.
#[derive(ToSchema)]
#[schema(as = WaitView)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct WaitViewSchema {
    /// `signal` or `timer`.
    #[schema(pattern = "^(signal|timer)$")]
    kind: String,
    /// The signal's name, on a signal wait.
    #[schema(nullable = false)]
    signal: Option<String>,
    /// A signal wait's timeout, ms.
    #[schema(nullable = false)]
    timeout_ms: Option<u64>,
}

/// A map node's source and progress.
#[derive(ToSchema)]
#[schema(as = MapView)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct MapViewSchema {
    /// The parent whose result holds the array.
    from: String,
    /// The JSON Pointer into that result.
    path: String,
    /// Elements in all, once the map expanded.
    #[schema(nullable = false)]
    total: Option<u32>,
    /// Elements ended.
    done: u32,
    /// Elements queued or running.
    running: u32,
    /// Elements failed for good.
    failed: u32,
}

/// What a node's parents' outcomes must be for it to run.
#[derive(ToSchema)]
#[schema(as = TriggerRule)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum TriggerRuleSchema {
    /// Every parent completed (a parent failed with `continueOnFailure` counts) — the default.
    AllSuccess,
    /// Every parent ended, whatever the outcome.
    AllDone,
    /// At least one parent completed; runs as soon as one has.
    OneSuccess,
    /// Every parent ended and none failed (skipped parents are fine).
    NoneFailed,
    /// Every parent failed.
    AllFailed,
}

/// A dynamic fan-out over an array in a parent's result.
#[derive(ToSchema)]
#[schema(as = MapSpec)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct MapSpecSchema {
    /// The parent whose result holds the array (must be among the node's parents).
    from: String,
    /// A JSON Pointer (RFC 6901) into that result; `""` (the default) is the whole result.
    #[schema(nullable = false)]
    path: Option<String>,
    /// Most elements; more fail the node. Default 10000.
    #[schema(nullable = false, minimum = 1, maximum = 100000)]
    max_items: Option<u32>,
    /// Most elements queued or running at once; unlimited by default.
    #[schema(nullable = false, minimum = 1)]
    max_parallel: Option<u32>,
}

/// A node that needs no worker: it waits for a signal, for a duration or until a
/// time. Exactly one of `signal`, `forMs`, `until`.
#[derive(ToSchema)]
#[schema(as = WaitSpec)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct WaitSpecSchema {
    /// Completes when `POST /flows/{id}/nodes/{name}/signal` delivers a payload.
    #[schema(nullable = false, min_length = 1)]
    signal: Option<String>,
    /// With `signal`: fail (or take `default`) after this many ms.
    #[schema(nullable = false)]
    timeout_ms: Option<u64>,
    /// With `signal` and `timeoutMs`: the result at the timeout instead of failing.
    default: Option<serde_json::Value>,
    /// A durable timer: completes this many ms after the node became ready.
    #[schema(nullable = false)]
    for_ms: Option<u64>,
    /// A durable timer: completes at this time, ms since the epoch.
    #[schema(nullable = false)]
    until: Option<u64>,
}

/// A flow in a listing.
#[derive(ToSchema)]
#[schema(as = FlowSummary)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct FlowSummarySchema {
    /// The flow's id.
    #[schema(format = "uuid")]
    id: String,
    /// Its name.
    name: String,
    /// Where it is.
    status: FlowStatusSchema,
    /// Events so far.
    seq: u64,
    /// Creation time, ms.
    created_at: u64,
    /// Last change, ms.
    updated_at: u64,
    /// When it ended, ms; absent while it runs.
    #[schema(nullable = false)]
    finished_at: Option<u64>,
    /// Number of nodes.
    nodes_total: u32,
    /// Nodes in a terminal status.
    nodes_done: u32,
}

/// `GET /flows/counts`: how many flows the search takes, per status.
#[derive(ToSchema)]
#[schema(as = FlowCounts)]
#[allow(dead_code)]
pub(crate) struct FlowCountsSchema {
    /// Flows still running (hibernating ones included).
    running: u64,
    /// Flows that completed.
    completed: u64,
    /// Flows that failed.
    failed: u64,
    /// Flows that were cancelled.
    cancelled: u64,
}

/// One page of `GET /flows`.
#[derive(ToSchema)]
#[schema(as = FlowPage)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct FlowPageSchema {
    /// The flows, newest first.
    flows: Vec<FlowSummarySchema>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[schema(nullable = false, format = "uuid")]
    next_cursor: Option<String>,
}

/// One change of one flow, as the engine publishes it (the WebSocket sends it as
/// an [`UpdatedMessage`], with `type` added).
#[derive(ToSchema)]
#[schema(as = FlowEvent)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct FlowEventSchema {
    /// The flow.
    #[schema(format = "uuid")]
    flow_id: String,
    /// The node; absent for a change of the flow itself.
    #[schema(nullable = false)]
    node: Option<String>,
    /// The node's (or the flow's) new status.
    status: EventStatusSchema,
    /// The node's attempt; 0 for flow events.
    attempt: u32,
    /// Strictly increasing per flow, without gaps.
    seq: u64,
    /// Time of the change, ms.
    ts: u64,
    /// The progress a worker reported (any JSON value); only on progress events.
    progress: Option<serde_json::Value>,
    /// The error, on failures and retries.
    #[schema(nullable = false)]
    error: Option<String>,
    /// Why the node was skipped, on skip events; why it was cancelled (the flow was
    /// cancelled, failed fast or aborted, or its concurrency key cancelled it), on
    /// cancel events.
    #[schema(nullable = false)]
    reason: Option<String>,
}

/// A flow spec, as `POST /flows` takes it (see the design's "Flow spec"). The
/// schema says what JSON Schema can: the rules between nodes (unique names,
/// parents and children that exist and agree, no cycle) and the byte limits are
/// checked by the server, which answers 422 listing every problem.
#[derive(ToSchema)]
#[schema(as = FlowSpec, examples(
    json!({"name": "image pipeline", "nodes": [
        {"name": "download-image", "handler": "echo", "data": {"url": "https://example.com/a.png"}},
        {"name": "resize-image", "handler": "echo", "parents": ["download-image"]},
        {"name": "add-watermark", "handler": "echo", "parents": ["download-image"]},
        {"name": "save-to-s3", "handler": "echo", "parents": ["resize-image", "add-watermark"],
         "opts": {"attempts": 3, "backoff": {"type": "exponential", "delayMs": 500}, "timeoutMs": 30000}}
    ]}),
    json!({"name": "a long nap", "nodes": [
        {"name": "nap", "handler": "sleep", "data": {"ms": 3000}},
        {"name": "after", "handler": "echo", "parents": ["nap"]}
    ]}),
    json!({"name": "fails, then can be retried", "nodes": [
        {"name": "boom", "handler": "fail", "data": {"message": "an example failure"}},
        {"name": "never", "handler": "echo", "parents": ["boom"]}
    ], "opts": {"onFailure": "continue"}})
))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct FlowSpecSchema {
    /// Human-readable, need not be unique; at most 256 bytes of UTF-8.
    #[schema(nullable = false, max_length = 256)]
    name: Option<String>,
    /// The jobs: at least one.
    #[schema(min_items = 1, max_items = 10000)]
    nodes: Vec<NodeSpecSchema>,
    /// Flow-wide behaviour.
    #[schema(nullable = false)]
    opts: Option<FlowOptsSchema>,
    /// The W3C trace context the flow's trace continues (its span becomes the
    /// flow span's parent). A valid `traceparent` header on `POST /flows`
    /// replaces it; a value that is not a valid traceparent is ignored, never an
    /// error. `null` is the same as leaving it out.
    #[schema(example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    traceparent: Option<String>,
}

/// Flow-wide behaviour.
#[derive(ToSchema)]
#[schema(as = FlowOpts)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct FlowOptsSchema {
    /// What a node's permanent failure does to the rest of the flow (default `continue`).
    #[schema(nullable = false)]
    on_failure: Option<OnFailureSchema>,
    /// The priority of every node that sets none: 0 (lowest) to 9 (highest),
    /// default 5. Above 9 is a 422 (`bad_priority`).
    #[schema(minimum = 0, maximum = 9)]
    priority: Option<u8>,
    /// At most `limit` flows with the same key run at once. The key is a CEL
    /// expression over `name` (the flow's name) and `data` (each node's data by node
    /// name), evaluated when the flow is submitted; one that cannot be evaluated is
    /// a 422 (`bad_concurrency`).
    concurrency: Option<ConcurrencySpecSchema>,
    /// How long this flow is kept once it ended, whatever its outcome: `90s`,
    /// `12h`, `7d`, `1h 30m`, a plain number of seconds, or `forever`. Overrides the
    /// server's `--retain-completed` / `--retain-failed`; after it the flow is
    /// deleted with everything it holds. Anything else is a 422 (`bad_retention`).
    #[schema(example = "7d")]
    retention: Option<String>,
    /// Callbacks: when the flow ends with one of a target's `on` events, its final
    /// view (as `GET /flows/{id}` shows it) is POSTed to the target's `url`, at
    /// least once, signed (`X-Dagflow-Signature`), with `X-Dagflow-Flow`,
    /// `X-Dagflow-Seq` and `X-Dagflow-Event` headers. At most 5 targets; a bad URL
    /// or event is a 422 (`bad_notify`). See the README's "Callbacks".
    #[schema(nullable = false, max_items = 5)]
    notify: Option<Vec<NotifySpecSchema>>,
}

/// One callback target of `opts.notify`.
#[derive(ToSchema)]
#[schema(as = NotifySpec)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct NotifySpecSchema {
    /// Absolute `http://` or `https://` URL (at most 2048 bytes) the final view is
    /// POSTed to.
    #[schema(
        min_length = 1,
        max_length = 2048,
        example = "https://example.com/hooks/dagflow"
    )]
    url: String,
    /// The ends of the flow that are sent (default: all three).
    #[schema(nullable = false, min_items = 1)]
    on: Option<Vec<NotifyEventSchema>>,
}

/// An end of a flow a callback can be sent on.
#[derive(ToSchema)]
#[schema(as = NotifyEvent)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum NotifyEventSchema {
    /// The flow completed.
    Completed,
    /// The flow failed.
    Failed,
    /// The flow was cancelled.
    Cancelled,
}

/// What a node's permanent failure does to the rest of the flow.
#[derive(ToSchema)]
#[schema(as = OnFailure)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum OnFailureSchema {
    /// Independent branches finish; the failed node's descendants are skipped.
    Continue,
    /// Everything not yet finished is cancelled.
    FailFast,
}

/// One node of a flow spec.
#[derive(ToSchema)]
#[schema(as = NodeSpec)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct NodeSpecSchema {
    /// Unique within the flow; at most 256 bytes of UTF-8.
    #[schema(min_length = 1, max_length = 256)]
    name: String,
    /// Nodes whose results it needs, each once.
    #[schema(nullable = false)]
    parents: Option<Vec<String>>,
    /// Nodes that need its result, each once (must agree with their `parents`).
    #[schema(nullable = false)]
    children: Option<Vec<String>>,
    /// Handler name; defaults to `name` (so does `null`).
    #[schema(min_length = 1, max_length = 256)]
    handler: Option<String>,
    /// Queue; defaults to `default` (so does `null`).
    #[schema(max_length = 256, pattern = r"^[A-Za-z0-9._-]+$")]
    queue: Option<String>,
    /// The node's own input: any JSON value (at most 256 KiB as JSON text).
    data: Option<serde_json::Value>,
    /// Retries, timeout and failure behaviour.
    #[schema(nullable = false)]
    opts: Option<NodeOptsSchema>,
    /// Same as `opts.continueOnFailure`.
    #[schema(nullable = false)]
    continue_on_failure: Option<bool>,
    /// A CEL condition over `parents` (results by parent name) and `data`, e.g.
    /// `parents.score.value > 10`; false skips the node. A syntax error is a 422.
    #[schema(nullable = false)]
    when: Option<String>,
    /// What the parents' outcomes must be for it to run (default `allSuccess`).
    #[schema(nullable = false)]
    trigger: Option<TriggerRuleSchema>,
    /// Run once per element of an array in a parent's result.
    #[schema(nullable = false)]
    map: Option<MapSpecSchema>,
    /// Wait for a signal or a time instead of running a job.
    #[schema(nullable = false)]
    wait: Option<WaitSpecSchema>,
    /// 0 (lowest) to 9 (highest): its queue hands out ready jobs of higher
    /// priorities first (each priority still gets a share). Overrides the flow's
    /// `opts.priority`; default 5. Above 9 is a 422 (`bad_priority`).
    #[schema(minimum = 0, maximum = 9)]
    priority: Option<u8>,
    /// At most `limit` jobs with the same key run at once, across every worker and
    /// every flow. Not on a wait node (`bad_concurrency`).
    concurrency: Option<ConcurrencySpecSchema>,
    /// At most `limit` jobs with the same key start per `perMs`, across every
    /// worker and every flow; the others wait (they do not fail). Not on a wait
    /// node (`bad_rate_limit`).
    rate_limit: Option<RateLimitSpecSchema>,
}

/// A concurrency key: at most `limit` jobs of one key value at once.
#[derive(ToSchema)]
#[schema(as = ConcurrencySpec)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct ConcurrencySpecSchema {
    /// A CEL expression over `data` and `parents` (and `item`, `index` in a map's
    /// elements) giving the key, a string or a number: `data.tenant`, `'one-at-a-time'`.
    /// One that does not parse is a 422 (`bad_concurrency`).
    #[schema(min_length = 1)]
    key: String,
    /// Jobs of one key at once.
    #[schema(minimum = 1, maximum = 1000000)]
    limit: u32,
    /// What a job does when its key is at its limit (default `queue`).
    #[schema(nullable = false)]
    strategy: Option<ConcurrencyStrategySchema>,
}

/// What a job does when its concurrency key is at its limit.
#[derive(ToSchema)]
#[schema(as = ConcurrencyStrategy)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum ConcurrencyStrategySchema {
    /// Wait for a slot without holding a worker (the default).
    Queue,
    /// The new job is cancelled: its node ends `cancelled`, with the reason.
    CancelNewest,
    /// The key's oldest running job is cancelled (its node ends `cancelled`, with
    /// the reason) and the new one takes its slot.
    CancelInProgress,
}

/// A rate limit: at most `limit` jobs of one key value start per `perMs`.
#[derive(ToSchema)]
#[schema(as = RateLimitSpec)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct RateLimitSpecSchema {
    /// A CEL expression giving the key, as for a concurrency key; a constant such
    /// as `'payments-api'` makes one limit for every job of the node. One that does
    /// not parse is a 422 (`bad_rate_limit`).
    #[schema(min_length = 1)]
    key: String,
    /// Jobs of one key started per period.
    #[schema(minimum = 1, maximum = 1000000)]
    limit: u32,
    /// The period, ms.
    #[schema(minimum = 1)]
    per_ms: u64,
}

/// Retries, timeout and failure behaviour of one node.
#[derive(ToSchema)]
#[schema(as = NodeOpts)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct NodeOptsSchema {
    /// Total tries in one run, the first included (default 1).
    #[schema(nullable = false, minimum = 1, maximum = 1000)]
    attempts: Option<u32>,
    /// Delay between tries; without it (or with `null`) a retry runs at once.
    backoff: Option<BackoffSchema>,
    /// Time limit of one try, ms; a try over it fails (retryable). None by default.
    #[schema(minimum = 1)]
    timeout_ms: Option<u64>,
    /// When the node fails for good, its children still run with `{"error"}` in its slot.
    #[schema(nullable = false)]
    continue_on_failure: Option<bool>,
    /// How often a job may be reclaimed from a vanished worker before it fails as
    /// stalled; `null` or absent: the server's default.
    max_stalled: Option<u32>,
}

/// Delay before a retry.
#[derive(ToSchema)]
#[schema(as = Backoff)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct BackoffSchema {
    /// `fixed`: the same delay each time; `exponential`: `delayMs * 2^(n-1)` before the n-th retry.
    r#type: BackoffKindSchema,
    /// Base delay, ms.
    delay_ms: u64,
}

/// How a backoff grows.
#[derive(ToSchema)]
#[schema(as = BackoffKind)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) enum BackoffKindSchema {
    /// The same delay before every retry.
    Fixed,
    /// Doubling from `delayMs`.
    Exponential,
}

/// `GET /queues`: every queue Redis knows.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueueList {
    /// The queues, by name: those live workers serve, those with jobs or lanes in
    /// Redis, and those that ever had a delayed retry.
    pub(crate) queues: Vec<QueueInfo>,
}

/// One queue as Redis holds it now (`GET /queues/{name}`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Queue)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueueInfo {
    /// The queue's name.
    pub(crate) name: String,
    /// Jobs waiting for a worker, in the lanes it serves them from.
    pub(crate) ready: ReadyCounts,
    /// Jobs a worker took and has not yet finished (or that a dead worker held
    /// until they are reclaimed).
    pub(crate) running: u64,
    /// Retries waiting for their backoff.
    pub(crate) delayed: u64,
    /// Jobs held back by a concurrency key at its limit, a rate limit out of
    /// tokens or a flow concurrency key at its limit, summed over the 1000 keys
    /// holding back the most.
    pub(crate) held_back_jobs: u64,
    /// How many keys hold back jobs of this queue.
    pub(crate) held_back_keys: u64,
    /// The keys holding back the most jobs, most first: at most 20.
    pub(crate) held_back: Vec<HeldBackKey>,
    /// Live workers serving the queue (by their heartbeats), by id.
    pub(crate) workers: Vec<QueueWorker>,
    /// The jobs they may run at once, together.
    pub(crate) total_concurrency: u64,
}

/// Ready jobs: in all, and per priority.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReadyCounts {
    /// Every ready job of the queue.
    pub(crate) total: u64,
    /// Always ten entries, priority 9 first: the order workers are served.
    #[schema(min_items = 10, max_items = 10)]
    pub(crate) by_priority: Vec<PriorityReady>,
}

/// Ready jobs of one priority, by lane. Within a priority, jobs of flows that have
/// started go before the first jobs of flows that have not.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PriorityReady {
    /// 0 (lowest) to 9 (highest).
    #[schema(minimum = 0, maximum = 9)]
    pub(crate) priority: u8,
    /// Jobs of flows that have started (children, retries, map elements, re-runs).
    pub(crate) started: u64,
    /// First jobs (roots, first attempt) of flows that have not started.
    pub(crate) new: u64,
}

/// A limit key holding back jobs of a queue.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HeldBackKey {
    /// A concurrency key, a rate limit, or a flow concurrency key.
    pub(crate) kind: HeldKindSchema,
    /// The evaluated key.
    pub(crate) key: String,
    /// Jobs of this queue it holds back.
    pub(crate) waiting: u64,
    /// A concurrency key: the jobs holding one of its slots now, of every queue; a
    /// flow concurrency key: the flows holding one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) running: Option<u64>,
    /// A rate limit: when its next token frees, ms since the epoch (Redis's clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) next_token_at: Option<u64>,
}

/// What kind of limit holds jobs back.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = HeldKind)]
#[serde(rename_all = "camelCase")]
pub(crate) enum HeldKindSchema {
    /// A concurrency key at its limit.
    Concurrency,
    /// A rate limit out of tokens.
    RateLimit,
    /// A flow concurrency key (a flow's `opts.concurrency`) at its limit: the
    /// jobs' flows wait for a flow slot.
    FlowConcurrency,
}

/// A live worker serving a queue, from its heartbeat.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueueWorker {
    /// The worker's id.
    pub(crate) id: String,
    /// Jobs of this queue it runs at once, when its heartbeat says.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) concurrency: Option<u64>,
    /// The handlers it has.
    pub(crate) handlers: Vec<String>,
    /// Its last heartbeat, ms since the epoch (Redis's clock).
    pub(crate) last_seen_ms: u64,
}

/// Test helpers that compare a schema mirror's fields with what a type writes.
#[cfg(test)]
pub(crate) mod mirror {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use serde_json::Value;
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    use utoipa::PartialSchema;

    /// The properties an object schema names.
    pub(crate) fn schema_fields<S: PartialSchema>() -> BTreeSet<String> {
        match S::schema() {
            RefOr::T(Schema::Object(o)) => o.properties.keys().cloned().collect(),
            _ => panic!("not an object schema"),
        }
    }

    /// The keys of a JSON object.
    pub(crate) fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{json, Value};

    use super::mirror::{keys, schema_fields};
    use super::*;

    /// A view with every optional field set, as the engine serializes it.
    fn full_node() -> Value {
        json!({
            "name": "a", "status": "completed", "attempt": 1, "queue": "default",
            "handler": "echo", "parents": [], "children": [], "jobId": "x:a:1",
            "queuedAt": 1, "dueAt": 2, "startedAt": 3, "finishedAt": 4,
            "progress": 50, "error": "e", "result": {}, "input": {},
            "reason": "r", "trigger": "allDone", "when": "true",
            "wait": {"kind": "signal", "signal": "go", "timeoutMs": 5},
            "map": {"from": "p", "path": "", "total": 3, "done": 1, "running": 1, "failed": 0},
            "mapOf": "m", "index": 0, "priority": 7,
            "concurrency": {"key": "data.t", "value": "acme", "limit": 2, "strategy": "queue"},
            "rateLimit": {"key": "'api'", "value": "api", "limit": 5, "perMs": 1000},
            "attempts": [{"attempt": 1, "queuedAt": 1, "startedAt": 3, "finishedAt": 4,
                "worker": "w-1", "outcome": "completed", "error": "e"}]
        })
    }

    #[test]
    fn schema_mirrors_match_the_engine_views() {
        let id = FlowId::new().to_string();
        let node: dagflow_actors::NodeView = serde_json::from_value(full_node()).unwrap();
        let node = serde_json::to_value(node).unwrap();
        assert_eq!(keys(&node), schema_fields::<NodeViewSchema>());
        let mut limit_fields = keys(&node["concurrency"]);
        limit_fields.extend(keys(&node["rateLimit"]));
        assert_eq!(limit_fields, schema_fields::<LimitViewSchema>());
        assert_eq!(
            keys(&node["attempts"][0]),
            schema_fields::<AttemptViewSchema>()
        );

        let flow: FlowView = serde_json::from_value(json!({
            "id": id, "name": "f", "status": "failed", "seq": 3, "createdAt": 1,
            "updatedAt": 2, "finishedAt": 3, "error": "e", "nodes": [full_node()]
        }))
        .unwrap();
        assert_eq!(
            keys(&serde_json::to_value(&flow).unwrap()),
            schema_fields::<FlowViewSchema>()
        );

        let summary = json!({
            "id": id, "name": "f", "status": "running", "seq": 3, "createdAt": 1,
            "updatedAt": 2, "finishedAt": 3, "nodesTotal": 2, "nodesDone": 1
        });
        let summary: dagflow_actors::FlowSummary = serde_json::from_value(summary).unwrap();
        let summary_json = serde_json::to_value(&summary).unwrap();
        assert_eq!(keys(&summary_json), schema_fields::<FlowSummarySchema>());

        let page = dagflow_actors::FlowPage {
            flows: vec![summary],
            next_cursor: Some(id.clone()),
        };
        assert_eq!(
            keys(&serde_json::to_value(&page).unwrap()),
            schema_fields::<FlowPageSchema>()
        );

        let event: FlowEvent = serde_json::from_value(json!({
            "flowId": id, "node": "a", "status": "active", "attempt": 1, "seq": 4,
            "ts": 5, "progress": 1, "error": "e", "reason": "r"
        }))
        .unwrap();
        assert_eq!(
            keys(&serde_json::to_value(&event).unwrap()),
            schema_fields::<FlowEventSchema>()
        );
    }

    #[test]
    fn list_query_checks_every_parameter() {
        let q = |pairs: &[(&str, &str)]| {
            list_query(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let ok = q(&[("status", "failed"), ("limit", "10")]).unwrap();
        assert_eq!(ok.status, Some(FlowStatus::Failed));
        assert_eq!(ok.limit, Some(10));
        for bad in [
            &[("status", "weird")][..],
            &[("limit", "0")],
            &[("limit", "x")],
            &[("limit", "1001")],
            &[("cursor", "nope")],
            &[("state", "running")],
            &[("createdAfter", "-1")],
            &[("createdBefore", "yesterday")],
            &[("q", "x".repeat(MAX_SEARCH + 1).as_str())],
        ] {
            let err = q(bad).unwrap_err();
            assert_eq!(err.status.as_u16(), 400, "{bad:?}");
        }
        let search = q(&[("q", "ETL"), ("createdAfter", "5"), ("createdBefore", "9")]).unwrap();
        let mut want = FlowFilter::default().name_contains("etl");
        want.created_after = Some(5);
        want.created_before = Some(9);
        assert_eq!(search.filter, want);
        let counts = |pairs: &[(&str, &str)]| {
            counts_query(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            counts(&[("q", "a")]).unwrap(),
            FlowFilter::default().name_contains("A")
        );
        assert_eq!(
            counts(&[("status", "failed")]).unwrap_err().status.as_u16(),
            400
        );
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let event: FlowEvent = serde_json::from_value(json!({
            "flowId": FlowId::new().to_string(), "status": "running", "attempt": 0, "seq": 1, "ts": 5
        }))
        .unwrap();
        let v = serde_json::to_value(ServerMessage::Updated(&event)).unwrap();
        assert_eq!(v["type"], "flow:updated");
        assert_eq!(v["seq"], 1);
        let v = serde_json::to_value(ServerMessage::Lagged { missed: 3 }).unwrap();
        assert_eq!(v, json!({"type": "lagged", "missed": 3}));
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"subscribe","flowId":"*"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Subscribe {
                flow_id: "*".into()
            }
        );
    }
}
