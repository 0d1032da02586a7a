"""Receipts: a sender asks the reconstructor what it holds of a run and makes good what it lacks.

PUSH/PULL says nothing back: a sender whose receiver died (or never listened) used to report
success while its last messages sat in a dead socket. Beside its PULL socket the service binds a
REP socket one port higher (:func:`receipt_address`). After its ``stop`` message a sender sends a
query there, ``{"protocol": "bp-stream", "version": 1, "kind": "receipt", "run_uid": ...}``, and the
service answers, after taking every data message already queued::

    {"run_uid", "known": bool, "stop": bool, "state": "receiving" | "final" | "failed" | ... | "unknown",
     "frames_placed": int}

A run the service does not know (a new process whose predecessor was killed before spooling it)
gets its ``start`` (and ``mask``) again, a known run without its ``stop`` gets the ``stop`` again;
the frames themselves come back from the files the ``stop`` lists (the service recovers what it
never got). The sender reports success only once the service has the ``stop``, and fails, saying
so, when nobody answers (docs/streaming-protocol.md).
"""
from __future__ import annotations

import json
import time
from urllib.parse import urlparse

import zmq

from .protocol import PROTOCOL, VERSION, ProtocolError, check_run_uid

KIND = "receipt"


def check_address(address: str) -> str:
    """``address`` if it is a ZeroMQ TCP endpoint ``tcp://HOST:PORT``; else ``ValueError`` with the fix."""
    u = urlparse(address)
    try:
        port = u.port
    except ValueError:
        port = None
    if u.scheme != "tcp" or not u.hostname or port is None or not 0 < port < 65535:
        raise ValueError(f"{address!r} is not a ZeroMQ address tcp://HOST:PORT with a port in 1-65534 "
                         f"(e.g. tcp://127.0.0.1:5577)")
    return address


def receipt_address(address: str) -> str:
    """The receipt endpoint of a reconstructor listening at ``address``: the same host, port + 1."""
    u = urlparse(check_address(address))
    return f"tcp://{u.hostname}:{u.port + 1}"


def encode_query(run_uid: str) -> bytes:
    return json.dumps({"protocol": PROTOCOL, "version": VERSION, "kind": KIND, "run_uid": check_run_uid(run_uid)}).encode()


def decode_query(raw: bytes) -> str:
    """The run uid a query asks about; :class:`ProtocolError` for anything else."""
    try:
        h = json.loads(bytes(raw)[:4096])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"receipt query is not JSON: {exc}") from None
    if not isinstance(h, dict) or h.get("protocol") != PROTOCOL or h.get("kind") != KIND:
        raise ProtocolError("not a bp-stream receipt query")
    return check_run_uid(h.get("run_uid"))


def query(address: str, run_uid: str, *, wait_s: float, context=None) -> dict | None:
    """One receipt query to the reconstructor at ``address`` (its data address); None without an
    answer in ``wait_s`` seconds."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(receipt_address(address))
        sock.send(encode_query(run_uid))
        if not sock.poll(int(wait_s * 1000)):
            return None
        return json.loads(sock.recv())
    finally:
        sock.close(0)


def confirm(sender, run_uid: str, *, timeout_s: float = 30.0, poll_s: float = 0.3) -> dict:
    """Wait until the reconstructor behind ``sender`` (a :class:`~streaming.sender.FrameSender`)
    holds run ``run_uid``'s stop message, re-sending the start and stop it kept when the service
    lacks them. Returns the last receipt with ``confirmed`` (bool), ``resent`` (messages sent
    again) and, unconfirmed, ``reason`` (one line)."""
    deadline = time.monotonic() + timeout_s
    resent, answered, without_stop, last = 0, False, 0, None
    while time.monotonic() < deadline:
        reply = query(sender.address, run_uid, wait_s=min(2.0, max(0.1, deadline - time.monotonic())),
                      context=sender.context)
        if reply is None:
            continue
        answered, last = True, reply
        if reply.get("stop"):
            return {**reply, "confirmed": True, "resent": resent}
        if not reply.get("known"):
            resent += sender.resend(run_uid, ("start", "mask", "stop"))
        else:
            without_stop += 1
            if without_stop >= 3:                   # not only still on its way: it went to a dead socket
                resent += sender.resend(run_uid, ("stop",))
                without_stop = 0
        time.sleep(poll_s)
    reason = (f"the reconstructor at {sender.address} did not confirm the end of run {run_uid} in {timeout_s:.0f} s"
              if answered else
              f"no reconstructor answered at {receipt_address(sender.address)} (the receipts of {sender.address}) "
              f"in {timeout_s:.0f} s: is `bp-plugin reconstructor --listen {sender.address}` running?")
    return {**(last or {"run_uid": run_uid, "known": False, "stop": False, "state": "unknown"}),
            "confirmed": False, "resent": resent, "reason": reason}


def bind_pair(ctx, listen: str, rcvhwm: int = 10000, max_message_bytes: int = 256 << 20):
    """``(PULL socket bound at listen, the receipts' REP socket one port higher, the address)`` (a
    free pair when the port is 0); a clear ``RuntimeError`` when the address is taken, a
    ``ValueError`` when it is not one. A peer sending a message part over ``max_message_bytes``
    is disconnected by ZeroMQ before the part is held in memory."""
    random_port = listen.endswith(":0") or listen.endswith(":*")
    if not random_port:
        check_address(listen)
    for _ in range(20 if random_port else 1):
        pull, rep = ctx.socket(zmq.PULL), ctx.socket(zmq.REP)
        for sock in (pull, rep):
            sock.setsockopt(zmq.LINGER, 0)
        pull.setsockopt(zmq.RCVHWM, int(rcvhwm))
        pull.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
        try:
            pull.bind(listen.rsplit(":", 1)[0] + ":*" if random_port else listen)
            address = pull.getsockopt(zmq.LAST_ENDPOINT).decode()
            host, port = address.rsplit(":", 1)
            rep.bind(f"{host}:{int(port) + 1}")
            return pull, rep, address
        except zmq.ZMQError as exc:
            pull.close(0)
            rep.close(0)
            err = exc
    raise RuntimeError(f"cannot listen at {listen} (and its receipts one port higher): {err}; "
                       "another reconstructor may hold the port: choose another --listen") from None
