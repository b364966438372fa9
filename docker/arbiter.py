# Arbiter settings for the compose service "arbiter" (overrides arbiter_settings.py).
listen_host = "0.0.0.0"
listen_port = 5430
nodes = ["pgsql-1", "pgsql-2"]
initial_primary = "pgsql-1"
state_file = "/var/lib/pgha-arbiter/state.json"
heartbeat_interval = 0.5
lease_time = 3.0
failover_margin = 1.0
strict_sync = False
key_file = "/etc/pgha/keys/arbiter.keys"   # baked into the test image; see the Dockerfile
log_level = "INFO"
