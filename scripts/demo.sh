#!/usr/bin/env bash
# The main job, start to finish, on the embedded default: a GitHub sandbox standing in for
# github.com, a SQLite file, one tenant, a full sync, then what landed. Each step is the plain
# `ghetl` command a user would type.
set -euo pipefail
cd "$(dirname "$0")/.."

export GHETL_DATABASE_URL="sqlite:///$PWD/data/demo.db"
export GHETL_BROKER_URL="memory://"
export GITHUB_TOKEN="ghp_demoSandboxToken00000000000000000000"
PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export GITHUB_API_URL="http://127.0.0.1:$PORT"

rm -f data/demo.db data/demo.db-*
mkdir -p data

echo "== starting the GitHub sandbox (organisation 'acme', 2 000 repositories) at $GITHUB_API_URL"
ghetl sandbox --port "$PORT" --orgs acme:2000 --users octocat:12 &
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
echo "== ghetl tenant add acme-corp"
ghetl tenant add acme-corp
echo "== ghetl integration add --tenant acme-corp --owner acme"
ghetl integration add --tenant acme-corp --owner acme
echo "== ghetl sync --tenant acme-corp"
ghetl sync --tenant acme-corp
echo "== ghetl sync --tenant acme-corp (again: incremental, nothing changed)"
ghetl sync --tenant acme-corp --quiet
echo "== ghetl jobs"
ghetl jobs
echo "== ghetl search --tenant acme-corp \"card payment settlement\""
ghetl search --tenant acme-corp --limit 5 "card payment settlement"
echo
echo "Done. The data is in data/demo.db; explore it with: jupyter lab notebooks/"
