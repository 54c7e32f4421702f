//! The invariants checked once the faults stop (the numbered list of the crate
//! docs), each over what the clients recorded and the final durable state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::clients::{node_of, Shared};
use crate::common::http::{get, ids_by_name, list_all};
use crate::common::process::blocking;
use crate::common::redis_server::RedisServer;
use crate::plan::{Kind, PlannedFlow};
use crate::run::{Recorded, Run};
use crate::{describe, CLEAN, CREATE_DEADLINE, GLOBAL_KEYS};
// ---------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------

/// The problems found, by the categories of the summary line.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub(crate) lost: Vec<String>,
    pub(crate) wrong: Vec<String>,
    pub(crate) keys_left: Vec<String>,
    pub(crate) zombies: Vec<String>,
    /// More than one flow per key, or a key answered with two ids.
    pub(crate) duplicates: Vec<String>,
    /// What a client saw that the durable history contradicts.
    pub(crate) taken_back: Vec<String>,
    /// Records left in sled.
    pub(crate) records_left: Vec<String>,
    /// Everything else (processes, creates that never got an answer).
    pub(crate) other: Vec<String>,
}

impl Findings {
    pub(crate) fn all(&self) -> Vec<String> {
        let mut all = Vec::new();
        for (label, items) in [
            ("lost", &self.lost),
            ("wrong", &self.wrong),
            ("keys left", &self.keys_left),
            ("zombie", &self.zombies),
            ("duplicate", &self.duplicates),
            ("taken back", &self.taken_back),
            ("record left", &self.records_left),
            ("other", &self.other),
        ] {
            all.extend(items.iter().map(|p| format!("{label}: {p}")));
        }
        all
    }
}

/// Checks the results of every completed node of `flow` (see the module docs, 2).
pub(crate) fn check_results(planned: &PlannedFlow, flow: &Value, wrong: &mut Vec<String>) {
    let id = flow["id"].as_str().unwrap_or_default();
    for node in &planned.nodes {
        let Some(view) = node_of(flow, &node.name) else {
            wrong.push(format!(
                "flow {id} ({}) has no node {}",
                planned.name, node.name
            ));
            continue;
        };
        if view["status"] != "completed" {
            continue;
        }
        let attempt = view["attempt"].as_u64().unwrap_or(0);
        let expected = match &node.kind {
            Kind::Echo(data) => {
                let mut parents = Map::new();
                for p in &node.parents {
                    let parent = node_of(flow, p).cloned().unwrap_or(Value::Null);
                    if parent["status"] != "completed" {
                        wrong.push(format!(
                            "flow {id} node {} completed while its parent {p} is {}",
                            node.name, parent["status"]
                        ));
                    }
                    parents.insert(p.clone(), parent["result"].clone());
                }
                json!({"data": data, "parents": parents})
            }
            Kind::Sleep(ms) => json!({"sleptMs": ms}),
            Kind::Fail { times } => {
                if attempt <= *times {
                    wrong.push(format!(
                        "flow {id} node {} completed at attempt {attempt}, but `fail` fails up to attempt {times}",
                        node.name
                    ));
                }
                json!({"attempt": attempt})
            }
        };
        if view["result"] != expected {
            wrong.push(format!(
                "flow {id} node {}: result {}, expected {expected}",
                node.name, view["result"]
            ));
        }
    }
}

/// One thing a client saw about a flow.
#[derive(Debug)]
pub(crate) struct Seen {
    /// Where from: `ws event`, `ws snapshot`, `GET`.
    pub(crate) source: &'static str,
    /// A time from which the seen state held (an event's `ts`, a view's
    /// `updatedAt`).
    pub(crate) since_ms: u64,
    pub(crate) seq: u64,
    pub(crate) what: SeenState,
}

#[derive(Debug)]
pub(crate) enum SeenState {
    Flow(String),
    Node {
        name: String,
        status: String,
        attempt: u64,
        result: Option<Value>,
    },
}

/// Everything seen in one flow view (a snapshot or a GET).
pub(crate) fn seen_in_view(source: &'static str, view: &Value, out: &mut Vec<Seen>) {
    let since_ms = view["updatedAt"].as_u64().unwrap_or(0);
    let seq = view["seq"].as_u64().unwrap_or(0);
    out.push(Seen {
        source,
        since_ms,
        seq,
        what: SeenState::Flow(view["status"].as_str().unwrap_or_default().to_owned()),
    });
    for node in view["nodes"].as_array().into_iter().flatten() {
        out.push(Seen {
            source,
            since_ms,
            seq,
            what: SeenState::Node {
                name: node["name"].as_str().unwrap_or_default().to_owned(),
                status: node["status"].as_str().unwrap_or_default().to_owned(),
                attempt: node["attempt"].as_u64().unwrap_or(0),
                result: node.get("result").cloned(),
            },
        });
    }
}

/// Checks what was seen of one flow against its final durable view (module docs,
/// 5). `retries` are the times (ms) at which retries of the flow were answered,
/// or given up on without an answer.
pub(crate) fn check_seen(
    id: &str,
    seen: &[Seen],
    final_view: &Value,
    retries: &[u64],
    problems: &mut Vec<String>,
) {
    let final_seq = final_view["seq"].as_u64().unwrap_or(0);
    let final_status = final_view["status"].as_str().unwrap_or_default();
    let retried_since = |t: u64| retries.iter().any(|&r| r >= t);
    for s in seen {
        if s.seq > final_seq {
            problems.push(format!(
                "flow {id}: {} at seq {} but the durable flow is at seq {final_seq}",
                s.source, s.seq
            ));
        }
        match &s.what {
            SeenState::Flow(status) => {
                let undone = match status.as_str() {
                    "completed" => final_status != "completed",
                    "failed" | "cancelled" => final_status != status && !retried_since(s.since_ms),
                    _ => false,
                };
                if undone {
                    problems.push(format!(
                        "flow {id}: seen {status} ({} seq {}, since {}), ends {final_status}{}",
                        s.source,
                        s.seq,
                        s.since_ms,
                        if retries.is_empty() {
                            " without any retry"
                        } else {
                            " with no retry after it"
                        }
                    ));
                }
            }
            SeenState::Node {
                name,
                status,
                attempt,
                result,
            } => {
                let Some(fin) = node_of(final_view, name) else {
                    problems.push(format!(
                        "flow {id}: node {name} seen ({}) but not in the flow",
                        s.source
                    ));
                    continue;
                };
                let fin_status = fin["status"].as_str().unwrap_or_default();
                let fin_attempt = fin["attempt"].as_u64().unwrap_or(0);
                if fin_attempt < *attempt {
                    problems.push(format!(
                        "flow {id} node {name}: attempt {attempt} seen ({} seq {}), durable attempt {fin_attempt}",
                        s.source, s.seq
                    ));
                }
                match status.as_str() {
                    "completed" => {
                        if fin_status != "completed" || fin_attempt != *attempt {
                            problems.push(format!(
                                "flow {id} node {name}: seen completed at attempt {attempt} ({} seq {}), \
                                 ends {fin_status} at attempt {fin_attempt}",
                                s.source, s.seq
                            ));
                        } else if let Some(result) = result {
                            if fin.get("result") != Some(result) {
                                problems.push(format!(
                                    "flow {id} node {name}: result {result} seen ({} seq {}), durable result {}",
                                    s.source, s.seq, fin["result"]
                                ));
                            }
                        }
                    }
                    "failed" | "skipped" | "cancelled" => {
                        let same = fin_status == status && fin_attempt == *attempt;
                        if !same && !retried_since(s.since_ms) {
                            problems.push(format!(
                                "flow {id} node {name}: seen {status} at attempt {attempt} ({} seq {}, since {}), \
                                 ends {fin_status} at attempt {fin_attempt} with no retry after it",
                                s.source, s.seq, s.since_ms
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// What is left in Redis under `prefix` but the global keys (module docs, 6).
pub(crate) fn redis_leftovers(redis: &RedisServer, prefix: &str) -> Result<Vec<String>, String> {
    use redis::Commands;
    let mut conn = redis.connection().map_err(|e| e.to_string())?;
    let keys: Vec<String> = conn
        .scan_match::<_, String>(format!("{prefix}:*"))
        .map_err(|e| e.to_string())?
        .collect::<redis::RedisResult<Vec<String>>>()
        .map_err(|e| e.to_string())?;
    let mut left = Vec::new();
    for key in keys {
        let short = key
            .strip_prefix(&format!("{prefix}:"))
            .unwrap_or(&key)
            .to_owned();
        if GLOBAL_KEYS.contains(&short.as_str()) {
            continue;
        }
        // A queue's counter of jobs handed out (take.lua) lives as long as the queue,
        // the limits' counter as long as the deployment, and a rate limit's state
        // expires by itself one period after its last job.
        if (short.starts_with("q:") && short.ends_with(":takes"))
            || short == "limits:seq"
            || (short.starts_with("rl:") && short.ends_with(":tat"))
        {
            continue;
        }
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query(&mut conn)
            .map_err(|e| e.to_string())?;
        let is_stream = kind == "stream"
            && (short == "completions"
                || (short.starts_with("q:") && !short.ends_with(":delayed")));
        if !is_stream {
            let what = match kind.as_str() {
                "hash" => format!(
                    "{} fields",
                    conn.hlen::<_, usize>(&key).map_err(|e| e.to_string())?
                ),
                "zset" => format!(
                    "{} members",
                    conn.zcard::<_, usize>(&key).map_err(|e| e.to_string())?
                ),
                _ => String::new(),
            };
            left.push(format!("key {key} ({kind} {what})"));
            continue;
        }
        let len: usize = conn.xlen(&key).map_err(|e| e.to_string())?;
        let groups: redis::streams::StreamInfoGroupsReply =
            conn.xinfo_groups(&key).map_err(|e| e.to_string())?;
        let pending: Vec<String> = groups
            .groups
            .iter()
            .filter(|g| g.pending > 0)
            .map(|g| format!("{} pending in group {}", g.pending, g.name))
            .collect();
        if len > 0 || !pending.is_empty() {
            let mut entries = String::new();
            if len > 0 {
                let range: redis::streams::StreamRangeReply = conn
                    .xrange_count(&key, "-", "+", 3)
                    .map_err(|e| e.to_string())?;
                let shown: Vec<String> = range
                    .ids
                    .iter()
                    .map(|e| {
                        let fields: BTreeMap<String, String> = e
                            .map
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    redis::from_redis_value::<String>(v.clone())
                                        .unwrap_or_default(),
                                )
                            })
                            .collect();
                        format!("{fields:?}")
                    })
                    .collect();
                entries = format!("; first entries: {}", shown.join(", "));
            }
            left.push(format!(
                "stream {key}: XLEN {len}, {}{entries}",
                pending.join(", ")
            ));
        }
    }
    Ok(left)
}

/// Records left in the server's sled data dir (the server must be gone): every
/// tree but `meta` and sled's default tree must be empty.
pub(crate) fn sled_leftovers(dir: &std::path::Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let db = loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => break db,
            Err(e) if Instant::now() > deadline => {
                return vec![format!("cannot open the data dir: {e}")]
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut left = Vec::new();
    for name in db.tree_names() {
        let tree_name = String::from_utf8_lossy(&name).into_owned();
        if tree_name == "meta" || tree_name == "__sled__default" {
            continue;
        }
        let tree = db.open_tree(&name).unwrap();
        let count = tree.len();
        if count > 0 {
            let keys: Vec<String> = tree
                .iter()
                .keys()
                .take(3)
                .filter_map(Result::ok)
                .map(|k| format!("{:02x?}", &k[..k.len().min(20)]))
                .collect();
            left.push(format!(
                "tree {tree_name}: {count} records, e.g. {}",
                keys.join(", ")
            ));
        }
    }
    left
}

/// The final, durable state of every listed flow (GET of each), and the list.
pub(crate) async fn final_views(
    shared: &Shared,
    findings: &mut Findings,
) -> (Vec<Value>, HashMap<String, Value>) {
    let url = shared.url();
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        if let Some(listed) = list_all(&shared.client, &url, None).await {
            break listed;
        }
        assert!(Instant::now() < deadline, "GET /flows keeps failing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut finals: HashMap<String, Value> = HashMap::new();
    for flow in &listed {
        let id = flow["id"].as_str().unwrap_or_default().to_owned();
        match get(&shared.client, &url, &format!("/flows/{id}")).await {
            Some((200, view)) => {
                finals.insert(id, view);
            }
            other => findings.zombies.push(format!(
                "flow {id} ({}) is listed but GET answers {}",
                flow["name"],
                match other {
                    Some((status, body)) => format!("{status} {body}"),
                    None => "nothing".to_owned(),
                }
            )),
        }
    }
    (listed, finals)
}

/// Checks 1, 3 and 4 of the module docs: every created flow is there once (or
/// gone, if deleted), and deleted flows stay gone.
pub(crate) async fn check_presence(
    shared: &Shared,
    planned: &[PlannedFlow],
    listed: &[Value],
    rec: &Recorded,
    findings: &mut Findings,
) {
    let url = shared.url();
    let names: HashSet<&str> = planned.iter().map(|f| f.name.as_str()).collect();
    let listed_by_name = ids_by_name(listed);
    for name in listed_by_name.keys() {
        if !names.contains(name.as_str()) {
            findings.other.push(format!(
                "listed flow {name:?} was never created by the test"
            ));
        }
    }
    let deleted_at: HashMap<&str, u64> = rec
        .ops
        .iter()
        .filter(|o| o.kind == "delete" && o.status == Some(204))
        .map(|o| (o.flow.as_str(), o.done_ms))
        .collect();
    // A DELETE without a clear answer may or may not have deleted the flow.
    let maybe_deleted: HashSet<&str> = rec
        .ops
        .iter()
        .filter(|o| o.kind == "delete" && o.status != Some(204) && o.status != Some(404))
        .map(|o| o.flow.as_str())
        .collect();
    let mut first_delete_sent: HashMap<&str, u64> = HashMap::new();
    for o in rec.ops.iter().filter(|o| o.kind == "delete") {
        let t = first_delete_sent
            .entry(o.flow.as_str())
            .or_insert(o.sent_ms);
        *t = (*t).min(o.sent_ms);
    }
    for flow in planned {
        let outcome = rec.creates.get(&flow.index).cloned().unwrap_or_default();
        let listed_ids = listed_by_name.get(&flow.name).cloned().unwrap_or_default();
        let answered: HashSet<&String> = outcome.ids.iter().collect();
        if answered.len() > 1 {
            findings.duplicates.push(format!(
                "{} (key {:?}) was answered with different flows: {:?}",
                flow.name, flow.key, outcome.ids
            ));
        }
        if flow.key.is_some() && outcome.ids.is_empty() {
            findings.other.push(format!(
                "{} (key {:?}) was never answered 201 in {CREATE_DEADLINE:?}: refused {:?}, \
                 last unclear answer {:?}",
                flow.name, flow.key, outcome.refused, outcome.last_unclear
            ));
        }
        let Some(id) = outcome.ids.first() else {
            // No 201: the flow may exist (a create without a clear answer), once.
            if listed_ids.len() > usize::from(outcome.unclear) {
                findings.duplicates.push(format!(
                    "{} was never answered 201 (unclear: {}) and is listed {} times",
                    flow.name,
                    outcome.unclear,
                    listed_ids.len()
                ));
            }
            continue;
        };
        if let Some(&done) = deleted_at.get(id.as_str()) {
            if !listed_ids.is_empty() {
                findings.zombies.push(format!(
                    "flow {id} ({}) was deleted (204) and is listed again",
                    flow.name
                ));
            }
            match get(&shared.client, &url, &format!("/flows/{id}")).await {
                Some((404, _)) => {}
                other => findings.zombies.push(format!(
                    "flow {id} ({}) was deleted (204) and GET answers {}",
                    flow.name,
                    match other {
                        Some((status, body)) => format!("{status} {}", describe(&body)),
                        None => "nothing".to_owned(),
                    }
                )),
            }
            for msg in rec.ws.iter().map(|r| &r.msg) {
                if msg["type"] == "flow:updated"
                    && msg["flowId"] == id.as_str()
                    && msg["ts"].as_u64() > Some(done)
                {
                    findings.zombies.push(format!(
                        "flow {id} was deleted (204 at {done}) and then sent an event: {msg}"
                    ));
                }
            }
            for g in rec
                .gets
                .iter()
                .filter(|g| &g.flow == id && g.status == 200 && g.sent_ms > done)
            {
                findings.zombies.push(format!(
                    "flow {id} was deleted (204 at {done}) and a GET sent at {} answered 200",
                    g.sent_ms
                ));
            }
            continue;
        }
        let allowed = if maybe_deleted.contains(id.as_str()) {
            0..=1
        } else {
            1..=1
        };
        if listed_ids.len() > 1 {
            findings.duplicates.push(format!(
                "{} (key {:?}) is listed {} times: {listed_ids:?}",
                flow.name,
                flow.key,
                listed_ids.len()
            ));
        } else if !allowed.contains(&listed_ids.len()) {
            let now = get(&shared.client, &url, &format!("/flows/{id}")).await;
            findings.lost.push(format!(
                "flow {id} ({}) was answered 201 and never deleted, but is not listed (GET: {:?})",
                flow.name,
                now.map(|(s, _)| s)
            ));
        } else if listed_ids.first().is_some_and(|l| l != id) {
            findings.duplicates.push(format!(
                "{} (key {:?}) was answered {id} but the list shows {listed_ids:?}",
                flow.name, flow.key
            ));
        }
        // A 404 before any DELETE was sent: the flow was lost, if only for a while.
        let first_delete = first_delete_sent
            .get(id.as_str())
            .copied()
            .unwrap_or(u64::MAX);
        let early_404 = rec
            .gets
            .iter()
            .filter(|g| &g.flow == id && g.status == 404)
            .map(|g| g.sent_ms)
            .chain(
                rec.ops
                    .iter()
                    .filter(|o| &o.flow == id && o.status == Some(404))
                    .map(|o| o.sent_ms),
            )
            .filter(|&t| t < first_delete)
            .min();
        if let Some(t) = early_404 {
            findings.lost.push(format!(
                "flow {id} ({}) answered 404 to a request sent at {t}, before any DELETE",
                flow.name
            ));
        }
    }
}

/// Numbers about what the clients saw, for the detail line.
#[derive(Debug, Default)]
pub(crate) struct SeenCounts {
    pub(crate) ws_events: usize,
    pub(crate) ws_snapshots: usize,
    pub(crate) get_views: usize,
}

/// Checks 2 and 5 of the module docs on every flow with a final view.
pub(crate) fn check_flows(
    planned: &[PlannedFlow],
    finals: &HashMap<String, Value>,
    rec: &Recorded,
    findings: &mut Findings,
) -> SeenCounts {
    let by_name: HashMap<&str, &PlannedFlow> =
        planned.iter().map(|f| (f.name.as_str(), f)).collect();
    let mut counts = SeenCounts::default();
    let mut seen: HashMap<String, Vec<Seen>> = HashMap::new();
    let mut events_by_seq: HashMap<(String, u64), Value> = HashMap::new();
    for record in &rec.ws {
        let msg = &record.msg;
        match msg["type"].as_str() {
            Some("flow:updated") => {
                counts.ws_events += 1;
                let id = msg["flowId"].as_str().unwrap_or_default().to_owned();
                let seq = msg["seq"].as_u64().unwrap_or(0);
                let essence = json!({"node": msg.get("node"), "status": msg["status"], "attempt": msg["attempt"]});
                if let Some(before) = events_by_seq.insert((id.clone(), seq), essence.clone()) {
                    if before != essence {
                        findings.taken_back.push(format!(
                            "flow {id} seq {seq}: two different events, {before} and {essence} \
                             (the second on connection {})",
                            record.conn
                        ));
                    }
                }
                let status = msg["status"].as_str().unwrap_or_default().to_owned();
                let what = match msg["node"].as_str() {
                    Some(node) => SeenState::Node {
                        name: node.to_owned(),
                        status,
                        attempt: msg["attempt"].as_u64().unwrap_or(0),
                        result: None,
                    },
                    None => SeenState::Flow(status),
                };
                seen.entry(id).or_default().push(Seen {
                    source: "ws event",
                    since_ms: msg["ts"].as_u64().unwrap_or(0),
                    seq,
                    what,
                });
            }
            Some("snapshot") => {
                counts.ws_snapshots += 1;
                let id = msg["flow"]["id"].as_str().unwrap_or_default().to_owned();
                seen_in_view("ws snapshot", &msg["flow"], seen.entry(id).or_default());
            }
            _ => {}
        }
    }
    for g in rec.gets.iter().filter(|g| g.status == 200) {
        counts.get_views += 1;
        seen_in_view("GET", &g.body, seen.entry(g.flow.clone()).or_default());
    }
    for (id, view) in finals {
        let name = view["name"].as_str().unwrap_or_default();
        if let Some(planned) = by_name.get(name) {
            check_results(planned, view, &mut findings.wrong);
        }
        let sent = |kind: &str| rec.ops.iter().any(|o| &o.flow == id && o.kind == kind);
        if view["status"] == "cancelled" && !sent("cancel") {
            findings.taken_back.push(format!(
                "flow {id} ({name}) ended cancelled, but no cancel was sent"
            ));
        }
        // Retries that may have been applied: answered 200 (or 5xx), or not at all.
        let retries: Vec<u64> = rec
            .ops
            .iter()
            .filter(|o| {
                &o.flow == id && o.kind == "retry" && o.status != Some(409) && o.status != Some(404)
            })
            .map(|o| o.done_ms)
            .collect();
        if let Some(seen) = seen.get(id) {
            check_seen(id, seen, view, &retries, &mut findings.taken_back);
        }
    }
    counts
}

/// Deletes every flow (each listed one and each answered 201), then waits until
/// the list is empty and Redis holds nothing but the global keys (check 6).
pub(crate) async fn delete_everything(
    run: &Run,
    finals: &HashMap<String, Value>,
    rec: &Recorded,
    findings: &mut Findings,
) {
    let shared = &run.shared;
    let url = shared.url();
    let mut ids: Vec<String> = finals.keys().cloned().collect();
    ids.extend(rec.creates.values().filter_map(|c| c.ids.first().cloned()));
    ids.sort();
    ids.dedup();
    for id in &ids {
        let mut answer = None;
        for _ in 0..5 {
            answer = shared
                .op(
                    reqwest::Method::DELETE,
                    id,
                    &format!("/flows/{id}"),
                    "final delete",
                )
                .await;
            if answer.is_some_and(|s| s < 500) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !matches!(answer, Some(204 | 404)) {
            findings
                .other
                .push(format!("the final DELETE of flow {id} answered {answer:?}"));
        }
    }
    let deadline = Instant::now() + CLEAN;
    loop {
        let listed = list_all(&shared.client, &url, None).await;
        let left = match blocking(|| redis_leftovers(&run.redis, &run.fleet.deployment.prefix)) {
            Ok(left) => left,
            Err(e) => vec![format!("cannot read Redis: {e}")],
        };
        let clean = listed.as_ref().is_some_and(Vec::is_empty) && left.is_empty();
        if clean || Instant::now() >= deadline {
            for flow in listed.into_iter().flatten() {
                findings.zombies.push(format!(
                    "flow {} ({}) is still listed {CLEAN:?} after its DELETE",
                    flow["id"], flow["name"]
                ));
            }
            findings.keys_left.extend(left);
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{CreateMode, PlannedNode};

    // ---------------------------------------------------------------------------------
    // The checks themselves, on made-up histories: each must catch what it is for
    // and let the legitimate cases through.
    // ---------------------------------------------------------------------------------

    /// A final flow view with `(name, status, attempt, result)` nodes.
    fn view(status: &str, seq: u64, nodes: &[(&str, &str, u64, Option<Value>)]) -> Value {
        let nodes: Vec<Value> = nodes
            .iter()
            .map(|(name, status, attempt, result)| {
                let mut node = json!({"name": name, "status": status, "attempt": attempt});
                if let Some(result) = result {
                    node["result"] = result.clone();
                }
                node
            })
            .collect();
        json!({"id": "f", "name": "t", "status": status, "seq": seq, "updatedAt": 1_000, "nodes": nodes})
    }

    fn node_seen(name: &str, status: &str, attempt: u64, since_ms: u64, seq: u64) -> Seen {
        Seen {
            source: "ws event",
            since_ms,
            seq,
            what: SeenState::Node {
                name: name.to_owned(),
                status: status.to_owned(),
                attempt,
                result: None,
            },
        }
    }

    #[test]
    fn check_seen_catches_what_a_crash_took_back() {
        let fin = view("running", 5, &[("a", "queued", 2, None)]);
        let mut problems = Vec::new();
        // Seen completed, durable queued again: taken back, retry or not.
        check_seen(
            "f",
            &[node_seen("a", "completed", 1, 100, 3)],
            &fin,
            &[500],
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        // A seq beyond the durable one.
        problems.clear();
        check_seen(
            "f",
            &[node_seen("a", "queued", 2, 100, 6)],
            &fin,
            &[],
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        // An attempt that went down.
        problems.clear();
        check_seen(
            "f",
            &[node_seen("a", "active", 3, 100, 4)],
            &fin,
            &[],
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        // A flow seen failed, running at the end without a retry after it.
        problems.clear();
        let failed = Seen {
            source: "GET",
            since_ms: 200,
            seq: 4,
            what: SeenState::Flow("failed".to_owned()),
        };
        check_seen("f", &[failed], &fin, &[150], &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn check_seen_lets_retries_and_progress_through() {
        let fin = view(
            "completed",
            9,
            &[("a", "completed", 2, Some(json!({"attempt": 2})))],
        );
        let mut problems = Vec::new();
        let seen = [
            // Failed at attempt 1 at 100; a retry answered at 150 re-ran it.
            node_seen("a", "failed", 1, 100, 3),
            Seen {
                source: "ws event",
                since_ms: 100,
                seq: 4,
                what: SeenState::Flow("failed".to_owned()),
            },
            node_seen("a", "queued", 2, 150, 6),
            node_seen("a", "completed", 2, 160, 8),
            Seen {
                source: "ws snapshot",
                since_ms: 160,
                seq: 8,
                what: SeenState::Node {
                    name: "a".to_owned(),
                    status: "completed".to_owned(),
                    attempt: 2,
                    result: Some(json!({"attempt": 2})),
                },
            },
        ];
        check_seen("f", &seen, &fin, &[150], &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        // The same history with a different result in the snapshot is caught.
        let other = [Seen {
            source: "ws snapshot",
            since_ms: 160,
            seq: 8,
            what: SeenState::Node {
                name: "a".to_owned(),
                status: "completed".to_owned(),
                attempt: 2,
                result: Some(json!({"attempt": 3})),
            },
        }];
        check_seen("f", &other, &fin, &[150], &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn check_results_follows_echo_through_parents() {
        let planned = PlannedFlow {
            index: 0,
            name: "t".to_owned(),
            key: None,
            mode: CreateMode::NoKey,
            spec: Value::Null,
            nodes: vec![
                PlannedNode {
                    name: "a".to_owned(),
                    parents: vec![],
                    kind: Kind::Fail { times: 1 },
                },
                PlannedNode {
                    name: "b".to_owned(),
                    parents: vec!["a".to_owned()],
                    kind: Kind::Echo(json!({"x": 1})),
                },
            ],
        };
        let a = Some(json!({"attempt": 2}));
        let good = json!({"data": {"x": 1}, "parents": {"a": {"attempt": 2}}});
        let mut wrong = Vec::new();
        check_results(
            &planned,
            &view(
                "completed",
                9,
                &[
                    ("a", "completed", 2, a.clone()),
                    ("b", "completed", 1, Some(good)),
                ],
            ),
            &mut wrong,
        );
        assert!(wrong.is_empty(), "{wrong:?}");
        // `b` got another parent result than the durable one.
        let stale = json!({"data": {"x": 1}, "parents": {"a": {"attempt": 1}}});
        check_results(
            &planned,
            &view(
                "completed",
                9,
                &[("a", "completed", 2, a), ("b", "completed", 1, Some(stale))],
            ),
            &mut wrong,
        );
        assert_eq!(wrong.len(), 1, "{wrong:?}");
        // `fail` cannot complete at an attempt it fails at.
        wrong.clear();
        check_results(
            &planned,
            &view(
                "failed",
                9,
                &[
                    ("a", "completed", 1, Some(json!({"attempt": 1}))),
                    ("b", "pending", 0, None),
                ],
            ),
            &mut wrong,
        );
        assert_eq!(wrong.len(), 1, "{wrong:?}");
    }

    #[test]
    fn sled_leftovers_sees_every_tree_but_meta() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("engine-id", "x")
                .unwrap();
            db.flush().unwrap();
        }
        assert!(sled_leftovers(dir.path()).is_empty());
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("specs").unwrap().insert("f", "{}").unwrap();
            db.flush().unwrap();
        }
        let left = sled_leftovers(dir.path());
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].starts_with("tree specs: 1 records"), "{left:?}");
    }
}
