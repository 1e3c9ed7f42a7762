"""A network black hole between a process and a server on this machine, for fault tests.

The test gets a network namespace of its own (``pgqnet<port>``), joined to the root
namespace by a veth pair whose two addresses form a private /30 that exists only on
this machine (traffic never leaves it). A server listens on the root side's address
(``server_address``); the process under test runs inside the namespace
(``inside(cmd)``). ``drop(port)`` adds nftables rules in the namespace that silently
discard every packet to and from that port, in both directions, as a failed switch or a
cloud network blip does: no reset, no ICMP, nothing for the kernel to notice but
silence. ``heal()`` removes them. ``close()`` removes the namespace and the veth pair.

Needs root (namespaces, nftables). Debian's ``nftables`` (and ``iproute2``) package is
installed when ``nft`` (``ip``) is missing: a fresh CI machine lacks nftables, and
installing it here keeps the README's test command the one command CI runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from ipaddress import IPv4Address

NAMESPACE_PREFIX = "pgqnet"
TABLE = "pgq_black_hole"


def ensure_tool(name: str, package: str) -> str:
    """The path of the program ``name``, installing Debian's ``package`` if it is missing
    (CI runs as root on a machine that may lack it)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True, check=False,
                      timeout=600).returncode != 0:
        # A machine that never fetched the package lists: fetch them once, then retry.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True,
                       timeout=600)
        subprocess.run(install, env=env, capture_output=True, check=True, timeout=600)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert found, f"{package} was installed but {name} is not there"
    return found


def _run(*cmd: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not os.path.exists(f"/run/netns/{NAMESPACE_PREFIX}{port}")


class BlackHole:
    """One namespace and veth pair, named and addressed after ``port`` (the port of the
    server the test starts for it), so concurrent tests on other ports never collide."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.namespace = f"{NAMESPACE_PREFIX}{port}"
        self._veth_root, self._veth_ns = f"pgqv{port}r", f"pgqv{port}n"
        # 10.200.0.0/14 split into /30s by port: one /30 per port, none shared.
        base = int(IPv4Address("10.200.0.0")) + port * 4
        self.server_address = str(IPv4Address(base + 1))
        self.inside_address = str(IPv4Address(base + 2))
        self._ip = ensure_tool("ip", "iproute2")
        self._nft = ensure_tool("nft", "nftables")
        self._dropping = False

    def open(self) -> BlackHole:
        self.close()  # leftovers of a run that was killed before its cleanup
        _run(self._ip, "netns", "add", self.namespace)
        try:
            _run(self._ip, "link", "add", self._veth_root, "type", "veth", "peer", "name",
                 self._veth_ns)
            _run(self._ip, "link", "set", self._veth_ns, "netns", self.namespace)
            _run(self._ip, "addr", "add", f"{self.server_address}/30", "dev", self._veth_root)
            _run(self._ip, "link", "set", self._veth_root, "up")
            self._in_ns(self._ip, "addr", "add", f"{self.inside_address}/30", "dev", self._veth_ns)
            self._in_ns(self._ip, "link", "set", self._veth_ns, "up")
            self._in_ns(self._ip, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def _in_ns(self, *cmd: str) -> None:
        _run(self._ip, "netns", "exec", self.namespace, *cmd)

    def inside(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return [self._ip, "netns", "exec", self.namespace, *cmd]

    def drop(self, port: int) -> None:
        """Silently discard every TCP packet to or from ``port``, from now on."""
        ruleset = (f"table inet {TABLE} {{\n"
                   f"  chain out {{ type filter hook output priority 0; tcp dport {port} drop; }}\n"
                   f"  chain in {{ type filter hook input priority 0; tcp sport {port} drop; }}\n"
                   f"}}\n")
        out = subprocess.run([self._ip, "netns", "exec", self.namespace, self._nft, "-f", "-"],
                             input=ruleset, capture_output=True, text=True, check=False,
                             timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"nft: {out.stderr.strip()}")
        self._dropping = True

    def heal(self) -> None:
        if self._dropping:
            self._in_ns(self._nft, "delete", "table", "inet", TABLE)
            self._dropping = False

    def close(self) -> None:
        """Remove the namespace (with its rules and its end of the pair) and the veth."""
        with contextlib.suppress(RuntimeError):
            _run(self._ip, "netns", "delete", self.namespace)
        with contextlib.suppress(RuntimeError):
            _run(self._ip, "link", "delete", self._veth_root)
        self._dropping = False
