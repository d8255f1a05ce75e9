"""{{name}}: a projector projection plugin, scaffolded by `projector plugin new`.

The host hands `handle` a batch of outbox events and expects exactly one outcome per event, in
order: `Outcome_Success`, `Outcome_Transient` (retried with backoff) or `Outcome_Deterministic`
(failed at once). The contract is documented field by field in
`wit/deps/projector-plugin/plugin.wit`; `componentize-py -d wit -w projection bindings .` writes
the Python bindings (`wit_world/`) for an editor to read. `projector_plugin_sdk.py` is projector's
plugin SDK (outcomes, reasons, sql and search with their errors mapped to outcomes), a copy of the
one in the projector repository (plugins/sdk/python): keep it as it is.
"""

import json

import projector_plugin_sdk as sdk
from wit_world import exports
#if search
from wit_world.imports import config
#endif
from wit_world.imports import log
#if search
from wit_world.imports import search
#endif
from wit_world.imports.types import Event, Outcome, PluginInfo
#if search
from wit_world.imports.types import Outcome_Success
#endif

#if sql
# Idempotent: keyed by the event id, so a redelivery, replay or rebuild changes nothing.
# The table is in migrations/0001_{{table}}.sql; grant it with
# `[projection.grants] sql_tables = ["{{table}}"]`.
UPSERT = """
INSERT INTO {{table}} (event_id, event_type, aggregate_id, payload)
VALUES ($1::uuid, $2, $3, $4::jsonb)
ON CONFLICT (event_id) DO UPDATE SET
    event_type = EXCLUDED.event_type, aggregate_id = EXCLUDED.aggregate_id,
    payload = EXCLUDED.payload"""


#endif
#if search
def index_document(event: Event, payload: dict):
    """Indexes the payload as document `aggregate_id` with external version `seq`: a stale or
    duplicate event is answered 409 and changes nothing, which is success."""
    index = config.get("index")
    if index is None:
        return sdk.deterministic(sdk.BAD_CONFIG, "the projection's config has no `index`")
    operation = search.Operation(
        action=search.Action.INDEX,
        index=index,
        id=event.aggregate_id,
        document=json.dumps(payload, separators=(",", ":")),
        version=event.seq,
    )
    [outcome] = sdk.write([operation])
    return None if isinstance(outcome, Outcome_Success) else outcome


#endif
def project(event: Event) -> Outcome:
    try:
        payload = json.loads(event.payload)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return sdk.deterministic(sdk.BAD_PAYLOAD, "payload is not a JSON object")
#if sql
    params = [event.id, event.event_type, event.aggregate_id,
              json.dumps(payload, separators=(",", ":"))]
    try:
        sdk.execute(UPSERT, params)
    except sdk.Failed as failed:
        return failed.outcome
#endif
#if search
    failed = index_document(event, payload)
    if failed is not None:
        return failed
#endif
    keys = ", ".join(sorted(payload))
    log.log(log.Level.DEBUG, event.id, f"projected {event.event_type} (payload keys: {keys})")
    return sdk.success()


class Projection(exports.Projection):
    def describe(self) -> PluginInfo:
        return PluginInfo(name="{{name}}", version="0.1.0", event_types=["*"])

    def handle(self, events: list[Event]) -> list[Outcome]:
        return [project(e) for e in events]
