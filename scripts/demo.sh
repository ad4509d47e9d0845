#!/usr/bin/env bash
# The main job, start to finish, on the embedded default: a GitHub sandbox standing in for
# github.com, the default SQLite file (data/ghetl.db, so that plain `ghetl` commands see the
# demo's data afterwards), one tenant, a sync, then what landed. Each step is the plain `ghetl`
# command a user would type. Safe to run again: the tenant is added only the first time, and the
# sandbox listens on a fixed port (GHETL_DEMO_PORT, default 8766) so the tenant's stored API URL
# stays right.
set -euo pipefail
cd "$(dirname "$0")/.."

export GHETL_DATABASE_URL="sqlite:///$PWD/data/ghetl.db"
export GHETL_BROKER_URL="memory://"
export GITHUB_TOKEN="ghp_demoSandboxToken00000000000000000000"
PORT="${GHETL_DEMO_PORT:-8766}"
export GITHUB_API_URL="http://127.0.0.1:$PORT"
mkdir -p data

python - "$PORT" <<'PY'
import socket, sys
with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(f"port {sys.argv[1]} is in use: stop what listens there, or choose another with GHETL_DEMO_PORT=PORT")
PY

echo "== starting the GitHub sandbox (organisation 'acme', 300 repositories with their pull requests) at $GITHUB_API_URL"
ghetl sandbox --port "$PORT" --orgs acme:300 &
SANDBOX=$!
trap 'kill $SANDBOX 2>/dev/null || true' EXIT
python - "$PORT" <<'PY'
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the sandbox did not start")
PY

echo "== ghetl init"
ghetl init
if ghetl tenant list | cut -f2 | grep -qx acme-corp; then
    echo "== tenant acme-corp exists (an earlier make demo added it)"
else
    echo "== ghetl tenant add acme-corp"
    ghetl tenant add acme-corp
    echo "== ghetl integration add --tenant acme-corp --owner acme"
    ghetl integration add --tenant acme-corp --owner acme
fi
echo "== ghetl sync --tenant acme-corp"
ghetl sync --tenant acme-corp
echo "== ghetl sync --tenant acme-corp (again: incremental, nothing changed)"
ghetl sync --tenant acme-corp --quiet
echo "== ghetl jobs"
ghetl jobs
echo "== ghetl search --tenant acme-corp \"card payment settlement\""
ghetl search --tenant acme-corp --limit 5 "card payment settlement"
echo "== ghetl search --tenant acme-corp --entity pull_requests \"retry path\""
ghetl search --tenant acme-corp --entity pull_requests --limit 5 "retry path"
echo
echo "Done. The data is in data/ghetl.db, the default database, so plain ghetl commands see it."
echo "Put ghetl, jupyter and papermill on your PATH with: . .venv/bin/activate"
echo "Then try: ghetl jobs; ghetl search --tenant acme-corp \"login and single sign-on\"; jupyter lab notebooks/"
