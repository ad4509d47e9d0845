"""Tenants and their GitHub integrations: creation, lookup, and the status-stream credential.

Adding an integration also creates its GitHub job, so a tenant is ready to sync the moment the
command returns. Tokens are never stored: an integration names the environment variable that
holds its token, and the status-stream key is kept only as a hash.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import config, steps
from . import settings as settings_mod
from .github import credentials
from .pipeline import jobs
from .store.db import etl_jobs, integrations, tenants

log = logging.getLogger(__name__)

_NAME_TYPE = tenants.c.name.type
assert isinstance(_NAME_TYPE, sa.String) and _NAME_TYPE.length is not None  # the schema's VARCHAR(n)
_NAME_LENGTH: int = _NAME_TYPE.length
_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")


class NotFound(LookupError):
    """A tenant or integration that does not exist; the message says which."""


class Disabled(ValueError):
    """A tenant or integration an operator disabled; the message says how to enable it."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add_tenant(conn: Connection, name: str) -> tuple[int, str]:
    """Create a tenant; return its id and its status-stream key (shown once, stored hashed)."""
    name = _checked_name(name)
    if conn.execute(sa.select(tenants.c.id).where(tenants.c.name == name)).first():
        raise ValueError(f"tenant '{name}' already exists")
    key = secrets.token_urlsafe(24)
    tenant_id = conn.execute(
        tenants.insert().values(name=name, stream_key_hash=hash_key(key)).returning(tenants.c.id)
    ).scalar_one()
    return tenant_id, key


def is_id(text: str) -> bool:
    """Whether a command-line or URL value is an id: ASCII digits only ("²" is a digit to
    `str.isdigit` and no number to `int`)."""
    return text.isascii() and text.isdigit()


def _checked_name(name: str) -> str:
    """The name stripped, or a ValueError saying what to change.

    All digits are refused because every command reads `--tenant 42` as the tenant with id 42;
    control characters because names are printed one per line.
    """
    name = name.strip()
    if not name:
        raise ValueError("tenant name must not be empty")
    if is_id(name):
        raise ValueError(f"tenant name '{name}' is all digits, which --tenant reads as a tenant id; add a letter")
    if not name.isprintable():
        raise ValueError(f"tenant name {name!r} holds a control character (newline, tab, ...); remove it")
    if len(name) > _NAME_LENGTH:
        raise ValueError(f"tenant name is {len(name)} characters long; shorten it to {_NAME_LENGTH} at most")
    return name


def rotate_key(conn: Connection, name: str) -> str:
    """Replace a tenant's status-stream key, e.g. after it leaked; the old key stops working."""
    tenant = get_tenant(conn, name)
    key = secrets.token_urlsafe(24)
    conn.execute(tenants.update().where(tenants.c.id == tenant["id"]).values(stream_key_hash=hash_key(key)))
    return key


def check_key(conn: Connection, tenant_id: int, key: str) -> bool:
    stored: str | None = conn.execute(sa.select(tenants.c.stream_key_hash).where(tenants.c.id == tenant_id)).scalar()
    if not stored:
        return False
    return hmac.compare_digest(stored, hash_key(key))


def get_tenant(conn: Connection, name_or_id: str | int, *, active: bool = False) -> dict[str, Any]:
    """A tenant by id (an int, or a string of digits) or by name; with `active`, only an enabled one.

    Digits that are no tenant's id are tried as a name too: an earlier ghetl accepted all-digit
    names, and such a tenant must stay reachable. Only what starts work (a sync) asks for
    `active`: a disabled tenant must stay visible to `jobs`, `search` and `tenant enable`.
    """
    row = None
    if isinstance(name_or_id, int) or is_id(name_or_id):
        row = conn.execute(sa.select(tenants).where(tenants.c.id == int(name_or_id))).mappings().first()
    if row is None and isinstance(name_or_id, str):
        row = conn.execute(sa.select(tenants).where(tenants.c.name == name_or_id)).mappings().first()
    if row is None:
        raise NotFound(f"unknown tenant '{name_or_id}'; create it with: ghetl tenant add {name_or_id}")
    if active and not row["active"]:
        raise Disabled(f"tenant {row['name']} is disabled; enable it with: ghetl tenant enable {row['name']}")
    return dict(row)


def list_tenants(conn: Connection) -> list[dict[str, Any]]:
    query = sa.select(tenants.c.id, tenants.c.name, tenants.c.active).order_by(tenants.c.id)
    return [dict(r) for r in conn.execute(query).mappings()]


def set_tenant_active(conn: Connection, name: str | int, active: bool) -> dict[str, Any]:
    """Enable or disable a tenant; return it as it was before, so the caller can say what changed."""
    tenant = get_tenant(conn, name)
    conn.execute(tenants.update().where(tenants.c.id == tenant["id"]).values(active=active))
    return tenant


def set_integration_active(
    conn: Connection, tenant: str | int, integration_id: int | None, active: bool
) -> dict[str, Any]:
    """Enable or disable one integration of a tenant; return it as it was before."""
    integration = get_integration(conn, get_tenant(conn, tenant)["id"], integration_id, include_disabled=True)
    conn.execute(integrations.update().where(integrations.c.id == integration["id"]).values(active=active))
    return integration


def list_integrations(conn: Connection, tenant: str | int | None = None) -> list[dict[str, Any]]:
    """Every integration (or one tenant's) with its tenant's name and its job's last sync.

    `token_env` is the variable's name; the token itself is never stored, so never listed.
    """
    query = (
        sa.select(integrations.c.id, tenants.c.name.label("tenant"), integrations.c.owner, integrations.c.api_url,
                  integrations.c.token_env, integrations.c.settings, integrations.c.active,
                  etl_jobs.c.last_sync_date)
        .join(tenants, tenants.c.id == integrations.c.tenant_id)
        .outerjoin(etl_jobs, sa.and_(etl_jobs.c.integration_id == integrations.c.id,
                                     etl_jobs.c.job_name == steps.JOB_NAME))
        .order_by(integrations.c.id)
    )
    if tenant is not None:
        query = query.where(integrations.c.tenant_id == get_tenant(conn, tenant)["id"])
    return [dict(r) for r in conn.execute(query).mappings()]


def add_integration(
    conn: Connection,
    tenant: str | int,
    owner: str,
    *,
    api_url: str | None = None,
    token_env: str = config.DEFAULT_TOKEN_ENV,
    settings: str | dict[str, Any] | None = None,
    allow_insecure_http: bool = False,
    app_id: str | None = None,
    installation_id: str | None = None,
    app_key_env: str | None = None,
    app_key_file: str | None = None,
) -> int:
    """Create a GitHub integration and its job; refuse bad settings before anything is written.

    A token variable that is unset here is only warned about: the syncs may run on another host.
    The credentials' rules (names meant for tokens, https) are `credentials.check`'s; what it
    returns is stored with the settings, under `auth`.
    """
    tenant_row = get_tenant(conn, tenant)
    if not _OWNER.match(owner or ""):
        raise ValueError(f"owner '{owner}' is not a GitHub user or organisation name")
    token_env = ",".join(credentials.token_env_names(token_env))
    api_url = config.check_api_url(api_url, "--api-url") if api_url else config.api_url()
    auth = credentials.check(api_url, token_env, allow_insecure_http=allow_insecure_http, app_id=app_id,
                             installation_id=installation_id, app_key_env=app_key_env, app_key_file=app_key_file)
    stored = _stored(settings_mod.parse(settings))
    if auth.stored():
        stored[settings_mod.AUTH_KEY] = auth.stored()
    if auth.allow_insecure_http:
        log.warning("integration allowed to send GitHub credentials over plain http to %s; every sync will "
                    "say so", api_url)
    for name in [] if auth.app else token_env.split(","):
        if not os.environ.get(name):
            log.warning("$%s is not set here; set it to the token wherever ghetl sync runs for this integration",
                        name)
    integration_id = conn.execute(
        integrations.insert()
        .values(tenant_id=tenant_row["id"], owner=owner, api_url=api_url, token_env=token_env, settings=stored)
        .returning(integrations.c.id)
    ).scalar_one()
    jobs.create_github_job(conn, tenant_row["id"], integration_id)
    return integration_id


def _stored(parsed: dict[str, Any]) -> dict[str, Any]:
    """Settings as stored: only what differs from the defaults, so a later default applies to them."""
    return {k: v for k, v in parsed.items() if v != settings_mod.DEFAULTS[k]}


def update_settings(
    conn: Connection, integration_id: int, settings: str | dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Replace an integration's settings, validated as `add_integration` validates them; return
    what changed, {key: (old, new)}.

    A change resets the job's `last_sync_date` in the same transaction: an incremental run keeps
    only what changed since then, so repositories the new settings select but that did not
    change (forks now included, say) would never arrive; the next run is a full one instead.
    Refused while the job runs: that run's end would set `last_sync_date` again, for the old settings.
    """
    parsed = settings_mod.parse(settings)
    row = conn.execute(sa.select(integrations).where(integrations.c.id == integration_id)).mappings().one()
    old = settings_mod.parse(row["settings"], stored=True)
    changes = {k: (old[k], parsed[k]) for k in settings_mod.DEFAULTS if old[k] != parsed[k]}
    if not changes:
        return {}
    job = jobs.get_job(conn, row["tenant_id"], integration_id)
    if job["status"]["overall"] == "RUNNING":
        raise jobs.AlreadyRunning(f"integration {integration_id}'s job is running; wait for it to end "
                                  "(see: ghetl jobs), then change the settings")
    auth = {k: v for k, v in row["settings"].items() if k == settings_mod.AUTH_KEY}
    conn.execute(integrations.update().where(integrations.c.id == integration_id)
                 .values(settings={**_stored(parsed), **auth}))
    conn.execute(etl_jobs.update().where(etl_jobs.c.id == job["id"]).values(last_sync_date=None))
    return changes


def get_integration(
    conn: Connection, tenant_id: int, integration_id: int | None = None, *, include_disabled: bool = False
) -> dict[str, Any]:
    """The tenant's integration with that id, or its only one when no id is given.

    Disabled integrations count only with `include_disabled` (to enable, change or list them);
    otherwise one that was asked for, or that is the tenant's only one, is refused with the
    command that enables it.
    """
    query = sa.select(integrations).where(integrations.c.tenant_id == tenant_id)
    if integration_id is not None:
        query = query.where(integrations.c.id == integration_id)
    found = [dict(r) for r in conn.execute(query.order_by(integrations.c.id)).mappings()]
    rows = found if include_disabled else [r for r in found if r["active"]]
    if len(rows) == 1:
        return rows[0]
    name = conn.execute(sa.select(tenants.c.name).where(tenants.c.id == tenant_id)).scalar() or tenant_id
    if not rows and len(found) == 1:
        disabled = found[0]["id"]
        raise Disabled(f"integration {disabled} of tenant {name} is disabled; enable it with: "
                       f"ghetl integration enable --tenant {name} --integration {disabled}")
    if not rows and found:
        ids = ", ".join(str(r["id"]) for r in found)
        raise Disabled(f"tenant {name}'s integrations ({ids}) are all disabled; enable one with: "
                       f"ghetl integration enable --tenant {name} --integration ID")
    if not rows:
        which = f"integration {integration_id}" if integration_id is not None else "active integration"
        raise NotFound(f"tenant '{name}' has no {which}; add one with: ghetl integration add --tenant {name} "
                       "--owner OWNER")
    ids = ", ".join(str(r["id"]) for r in rows)
    raise ValueError(f"tenant '{name}' has several integrations ({ids}); choose one with --integration ID")


def set_owner_type(conn: Connection, integration_id: int, owner_type: str) -> None:
    conn.execute(integrations.update().where(integrations.c.id == integration_id).values(owner_type=owner_type))
