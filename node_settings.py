"""Settings of one database host's node daemon (node.py).

Edit this file, or pass --settings FILE with only the values that differ
(several nodes on one machine each get their own file). Defaults point at
loopback; on real hosts set `host`, `arbiter_host` and `hba_networks`.
"""
# This node
name = "pgsql-1"                # unique name; the arbiter knows it by this
host = "127.0.0.1"              # address the other node and clients use to reach this host
pg_port = 5432                  # PostgreSQL port
peer_port = 5433                # node-to-node lease link (TCP)
peer_bind = "127.0.0.1"         # address the lease link listens on ("0.0.0.0" for all)
peer_advertise_port = None      # the lease link's port as the other node reaches it (port forward); None: peer_port
listen_addresses = "127.0.0.1"  # PostgreSQL listen_addresses
slot_name = "rep177"            # replication slot this node streams through when it is the standby

# REST API (Patroni's health-check paths, /metrics): see README, "REST API and HAProxy"
api_bind = "127.0.0.1"          # address it listens on ("0.0.0.0" for HAProxy on another host; None: off)
api_port = 8008

# The arbiter
arbiter_host = "127.0.0.1"
arbiter_port = 5430
cluster_name = "main"           # the cluster this node belongs to (the arbiter's cluster_name or a key of its clusters)
arbiter_hosts = None            # several arbiter processes (state on etcd): ["10.0.0.3:5430", "10.0.0.4:5430"]

# Authentication: this node's keyring (its own key and the node-to-node pair
# key), 0600, owned by pg_os_user; made by `pgha-keys generate`.
key_file = "/etc/pgha/pgsql-1.keys"

# PostgreSQL
pgdata = "/var/lib/postgresql/pgha/data"   # created by initdb/pg_basebackup when empty
socket_dir = None               # unix socket folder; default: "run" beside pgdata
state_dir = None                # node's own state (last epoch acted on); default: "state" beside pgdata
pg_bindir = None                # default: pg_config --bindir, else newest /usr/lib/postgresql/*/bin
pg_os_user = "postgres"         # PostgreSQL runs as this OS user when node.py runs as root
# Passwords: "change-me" is a placeholder the node refuses to run with. Set
# real ones in a --settings file readable only by the node's user (chmod 600;
# a file holding a password that others can read is refused).
admin_user = "kronos"           # superuser the node uses for its own control connection
admin_password = "change-me"
replication_user = "repuser"    # streaming replication (pg_basebackup, the standby)
replication_password = "change-me"
app_user = "app"                # the application's role: LOGIN, no superuser, owns `database`
app_password = "change-me"
database = "testdb"
hba_networks = ["127.0.0.1/32"] # networks allowed to connect (clients, the other node)
pg_parameters = {}              # extra postgresql.conf parameters, e.g. {"shared_buffers": "256MB"}

# Logging
log_level = "INFO"
log_file = None

# Callbacks: executables run as `SCRIPT EVENT ROLE NODE_NAME` (like Patroni's),
# off the HA loop, one at a time, killed after callback_timeout seconds.
# on_role_change: ROLE primary (promoted or started as primary), replica
# (started as standby), demoted or fenced. on_start / on_stop: the daemon.
on_role_change = None
on_start = None
on_stop = None
callback_timeout = 30.0

# TLS on the arbiter link and the node-to-node lease link (off: None). All
# three or none: this node's certificate and key (0600) and the cluster's CA;
# made by `pgha-keys tls` (README: Security: authentication).
tls_cert_file = None
tls_key_file = None
tls_ca_file = None
