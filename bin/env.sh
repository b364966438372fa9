# Shared by bin/cluster and bin/test: a virtualenv with requirements.txt.
# As root the daemons run as the postgres OS user, which cannot read /root:
# the virtualenv then lives in /opt/pgha/venv, built from the system Python.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" = 0 ]; then VENV=${PGHA_VENV:-/opt/pgha/venv}; else VENV=${PGHA_VENV:-$ROOT/.venv}; fi
PYTHON=${PGHA_PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "Python 3.10 or newer is needed ($PYTHON is older)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" || { echo "cannot create a virtualenv (apt-get install python3-venv)" >&2; exit 1; }
fi
stamp="$VENV/.requirements.sha"
want=$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements.txt"
  echo "$want" > "$stamp"
fi
chmod -R a+rX "$VENV"

pg_found() {
  command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1
}
pg_found || { echo "PostgreSQL binaries not found: apt-get install postgresql" >&2; exit 1; }
cd "$ROOT"
