# Arbiter settings for the compose service "arbiter" (overrides arbiter_settings.py).
listen_host = "0.0.0.0"
listen_port = 5430
nodes = ["pgsql-1", "pgsql-2"]
initial_primary = "pgsql-1"
state_file = "/var/lib/pgha-arbiter/state.json"
# heartbeat, lease and margin: the defaults (arbiter_settings.py)
strict_sync = False
key_file = "/etc/pgha/keys/arbiter.keys"   # baked into the test image; see the Dockerfile
log_level = "INFO"
