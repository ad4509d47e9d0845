"""Notebook-level helpers: one call per runbook step, each opening its own connection or client.

The library functions take a connection so that callers control transactions; a notebook cell
wants the opposite, a single call that does one step of a runbook and says what it did. These
helpers are that layer, used by the notebooks in `notebooks/` and by anyone's own notebook.
Nothing here prints a GitHub token: only the name of the variable that holds it is handled.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from .. import config, embeddings, logs, tenants
from .. import settings as settings_mod
from ..github import GitHubClient, GitHubError
from ..pipeline.sync import SyncResult, sync
from ..progress import StageBars
from ..queue import broker as broker_mod
from ..sandbox import Sandbox
from ..steps import repositories as repositories_step
from ..store import db, migrate
from . import frames

log = logging.getLogger(__name__)

SANDBOX_TOKEN_ENV = "GHETL_TOKEN_SANDBOX"
SANDBOX_ORGS = {"acme": 200}
PREVIEW_COLUMNS = ["id", "full_name", "language", "visibility", "fork", "archived", "stargazers_count", "pushed_at"]


class SyncFailed(RuntimeError):
    """A sync that ended FAILED; raised so that a papermill run exits non-zero and shows why."""


@dataclass
class Session:
    """Where this notebook's ghetl reads and writes, and the sandbox it started, if any."""

    database_url: str
    broker_url: str
    api_url: str
    token_env: str
    sandbox: Sandbox | None = None
    _workdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def engine(self) -> sa.Engine:
        return db.engine(self.database_url)

    @property
    def throwaway(self) -> bool:
        """Whether the database goes away with the session: the demo mode, where a missing tenant may be made up."""
        return self._workdir is not None

    def describe(self) -> str:
        """One line per setting, with passwords hidden and a throwaway database named as such."""
        database = "a throwaway SQLite file" if self.throwaway else logs.safe_url(self.database_url)
        if self.sandbox:
            github = f"the bundled sandbox ({self.sandbox.describe()}), token from ${self.token_env}"
        elif self.api_url:
            github = f"{self.api_url} for a tenant created here, token from ${self.token_env}"
        else:
            github = "the API URL and token variable stored with the tenant's integration"
        return "\n".join([
            f"database: {database}",
            f"broker:   {logs.safe_url(self.broker_url)}",
            f"GitHub:   {github}",
        ])

    def __repr__(self) -> str:
        return self.describe()

    def key_file(self, tenant: str) -> Path:
        """Where the onboarding notebook keeps a tenant's status-stream key unless told otherwise:
        beside a throwaway database (gone with it), else under ~/.config/ghetl/stream-keys."""
        base = Path(self._workdir.name) if self._workdir is not None else Path.home() / ".config" / "ghetl"
        return base / "stream-keys" / f"{tenant}.key"

    def close(self) -> None:
        """Stop the sandbox and remove the throwaway database, if this session made them."""
        if self.sandbox is not None:
            self.sandbox.stop()
        if self._workdir is not None:
            self.engine.dispose()
            self._workdir.cleanup()


def open_session(
    database_url: str = "",
    broker_url: str = "",
    api_url: str = "",
    *,
    token_env: str = config.DEFAULT_TOKEN_ENV,
    sandbox_orgs: dict[str, int] | None = None,
    seed: int = 7,
) -> Session:
    """Point ghetl at the given database, broker and GitHub, filling each blank with the zero-set-up choice.

    A blank `database_url` means $GHETL_DATABASE_URL or, without it, a throwaway SQLite file: the
    demo mode. Only in the demo mode does a blank `api_url` start the bundled GitHub sandbox in
    this process (with its own token variable, so a real token is never sent to it): a tenant
    stored in a lasting database must not point at a sandbox that dies with the kernel. With a
    lasting database a blank `api_url` stays blank, and each tenant syncs from its own
    integration. A blank `broker_url` means $GHETL_BROKER_URL or the in-process broker. The
    choices are exported as GHETL_* variables, so every ghetl call in the notebook follows them.
    Nothing is written to the database.
    """
    workdir = None
    if not database_url:
        database_url = os.environ.get("GHETL_DATABASE_URL", "")
    if not database_url:
        workdir = tempfile.TemporaryDirectory(prefix="ghetl-notebook-")
        database_url = f"sqlite:///{workdir.name}/ghetl.db"
    sandbox = None
    if not api_url and workdir is not None:
        sandbox = Sandbox(orgs=sandbox_orgs or SANDBOX_ORGS, seed=seed).start()
        api_url, token_env = sandbox.url, SANDBOX_TOKEN_ENV
        os.environ[SANDBOX_TOKEN_ENV] = "sandbox-accepts-any-token"
    broker_url = broker_url or config.broker_url()
    os.environ["GHETL_DATABASE_URL"] = database_url
    os.environ["GHETL_BROKER_URL"] = broker_url
    logs.configure()
    return Session(database_url, broker_url, api_url.rstrip("/"), token_env, sandbox, workdir)


@dataclass(frozen=True)
class TenantSetup:
    """A tenant and the integration it syncs; `stream_key` only when it was just created."""

    name: str
    tenant_id: int
    integration_id: int
    owner: str
    api_url: str
    created: bool
    stream_key: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        verb = "created" if self.created else "found"
        return (f"tenant '{self.name}' (id {self.tenant_id}) {verb}: integration {self.integration_id} "
                f"syncs {self.owner} at {self.api_url}")


def setup_tenant(
    name: str,
    owner: str,
    *,
    api_url: str,
    token_env: str = config.DEFAULT_TOKEN_ENV,
    settings: str | dict[str, Any] | None = None,
    engine: sa.Engine | None = None,
) -> TenantSetup:
    """Create the schema if needed, then the tenant, its integration and its job in one transaction.

    Either all of it exists afterwards or none of it does, so a runbook that stops half-way can
    simply be run again.
    """
    engine = engine or db.engine()
    migrate.init(engine)
    with engine.begin() as conn:
        tenant_id, key = tenants.add_tenant(conn, name)
        integration_id = tenants.add_integration(conn, tenant_id, owner, api_url=api_url, token_env=token_env,
                                                 settings=settings)
    return TenantSetup(name, tenant_id, integration_id, owner, api_url, True, key)


def save_stream_key(setup: TenantSetup, path: str | Path) -> Path:
    """Write a new tenant's status-stream key to `path`, readable by its owner only (0600), and
    return where it is: a notebook prints the path, never the key, since every output of a
    papermill run is kept and shared like any file.
    """
    if setup.stream_key is None:
        raise ValueError(f"tenant '{setup.name}' already existed, so its key was not shown again; issue a new one "
                         f"with: ghetl tenant key {setup.name}")
    target = Path(path).expanduser()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file that was there before keeps its mode through os.open
        os.write(fd, (setup.stream_key + "\n").encode())
    finally:
        os.close(fd)
    return target.absolute()


def ensure_tenant(
    name: str,
    owner: str,
    *,
    api_url: str,
    token_env: str = config.DEFAULT_TOKEN_ENV,
    engine: sa.Engine | None = None,
    create: bool = True,
    settings: str | dict[str, Any] | None = None,
) -> TenantSetup:
    """The tenant as it is configured, or a new one with one integration for `owner` at `api_url`.

    A tenant is created only when `create` is set and `api_url` names its GitHub: a scheduled
    sync passes `create=False`, so a mistyped name fails instead of becoming a new tenant.
    `settings` are those of a tenant created here; an existing tenant keeps its own.
    """
    engine = engine or db.engine()
    migrate.init(engine)
    with engine.connect() as conn:
        try:
            tenant = tenants.get_tenant(conn, name)
        except tenants.NotFound:
            tenant = None
        if tenant is not None:
            integration = tenants.get_integration(conn, tenant["id"], include_disabled=True)  # sync refuses it
            return TenantSetup(tenant["name"], tenant["id"], integration["id"], integration["owner"],
                               integration["api_url"], False)
    where = engine.url.render_as_string(hide_password=True)
    if not create:
        raise tenants.NotFound(f"tenant '{name}' does not exist in {where}; check the name (ghetl tenant list), "
                               "or onboard the tenant first (onboard_tenant.ipynb)")
    if not api_url:
        raise tenants.NotFound(f"tenant '{name}' does not exist in {where}, and no api_url was given to create it "
                               "with; check the name (ghetl tenant list), or pass -p api_url https://api.github.com")
    return setup_tenant(name, owner, api_url=api_url, token_env=token_env, settings=settings, engine=engine)


@dataclass
class TokenCheck:
    """What GitHub says about a token: its rate-limit budget, its scopes and when it expires."""

    api_url: str
    token_env: str
    rate: pd.DataFrame
    scopes: list[str] | None
    expires: str | None

    def remaining(self, resource: str = "core") -> int:
        return int(self.rate.loc[resource, "remaining"])

    def describe(self) -> str:
        scopes = (", ".join(self.scopes) if self.scopes
                  else "none reported (a fine-grained or app token: check its repository access on GitHub)")
        return "\n".join([
            f"token from ${self.token_env} accepted by {self.api_url}",
            f"scopes:  {scopes}",
            f"expires: {self.expires or 'not reported'}",
            f"core budget: {self.remaining('core')} of {int(self.rate.loc['core', 'limit'])} requests left",
        ])


def check_token(api_url: str, token_env: str = config.DEFAULT_TOKEN_ENV) -> TokenCheck:
    """Ask GitHub's /rate_limit (which costs nothing) with the token; raise if it is missing or refused."""
    token = config.github_token(token_env)
    if not token:
        raise ValueError(f"${token_env} is empty: export the tenant's GitHub token in it, then run this step again")
    with GitHubClient(api_url, token) as client:
        response, body = client.get("/rate_limit")
    if response.status_code != 200 or not isinstance(body, dict) or "resources" not in body:
        raise GitHubError(f"GitHub answered {response.status_code} to /rate_limit at {api_url}; is the API URL right?")
    rate = pd.DataFrame.from_dict(body["resources"], orient="index")
    rate["reset"] = pd.to_datetime(rate["reset"], unit="s", utc=True)
    scopes = response.headers.get("x-oauth-scopes")
    return TokenCheck(
        api_url=api_url,
        token_env=token_env,
        rate=rate.rename_axis("resource"),
        scopes=[s.strip() for s in scopes.split(",") if s.strip()] if scopes is not None else None,
        expires=response.headers.get("github-authentication-token-expiration"),
    )


def preview_repositories(
    owner: str,
    *,
    api_url: str,
    token_env: str = config.DEFAULT_TOKEN_ENV,
    settings: str | dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Every repository of `owner`, with `selected` saying whether these settings would sync it.

    Asks GitHub what the sync will ask (the owner's listing; the search when a
    `repository_filter` is set) and applies the same filters, without touching the database.
    """
    parsed = settings_mod.parse(settings)
    with GitHubClient(api_url, config.github_token(token_env)) as client:
        owner_type = client.owner_type(owner)
        viewer = _viewer(client) if owner_type == "User" and client.authenticated else None
        found = {repo["id"]: repo for page in client.paginate(client.listing_url(owner, owner_type, viewer))
                 for repo in page.items}
        matched = None
        if parsed["repository_filter"]:
            hits = [repo for page in client.search_repositories(f"user:{owner} {parsed['repository_filter']}")
                    for repo in page.items]
            found.update({repo["id"]: repo for repo in hits if repo["id"] not in found})
            matched = {repo["id"] for repo in hits}
    frame = pd.DataFrame(list(found.values()), columns=PREVIEW_COLUMNS)
    frame["pushed_at"] = pd.to_datetime(frame["pushed_at"], utc=True, format="ISO8601")
    frame["selected"] = [
        (matched is None or repo["id"] in matched) and repositories_step.wanted(repo, parsed) for repo in found.values()
    ]
    return frame.sort_values("full_name", ignore_index=True)


def _viewer(client: GitHubClient) -> str | None:
    """The login the token belongs to: a user's own token lists that user's private repositories too."""
    response, body = client.get("/user")
    return body["login"] if response.status_code == 200 else None


def run_sync(
    tenant: str,
    *,
    full: bool = False,
    run_workers: bool | None = None,
    timeout: float | None = None,
    status_key: str | None = None,
) -> SyncResult:
    """Run the tenant's sync with live status; raise SyncFailed when it does not finish.

    With the tenant's status-stream key (`status_key`, else $GHETL_STATUS_KEY) the status board
    shows the run's circles, fed by the stream at $GHETL_STATUS_URL or, without one, by a status
    server started in this process for the run; without a key, progress bars show each stage.
    """
    broker = broker_mod.connect()
    board = _LiveBoard.open(tenant, status_key or os.environ.get("GHETL_STATUS_KEY"), broker)
    bars = StageBars(enabled=board is None)
    try:
        result = sync(tenant, full=full, run_workers=run_workers, timeout=timeout, broker=broker,
                      progress=bars if bars.drawn else None)
        if board is not None:
            board.settle(result.run_id)
    finally:
        bars.close()
        if board is not None:
            board.close()
        if not isinstance(broker, broker_mod.MemoryBroker):
            broker.close()
    if result.overall != "FINISHED":
        raise SyncFailed(f"sync of tenant '{result.tenant}' ended {result.overall}: {result.error}")
    return result


class _LiveBoard:
    """A displayed StatusBoard and, when no stream runs elsewhere, the status server feeding it."""

    SETTLE_SECONDS = 10.0

    def __init__(self, board: Any, server: Any) -> None:
        self.board = board
        self.server = server

    @classmethod
    def open(cls, tenant: str, key: str | None, broker: broker_mod.Broker) -> _LiveBoard | None:
        if not key:
            return None
        try:
            from .widgets import StatusBoard
        except ImportError:
            return None
        from IPython.display import display

        from ..status.server import StatusServer

        url = os.environ.get("GHETL_STATUS_URL")
        server = None if url else StatusServer(db.engine(), broker, port=0).start()
        board = StatusBoard(tenant, url=url if server is None else server.url, key=key)
        display(board)
        return cls(board, server)

    def settle(self, run_id: str) -> None:
        """Let the board draw the run's last circles before it stops following the stream."""
        try:
            self.board.wait(run_id, timeout=self.SETTLE_SECONDS)
        except (TimeoutError, ConnectionRefusedError) as exc:
            log.warning("the status board did not see the end of the run: %s", exc)

    def close(self) -> None:
        self.board.close()
        if self.server is not None:
            self.server.stop()


EMBEDDER_OF_MODEL = {embeddings.HashingEmbedder().model: "hash", embeddings.MINILM: "minilm"}


def use_embedder(name: str = "", *, tenant: str | None = None, engine: sa.Engine | None = None) -> str:
    """Choose the embedder for this notebook's syncs and searches, and export it as GHETL_EMBEDDER.

    A blank name means: the model the tenant's vectors were made with (a search must use the
    same one), else the sentence model when it is installed, else feature hashing.
    """
    if not name and tenant is not None:
        models = frames.embedding_models(tenant, engine=engine)
        known = models[models["model"].isin(EMBEDDER_OF_MODEL)]
        if not known.empty:
            name = EMBEDDER_OF_MODEL[known.iloc[0]["model"]]
    if not name:
        try:
            embeddings.get_embedder("minilm")
            name = "minilm"
        except embeddings.EmbedderUnavailable:
            name = "hash"
    embeddings.get_embedder(name)
    os.environ["GHETL_EMBEDDER"] = name
    return name
