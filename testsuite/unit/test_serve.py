"""pgha.serve: the serve loop sleeps without polling and still stops at once."""
import socket
import socketserver
import threading
import time

from pgha.serve import WakeOnShutdown


class _Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())


class _Server(WakeOnShutdown, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve():
    server = _Server(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def test_serves_then_stops_at_once():
    server, thread = _serve()
    try:
        with socket.create_connection(server.server_address, timeout=2) as conn:
            conn.sendall(b"ping\n")
            assert conn.makefile("rb").readline() == b"ping\n"
        time.sleep(0.3)     # the loop is asleep in select, with no timeout
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 0.1
        thread.join(1)
        assert not thread.is_alive()
    finally:
        server.server_close()


def test_shutdown_before_serving_does_not_hang_and_stops_the_loop():
    server = _Server(("127.0.0.1", 0), _Echo)
    server.shutdown()                       # returns: nothing is serving yet
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    thread.join(1)
    assert not thread.is_alive()            # the earlier shutdown still counts
    server.server_close()
    server.server_close()                   # twice is harmless


def test_serves_again_after_a_shutdown():
    server, thread = _serve()
    server.shutdown()
    thread.join(1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=2) as conn:
            conn.sendall(b"again\n")
            assert conn.makefile("rb").readline() == b"again\n"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(1)
