"""Errors shared across the daemon package."""


class ProtocolError(Exception):
    """A message that breaks the protocol: the connection is closed after it."""
