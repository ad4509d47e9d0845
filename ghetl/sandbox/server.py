"""HTTP front of the sandbox: a stdlib ThreadingHTTPServer that speaks like api.github.com.

Per request, in GitHub's order of concerns: injected faults (infrastructure fails before GitHub
sees anything), authentication, secondary then primary rate limit, the endpoint itself, then
conditional requests (an authenticated 304 gives its rate-limit unit back).  POST /graphql takes
the same path through faults, authentication and the secondary limit, then ``graphql.answer``
charges its cost and runs it (graphql-core is imported by the first such request).  Headers
follow the 2025/2026 recordings (get-repository.pygithub-*.json).  Responses are written in one
send with TCP_NODELAY so that 100 pages of 100 repositories stream in about a second over loopback.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import random
import re
import socket
import struct
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import control, errors
from .faults import GRAPHQL_KINDS, Fault
from .limits import Bucket
from .records import RequestRecord
from .routes import Call, Reply, route_for

if TYPE_CHECKING:
    from .sandbox import Sandbox

log = logging.getLogger("ghetl.sandbox")

API_VERSION = "2022-11-28"
GHES_VERSION = "3.14.0"
JSON_TYPE = "application/json; charset=utf-8"
EXPOSE_HEADERS = ("ETag, Link, Location, Retry-After, X-GitHub-OTP, X-RateLimit-Limit, X-RateLimit-Remaining, "
                  "X-RateLimit-Used, X-RateLimit-Resource, X-RateLimit-Reset, X-OAuth-Scopes, "
                  "X-Accepted-OAuth-Scopes, X-Poll-Interval, X-GitHub-Media-Type, X-GitHub-SSO, "
                  "X-GitHub-Request-Id, Deprecation, Sunset")
SECURITY_HEADERS = (
    ("Access-Control-Expose-Headers", EXPOSE_HEADERS),
    ("Access-Control-Allow-Origin", "*"),
    ("Strict-Transport-Security", "max-age=31536000; includeSubdomains; preload"),
    ("X-Frame-Options", "deny"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-XSS-Protection", "0"),
    ("Referrer-Policy", "origin-when-cross-origin, strict-origin-when-cross-origin"),
    ("Content-Security-Policy", "default-src 'none'"),
)
VARY_AUTHENTICATED = "Accept, Authorization, Cookie, X-GitHub-OTP,Accept-Encoding, Accept, X-Requested-With"
VARY_ANONYMOUS = "Accept,Accept-Encoding, Accept, X-Requested-With"
VARY_PLAIN = "Accept-Encoding, Accept, X-Requested-With"
TOKEN_SCOPES = "read:org, repo"
GRAPHQL_MEDIA_TYPE = "github.v4; format=json"
REST_FAULTS = ("status", "html", "reset", "delay", "secondary", "mutate")
GRAPHQL_FAULTS = REST_FAULTS + GRAPHQL_KINDS
ACCESS_TOKENS = re.compile(r"/app/installations/([0-9]{1,19})/access_tokens")


def graphql_paths(prefix: str) -> tuple[str, ...]:
    """``/graphql``; under a GHES prefix such as ``/api/v3`` also GHES's own ``/api/graphql``."""
    if not prefix:
        return ("/graphql",)
    return (prefix + "/graphql", prefix.rsplit("/", 1)[0] + "/graphql")


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, Handler)

    # A TCP server's requests are sockets; typeshed's parameter type also allows a UDP server's (data, socket).
    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]  # as process_request
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Hang up kept-alive connections, so a stopped sandbox really stops answering."""
        with self._open_lock:
            still_open = list(self._open)
        for connection in still_open:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """A client that hangs up (e.g. after its own timeout during a delay fault) is normal here."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("client %s went away before the answer was written", client_address[0])
            return
        log.exception("request from %s failed inside the sandbox", client_address[0])


def request_id() -> str:
    """Shaped like GitHub's, e.g. B6D4:4D93:FECF60:106E791:677CD87F."""
    r = random.getrandbits
    return f"{r(16):04X}:{r(16):04X}:{r(24):06X}:{r(28):07X}:{int(time.time()):08X}"


def caller_key(token: str | None, client_ip: str) -> str:
    """Buckets are keyed by a digest so the token itself is never stored."""
    if token is None:
        return f"ip:{client_ip}"
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]


def etag_for(body: bytes) -> str:
    return 'W/"' + hashlib.sha256(body).hexdigest() + '"'


def etag_matches(header: str, etag: str) -> bool:
    """Weak comparison, as GitHub accepts both W/"x" and "x" back in If-None-Match."""
    wanted = etag.removeprefix("W/")
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or wanted in tags


def not_modified_since(header: str, last_modified: datetime) -> bool:
    try:
        since = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return last_modified <= since


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "github.com"
    sys_version = ""
    disable_nagle_algorithm = True
    server: SandboxHTTPServer

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def version_string(self) -> str:
        return self.server_version

    # ----- dispatch ------------------------------------------------------------------------

    def _serve(self) -> None:
        sb = self.server.sandbox
        split = urlsplit(self.path)
        path = unquote(split.path)
        body = self._read_body()
        operation = control.control_path(path, sb.prefix)
        if operation is not None:
            status, payload = control.handle(sb, self.command, operation, split.query, body)
            self._write(status, [("Content-Type", JSON_TYPE)], json.dumps(payload).encode())
            return
        token = self._token()
        app = sb.apps.caller(token) if token else None
        caller = app[1] if app else caller_key(token or None, self.client_address[0])
        with sb.in_flight.holding(caller) as concurrent:
            sb.latency.wait()
            self._serve_api(sb, split, path, body, token, app, caller, concurrent)

    def _serve_api(self, sb: Sandbox, split: Any, path: str, body: bytes, token: str | None,
                   app: tuple[bool, str] | None, caller: str, concurrent: int) -> None:
        pairs = parse_qsl(split.query, keep_blank_values=True)
        api_path = self._api_path(path, sb.prefix)
        call = Call(self.command, self.path, api_path or path, pairs, dict(pairs), bool(token),
                    caller, self.client_address[0])
        rid = request_id()
        record = {"method": call.method, "path": call.path, "query": call.params, "request_id": rid,
                  "authenticated": call.authenticated, "time": time.time()}
        exchange = ACCESS_TOKENS.fullmatch(api_path or "") if call.method == "POST" else None
        if exchange is not None:
            self._access_token(sb, int(exchange.group(1)), rid, record)
            return
        if sb.max_concurrent is not None and concurrent > sb.max_concurrent:
            # GitHub: "No more than 100 concurrent requests are allowed"; the answer is a secondary limit.
            resource = "graphql" if path in graphql_paths(sb.prefix) else "core"
            bucket = sb.limits.peek(call.caller, resource, call.authenticated)
            log.info("%d concurrent requests from one caller, over the limit of %d", concurrent, sb.max_concurrent)
            self._respond(sb, call, self._secondary_reply(403, 1, rid), bucket, rid, {**record, "resource": resource})
            return
        if call.method == "POST" and path in graphql_paths(sb.prefix):
            self._graphql(sb, call, token, app, body, rid, record)
            return
        if self._injected_fault(sb, call, rid, record, REST_FAULTS, self._fault):
            return
        if token is not None and self._refused(sb, token, app):
            bucket = sb.limits.peek(caller_key(None, call.client_ip), "core", False)
            self._respond(sb, call, Reply(401, errors.bad_credentials()), bucket, rid,
                          {**record, "authenticated": False, "resource": "core"})
            return
        route, groups = route_for(api_path) if api_path is not None and call.method in ("GET", "HEAD") \
            else (None, ())
        record["resource"] = resource = route.resource if route else "core"
        if route is not None and route.free:
            bucket = sb.limits.peek(call.caller, "core", call.authenticated)
            self._respond(sb, call, route.handler(sb, call, *groups), bucket, rid, record)
            return
        refusal, bucket = self._limit(sb, call, resource, rid)
        if refusal is not None:
            self._respond(sb, call, refusal, bucket, rid, record)
            return
        reply = route.handler(sb, call, *groups) if route else Reply(404, errors.not_found())
        self._respond(sb, call, reply, bucket, rid, {**record, "charged": True})

    def _graphql(self, sb: Sandbox, call: Call, token: str | None, app: tuple[bool, str] | None, body: bytes,
                 rid: str, record: dict) -> None:
        """POST /graphql: faults, then a token (GraphQL has no anonymous access), then the secondary limit."""
        from . import graphql

        record = {**record, "resource": "graphql"}
        if self._injected_fault(sb, call, rid, record, GRAPHQL_FAULTS, self._graphql_fault):
            return
        if not token or self._refused(sb, token, app):
            bucket = sb.limits.peek(caller_key(None, call.client_ip), "core", False)
            payload = graphql.bad_credentials() if token is not None else graphql.unauthenticated()
            self._respond(sb, call, Reply(401, payload), bucket, rid, {**record, "authenticated": False})
            return
        if sb.graphql_secondary is not None:
            retry_after = sb.graphql_secondary.check(call.caller)
            if retry_after is not None:
                bucket = sb.limits.peek(call.caller, "graphql", True)
                self._respond(sb, call, self._secondary_reply(403, retry_after, rid), bucket, rid, record)
                return
        try:
            answer = graphql.answer(sb, call.caller, body, rid)
        except Exception:
            log.exception("the GraphQL request failed inside the sandbox")
            bucket = sb.limits.peek(call.caller, "graphql", True)
            reply = Reply(502, graphql.timed_out(rid), scopes=graphql.SCOPES, media_type=GRAPHQL_MEDIA_TYPE)
            self._respond(sb, call, reply, bucket, rid, record)
            return
        reply = Reply(answer.status, answer.body, scopes=graphql.SCOPES, media_type=GRAPHQL_MEDIA_TYPE)
        self._respond(sb, call, reply, answer.bucket, rid, {**record, "charged": answer.charged})

    @staticmethod
    def _refused(sb: Sandbox, token: str, app: tuple[bool, str] | None) -> bool:
        """401 for a malformed header, an installation token expired or revoked, or a token outside
        ``sb.tokens``; installation tokens the sandbox issued are accepted beside those."""
        if token == "":
            return True
        if app is not None:
            return not app[0]
        return sb.tokens is not None and token not in sb.tokens

    def _access_token(self, sb: Sandbox, installation_id: int, rid: str, record: dict) -> None:
        """POST /app/installations/{id}/access_tokens, answered as the recording shows (no rate-limit headers)."""
        status, payload = sb.apps.exchange(self.headers.get("Authorization"), installation_id)
        body = json.dumps(payload).encode()
        headers = [("Date", email.utils.formatdate(usegmt=True)), ("Content-Type", JSON_TYPE),
                   ("Content-Length", str(len(body))), ("X-GitHub-Media-Type", "github.v3; format=json"),
                   ("x-github-api-version-selected", API_VERSION), *SECURITY_HEADERS, ("Server", "github.com"),
                   ("X-GitHub-Request-Id", rid)]
        sb.record(RequestRecord(status=status, **{**record, "authenticated": status == 201}))
        self._write(status, headers, body)

    def _graphql_fault(self, sb: Sandbox, call: Call, fault: Fault, rid: str, record: dict) -> None:
        """GraphQL's own failure bodies and the graphql bucket; html, reset and custom bodies are REST's."""
        from . import graphql

        options = fault.options
        status = int(options.get("status", 502 if fault.kind == "status" else 200))
        bucket = sb.limits.peek(call.caller, "graphql", True)
        if fault.kind == "timedout":
            payload = {"errors": [{"message": "timedout"}]}
        elif fault.kind == "ratelimited":
            payload, bucket = graphql.rate_limited(sb.store.viewer.id), replace(bucket, used=bucket.limit)
        elif fault.kind == "secondary":
            payload = graphql.secondary_limited(rid) if status == 200 else errors.secondary_rate_limit(rid)
        elif fault.kind == "status" and options.get("body") is None and status in (502, 504):
            payload = graphql.timed_out(rid)
        else:
            self._fault(sb, call, fault, rid, record)
            return
        if options.get("seconds"):
            time.sleep(float(options["seconds"]))
        retry_after = options.get("retry_after") if fault.kind == "secondary" else None
        headers = [] if retry_after is None else [("Retry-After", str(int(retry_after)))]
        reply = Reply(status, payload, headers=headers, scopes=graphql.SCOPES, media_type=GRAPHQL_MEDIA_TYPE)
        self._respond(sb, call, reply, bucket, rid, {**record, "fault": fault.kind})

    def _injected_fault(self, sb: Sandbox, call: Call, rid: str, record: dict, kinds: tuple[str, ...],
                        answer) -> bool:
        """Run a pending fault; True when ``answer`` already answered (or dropped) the request."""
        fault = sb.faults.take(call.raw, kinds)
        if fault is None:
            return False
        if fault.kind == "mutate":
            log.info("running an injected mutation before %s %s", call.method, call.path)
            action = fault.action  # never None for a mutate fault: Faults.inject refuses that
            try:
                if action is not None:
                    action(sb)
            except Exception:
                log.exception("the injected mutation failed; serving the request anyway")
            return False
        if fault.kind == "delay":
            time.sleep(float(fault.options.get("seconds", 1.0)))
            return False
        answer(sb, call, fault, rid, record)
        return True

    def _limit(self, sb: Sandbox, call: Call, resource: str, rid: str) -> tuple[Reply | None, Bucket]:
        """Secondary then primary rate limit: a refusal to send, or None and the charged bucket."""
        if sb.secondary is not None:
            retry_after = sb.secondary.check(call.caller)
            if retry_after is not None:
                bucket = sb.limits.peek(call.caller, resource, call.authenticated)
                return self._secondary_reply(403, retry_after, rid), bucket
        charged, bucket = sb.limits.try_charge(call.caller, resource, call.authenticated)
        if charged:
            return None, bucket
        who = str(sb.store.viewer.id) if call.authenticated else call.client_ip
        moment = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        log.info("rate limit exhausted for the %s bucket", resource)
        return Reply(403, errors.primary_rate_limit(who, rid, moment, call.authenticated, 403)), bucket

    def _api_path(self, path: str, prefix: str) -> str | None:
        """The path below the API root, or None when the request is outside a GHES prefix."""
        if not prefix:
            return path
        if path == prefix or path.startswith(prefix + "/"):
            return path[len(prefix):] or "/"
        return None

    def _token(self) -> str | None:
        """The token from ``Authorization: Bearer T`` or ``token T``; '' when the header is malformed."""
        header = self.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() in ("bearer", "token") and token.strip():
            return token.strip()
        return ""

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # ----- faults ----------------------------------------------------------------------------

    def _fault(self, sb: Sandbox, call: Call, fault: Fault, rid: str, record: dict) -> None:
        options = fault.options
        record = {**record, "fault": fault.kind}
        if options.get("seconds"):
            time.sleep(float(options["seconds"]))
        if fault.kind == "reset":
            log.info("dropping the connection for %s %s", call.method, call.path)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sb.record(RequestRecord(status=None, **record))
            self.connection.close()
            self.close_connection = True
            return
        if fault.kind == "secondary":
            bucket = sb.limits.peek(call.caller, "search" if call.path.startswith("/search/") else "core",
                                    call.authenticated)
            reply = self._secondary_reply(int(options.get("status", 403)), options.get("retry_after"), rid)
            self._respond(sb, call, reply, bucket, rid, record)
            return
        status = int(options.get("status", 503 if fault.kind == "html" else 502))
        if fault.kind == "html":
            payload = str(options.get("body") or errors.html_page(status)).encode()
        else:
            custom = options.get("body")
            payload = custom.encode() if isinstance(custom, str) else json.dumps(
                custom if custom is not None else errors.server_error(status)).encode()
        headers = [("Date", email.utils.formatdate(usegmt=True)), ("Content-Type", JSON_TYPE),
                   ("Content-Length", str(len(payload))), ("Server", "github.com"), ("X-GitHub-Request-Id", rid)]
        headers += [(str(name), str(value)) for name, value in (options.get("headers") or {}).items()]
        sb.record(RequestRecord(status=status, **record))
        self._write(status, headers, payload)

    def _secondary_reply(self, status: int, retry_after: int | None, rid: str) -> Reply:
        headers = [] if retry_after is None else [("Retry-After", str(int(retry_after)))]
        return Reply(status, errors.secondary_rate_limit(rid), headers=headers)

    # ----- writing ---------------------------------------------------------------------------

    def _respond(self, sb: Sandbox, call: Call, reply: Reply, bucket: Bucket, rid: str, record: dict) -> None:
        payload = reply.payload()
        etag = etag_for(payload) if reply.etag and reply.status == 200 else None
        status = reply.status
        if etag and self._not_modified(etag, reply):
            status = 304
            if record.get("charged") and call.authenticated:
                bucket = sb.limits.refund(call.caller, bucket.resource, True)
                record = {**record, "charged": False}
        headers = self._headers(sb, call, reply, status, etag, bucket, rid)
        body = b"" if status == 304 else payload
        if status != 304:
            headers.insert(-2, ("Content-Length", str(len(body))))
        sb.record(RequestRecord(status=status, per_page=reply.per_page, **record))
        self._write(status, headers, b"" if self.command == "HEAD" else body)

    def _not_modified(self, etag: str, reply: Reply) -> bool:
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            return etag_matches(if_none_match, etag)
        if_modified_since = self.headers.get("If-Modified-Since")
        return bool(if_modified_since and reply.last_modified
                    and not_modified_since(if_modified_since, reply.last_modified))

    def _headers(self, sb: Sandbox, call: Call, reply: Reply, status: int, etag: str | None, bucket: Bucket,
                 rid: str) -> list[tuple[str, str]]:
        headers = [("Date", email.utils.formatdate(usegmt=True)), ("Content-Type", JSON_TYPE)]
        if reply.cache == "max-age":
            scope = "private" if call.authenticated else "public"
            headers.append(("Cache-Control", f"{scope}, max-age=60, s-maxage=60"))
            headers.append(("Vary", VARY_AUTHENTICATED if call.authenticated else VARY_ANONYMOUS))
        elif reply.cache == "no-cache":
            headers.append(("Cache-Control", "no-cache"))
            headers.append(("Vary", VARY_AUTHENTICATED if call.authenticated and status == 200 else VARY_PLAIN))
        else:
            headers.append(("Vary", VARY_PLAIN))
        if etag:
            headers.append(("ETag", etag))
        if reply.last_modified is not None and status in (200, 304):
            headers.append(("Last-Modified", email.utils.format_datetime(reply.last_modified, usegmt=True)))
        if call.authenticated:
            headers.append(("X-OAuth-Scopes", TOKEN_SCOPES))
            headers.append(("X-Accepted-OAuth-Scopes", reply.scopes))
            headers.append(("github-authentication-token-expiration", sb.token_expiration))
        if reply.location:
            headers.append(("Location", reply.location))
        headers.append(("X-GitHub-Media-Type", reply.media_type))
        if reply.link:
            headers.append(("Link", reply.link))
        headers.append(("x-github-api-version-selected", API_VERSION))
        if sb.prefix:
            headers.append(("X-GitHub-Enterprise-Version", GHES_VERSION))
        headers.extend(reply.headers)
        headers.extend([("X-RateLimit-Limit", str(bucket.limit)),
                        ("X-RateLimit-Remaining", str(bucket.remaining)),
                        ("X-RateLimit-Reset", str(bucket.reset)),
                        ("X-RateLimit-Used", str(bucket.used)),
                        ("X-RateLimit-Resource", bucket.resource)])
        headers.extend(SECURITY_HEADERS)
        headers.append(("Server", "github.com"))
        headers.append(("X-GitHub-Request-Id", rid))
        return headers

    def _write(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Status line, headers and body in a single send."""
        reason = self.responses.get(status, ("",))[0]
        head = [f"{self.protocol_version} {status} {reason}"]
        head.extend(f"{name}: {value}" for name, value in headers)
        if not any(name == "Content-Length" for name, _ in headers) and status != 304:
            head.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        self.wfile.write(data)
        self.log_request(status, len(body))
