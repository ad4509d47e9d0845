"""The `ghetl` command as a user runs it: separate processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import TOKEN, one_line_error

COMMANDS = [[], ["init"], ["tenant", "add"], ["tenant", "list"], ["tenant", "key"], ["tenant", "disable"],
            ["tenant", "enable"], ["integration", "add"], ["integration", "list"], ["integration", "disable"],
            ["integration", "enable"], ["integration", "set"], ["sync"], ["jobs"], ["prune"], ["dead-letters"],
            ["dead-letters", "list"], ["dead-letters", "replay"], ["dead-letters", "drop"], ["search"], ["worker"],
            ["sandbox"], ["status-server"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ghetl")
def test_every_command_has_help(cli, command):
    result = cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: ghetl" in result.stdout


def test_setup_sync_and_summary(cli, make_sandbox):
    # 150 repositories: two listing pages, and pull requests for each (the default steps), kept small for speed
    sandbox = make_sandbox(orgs={"acme": 150}, users={"octocat": 12}, seed=11)
    assert cli("init").returncode == 0
    again = cli("init")
    assert again.returncode == 0 and "schema ready" in again.stdout
    added = cli("tenant", "add", "acme-corp")
    assert added.returncode == 0 and added.stdout.strip().isdigit()
    assert "status-stream key" in added.stderr
    integration = cli("integration", "add", "--tenant", "acme-corp", "--owner", "acme", "--api-url", sandbox.url,
                      pull_requests=True)  # the defaults: repositories and their pull requests
    assert integration.returncode == 0 and integration.stdout.strip().isdigit()

    result = cli("sync", "--tenant", "acme-corp", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["overall"] == "FINISHED"
    assert summary["counts"]["github_repositories"]["embedded"] == 150
    pulls = sum(len(sandbox.pull_requests(r["id"])) for r in sandbox.repos("acme"))
    assert summary["counts"]["github_pull_requests"] == {"extracted": pulls, "transformed": pulls, "embedded": pulls,
                                                          "failed": 0}
    stats = summary["stats"]
    assert summary["requests"] == 3 + stats["graphql_requests"] and summary["rate_limit_points"] == 3
    assert TOKEN not in result.stdout + result.stderr
    jobs = json.loads(cli("jobs", "--json").stdout)
    assert [j["status"]["overall"] for j in jobs] == ["FINISHED"]
    assert [j["tenant"] for j in jobs] == ["acme-corp"]
    assert "T" in jobs[0]["last_sync_date"] and " " not in jobs[0]["last_sync_date"]
    [line] = cli("jobs").stdout.splitlines()
    assert line.split("\t")[1:4] == ["tenant acme-corp", "GitHub", "FINISHED"]


def test_jobs_ends_a_run_whose_sync_process_died(cli, tmp_path):
    import datetime as dt

    import sqlalchemy as sa

    from ghetl.pipeline import jobs
    from ghetl.store import db

    cli("init")
    cli("tenant", "add", "acme-corp")
    cli("integration", "add", "--tenant", "acme-corp", "--owner", "acme", "--api-url", "http://127.0.0.1:9")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    with engine.begin() as conn:  # what a `ghetl sync` killed with -9 an hour ago leaves behind
        jobs.start(conn, jobs.list_jobs(conn)[0], full=True)
        conn.execute(db.etl_jobs.update().values(heartbeat_at=db.utcnow() - dt.timedelta(hours=1)))
    engine.dispose()

    result = cli("jobs")

    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert "\tFAILED\t" in line and "extraction=failed transform=failed embedding=failed" in line
    assert "error: its sync process stopped responding: no heartbeat for 60 min" in line


def test_an_integration_that_cannot_be_chosen_is_named_with_its_tenant(cli):
    cli("init")
    cli("tenant", "add", "acme-corp")
    line = one_line_error(cli("sync", "--tenant", "acme-corp"))
    assert "tenant 'acme-corp' has no active integration" in line
    assert "ghetl integration add --tenant acme-corp" in line
    for owner in ("acme", "globex"):
        cli("integration", "add", "--tenant", "acme-corp", "--owner", owner, "--api-url", "http://127.0.0.1:9")
    assert "tenant 'acme-corp' has several integrations (1, 2)" in one_line_error(cli("sync", "--tenant", "acme-corp"))


def test_duplicate_tenant_is_one_line(cli):
    cli("init")
    cli("tenant", "add", "t1")
    assert "already exists" in one_line_error(cli("tenant", "add", "t1"))


@pytest.mark.parametrize("name, says", [("42", "all digits"), ("two\nlines", "control character"),
                                        ("x" * 201, "200 at most")])
def test_tenant_names_every_command_can_reach(cli, name, says):
    cli("init")
    assert says in one_line_error(cli("tenant", "add", name))
    assert cli("tenant", "list").stdout == ""


def test_an_all_digit_tenant_name_an_earlier_ghetl_accepted_stays_reachable(cli, tmp_path):
    cli("init")
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        conn.execute("INSERT INTO tenants (id, name, active, created_at, updated_at) "
                     "VALUES (7, '42', 1, '2026-01-01', '2026-01-01')")

    assert cli("tenant", "key", "42").returncode == 0
    assert "unknown tenant '43'" in one_line_error(cli("tenant", "key", "43"))


@pytest.mark.parametrize("url", ["not a url", "foo://bar", "mysql://u@127.0.0.1/x",
                                 "postgresql+psycopg2://u:hunter2pw@127.0.0.1:abc/x"])
def test_an_unusable_database_url_is_one_line(cli, url):
    line = one_line_error(cli("init", GHETL_DATABASE_URL=url))
    assert "set GHETL_DATABASE_URL to" in line
    assert "hunter2pw" not in line


def test_a_file_that_is_not_a_database_is_one_line(cli, tmp_path):
    (tmp_path / "cli.db").write_text("not a database")
    assert "check GHETL_DATABASE_URL" in one_line_error(cli("jobs"))


@pytest.mark.parametrize("command", [["jobs"], ["tenant", "list"], ["sync", "--tenant", "t1"],
                                     ["search", "--tenant", "t1", "x"]], ids=lambda c: c[0])
def test_only_init_creates_the_default_database(tmp_path, command):
    env = {k: v for k, v in os.environ.items() if k != "GHETL_DATABASE_URL"}
    result = subprocess.run([sys.executable, "-m", "ghetl", *command], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert "no database at" in one_line_error(result) and "run: ghetl init" in one_line_error(result)
    assert not (tmp_path / "data" / "ghetl.store.db").exists()


def test_no_room_for_the_default_database_is_one_line(cli, tmp_path):
    (tmp_path / "data").write_text("a file where the default database's folder would go")
    env = {k: v for k, v in os.environ.items() if k != "GHETL_DATABASE_URL"}
    result = subprocess.run([sys.executable, "-m", "ghetl", "init"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert "set GHETL_DATABASE_URL" in one_line_error(result)


def test_sandbox_refuses_what_it_cannot_serve_in_one_line(cli):
    assert "0 or more" in cli("sandbox", "--orgs", "acme:-5").stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(cli("sandbox", "--port", str(port)))


def test_invalid_settings_name_the_key_and_write_nothing(cli):
    cli("init")
    cli("tenant", "add", "t1")
    line = one_line_error(cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", "https://x",
                              "--settings", '{"include_archived": "sometimes"}'))
    assert "include_archived" in line
    line = one_line_error(cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--settings", "{oops"))
    assert "not valid JSON" in line
    assert json.loads(cli("jobs", "--json").stdout) == []


def test_unknown_tenant(cli):
    cli("init")
    assert "unknown tenant 'nobody'" in one_line_error(cli("sync", "--tenant", "nobody"))


def test_missing_schema_says_to_run_init(cli):
    assert "ghetl init" in one_line_error(cli("jobs"))


def test_unreachable_api_fails_the_job_with_one_line(cli):
    cli("init")
    cli("tenant", "add", "t1")
    cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", "http://127.0.0.1:9")
    line = one_line_error(cli("sync", "--tenant", "t1", "--quiet", GHETL_HTTP_RETRIES="2", GHETL_HTTP_BACKOFF="0.05"))
    assert "FAILED" in line and "127.0.0.1:9" in line
    assert json.loads(cli("jobs", "--json").stdout)[0]["status"]["overall"] == "FAILED"


def test_rejected_token_says_so(cli, make_sandbox):
    sb = make_sandbox(orgs={"acme": 20}, tokens={"another-token"})
    cli("init")
    cli("tenant", "add", "t1")
    cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", sb.url)
    line = one_line_error(cli("sync", "--tenant", "t1", "--quiet"))
    assert "token rejected" in line
    assert TOKEN not in line


HEX_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def test_a_token_with_a_trailing_carriage_return_is_stripped(cli, make_sandbox):
    sb = make_sandbox(orgs={"acme": 20}, tokens={HEX_TOKEN})
    cli("init")
    cli("tenant", "add", "t1")
    cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", sb.url,
        "--token-env", "GHETL_TOKEN_GHE")

    result = cli("sync", "--tenant", "t1", "--json", GHETL_TOKEN_GHE=HEX_TOKEN + "\r")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["overall"] == "FINISHED"
    assert sb.requests and all(r.authenticated for r in sb.requests)
    assert HEX_TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize("inside", [" ", "\nX-Injected: 1\n", "\u00e9"], ids=["space", "newline", "non-ascii"])
def test_a_token_with_whitespace_or_non_ascii_inside_is_refused_and_never_shown(cli, make_sandbox, inside):
    sb = make_sandbox(orgs={"acme": 5})
    cli("init")
    cli("tenant", "add", "t1")
    cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", sb.url,
        "--token-env", "GHETL_TOKEN_GHE")
    head, tail = HEX_TOKEN[:20], HEX_TOKEN[20:]

    result = cli("sync", "--tenant", "t1", "--quiet", GHETL_TOKEN_GHE=head + inside + tail)

    line = one_line_error(result)
    assert "$GHETL_TOKEN_GHE holds whitespace or a non-ASCII character inside the token" in line
    shown = result.stdout + result.stderr + cli("jobs").stdout + cli("jobs", "--json").stdout
    assert head not in shown and tail not in shown
    assert sb.requests == []
    [job] = json.loads(cli("jobs", "--json").stdout)
    assert job["status"]["overall"] == "READY" and job["error_message"] is None


@pytest.mark.parametrize("value", ["ghp_abcdefghijklmnopqrstuvwxyz0123456789", "github_pat_11ABCDEFG0abcdefghijklmn",
                                   "abcdef0123456789abcdef0123456789abcdef01", HEX_TOKEN])
def test_token_env_refuses_a_token(cli, value):
    cli("init")
    cli("tenant", "add", "t1")

    result = cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", "https://x",
                 "--token-env", value)

    assert "--token-env takes the NAME of the environment variable that holds the token" in one_line_error(result)
    assert value not in result.stdout + result.stderr
    assert json.loads(cli("jobs", "--json").stdout) == []


def test_integration_add_warns_once_when_the_token_variable_is_unset(cli):
    cli("init")
    cli("tenant", "add", "t1")
    add = ("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", "https://x",
           "--token-env", "GHETL_TOKEN_TEST_UNSET")
    assert "GHETL_TOKEN_TEST_UNSET" not in os.environ

    unset = cli(*add)
    set_ = cli(*add, GHETL_TOKEN_TEST_UNSET=HEX_TOKEN)

    assert unset.returncode == 0 and set_.returncode == 0
    warnings = [line for line in unset.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "$GHETL_TOKEN_TEST_UNSET is not set here" in warnings[0]
    assert "WARNING" not in set_.stderr
    assert len(json.loads(cli("jobs", "--json").stdout)) == 2


def test_an_api_url_with_credentials_is_refused_without_showing_them(cli):
    cli("init")
    cli("tenant", "add", "t1")
    add = ("integration", "add", "--tenant", "t1", "--owner", "acme")

    given = cli(*add, "--api-url", "http://user:s3cr3tpassw0rd@127.0.0.1:1")
    from_env = cli(*add, GITHUB_API_URL="https://x-access-token:s3cr3tpassw0rd@ghe.example.com/api/v3")

    for result, source in ((given, "--api-url"), (from_env, "GITHUB_API_URL")):
        line = one_line_error(result)
        assert line.startswith(f"ghetl: error: {source} ") and "not in the URL" in line
        assert "s3cr3tpassw0rd" not in result.stdout + result.stderr
    assert json.loads(cli("jobs", "--json").stdout) == []


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:abc", "http://[::1", "http://exa mple.com", "http://", "http://127.0.0.1:99999",
    "http://127.0.0.1:0", f"http://{'a' * 64}.example.com", "ftp://ghe.example.com", "ghe.example.com/api/v3",
    "https://ghe.example.com/api/v3?x=1", f"https://ghe.example.com/{'v' * 500}",
])
def test_a_malformed_api_url_is_refused_at_integration_add(cli, url):
    cli("init")
    cli("tenant", "add", "t1")

    result = cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", url)

    assert one_line_error(result).startswith("ghetl: error: --api-url ")
    assert json.loads(cli("jobs", "--json").stdout) == []


@pytest.mark.parametrize(("url", "stored"), [
    ("https://api.github.com", "https://api.github.com"),
    ("https://ghe.example.com/api/v3/", "https://ghe.example.com/api/v3"),
    ("http://127.0.0.1:8799", "http://127.0.0.1:8799"),
    ("http://[::1]:8799", "http://[::1]:8799"),
    (f"https://{'g' * 63}.example.com/api/v3", f"https://{'g' * 63}.example.com/api/v3"),
])
def test_the_usual_api_urls_are_accepted(cli, tmp_path, url, stored):
    cli("init")
    cli("tenant", "add", "t1")

    result = cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", url)

    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        assert conn.execute("select api_url from integrations").fetchall() == [(stored,)]


def test_two_syncs_at_once_one_is_refused(cli, make_sandbox, tmp_path):
    sb = make_sandbox(orgs={"acme": 400})
    sb.inject("delay", path=r"/(orgs|organizations)/", seconds=0.4, times=10)
    cli("init")
    cli("tenant", "add", "t1")
    cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", sb.url)
    env = {**os.environ, "GHETL_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "GITHUB_TOKEN": TOKEN}
    procs = [subprocess.Popen([sys.executable, "-m", "ghetl", "sync", "--tenant", "t1", "--quiet"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]

    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    refused = next(err for code, err in results if code != 0)
    assert "already running" in refused


def test_the_settings_examples_in_data_are_all_accepted(cli):
    examples = json.loads((Path(__file__).parent.parent / "data" / "settings-examples.json").read_text())
    assert len(examples) >= 5
    cli("init")
    cli("tenant", "add", "t1")
    for name, settings in examples.items():
        result = cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", "https://x",
                     "--settings", json.dumps(settings))
        assert result.returncode == 0, (name, result.stderr)
    assert len(json.loads(cli("jobs", "--json").stdout)) == len(examples)


def test_sandbox_and_status_server_default_to_different_ports():
    from ghetl.cli import build_parser

    parser = build_parser()
    sandbox = parser.parse_args(["sandbox"])
    status = parser.parse_args(["status-server"])
    assert sandbox.port != status.port


def job_states(cli) -> list[str]:
    return [j["status"]["overall"] for j in json.loads(cli("jobs", "--json").stdout)]


@pytest.mark.parametrize(("argv", "error"), [
    (["sync", "--tenant", "t1", "--workers", "0"], "argument --workers: must be 1 or more, got 0"),
    (["sync", "--tenant", "t1", "--workers", "-3"], "argument --workers: must be 1 or more, got -3"),
    (["sync", "--tenant", "t1", "--timeout", "-1"],
     "argument --timeout: must be a number of seconds above 0, got '-1'"),
    (["sync", "--tenant", "t1", "--timeout", "0"], "argument --timeout: must be a number of seconds above 0, got '0'"),
    (["sync", "--tenant", "t1", "--timeout", "nan"],
     "argument --timeout: must be a number of seconds above 0, got 'nan'"),
    (["sync", "--tenant", "t1", "--timeout", "inf"],
     "argument --timeout: must be a number of seconds above 0, got 'inf'"),
    (["status-server", "--poll", "0"], "argument --poll: must be a number of seconds above 0, got '0'"),
    (["status-server", "--poll", "-1"], "argument --poll: must be a number of seconds above 0, got '-1'"),
    (["status-server", "--poll", "nan"], "argument --poll: must be a number of seconds above 0, got 'nan'"),
    (["status-server", "--port", "99999"], "argument --port: must be 0 to 65535 (0 = any free port), got 99999"),
    (["status-server", "--port", "-1"], "argument --port: must be 0 to 65535 (0 = any free port), got -1"),
    (["sandbox", "--port", "65536"], "argument --port: must be 0 to 65535 (0 = any free port), got 65536"),
    (["search", "--tenant", "t1", "--limit", "abc", "x"], "argument --limit: expected a whole number, got 'abc'"),
    (["worker", "all", "--concurrency", "0"], "argument --concurrency: must be 1 or more, got 0"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else "")
def test_out_of_range_options_are_refused_by_argparse_in_one_readable_line(argv, error, capsys):
    from ghetl.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)

    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"ghetl {argv[0]}: error: {error}"


@pytest.mark.parametrize("broker_url", [
    "amqp://guest:guest@127.0.0.1:1/%2F",
    "amqp://guest:wrongpass@127.0.0.1:5672/%2F",
    "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
], ids=["unreachable", "bad-credentials", "missing-vhost"])
def test_a_broker_that_cannot_be_used_stops_the_sync_before_its_job_starts(cli, make_sandbox, broker_url):
    sb = make_sandbox(orgs={"acme": 20})
    cli("init")
    cli("tenant", "add", "t1")
    cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", sb.url)

    line = one_line_error(cli("sync", "--tenant", "t1", "--quiet", GHETL_BROKER_URL=broker_url))

    assert "RabbitMQ" in line and "GHETL_BROKER_URL" in line
    assert job_states(cli) == ["READY"]
    assert cli("sync", "--tenant", "t1", "--quiet").returncode == 0
    assert job_states(cli) == ["FINISHED"]


@pytest.mark.parametrize(("variable", "value"), [
    ("GHETL_EMBEDDER", "bogus"), ("GHETL_MAX_ATTEMPTS", "abc"), ("GHETL_MAX_ATTEMPTS", "0"),
    ("GHETL_RETRY_DELAY", "nan"),
])
def test_a_bad_consumer_setting_stops_the_sync_before_its_job_starts(cli, make_sandbox, variable, value):
    """Read in the consumer threads, these used to dead-letter every message (and end FINISHED)
    or kill the threads and leave the sync waiting forever."""
    sb = make_sandbox(orgs={"acme": 20})
    cli("init")
    cli("tenant", "add", "t1")
    cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", sb.url)

    line = one_line_error(cli("sync", "--tenant", "t1", "--quiet", **{variable: value}))

    assert variable in line and f"'{value}'" in line
    assert job_states(cli) == ["READY"]
    jobs = json.loads(cli("jobs", "--json").stdout)
    assert jobs[0]["last_sync_date"] is None
    assert sb.requests == []


def test_a_malformed_stored_api_url_is_one_line_and_starts_no_run(cli, tmp_path):
    cli("init")
    cli("tenant", "add", "t1")
    cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", "http://127.0.0.1:9")
    with sqlite3.connect(tmp_path / "cli.db") as conn:  # stored before `integration add` checked URLs
        conn.execute("UPDATE integrations SET api_url = 'http://127.0.0.1:abc'")

    line = one_line_error(cli("sync", "--tenant", "t1", "--quiet"))

    assert "invalid API URL 'http://127.0.0.1:abc'" in line and "ghetl integration add" in line
    assert job_states(cli) == ["READY"]


def test_sigterm_fails_the_running_job_like_ctrl_c(cli, make_sandbox, tmp_path):
    """cron, systemd and `timeout` stop a sync with SIGTERM: the job must not stay RUNNING, and
    the sync stops without waiting for the page still on its way. The signal comes while page 1
    is served and page 2 takes 20 s, so the run cannot have finished before the signal is acted on."""
    sb = make_sandbox(orgs={"acme": 150})
    cli("init")
    cli("tenant", "add", "t1")
    cli("integration", "add", "--tenant", "t1", "--owner", "acme", "--api-url", sb.url)
    env = {**os.environ, "GHETL_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "GHETL_BROKER_URL": "memory://",
           "GITHUB_TOKEN": TOKEN}
    running: list[subprocess.Popen[str]] = []
    sb.inject("mutate", path=r"/(orgs|organizations)/", action=lambda _sb: running[0].send_signal(signal.SIGTERM))
    sb.inject("delay", path=r"[?&]page=2", seconds=20)
    started = time.monotonic()
    running.append(subprocess.Popen([sys.executable, "-m", "ghetl", "sync", "--tenant", "t1", "--quiet"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

    _, stderr = running[0].communicate(timeout=60)

    assert time.monotonic() - started < 15
    assert running[0].returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1] == "ghetl: interrupted (SIGTERM)"
    assert "Traceback" not in stderr
    [job] = json.loads(cli("jobs", "--json").stdout)
    assert (job["status"]["overall"], job["error_message"]) == ("FAILED", "interrupted")
    sb.clear_faults()
    assert cli("sync", "--tenant", "t1", "--quiet").returncode == 0


def test_a_worker_host_runs_without_the_notebook_stack(tmp_path):
    """ipywidgets, matplotlib, papermill and jupyterlab are the `notebooks` extra: the CLI's
    init, sync and worker paths must not import them."""
    blocked = ["ipywidgets", "matplotlib", "papermill", "jupyterlab", "IPython", "nbformat"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from ghetl import cli\n"
        "from ghetl.pipeline import sync, workers\n"
        "from ghetl.queue import rabbitmq\n"
        "from ghetl.status import server\n"
        "from ghetl.workbench import frames\n"
        "sys.exit(cli.main(['init']))\n"
    )
    env = {**os.environ, "GHETL_DATABASE_URL": f"sqlite:///{tmp_path / 'worker.db'}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
