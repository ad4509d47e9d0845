"""POST /graphql: GitHub's GraphQL API over the sandbox's repositories and pull requests.

The query is parsed and validated by graphql-core against ``github.graphql`` (a cut of GitHub's
public schema), measured for GitHub's node limit and cost (``gqlcost``), charged to the
caller's ``graphql`` bucket (5 000 points an hour, apart from REST's), then run.  Errors come
back as GitHub words them: validation errors as graphql-ruby reports them (``extensions.code``,
a ``path`` starting at the operation, no ``data``), resolver errors with a ``type``
(NOT_FOUND, MISSING_PAGINATION_BOUNDARIES, ...) next to partial ``data``, all with HTTP 200.
Authentication, faults and the secondary limit are the server's, as for REST.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    build_schema,
    execute,
    parse,
    print_ast,
    validate,
)

from . import gqlcost, pullsearch
from .gqlobjects import (
    Context,
    check_page_arguments,
    commit,
    find_repository,
    gh_error,
    invalid_cursor,
    issue_comment,
    owner,
    page,
    person,
    pull_request,
    pull_request_commit,
    repository,
    review,
    review_comment,
    review_thread,
)
from .limits import Bucket
from .nodeids import node_id, parse_node_id, parse_search_cursor, search_cursor

if TYPE_CHECKING:
    from .sandbox import Sandbox

log = logging.getLogger("ghetl.sandbox")

SCHEMA_FILE = Path(__file__).with_name("github.graphql")
DOCS = "https://docs.github.com/graphql"
AUTH_DOCS = "https://docs.github.com/graphql/guides/forming-calls-with-graphql#authenticating-with-graphql"
SCOPES = "repo"


@dataclass
class Answer:
    """What the server sends: status, JSON body, the bucket for the headers, and whether it was charged."""

    status: int
    body: dict[str, Any]
    bucket: Bucket
    charged: bool = False


@functools.cache
def schema() -> GraphQLSchema:
    """Built on the first GraphQL request, so REST-only use of the sandbox never pays for it."""
    return build_schema(SCHEMA_FILE.read_text(encoding="utf-8"))


# ----- error shapes -------------------------------------------------------------------------

def unauthenticated() -> dict[str, Any]:
    return {"message": "This endpoint requires you to be authenticated.", "documentation_url": AUTH_DOCS,
            "status": "401"}


def bad_credentials() -> dict[str, Any]:
    return {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}


def rate_limited(user_id: int) -> dict[str, Any]:
    """Primary limit spent: HTTP 200 with this body (github/docs#22607)."""
    return {"errors": [{"type": "RATE_LIMITED", "message": f"API rate limit exceeded for user ID {user_id}."}]}


def timed_out(request_id: str) -> dict[str, Any]:
    """The 502/504 body when a query runs too long; ``data`` really is the string "null"."""
    return {"data": "null", "errors": [{"message": "Something went wrong while executing your query. This may be "
                                                   "the result of a timeout, or it could be a GitHub bug. Please "
                                                   f"include `{request_id}` when reporting this issue."}]}


def secondary_limited(request_id: str) -> dict[str, Any]:
    """The secondary limit as a GraphQL error, which GitHub also sends with HTTP 200."""
    return {"errors": [{"type": "RATE_LIMITED",
                        "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you "
                                   "try again. If you reach out to GitHub Support for help, please include the "
                                   f"request ID {request_id}."}]}


def _locations(error: GraphQLError) -> list[dict[str, int]]:
    return [{"line": loc.line, "column": loc.column} for loc in error.locations or ()]


def _operation_label(definition: Any) -> str:
    if isinstance(definition, FragmentDefinitionNode):
        return f"fragment {definition.name.value}"
    kind = definition.operation.value
    return f"{kind} {definition.name.value}" if definition.name else kind


def _ast_path(document: DocumentNode, target: Any) -> list[str]:
    """graphql-ruby's path of a validation error: the operation, then field names down to the node."""
    def walk(node: Any, trail: list[str]) -> list[str] | None:
        if node is target:
            return trail
        selection_set = getattr(node, "selection_set", None)
        for child in (selection_set.selections or ()) if selection_set else ():
            found = walk(child, [*trail, child.name.value] if isinstance(child, FieldNode) else trail)
            if found is not None:
                return found
        for argument in getattr(node, "arguments", None) or ():
            if argument is target or argument.value is target:
                return trail
        return None

    for definition in document.definitions:
        found = walk(definition, [_operation_label(definition)])
        if found is not None:
            return found
    return []


VALIDATION_RULES: tuple[tuple[re.Pattern[str], Any], ...] = (
    (re.compile(r"Cannot query field '(\w+)' on type '(\w+)'"),
     lambda m: (f"Field '{m[1]}' doesn't exist on type '{m[2]}'", "undefinedField",
                {"typeName": m[2], "fieldName": m[1]})),
    (re.compile(r"Unknown argument '(\w+)' on field '(\w+)\.(\w+)'"),
     lambda m: (f"Field '{m[3]}' doesn't accept argument '{m[1]}'", "argumentNotAccepted",
                {"name": m[3], "typeName": "Field", "argumentName": m[1]})),
    (re.compile(r"Argument '\w+\.(\w+)\((\w+):\)' of type '.+' is required"
                r"|Field '(\w+)' argument '(\w+)' of type '.+' is required"),
     lambda m: (f"Field '{m[1] or m[3]}' is missing required arguments: {m[2] or m[4]}", "missingRequiredArguments",
                {"className": "Field", "name": m[1] or m[3], "arguments": m[2] or m[4]})),
    (re.compile(r"Field '(\w+)' of type '(.+)' must have a selection of subfields"),
     lambda m: (f"Field must have selections (field '{m[1]}' returns {m[2].rstrip('!')} but has no selections. "
                f"Did you mean '{m[1]} {{ ... }}'?)", "selectionMismatch",
                {"nodeName": f"field '{m[1]}'", "typeName": m[2].rstrip("!")})),
    (re.compile(r"Variable '\$(\w+)' is never used in operation '?(\w*)'?"),
     lambda m: (f"Variable ${m[1]} is declared by {m[2] or 'anonymous query'} but not used", "variableNotUsed",
                {"variableName": m[1]})),
)


def validation_error(document: DocumentNode, error: GraphQLError) -> dict[str, Any]:
    """One validation error in graphql-ruby's words and shape (path, extensions, locations, message)."""
    message, code, extra = error.message, "validationFailed", {}
    for pattern, build in VALIDATION_RULES:
        found = pattern.search(error.message)
        if found:
            message, code, extra = build(found)
            break
    path = _ast_path(document, error.nodes[0]) if error.nodes else []
    return {"path": path, "extensions": {"code": code, **extra}, "locations": _locations(error), "message": message}


def syntax_error(error: GraphQLError) -> dict[str, Any]:
    found = re.search(r"found (.+?)\.?$", error.message)
    token = found[1] if found else "end of string"
    token = "end of string" if token == "<EOF>" else token.replace("'", '"')
    where = error.locations[0] if error.locations else None
    at = f" at [{where.line}, {where.column}]" if where else ""
    return {"message": f"Parse error on {token}{at}", "locations": _locations(error)}


def execution_error(error: GraphQLError, request_id: str) -> dict[str, Any]:
    """A resolver's error with its ``type``; anything unexpected is GitHub's 'Something went wrong'."""
    kind = (error.extensions or {}).get("type")
    if kind is None and error.original_error is not None and not isinstance(error.original_error, GraphQLError):
        log.error("GraphQL resolver failed: %r", error.original_error, exc_info=error.original_error)
        return {"message": timed_out(request_id)["errors"][0]["message"], "path": error.path,
                "locations": _locations(error)}
    out: dict[str, Any] = {"type": kind} if kind else {}
    if error.path:
        out["path"] = error.path
    out["locations"] = _locations(error)
    out["message"] = error.message
    return out


# ----- the request --------------------------------------------------------------------------

def _request(body: bytes) -> tuple[str, dict[str, Any], str | None] | dict[str, Any]:
    """(query, variables, operationName), or the error body GitHub sends for a malformed request."""
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return {"message": "Problems parsing JSON", "documentation_url": DOCS, "status": "400"}
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str) or not payload["query"].strip():
        return {"errors": [{"message": "A query attribute must be specified and must be a string."}]}
    variables = payload.get("variables") or {}
    if isinstance(variables, str):
        try:
            variables = json.loads(variables) if variables.strip() else {}
        except ValueError:
            variables = None
    if not isinstance(variables, dict):
        return {"errors": [{"message": "Variables are invalid JSON."}]}
    operation = payload.get("operationName")
    return payload["query"], variables, operation if isinstance(operation, str) else None


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | str:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name:
        found = next((o for o in operations if o.name and o.name.value == name), None)
        return found or f'No operation named "{name}"'
    if len(operations) != 1:
        return "An operation name is required"
    return operations[0]


def answer(sb: Sandbox, caller: str, body: bytes, request_id: str) -> Answer:
    """Run one authenticated GraphQL request end to end."""
    bucket = sb.limits.peek(caller, "graphql", True)
    request = _request(body)
    if isinstance(request, dict):
        return Answer(400 if "documentation_url" in request else 200, request, bucket)
    query, variables, operation_name = request
    try:
        document = parse(query)
    except GraphQLError as exc:
        return Answer(200, {"errors": [syntax_error(exc)]}, bucket)
    problems = validate(schema(), document)
    if problems:
        return Answer(200, {"errors": [validation_error(document, p) for p in problems]}, bucket)
    operation = _operation(document, operation_name)
    if isinstance(operation, str):
        return Answer(200, {"errors": [{"message": operation}]}, bucket)
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    measured = gqlcost.measure(schema(), operation, fragments, variables)
    refusal = measured.error()
    if refusal is not None:
        return Answer(200, {"errors": [refusal]}, bucket)
    charged = False
    if not measured.dry_run:
        charged, bucket = sb.limits.try_charge(caller, "graphql", True, measured.cost)
        if not charged:
            log.info("GraphQL rate limit exhausted")
            return Answer(200, rate_limited(sb.store.viewer.id), bucket)
    context = Context(sb, measured.cost, measured.nodes, bucket)
    result = cast(ExecutionResult, execute(schema(), document, root_value=root(context), context_value=context,
                                           variable_values=variables, operation_name=operation_name,
                                           field_resolver=_resolve,
                                           is_awaitable=_never_awaitable))
    return Answer(200, _body(operation, variables, result, request_id), bucket, charged=charged)


# graphql-core 3.3 and 3.2 word it differently: "has invalid value at [0]: ..." / "got invalid value x at 'ids[0]'; ..."
VARIABLE_ERRORS = (re.compile(r"Variable '\$(\w+)' has invalid value(?: at (\S+))?: (.*)"),
                   re.compile(r"Variable '\$(\w+)' got invalid value .*?(?: at '\w+((?:\[\w+\])+)')?; (.*)"),
                   re.compile(r"Variable '\$(\w+)' of required type '.+' ()(was not provided)\."))


def variable_error(operation: OperationDefinitionNode, variables: dict[str, Any],
                   error: GraphQLError) -> dict[str, Any] | None:
    """A variable that does not fit its type, as graphql-ruby words it; None for other errors."""
    found = next((m for m in (p.match(error.message) for p in VARIABLE_ERRORS) if m), None)
    if found is None:
        return None
    name, where, explanation = found.groups()
    declared = next(d for d in operation.variable_definitions or () if d.variable.name.value == name)
    path = [int(p) if p.isdigit() else p for p in re.findall(r"\w+", where or "")]
    return {"extensions": {"value": variables.get(name), "problems": [{"path": path, "explanation": explanation}]},
            "locations": _locations(error),
            "message": f"Variable ${name} of type {print_ast(declared.type)} was provided invalid value"}


def _resolve(source: dict[str, Any], info: Any, **args: Any) -> Any:
    """Every sandbox object is a dict (see gqlobjects): cheaper than graphql-core's general resolver."""
    value = source.get(info.field_name)
    return value(info, **args) if callable(value) else value


def _never_awaitable(value: Any) -> TypeGuard[Awaitable[Any]]:
    """All resolvers are synchronous; skipping graphql-core's awaitable check per value saves a tenth."""
    return False


def _body(operation: OperationDefinitionNode, variables: dict[str, Any], result: ExecutionResult,
          request_id: str) -> dict[str, Any]:
    """``data`` (possibly partial) and ``errors``; a request that could not start (bad variables) has no data."""
    if result.errors and result.data is None and all(not e.path for e in result.errors):
        return {"errors": [variable_error(operation, variables, e) or execution_error(e, request_id)
                           for e in result.errors]}
    errors = [execution_error(e, request_id) for e in result.errors or ()]
    return {"data": result.data, "errors": errors} if errors else {"data": result.data}


# ----- root fields --------------------------------------------------------------------------

def root(ctx: Context) -> dict[str, Any]:
    sb = ctx.sb
    return {
        "id": node_id("Q", 0),
        "viewer": lambda info: owner(sb, sb.store.viewer),
        "repository": lambda info, owner, name, followRenames=True: _repository(sb, owner, name, followRenames),
        "user": lambda info, login: _account(sb, login, "User"),
        "organization": lambda info, login: _account(sb, login, "Organization"),
        "node": lambda info, id: _node_or_raise(sb, id),
        "nodes": lambda info, ids: [find_node(sb, i) or _node_not_found(i) for i in ids],
        "search": lambda info, **args: _search(sb, info, args),
        "rateLimit": lambda info, dryRun=False: {
            "cost": ctx.cost, "limit": ctx.bucket.limit, "remaining": ctx.bucket.remaining,
            "used": ctx.bucket.used, "nodeCount": ctx.nodes,
            "resetAt": datetime.fromtimestamp(ctx.bucket.reset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
    }


def _repository(sb: Sandbox, login: str, name: str, follow_renames: bool) -> dict[str, Any]:
    found = find_repository(sb, login, name, follow_renames)
    if found is None:
        raise gh_error("NOT_FOUND", f"Could not resolve to a Repository with the name '{login}/{name}'.")
    return found


def _account(sb: Sandbox, login: str, kind: str) -> dict[str, Any]:
    account = sb.store.owner(login)
    if account is not None and account.kind == kind:
        return owner(sb, account)
    someone = sb.pull_store.person(login) if kind == "User" else None
    if someone is not None and someone.kind == "User":
        return person(sb, someone)
    raise gh_error("NOT_FOUND", f"Could not resolve to a{'n' if kind == 'Organization' else ''} {kind} with the "
                                f"login of '{login}'.")


def _node_not_found(text: str) -> GraphQLError:
    """Returned as a list item, graphql-core nulls just that item and reports the error at its index."""
    return gh_error("NOT_FOUND", f"Could not resolve to a node with the global id of '{text}'")


def _node_or_raise(sb: Sandbox, text: str) -> dict[str, Any]:
    found = find_node(sb, text)
    if found is None:
        raise _node_not_found(text)
    return found


def find_node(sb: Sandbox, text: str) -> dict[str, Any] | None:
    """Any object the sandbox hands out an id for, looked up from the id alone."""
    parsed = parse_node_id(text) or _legacy_repository_id(text)
    if parsed is None or not parsed[1] or not all(isinstance(p, (int, str)) for p in parsed[1]):
        return None
    prefix, parts = parsed
    store = sb.store
    with store.lock:
        if prefix in ("U", "O", "BOT"):
            return _actor_node(sb, prefix, parts[0])
        repo = store.repo_by_id(parts[0]) if isinstance(parts[0], int) else None
        if repo is None or not store.can_see(repo, True):
            return None
        if prefix == "R" and len(parts) == 1:
            return repository(sb, repo)
    pulls = sb.pull_store.of(repo)
    with store.lock:
        return _pull_node(sb, repo, pulls, prefix, parts[1:])


def _legacy_repository_id(text: str) -> tuple[str, list[int | str]] | None:
    """A REST payload's `node_id` of a repository (base64 of `010:Repository<id>`): GitHub still
    resolves these classic ids in `node(id:)` and `nodes(ids:)`."""
    try:
        decoded = base64.b64decode(text, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    kind, _, number = decoded.partition(":Repository")
    return ("R", [int(number)]) if kind == "010" and number.isdigit() else None


def _actor_node(sb: Sandbox, prefix: str, number: Any) -> dict[str, Any] | None:
    account = sb.store.owner_by_id(number) if isinstance(number, int) else None
    if account is not None and (prefix == "O") == (account.kind == "Organization") and prefix != "BOT":
        return owner(sb, account)
    for login_owner in sb.store.owners():
        found = next((p for p in sb.pull_store.people(login_owner.login) if p.id == number), None)
        if found is not None and (prefix == "BOT") == (found.kind == "Bot") and prefix != "O":
            return person(sb, found)
    return None


def _pull_node(sb: Sandbox, repo: Any, pulls: list[Any], prefix: str, parts: list[Any]) -> dict[str, Any] | None:
    for pull in pulls:
        if prefix == "PR" and parts == [pull.id]:
            return pull_request(sb, repo, pull)
        if prefix == "PURC" and len(parts) == 2 and parts[0] == pull.id and 1 <= parts[1] <= len(pull.commits):
            return pull_request_commit(sb, repo, pull, parts[1], pull.commits[parts[1] - 1])
        found = _child_node(sb, repo, pull, prefix, parts)
        if found is not None:
            return found
    return None


def _child_node(sb: Sandbox, repo: Any, pull: Any, prefix: str, parts: list[Any]) -> dict[str, Any] | None:
    if len(parts) != 1:
        return None
    wanted = parts[0]
    kinds: dict[str, tuple[list[Any], Callable[..., dict[str, Any]]]] = {
        "PRR": (pull.reviews, review), "IC": (pull.comments, issue_comment),
        "PRRT": (pull.threads, review_thread), "PRRC": (pull.review_comments, review_comment),
    }
    if prefix == "C":
        found = pull.commit_by_oid(wanted) if isinstance(wanted, str) else None
        return None if found is None else commit(sb, repo, found)
    if prefix not in kinds:
        return None
    items, render = kinds[prefix]
    item = next((i for i in items if i.id == wanted), None)
    return None if item is None else render(sb, repo, pull, item)


def _search(sb: Sandbox, info: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Offset cursors (cursor:N), GitHub's 1 000-result cap; issueCount counts every match."""
    check_page_arguments(info, args)
    if args["type"] != "ISSUE":
        matches = []
    else:
        try:
            matches = pullsearch.find(sb, args["query"])
        except pullsearch.SearchError as exc:
            raise gh_error("INVALID", str(exc)) from None
    result = _offset_page(sb, args, matches[:pullsearch.MAX_RESULTS])
    return {**result, "issueCount": len(matches), "repositoryCount": 0, "userCount": 0}


def _offset_page(sb: Sandbox, args: dict[str, Any], served: list) -> dict[str, Any]:
    try:
        start = parse_search_cursor(args["after"]) if args.get("after") else 0
        end = parse_search_cursor(args["before"]) - 1 if args.get("before") else len(served)
    except ValueError:
        raise invalid_cursor(args.get("after") or args["before"]) from None
    return page(served, args, start, end, lambda i: search_cursor(i + 1), lambda pair: pull_request(sb, *pair))
