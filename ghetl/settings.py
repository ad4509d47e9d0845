"""Validation of `integration.settings`, the JSON that says which repositories a tenant wants.

Settings are checked when an integration is added or changed, never first at sync time: a typo
found at three in the morning by a scheduled run is a typo found too late. Each error names
the key and says what would be accepted.
"""

from __future__ import annotations

import json
import re
from typing import Any

VISIBILITIES = ("all", "public", "private", "internal")
SEARCH_QUERY_MAX = 256
_OWNER_QUALIFIER = re.compile(r"(^|\s)-?(user|org|repo):", re.IGNORECASE)

DEFAULTS: dict[str, Any] = {
    "repository_filter": None,
    "name_patterns": [],
    "include_forks": True,
    "include_archived": True,
    "visibility": "all",
    "pull_requests": True,
}

AUTH_KEY = "auth"
"""Where an integration's stored settings keep how it authenticates (`credentials.AuthConfig`):
set by `integration add` from its flags, never from `--settings`, and left out of what `parse`
returns, so that the repository selection and its cache fingerprint do not depend on it."""

DESCRIPTIONS = {
    "repository_filter": "GitHub search terms that select repositories (the search API is used), "
                         "e.g. \"payments in:name\"",
    "name_patterns": "list of shell-style patterns; only repositories whose name matches one are kept, "
                     "e.g. [\"api-*\"]",
    "include_forks": "true or false: keep forked repositories",
    "include_archived": "true or false: keep archived repositories",
    "visibility": "one of " + ", ".join(VISIBILITIES),
    "pull_requests": "true or false: also sync the repositories' pull requests with their commits, reviews and "
                     "comments (the GraphQL API)",
}


class SettingsError(ValueError):
    """Raised with a message that names the offending key."""


def parse(raw: str | dict[str, Any] | None, *, stored: bool = False) -> dict[str, Any]:
    """Validate settings given as a JSON text or a dict; return them with defaults filled in.

    `stored`: the settings as an integration row holds them, whose `auth` entry is not a
    setting and is dropped; from a user (`--settings`) that key is refused as any unknown one.
    """
    if raw is None or raw == "":
        data: Any = {}
    elif isinstance(raw, str):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"settings are not valid JSON ({exc.msg} at position {exc.pos})") from None
    else:
        data = raw
    if not isinstance(data, dict):
        raise SettingsError("settings must be a JSON object, e.g. {\"repository_filter\": \"api in:name\"}")
    if stored:
        data = {k: v for k, v in data.items() if k != AUTH_KEY}
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise SettingsError(f"unknown settings key '{unknown[0]}'; known keys: {', '.join(DEFAULTS)}")
    merged = {**DEFAULTS, **data}
    _check_filter(merged["repository_filter"])
    _check_patterns(merged["name_patterns"])
    for key in ("include_forks", "include_archived", "pull_requests"):
        if not isinstance(merged[key], bool):
            raise SettingsError(f"settings key '{key}' must be {DESCRIPTIONS[key]}, got {merged[key]!r}")
    if merged["visibility"] not in VISIBILITIES:
        raise SettingsError(
            f"settings key 'visibility' must be {DESCRIPTIONS['visibility']}, got {merged['visibility']!r}"
        )
    return merged


def _check_filter(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(
            f"settings key 'repository_filter' must be {DESCRIPTIONS['repository_filter']}, got {value!r}"
        )
    if not value.isprintable():
        raise SettingsError("settings key 'repository_filter' holds a control character (a NUL, newline, tab...); "
                            "remove it")
    if _OWNER_QUALIFIER.search(value):
        raise SettingsError(
            "settings key 'repository_filter' must not contain user:, org: or repo: qualifiers; "
            "ghetl adds the integration's owner itself"
        )
    if len(value) > SEARCH_QUERY_MAX - 60:
        raise SettingsError(
            f"settings key 'repository_filter' is {len(value)} characters; GitHub search queries are limited "
            f"to {SEARCH_QUERY_MAX}, so keep it under {SEARCH_QUERY_MAX - 60}"
        )


def _check_patterns(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise SettingsError(f"settings key 'name_patterns' must be a {DESCRIPTIONS['name_patterns']}, got {value!r}")
    if not all(p.isprintable() for p in value):
        raise SettingsError(
            "settings key 'name_patterns' holds a control character (a NUL, newline, tab...); remove it"
        )
