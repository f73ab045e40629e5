"""A throw-away PostgreSQL server for the tests: ``initdb`` into a temp folder, started on a free
loopback port with its unix socket in that folder, stopped (immediate) and removed afterwards.

The server is Debian's ``postgresql`` package (``scripts/setup.sh`` installs it) and the driver
the ``postgres`` extra (psycopg 3). Missing either where ``make setup`` would install it is a
failure; only a machine without apt-get, where setup cannot install PostgreSQL, skips.
``initdb`` and ``postgres`` refuse to run as root: as root they run as the ``postgres`` user
(created by the Debian package), else ``nobody``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/VERSION/bin`` with ``initdb``, else the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def require_postgres() -> Path:
    """The PostgreSQL binaries and the driver, or a failure (a skip only where setup cannot
    install PostgreSQL: no apt-get)."""
    bindir = pg_bindir()
    if bindir is None:
        if shutil.which("apt-get") is None:
            pytest.skip("PostgreSQL is not installed and cannot be here: no apt-get (scripts/setup.sh "
                        "installs Debian's postgresql package)")
        pytest.fail("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); run 'make setup' "
                    "(scripts/setup.sh installs Debian's postgresql package)", pytrace=False)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("the PostgreSQL driver psycopg is missing; run 'make setup' (it installs "
                    "transfuse[postgres])", pytrace=False)
    return bindir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], what: str) -> None:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed ({p.returncode}): {p.stdout[-1500:]}{p.stderr[-1500:]}")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields the URL of its ``postgres`` database (user ``postgres``, trust
    authentication, loopback only)."""
    bindir = require_postgres()
    root = Path(tempfile.mkdtemp(prefix="transfuse-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            user = pwd.getpwnam("nobody")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", user.pw_name, "--"]
    data = root / "data"
    started = False
    try:
        _run([*as_user, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
              "--locale=C", "--no-sync"], "initdb")
        for attempt in range(3):  # the free port may be taken between finding and binding it
            port = free_port()
            opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -F"
            try:
                _run([*as_user, bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60",
                      "-o", opts, "start"], "pg_ctl start")
                started = True
                break
            except RuntimeError:
                if attempt == 2:
                    log = root / "server.log"
                    raise RuntimeError("PostgreSQL did not start: "
                                       + (log.read_text()[-2000:] if log.exists() else "no log")) from None
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """A new, empty database on the server; returns its URL."""
    import psycopg

    conn = psycopg.connect(server_url, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}"
