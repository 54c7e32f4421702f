//! The flow shapes `dagflow bench` runs: each is a fixed topology (nodes in
//! topological order, each with its parents' indices) from which one spec is built
//! and submitted many times.
//!
//! Nodes are named `n0`, `n1`, … in topological order so that an event's node name
//! maps back to its index without a lookup table ([`node_index`]). Every node runs
//! the built-in `noop` handler, on the `default` queue unless the spec is built for
//! another (the idle and restart modes put their flows on a queue no worker serves).

use dagflow_actors::FlowSpec;
use serde_json::json;

/// Which topology a benchmark run submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A chain of `--depth` nodes, each the only child of the one before.
    Chain,
    /// One root, `--width` middle nodes that each depend on it, one sink that
    /// depends on all of them (1 → W → 1).
    Diamond,
    /// A diamond with a default width of 1,000.
    Wide,
    /// `--width` roots and one sink that depends on all of them (W → 1).
    Fanin,
    /// A random DAG of `--layers` layers of `--width` nodes; every node past the first
    /// layer has 1 to 3 parents in the layer above and sometimes one more further up.
    /// The same `--seed` gives the same DAG.
    Layered,
    /// A run-time fan-out: a root whose result lists `--width` items, a map node
    /// that runs once per item, and a sink that gets their results (1 → map(W) → 1):
    /// the same jobs as a diamond of the same width, decided at run time.
    Map,
    /// A flow that waits for a signal (a wait node, no worker), then runs one job:
    /// with `--idle`, the memory of flows that wait days for a person.
    Signal,
}

impl Shape {
    /// The shape's name as the JSON output spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Chain => "chain",
            Shape::Diamond => "diamond",
            Shape::Wide => "wide",
            Shape::Fanin => "fanin",
            Shape::Layered => "layered",
            Shape::Map => "map",
            Shape::Signal => "signal",
        }
    }

    /// The width used when `--width` is not given.
    pub fn default_width(self) -> usize {
        match self {
            Shape::Wide => 1000,
            _ => 10,
        }
    }
}

/// The size parameters of a shape (those that do not apply to it are ignored).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShapeParams {
    /// Chain length.
    pub(crate) depth: usize,
    /// Diamond, wide and fan-in width; layer width.
    pub(crate) width: usize,
    /// Number of layers.
    pub(crate) layers: usize,
    /// Seed of the layered DAG.
    pub(crate) seed: u64,
}

/// A shape made concrete: every node's parents, by index.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    /// `parents[i]` are the indices of node `i`'s parents, all smaller than `i`.
    pub(crate) parents: Vec<Vec<u32>>,
    /// For [`Shape::Map`]: node 1 maps over this many items of node 0's result.
    pub(crate) map_width: Option<usize>,
    /// For [`Shape::Signal`]: node 0 waits for a signal instead of running a job.
    pub(crate) wait_root: bool,
}

impl Topology {
    /// Builds the topology of `shape` at the given size.
    pub(crate) fn new(shape: Shape, p: ShapeParams) -> Topology {
        let parents = match shape {
            Shape::Chain => (0..p.depth.max(1))
                .map(|i| if i == 0 { vec![] } else { vec![i as u32 - 1] })
                .collect(),
            Shape::Diamond | Shape::Wide => {
                let w = p.width.max(1);
                let mut parents = vec![vec![]];
                parents.extend((0..w).map(|_| vec![0]));
                parents.push((1..=w as u32).collect());
                parents
            }
            Shape::Fanin => {
                let w = p.width.max(1);
                let mut parents: Vec<Vec<u32>> = (0..w).map(|_| vec![]).collect();
                parents.push((0..w as u32).collect());
                parents
            }
            Shape::Layered => layered(p.layers.max(1), p.width.max(1), p.seed),
            Shape::Map => vec![vec![], vec![0], vec![1]],
            Shape::Signal => vec![vec![], vec![0]],
        };
        Topology {
            parents,
            map_width: (shape == Shape::Map).then_some(p.width.max(1)),
            wait_root: shape == Shape::Signal,
        }
    }

    /// Number of nodes of the spec in one flow (a map node counts once).
    pub(crate) fn len(&self) -> usize {
        self.parents.len()
    }

    /// Number of jobs one flow runs: its nodes, with a map node counted as its
    /// elements. What throughput is measured in.
    pub(crate) fn jobs(&self) -> usize {
        match self.map_width {
            Some(w) => self.parents.len() - 1 + w,
            None => self.parents.len(),
        }
    }

    /// Number of edges in one flow.
    pub(crate) fn edges(&self) -> usize {
        self.parents.iter().map(Vec::len).sum()
    }

    /// Number of nodes without parents: the jobs a new flow enqueues at once.
    pub(crate) fn roots(&self) -> usize {
        if self.wait_root {
            // The root waits for a signal: nothing is enqueued.
            return 0;
        }
        self.parents.iter().filter(|p| p.is_empty()).count()
    }

    /// The flow spec every submission of this topology uses; its nodes run on
    /// `queue`, or on the engine's default queue when `None`.
    pub(crate) fn spec(
        &self,
        name: &str,
        queue: Option<&str>,
    ) -> Result<FlowSpec, serde_json::Error> {
        let nodes: Vec<serde_json::Value> = self
            .parents
            .iter()
            .enumerate()
            .map(|(i, parents)| {
                let parents: Vec<String> = parents.iter().map(|p| format!("n{p}")).collect();
                let mut node =
                    json!({ "name": format!("n{i}"), "handler": "noop", "parents": parents });
                if let Some(queue) = queue {
                    node["queue"] = json!(queue);
                }
                if self.wait_root && i == 0 {
                    node = json!({ "name": "n0", "wait": { "signal": "go" } });
                }
                if let Some(w) = self.map_width {
                    match i {
                        0 => {
                            node["handler"] = json!("echo");
                            node["data"] = json!({ "items": (0..w).collect::<Vec<_>>() });
                        }
                        1 => node["map"] = json!({ "from": "n0", "path": "/data/items" }),
                        _ => {}
                    }
                }
                node
            })
            .collect();
        serde_json::from_value(json!({ "name": name, "nodes": nodes }))
    }
}

/// The index of a node named `n{index}`.
pub(crate) fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix('n')?.parse().ok()
}

/// A random layered DAG: `layers` layers of `width` nodes. A node past the first
/// layer has 1 to 3 distinct parents in the layer just above it and, one time in
/// four, one more parent from any earlier layer (a skip edge).
fn layered(layers: usize, width: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = SplitMix64(seed);
    let mut parents = Vec::with_capacity(layers * width);
    for layer in 0..layers {
        for _ in 0..width {
            if layer == 0 {
                parents.push(vec![]);
                continue;
            }
            let above = ((layer - 1) * width) as u32;
            let want = 1 + rng.below(width.min(3) as u64) as usize;
            let mut mine: Vec<u32> = Vec::with_capacity(want + 1);
            while mine.len() < want {
                let p = above + rng.below(width as u64) as u32;
                if !mine.contains(&p) {
                    mine.push(p);
                }
            }
            if layer >= 2 && rng.below(4) == 0 {
                mine.push(rng.below(((layer - 1) * width) as u64) as u32);
            }
            mine.sort_unstable();
            parents.push(mine);
        }
    }
    parents
}

/// The next value of the splitmix64 sequence whose state is `state` (which it
/// advances): the project's one small seedable generator, shared by the benchmark's
/// random shapes and the end-to-end tests' seeded runs (`tests/common/rng.rs`), so
/// that a printed seed replays either, without a dependency.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small, seedable PRNG ([`splitmix64`]): enough for reproducible random shapes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// A number in `0..n` (`n > 0`); the modulo bias is irrelevant at these sizes.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(width: usize) -> ShapeParams {
        ShapeParams {
            depth: 5,
            width,
            layers: 4,
            seed: 7,
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(Topology::new(Shape::Chain, params(3)).len(), 5);
        assert_eq!(Topology::new(Shape::Diamond, params(3)).len(), 5);
        assert_eq!(Topology::new(Shape::Wide, params(1000)).len(), 1002);
        assert_eq!(Topology::new(Shape::Fanin, params(3)).len(), 4);
        assert_eq!(Topology::new(Shape::Layered, params(3)).len(), 12);
        assert_eq!(Topology::new(Shape::Map, params(3)).len(), 3);
        assert_eq!(Topology::new(Shape::Map, params(3)).jobs(), 5);
        assert_eq!(Topology::new(Shape::Diamond, params(3)).jobs(), 5);
    }

    #[test]
    fn layered_is_a_seeded_dag_with_no_duplicate_edges() {
        let a = Topology::new(Shape::Layered, params(5));
        let b = Topology::new(Shape::Layered, params(5));
        assert_eq!(a.parents, b.parents);
        for (i, parents) in a.parents.iter().enumerate() {
            assert!(parents.iter().all(|p| (*p as usize) < i));
            let mut dedup = parents.clone();
            dedup.dedup();
            assert_eq!(&dedup, parents, "node {i}");
            assert_eq!(parents.is_empty(), i < 5, "node {i}");
        }
    }

    #[test]
    fn specs_validate() {
        for shape in [
            Shape::Chain,
            Shape::Diamond,
            Shape::Fanin,
            Shape::Layered,
            Shape::Map,
            Shape::Signal,
        ] {
            let topo = Topology::new(shape, params(4));
            let spec = topo
                .spec("t", None)
                .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
            dagflow_actors::spec::validate(&spec, &Default::default())
                .unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
            let last = spec.nodes.len() - 1;
            assert_eq!(node_index(&spec.nodes[last].name), Some(last));
        }
    }

    #[test]
    fn roots_and_queue() {
        assert_eq!(Topology::new(Shape::Diamond, params(8)).roots(), 1);
        assert_eq!(Topology::new(Shape::Fanin, params(3)).roots(), 3);
        assert_eq!(Topology::new(Shape::Layered, params(5)).roots(), 5);
        assert_eq!(Topology::new(Shape::Signal, params(5)).roots(), 0);
        let spec = Topology::new(Shape::Chain, params(3))
            .spec("t", Some("elsewhere"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(spec
            .nodes
            .iter()
            .all(|n| n.queue.as_deref() == Some("elsewhere")));
    }
}
