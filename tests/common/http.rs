//! HTTP helpers for tests that talk to `dagflow serve` processes, which come and
//! go: every call gives `None` when the server does not answer instead of
//! panicking, so that a caller can retry through a restart.

use std::collections::BTreeMap;

use serde_json::Value;

/// Page size of [`list_all`]: the API's largest.
pub const LIST_PAGE: usize = 1000;

/// `GET {base}{path}` → (status, body as JSON, `Null` when it is not); `None` when
/// the server does not answer.
pub async fn get(client: &reqwest::Client, base: &str, path: &str) -> Option<(u16, Value)> {
    let response = client.get(format!("{base}{path}")).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

/// Every flow `GET /flows` lists (following `nextCursor` to the last page), with
/// `status` as a filter if given; `None` when the server does not answer or a page
/// is not a 200 (the caller retries).
pub async fn list_all(
    client: &reqwest::Client,
    base: &str,
    status: Option<&str>,
) -> Option<Vec<Value>> {
    let mut flows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/flows?limit={LIST_PAGE}");
        if let Some(status) = status {
            path.push_str(&format!("&status={status}"));
        }
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (code, page) = get(client, base, &path).await?;
        if code != 200 {
            return None;
        }
        flows.extend(page["flows"].as_array()?.iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Some(flows),
        }
    }
}

/// Listed flow ids per flow name. Tests give every flow they create a name of its
/// own and send its Idempotency-Key with it, so a name listed twice is a key that
/// created two flows: this is how "exactly one flow per key" is counted through
/// the list (the list does not show keys).
pub fn ids_by_name(flows: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for flow in flows {
        let name = flow["name"].as_str().unwrap_or_default().to_owned();
        let id = flow["id"].as_str().unwrap_or_default().to_owned();
        by_name.entry(name).or_default().push(id);
    }
    by_name
}
