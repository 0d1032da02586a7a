"""The live web viewer: static page + a read-only, same-origin proxy to the Tiled server.

``start_viewer(tiled_url, api_key)`` serves ``streaming/viewer/`` (plain HTML/JS/CSS, no CDN, so it
works on an isolated beamline network) and forwards GET requests for Tiled's read endpoints
(``/api/v1/metadata/``, ``/search/``, ``/array/full/``, ``/array/block/``) to Tiled, adding the API
key on the server side.

Why a proxy and not the browser talking to Tiled directly:

- same origin: the page and the data share host and port, so Tiled needs no CORS configuration;
- the browser never holds the API key (which also allows writing): the page cannot modify
  anything, because every method other than GET is refused here (405) and only read endpoints are
  forwarded; the viewer is read-only by construction, whoever opens it.

Read-only is not private: the proxy shows every run to whoever reaches it. On loopback that is the
machine's users; bound to another interface (``--host 0.0.0.0``, the beamline network) the viewer
refuses to start without a *browse key* (``$BP_VIEWER_KEY`` or ``--viewer-key-file``), distinct from
the Tiled key: a browser opens ``URL?key=BROWSE_KEY`` once, gets it back as an HttpOnly cookie, and
every request without it is answered 401. The browse key opens reading only; the Tiled key (which
writes) stays on the server side.

Bodies are streamed (``httpx`` ``iter_raw``, compressed bytes passed through untouched), so a large
slice costs no extra copy or latency. Run by hand (the read-only Tiled key from a file, or
``$BP_TILED_API_KEY``)::

    bp-plugin viewer --tiled-url http://127.0.0.1:8000 --api-key-file out/tiled/read_key
"""
from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import mimetypes
import posixpath
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from .viewer_cli import BROWSE_KEY_ENV

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("viewer")
# Only the read endpoints the page uses; anything else under /api/ (auth, API-key management,
# websockets, ...) stays unreachable even with GET, so the server-side key cannot leak any power.
FORWARDED = ("/api/v1/metadata/", "/api/v1/search/", "/api/v1/array/full/", "/api/v1/array/block/")
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
REQUEST_HEADERS = ("accept", "accept-encoding", "if-none-match")
# Tiled's CSRF cookie and hop-by-hop headers make no sense to the browser: only these are relayed.
COOKIE = "bp_viewer_key"
#: where the viewer's browse key comes from when it is bound off loopback
RESPONSE_HEADERS = ("content-type", "content-encoding", "content-length", "etag", "cache-control",
                    "retry-after")


class _Handler(BaseHTTPRequestHandler):
    """One request; ``server.viewer`` holds the Tiled URL, the key and the shared httpx client."""

    protocol_version = "HTTP/1.1"   # keep-alive: the page polls every second
    timeout = 120                   # s; frees the thread of an idle keep-alive connection
    server_version = "bp-viewer"

    # --- plumbing ----------------------------------------------------------------------------------
    def log_message(self, fmt, *args):  # per-request lines would flood the console at 1 Hz polling
        log.debug("%s " + fmt, self.address_string(), *args)

    def _text(self, code: int, message: str, extra: dict | None = None) -> None:
        body = (message.rstrip() + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self):
        """Any method but GET: the viewer only reads; writes go through a Tiled client with the key."""
        if self.path.startswith("/api/"):
            msg = (f"405 {self.command} refused: this viewer proxy is read-only and forwards only GET "
                   "to Tiled. Write through a Tiled client holding the API key.")
        else:
            msg = f"405 {self.command} not allowed: the viewer serves static files (GET only)."
        # the request body is never read: hang up after answering, or keep-alive would parse it
        # as the next request
        self.close_connection = True
        self._text(405, msg, {"Allow": "GET", "Connection": "close"})

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _refuse

    def do_HEAD(self):
        if not self._admitted():
            return
        if self.path.startswith("/api/"):
            return self._refuse()
        self._static()

    def do_GET(self):
        if not self._admitted():
            return
        if self.path.startswith("/api/"):
            self._proxy()
        else:
            self._static()

    # --- browse key ----------------------------------------------------------------------------------
    def _admitted(self) -> bool:
        """True when no browse key is needed or the request holds it (cookie or ``Authorization:
        Bearer``); ``?key=`` sets the cookie and redirects to the same page without it."""
        key = self.server.viewer.browse_key
        if not key:
            return True
        split = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(split.query)
        given = query.get("key", [None])[0]
        if given is not None and hmac.compare_digest(given.encode(), key.encode()):
            rest = urllib.parse.urlencode([(k, v) for k, vs in query.items() if k != "key" for v in vs])
            self.close_connection = True
            self._text(303, "303 see the page", {
                "Location": split.path + (f"?{rest}" if rest else ""), "Connection": "close",
                "Set-Cookie": f"{COOKIE}={key}; HttpOnly; SameSite=Strict; Path=/"})
            return False
        cookies = {}
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            cookies[name] = value
        bearer = self.headers.get("Authorization", "")
        held = cookies.get(COOKIE) or (bearer[7:] if bearer.startswith("Bearer ") else "")
        if held and hmac.compare_digest(held.encode(), key.encode()):
            return True
        self.close_connection = True
        self._text(401, "401 this viewer needs its browse key: open its address with ?key=BROWSE_KEY "
                        "(ask whoever started it)", {"Connection": "close"})
        return False

    # --- static files ------------------------------------------------------------------------------
    def _static(self):
        name = urllib.parse.urlsplit(self.path).path.lstrip("/") or "index.html"
        # a flat folder: a plain file name, never a path (no traversal possible)
        f = STATIC_DIR / name
        if "/" in name or name.startswith(".") or not f.is_file():
            return self._text(404, f"404 not found: {self.path}")
        body = f.read_bytes()
        # our own table first: the system's mime.types varies (application/x-javascript, ...)
        ctype = STATIC_TYPES.get(f.suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")   # an upgraded viewer is picked up on reload
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # --- proxy -------------------------------------------------------------------------------------
    def _proxy(self):
        viewer = self.server.viewer
        split = urllib.parse.urlsplit(self.path)
        decoded = urllib.parse.unquote(split.path)
        if ".." in decoded.split("/") or posixpath.normpath(decoded) != decoded.rstrip("/") or \
                not decoded.startswith(FORWARDED):
            return self._text(404, f"404 not forwarded: {split.path} (the viewer proxy forwards only "
                                   f"GET {', '.join(p + '...' for p in FORWARDED)})")
        headers = {k: v for k, v in self.headers.items() if k.lower() in REQUEST_HEADERS}
        headers["Authorization"] = f"Apikey {viewer.api_key}"
        url = viewer.tiled_url + self.path   # raw path and query: Tiled parses them itself
        try:
            upstream = viewer.http.send(viewer.http.build_request("GET", url, headers=headers), stream=True)
        except httpx.HTTPError as exc:
            return self._text(502, f"502 Tiled server unreachable at {viewer.tiled_url}: "
                                   f"{type(exc).__name__}: {exc}")
        try:
            self.send_response(upstream.status_code)
            for k in RESPONSE_HEADERS:
                if k in upstream.headers:
                    self.send_header(k, upstream.headers[k])
            chunked = "content-length" not in upstream.headers and upstream.status_code != 304
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in upstream.iter_raw():
                if not part:
                    continue
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except httpx.HTTPError as exc:   # headers are gone already: the only honest signal is to hang up
            log.warning("Tiled stream broke while relaying %s: %s", split.path, exc)
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):   # the browser left (page closed, run switched)
            self.close_connection = True
        finally:
            upstream.close()


class ViewerServer:
    """A running viewer: ``url`` to open in a browser; ``stop()`` (or use as a context manager)."""

    def __init__(self, tiled_url: str, api_key: str | None, host: str, port: int, browse_key: str | None = None):
        self.tiled_url = tiled_url.rstrip("/")
        self.api_key = api_key or ""
        self.browse_key = browse_key or ""
        # one pooled client for all handler threads (httpx.Client is thread-safe); a long read
        # timeout because a large slice may take Tiled a while, a short connect one for a clear 502
        self.http = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0))
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.viewer = self
        h, p = self._httpd.server_address[:2]
        self.url = f"http://{'127.0.0.1' if h in ('0.0.0.0', '') else h}:{p}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="bp-viewer")
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the connection pool to Tiled."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"ViewerServer(url={self.url!r}, tiled_url={self.tiled_url!r})"


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_viewer(tiled_url: str, api_key: str | None, *, host: str = "127.0.0.1", port: int = 0,
                 browse_key: str | None = None) -> ViewerServer:
    """Serve the live viewer in a daemon thread and return at once.

    Args:
        tiled_url: base URL of the Tiled server (e.g. ``TiledServer.url``).
        api_key: Tiled API key; added to forwarded requests, never sent to the browser.
        host: interface to listen on; ``"0.0.0.0"`` to let other machines of the beamline network
            open the page (read-only, see the module docstring), which needs ``browse_key``.
        port: TCP port; 0 picks a free one (see ``ViewerServer.url``).
        browse_key: the key a browser must present (``?key=`` once, then a cookie); required
            off loopback, optional on it.
    """
    if not (STATIC_DIR / "index.html").is_file():
        raise FileNotFoundError(f"viewer files missing in {STATIC_DIR}")
    if not browse_key and not is_loopback(host):
        raise ValueError(f"the viewer shows every run to whoever reaches it: bound to {host} (off loopback) it "
                         f"needs a browse key; set ${BROWSE_KEY_ENV} or --viewer-key-file PATH, and give the "
                         "page's address with ?key=THAT_KEY to the people who may look")
    return ViewerServer(tiled_url, api_key, host, port, browse_key)


def main(argv=None) -> None:
    """``python -m streaming.viewer_server`` (the same as ``bp-plugin viewer``): serve until Ctrl-C."""
    from .viewer_cli import add_viewer_args, run_viewer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_viewer_args(ap)
    try:
        run_viewer(ap.parse_args(argv))
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"viewer: error: {exc}") from None


if __name__ == "__main__":
    main()
