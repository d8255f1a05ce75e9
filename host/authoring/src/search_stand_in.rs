//! The test kit's `search` stand-in: a map of documents answering bulk operations as
//! OpenSearch would (201 created, 200 replaced, 409 for an older-or-equal external version or a
//! `create` of an existing id, 404 for `update` or `delete` of a missing document). Operations
//! reach it only after the runtime's own validation.

use projector_runtime::search::{Action, ItemResult, Operation};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The search stand-in's documents: (index, id) → (document, external version).
pub(crate) type Documents = HashMap<(String, String), (Map<String, Value>, Option<i64>)>;

pub(crate) fn render_operation(op: &Operation) -> String {
    let action = match op.action {
        Action::Index => "index",
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
    };
    let mut text = format!("{action} {}/{}", op.index, op.id);
    if let Some(v) = op.version {
        text.push_str(&format!(" v{v}"));
    }
    if let Some(doc) = &op.document {
        // Compact, so a pretty-printed document stays on one line.
        match serde_json::from_str::<Value>(doc) {
            Ok(v) => text.push_str(&format!(" {v}")),
            Err(_) => text.push_str(&format!(" {doc:?}")),
        }
    }
    text
}

/// One operation against the in-memory documents, answered as OpenSearch would.
pub(crate) fn apply(docs: &mut Documents, op: &Operation) -> ItemResult {
    let item = |status: u16, error_type: &str, reason: &str| ItemResult {
        status,
        error_type: error_type.into(),
        error_reason: reason.into(),
    };
    let conflict = || {
        item(
            409,
            "version_conflict_engine_exception",
            "version conflict, current version is newer or equal",
        )
    };
    let key = (op.index.clone(), op.id.clone());
    let existing = docs.get(&key);
    let stale = match (existing.and_then(|(_, v)| *v), op.version) {
        (Some(current), Some(new)) => new <= current,
        _ => false,
    };
    let document = || match op.document.as_deref().map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(m))) => m,
        _ => Map::new(), // validated before: cannot happen
    };
    match op.action {
        Action::Index if stale => conflict(),
        Action::Index => {
            let created = existing.is_none();
            docs.insert(key, (document(), op.version));
            item(if created { 201 } else { 200 }, "", "")
        }
        Action::Create if existing.is_some() => conflict(),
        Action::Create => {
            docs.insert(key, (document(), op.version));
            item(201, "", "")
        }
        Action::Update => match docs.get_mut(&key) {
            None => item(404, "document_missing_exception", "document missing"),
            Some((doc, _)) => {
                doc.extend(document());
                item(200, "", "")
            }
        },
        Action::Delete if existing.is_none() => item(404, "", ""),
        Action::Delete if stale => conflict(),
        Action::Delete => {
            docs.remove(&key);
            item(200, "", "")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(action: Action, id: &str, version: Option<i64>) -> Operation {
        Operation {
            action,
            index: "books".into(),
            id: id.into(),
            document: (!matches!(action, Action::Delete)).then(|| r#"{"t": 1}"#.into()),
            version,
        }
    }

    #[test]
    fn the_search_stand_in_answers_like_the_cluster() {
        let mut docs = HashMap::new();
        let status = |docs: &mut _, o| apply(docs, &o).status;
        assert_eq!(status(&mut docs, op(Action::Index, "a", Some(2))), 201);
        assert_eq!(status(&mut docs, op(Action::Index, "a", Some(2))), 409);
        assert_eq!(status(&mut docs, op(Action::Index, "a", Some(3))), 200);
        assert_eq!(status(&mut docs, op(Action::Create, "a", None)), 409);
        assert_eq!(status(&mut docs, op(Action::Update, "b", None)), 404);
        assert_eq!(status(&mut docs, op(Action::Delete, "a", Some(1))), 409);
        assert_eq!(status(&mut docs, op(Action::Delete, "a", Some(4))), 200);
        assert_eq!(status(&mut docs, op(Action::Delete, "a", Some(5))), 404);
    }
}
