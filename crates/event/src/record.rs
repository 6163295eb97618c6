//! The `{"routing": {...}, "event": {...}}` record.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Envelope fields. The sensor fills the first group; the server adds the
/// second group on ingest and never trusts a sensor-supplied value for them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Routing {
    pub event_type: String,
    /// Milliseconds since the Unix epoch, taken on the host.
    pub event_time: u64,
    /// UUID, unique per event; the server's exactly-once check relies on it.
    pub event_id: String,
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub this: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub investigation_id: Option<String>,
}

/// One telemetry record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub routing: Routing,
    pub event: Map<String, Value>,
}

impl Record {
    /// Creates a record of `event_type` stamped with the current time and a
    /// fresh event id.
    pub fn new(event_type: &str, hostname: &str) -> Self {
        Record {
            routing: Routing {
                event_type: event_type.to_owned(),
                event_time: now_ms(),
                event_id: uuid::Uuid::new_v4().to_string(),
                hostname: hostname.to_owned(),
                ..Routing::default()
            },
            event: Map::new(),
        }
    }

    /// Sets `event/<key>`.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.event.insert(key.to_owned(), value.into());
        self
    }

    /// Serialises the record as one JSON line without the trailing newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a record of JSON values always serialises")
    }

    /// Looks up a slash-separated path such as `event/PARENT/FILE_PATH` or
    /// `routing/hostname`.
    pub fn lookup(&self, path: &str) -> Option<Value> {
        let value = serde_json::to_value(self).ok()?;
        lookup_path(&value, path).cloned()
    }
}

/// Looks up a slash-separated path inside a JSON value.
pub fn lookup_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = value;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        current = match current {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Returns the milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_omits_unset_routing() {
        let mut record = Record::new("NEW_PROCESS", "node-1");
        record.set("PROCESS_ID", 42);
        let line = record.to_json_line();
        assert!(!line.contains("\"oid\""));
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.lookup("event/PROCESS_ID").unwrap(), 42);
        assert_eq!(back.lookup("routing/hostname").unwrap(), "node-1");
    }
}
