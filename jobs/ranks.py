"""The processes of one multi-device training (``runner.py --gpus 0,1`` or ``--cpu-ranks 2``).

Started the way ``torchrun`` starts a job, one process per device: rank 0 is the runner the
scheduler started (its pid is the job's, so an abort signals it). It picks a free rendezvous
port and starts ranks 1..N-1 as copies of itself with torchrun's variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); each rank then sets pycaffe's
solver count and rank before it builds its solver and joins the process group through
``caffe.NCCL`` (the engine's ``engine.parallel``: NCCL between GPUs, gloo on the CPU). Rank 0
passes a SIGTERM on to its peers, and a peer dies with rank 0 (``PR_SET_PDEATHSIG``), so a
killed job leaves no rank behind. Only rank 0 writes metrics, status, logs and snapshots.

Real pycaffe trains on one device here: its NCCL needs a Caffe built with it and threads in
one process, which the runner does not drive. A multi-device job on the pycaffe backend is
refused with that reason.

Python 3.9 and the standard library only (the runner imports it).
"""
import ctypes
import os
import signal
import socket
import subprocess
import sys

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
PEER_WAIT_S = 30.0  # after rank 0 ends, how long its peers get to end before they are killed


class RanksError(ValueError):
    pass


def parse_gpus(text):
    """``"0,1"`` → [0, 1]; RanksError naming the bad entry (duplicates too)."""
    gpus = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise RanksError("--gpus: '%s' is not a GPU index (a whole number >= 0)" % part)
        if int(part) in gpus:
            raise RanksError("--gpus: GPU %s is listed twice" % part)
        gpus.append(int(part))
    return gpus


class Ranks(object):
    """This process's place in its training: ``rank`` of ``world``, on ``device`` (a GPU index,
    or None on the CPU); ``peers`` are the processes rank 0 started."""

    def __init__(self, rank=0, world=1, gpus=None):
        self.rank, self.world = int(rank), int(world)
        self.gpus = list(gpus) if gpus else None
        self.peers = []

    @property
    def device(self):
        return self.gpus[self.rank] if self.gpus else None

    @property
    def writes(self):
        """Whether this rank writes the job's files (metrics, status, snapshots, log lines)."""
        return self.rank == 0

    def configure(self, caffe):
        """pycaffe's counters, set before the solver is built (its Data layers shard by them)."""
        if self.world == 1:
            return
        if not getattr(caffe, "__caffeseg_engine__", False) and getattr(caffe, "__name__", "") != "engine":
            raise RanksError("multi-device training runs on the engine backend only; real pycaffe "
                             "trains a job on one device here (choose one GPU, or the engine backend)")
        caffe.set_solver_count(self.world)
        caffe.set_solver_rank(self.rank)
        caffe.set_multiprocess(True)

    def attach(self, caffe, solver):
        """The gradient exchange on ``solver``: rank 0's weights to all, then the solver callback
        (pycaffe's ``NCCL(solver, uid)``, ``bcast()``, ``add_callback``). None for one rank."""
        if self.world == 1:
            return None
        nccl = caffe.NCCL(solver, b"")  # rendezvous through MASTER_ADDR/MASTER_PORT
        nccl.bcast()
        solver.add_callback(nccl)
        return nccl

    # -- rank 0: the peers ---------------------------------------------------------------------
    def launch_peers(self, runner, argv, env=None):
        """Start ranks 1..world-1 as ``python runner argv`` with torchrun's variables; sets this
        process's own (rank 0's) in ``os.environ``."""
        env = dict(os.environ if env is None else env)
        common = {"WORLD_SIZE": str(self.world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        os.environ.update(common, RANK="0", LOCAL_RANK="0")
        for rank in range(1, self.world):
            peer_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), **common)
            self.peers.append(subprocess.Popen([sys.executable, runner] + list(argv), env=peer_env,
                                               preexec_fn=_die_with_parent))

    def signal_peers(self, signum):
        for peer in self.peers:
            if peer.poll() is None:
                try:
                    peer.send_signal(signum)
                except OSError:
                    pass

    def finish(self, timeout=PEER_WAIT_S):
        """Wait for the peers (killing those still running after ``timeout``); their exit codes."""
        codes = []
        for peer in self.peers:
            try:
                codes.append(peer.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                peer.kill()
                codes.append(peer.wait())
        return codes


def from_environment(gpus=None, cpu_ranks=1, env=None):
    """The ``Ranks`` of this process: a peer reads torchrun's variables, rank 0 (the process the
    scheduler started) gets world = len(gpus) or cpu_ranks."""
    env = os.environ if env is None else env
    world = len(gpus) if gpus else max(1, int(cpu_ranks or 1))
    if gpus and cpu_ranks and int(cpu_ranks) > 1:
        raise RanksError("--gpus and --cpu-ranks exclude each other")
    if "RANK" in env and world > 1:
        rank = int(env["RANK"])
        if int(env.get("WORLD_SIZE", world)) != world or not 0 <= rank < world:
            raise RanksError("RANK=%s WORLD_SIZE=%s do not fit %d ranks" % (env["RANK"], env.get("WORLD_SIZE"), world))
        return Ranks(rank, world, gpus)
    return Ranks(0, world, gpus)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent():
    # Linux: a peer gets SIGKILL when rank 0 dies (even by SIGKILL), so none is left waiting.
    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
