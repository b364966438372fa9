# Settings of the two arbiters of docker-compose.etcd.yml (arbiter, arbiter-2):
# docker/arbiter.py's, with the decision in the compose project's etcd. The
# container's hostname says which arbiter this is (the address nodes are sent to).
import os as _os
import runpy as _runpy
import socket as _socket

globals().update({_k: _v for _k, _v in _runpy.run_path(_os.path.join(_os.path.dirname(__file__), "arbiter.py")).items()
                  if not _k.startswith("_")})

state_backend = "etcd"
etcd_endpoints = ["http://etcd-1:2379", "http://etcd-2:2379", "http://etcd-3:2379"]
advertise_address = f"{_socket.gethostname()}:{listen_port}"   # noqa: F821 (from arbiter.py)
# A line per leadership term and per decision answered as leader, so the fault
# suite can check that the two arbiters never acted at the same time.
acting_record_file = "/var/lib/pgha-arbiter/acting.log"
