//! Tests of spec parsing and validation: every problem kind, defaults, both edge
//! directions, the design doc's example, and a chain long enough to break a
//! recursive cycle check.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::json;

use super::*;

/// Parses a spec written with `json!`, as a client would send it.
fn spec(value: serde_json::Value) -> FlowSpec {
    parse(&serde_json::to_vec(&value).unwrap()).unwrap()
}

fn validate_default(value: serde_json::Value) -> Result<Dag, SpecError> {
    validate(&spec(value), &Limits::default())
}

fn codes(err: &SpecError) -> Vec<&'static str> {
    err.problems.iter().map(|p| p.code).collect()
}

fn names(dag: &Dag, idxs: &[NodeIdx]) -> Vec<String> {
    idxs.iter().map(|&i| dag.node(i).name.to_string()).collect()
}

fn node<'a>(dag: &'a Dag, name: &str) -> &'a DagNode {
    dag.node(dag.lookup(name).unwrap())
}

/// A spec with one node per line of the design doc's "Flow spec" section.
const IMAGE_PIPELINE: &str = r#"{
  "name": "image pipeline",
  "nodes": [
    { "name": "download-image", "data": { "url": "https://example.com/a.png" } },
    { "name": "resize-image",   "parents": ["download-image"] },
    { "name": "add-watermark",  "parents": ["download-image"], "queue": "gpu" },
    { "name": "save-to-s3",     "parents": ["resize-image", "add-watermark"],
      "opts": { "attempts": 3, "backoff": { "type": "exponential", "delayMs": 500 }, "timeoutMs": 30000 } }
  ],
  "opts": { "onFailure": "continue" }
}"#;

#[test]
fn design_doc_example_parses_and_validates() {
    let spec = parse(IMAGE_PIPELINE.as_bytes()).unwrap();
    let dag = validate(&spec, &Limits::default()).unwrap();

    assert_eq!(dag.name, "image pipeline");
    assert_eq!(dag.len(), 4);
    assert!(!dag.is_empty());
    assert_eq!(dag.opts.on_failure, OnFailure::Continue);
    assert_eq!(
        dag.indices()
            .map(|i| dag.node(i).name.to_string())
            .collect::<Vec<_>>(),
        [
            "download-image",
            "resize-image",
            "add-watermark",
            "save-to-s3"
        ]
    );

    let download = node(&dag, "download-image");
    assert!(download.parents.is_empty());
    assert_eq!(
        names(&dag, &download.children),
        ["resize-image", "add-watermark"]
    );
    let data: serde_json::Value = serde_json::from_str(&download.data).unwrap();
    assert_eq!(data, json!({ "url": "https://example.com/a.png" }));

    let resize = node(&dag, "resize-image");
    assert_eq!(names(&dag, &resize.parents), ["download-image"]);
    assert_eq!(names(&dag, &resize.children), ["save-to-s3"]);
    assert_eq!(&*resize.queue, DEFAULT_QUEUE);

    let watermark = node(&dag, "add-watermark");
    assert_eq!(&*watermark.queue, "gpu");
    assert_eq!(&*watermark.handler, "add-watermark");
    assert_eq!(names(&dag, &watermark.children), ["save-to-s3"]);

    let save = node(&dag, "save-to-s3");
    assert_eq!(
        names(&dag, &save.parents),
        ["resize-image", "add-watermark"]
    );
    assert!(save.children.is_empty());
    assert_eq!(save.opts.attempts, 3);
    assert_eq!(
        save.opts.backoff,
        Some(Backoff {
            kind: BackoffKind::Exponential,
            delay_ms: 500
        })
    );
    assert_eq!(save.opts.timeout_ms, Some(30_000));
    assert!(!save.opts.continue_on_failure);
    assert_eq!(&*save.data, "null");
}

#[test]
fn defaults_are_filled_in() {
    let dag = validate_default(json!({ "nodes": [{ "name": "only" }] })).unwrap();
    assert_eq!(dag.name, "");
    assert_eq!(dag.opts, FlowOpts::default());
    assert_eq!(dag.opts.on_failure, OnFailure::Continue);
    let only = node(&dag, "only");
    assert_eq!(&*only.handler, "only");
    assert_eq!(&*only.queue, "default");
    assert_eq!(only.opts.attempts, 1);
    assert_eq!(only.opts.backoff, None);
    assert_eq!(only.opts.timeout_ms, None);
    assert_eq!(only.opts.max_stalled, None);
    assert!(!only.opts.continue_on_failure);
    assert_eq!(&*only.data, "null");
    assert_eq!(dag.lookup("only"), Some(NodeIdx::from_usize(0)));
    assert_eq!(dag.lookup("other"), None);
}

#[test]
fn explicit_handler_queue_and_fail_fast_are_kept() {
    let dag = validate_default(json!({
        "nodes": [{ "name": "n", "handler": "echo", "queue": "io-bound_2.x", "opts": { "attempts": 1000 } }],
        "opts": { "onFailure": "failFast" }
    }))
    .unwrap();
    let n = node(&dag, "n");
    assert_eq!(&*n.handler, "echo");
    assert_eq!(&*n.queue, "io-bound_2.x");
    assert_eq!(n.opts.attempts, MAX_ATTEMPTS);
    assert_eq!(dag.opts.on_failure, OnFailure::FailFast);
}

#[test]
fn continue_on_failure_is_merged_from_node_and_opts() {
    let dag = validate_default(json!({ "nodes": [
        { "name": "top-level", "continueOnFailure": true },
        { "name": "in-opts", "opts": { "continueOnFailure": true } },
        { "name": "neither" }
    ]}))
    .unwrap();
    assert!(node(&dag, "top-level").opts.continue_on_failure);
    assert!(node(&dag, "in-opts").opts.continue_on_failure);
    assert!(!node(&dag, "neither").opts.continue_on_failure);
}

#[test]
fn both_edge_directions_are_accepted_and_merged() {
    // A list that is written is complete; an edge may be written on either side
    // or on both. a -> b and a -> c are written on a's side only, b -> d on both
    // sides, c -> d on d's side only.
    let dag = validate_default(json!({ "nodes": [
        { "name": "a", "children": ["b", "c"] },
        { "name": "b", "children": ["d"] },
        { "name": "c" },
        { "name": "d", "parents": ["b", "c"] }
    ]}))
    .unwrap();
    assert_eq!(names(&dag, &node(&dag, "a").children), ["b", "c"]);
    assert_eq!(names(&dag, &node(&dag, "b").parents), ["a"]);
    assert_eq!(names(&dag, &node(&dag, "b").children), ["d"]);
    assert_eq!(names(&dag, &node(&dag, "c").parents), ["a"]);
    assert_eq!(names(&dag, &node(&dag, "c").children), ["d"]);
    // The edge b -> d was written twice but is one edge.
    assert_eq!(names(&dag, &node(&dag, "d").parents), ["b", "c"]);

    // Every edge appears exactly once on each side.
    for i in dag.indices() {
        for &c in &dag.node(i).children {
            assert_eq!(dag.node(c).parents.iter().filter(|&&p| p == i).count(), 1);
        }
        for &p in &dag.node(i).parents {
            assert_eq!(dag.node(p).children.iter().filter(|&&c| c == i).count(), 1);
        }
    }
}

#[test]
fn children_only_spec_gives_the_same_edges_as_parents_only() {
    let by_parents = validate_default(json!({ "nodes": [
        { "name": "x" }, { "name": "y", "parents": ["x"] }, { "name": "z", "parents": ["x", "y"] }
    ]}))
    .unwrap();
    let by_children = validate_default(json!({ "nodes": [
        { "name": "x", "children": ["y", "z"] }, { "name": "y", "children": ["z"] }, { "name": "z" }
    ]}))
    .unwrap();
    for i in by_parents.indices() {
        let mut p1 = by_parents.node(i).parents.clone();
        let mut p2 = by_children.node(i).parents.clone();
        p1.sort();
        p2.sort();
        assert_eq!(p1, p2);
        let mut c1 = by_parents.node(i).children.clone();
        let mut c2 = by_children.node(i).children.clone();
        c1.sort();
        c2.sort();
        assert_eq!(c1, c2);
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let limits = Limits {
        max_nodes: 50,
        max_name_len: 8,
        max_data_bytes: 20,
    };
    let flow = spec(json!({ "nodes": [
        /*  0 */ { "name": "a", "parents": ["a"] },
        /*  1 */ { "name": "a" },
        /*  2 */ { "name": "b", "parents": ["ghost"] },
        /*  3 */ { "name": "c", "children": ["phantom"] },
        /*  4 */ { "name": "toolongname" },
        /*  5 */ { "name": "d", "data": { "x": "aaaaaaaaaaaaaaaaaaaaaaaa" } },
        /*  6 */ { "name": "e", "opts": { "attempts": 0 } },
        /*  7 */ { "name": "f", "queue": "bad:q" },
        /*  8 */ { "name": "g", "parents": ["i"] },
        /*  9 */ { "name": "h", "parents": ["g"] },
        /* 10 */ { "name": "i", "parents": ["h"] },
        /* 11 */ { "name": "j", "children": ["k"] },
        /* 12 */ { "name": "k", "parents": ["l"] },
        /* 13 */ { "name": "l", "children": ["m"] },
        /* 14 */ { "name": "m" },
        /* 15 */ { "name": "n", "opts": { "timeoutMs": 0 } },
        /* 16 */ { "name": "o", "parents": ["m", "m"] },
        /* 17 */ { "name": "" }
    ]}));
    let err = validate(&flow, &limits).unwrap_err();
    assert_eq!(
        codes(&err),
        [
            // Per-node checks, in node order.
            "duplicate_name",
            "name_too_long",
            "data_too_large",
            "bad_attempts",
            "bad_queue_name",
            "bad_timeout",
            "empty_name",
            // Edges, in node order.
            "self_edge",
            "unknown_parent",
            "unknown_child",
            "edge_mismatch",
            "duplicate_edge",
            // Parents left out by a parent that lists its children.
            "edge_mismatch",
            // The whole graph.
            "cycle",
        ],
        "{err:#?}"
    );
    let about: Vec<Option<&str>> = err.problems.iter().map(|p| p.node.as_deref()).collect();
    assert_eq!(
        about,
        [
            Some("a"),
            Some("toolongname"),
            Some("d"),
            Some("e"),
            Some("f"),
            Some("n"),
            None,
            Some("a"),
            Some("b"),
            Some("c"),
            Some("j"),
            Some("o"),
            Some("k"),
            Some("g"),
        ]
    );
    let message = |code: &str| {
        err.problems
            .iter()
            .filter(|p| p.code == code)
            .map(|p| p.message.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(message("cycle"), ["the flow has a cycle: g -> h -> i -> g"]);
    assert_eq!(
        message("unknown_parent"),
        ["node 'b' names unknown parent 'ghost'"]
    );
    assert_eq!(
        message("unknown_child"),
        ["node 'c' names unknown child 'phantom'"]
    );
    assert_eq!(
        message("duplicate_name"),
        ["node name 'a' is used more than once"]
    );
    assert_eq!(
        message("edge_mismatch"),
        [
            "node 'j' lists child 'k', but 'k' does not list 'j' among its parents",
            "node 'k' lists parent 'l', but 'l' does not list 'k' among its children",
        ]
    );
    assert!(message("data_too_large")[0].contains("more than the limit of 20"));
    assert!(message("bad_attempts")[0].contains("0 attempts"));
    assert!(message("bad_queue_name")[0].contains("'bad:q'"));

    // The error's text summarizes the first three problems and counts the rest.
    let text = err.to_string();
    assert!(
        text.starts_with("invalid flow: node name 'a' is used more than once; "),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("(and {} more)", err.problems.len() - 3)),
        "{text}"
    );
}

#[test]
fn empty_flow_is_refused() {
    let err = validate_default(json!({ "nodes": [] })).unwrap_err();
    assert_eq!(codes(&err), ["empty_flow"]);
    assert_eq!(err.to_string(), "invalid flow: the flow has no nodes");

    let long_name = "x".repeat(DEFAULT_MAX_NAME_LEN + 1);
    let err = validate_default(json!({ "name": long_name, "nodes": [] })).unwrap_err();
    assert_eq!(codes(&err), ["empty_flow", "name_too_long"]);
}

#[test]
fn missing_nodes_field_is_a_serde_error() {
    let err = parse(br#"{"name": "x"}"#).unwrap_err();
    assert!(err.to_string().contains("missing field `nodes`"), "{err}");
}

#[test]
fn duplicate_names_are_reported_once_per_extra_use() {
    let err = validate_default(json!({ "nodes": [
        { "name": "x" }, { "name": "x" }, { "name": "y" }, { "name": "x" }
    ]}))
    .unwrap_err();
    assert_eq!(codes(&err), ["duplicate_name", "duplicate_name"]);
    assert!(err.problems.iter().all(|p| p.node.as_deref() == Some("x")));
}

#[test]
fn self_edges_in_both_directions() {
    let err = validate_default(json!({ "nodes": [
        { "name": "p", "parents": ["p"] },
        { "name": "c", "children": ["c"] }
    ]}))
    .unwrap_err();
    assert_eq!(codes(&err), ["self_edge", "self_edge"]);
    assert_eq!(err.problems[0].message, "node 'p' lists itself as a parent");
    assert_eq!(err.problems[1].message, "node 'c' lists itself as a child");
}

#[test]
fn edge_mismatch_child_side() {
    // `a` says `b` is its child; `b` lists its parents completely and `a` is not among them.
    let err = validate_default(json!({ "nodes": [
        { "name": "a", "children": ["b"] },
        { "name": "z" },
        { "name": "b", "parents": ["z"] }
    ]}))
    .unwrap_err();
    assert_eq!(codes(&err), ["edge_mismatch"]);
    assert_eq!(err.problems[0].node.as_deref(), Some("a"));
}

#[test]
fn edge_mismatch_parent_side() {
    // `b` says `a` is its parent; `a` lists its children completely and `b` is not among them.
    let err = validate_default(json!({ "nodes": [
        { "name": "a", "children": ["z"] },
        { "name": "z" },
        { "name": "b", "parents": ["a"] }
    ]}))
    .unwrap_err();
    assert_eq!(codes(&err), ["edge_mismatch"]);
    assert_eq!(err.problems[0].node.as_deref(), Some("b"));
}

#[test]
fn cycle_written_as_children_names_its_nodes_in_edge_order() {
    let err = validate_default(json!({ "nodes": [
        { "name": "a", "children": ["b"] },
        { "name": "b", "children": ["c"] },
        { "name": "c", "children": ["a"] }
    ]}))
    .unwrap_err();
    assert_eq!(codes(&err), ["cycle"]);
    assert_eq!(
        err.problems[0].message,
        "the flow has a cycle: a -> b -> c -> a"
    );
    assert_eq!(err.problems[0].node.as_deref(), Some("a"));
}

#[test]
fn cycle_behind_an_acyclic_prefix_names_only_the_cycle() {
    // root -> x -> y -> z -> x: the cycle is x, y, z; root only leads into it.
    let err = validate_default(json!({ "nodes": [
        { "name": "root" },
        { "name": "x", "parents": ["root", "z"] },
        { "name": "y", "parents": ["x"] },
        { "name": "z", "parents": ["y"] }
    ]}))
    .unwrap_err();
    assert_eq!(codes(&err), ["cycle"]);
    assert_eq!(
        err.problems[0].message,
        "the flow has a cycle: x -> y -> z -> x"
    );
}

#[test]
fn two_node_cycle() {
    let err = validate_default(json!({ "nodes": [
        { "name": "a", "parents": ["b"] },
        { "name": "b", "parents": ["a"] }
    ]}))
    .unwrap_err();
    assert_eq!(codes(&err), ["cycle"]);
    assert_eq!(err.problems[0].message, "the flow has a cycle: a -> b -> a");
}

#[test]
fn too_many_nodes_stops_early() {
    let limits = Limits {
        max_nodes: 3,
        ..Limits::default()
    };
    // Four nodes, each also with an unknown parent: only the count is reported.
    let nodes: Vec<_> = (0..4)
        .map(|i| json!({ "name": format!("n{i}"), "parents": ["nope"] }))
        .collect();
    let err = validate(&spec(json!({ "nodes": nodes })), &limits).unwrap_err();
    assert_eq!(codes(&err), ["too_many_nodes"]);
    assert_eq!(
        err.problems[0].message,
        "the flow has 4 nodes, more than the limit of 3"
    );

    let three: Vec<_> = (0..3).map(|i| json!({ "name": format!("n{i}") })).collect();
    assert!(validate(&spec(json!({ "nodes": three })), &limits).is_ok());
}

#[test]
fn names_over_the_limit() {
    let limits = Limits {
        max_name_len: 5,
        ..Limits::default()
    };
    let err = validate(
        &spec(json!({
            "name": "flow-name",
            "nodes": [
                { "name": "sixsix" },
                { "name": "ok", "handler": "handler" },
                { "name": "fine", "queue": "queue-x" },
                { "name": "exact", "handler": "12345", "queue": "12345" }
            ]
        })),
        &limits,
    )
    .unwrap_err();
    assert_eq!(
        codes(&err),
        [
            "name_too_long",
            "name_too_long",
            "name_too_long",
            "name_too_long"
        ]
    );
    let about: Vec<Option<&str>> = err.problems.iter().map(|p| p.node.as_deref()).collect();
    assert_eq!(about, [None, Some("sixsix"), Some("ok"), Some("fine")]);
    assert!(err.problems[0]
        .message
        .starts_with("the flow name is 9 bytes"));
    assert!(err.problems[2].message.starts_with("handler name of node"));
    assert!(err.problems[3].message.starts_with("queue name of node"));
}

#[test]
fn data_size_limit_counts_json_text() {
    let limits = Limits {
        max_data_bytes: 10,
        ..Limits::default()
    };
    // `"abcdefgh"` is exactly 10 bytes of JSON text.
    let ok = spec(json!({ "nodes": [{ "name": "n", "data": "abcdefgh" }] }));
    assert!(validate(&ok, &limits).is_ok());
    let big = spec(json!({ "nodes": [{ "name": "n", "data": "abcdefghi" }] }));
    let err = validate(&big, &limits).unwrap_err();
    assert_eq!(codes(&err), ["data_too_large"]);
    assert_eq!(
        err.problems[0].message,
        "node 'n' has 11 bytes of data, more than the limit of 10"
    );
}

#[test]
fn attempts_must_be_between_one_and_the_maximum() {
    for (attempts, ok) in [
        (0, false),
        (1, true),
        (MAX_ATTEMPTS, true),
        (MAX_ATTEMPTS + 1, false),
    ] {
        let result = validate_default(
            json!({ "nodes": [{ "name": "n", "opts": { "attempts": attempts } }] }),
        );
        match result {
            Ok(dag) => {
                assert!(ok, "{attempts} attempts accepted");
                assert_eq!(dag.nodes[0].opts.attempts, attempts);
            }
            Err(err) => {
                assert!(!ok, "{attempts} attempts refused");
                assert_eq!(codes(&err), ["bad_attempts"]);
            }
        }
    }
}

#[test]
fn queue_names_are_restricted() {
    for queue in [
        "",
        "has space",
        "colon:sep",
        "brace{x}",
        "ünï",
        "slash/x",
        "star*",
    ] {
        let err =
            validate_default(json!({ "nodes": [{ "name": "n", "queue": queue }] })).unwrap_err();
        assert_eq!(codes(&err), ["bad_queue_name"], "queue {queue:?}");
    }
    for queue in ["default", "gpu", "A-z_0.9"] {
        assert!(
            validate_default(json!({ "nodes": [{ "name": "n", "queue": queue }] })).is_ok(),
            "queue {queue:?}"
        );
    }
}

#[test]
fn empty_handler_name_is_refused() {
    let err = validate_default(json!({ "nodes": [{ "name": "n", "handler": "" }] })).unwrap_err();
    assert_eq!(codes(&err), ["empty_name"]);
    assert_eq!(err.problems[0].node.as_deref(), Some("n"));
}

#[test]
fn unknown_fields_are_serde_errors_naming_the_field() {
    let cases: [(&str, &str); 5] = [
        (r#"{"nodes": [], "nmae": "x"}"#, "nmae"),
        (r#"{"nodes": [{"name": "a", "parent": ["b"]}]}"#, "parent"),
        (
            r#"{"nodes": [{"name": "a", "opts": {"retries": 3}}]}"#,
            "retries",
        ),
        (
            r#"{"nodes": [{"name": "a", "opts": {"backoff": {"type": "fixed", "delayMs": 1, "jitter": 1}}}]}"#,
            "jitter",
        ),
        (
            r#"{"nodes": [{"name": "a"}], "opts": {"onFailur": "continue"}}"#,
            "onFailur",
        ),
    ];
    for (json, field) in cases {
        let err = parse(json.as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("unknown field `{field}`")),
            "{json}: {err}"
        );
    }
    // Unknown enum values are refused too.
    let err = parse(br#"{"nodes": [{"name": "a"}], "opts": {"onFailure": "ignore"}}"#).unwrap_err();
    assert!(
        err.to_string().contains("unknown variant `ignore`"),
        "{err}"
    );
}

#[test]
fn syntax_errors_name_line_and_column() {
    let err = parse(b"{\n  \"nodes\": [\n    { \"name\": \"a\", }\n  ]\n}").unwrap_err();
    assert_eq!(err.line(), 3);
    assert!(err.column() > 0);
}

#[test]
fn spec_round_trips_through_json() {
    let original = parse(IMAGE_PIPELINE.as_bytes()).unwrap();
    let text = serde_json::to_string(&original).unwrap();
    assert_eq!(parse(text.as_bytes()).unwrap(), original);
}

#[test]
fn ten_thousand_node_chain_validates_without_overflowing_the_stack() {
    let n = DEFAULT_MAX_NODES;
    let nodes = (0..n)
        .map(|i| NodeSpec {
            name: format!("n{i}"),
            parents: if i == 0 {
                vec![]
            } else {
                vec![format!("n{}", i - 1)]
            },
            children: vec![],
            handler: None,
            queue: None,
            data: serde_json::Value::Null,
            opts: NodeOpts::default(),
            continue_on_failure: false,
            when: None,
            trigger: None,
            map: None,
            wait: None,
            priority: None,
            concurrency: None,
            rate_limit: None,
        })
        .collect();
    let mut flow = FlowSpec {
        name: "chain".to_owned(),
        nodes,
        opts: FlowOpts::default(),
        traceparent: None,
    };
    // Run on a small stack, so a recursive walk would fail here rather than only
    // on a bigger chain.
    let dag = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn({
            let flow = flow.clone();
            move || validate(&flow, &Limits::default())
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(dag.len(), n);
    assert_eq!(
        names(&dag, &dag.nodes[n - 1].parents),
        [format!("n{}", n - 2)]
    );

    // Closing the chain into one long cycle is found, also without recursion.
    flow.nodes[0].parents = vec![format!("n{}", n - 1)];
    let err = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || validate(&flow, &Limits::default()))
        .unwrap()
        .join()
        .unwrap()
        .unwrap_err();
    assert_eq!(codes(&err), ["cycle"]);
    assert!(err.problems[0]
        .message
        .starts_with("the flow has a cycle: n0 -> n1 -> n2 -> "));
    assert!(err.problems[0]
        .message
        .ends_with(&format!("n{} -> n0", n - 1)));
}

#[test]
fn fixed_backoff_is_constant() {
    let b = Backoff {
        kind: BackoffKind::Fixed,
        delay_ms: 250,
    };
    for retry in [1, 2, 3, 10, 1000, u32::MAX] {
        assert_eq!(b.delay_for(retry), 250);
    }
}

#[test]
fn exponential_backoff_doubles() {
    let b = Backoff {
        kind: BackoffKind::Exponential,
        delay_ms: 500,
    };
    assert_eq!(b.delay_for(1), 500);
    assert_eq!(b.delay_for(2), 1_000);
    assert_eq!(b.delay_for(3), 2_000);
    assert_eq!(b.delay_for(4), 4_000);
    assert_eq!(b.delay_for(10), 500 << 9);
}

#[test]
fn backoff_is_capped_at_one_day() {
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let exp = Backoff {
        kind: BackoffKind::Exponential,
        delay_ms: 1_000,
    };
    // 1000 * 2^26 ms is well over a day.
    assert_eq!(exp.delay_for(27), DAY_MS);
    // Huge exponents and base delays neither overflow nor panic.
    assert_eq!(exp.delay_for(64), DAY_MS);
    assert_eq!(exp.delay_for(u32::MAX), DAY_MS);
    let huge = Backoff {
        kind: BackoffKind::Exponential,
        delay_ms: u64::MAX,
    };
    assert_eq!(huge.delay_for(5), DAY_MS);
    let fixed = Backoff {
        kind: BackoffKind::Fixed,
        delay_ms: DAY_MS * 2,
    };
    assert_eq!(fixed.delay_for(1), DAY_MS);
    // The delay never decreases with the retry number.
    let mut last = 0;
    for retry in 1..100 {
        let d = exp.delay_for(retry);
        assert!(d >= last);
        last = d;
    }
}

#[test]
fn backoff_parses_from_json() {
    let dag = validate_default(json!({ "nodes": [
        { "name": "f", "opts": { "attempts": 2, "backoff": { "type": "fixed", "delayMs": 7 } } }
    ]}))
    .unwrap();
    assert_eq!(
        dag.nodes[0].opts.backoff,
        Some(Backoff {
            kind: BackoffKind::Fixed,
            delay_ms: 7
        })
    );
}

#[test]
fn problems_serialize_for_the_api() {
    let err =
        validate_default(json!({ "nodes": [{ "name": "a", "parents": ["b"] }] })).unwrap_err();
    let value = serde_json::to_value(&err.problems).unwrap();
    assert_eq!(
        value,
        json!([{ "code": "unknown_parent", "message": "node 'a' names unknown parent 'b'", "node": "a" }])
    );
    let err = validate_default(json!({ "nodes": [] })).unwrap_err();
    let value = serde_json::to_value(&err.problems).unwrap();
    assert_eq!(
        value,
        json!([{ "code": "empty_flow", "message": "the flow has no nodes" }])
    );
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// Names drawn from a small alphabet, so that duplicates, unknown names,
/// self-edges and cycles all turn up often.
const ALPHABET: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

fn any_name() -> impl Strategy<Value = String> {
    prop::sample::select(&ALPHABET[..]).prop_map(str::to_owned)
}

fn any_node() -> impl Strategy<Value = NodeSpec> {
    (
        any_name(),
        prop::collection::vec(any_name(), 0..3),
        prop::collection::vec(any_name(), 0..3),
    )
        .prop_map(|(name, parents, children)| NodeSpec {
            name,
            parents,
            children,
            handler: None,
            queue: None,
            data: serde_json::Value::Null,
            opts: NodeOpts::default(),
            continue_on_failure: false,
            when: None,
            trigger: None,
            map: None,
            wait: None,
            priority: None,
            concurrency: None,
            rate_limit: None,
        })
}

/// Whether the spec writes the edge `from -> to` on either side.
fn written(spec: &FlowSpec, from: &str, to: &str) -> bool {
    spec.nodes.iter().any(|n| {
        (n.name == to && n.parents.iter().any(|p| p == from))
            || (n.name == from && n.children.iter().any(|c| c == to))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Validation never panics; what it accepts is a real DAG made of exactly the
    /// written edges; a cycle it reports is a real cycle of written edges.
    #[test]
    fn validation_is_sound_on_arbitrary_specs(nodes in prop::collection::vec(any_node(), 0..10)) {
        let flow = FlowSpec { name: String::new(), nodes, opts: FlowOpts::default(), traceparent: None };
        match validate(&flow, &Limits::default()) {
            Ok(dag) => {
                prop_assert_eq!(dag.len(), flow.nodes.len());
                let mut seen = HashSet::new();
                for i in dag.indices() {
                    let node = dag.node(i);
                    prop_assert!(seen.insert(node.name.clone()), "duplicate name accepted");
                    prop_assert_eq!(dag.lookup(&node.name), Some(i));
                    for &c in &node.children {
                        prop_assert!(c != i, "self-edge accepted");
                        prop_assert!(dag.node(c).parents.contains(&i));
                        prop_assert!(written(&flow, &node.name, &dag.node(c).name));
                    }
                    for &p in &node.parents {
                        prop_assert!(dag.node(p).children.contains(&i));
                    }
                }
                // Every written edge is in the DAG.
                for n in &flow.nodes {
                    let me = dag.lookup(&n.name).unwrap();
                    for p in &n.parents {
                        prop_assert!(dag.node(me).parents.contains(&dag.lookup(p).unwrap()));
                    }
                    for c in &n.children {
                        prop_assert!(dag.node(me).children.contains(&dag.lookup(c).unwrap()));
                    }
                }
                // Acyclic: Kahn's algorithm consumes every node.
                let mut waiting: Vec<usize> = dag.nodes.iter().map(|n| n.parents.len()).collect();
                let mut ready: Vec<usize> = (0..dag.len()).filter(|&i| waiting[i] == 0).collect();
                let mut done = 0;
                while let Some(i) = ready.pop() {
                    done += 1;
                    for &c in &dag.nodes[i].children {
                        waiting[c.as_usize()] -= 1;
                        if waiting[c.as_usize()] == 0 {
                            ready.push(c.as_usize());
                        }
                    }
                }
                prop_assert_eq!(done, dag.len(), "cycle accepted");
            }
            Err(err) => {
                prop_assert!(!err.problems.is_empty());
                if flow.nodes.is_empty() {
                    prop_assert_eq!(codes(&err), ["empty_flow"]);
                }
                for problem in err.problems.iter().filter(|p| p.code == "cycle") {
                    let path = problem.message.strip_prefix("the flow has a cycle: ").unwrap();
                    let path: Vec<&str> = path.split(" -> ").collect();
                    prop_assert!(path.len() >= 3, "{}", problem.message);
                    prop_assert_eq!(path.first(), path.last());
                    // Each node on the cycle once, then back to the first.
                    let distinct: HashSet<&str> = path.iter().copied().collect();
                    prop_assert_eq!(distinct.len(), path.len() - 1);
                    for pair in path.windows(2) {
                        prop_assert!(written(&flow, pair[0], pair[1]), "{} is not a written edge", problem.message);
                    }
                }
            }
        }
    }
}

/// One mistake planted in an otherwise valid spec, and the problem it must cause.
#[derive(Debug, Clone)]
enum Mistake {
    None,
    /// The parent of an edge also lists the child as its parent: a two-node cycle.
    BackEdge(prop::sample::Index),
    UnknownParent(prop::sample::Index),
    SelfEdge(prop::sample::Index),
    DuplicateName(prop::sample::Index),
}

/// A valid spec from a random DAG (edges from lower to higher index), each edge
/// written on the child's side, the parent's side or both; then one mistake.
fn planted() -> impl Strategy<Value = (FlowSpec, Vec<Vec<usize>>, Mistake)> {
    let node = (
        prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        any::<bool>(),
    );
    let mistake = prop_oneof![
        2 => Just(Mistake::None),
        1 => any::<prop::sample::Index>().prop_map(Mistake::BackEdge),
        1 => any::<prop::sample::Index>().prop_map(Mistake::UnknownParent),
        1 => any::<prop::sample::Index>().prop_map(Mistake::SelfEdge),
        1 => any::<prop::sample::Index>().prop_map(Mistake::DuplicateName),
    ];
    (prop::collection::vec(node, 1..40), mistake).prop_map(|(gen, mistake)| {
        let n = gen.len();
        let parents: Vec<Vec<usize>> = gen
            .iter()
            .enumerate()
            .map(|(i, (ps, _))| {
                let mut ps: Vec<usize> = if i == 0 {
                    vec![]
                } else {
                    ps.iter().map(|p| p.index(i)).collect()
                };
                ps.sort_unstable();
                ps.dedup();
                ps
            })
            .collect();
        let mut children = vec![Vec::new(); n];
        for (c, ps) in parents.iter().enumerate() {
            for &p in ps {
                children[p].push(c);
            }
        }
        let name = |i: usize| format!("node-{i}");
        // A node whose incoming edges are written on its parents' side leaves its
        // own `parents` empty; a parent that writes any child writes all of them.
        let via_children: Vec<bool> = gen.iter().map(|(_, v)| *v).collect();
        let mut nodes: Vec<NodeSpec> = (0..n)
            .map(|i| NodeSpec {
                name: name(i),
                parents: if via_children[i] {
                    vec![]
                } else {
                    parents[i].iter().map(|&p| name(p)).collect()
                },
                children: if children[i].iter().any(|&c| via_children[c]) {
                    children[i].iter().map(|&c| name(c)).collect()
                } else {
                    vec![]
                },
                handler: None,
                queue: None,
                data: serde_json::Value::Null,
                opts: NodeOpts::default(),
                continue_on_failure: false,
                when: None,
                trigger: None,
                map: None,
                wait: None,
                priority: None,
                concurrency: None,
                rate_limit: None,
            })
            .collect();
        let edges: Vec<(usize, usize)> = parents
            .iter()
            .enumerate()
            .flat_map(|(c, ps)| ps.iter().map(move |&p| (p, c)))
            .collect();
        let mistake = match mistake {
            Mistake::BackEdge(_) if edges.is_empty() => Mistake::None,
            Mistake::DuplicateName(_) if n < 2 => Mistake::None,
            other => other,
        };
        match &mistake {
            Mistake::None => {}
            Mistake::BackEdge(k) => {
                let (p, c) = edges[k.index(edges.len())];
                nodes[p].parents.push(name(c));
            }
            Mistake::UnknownParent(k) => nodes[k.index(n)].parents.push("nobody".to_owned()),
            Mistake::SelfEdge(k) => {
                let i = k.index(n);
                nodes[i].children.push(name(i));
            }
            Mistake::DuplicateName(k) => {
                let i = 1 + k.index(n - 1);
                nodes[i].name = name(0);
            }
        }
        let flow = FlowSpec {
            name: "planted".to_owned(),
            nodes,
            opts: FlowOpts::default(),
            traceparent: None,
        };
        (flow, parents, mistake)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A valid spec, however its edges are spelled, validates to exactly its edges;
    /// one planted mistake is always reported with its code.
    #[test]
    fn planted_mistakes_are_found((flow, parents, mistake) in planted()) {
        let result = validate(&flow, &Limits::default());
        let expected = match mistake {
            Mistake::None => {
                let dag = result.unwrap();
                for (i, expected) in parents.iter().enumerate() {
                    let mut got: Vec<usize> = dag.nodes[i].parents.iter().map(|p| p.as_usize()).collect();
                    got.sort_unstable();
                    prop_assert_eq!(&got, expected);
                }
                return Ok(());
            }
            Mistake::BackEdge(_) => "cycle",
            Mistake::UnknownParent(_) => "unknown_parent",
            Mistake::SelfEdge(_) => "self_edge",
            Mistake::DuplicateName(_) => "duplicate_name",
        };
        let err = result.unwrap_err();
        prop_assert!(codes(&err).contains(&expected), "{:?} not in {:?}", expected, codes(&err));
    }
}

// ---------------------------------------------------------------------------
// Conditions, trigger rules, maps and waits
// ---------------------------------------------------------------------------

#[test]
fn run_time_features_validate_with_their_defaults() {
    let dag = validate_default(json!({ "nodes": [
        { "name": "src" },
        { "name": "m", "parents": ["src"], "map": { "from": "src" } },
        { "name": "capped", "parents": ["src"],
          "map": { "from": "src", "path": "/items", "maxItems": 5, "maxParallel": 2 } },
        { "name": "gate", "wait": { "signal": "approve", "timeoutMs": 1000, "default": { "ok": false } } },
        { "name": "sleep", "wait": { "forMs": 250 } },
        { "name": "alarm", "wait": { "until": 1_800_000_000_000u64 } },
        { "name": "sig", "wait": { "signal": "go" } },
        { "name": "join", "parents": ["m", "gate"], "trigger": "noneFailed",
          "when": "parents.gate.ok || data.force", "data": { "force": true } }
    ]}))
    .unwrap();
    let m = node(&dag, "m").map.as_ref().unwrap();
    assert_eq!(m.from, dag.lookup("src").unwrap());
    assert_eq!(m.path, "");
    assert_eq!(m.max_items, DEFAULT_MAP_MAX_ITEMS);
    assert_eq!(m.max_parallel, u32::MAX);
    let capped = node(&dag, "capped").map.as_ref().unwrap();
    assert_eq!(
        (capped.path.as_str(), capped.max_items, capped.max_parallel),
        ("/items", 5, 2)
    );
    assert_eq!(
        node(&dag, "gate").wait,
        Some(WaitDef::Signal {
            name: "approve".into(),
            timeout_ms: Some(1000),
            default: Some(Arc::from("{\"ok\":false}")),
        })
    );
    assert_eq!(node(&dag, "sleep").wait, Some(WaitDef::For(250)));
    assert_eq!(
        node(&dag, "alarm").wait,
        Some(WaitDef::Until(1_800_000_000_000))
    );
    assert_eq!(
        node(&dag, "sig").wait,
        Some(WaitDef::Signal {
            name: "go".into(),
            timeout_ms: None,
            default: None,
        })
    );
    let join = node(&dag, "join");
    assert_eq!(join.trigger, TriggerRule::NoneFailed);
    assert_eq!(
        join.when.as_ref().unwrap().source,
        "parents.gate.ok || data.force"
    );
    // Without `trigger`, a node waits for all its parents to succeed.
    assert_eq!(node(&dag, "m").trigger, TriggerRule::AllSuccess);
    assert!(node(&dag, "src").when.is_none());
    assert!(node(&dag, "src").map.is_none() && node(&dag, "src").wait.is_none());
}

#[test]
fn every_trigger_rule_parses_by_its_wire_name() {
    for rule in [
        TriggerRule::AllSuccess,
        TriggerRule::AllDone,
        TriggerRule::OneSuccess,
        TriggerRule::NoneFailed,
        TriggerRule::AllFailed,
    ] {
        let dag = validate_default(json!({ "nodes": [
            { "name": "a" },
            { "name": "b", "parents": ["a"], "trigger": rule.as_str() }
        ]}))
        .unwrap();
        assert_eq!(node(&dag, "b").trigger, rule);
    }
    let err = parse(br#"{ "nodes": [{ "name": "a", "trigger": "someSuccess" }] }"#).unwrap_err();
    assert!(err.to_string().contains("someSuccess"), "{err}");
}

#[test]
fn bad_condition_map_wait_and_reserved_names_are_all_reported_at_once() {
    let err = validate_default(json!({ "nodes": [
        /* 0 */ { "name": "src" },
        /* 1 */ { "name": "other" },
        /* 2 */ { "name": "cond", "parents": ["src"], "when": "parents.src.v >" },
        /* 3 */ { "name": "m", "parents": ["src"], "map": { "from": "other" } },
        /* 4 */ { "name": "path", "parents": ["src"], "map": { "from": "src", "path": "items" } },
        /* 5 */ { "name": "zero", "parents": ["src"], "map": { "from": "src", "maxItems": 0 } },
        /* 6 */ { "name": "two", "wait": { "signal": "s", "forMs": 10 } },
        /* 7 */ { "name": "nodefault", "wait": { "signal": "s", "default": 1 } },
        /* 8 */ { "name": "m[0]", "parents": ["src"] }
    ]}))
    .unwrap_err();
    assert_eq!(
        codes(&err),
        [
            "bad_condition",
            "bad_map",
            "bad_map",
            "bad_wait",
            "bad_wait",
            // After the edges: maps over a node that is not a parent, then names.
            "bad_map",
            "reserved_name",
        ],
        "{err:#?}"
    );
    let about: Vec<Option<&str>> = err.problems.iter().map(|p| p.node.as_deref()).collect();
    assert_eq!(
        about,
        [
            Some("cond"),
            Some("path"),
            Some("zero"),
            Some("two"),
            Some("nodefault"),
            Some("m"),
            Some("m[0]"),
        ]
    );
    let messages: Vec<&str> = err.problems.iter().map(|p| p.message.as_str()).collect();
    assert!(
        messages[0].starts_with("node 'cond' has a condition that does not parse: "),
        "{}",
        messages[0]
    );
    assert!(
        !messages[0].contains('\n'),
        "a parse error is one line: {}",
        messages[0]
    );
    assert_eq!(
        &messages[1..],
        [
            "node 'path' maps over path 'items': a JSON Pointer is empty or starts with '/'",
            "node 'zero' has maxItems 0; allowed are 1 to 100000",
            "node 'two' must wait for exactly one of signal, forMs and until",
            "node 'nodefault' gives a default without a timeoutMs",
            "node 'm' maps over 'other', which is not among its parents",
            "node name 'm[0]' is reserved for an element of the map 'm'",
        ]
    );
    // The problems go to a client as a 422 body, each naming its node.
    let value = serde_json::to_value(&err.problems).unwrap();
    assert_eq!(
        value[0]["code"],
        json!("bad_condition"),
        "serialized as the API sends it"
    );
    assert_eq!(value[0]["node"], json!("cond"));
}

#[test]
fn more_map_and_wait_mistakes() {
    let err = validate_default(json!({ "nodes": [
        { "name": "src" },
        { "name": "big", "parents": ["src"], "map": { "from": "src", "maxItems": 100_001 } },
        { "name": "par", "parents": ["src"], "map": { "from": "src", "maxParallel": 0 } },
        { "name": "both", "parents": ["src"], "map": { "from": "src" }, "wait": { "forMs": 1 } },
        { "name": "none", "wait": {} },
        { "name": "three", "wait": { "signal": "s", "forMs": 1, "until": 5 } },
        { "name": "timer", "wait": { "forMs": 5, "timeoutMs": 1 } },
        { "name": "blank", "wait": { "signal": "" } },
        { "name": "orphan", "map": { "from": "ghost" } },
        // A name that only looks like an element of a node that is not a map is fine.
        { "name": "src[1]", "parents": ["src"] }
    ]}))
    .unwrap_err();
    let got: Vec<(&str, Option<&str>)> = err
        .problems
        .iter()
        .map(|p| (p.code, p.node.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("bad_map", Some("big")),
            ("bad_map", Some("par")),
            ("bad_wait", Some("both")),
            ("bad_wait", Some("none")),
            ("bad_wait", Some("three")),
            ("bad_wait", Some("timer")),
            ("bad_wait", Some("blank")),
            ("bad_map", Some("orphan")),
        ],
        "{err:#?}"
    );
    assert!(err.problems[5].message.contains("only a signal wait takes"));
    assert!(err.problems[6].message.contains("empty name"));
    // Unknown fields inside map and wait are refused by the parser.
    let err = parse(br#"{ "nodes": [{ "name": "a", "wait": { "forMs": 1, "sleep": 2 } }] }"#)
        .unwrap_err();
    assert!(err.to_string().contains("sleep"), "{err}");
}

#[test]
fn element_names_split_into_map_and_index() {
    assert_eq!(element_name("m[0]"), Some(("m", 0)));
    assert_eq!(element_name("a[b][12]"), Some(("a[b]", 12)));
    assert_eq!(element_name("m[]"), None);
    assert_eq!(element_name("m[x]"), None);
    assert_eq!(element_name("m[-1]"), None);
    assert_eq!(element_name("m"), None);
    assert_eq!(element_name("m[99999999999]"), None, "past u32");
}

#[test]
fn bad_priorities_limits_and_keys_are_all_reported_at_once() {
    let err = validate_default(json!({
        "opts": { "priority": 10, "concurrency": { "key": "data.missing.", "limit": 1 } },
        "nodes": [
            { "name": "p", "priority": 12 },
            { "name": "syntax", "concurrency": { "key": "data.t ==", "limit": 1 } },
            { "name": "zero", "concurrency": { "key": "data.t", "limit": 0 } },
            { "name": "unknown", "concurrency": { "key": "tenant", "limit": 1 } },
            { "name": "item", "rateLimit": { "key": "item.t", "limit": 1, "perMs": 10 } },
            { "name": "period", "rateLimit": { "key": "'x'", "limit": 1, "perMs": 0 } },
            { "name": "waits", "wait": { "forMs": 5 }, "concurrency": { "key": "'x'", "limit": 1 } },
            { "name": "waitp", "wait": { "forMs": 5 }, "priority": 3 }
        ]
    }))
    .unwrap_err();
    assert_eq!(
        codes(&err),
        [
            "bad_concurrency",
            "bad_priority",
            "bad_priority",
            "bad_concurrency",
            "bad_concurrency",
            "bad_concurrency",
            "bad_rate_limit",
            "bad_rate_limit",
            "bad_concurrency",
            "bad_priority",
        ],
        "{err:#?}"
    );
    let text = format!("{err:#?}");
    assert!(text.contains("reads tenant"), "{text}");
    assert!(text.contains("reads item"), "{text}");
    // `item` and `index` are known on a map node.
    validate_default(json!({ "nodes": [
        { "name": "src", "data": { "items": [1] } },
        { "name": "m", "parents": ["src"], "map": { "from": "src", "path": "/data/items" },
          "concurrency": { "key": "string(item) + string(index)", "limit": 1 } }
    ]}))
    .unwrap();
}
