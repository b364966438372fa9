#!/bin/sh
# Container entrypoint for the HA cluster image.
#   entrypoint.sh node SETTINGS     run node.py as OS user postgres
#   entrypoint.sh arbiter SETTINGS  run arbiter.py
#   entrypoint.sh etcd              run an etcd member (docker-compose.etcd.yml)
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
    # The daemon is this shell's child, not PID 1's: killed alone (OOM, crash,
    # the fault suite) it leaves PostgreSQL and its fencer running, as on a
    # host where nothing restarts it, and the container stays up. A stop
    # (SIGTERM from tini) is passed on and ends the container when it exits.
    HOME=/var/lib/postgresql setpriv --reuid=postgres --regid=postgres --init-groups \
        python3 /app/node.py --settings "$settings" &
    daemon=$!
    trap 'stopping=1; kill -TERM "$daemon" 2>/dev/null' TERM INT
    stopping=
    status=0
    while kill -0 "$daemon" 2>/dev/null; do
        wait "$daemon" && status=0 || status=$?
    done
    [ -n "$stopping" ] && exit "$status"
    echo "entrypoint: node daemon exited with status $status; PostgreSQL and the fencer run on" >&2
    trap 'exit 0' TERM INT
    while :; do sleep 1 & wait $!; done
    ;;
arbiter)
    settings=${1:-${PGHA_SETTINGS:-/app/docker/arbiter.py}}
    mkdir -p /var/lib/pgha-arbiter
    # --init (start from nothing at epoch 1) only the first time this state
    # volume is used: the marker outlives a lost state file, so a state file
    # deleted later stops the arbiter instead of silently starting over. That
    # a new volume means a new cluster holds for this test compose project,
    # whose volumes are made and dropped together (docker-compose down -v); on
    # real hosts run arbiter.py --init by hand, once.
    init=""
    if [ ! -e /var/lib/pgha-arbiter/.volume-initialised ] && [ "${PGHA_ARBITER_INIT:-}" != never ]; then
        init="--init"
    fi
    # The arbiter container doubles as the operators' host in this test project.
    keep_only arbiter.keys operator.keys reader.keys
    cd /app
    # On etcd (docker-compose.etcd.yml) the members start beside it: wait for
    # them, and an arbiter that never inits waits for the first one's decision.
    if grep -q '^state_backend = "etcd"' "$settings"; then
        python3 /app/docker/await_etcd.py "$settings" $([ -z "$init" ] && echo --state)
    fi
    [ -n "$init" ] && touch /var/lib/pgha-arbiter/.volume-initialised
    exec python3 /app/arbiter.py --settings "$settings" $init
    ;;
etcd)
    # A member of docker-compose.etcd.yml's etcd; the hostname names it. It
    # holds no pgha key. Data in a named volume: a restarted container rejoins
    # with its data (etcd then ignores the --initial-* flags).
    keep_only
    name=$(hostname)
    exec etcd --name "$name" --data-dir /var/lib/pgha-etcd/data \
        --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls "http://$name:2379" \
        --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls "http://$name:2380" \
        --initial-cluster "$PGHA_ETCD_CLUSTER" --initial-cluster-state new \
        --initial-cluster-token pgha-compose "$@"
    ;;
*)
    exec "$role" "$@"
    ;;
esac
