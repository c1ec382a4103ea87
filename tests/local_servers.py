"""Servers on 127.0.0.1 for the weights-download tests (nothing leaves the machine)."""

import contextlib
import functools
import http.server
import socket
import threading


def closed_port_url(path="weights.pth"):
    """An http URL on 127.0.0.1 where nothing listens: a refused connection."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


@contextlib.contextmanager
def silent_server():
    """Yields an http base URL whose server accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    finally:
        server.close()


@contextlib.contextmanager
def file_server(folder):
    """Yields the http base URL of a server for the files in `folder`."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
