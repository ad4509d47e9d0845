"""Error bodies exactly as GitHub words them.

Sources: 301 from octokit-fixtures/rename-repository.raw-fixture.json; 422 from
errors.raw-fixture.json; 401/403/404 in their current form (with the ``status`` string GitHub
added to REST error bodies in 2024) from the brief and the issue threads quoted in
extracted/secondary-rate-limit-observed.md; 503 HTML from Exceptions.testNonJsonDataReturnedByGithub.
"""

from __future__ import annotations

from typing import Any

REST_DOCS = "https://docs.github.com/rest"
REDIRECT_DOCS = "https://docs.github.com/v3/#http-redirects"
RATE_LIMIT_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
SECONDARY_DOCS = ("https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api"
                  "#about-secondary-rate-limits")
SEARCH_DOCS = "https://docs.github.com/v3/search/"
SERVER_ERROR_MESSAGES = {500: "Server Error", 502: "Server Error", 503: "Service Unavailable",
                         504: "We couldn't respond to your request in time. Sorry about that. "
                              "Please try resubmitting your request and contact us if the problem persists."}
HTML_PAGES = {
    200: "<html><body><h1>Unicorn!</h1>This page is taking too long to load.</body></html>",
    502: "<html><body><h1>502 Bad Gateway</h1>The server returned an invalid or incomplete response.</body></html>",
    503: "<html><body><h1>503 Service Unavailable</h1>No server is available to handle this request.</body></html>",
    504: "<html><body><h1>504 Gateway Time-out</h1>The server didn't respond in time.</body></html>",
}


def not_found(docs: str = REST_DOCS) -> dict[str, Any]:
    return {"message": "Not Found", "documentation_url": docs, "status": "404"}


def bad_credentials() -> dict[str, Any]:
    return {"message": "Bad credentials", "documentation_url": REST_DOCS, "status": "401"}


def requires_authentication(docs: str) -> dict[str, Any]:
    return {"message": "Requires authentication", "documentation_url": docs, "status": "401"}


def moved(url: str) -> dict[str, Any]:
    return {"message": "Moved Permanently", "url": url, "documentation_url": REDIRECT_DOCS}


def primary_rate_limit(who: str, request_id: str, moment: str, authenticated: bool, status: int) -> dict[str, Any]:
    """Authenticated and unauthenticated wordings as quoted in secondary-rate-limit-observed.md (3.)."""
    if authenticated:
        message = (f"API rate limit exceeded for user ID {who}. If you reach out to GitHub Support for help, "
                   f"please include the request ID {request_id} and timestamp {moment} UTC.")
    else:
        message = (f"API rate limit exceeded for {who}. (But here's the good news: Authenticated requests get "
                   "a higher rate limit. Check out the documentation for more details.) If you reach out to "
                   f"GitHub Support for help, please include the request ID {request_id} and timestamp "
                   f"{moment} UTC.")
    return {"message": message, "documentation_url": RATE_LIMIT_DOCS, "status": str(status)}


def secondary_rate_limit(request_id: str) -> dict[str, Any]:
    """The 2023 wording with the request id; no ``status`` key in any quoted secondary-limit body."""
    return {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
                       f"again. If you reach out to GitHub Support for help, please include the request ID "
                       f"{request_id}.",
            "documentation_url": SECONDARY_DOCS}


def validation_failed(errors: list[dict[str, Any]], docs: str) -> dict[str, Any]:
    return {"message": "Validation Failed", "errors": errors, "documentation_url": docs, "status": "422"}


def search_cap() -> dict[str, Any]:
    return {"message": "Only the first 1000 search results are available", "documentation_url": SEARCH_DOCS,
            "status": "422"}


def server_error(status: int) -> dict[str, Any]:
    """``{"message": "Server Error"}`` for 502 (see the caution about Retry.testReturnsRepoAfter3Retries)."""
    return {"message": SERVER_ERROR_MESSAGES.get(status, "Server Error")}


def html_page(status: int) -> str:
    return HTML_PAGES.get(status, HTML_PAGES[503])
