"""{{name}}: a projector projection plugin, scaffolded by `projector plugin new`.

The host hands `handle` a batch of outbox events and expects exactly one outcome per event, in
order: `Outcome_Success`, `Outcome_Transient` (retried with backoff) or `Outcome_Deterministic`
(failed at once). The contract is documented field by field in
`wit/deps/projector-plugin/plugin.wit`; `componentize-py -d wit -w projection bindings .` writes
the Python bindings (`wit_world/`) for an editor to read.
"""

import json

from componentize_py_types import Err
from wit_world import exports
#if search
from wit_world.imports import config
#endif
from wit_world.imports import log
#if search
from wit_world.imports import search
#endif
#if sql
from wit_world.imports import sql
#endif
from wit_world.imports.types import (
    Event,
    Failure,
    Outcome,
    Outcome_Deterministic,
    Outcome_Success,
    Outcome_Transient,
    PluginInfo,
)

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

# Retrying helps with serialization failures, timeouts and lost connections; not with the rest.
TRANSIENT_SQL = {
    sql.ErrorKind.SERIALIZATION_FAILURE: "sql_serialization",
    sql.ErrorKind.TIMEOUT: "sql_timeout",
    sql.ErrorKind.CONNECTION: "sql_connection",
}


def from_sql(e: sql.SqlError) -> Outcome:
    message = f"{e.message} ({e.code})"
    if e.kind in TRANSIENT_SQL:
        return Outcome_Transient(Failure(TRANSIENT_SQL[e.kind], message))
    if e.kind == sql.ErrorKind.PERMISSION_DENIED:
        return Outcome_Deterministic(Failure("sql_permission", message))
    return Outcome_Deterministic(Failure("sql_error", message))


#endif
#if search
def index_document(event: Event, payload: dict):
    """Indexes the payload as document `aggregate_id` with external version `seq`: a stale or
    duplicate event is answered 409 and changes nothing, which is success."""
    index = config.get("index")
    if index is None:
        return Outcome_Deterministic(Failure("bad_config", "the projection's config has no `index`"))
    operation = search.Operation(
        action=search.Action.INDEX,
        index=index,
        id=event.aggregate_id,
        document=json.dumps(payload, separators=(",", ":")),
        version=event.seq,
    )
    try:
        items = search.bulk([operation])
    except Err as e:
        error = e.value
        if isinstance(error, search.BulkError_Connect):
            return Outcome_Transient(Failure("es_connect", error.value))
        if isinstance(error, search.BulkError_Status) and (
            error.value.status == 429 or error.value.status >= 500
        ):
            return Outcome_Transient(Failure("es_status", f"{error.value.status}: {error.value.message}"))
        return Outcome_Deterministic(Failure("es_request", repr(error)))
    if not items:
        return Outcome_Transient(Failure("es_response", "no item result"))
    item = items[0]
    if item.status in (200, 201, 409):
        return None
    if item.status == 429:
        return Outcome_Transient(Failure("es_429", item.error_reason))
    if item.status >= 500:
        return Outcome_Transient(Failure("es_5xx", item.error_reason))
    return Outcome_Deterministic(
        Failure("es_rejected", f"{item.status} {item.error_type}: {item.error_reason}"))


#endif
def project(event: Event) -> Outcome:
    try:
        payload = json.loads(event.payload)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return Outcome_Deterministic(Failure("bad_payload", "payload is not a JSON object"))
#if sql
    params = [event.id, event.event_type, event.aggregate_id,
              json.dumps(payload, separators=(",", ":"))]
    try:
        sql.execute(UPSERT, json.dumps(params))
    except Err as e:
        return from_sql(e.value)
#endif
#if search
    failed = index_document(event, payload)
    if failed is not None:
        return failed
#endif
    keys = ", ".join(sorted(payload))
    log.log(log.Level.DEBUG, event.id, f"projected {event.event_type} (payload keys: {keys})")
    return Outcome_Success()


class Projection(exports.Projection):
    def describe(self) -> PluginInfo:
        return PluginInfo(name="{{name}}", version="0.1.0", event_types=["*"])

    def handle(self, events: list[Event]) -> list[Outcome]:
        return [project(e) for e in events]
