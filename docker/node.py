# Node settings for both compose services (overrides node_settings.py). The
# container's hostname, set to the service name in docker-compose.yml, says
# which node this is.
import os as _os
import socket as _socket

_SLOTS = {"pgsql-1": "rep177", "pgsql-2": "rep98"}   # as in the original setup

name = _socket.gethostname()
host = name
slot_name = _SLOTS.get(name, "")   # another hostname: node.py names the bad setting and stops
pg_port = 5432
peer_port = 5433
peer_bind = "0.0.0.0"
listen_addresses = "*"
arbiter_host = "arbiter"
arbiter_port = 5430
# docker-compose.etcd.yml: two arbiters on etcd, "arbiter:5430,arbiter-2:5430".
arbiter_hosts = _os.environ.get("PGHA_ARBITER_HOSTS", "").split(",") if _os.environ.get("PGHA_ARBITER_HOSTS") else None
pgdata = "/var/lib/pgha/data"
socket_dir = "/var/lib/pgha/run"
pg_os_user = "postgres"
# Fixed passwords for this throwaway test project only (the image holds this
# file 0600, owned by postgres: the node refuses a password file others can read).
admin_user = "kronos"
admin_password = "kronos-secret"
replication_user = "repuser"
replication_password = "repuser-secret"
app_user = "app"                # the DSN's role: no superuser, owns the database
app_password = "app-secret"
database = "testdb"
hba_networks = ["127.0.0.1/32", "172.28.0.0/24"]
key_file = f"/etc/pgha/keys/{name}.keys"   # baked into the test image; see the Dockerfile
log_level = "INFO"
log_file = None
# A stopped container takes PostgreSQL with it (its PID namespace ends with
# the daemon), so the daemon stops it cleanly first, as a host shutting down
# would want; on real hosts the default leaves it running for a restart.
stop_postgres_on_exit = True
