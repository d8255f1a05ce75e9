//! Reading the host's JSON log records.

use serde_json::Value;

/// A field of a JSON log record: at top level, or under `fields` if the formatter nests them.
pub fn field<'a>(record: &'a Value, name: &str) -> Option<&'a Value> {
    record
        .get(name)
        .or_else(|| record.get("fields").and_then(|f| f.get(name)))
}

/// A string field (a JSON string, or any other JSON value in its text form).
pub fn field_str(record: &Value, name: &str) -> Option<String> {
    match field(record, name)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// A numeric field (a JSON number, or a string holding one).
pub fn field_f64(record: &Value, name: &str) -> Option<f64> {
    match field(record, name)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The records whose `message` is exactly `message`.
pub fn records_with_message<'a>(records: &'a [Value], message: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| field_str(r, "message").as_deref() == Some(message))
        .collect()
}

/// What the scripted plugin logged with `"log": true`: `begin`/`end` of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginMark {
    pub begin: bool,
    pub event_id: String,
    pub unix_micros: i64,
}

/// The `begin <id> <unix_micros>` / `end <id> <unix_micros>` records (target `plugin`).
pub fn plugin_marks(records: &[Value]) -> Vec<PluginMark> {
    records
        .iter()
        .filter(|r| field_str(r, "target").as_deref() == Some("plugin"))
        .filter_map(|r| {
            let message = field_str(r, "message")?;
            let mut words = message.split_whitespace();
            let begin = match words.next()? {
                "begin" => true,
                "end" => false,
                _ => return None,
            };
            let event_id = words.next()?.to_owned();
            let unix_micros = words.next()?.parse().ok()?;
            Some(PluginMark {
                begin,
                event_id,
                unix_micros,
            })
        })
        .collect()
}

/// The event ids the scripted plugin began (`"log": true`), per claim batch, in the order the
/// plugin handled them.
pub fn plugin_batches(records: &[Value]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut batches: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for record in records {
        if field_str(record, "target").as_deref() != Some("plugin") {
            continue;
        }
        let message = field_str(record, "message").unwrap_or_default();
        let Some(id) = message
            .strip_prefix("begin ")
            .and_then(|m| m.split(' ').next())
        else {
            continue;
        };
        let batch = field_str(record, "claim_batch_id").unwrap_or_default();
        batches.entry(batch).or_default().push(id.to_owned());
    }
    batches
}
