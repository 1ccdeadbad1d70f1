"""Host a TrafficAgent on its own event loop thread, bridged to the caller's loop.

The agent gets a loop of its own (uvloop when installed: cheaper per request, see bench/)
and never shares it with its host: inside a Ray actor the actor's loop only relays encoded
batches, and in-process (tests, the local fleet) the coordinator's loop stays free for
aggregation.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator

from horde.agents.spec import AgentSpec
from horde.agents.traffic import TrafficAgent


class _Done:
    """The agent thread's last item: the stream has ended (a type of its own, so the queue stays typed)."""


_DONE = _Done()
SETTLE_S = 2.0  # at most this long for the agent's leftover tasks to end once cancelled


# The agent's scheduling priority (nice) over what shares its core: Ray's daemons, the
# coordinator, the node monitor. The agent's clock readings (send times, and end times
# where the kernel gives no receive stamp) wait for it to be scheduled; at -10 its CFS
# weight is ~9x a default task's. Lowering nice needs CAP_SYS_NICE (root, or a container
# granted it); without it the agent runs at its default priority and says so (priority()).
# Never a real-time policy: a loop that spins would starve the node.
_NICE_TEXT = os.environ.get("HORDE_AGENT_NICE", "-10")
_NICE_PROBLEM: str | None = None
try:
    AGENT_NICE = max(-20, min(19, int(_NICE_TEXT)))
except ValueError:  # the default rather than an agent that cannot start; raise_priority() reports it
    AGENT_NICE = -10
    _NICE_PROBLEM = f"HORDE_AGENT_NICE={_NICE_TEXT[:40]!r} is not a whole number; -10 used"


def raise_priority(whole_process: bool = False, nice: int = AGENT_NICE) -> dict:
    """Set the calling thread's nice to `nice` (every thread of the process: `whole_process`,
    so that a thread holding the GIL is not preempted by what the agent is favoured over).

    Returns what was obtained: {"nice": the calling thread's nice after, "threads": how many
    were set, "error": why not, when not}. Never raises."""
    if not hasattr(os, "setpriority") or nice == 0:
        return {"nice": 0, "threads": 0, "error": "not asked" if nice == 0 else "no setpriority here"}
    tids = [threading.get_native_id()]
    if whole_process:
        try:
            tids = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError:
            pass
    done, error = 0, None
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            done += 1
        except OSError as exc:  # no CAP_SYS_NICE (EACCES/EPERM), or the thread just ended (ESRCH)
            error = f"{type(exc).__name__}: {exc.strerror}"
    try:
        now = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except OSError:
        now = 0
    out: dict = {"nice": now, "threads": done}
    if error is not None and done < len(tids):
        out["error"] = error
    elif _NICE_PROBLEM is not None:
        out["error"] = _NICE_PROBLEM
    return out


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()


def _settle(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the agent left on `loop` (connects still pending in a partition, their
    timers) and let it end while the loop still runs. Closing the loop first leaves uvloop
    to cancel those connects itself, and each one's callback then fails on the closed loop
    ("RuntimeError: Event loop is closed", once per connect; issue 12). As asyncio.run does."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            # Bounded: a task that ignored its cancel must not hold the agent's thread.
            loop.run_until_complete(asyncio.wait(pending, timeout=SETTLE_S))
        loop.run_until_complete(loop.shutdown_asyncgens())
    except Exception:  # the agent's result is already decided; tidying up must not replace it
        pass


class AgentRunner:
    def __init__(self, spec: AgentSpec, *, lease_term_s: float | None = None) -> None:
        """`lease_term_s`: fence the agent unless its consumer takes its batches (stream()); None: no lease."""
        self.spec = spec
        self._agent = TrafficAgent(spec, lease_term_s=lease_term_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._stop_requested = False
        self.priority: dict = {}  # what raise_priority obtained for the agent's thread (after stream() began)

    def stop(self) -> None:
        """Ask the agent to stop sending (thread-safe; in-flight requests may finish)."""
        with self._lock:
            self._stop_requested = True
            loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._agent.request_stop)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    def ack(self, seq: int) -> None:
        """The coordinator received batch `seq` (thread-safe; extends the agent's lease).
        stream() calls it as its consumer takes the batches."""
        with self._lock:
            loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._agent.ack, seq)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    def lease_stats(self) -> dict:
        """The agent's lease figures (agents/lease.py; a read of a few ints, any thread)."""
        return self._agent.lease_stats()

    async def stream(
        self, start_wall_ns: int, resume_ns: int | None = None, *, acked_behind: int = 0
    ) -> AsyncIterator[bytes]:
        """Run the agent from the common start instant; yield its encoded batches. A
        replacement's schedule resumes at `resume_ns` of the run (None: at its own now).

        The consumer's demand is the lease's acknowledgement (agents/lease.py): when the
        consumer asks for the batch after batch n, it holds the batch `acked_behind` before
        n, which is then acked. In process the consumer asks only once it has taken batch n
        (0). Through a Ray stream with a backpressure of one object, the actor's yield of n
        returns once the coordinator took n's reference, which it does only after it
        received n - 1 (1; cluster/fleet.py). A consumer that stops asking, or is closed,
        acks nothing more, so the agent's lease lapses within its term."""
        if acked_behind < 0:
            raise ValueError(f"acked_behind must be >= 0, got {acked_behind}")
        consumer = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BaseException | _Done] = asyncio.Queue()

        def put(item: bytes | BaseException | _Done) -> None:
            try:
                consumer.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # consumer loop gone: nobody is listening any more
                pass

        def main() -> None:
            self.priority = raise_priority()
            loop = new_event_loop()
            asyncio.set_event_loop(loop)
            with self._lock:
                self._loop = loop
                if self._stop_requested:
                    self._agent.request_stop()
            try:
                loop.run_until_complete(self._agent.run(start_wall_ns, put, resume_ns))
            except BaseException as exc:  # surfaces in the consumer as the stream's error
                put(exc)
            finally:
                with self._lock:
                    self._loop = None
                _settle(loop)
                put(_DONE)
                loop.close()

        thread = threading.Thread(target=main, name=f"horde-agent-{self.spec.index}", daemon=True)
        thread.start()
        seq = 0  # the n-th batch of a stream is the agent's batch seq n
        while True:
            item = await queue.get()
            if isinstance(item, _Done):
                break
            if isinstance(item, BaseException):
                raise item
            yield item
            if seq >= acked_behind:  # the consumer asked for more: it holds batch seq - acked_behind
                self.ack(seq - acked_behind)
            seq += 1


# Threads that run an agent (AgentRunner.stream names them so), and the modules that Python
# users' files are loaded into (agents/users.py load_user_class).
_AGENT_THREAD_PREFIX = "horde-agent-"
_USER_MODULE_PREFIX = "horde_user_"


def reset_for_reuse(runner: AgentRunner | None, timeout_s: float = SETTLE_S + 1.0) -> bool:
    """Make this process ready to host another run's agent (a pooled Ray actor, cluster/pool.py).

    Stops `runner`'s agent, waits (blocking, at most `timeout_s`) for every agent thread of the
    process to end, and drops the modules that Python users' files were loaded into (their
    module-level state). Everything else an agent holds (endpoint tables, data feeds, lease
    and fence, batch sequence, stamps, send timers) lives in its AgentRunner and TrafficAgent,
    which the next run builds anew from its own spec. False: an agent thread still runs; the
    process must not host another agent.
    """
    if runner is not None:
        runner.stop()
    deadline = time.monotonic() + timeout_s
    for t in threading.enumerate():
        if t.name.startswith(_AGENT_THREAD_PREFIX) and t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
    for name in [m for m in sys.modules if m.startswith(_USER_MODULE_PREFIX)]:
        sys.modules.pop(name, None)
    return not any(t.is_alive() and t.name.startswith(_AGENT_THREAD_PREFIX) for t in threading.enumerate())
