"""Run a solver backend in its own process, so that solver libraries never share an
interpreter (/work/shared/INFRA_NOTES.md). One long-lived `python -m phaze.sched.worker`
per backend, spoken to over a pipe with length-prefixed pickles. Anything the solver
library prints goes to stderr; the protocol uses a private copy of stdout."""

from __future__ import annotations

import atexit
import os
import pickle
import select
import struct
import subprocess
import sys

from phaze.sched.backends import LicenceError, run_backend_inprocess
from phaze.sched.problem import SchedProblem

_WORKERS: dict[str, subprocess.Popen] = {}


class WorkerCrash(RuntimeError):
    pass


def _send(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)) + data)
    f.flush()


def _read_exact(f, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _recv(f):
    (n,) = struct.unpack("<Q", _read_exact(f, 8))
    return pickle.loads(_read_exact(f, n))


def _start(solver: str) -> subprocess.Popen:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.Popen([sys.executable, "-m", "phaze.sched.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the worker (Linux): SIGKILL when the parent dies, so a killed job never leaves a
    solver running (prctl PR_SET_PDEATHSIG). Elsewhere the pipe's EOF ends it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass


def _kill(solver: str) -> None:
    proc = _WORKERS.pop(solver, None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def call(solver, p, formulation, settings, hint, ub):
    """Run the backend in its worker. LicenceError propagates; a dead or hung worker
    (no answer within the time limit + 60 s) becomes WorkerCrash."""
    proc = _WORKERS.get(solver)
    if proc is None or proc.poll() is not None:
        proc = _WORKERS[solver] = _start(solver)
    try:
        _send(proc.stdin, (solver, p.to_dict(), formulation, settings, hint, ub))
        ready, _, _ = select.select([proc.stdout], [], [], float(settings["time_limit_s"]) + 60.0)
        if not ready:
            _kill(solver)
            raise WorkerCrash("worker did not answer in time")
        kind, payload = _recv(proc.stdout)
    except (EOFError, BrokenPipeError, OSError, pickle.UnpicklingError, struct.error) as e:
        _kill(solver)
        raise WorkerCrash(f"worker process died ({type(e).__name__})") from None
    if kind == "ok":
        return payload
    if kind == "licence":
        raise LicenceError(payload)
    raise WorkerCrash(payload)


def shutdown() -> None:
    for solver in list(_WORKERS):
        proc = _WORKERS.pop(solver)
        try:
            proc.stdin.close()
            proc.wait(timeout=5)
        except Exception:
            proc.kill()


atexit.register(shutdown)


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)          # solver chatter goes to stderr, never into the protocol
    inp = sys.stdin.buffer
    while True:
        try:
            req = _recv(inp)
        except EOFError:
            return
        solver, pd, formulation, settings, hint, ub = req
        try:
            res = run_backend_inprocess(SchedProblem.from_dict(pd), solver, formulation,
                                        settings, hint, ub)
            _send(out, ("ok", res))
        except LicenceError as e:
            _send(out, ("licence", str(e)))
        except Exception as e:  # reported to the caller, which falls back
            _send(out, ("error", f"{type(e).__name__}: {e}"))


if __name__ == "__main__":
    main()
