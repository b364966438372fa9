#!/bin/sh
# Container entrypoint for the HA cluster image.
#   entrypoint.sh node SETTINGS     run node.py as OS user postgres
#   entrypoint.sh arbiter SETTINGS  run arbiter.py
#   entrypoint.sh ANYTHING ELSE     exec it (e.g. "bash")
set -eu

# The image holds the test project's whole key set (see the Dockerfile); a
# container keeps only the keyrings its member holds.
keys=/etc/pgha/keys
keep_only() {
    for f in "$keys"/*.keys; do
        case " $* " in *" $(basename "$f") "*) ;; *) rm -f "$f" ;; esac
    done
}

role=${1:-node}
[ $# -gt 0 ] && shift

case "$role" in
node)
    settings=${1:-${PGHA_SETTINGS:-/app/docker/$(hostname).py}}
    # Data, sockets and logs live under /var/lib/pgha (a named volume); the
    # volume may be new (root-owned) or come from an older container.
    mkdir -p /var/lib/pgha /var/lib/pgha/run
    chown postgres:postgres /var/lib/pgha /var/lib/pgha/run
    [ -d /var/lib/pgha/data ] && chown -R postgres:postgres /var/lib/pgha/data
    [ -d /var/lib/pgha/data ] && chmod 0700 /var/lib/pgha/data
    # The container has a new PID namespace: no PostgreSQL of ours can be
    # running now, so a postmaster.pid / socket lock left by "docker kill" is
    # stale. Remove them, or a recycled pid could make PostgreSQL refuse to start.
    rm -f /var/lib/pgha/data/postmaster.pid /var/lib/pgha/run/.s.PGSQL.*
    # A node holds its own key and the pair key, never the operator's.
    keep_only "$(hostname).keys"
    [ -f "$keys/$(hostname).keys" ] && chown postgres:postgres "$keys" "$keys/$(hostname).keys"
    cd /app
    exec runuser -u postgres -- python3 /app/node.py --settings "$settings"
    ;;
arbiter)
    settings=${1:-${PGHA_SETTINGS:-/app/docker/arbiter.py}}
    mkdir -p /var/lib/pgha-arbiter
    # The arbiter container doubles as the operators' host in this test project.
    keep_only arbiter.keys operator.keys reader.keys
    cd /app
    exec python3 /app/arbiter.py --settings "$settings"
    ;;
*)
    exec "$role" "$@"
    ;;
esac
