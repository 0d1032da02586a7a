"""``bp-plugin viewer``'s options and loop, apart from the server so that building the command
line does not import the HTTP stack (:mod:`streaming.viewer_server` holds the server)."""
from __future__ import annotations

import argparse
import os
import time

from bp_plugin.keys import add_key_args, read_key_file, resolve_key

#: environment variable holding the browse key browsers must give off loopback
BROWSE_KEY_ENV = "BP_VIEWER_KEY"


def add_viewer_args(ap: argparse.ArgumentParser, *, tiled: bool = True) -> None:
    """The viewer's options (``bp-plugin viewer`` gives its own ``--tiled-url`` when ``tiled`` is False)."""
    if tiled:
        ap.add_argument("--tiled-url", required=True, help="Tiled server URL, e.g. http://127.0.0.1:8000")
        add_key_args(ap)
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (needs a browse key)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--viewer-key-file", default=None, metavar="PATH",
                    help=f"file holding the browse key browsers must give (default: ${BROWSE_KEY_ENV})")


def run_viewer(args: argparse.Namespace) -> int:
    """Serve the viewer until Ctrl-C; a bad option or a taken port is a ValueError with one line."""
    from .viewer_server import start_viewer

    try:
        browse = read_key_file(args.viewer_key_file) if args.viewer_key_file else os.environ.get(BROWSE_KEY_ENV)
        viewer = start_viewer(args.tiled_url, resolve_key(args.api_key_file), host=args.host, port=args.port,
                              browse_key=browse)
    except OSError as exc:
        raise ValueError(f"cannot serve the viewer on {args.host}:{args.port} ({exc.strerror or exc}); choose "
                         "another --port") from None
    with viewer as v:
        print(f"live viewer at {v.url} (reading {v.tiled_url}){'; browsers open it with ?key=...' if browse else ''}"
              "; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0
