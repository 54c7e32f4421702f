//! Decoding of raw stream replies (`XREADGROUP`, `XAUTOCLAIM`, `XPENDING`).
//!
//! Parsed by hand rather than with redis-rs's typed stream replies because entries that
//! were deleted while pending come back with nil fields, which the typed replies reject,
//! and one such entry must not make a whole batch unreadable.

use redis::Value;

use super::error::QueueError;

/// An entry's field/value pairs, in stream order.
pub(crate) type Fields = Vec<(String, Vec<u8>)>;

/// One stream entry as Redis returned it.
#[derive(Debug)]
pub(crate) struct RawEntry {
    /// The entry id.
    pub(crate) id: String,
    /// Its field/value pairs; `None` when the entry was deleted but is still pending.
    pub(crate) fields: Option<Fields>,
}

impl RawEntry {
    /// The value of one field, if present.
    pub(crate) fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A reply that should have been text.
pub(crate) fn text(value: &Value) -> Result<String, QueueError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone())
            .map_err(|_| QueueError::Protocol("non-utf-8 string".into())),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::VerbatimString { text, .. } => Ok(text.clone()),
        Value::Okay => Ok("OK".into()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(QueueError::Protocol(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

/// A reply that should have been an integer.
pub(crate) fn int(value: &Value) -> Result<i64, QueueError> {
    match value {
        Value::Int(i) => Ok(*i),
        other => text(other)?
            .parse()
            .map_err(|_| QueueError::Protocol(format!("expected an integer, got {other:?}"))),
    }
}

/// The elements of an array reply (a nil reply counts as empty).
pub(crate) fn array(value: Value) -> Result<Vec<Value>, QueueError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(QueueError::Protocol(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

/// A flat field/value list (RESP2) or a map (RESP3).
fn fields(value: Value) -> Result<Option<Fields>, QueueError> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Nil => return Ok(None),
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        other => {
            return Err(QueueError::Protocol(format!(
                "expected entry fields, got {other:?}"
            )))
        }
    };
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let v = match v {
            Value::BulkString(bytes) => bytes,
            other => text(&other)?.into_bytes(),
        };
        out.push((text(&k)?, v));
    }
    Ok(Some(out))
}

/// A list of entries, each `[id, fields-or-nil]`.
pub(crate) fn entries(value: Value) -> Result<Vec<RawEntry>, QueueError> {
    let mut out = Vec::new();
    for entry in array(value)? {
        let mut parts = array(entry)?.into_iter();
        let id = match parts.next() {
            Some(id) => text(&id)?,
            None => return Err(QueueError::Protocol("empty stream entry".into())),
        };
        let fields = match parts.next() {
            Some(f) => fields(f)?,
            None => None,
        };
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

/// An `XREADGROUP` reply for a single stream: nil on timeout, else `[[key, entries]]`
/// (RESP2) or `{key: entries}` (RESP3).
pub(crate) fn read_reply(value: Value) -> Result<Vec<RawEntry>, QueueError> {
    let streams: Vec<Value> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let mut parts = array(item)?.into_iter();
                let _key = parts.next();
                out.push(parts.next().unwrap_or(Value::Nil));
            }
            out
        }
        other => {
            return Err(QueueError::Protocol(format!(
                "expected an xreadgroup reply, got {other:?}"
            )))
        }
    };
    let mut out = Vec::new();
    for stream in streams {
        out.extend(entries(stream)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_entries_including_deleted_ones() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("a"), bulk("b")])]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = read_reply(reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].field("a"), Some(&b"b"[..]));
        assert!(entries[1].fields.is_none());
        assert!(read_reply(Value::Nil).unwrap().is_empty());
    }
}
