"""Logging for the node and the arbiter (the implementation is pgha.logs).

Timestamps, levels, a FAILOVER level for every role change (grep one word
to see each promotion, demotion and fence), colour on a terminal only, an
optional log file.
"""
from pgha.logs import FAILOVER, get, setup  # noqa: F401
