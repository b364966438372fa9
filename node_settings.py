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
tags = {}                       # Patroni's tags, shown by the REST API and matched by ?tag_NAME=VALUE
disk_warning_percent = 90       # a data or pg_wal disk this full is logged, in the REST API and metrics
# Patroni-style writes (POST /switchover {"leader", "candidate"}, /restart, /reinitialize, PATCH /config,
# ...) for a caller with these HTTP Basic credentials, signed with this operator key file
# (README: REST API, Patroni-style writes). Both or neither; None: only operator-signed bodies.
api_authentication = None       # {"username": "...", "password": "..."}
api_operator_key_file = None
api_cluster_key_file = None     # a reader.keys: then /cluster (the whole cluster's view) answers only a request
                                # signed with it (pgha-ctl --key-file reader.keys status --print-signed); None: open

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
# Replication slots kept on whichever member is primary, across switchover and
# failover (Patroni's permanent slots; README: Permanent slots). Give every node
# the same. {"name": {"type": "physical"}} or
# {"name": {"type": "logical", "database": "testdb", "plugin": "pgoutput"}}.
permanent_slots = {}
# How a new or rejoining standby gets its copy (Patroni's create_replica_methods):
# tried in order; "basebackup" is pg_basebackup from the primary. Any other name
# is an entry of replica_methods: {"command": "...", "no_params": True/False, ...},
# run as pg_os_user, restoring into the folder it is given (README: Replicas from
# a backup), e.g. {"pgbackrest": {"command": "pgbackrest --stanza=main --delta restore",
# "no_params": True}} with create_replica_methods = ["pgbackrest", "basebackup"].
create_replica_methods = ["basebackup"]
replica_methods = {}
# How the first primary of a new cluster gets its data (Patroni's custom bootstrap).
# None: initdb. Or a backup: {"command": "pgbackrest --stanza=main --delta restore",
# "no_params": True, "recovery_conf": {"restore_command": "pgbackrest --stanza=main
# archive-get %f \"%p\"", "recovery_target_action": "promote"}} (README: Replicas from
# a backup): restored into a folder beside the data directory, recovered, promoted.
bootstrap_method = None
# pg_hba.conf and pg_ident.conf as you write them (README: pg_hba and pg_ident).
# None: the node's lines go on top of pg_hba.conf as it is. A list: pg_hba.conf
# is the node's own lines (its users only), then exactly these, in order, e.g.
# ["local all postgres peer", "local all all peer map=dba", "host all all 10.0.0.0/24 scram-sha-256"].
pg_hba = None
pg_ident = None                 # a list of "MAP SYSTEM-USER PG-USER" lines; None: pg_ident.conf left alone

# Logging
log_level = "INFO"
log_file = None

# Callbacks: executables run as `SCRIPT EVENT ROLE NODE_NAME` (Patroni passes its scope third),
# off the HA loop, one at a time, killed after callback_timeout seconds.
# on_role_change: ROLE primary (promoted or started as primary), replica
# (started as standby), demoted or fenced. on_start / on_stop: the daemon.
# on_reload: after a reload changed a setting. on_restart: after PostgreSQL
# was restarted in place (a crashed primary). pre_promote: run before this
# node promotes itself (e.g. a fencing script that powers the old primary
# off), on the HA loop, waited for: a non-zero exit or the timeout blocks the
# promotion, which is tried again (the script at most every 2 s).
on_role_change = None
on_start = None
on_stop = None
on_reload = None
on_restart = None
pre_promote = None
callback_timeout = 30.0

# Stopping this daemon (systemctl stop/restart) leaves PostgreSQL running: a
# daemon back within the lease adopts it with no failover; else its fencer
# stops it at the lease's end and the standby takes over. In pause it is left
# running, unfenced, always. True: outside pause the daemon stops PostgreSQL
# (fast) itself as it exits, the old way (README: Stopping the node daemon).
stop_postgres_on_exit = False

# TLS on the arbiter link and the node-to-node lease link (off: None). All
# three or none: this node's certificate and key (0600) and the cluster's CA;
# made by `pgha-keys tls` (README: Security: authentication).
tls_cert_file = None
tls_key_file = None
tls_ca_file = None
# Without TLS the daemon keeps the system's OpenSSL (libcrypto, libssl: ~3.5 MB
# resident) out of its process: Python's own SHA-256 signs, psycopg2 uses its
# bundled library. True: load it anyway.
system_openssl = False
