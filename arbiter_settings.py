"""Settings of the arbiter (arbiter.py), the third host that decides who is primary.

Edit this file or pass --settings FILE with only the values that differ.
The timings here are the cluster's: nodes take them from the arbiter's replies.
"""
from pgha import settings as _defaults

listen_host = "127.0.0.1"       # "0.0.0.0" to accept nodes from other hosts
listen_port = 5430
nodes = ["pgsql-1", "pgsql-2"]  # the two database hosts, by their node names
initial_primary = "pgsql-1"     # primary chosen at the very first start only
state_file = "./arbiter-state.json"  # the durable decision (epoch, primary, promotable)
cluster_name = "main"           # the cluster's name (nodes send it: their cluster_name); etcd keys <etcd_prefix>/<cluster_name>/...
# Many clusters from this one arbiter: {"a": {"nodes": ["a-1", "a-2"], "initial_primary": "a-1"}, "b": ...}.
# Then it serves exactly these (nodes/initial_primary unused); each cluster
# C has its own state file <state_file stem>.C.json beside state_file (the
# cluster named cluster_name keeps state_file) and its members' keys are
# "C/NODE" in key_file (`pgha-keys add-cluster`). README: Many clusters.
clusters = None

# The cluster's timings, in seconds; the defaults are named once, in pgha/settings.py.
heartbeat_interval = _defaults.HEARTBEAT_INTERVAL    # between node reports
lease_time = _defaults.LEASE_TIME   # a primary's lease; it fences itself when all its leases run out
failover_margin = _defaults.FAILOVER_MARGIN  # the arbiter waits lease_time + this before promoting (docs/ha-model.md: Timings)
strict_sync = False             # True: never drop synchronous replication, even if the standby dies
sync_stall_timeout = 0.7        # commits waiting this long on the standby let the primary drop sync
standby_reply_timeout = 1.5     # a standby silent this long on the replication link counts as gone (it replies every 1 s)

# Authentication: every node's key and the operator's (and the reader's),
# 0600; made by `pgha-keys generate`.
key_file = "/etc/pgha/arbiter.keys"

# Where the decision is kept. "file": state_file, one arbiter process.
# "etcd": a key per cluster in etcd; run several arbiter processes, one leads
# (README: The arbiter on etcd). Nodes then list them all in arbiter_hosts.
state_backend = "file"
etcd_endpoints = ["http://127.0.0.1:2379"]
etcd_prefix = "/pgha"
etcd_lease_ttl = 2              # seconds; a dead leader is replaced after at most this (<= lease_time + failover_margin)
etcd_timeout = 1.0              # seconds per etcd request and endpoint
etcd_ca_file = None             # TLS: the CA that signed etcd's certificates (https:// endpoints)
etcd_cert_file = None           # TLS client certificate and its key, when etcd asks for one
etcd_key_file = None
etcd_user = None                # etcd authentication; the password is a secret (this file then 0600)
etcd_password = None
advertise_address = None        # "host:port" other arbiters send nodes to; None: listen_host:listen_port
acting_record_file = None       # tests: a line per term start and per decision answered as leader

log_level = "INFO"
log_file = None

# TLS on the arbiter port (off: None). All three or none: the arbiter's
# certificate and key (0600) and the cluster's CA; made by `pgha-keys tls`.
tls_cert_file = None
tls_key_file = None
tls_ca_file = None
