"""How a request proves who it is, as an `httpx.Auth`: the transport never sets credentials itself.

`TokenAuth` attaches a personal access token (or any bearer token) to requests for the API's
own origin only: a listing's `Link` URL or a redirect that points elsewhere gets no token.
"""

from __future__ import annotations

from collections.abc import Generator

import httpx

from .. import logs


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port: what must match for a request to carry the token."""
    return url.scheme, url.host.lower(), url.port


class TokenAuth(httpx.Auth):
    """A bearer token for one API origin; registered with the log redaction when made."""

    def __init__(self, token: str, api_url: str) -> None:
        self._token = token
        self._origin = origin(httpx.URL(api_url))
        logs.register_secret(token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) == self._origin:
            request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self) -> str:
        return "TokenAuth(token=set)"
