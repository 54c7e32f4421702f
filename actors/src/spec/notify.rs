//! `opts.notify`: where a flow's final view is POSTed when it ends (callbacks).
//!
//! Part of the pure core: this only checks the shape of a callback target (an
//! absolute `http`/`https` URL, known events, a bounded count). The delivery itself
//! (outbox, retries, signature) is `crate::notify`, at the edge.

use serde::{Deserialize, Serialize};

/// The events a callback can be sent on: the three ways a flow ends.
pub const NOTIFY_EVENTS: [&str; 3] = ["completed", "failed", "cancelled"];
/// Most callback targets one flow may name: each is one POST per end of the flow,
/// and a spec must not turn one flow into a fan-out of requests.
pub const MAX_NOTIFY_TARGETS: usize = 5;
/// Longest callback URL, in bytes (the usual limit of HTTP servers and proxies).
pub const MAX_NOTIFY_URL_LEN: usize = 2048;

/// One callback target: POST the flow's final view to `url` when it ends with one
/// of the events in `on`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifySpec {
    /// Absolute `http://` or `https://` URL the final view is POSTed to.
    pub url: String,
    /// Which ends of the flow are sent: `completed`, `failed`, `cancelled`. When
    /// left out, all three: a callback that says nothing when a flow fails is rarely
    /// what anyone wants.
    #[serde(default = "all_events")]
    pub on: Vec<String>,
}

fn all_events() -> Vec<String> {
    NOTIFY_EVENTS.iter().map(|e| (*e).to_owned()).collect()
}

impl NotifySpec {
    /// Whether this target wants the event (a flow status name: `completed`,
    /// `failed`, `cancelled`).
    pub fn wants(&self, event: &str) -> bool {
        self.on.iter().any(|e| e == event)
    }
}

/// Every problem of a flow's callback targets, as `(code, message)`; all use the
/// code `bad_notify`.
pub(super) fn problems(targets: &[NotifySpec]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if targets.len() > MAX_NOTIFY_TARGETS {
        out.push((
            "bad_notify",
            format!(
                "the flow names {} callback targets in opts.notify, more than the limit of {MAX_NOTIFY_TARGETS}",
                targets.len()
            ),
        ));
        // Checking each of thousands of targets would only make the answer huge.
        return out;
    }
    for (i, target) in targets.iter().enumerate() {
        if target.url.len() > MAX_NOTIFY_URL_LEN {
            out.push((
                "bad_notify",
                format!(
                    "opts.notify[{i}].url is {} bytes, more than the limit of {MAX_NOTIFY_URL_LEN}",
                    target.url.len()
                ),
            ));
        } else {
            match url::Url::parse(&target.url) {
                Ok(u) if !matches!(u.scheme(), "http" | "https") => out.push((
                    "bad_notify",
                    format!(
                        "opts.notify[{i}].url `{}` has the scheme `{}`; only http and https are sent to",
                        target.url,
                        u.scheme()
                    ),
                )),
                Ok(u) if u.host_str().is_none_or(str::is_empty) => out.push((
                    "bad_notify",
                    format!("opts.notify[{i}].url `{}` names no host", target.url),
                )),
                Ok(_) => {}
                Err(e) => out.push((
                    "bad_notify",
                    format!(
                        "opts.notify[{i}].url `{}` is not an absolute URL: {e}",
                        target.url
                    ),
                )),
            }
        }
        if target.on.is_empty() {
            out.push((
                "bad_notify",
                format!(
                    "opts.notify[{i}].on is empty; name at least one of {}",
                    NOTIFY_EVENTS.join(", ")
                ),
            ));
        }
        for event in &target.on {
            if !NOTIFY_EVENTS.contains(&event.as_str()) {
                out.push((
                    "bad_notify",
                    format!(
                        "opts.notify[{i}].on names the unknown event `{}`; the events are {}",
                        truncate(event),
                        NOTIFY_EVENTS.join(", ")
                    ),
                ));
            }
        }
    }
    out
}

/// At most 64 bytes of a client's string in a message (on a character boundary).
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn target(url: &str, on: &[&str]) -> NotifySpec {
        NotifySpec {
            url: url.to_owned(),
            on: on.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    #[test]
    fn good_targets_pass_and_on_defaults_to_every_end() {
        let parsed: NotifySpec = serde_json::from_str(r#"{"url":"https://x.test/h"}"#).unwrap();
        assert_eq!(parsed.on, vec!["completed", "failed", "cancelled"]);
        assert!(problems(&[parsed, target("http://127.0.0.1:9/a?b=c", &["failed"])]).is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(&[
            target("ftp://x.test/a", &["completed"]),
            target("not a url", &["done", "failed"]),
            target("https://x.test/", &[]),
        ]);
        let messages: Vec<_> = found.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(found.len(), 4, "{messages:?}");
        assert!(found.iter().all(|(code, _)| *code == "bad_notify"));
        assert!(messages[0].contains("scheme `ftp`"));
        assert!(messages[1].contains("not an absolute URL"));
        assert!(messages[2].contains("unknown event `done`"));
        assert!(messages[3].contains("opts.notify[2].on is empty"));
    }

    #[test]
    fn the_count_and_url_length_are_bounded() {
        let many = vec![target("https://x.test/", &["failed"]); MAX_NOTIFY_TARGETS + 1];
        assert_eq!(problems(&many).len(), 1);
        let long = format!("https://x.test/{}", "a".repeat(MAX_NOTIFY_URL_LEN));
        assert!(problems(&[target(&long, &["failed"])])[0]
            .1
            .contains("bytes"));
    }

    #[test]
    fn validate_lists_notify_problems_with_the_others() {
        let spec = crate::spec::parse(
            br#"{"nodes":[{"name":"a","parents":["nope"]}],
                 "opts":{"notify":[{"url":"mailto:x@y.test","on":["completed"]}]}}"#,
        )
        .unwrap();
        let err = crate::spec::validate(&spec, &crate::spec::Limits::default()).unwrap_err();
        let codes: Vec<_> = err.problems.iter().map(|p| p.code).collect();
        assert!(codes.contains(&"bad_notify"), "{codes:?}");
        assert!(codes.contains(&"unknown_parent"), "{codes:?}");
    }
}
