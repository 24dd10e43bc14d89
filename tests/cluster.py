"""A RabbitMQ cluster of three nodes on this machine, made for one test and torn down after.

Each node is a real ``rabbitmq-server`` of the installed RabbitMQ with a
node name, ports and data folder of its own (``lt-c1-<token>@localhost``
...), all sharing one Erlang cookie in a private ``HOME``: nothing of the
machine's own node (``rabbit@localhost``, its cookie, its
``/etc/rabbitmq`` files) is read or touched. The nodes listen on loopback
only, AMQP in clear (the machine's node is the one that speaks TLS) and
the management API (each node its own port; the audit and the agency
users go through it); the Prometheus plugin stays off, as its port is the
machine node's.

:class:`RabbitCluster` starts the nodes, joins the second and third to the
first, and stops, kills, starts and restarts any of them; its
:meth:`~RabbitCluster.amqp_url` names all three nodes, the way an
operator's ``LIENTHONG_AMQP_URL`` does. The commands are RabbitMQ's own
(``rabbitmq-server``, ``rabbitmqctl -n NODE``), run with the cluster's
environment; processes are ended by their own process group, never by
name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

# The installed RabbitMQ's own scripts, not Debian's wrappers in /usr/sbin
# (which switch to the rabbitmq user and its HOME, and so its cookie).
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
NODES = 3
# A node of 3.10 with the management plugin starts in 5 to 10 s on a quiet
# machine; a loaded two-core one takes several times that.
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 120.0


def installed() -> bool:
    """Whether RabbitMQ's server and control scripts are on this machine."""
    return (RABBITMQ_BIN / "rabbitmq-server").exists() and (RABBITMQ_BIN / "rabbitmqctl").exists()


def _free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on loopback right now (the kernel's choice, all distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Node:
    """One node of the cluster: its name, ports, folder and process."""

    index: int
    name: str
    amqp_port: int
    dist_port: int
    api_port: int
    folder: Path
    process: asyncio.subprocess.Process | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.folder / "server.out"

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` of its AMQP listener."""
        return f"127.0.0.1:{self.amqp_port}"


class ClusterError(AssertionError):
    """A cluster command failed; the message holds its output."""


class RabbitCluster:
    """Three RabbitMQ nodes of this test, clustered; see the module's docstring."""

    def __init__(self, root: Path, nodes: int = NODES) -> None:
        """The cluster's files go under ``root`` (a temporary folder of the test)."""
        self.root = root
        self.token = uuid.uuid4().hex[:6]
        self.home = root / "home"
        ports = _free_ports(3 * nodes)
        self.nodes = [
            Node(
                index,
                f"lt-c{index + 1}-{self.token}@localhost",
                ports[3 * index],
                ports[3 * index + 1],
                ports[3 * index + 2],
                root / f"node{index + 1}",
            )
            for index in range(nodes)
        ]

    # -- addresses ----------------------------------------------------------------

    def amqp_url(self, vhost: str = "/") -> str:
        """``amqp://guest:guest@n1,n2,n3/vhost``: every node, as an operator names them."""
        hosts = ",".join(node.address for node in self.nodes)
        return f"amqp://guest:guest@{hosts}/{quote(vhost, safe='')}"

    def api_url(self, node: int = 0) -> str:
        """The management API of one node (any node answers for the whole cluster)."""
        return f"http://guest:guest@127.0.0.1:{self.nodes[node].api_port}"

    def node_of(self, name: str) -> Node:
        """The node called ``name`` (as RabbitMQ names it, ``lt-c1-...@localhost``)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    # -- the environment ------------------------------------------------------------

    def _env(self, node: Node | None = None) -> dict[str, str]:
        """The environment of a server or control command: the cluster's, never the machine's."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
            "HOME": str(self.home),  # its .erlang.cookie is the cluster's
            "LANG": "C.UTF-8",
            # Not /etc/rabbitmq/rabbitmq-env.conf, which names the machine's node.
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        if node is not None:
            env.update(
                {
                    "RABBITMQ_NODENAME": node.name,
                    # Erlang distribution (node to node, rabbitmqctl) on loopback too.
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                        "-kernel inet_dist_use_interface {127,0,0,1}"
                    ),
                    "RABBITMQ_NODE_PORT": str(node.amqp_port),
                    "RABBITMQ_DIST_PORT": str(node.dist_port),
                    "RABBITMQ_MNESIA_BASE": str(node.folder / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(node.folder / "log"),
                    "RABBITMQ_PID_FILE": str(node.folder / "pid"),
                    # Its own files only: not /etc/rabbitmq's rabbitmq.conf,
                    # conf.d/ or advanced.config (the machine node's TLS).
                    "RABBITMQ_CONFIG_FILE": str(node.folder / "conf.d" / "rabbitmq.conf"),
                    "RABBITMQ_CONFIG_FILES": str(node.folder / "conf.d"),
                    "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.folder / "advanced.config"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
                }
            )
        return env

    def _write_files(self) -> None:
        self.home.mkdir(parents=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.root / "rabbitmq-env.conf").write_text("# the cluster's own: nothing\n")
        (self.root / "enabled_plugins").write_text(
            "[rabbitmq_management,rabbitmq_consistent_hash_exchange].\n"
        )
        for node in self.nodes:
            (node.folder / "conf.d").mkdir(parents=True)
            (node.folder / "advanced.config").write_text("[].\n")
            (node.folder / "conf.d" / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
                f"management.tcp.ip = 127.0.0.1\n"
                f"management.tcp.port = {node.api_port}\n"
                # guest over loopback, as the machine's development node.
                "loopback_users.guest = true\n"
                # A stopped node is the test, not a partition to heal by hand.
                "cluster_partition_handling = pause_minority\n"
                # Statistics every second, so the audit's counts are fresh.
                "collect_statistics_interval = 1000\n"
            )

    # -- commands -------------------------------------------------------------------

    async def ctl(
        self,
        node: Node,
        *arguments: str,
        timeout: float = COMMAND_TIMEOUT_S,
        tool: str = "rabbitmqctl",
    ) -> str:
        """``rabbitmqctl -n NODE ...`` (or another of RabbitMQ's ``tool``); its output, or
        :class:`ClusterError` if it fails."""
        process = await asyncio.create_subprocess_exec(
            str(RABBITMQ_BIN / tool),
            "-n",
            node.name,
            *arguments,
            env=self._env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ClusterError(
                f"{tool} -n {node.name} {' '.join(arguments)}: no answer in {timeout:.0f} s"
            ) from None
        text = output.decode("utf-8", "replace")
        if process.returncode != 0:
            raise ClusterError(
                f"{tool} -n {node.name} {' '.join(arguments)} failed ({process.returncode}): {text}"
            )
        return text

    async def start_node(self, node: Node) -> None:
        """Start ``node``'s server and wait until it serves (a stopped member rejoins by itself)."""
        assert node.process is None or node.process.returncode is not None, node.name
        log = node.log.open("ab")
        try:
            node.process = await asyncio.create_subprocess_exec(
                str(RABBITMQ_BIN / "rabbitmq-server"),
                env=self._env(node),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=node.folder,
                # Its own process group: stopped or killed by that group's id alone.
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            # Waits for the pid file, then for the node to run (await_startup
            # would fail on a node not yet known to epmd).
            await self.ctl(
                node, "wait", str(node.folder / "pid"), "--timeout", str(int(START_TIMEOUT_S)),
                timeout=START_TIMEOUT_S + 10,
            )  # fmt: skip
        except ClusterError as error:
            raise ClusterError(f"{error}\n--- {node.log}:\n{self._tail(node)}") from None

    async def stop_node(self, node: Node) -> None:
        """Stop ``node`` as an operator would (``rabbitmqctl shutdown``): clients are told."""
        await self.ctl(node, "shutdown", timeout=STOP_TIMEOUT_S)
        await self._reap(node)

    async def kill_node(self, node: Node) -> None:
        """Kill ``node`` outright (SIGKILL to its process group): a machine that fails."""
        if node.process is not None and node.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
        await self._reap(node)

    async def restart_node(self, node: Node) -> None:
        """Stop ``node`` and start it again (a rolling restart's step)."""
        await self.stop_node(node)
        await self.start_node(node)

    async def _reap(self, node: Node) -> None:
        if node.process is None:
            return
        try:
            await asyncio.wait_for(node.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            await node.process.wait()

    def _tail(self, node: Node, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(node.log.read_text("utf-8", "replace").splitlines()[-lines:])
        return "(no output)"

    # -- the cluster ------------------------------------------------------------------

    async def start(self) -> None:
        """Start every node and join the others to the first."""
        self._write_files()
        await asyncio.gather(*(self.start_node(node) for node in self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            await self.ctl(node, "stop_app")
            await self.ctl(node, "join_cluster", first.name)
            await self.ctl(node, "start_app")
            await self.ctl(node, "await_startup", timeout=START_TIMEOUT_S)
        running = await self.running_nodes()
        if running != {node.name for node in self.nodes}:
            raise ClusterError(f"the cluster formed with {sorted(running)} only")

    async def running_nodes(self, via: Node | None = None) -> set[str]:
        """The names of the nodes running in the cluster, as a running node sees it."""
        node = via or next(n for n in self.nodes if self.is_up(n))
        text = await self.ctl(node, "eval", "rabbit_nodes:all_running().")
        return {name.strip(" '[]\n") for name in text.strip().strip("[]").split(",") if name}

    def is_up(self, node: Node) -> bool:
        """Whether ``node``'s server process is running."""
        return node.process is not None and node.process.returncode is None

    async def quorum_members(self, vhost: str, queue: str) -> tuple[str, list[str]]:
        """``(leader, members)`` of a quorum queue, asked of a running node."""
        node = next(n for n in self.nodes if self.is_up(n))
        text = await self.ctl(
            node, "list_queues", "-p", vhost, "--no-table-headers", "--quiet",
            "name", "leader", "members",
        )  # fmt: skip
        for line in text.splitlines():
            fields = line.split("\t")
            if fields[0] == queue:
                members = [m.strip(" '[]") for m in fields[2].strip("[]").split(",") if m.strip()]
                return fields[1].strip(), members
        raise ClusterError(f"no queue {queue} in vhost {vhost}: {text}")

    async def wait_all_running(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until every node runs in the cluster, as each running node sees it."""
        deadline = time.monotonic() + timeout
        names = {node.name for node in self.nodes}
        while True:
            try:
                if await self.running_nodes() == names:
                    return
            except ClusterError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"not every node runs after {timeout:.0f} s")
            await asyncio.sleep(0.5)

    async def wait_safe_to_stop(self, node: Node, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until stopping ``node`` leaves every quorum queue a majority of its members
        running (``rabbitmq-queues check_if_node_is_quorum_critical``), as a rolling
        restart must before each node."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.ctl(node, "check_if_node_is_quorum_critical", tool="rabbitmq-queues")
                return
            except ClusterError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.5)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the cluster's nodes (every process of their sessions;
        a restarted node counts from its restart)."""
        sessions = {node.process.pid for node in self.nodes if node.process and self.is_up(node)}
        ticks = os.sysconf("SC_CLK_TCK")
        used = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # After the command name in parentheses: state, ppid, pgrp,
                    # session, ... utime and stime are fields 14 and 15.
                    fields = stat.read().rpartition(")")[2].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[3]) in sessions:
                used += (int(fields[11]) + int(fields[12])) / ticks
        return used

    async def close(self) -> None:
        """Stop every node (killed if it does not stop) and delete the cluster's files."""
        for node in self.nodes:
            if self.is_up(node):
                try:
                    await self.stop_node(node)
                except ClusterError:
                    await self.kill_node(node)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def rabbit_cluster(root: Path) -> AsyncIterator[RabbitCluster]:
    """A started, joined three-node cluster under ``root``; stopped and deleted afterwards."""
    cluster = RabbitCluster(root)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()
