"""chronicle-entries, in Python: a port of plugins/chronicle-entries (the Rust projection).

Projects the chronicle's source of truth (`chronicle_events`, written by the application with its
action context) into the read model `chronicle_entries` through the host's `sql` capability.

- Idempotent: `chronicle_entries.id` = the chronicle event's id, written with an upsert, so a
  redelivery, replay or rebuild never duplicates an entry.
- Payload (camelCase): `chronicleEventId`, `actorUserId`, `entityType`, `entityId`, `eventType`,
  `before`, `after`, `occurredAt`, `requestId`, `reason`. A missing actor or entity (or id, type,
  time) is a deterministic `bad_payload`: the chronicle would lose its accountability.
- Database errors map to outcomes as the plugin SDK maps them (plugins/sdk/python,
  `projector_plugin_sdk`): serialization failures, timeouts and connection errors are transient;
  permission and other errors are deterministic, a value Postgres refuses as data is bad_payload.

Build (from the repository root; the second `-p` is the SDK's directory):
    componentize-py -d wit -w sql-plugin componentize -p examples/python/chronicle_entries \
        -p plugins/sdk/python app -o chronicle_entries_py.wasm
"""

import json

import projector_plugin_sdk as sdk
from wit_world import exports
from wit_world.imports.types import Event, Outcome, PluginInfo

UPSERT = """
INSERT INTO chronicle_entries (id, actor_user_id, entity_type, entity_id, event_type, summary,
                               before, after, occurred_at, request_id, reason)
VALUES ($1::uuid, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::timestamptz, $10, $11)
ON CONFLICT (id) DO UPDATE SET
    actor_user_id = EXCLUDED.actor_user_id, entity_type = EXCLUDED.entity_type,
    entity_id = EXCLUDED.entity_id, event_type = EXCLUDED.event_type, summary = EXCLUDED.summary,
    before = EXCLUDED.before, after = EXCLUDED.after, occurred_at = EXCLUDED.occurred_at,
    request_id = EXCLUDED.request_id, reason = EXCLUDED.reason"""

REQUIRED = ["chronicleEventId", "actorUserId", "entityType", "entityId", "eventType", "occurredAt"]

def text(payload: dict, key: str):
    """A non-blank string field, else None."""
    value = payload.get(key)
    return value if isinstance(value, str) and value.strip() else None


def json_or_none(value):
    """A JSON document as text for a jsonb parameter; absent and null stay NULL."""
    return None if value is None else json.dumps(value)


def project(event: Event) -> Outcome:
    try:
        p = json.loads(event.payload)
    except ValueError:
        p = None
    if not isinstance(p, dict):
        return sdk.deterministic(sdk.BAD_PAYLOAD, "payload is not a JSON object")
    missing = [key for key in REQUIRED if text(p, key) is None]
    if missing:
        return sdk.deterministic(sdk.BAD_PAYLOAD, "missing " + ", ".join(missing))
    actor, entity_type, entity_id, event_type = (
        p["actorUserId"], p["entityType"], p["entityId"], p["eventType"])
    params = [
        p["chronicleEventId"],
        actor,
        entity_type,
        entity_id,
        event_type,
        f"{actor} {event_type} {entity_type} {entity_id}",
        json_or_none(p.get("before")),
        json_or_none(p.get("after")),
        p["occurredAt"],
        text(p, "requestId"),
        text(p, "reason"),
    ]
    try:
        sdk.execute(UPSERT, params)
    except sdk.Failed as failed:
        return failed.outcome
    return sdk.success()


class Projection(exports.Projection):
    def describe(self) -> PluginInfo:
        return PluginInfo(name="chronicle-entries-py", version="0.1.0", event_types=["*"])

    def handle(self, events: list[Event]) -> list[Outcome]:
        return [project(e) for e in events]
