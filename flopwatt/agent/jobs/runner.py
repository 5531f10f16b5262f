"""Runs the jobs the collector asks for and streams status and results back.

Jobs run one at a time per agent, off the sampler's thread, so the sampler keeps sampling; each
result carries the conditions (energy, mean power, clocks, throttle reasons) the sampler recorded
over that job's own window. Simulated devices answer with simulated timings (:mod:`.sim_jobs`);
real devices run the benchmarks in a child process (:mod:`.real_jobs`) so a crash or an
out-of-memory in torch cannot take the sampler down.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from typing import TYPE_CHECKING, Any

from flopwatt.records import JobKind, JobResult, JobSpec, JobState, JobStatus

if TYPE_CHECKING:
    from flopwatt.agent.agent import Agent

log = logging.getLogger(__name__)


class JobUnavailableError(RuntimeError):
    """This agent cannot run the job (the message says why); reported as UNAVAILABLE."""


class JobCancelledError(RuntimeError):
    """The agent is stopping: the job was cut short (its child process killed)."""


CLOSE_TIMEOUT_S = 5.0
"""How long :meth:`JobRunner.close` waits for a cancelled job to wind up (s)."""


class JobRunner:
    """A queue of jobs worked by one thread (see module docstring)."""

    def __init__(self, agent: Agent, options: dict[str, Any]) -> None:
        self._agent = agent
        self._options = options
        self._queue: queue.SimpleQueue[tuple[str, JobSpec] | None] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flopwatt-jobs", daemon=True)
        self._thread.start()

    def submit(self, job_id: str, spec: JobSpec) -> None:
        """Queue a job (status QUEUED→RUNNING→… is streamed as it progresses)."""
        self._queue.put((job_id, spec))

    def close(self) -> None:
        """Cancel the current job (its child process is killed; it reports FAILED), drop the
        queued ones, and wait for the worker to finish (bounded)."""
        self._cancel.set()
        self._queue.put(None)
        self._thread.join(CLOSE_TIMEOUT_S)

    def _status(
        self, job_id: str, state: JobState, message: str = "", progress: float = 0.0
    ) -> None:
        self._agent.emit(JobStatus(job_id, state, message, progress))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job_id, spec = item
            if self._cancel.is_set():
                return
            self._status(job_id, JobState.RUNNING)
            attributor = self._agent.attributor
            uuids = [
                d.info.uuid
                for d in self._agent.sampler_devices()
                if not spec.device_uuids or d.info.uuid in spec.device_uuids
            ]
            if attributor is not None:
                attributor.job_started(uuids)
            try:
                results = self._execute(job_id, spec)
            except JobCancelledError as exc:
                self._status(job_id, JobState.FAILED, str(exc))
                return
            except JobUnavailableError as exc:
                self._status(job_id, JobState.UNAVAILABLE, str(exc))
                continue
            except Exception as exc:  # a job failure must never stop the agent
                log.error("job %s failed: %s\n%s", job_id, exc, traceback.format_exc())
                self._status(job_id, JobState.FAILED, f"{type(exc).__name__}: {exc}")
                continue
            finally:
                if attributor is not None:
                    attributor.job_finished(uuids)
            for result in results:
                self._agent.emit(result)
            self._status(job_id, JobState.SUCCEEDED, f"{len(results)} results")

    def _execute(self, job_id: str, spec: JobSpec) -> list[JobResult]:
        agent = self._agent
        wanted = set(spec.device_uuids)
        devices = [d for d in agent.sampler_devices() if not wanted or d.info.uuid in wanted]
        if not devices:
            raise JobUnavailableError("none of the requested devices is available on this agent")
        if spec.kind is None:
            raise JobUnavailableError("job names no kind")
        if agent.backend.name == "sim":
            from flopwatt.agent.jobs import sim_jobs

            return sim_jobs.run(job_id, spec, devices, agent.sampler, self._options, self._cancel)
        from flopwatt.agent.jobs import real_jobs

        if spec.kind is JobKind.GEMM or spec.kind is JobKind.MODEL:
            return real_jobs.run(
                job_id, spec, devices, agent.sampler, agent.backend, self._options, self._cancel
            )
        raise JobUnavailableError(f"unknown job kind {spec.kind}")
