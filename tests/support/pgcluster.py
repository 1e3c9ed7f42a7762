"""A throwaway PostgreSQL cluster on a spare port, for tests that need server settings
the shared server does not have (more connections) or must stop and start the server.
Never touches the shared server on 5432."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from ipaddress import ip_interface
from pathlib import Path


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).parent
    raise RuntimeError("no PostgreSQL server binaries (pg_ctl) on this machine")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    def __init__(self, *, port: int | None = None, listen: tuple[str, ...] = (),
                 **settings: str | int) -> None:
        """``port``: a given one (default: any free one). ``listen``: addresses to listen
        on besides 127.0.0.1, each trusted for its /30 (the test's own network
        namespaces; see tests/support/netns.py)."""
        self.port = port or free_port()
        self.listen = listen
        self.dir = Path(tempfile.mkdtemp(prefix="pgq-cluster-"))
        self.data = self.dir / "data"
        self.settings = {"max_connections": 100, "fsync": "off", **settings}
        self._bin = _bindir()
        self._user: str | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self._user = "postgres"
            pw = pwd.getpwnam(self._user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        cmd = [str(self._bin / args[0]), *args[1:]]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> PgCluster:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "--encoding=UTF8", "--no-sync")
            with open(self.data / "postgresql.conf", "a") as conf:
                for key, value in self.settings.items():
                    conf.write(f"{key} = {value}\n")
                addresses = ",".join(("127.0.0.1", *self.listen))
                conf.write(f"port = {self.port}\nlisten_addresses = '{addresses}'\n")
                conf.write(f"unix_socket_directories = '{self.dir}'\n")
            with open(self.data / "pg_hba.conf", "a") as hba:
                for address in self.listen:
                    hba.write(f"host all all {ip_interface(address + '/30').network} trust\n")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
