//! What the benchmark learns from the event feed: when every node went `active` and
//! `completed`, when every flow ended, and the latencies computed from those times.
//!
//! The feed is the engine's own (embedded runs) or the server's WebSocket
//! (`--over-http`); both reduce to [`Tracker::on_event`]. Times are the events'
//! `ts`, taken by the engine when it applied the change, so the figures do not
//! include the delay of the feed itself. `ts` has a resolution of 1 ms, and so
//! have the latencies.

use std::collections::HashMap;
use std::time::Instant;

use dagflow_actors::FlowId;
use indicatif::ProgressBar;
use serde::Serialize;

use super::shapes::{node_index, Topology};

/// A node time not seen (yet).
const UNSEEN: u64 = 0;

/// Everything known about the flows of one run.
pub(crate) struct Tracker {
    /// Nodes per flow, for sizing each flow's record.
    nodes_per_flow: usize,
    /// Per flow, by id.
    flows: HashMap<FlowId, FlowTrack>,
    /// Flows whose terminal event (or terminal status, after a lag) was seen.
    ended: usize,
    /// Of those, the ones that did not end `completed`.
    not_completed: usize,
    /// When the last flow ended, as this process saw it.
    last_end: Option<Instant>,
    /// Events the feed lost (the subscriber lagged); their flows' latencies may be
    /// incomplete and are left out.
    pub(crate) lagged: u64,
    /// Flows ended, for the eye.
    progress: ProgressBar,
}

/// One flow's times (ms since the epoch, [`UNSEEN`] when unknown).
struct FlowTrack {
    /// Just before `create` was called.
    submitted_ms: u64,
    /// How long `create` took to answer, in µs.
    create_us: Option<u64>,
    /// First `active` event per node.
    active: Vec<u64>,
    /// `completed` event per node.
    completed: Vec<u64>,
    /// The flow's terminal event: completed or not, and its `ts` ([`UNSEEN`] when
    /// the end was learnt by polling after the feed lagged).
    end: Option<(bool, u64)>,
}

impl FlowTrack {
    fn new(nodes: usize) -> Self {
        FlowTrack {
            submitted_ms: UNSEEN,
            create_us: None,
            active: vec![UNSEEN; nodes],
            completed: vec![UNSEEN; nodes],
            end: None,
        }
    }
}

/// Median and tail of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub samples: usize,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (all zero when there are none).
    pub(crate) fn of(mut samples: Vec<f64>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i]
        };
        Percentiles {
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
            samples: samples.len(),
        }
    }
}

/// The latencies of a finished run.
pub(crate) struct Latencies {
    /// `create` called → flow `completed` event.
    pub(crate) flow: Percentiles,
    /// Last parent's `completed` event → child's `active` event.
    pub(crate) edge: Percentiles,
    /// `create` called → `create` answered (the flow is durable and started).
    pub(crate) create: Percentiles,
}

impl Tracker {
    /// A tracker for flows of `nodes_per_flow` nodes, ticking `progress` per flow end.
    pub(crate) fn new(nodes_per_flow: usize, progress: ProgressBar) -> Self {
        Tracker {
            nodes_per_flow,
            flows: HashMap::new(),
            ended: 0,
            not_completed: 0,
            last_end: None,
            lagged: 0,
            progress,
        }
    }

    fn flow(&mut self, id: FlowId) -> &mut FlowTrack {
        let nodes = self.nodes_per_flow;
        self.flows
            .entry(id)
            .or_insert_with(|| FlowTrack::new(nodes))
    }

    /// Records a created flow (its events may already have arrived).
    pub(crate) fn on_created(&mut self, id: FlowId, submitted_ms: u64, create_us: u64) {
        let flow = self.flow(id);
        flow.submitted_ms = submitted_ms;
        flow.create_us = Some(create_us);
    }

    /// Records one event.
    pub(crate) fn on_event(&mut self, id: FlowId, node: Option<&str>, status: &str, ts: u64) {
        match node {
            Some(name) => {
                let Some(i) = node_index(name) else { return };
                let flow = self.flow(id);
                let slot = match status {
                    "active" => flow.active.get_mut(i),
                    "completed" => flow.completed.get_mut(i),
                    _ => None,
                };
                // The first `active` counts (a retry would start the node again);
                // `ts` is at least 1 on any real clock, so it never looks unseen.
                if let Some(slot) = slot.filter(|s| **s == UNSEEN) {
                    *slot = ts.max(1);
                }
            }
            None => {
                if matches!(status, "completed" | "failed" | "cancelled") {
                    self.on_end(id, status == "completed", Some(ts));
                }
            }
        }
    }

    /// Records a flow's end; `ts` is `None` when it was learnt by polling after a lag.
    pub(crate) fn on_end(&mut self, id: FlowId, completed: bool, ts: Option<u64>) {
        let flow = self.flow(id);
        if flow.end.is_some() {
            return;
        }
        flow.end = Some((completed, ts.unwrap_or(UNSEEN)));
        self.ended += 1;
        if !completed {
            self.not_completed += 1;
        }
        self.last_end = Some(Instant::now());
        self.progress.inc(1);
    }

    /// Flows seen ending.
    pub(crate) fn ended(&self) -> usize {
        self.ended
    }

    /// Flows that ended otherwise than `completed`.
    pub(crate) fn not_completed(&self) -> usize {
        self.not_completed
    }

    /// When the last flow ended.
    pub(crate) fn last_end(&self) -> Option<Instant> {
        self.last_end
    }

    /// The created flows that have not been seen ending.
    pub(crate) fn unfinished(&self) -> Vec<FlowId> {
        self.flows
            .iter()
            .filter(|(_, f)| f.end.is_none() && f.create_us.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The latencies, from every sample whose two events were both seen.
    pub(crate) fn latencies(&self, topology: &Topology) -> Latencies {
        let mut flow_ms = Vec::with_capacity(self.flows.len());
        let mut edge_ms = Vec::with_capacity(self.flows.len() * topology.len());
        let mut create_ms = Vec::with_capacity(self.flows.len());
        for flow in self.flows.values() {
            if let Some(us) = flow.create_us {
                create_ms.push(us as f64 / 1000.0);
            }
            if let Some((_, end)) = flow.end {
                if flow.submitted_ms != UNSEEN && end != UNSEEN {
                    flow_ms.push(end.saturating_sub(flow.submitted_ms) as f64);
                }
            }
            for (child, parents) in topology.parents.iter().enumerate() {
                if parents.is_empty() || flow.active[child] == UNSEEN {
                    continue;
                }
                // The child became ready when its last parent completed.
                let times = parents.iter().map(|p| flow.completed[*p as usize]);
                if times.clone().all(|t| t != UNSEEN) {
                    let ready = times.max().unwrap_or(UNSEEN);
                    edge_ms.push(flow.active[child].saturating_sub(ready) as f64);
                }
            }
        }
        Latencies {
            flow: Percentiles::of(flow_ms),
            edge: Percentiles::of(edge_ms),
            create: Percentiles::of(create_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::shapes::{Shape, ShapeParams};
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p99, p.max, p.samples), (50.0, 99.0, 100.0, 100));
        assert_eq!(Percentiles::of(vec![]).samples, 0);
        assert_eq!(Percentiles::of(vec![3.0]).p99, 3.0);
    }

    #[test]
    fn edge_latency_counts_from_the_last_parent() {
        let topo = Topology::new(
            Shape::Diamond,
            ShapeParams {
                depth: 1,
                width: 2,
                layers: 1,
                seed: 0,
            },
        );
        let mut t = Tracker::new(topo.len(), ProgressBar::hidden());
        let id = FlowId::new();
        t.on_created(id, 1000, 500);
        for (node, status, ts) in [
            ("n0", "active", 1001),
            ("n0", "completed", 1002),
            ("n1", "active", 1004),
            ("n2", "active", 1005),
            ("n1", "completed", 1006),
            ("n2", "completed", 1010),
            ("n3", "active", 1013),
            ("n3", "completed", 1014),
        ] {
            t.on_event(id, Some(node), status, ts);
        }
        t.on_event(id, None, "completed", 1015);
        let l = t.latencies(&topo);
        assert_eq!(t.ended(), 1);
        assert_eq!(l.flow.p50, 15.0);
        // n1: 2, n2: 3, n3: 3 (from n2, the last parent).
        assert_eq!(l.edge.samples, 3);
        assert_eq!((l.edge.p50, l.edge.max), (3.0, 3.0));
        assert_eq!(l.create.p50, 0.5);
    }
}
