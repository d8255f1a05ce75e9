"""projector_plugin_sdk: the Python half of the projector plugin SDK, for componentize-py plugins.

The same vocabulary and the same mapping as the Rust crate `projector-plugin-sdk` (plugins/sdk):

- outcome constructors: `success()`, `transient(reason, message)`, `deterministic(reason, message)`;
- the reasons operators see, one constant each (every top-level `NAME = "token"` below is a
  reason; docs/plugins.md's table and the Rust `reason` module hold the same set, checked by
  tests/projections/plugin_sdk.rs);
- `execute` / `query` over the `sql` capability with JSON-serialisable parameters, raising
  `Failed` (which carries the event's outcome) when the database refuses; `sql_outcome` is the one
  mapping of `sql.SqlError` to an outcome; `apply_once` runs an effect at most once per event
  through an applied-events table in the same transaction;
- `write` over the `search` capability, with `item_outcome` and `request_outcome`, the one
  classification of bulk results.

Put this file next to your app (`projector plugin new --lang python` does) or pass its directory
to componentize-py with a second `-p`. It works in any world of the contract: the `sql` and
`search` imports are only loaded when a function that needs them is called.
"""

import json

from componentize_py_types import Err
from wit_world.imports.types import (
    Failure,
    Outcome,
    Outcome_Deterministic,
    Outcome_Success,
    Outcome_Transient,
)

# Input.
BAD_PAYLOAD = "bad_payload"
BAD_CONFIG = "bad_config"
# sql (see sql_outcome).
SQL_SERIALIZATION = "sql_serialization"
SQL_TIMEOUT = "sql_timeout"
SQL_CONNECTION = "sql_connection"
SQL_PERMISSION = "sql_permission"
SQL_ERROR = "sql_error"
# search (see item_outcome, request_outcome).
ES_CONNECT = "es_connect"
ES_429 = "es_429"
ES_5XX = "es_5xx"
ES_TIMEOUT = "es_timeout"
ES_AUTH = "es_auth"
ES_RESPONSE = "es_response"
ES_MAPPING = "es_mapping"
ES_REJECTED = "es_rejected"
ES_STATUS = "es_status"
ES_FORBIDDEN = "es_forbidden"
ES_INVALID = "es_invalid"


def success() -> Outcome:
    """The event's effect is in the sink."""
    return Outcome_Success()


def transient(reason: str, message: str) -> Outcome:
    """The event may succeed later as it stands: the host retries it with backoff."""
    return Outcome_Transient(Failure(reason, message))


def deterministic(reason: str, message: str) -> Outcome:
    """The event can never succeed as it stands: the host fails it at once."""
    return Outcome_Deterministic(Failure(reason, message))


class Failed(Exception):
    """A capability call failed; `outcome` is what that means for the event."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.value.message)
        self.outcome = outcome


# sql

def sql_outcome(error) -> Outcome:
    """What an `sql.SqlError` means for the event. Retrying helps with serialization failures and
    deadlocks, timeouts and lost connections; not with a missing privilege, nor with a value
    Postgres refuses as data (SQLSTATE class 22), which is the payload's fault, nor with anything
    else."""
    from wit_world.imports import sql

    message = f"{error.message} ({error.code})"
    kind = error.kind
    if kind == sql.ErrorKind.SERIALIZATION_FAILURE:
        return transient(SQL_SERIALIZATION, message)
    if kind == sql.ErrorKind.TIMEOUT:
        return transient(SQL_TIMEOUT, message)
    if kind == sql.ErrorKind.CONNECTION:
        return transient(SQL_CONNECTION, message)
    if kind == sql.ErrorKind.PERMISSION_DENIED:
        return deterministic(SQL_PERMISSION, message)
    if kind == sql.ErrorKind.OTHER and error.code.startswith("22"):
        return deterministic(BAD_PAYLOAD, message)
    return deterministic(SQL_ERROR, message)


def execute(statement: str, params: list) -> int:
    """Runs one statement in the batch's transaction; returns the rows it affected. `params` (a
    list) binds $1, $2, ...; raises `Failed` when the database refuses."""
    from wit_world.imports import sql

    try:
        return sql.execute(statement, json.dumps(params))
    except Err as e:
        raise Failed(sql_outcome(e.value)) from None


def query(statement: str, params: list) -> list:
    """Runs one statement in the batch's transaction; returns its rows as dicts (column → value).
    Raises `Failed` when the database refuses."""
    from wit_world.imports import sql

    try:
        return json.loads(sql.query(statement, json.dumps(params)))
    except Err as e:
        raise Failed(sql_outcome(e.value)) from None


def apply_once(applied_table: str, event_id: str, effect):
    """Runs `effect()` for event `event_id` only if this sink has not applied that event before,
    and records that it has: `INSERT INTO <applied_table> (event_id) VALUES ($1::uuid) ON CONFLICT
    DO NOTHING`, then `effect()` when the insert added the row. Returns `(True, effect's result)`
    when applied now, `(False, None)` when already applied (a redelivery, a replay, a rebuild over
    the live model). Both run in the batch's transaction: an effect that raises `Failed` rolls the
    id back with it. `applied_table` needs a unique `event_id uuid` column."""
    if not _is_table_name(applied_table):
        raise Failed(deterministic(
            SQL_ERROR,
            f"apply_once: `{applied_table}` is not a table name (lowercase letters, digits and `_`, "
            "optionally `schema.` before it)"))
    recorded = execute(
        f"INSERT INTO {applied_table} (event_id) VALUES ($1::uuid) ON CONFLICT DO NOTHING",
        [event_id])
    if recorded == 0:
        return False, None
    return True, effect()


def _is_table_name(name: str) -> bool:
    parts = name.split(".")
    return 1 <= len(parts) <= 2 and all(
        0 < len(p) <= 63 and (p[0].islower() or p[0] == "_") and p.isascii()
        and all(c.islower() or c.isdigit() or c == "_" for c in p)
        for p in parts)


# search

def item_outcome(operation, item) -> Outcome:
    """What the server's answer for one bulk operation means for its event: 2xx, 409 (the index
    already holds this or a newer external version) and 404 on a delete are success; 429, 408 and
    5xx transient; 400 `es_mapping`; any other 4xx `es_rejected`."""
    from wit_world.imports import search

    status = item.status
    detail = f"{status} {operation.index}/{operation.id}: {item.error_type}: {item.error_reason}"
    if 200 <= status < 300 or status == 409:
        return success()
    if status == 404 and operation.action == search.Action.DELETE:
        return success()
    if status == 429:
        return transient(ES_429, detail)
    if status == 408:
        return transient(ES_TIMEOUT, detail)
    if 500 <= status < 600:
        return transient(ES_5XX, detail)
    if status == 400:
        return deterministic(ES_MAPPING, detail)
    return deterministic(ES_REJECTED, detail)


def request_outcome(error) -> Outcome:
    """The outcome of every operation of a bulk request that failed as a whole (a
    `search.BulkError`). 401/403 are transient `es_auth`: the credentials are the host's, and the
    same event succeeds once an operator fixes them."""
    from wit_world.imports import search

    if isinstance(error, search.BulkError_Connect):
        return transient(ES_CONNECT, f"search server unreachable: {error.value}")
    if isinstance(error, search.BulkError_Status):
        status = error.value.status
        message = f"bulk request answered {status}: {error.value.message}"
        if status == 429:
            return transient(ES_429, message)
        if status == 408:
            return transient(ES_TIMEOUT, message)
        if 500 <= status < 600:
            return transient(ES_5XX, message)
        if status in (401, 403):
            return transient(ES_AUTH, message)
        return deterministic(ES_STATUS, message)
    if isinstance(error, search.BulkError_Forbidden):
        return deterministic(ES_FORBIDDEN, error.value)
    return deterministic(ES_INVALID, error.value)


def write(operations: list) -> list:
    """Sends `operations` as one bulk request; returns one outcome per operation, in order."""
    from wit_world.imports import search

    if not operations:
        return []
    try:
        items = search.bulk(operations)
    except Err as e:
        outcome = request_outcome(e.value)
        return [outcome for _ in operations]
    return [
        item_outcome(op, items[i]) if i < len(items)
        else transient(ES_RESPONSE, "no result for this operation")
        for i, op in enumerate(operations)
    ]
