"""Run each step in a process of its own, so that a step past its timeout can be stopped.

A thread cannot be killed: the thread executor can only abandon a step that overruns its
``timeout``. Here each step runs in a child process forked from the run, up to ``workers`` at
once; the child computes (load inputs, call the asset, store the value) and sends back what
happened. A step past its timeout is terminated (SIGTERM, then SIGKILL) and recorded as
``timeout``; a step whose process dies (a segfault, the OOM killer) fails alone with the exit
code. Bookkeeping stays in the parent, as with threads ("record after store" holds).

Needs the ``fork`` start method (Linux, macOS). The child inherits the pipeline, so assets defined
anywhere (a notebook, a test) work; resources are set up inside each step's process and torn down
when it ends, and values are only handed back when they pickle.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flowstone._errors import ExecutionError, StepTimeout, format_traceback

TERMINATE_GRACE_S = 5.0
STOP_POLL_S = 0.25


@dataclass
class ChildOutcome:
    """What a step's process sends back: the runner's result, plus facts about the process."""

    result: Any
    pid: int


class ProcessStepExecutor:
    """Runs steps in forked child processes, ``workers`` at a time (see the module docstring)."""

    name = "processes"
    isolates = True

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("parallel must be at least 1")
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ValueError("the process executor needs the 'fork' start method (Linux or macOS)")
        self._mp = multiprocessing.get_context("fork")
        self.capacity = workers
        self._watchers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flowstone-proc")
        self._children: dict[int, Any] = {}
        self._lock = threading.Lock()

    def submit(
        self,
        fn: Callable[[], Any],
        *,
        timeout: float | None = None,
        label: str = "step",
        stop_requested: Callable[[], bool] | None = None,
    ) -> Future[Any]:
        """Run ``fn`` in a child process. ``stop_requested`` is polled while it runs; when it
        turns true the child is terminated (a queue worker's step whose run was cancelled)."""
        return self._watchers.submit(self._run, fn, timeout, label, stop_requested)

    def _run(
        self,
        fn: Callable[[], Any],
        timeout: float | None,
        label: str,
        stop_requested: Callable[[], bool] | None = None,
    ) -> ChildOutcome:
        receiver, sender = self._mp.Pipe(duplex=False)
        process = self._mp.Process(target=_child, args=(fn, sender), name=f"flowstone-{label}", daemon=True)
        process.start()
        sender.close()
        pid = process.pid or 0
        with self._lock:
            self._children[pid] = process
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                wait = (
                    left
                    if stop_requested is None
                    else min(STOP_POLL_S, left if left is not None else STOP_POLL_S)
                )
                if receiver.poll(wait):
                    try:
                        outcome: ChildOutcome = receiver.recv()
                    except EOFError:  # the process died without a word
                        process.join()
                        return ChildOutcome(_died(label, process.exitcode), pid)
                    process.join()
                    return outcome
                if stop_requested is not None and stop_requested():
                    _stop(process)
                    return ChildOutcome(
                        ExecutionError(
                            f"step {label} was stopped: its run was cancelled and its process "
                            f"(pid {pid}) terminated",
                            context={"pid": pid, "terminated": True, "cancelled": True},
                        ),
                        pid,
                    )
                if deadline is not None and time.monotonic() >= deadline:
                    break
            _stop(process)
            return ChildOutcome(
                StepTimeout(
                    f"step {label} did not finish within its timeout of {timeout:g}s; its process "
                    f"(pid {process.pid}) was terminated",
                    context={"timeout_s": timeout, "pid": pid, "terminated": True},
                ),
                pid,
            )
        finally:
            receiver.close()
            with self._lock:
                self._children.pop(pid, None)

    def shutdown(self) -> None:
        """Stop: a run that ends normally has no child left; an interrupted one has them killed."""
        with self._lock:
            children = list(self._children.values())
        for process in children:
            _stop(process)
        self._watchers.shutdown(wait=False, cancel_futures=True)


def _stop(process: Any) -> None:
    if process.is_alive():
        process.terminate()
        process.join(TERMINATE_GRACE_S)
    if process.is_alive():
        process.kill()
        process.join()


def _died(label: str, exitcode: int | None) -> ExecutionError:
    how = f"was killed by signal {-exitcode}" if exitcode and exitcode < 0 else f"exited with code {exitcode}"
    if exitcode and exitcode < 0:
        with contextlib.suppress(ValueError):
            how += f" ({signal.Signals(-exitcode).name})"
    return ExecutionError(
        f"the process running step {label} {how} before reporting a result",
        context={"exit_code": exitcode},
        retryable=False,
    )


class _Terminated(BaseException):
    """Raised in a step's process by SIGTERM (its timeout, or its run cancelled): not an
    ``Exception``, so no step code's handler takes it, and the ``finally`` blocks on the way out
    run (the step's resources are torn down)."""


def _terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the teardown short
    raise _Terminated


def _child(fn: Callable[[], Any], sender: Any) -> None:
    """In the forked process: compute, send the outcome, and leave without running the parent's
    exit handlers or flushing its copies of buffers a second time.

    SIGTERM gets a handler of the child's own: the one inherited (a queue worker's, which only
    asks the worker to stop) would leave the step running until the SIGKILL, and Python's
    default would end the process without tearing down the step's resources.
    """
    code = 0
    signal.signal(signal.SIGTERM, _terminated)
    try:
        try:
            result = fn()
        except _Terminated:
            raise  # the parent has stopped waiting for an outcome
        except BaseException as exc:  # reported to the parent as the step's failure
            result = ExecutionError(
                f"step failed in its process: {type(exc).__name__}: {exc}",
                context={"traceback": format_traceback(exc)},
            )
        outcome = ChildOutcome(result, os.getpid())
        try:
            sender.send(outcome)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            strip = getattr(result, "without_value", None)
            if strip is None:
                raise
            sender.send(ChildOutcome(strip(f"{type(exc).__name__}: {exc}"), os.getpid()))
    except _Terminated:
        code = 128 + signal.SIGTERM
    except BaseException:
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sender.close()
        os._exit(code)
