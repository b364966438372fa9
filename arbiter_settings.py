"""Settings of the arbiter (arbiter.py), the third host that decides who is primary.

Edit this file or pass --settings FILE with only the values that differ.
The timings here are the cluster's: nodes take them from the arbiter's replies.
"""
listen_host = "127.0.0.1"       # "0.0.0.0" to accept nodes from other hosts
listen_port = 5430
nodes = ["pgsql-1", "pgsql-2"]  # the two database hosts, by their node names
initial_primary = "pgsql-1"     # primary chosen at the very first start only
state_file = "./arbiter-state.json"  # the durable decision (epoch, primary, promotable)

heartbeat_interval = 0.5        # seconds between node reports
lease_time = 3.0                # a primary's lease; it fences itself when all its leases run out
failover_margin = 1.0           # the arbiter waits lease_time + this before promoting
strict_sync = False             # True: never drop synchronous replication, even if the standby dies
sync_stall_timeout = 1.5        # commits waiting this long on the standby let the primary drop sync
standby_reply_timeout = 2.0     # a standby silent this long on the replication link counts as gone

# Authentication: every node's key and the operator's (and the reader's),
# 0600; made by `pgha-keys generate`.
key_file = "/etc/pgha/arbiter.keys"

log_level = "INFO"
log_file = None
