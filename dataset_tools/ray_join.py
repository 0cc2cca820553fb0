"""Joining a running Ray cluster within a time limit.

Left alone, ``ray.init(address=...)`` retries an address where nothing answers for ten minutes or more
(20 attempts of up to 40 s each in Ray 2.60). Here the head's GCS port is first probed with plain TCP
connects until the deadline, then asked for its cluster id in a background thread bounded by what is
left, and only then is ``ray.init`` called, its retry count capped to the seconds left (each retry
sleeps one second). Nothing is changed for the session once joined: Ray's own reconnect and request
timeouts stay as the cluster's operator set them.
"""
from __future__ import annotations

import math
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from estimators.cli_util import UserError

from .photo_state import one_line

#: Default of ``--ray-timeout``: seconds to join a cluster before giving up.
DEFAULT_RAY_TIMEOUT = 60.0
#: Ray reads this when it connects to the GCS: the number of one-second retries.
RETRIES_ENV = "RAY_gcs_server_port_wait_time_s"
CHECKS = ("check that `ray start --head` is running there, that the port is the GCS port it printed (default 6379), "
          "and that no firewall blocks it")
#: Longest single TCP connect attempt, so a dropped SYN is retried rather than waited on.
_CONNECT_ATTEMPT_S = 5.0
#: The cluster-id request always gets at least this long, even when the TCP probe used up the deadline.
_MIN_GCS_WAIT_S = 2.0


def join_cluster(address: str, timeout: float, **init_kwargs: Any) -> None:
    """``ray.init(address=address, **init_kwargs)`` that fails with a one-line UserError, within about
    ``timeout`` seconds, when the cluster at ``address`` ("auto", HOST:PORT or ray://HOST:PORT) cannot be joined."""
    import ray

    deadline = time.monotonic() + timeout
    client = _client_target(address)
    target = client or _bootstrap_address(address)
    where = address if target == address else f"{address} ({target})"
    problem = _wait_for_port(target, deadline)
    if problem is not None:
        raise UserError(f"cannot reach the Ray cluster at {where} within {timeout:g} s ({problem}): {CHECKS}")
    if client is None:  # a Ray Client server (ray://) is no GCS: ray.init's client handshake has its own limit
        _ask_gcs(target, where, deadline)
    with _retries_within(deadline):
        try:
            ray.init(address=address, **init_kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot join the Ray cluster at {where}: {join_failure(exc)}") from None


def _client_target(address: str) -> Optional[str]:
    """HOST:PORT of a Ray Client address (ray://HOST:PORT, given or, for auto, in RAY_ADDRESS); else None."""
    chosen = (os.environ.get("RAY_ADDRESS") or address) if address == "auto" else address
    return chosen.split("://", 1)[1].rstrip("/") if "://" in chosen else None


def _bootstrap_address(address: str) -> str:
    """HOST:PORT of the GCS that Ray will dial for ``address`` ("auto": RAY_ADDRESS or the last `ray start` here)."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        target = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: {one_line(exc)}") from None
    if target is None:
        raise UserError(f"--ray-address {address} names no running cluster: give auto or HOST:PORT, or leave it out "
                        "to start a local Ray")
    return target


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise UserError(f"cannot join the Ray cluster at {target}: expected HOST:PORT") from None


def _wait_for_port(target: str, deadline: float) -> Optional[str]:
    """None once a TCP connection to ``target`` opens, else (at ``deadline``) why the last attempt failed."""
    host, port = _host_port(target)
    problem = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return problem
        try:
            with socket.create_connection((host, port), timeout=min(left, _CONNECT_ATTEMPT_S)):
                return None
        except OSError as exc:
            problem = (exc.strerror or str(exc) or type(exc).__name__).lower()
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _ask_gcs(target: str, where: str, deadline: float) -> None:
    """Ask the GCS at ``target`` for its cluster id in a daemon thread, waiting until ``deadline``.

    Silence or an error other than authentication is a UserError; authentication is left to ``ray.init``,
    which may still find a token (and which names the fix when it does not).
    """
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    outcome: list[Optional[BaseException]] = []

    def ask() -> None:
        try:
            GcsClient(address=target)
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - reported below as one line
            outcome.append(exc)

    thread = threading.Thread(target=ask, name="ray-gcs-probe", daemon=True)
    thread.start()
    thread.join(max(_MIN_GCS_WAIT_S, deadline - time.monotonic()))
    if not outcome:
        raise UserError(f"cannot join the Ray cluster at {where}: the port accepts connections but no Ray GCS "
                        f"answered in time: {CHECKS}")
    if outcome[0] is not None and not isinstance(outcome[0], AuthenticationError):
        raise UserError(f"cannot join the Ray cluster at {where}: {one_line(outcome[0])}: {CHECKS}")


@contextmanager
def _retries_within(deadline: float) -> Iterator[None]:
    """Cap Ray's GCS connect retries (one second each) to the seconds left, unless the user set them."""
    if RETRIES_ENV in os.environ:
        yield
        return
    from ray._private import ray_constants

    left = math.floor(deadline - time.monotonic())
    os.environ[RETRIES_ENV] = str(max(1, min(ray_constants.NUM_REDIS_GET_RETRIES, left)))
    try:
        yield
    finally:
        os.environ.pop(RETRIES_ENV, None)


def join_failure(exc: BaseException) -> str:
    """One line on why joining a cluster failed, with the fix for Ray's token authentication."""
    chain, cause = [], exc
    while cause is not None and len(chain) < 8:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = one_line(exc)
    if any("Authentication" in part or "auth token" in part.lower() for part in chain):
        text += ("; the cluster uses token authentication: set RAY_AUTH_MODE=token and give its token in "
                 "RAY_AUTH_TOKEN or ~/.ray/auth_token")
    return text
