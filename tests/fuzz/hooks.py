"""Schemathesis hooks for runledger's OpenAPI fuzzing (tests/dev/fuzz.rs).

`run_at` may be at most 366 days ahead of the server's clock: a limit relative to now,
which JSON Schema cannot state. Generated times beyond it are moved to one hour ahead, so
a schema-valid body stays valid; every other generated value is sent as generated.
"""

from datetime import datetime, timedelta, timezone

import schemathesis


def _parse(value):
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError):
        return None


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict) and isinstance(body.get("run_at"), str):
        at = _parse(body["run_at"])
        limit = datetime.now(timezone.utc) + timedelta(days=360)
        if at is not None and at.tzinfo is not None and at > limit:
            body["run_at"] = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    return body
