"""`adrepro run`: the active profile's DVC stages in dependency order, on a local pool or a Ray cluster.

The plan is DVC's own: the stage graph of the generated dvc.yaml and `dvc status` decide what is stale
(a stale stage reruns its descendants too). Each stage runs its `cmd` in the project root (a shared
filesystem on a cluster), is `dvc commit`ted as soon as it succeeds (so `dvc repro` afterwards runs
nothing and a stopped run continues where it stopped), and the final stages (track, latency, report)
run once at the end. `--budget` stops starting stages when the time is spent, highest-priority
experiments first (`run.priority` in params.yaml); trainings cut off resume from their checkpoints.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import REPO_ROOT
from .config import ConfigError, load_params, profile_config
from .results import write_json

FINAL = ("track", "latency", "report")  # run once, after every experiment stage
RUN_DIR = Path(".adrepro") / "run"
CODE_DIRS = ("adrepro", "methods", "datasets", "pipelines")  # a stage's code, snapshot when it starts
_PR_SET_PDEATHSIG = 1


@dataclass
class Job:
    name: str  # DVC stage address, e.g. train@a-t2-e1-loco-breakfast_tray-s0
    cmd: str
    needs: set[str] = field(default_factory=set)  # upstream stages in this plan
    rank: int = 0  # lower runs first (run.priority)
    code: str = ""  # code_fingerprint() when the stage started
    status: str = "queued"  # queued | running | done | failed | blocked | stopped
    seconds: float = 0.0
    node: str = ""
    attempts: int = 0
    started: float = 0.0  # wall clock (time.time) of the last start / end, for the run summary
    ended: float = 0.0

    @property
    def kind(self) -> str:
        return self.name.split("@", 1)[0]

    @property
    def experiment(self) -> str | None:
        return self.name.split("@", 1)[1] if "@" in self.name and self.kind in ("train", "evaluate", "skip") else None


def parse_budget(text: str | None) -> float | None:
    """'25m', '1h30m', '90s', '2h' -> seconds."""
    if not text:
        return None
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", text.strip())
    if not parts or not any(parts.groups()):
        raise ConfigError(f"--budget {text!r}: expected a duration such as 25m, 1h30m or 90s")
    h, m, s = (float(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def plan(root: Path, params: dict[str, Any], force: bool = False) -> dict[str, Job]:
    """Stale stages of dvc.yaml (and everything downstream of them), with their upstream links and priorities."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges: stage -> the stages it depends on
        stages = {s.addressing: s for s in graph.nodes if s.cmd}
        stale = set(stages) if force else set(repo.status()) & set(stages)
        upstream = {name: {d.addressing for d in graph.successors(s) if d.addressing in stages} for name, s in stages.items()}
    downstream: dict[str, set[str]] = {n: set() for n in stages}
    for name, ups in upstream.items():
        for u in ups:
            downstream[u].add(name)
    todo, frontier = set(stale), list(stale)
    while frontier:
        for d in downstream[frontier.pop()]:
            if d not in todo:
                todo.add(d)
                frontier.append(d)
    priority = list((params.get("run") or {}).get("priority") or [])
    jobs = {n: Job(n, stages[n].cmd if isinstance(stages[n].cmd, str) else " && ".join(stages[n].cmd),
                   upstream[n] & todo) for n in todo}
    for job in jobs.values():
        job.rank = _rank(job.experiment, priority)
    for name in list(jobs):  # data/teacher stages inherit the best rank of what needs them
        for u in _ancestors(name, upstream) & set(jobs):
            jobs[u].rank = min(jobs[u].rank, jobs[name].rank)
    return jobs


def _ancestors(name: str, upstream: dict[str, set[str]]) -> set[str]:
    out, frontier = set(), [name]
    while frontier:
        for u in upstream[frontier.pop()]:
            if u not in out:
                out.add(u)
                frontier.append(u)
    return out


def _rank(experiment: str | None, priority: list[str]) -> int:
    if experiment is None:
        return len(priority) + 1
    for i, variant in enumerate(priority):
        if experiment == variant or experiment.startswith(variant + "-"):
            return i
    return len(priority)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._-]", "_", name)


def execute_stage(name: str, cmd: str, root: str, env: dict[str, str]) -> dict[str, Any]:
    """Run one stage's command in ``root``; the child dies with this process (a killed worker leaves no orphan)."""
    run_dir = Path(root) / RUN_DIR
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    safe = _safe(name)
    (run_dir / f"{safe}.worker").write_text(str(os.getpid()))

    def die_with_parent() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    t0 = time.perf_counter()
    with open(run_dir / "logs" / f"{safe}.log", "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on {socket.gethostname()}: {cmd}\n".encode())
        log.flush()
        # `exec`: the stage process itself (not a shell above it) carries the death signal
        proc = subprocess.Popen(f"exec {cmd}", shell=True, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **env}, preexec_fn=die_with_parent, start_new_session=True)
        (run_dir / f"{safe}.pid").write_text(str(proc.pid))
        proc.wait()
    tail = (run_dir / "logs" / f"{safe}.log").read_text(errors="replace").splitlines()[-15:]
    return {"rc": proc.returncode, "seconds": time.perf_counter() - t0, "node": env.get("ADREPRO_NODE", ""),
            "tail": tail}


class LocalExecutor:
    """A pool of ``jobs`` concurrent stage processes on this machine."""

    name = "local"

    def __init__(self, root: Path, jobs: int):
        self.root, self.pool = root, ThreadPoolExecutor(max_workers=max(1, jobs))
        self.slots = max(1, jobs)

    def submit(self, job: Job) -> Future:
        return self.pool.submit(execute_stage, job.name, job.cmd, str(self.root), _env(job))

    def wait(self, handles: list[Any], timeout: float | None) -> list[Any]:
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Any) -> dict[str, Any]:
        return handle.result()

    def cancel(self, handle: Any, job: Job) -> None:
        """Stop the stage's process group (SIGTERM); a training keeps its last checkpoint."""
        if not handle.cancel():
            pid_file = self.root / RUN_DIR / f"{_safe(job.name)}.pid"
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Stages as Ray tasks with per-kind resource requests (params.yaml ``run.ray``); a task whose worker dies
    is retried (``max_retries``) and the stage resumes from its checkpoint; a stage that exits non-zero is not."""

    name = "ray"

    def __init__(self, root: Path, address: str | None, settings: dict[str, Any], use_gpu: bool):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--executor ray needs Ray: pip install -e '.[ray]'") from exc
        self.ray, self.root = ray, root
        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
        if address:
            init["address"] = address
        elif settings.get("num_cpus"):
            init["num_cpus"] = int(settings["num_cpus"])
        ray.init(**init)
        self.resources = settings.get("resources") or {}
        self.max_retries = int(settings.get("max_retries", 2))
        self.use_gpu = use_gpu
        self.task = ray.remote(_ray_stage)
        self.slots = 10**6  # Ray queues by resources

    def _options(self, job: Job) -> dict[str, Any]:
        res = dict(self.resources.get("default") or {"num_cpus": 1})
        res.update(self.resources.get(job.kind) or {})
        if not self.use_gpu:
            res.pop("num_gpus", None)
        return {"num_cpus": float(res.get("num_cpus", 1)), "num_gpus": float(res.get("num_gpus", 0)),
                "max_retries": self.max_retries, "retry_exceptions": False}

    def submit(self, job: Job) -> Any:
        return self.task.options(**self._options(job)).remote(job.name, job.cmd, str(self.root), _env(job))

    def wait(self, handles: list[Any], timeout: float | None) -> list[Any]:
        done, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        return done

    def result(self, handle: Any) -> dict[str, Any]:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayError as exc:  # worker died more often than max_retries, or cancelled
            return {"rc": -1, "seconds": 0.0, "node": "", "tail": [f"{type(exc).__name__}: {exc}"[:2000]]}

    def cancel(self, handle: Any, job: Job) -> None:
        self.ray.cancel(handle, force=True)

    def close(self) -> None:
        self.ray.shutdown()


def _ray_stage(name: str, cmd: str, root: str, env: dict[str, str]) -> dict[str, Any]:
    import ray

    gpus = ray.get_gpu_ids()
    env = {**env, "ADREPRO_NODE": socket.gethostname(), "ADREPRO_GPU": ",".join(str(g) for g in gpus) or "none"}
    return execute_stage(name, cmd, root, env)


def _env(job: Job) -> dict[str, str]:
    return {"ADREPRO_ROOT": str(REPO_ROOT), "ADREPRO_NODE": socket.gethostname(), "ADREPRO_STAGE": job.name}


def code_fingerprint(root: Path) -> str:
    """Hash of the project's code and params.yaml: a stage is committed only if these did not change while it ran
    (else its lock would record code that did not produce its outputs)."""
    import hashlib

    h = hashlib.sha256()
    files = [p for d in CODE_DIRS for p in sorted((root / d).rglob("*.py"))] + [root / "params.yaml"]
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _commit(root: Path, names: list[str]) -> None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        for name in names:
            repo.commit(name, force=True)


def run(executor: Any, jobs: dict[str, Job], budget_s: float | None, root: Path = REPO_ROOT,
        out: Any = sys.stderr, commit: Any = _commit) -> int:
    """Schedule ``jobs`` on ``executor``; returns 0 when every stage that was started succeeded."""
    t0 = time.monotonic()
    running: dict[Any, Job] = {}
    spent = False

    def say(msg: str) -> None:
        c = {s: sum(j.status == s for j in jobs.values()) for s in ("done", "running", "failed", "queued", "blocked")}
        print(f"[run {time.monotonic() - t0:7.1f}s] done {c['done']}  running {c['running']}  failed {c['failed']}  "
              f"queued {c['queued']}  blocked {c['blocked']}  | {msg}", file=out, flush=True)

    def ready() -> list[Job]:
        body_left = any(j.kind not in FINAL and (j.status == "running" or (j.status == "queued" and not spent))
                        for j in jobs.values())
        out_ = []
        for j in jobs.values():
            if j.status != "queued" or (spent and j.kind not in FINAL):
                continue
            if j.kind in FINAL and body_left:
                continue
            if all(jobs[u].status == "done" for u in j.needs) or (spent and j.kind in FINAL):
                out_.append(j)
        return sorted(out_, key=lambda j: (j.rank, FINAL.index(j.kind) if j.kind in FINAL else -1, j.name))

    say(f"{len(jobs)} stage(s) to run on {executor.name}" + (f", budget {budget_s:.0f}s" if budget_s else ""))
    while True:
        for j in jobs.values():  # a failed upstream blocks its descendants
            if j.status == "queued" and any(jobs[u].status in ("failed", "blocked") for u in j.needs) and not (
                    spent and j.kind in FINAL):
                j.status = "blocked"
        for j in ready()[: max(0, executor.slots - len(running))]:
            j.status, j.attempts, j.started, j.code = "running", j.attempts + 1, time.time(), code_fingerprint(root)
            running[executor.submit(j)] = j
        if not running:
            break
        timeout = None if budget_s is None or spent else max(0.1, budget_s - (time.monotonic() - t0))
        done = executor.wait(list(running), timeout)
        if not done and budget_s is not None and not spent:
            spent = True
            for h, j in list(running.items()):
                if j.kind not in FINAL:
                    executor.cancel(h, j)
                    j.status = "stopped"
                    running.pop(h)
            say("budget spent: stopped starting stages; cut-off trainings resume from their checkpoints")
            continue
        for h in done:
            j = running.pop(h)
            res = executor.result(h)
            j.seconds, j.node, j.ended = res["seconds"], res.get("node", ""), time.time()
            if res["rc"] == 0 and code_fingerprint(root) != j.code:
                j.status = "failed"
                say(f"{j.name} NOT committed: code or params.yaml ({', '.join(CODE_DIRS)}) changed while it ran; "
                    "its outputs may not match the recorded code: run it again")
            elif res["rc"] == 0:
                j.status = "done"
                if not (spent and j.kind in FINAL):
                    commit(root, [j.name])
                say(f"{j.name} ok ({j.seconds:.1f}s{' on ' + j.node if j.node else ''})")
            else:
                j.status = "failed"
                say(f"{j.name} FAILED (exit {res['rc']}):\n    " + "\n    ".join(res["tail"]))
    write_json(root / RUN_DIR / "summary.json", {"executor": executor.name, "budget_s": budget_s,
                                                 "stages": {n: asdict(j) | {"needs": sorted(j.needs)} for n, j in jobs.items()}})
    not_run = [j for j in jobs.values() if j.status in ("queued", "stopped")]
    failed = [j for j in jobs.values() if j.status in ("failed", "blocked")]
    print(f"\nsummary: {sum(j.status == 'done' for j in jobs.values())} done, {len(failed)} failed/blocked, "
          f"{len(not_run)} not run, {time.monotonic() - t0:.0f}s", file=out)
    for j in sorted(failed + not_run, key=lambda j: j.name):
        print(f"  {j.status:8s} {j.name}", file=out)
    if not_run:
        print("continue with `adrepro run` (finished stages are committed; trainings resume)", file=out)
    return 1 if failed else 0


def main(args: Any) -> int:
    params = load_params()
    prof = profile_config(params, params["profile"])
    settings = params.get("run") or {}
    executor_name = args.executor or settings.get("executor", "local")
    budget = parse_budget(args.budget)
    jobs = plan(REPO_ROOT, params, force=args.force)
    if args.dry_run:
        print(describe(jobs) or "nothing to run")
        return 0
    if not jobs:
        print("nothing to run: every stage is up to date (dvc status)", file=sys.stderr)
        return 0
    if executor_name == "ray":
        ex: Any = RayExecutor(REPO_ROOT, args.address, dict(settings.get("ray") or {}), prof.get("device") == "cuda")
    elif executor_name == "local":
        ex = LocalExecutor(REPO_ROOT, args.jobs or int(settings.get("jobs", 1)))
    else:
        raise ConfigError(f"--executor {executor_name!r}: expected local or ray")
    try:
        return run(ex, jobs, budget)
    finally:
        ex.close()


def describe(jobs: dict[str, Job]) -> str:
    """The plan, one stage a line: priority rank, stage, command."""
    return "\n".join(f"{j.rank:3d} {j.name}: {shlex.quote(j.cmd)}" for j in sorted(jobs.values(), key=lambda j: (j.rank, j.name)))
