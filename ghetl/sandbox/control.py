"""The HTTP control API under /_sandbox/, for a sandbox running as a separate process.

Bodies mirror the Python calls: ``POST /_sandbox/touch {"repo": "acme/x", "description": "..."}``,
``POST /_sandbox/inject {"fault": "status", "path": "page=2", "times": 2, "status": 502}``; a
``mutate`` fault names a control operation to run instead of a callable:
``{"fault": "mutate", "path": "page=2", "op": "touch", "args": {"repo": "acme/x"}}``.
Pull requests: ``GET /_sandbox/pull_requests?repo=acme/x`` (ground truth), ``POST /_sandbox/touch_pull_request
{"repo": "acme/x", "number": 3, "title": "..."}``, likewise add_pull_request (title), comment_pull_request
(number, body), review_pull_request (number, state), delete_pull_request_comment (number, external_id)
and force_push_pull_request (number, commits); ``set_pull_commits_cap {"cap": 250}`` lists at most that many
commits per pull request (``null``: all). GitHub Apps: ``POST /_sandbox/add_app {"app_id": 1, "public_key":
"-----BEGIN PUBLIC KEY-----...", "installation_id": 2}`` and ``POST /_sandbox/revoke_installation_tokens``.
Control requests are free, never faulted and not recorded in ``requests``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from .shapes import iso

if TYPE_CHECKING:
    from .sandbox import Sandbox

ROOT = "/_sandbox"


def control_path(path: str, prefix: str) -> str | None:
    """The operation name when ``path`` is a control URL (at the root or under the GHES prefix)."""
    for root in (ROOT, prefix + ROOT) if prefix else (ROOT,):
        if path.startswith(root + "/"):
            return path[len(root) + 1:].strip("/")
    return None


def handle(sb: Sandbox, method: str, op: str, query: str, body: bytes) -> tuple[int, Any]:
    """Run one control operation; returns (status, JSON payload)."""
    try:
        args = json.loads(body) if body else {}
    except ValueError:
        return 400, {"error": "the body must be a JSON object"}
    if not isinstance(args, dict):
        return 400, {"error": "the body must be a JSON object"}
    args.update(parse_qsl(query))
    table = READS if method in ("GET", "HEAD") else WRITES
    operation = table.get(op)
    if operation is None:
        return 404, {"error": f"no control operation {method} /_sandbox/{op}",
                     "operations": {"GET": sorted(READS), "POST": sorted(WRITES)}}
    try:
        return 200, operation(sb, dict(args))
    except KeyError as exc:
        return 404, {"error": str(exc.args[0]) if exc.args else "not found"}
    except (TypeError, ValueError) as exc:
        return 400, {"error": str(exc)}


def run_op(sb: Sandbox, op: str, args: dict[str, Any]) -> Any:
    """Run a write operation by name; used by HTTP ``mutate`` faults."""
    return WRITES[op](sb, dict(args))


def _ref(args: dict[str, Any]) -> int | str:
    """The repository argument, named ``repo`` or, as in the Python API, ``id_or_full_name``."""
    for key in ("repo", "id_or_full_name"):
        if key in args:
            return args.pop(key)
    raise ValueError('missing "repo" (an id or "owner/name")')


def _jsonable(value: Any) -> Any:
    """Ground-truth dicts carry datetimes; over HTTP they are GitHub-style ISO strings."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return iso(value) if isinstance(value, datetime) else value


def _info(sb: Sandbox, args: dict[str, Any]) -> dict[str, Any]:
    owners = [{"login": o.login, "id": o.id, "type": o.kind, "repos": len(sb.store.repos_of(o.login)),
               "created_at": iso(o.created_at)} for o in sb.store.owners()]
    return {"url": sb.url, "graphql": f"{sb.url}/graphql", "viewer": sb.store.viewer.login, "owners": owners,
            "requests": len(sb.requests), "in_flight": sb.in_flight.now, "max_in_flight": sb.in_flight.most,
            "max_in_flight_per_caller": sb.in_flight.most_per_caller, "max_concurrent": sb.max_concurrent,
            "latency_ms": sb.latency.seconds * 1000, "jitter_ms": sb.latency.jitter * 1000}


def _inject(sb: Sandbox, args: dict[str, Any]) -> dict[str, Any]:
    kind = args.pop("fault", None)
    if kind is None:
        raise ValueError('missing "fault"')
    if kind == "mutate":
        op, op_args = args.pop("op", None), args.pop("args", {})
        if op not in WRITES or op in ("inject", "clear_faults", "reset_stats"):
            raise ValueError('a mutate fault needs "op": one of '
                             + ", ".join(sorted(set(WRITES) - {"inject", "clear_faults", "reset_stats"})))
        args["action"] = lambda sandbox: run_op(sandbox, op, op_args)
    sb.inject(kind, **args)
    return {"ok": True}


def _ok(command: Callable[..., None], *args: Any, **kwargs: Any) -> dict[str, bool]:
    """Run a command that answers nothing; the client gets `{"ok": true}`."""
    command(*args, **kwargs)
    return {"ok": True}


READS: dict[str, Callable[[Sandbox, dict[str, Any]], Any]] = {
    "info": _info,
    "requests": lambda sb, a: [r.as_dict() for r in sb.requests],
    "repos": lambda sb, a: sb.repos(a["owner"]),
    "repo": lambda sb, a: sb.repo(_ref(a)),
    "themes": lambda sb, a: sb.themes_of(_ref(a)),
    "pull_requests": lambda sb, a: _jsonable(sb.pull_requests(_ref(a))),
    "pull_request_counts": lambda sb, a: sb.pull_request_counts(_ref(a)),
}
WRITES: dict[str, Callable[[Sandbox, dict[str, Any]], Any]] = {
    "touch": lambda sb, a: sb.touch(_ref(a), **a),
    "create": lambda sb, a: sb.create(a.pop("owner"), a.pop("name"), **a),
    "rename": lambda sb, a: sb.rename(_ref(a), a["new_name"]),
    "transfer": lambda sb, a: sb.transfer(_ref(a), a["new_owner"]),
    "delete": lambda sb, a: _ok(sb.delete, _ref(a)),
    "inject": _inject,
    "clear_faults": lambda sb, a: _ok(sb.clear_faults),
    "set_rate_limit": lambda sb, a: _ok(sb.set_rate_limit, **a),
    "reset_stats": lambda sb, a: _ok(sb.reset_stats),
    "add_app": lambda sb, a: _ok(sb.add_app, a.pop("app_id"), a.pop("public_key"), int(a.pop("installation_id")), **a),
    "revoke_installation_tokens": lambda sb, a: {"revoked": sb.revoke_installation_tokens()},
    "touch_pull_request": lambda sb, a: _jsonable(sb.touch_pull_request(_ref(a), int(a.pop("number")), **a)),
    "set_pull_commits_cap": lambda sb, a: _ok(sb.set_pull_commits_cap, a.get("cap")),
    "add_pull_request": lambda sb, a: _jsonable(sb.add_pull_request(_ref(a), **a)),
    "comment_pull_request": lambda sb, a: _jsonable(sb.comment_pull_request(_ref(a), int(a.pop("number")), **a)),
    "review_pull_request": lambda sb, a: _jsonable(sb.review_pull_request(_ref(a), int(a.pop("number")), **a)),
    "delete_pull_request_comment": lambda sb, a: _jsonable(
        sb.delete_pull_request_comment(_ref(a), int(a.pop("number")), a.pop("external_id"))),
    "force_push_pull_request": lambda sb, a: _jsonable(
        sb.force_push_pull_request(_ref(a), int(a.pop("number")), int(a.pop("commits", 1)))),
}
