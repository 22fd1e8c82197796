"""EfficientAD's training step and inference capture (issue 11, speed): the step as ``run_loop``'s ``step_fn``,
penalty images prepared ahead of their step, CUDA-graph capture of the fixed-shape step and inference."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from .model import augment_ae_input

if TYPE_CHECKING:
    from .method import EfficientAD

SAMPLING = ("shuffle", "replacement")
GRAPH_WARMUP = 3  # eager steps (on a side stream) before a training step is captured as a CUDA graph


def _image(item: Any) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


class ImageSampler:
    """Which training image step ``step`` uses (batch size 1, EfficientAD).

    ``shuffle``: epoch e = step // n visits every image once, in a permutation drawn from a generator seeded
    with (seed, e) alone, so a resumed run needs no extra state. ``replacement``: an independent uniform draw
    from the run's generator at every step."""

    def __init__(self, n: int, mode: str, seed: int, generator: torch.Generator):
        if mode not in SAMPLING:
            raise ValueError(f"efficientad: option 'sampling' must be one of {list(SAMPLING)}, got {mode!r}")
        if n < 1:
            raise ValueError("efficientad: empty image set")
        self.n, self.mode, self.seed, self.generator = n, mode, int(seed), generator
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1))

    def index(self, step: int) -> int:
        if self.mode == "replacement":
            return int(self.draw(self.generator))
        epoch, pos = divmod(step, self.n)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, self.permutation(epoch)
        return int(self._perm[pos])

    def draw(self, generator: torch.Generator) -> torch.Tensor | None:
        """What ``index`` takes from the run's generator (``replacement``: one draw; ``shuffle``: none), made on
        ``generator`` (the penalty look-ahead replays it on a copy)."""
        return torch.randint(self.n, (1,), generator=generator) if self.mode == "replacement" else None


def hard_loss_nosync(teacher: torch.Tensor, student: torch.Tensor, p_hard: float = 0.999) -> torch.Tensor:
    """``losses.hard_loss`` without the host sync of boolean indexing (CUDA, compile, graph capture): the mean of
    the elements >= the p_hard-quantile as a masked sum over the mask's count. Mathematically equal; the sum runs
    in another order, so it may differ from ``hard_loss`` in the last bits."""
    d = (teacher - student) ** 2
    d_hard = torch.quantile(d.detach().flatten(), p_hard)
    mask = d >= d_hard
    return torch.where(mask, d, torch.zeros((), dtype=d.dtype, device=d.device)).sum() / mask.sum()


class PenaltyPrefetcher:
    """EfficientAD's penalty image of each step, decoded and resized ahead of its step in a background thread.

    The step draws its penalty index from the run's generator as before; the thread replays the same draws on a
    copy of the generator (``schedule``) to know which images come next, so the images, and every number of the
    run, are those of decoding them inline. A step whose index was not predicted (a resumed run, a changed draw
    order) restarts the look-ahead from the generator's current state."""

    def __init__(self, dataset: Dataset, prepare: Callable[[Any], torch.Tensor], depth: int,
                 schedule: Callable[[torch.Tensor, int], Iterator[tuple[int, int]]]):
        self.dataset, self.prepare, self.depth, self.schedule = dataset, prepare, max(1, int(depth)), schedule
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._next: int | None = None  # the step whose image the queue's head holds
        self.hits = self.misses = 0

    def _work(self, q: queue.Queue, stop: threading.Event, state: torch.Tensor, start: int) -> None:
        try:
            for step, j in self.schedule(state, start):
                if stop.is_set():
                    return
                item = (step, j, self.prepare(self.dataset[j]))
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # surfaces in the main thread as a miss, which loads inline and re-raises there
            q.put((None, None, exc))

    def _restart(self, state: torch.Tensor, start: int) -> None:
        self.close()
        self._queue, self._stop = queue.Queue(maxsize=self.depth), threading.Event()
        self._thread = threading.Thread(target=self._work, args=(self._queue, self._stop, state, start),
                                        name="efficientad-penalty", daemon=True)
        self._thread.start()
        self._next = start

    def ready_for(self, step: int) -> bool:
        """Whether the look-ahead already runs for ``step`` (else ``get`` needs the generator state before it)."""
        return self._queue is not None and self._next == step

    def get(self, step: int, j: int, state_before: torch.Tensor | None) -> torch.Tensor:
        """The prepared penalty image ``j`` of ``step``. ``state_before``: the run generator's state before this
        step's draws, given when ``ready_for(step)`` was False (the look-ahead then starts at this step)."""
        if state_before is not None:
            self._restart(state_before, step)
        if self._queue is not None and self._next == step:
            got_step, got_j, img = self._queue.get()
            if got_step == step and got_j == j:
                self.hits += 1
                self._next = step + 1
                return img
        self.misses += 1  # not predicted (or the thread failed): inline, and look ahead again from the next step
        self.close()
        return self.prepare(self.dataset[j])

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._queue = self._stop = self._thread = None
        self._next = None


def compile_mode(name: str) -> str | None:
    return None if name == "default" else name


class GraphedForward:
    """The model's inference forward for one input shape captured as a CUDA graph (after warm-up passes on a side
    stream); a call copies the input into the captured buffer and replays. Captured under the caller's autocast
    state with the autocast weight cache off (cached casts would not be re-made at replay)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, warmup: int = 3):
        self.static_in = example.clone()
        enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")

        def run() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
                return model(self.static_in)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = run()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out  # the caller copies it to the host before the next replay


class Trainer:
    """EfficientAD's training step (Algorithm 1), ``run_loop``'s ``step_fn``: a training image (``sampling``), its
    AE augmentation and a penalty image drawn from the run's generator in that order, the losses, backward and an
    Adam step, then the lr schedule. The images stay on the device; the penalty images are prepared ahead
    (``penalty_prefetch``); the teacher's output on the training images comes from ``cache`` when given; the loss
    terms are returned as detached device tensors (``run_loop`` reads them every ``log_every`` steps, no per-step
    host sync). With ``cuda_graphs`` on CUDA the step after ``GRAPH_WARMUP`` eager ones is captured (forward,
    backward and a capturable Adam step) and replayed, re-captured when the lr changes."""

    def __init__(self, method: EfficientAD, images: torch.Tensor, penalty: Dataset | None, generator: torch.Generator,
                 seed: int, steps: int, cache: torch.Tensor | None = None):
        o, m = method.opt, method.model
        self.method, self.model, self.images, self.penalty, self.generator = method, m, images, penalty, generator
        self.cache, self.device, self.graphs = cache, method.device, method._graphs()
        trainable = [p for name, p in m.named_parameters() if not name.startswith("teacher.")]
        self.opt = torch.optim.Adam(trainable, lr=float(o["lr"]), weight_decay=float(o["weight_decay"]),
                                    **({"capturable": True} if self.graphs else {}))
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=max(1, int(float(o["lr_decay_at"]) * steps)),
                                                     gamma=0.1)
        self.sampler = ImageSampler(len(images), str(o["sampling"]), seed, generator)
        self.prefetch = None
        if penalty is not None and int(o["penalty_prefetch"]) > 0:
            self.prefetch = PenaltyPrefetcher(penalty, self.prepare_penalty, int(o["penalty_prefetch"]), self.schedule)
        self.loss_fn = method.training_losses
        if o["compile"] != "off":
            self.loss_fn = torch.compile(method.training_losses, mode=compile_mode(o["compile"]), dynamic=False)
        self.clone = o["compile"] in ("reduce-overhead", "max-autotune")  # cudagraph-backed outputs
        self.graph: Any = None
        self.graph_lr: float | None = None
        self.static: dict[str, torch.Tensor] = {}
        self.static_out: dict[str, torch.Tensor] = {}
        self.eager_steps = 0

    def state(self) -> dict[str, Any]:
        m = self.model
        state: dict[str, Any] = {"student": m.student, "aes": m.aes, "optimizer": self.opt, "scheduler": self.sched}
        if m.sfm is not None:
            state["sfm"] = m.sfm
        return state

    def prepare_penalty(self, item: Any) -> torch.Tensor:
        """A penalty dataset item as a [1,3,s,s] image (greyscale expanded, resized); pinned for the copy to CUDA."""
        p = _image(item).float()[None]
        p = self.model.resize(p.expand(-1, 3, -1, -1) if p.shape[1] == 1 else p)
        return p.contiguous().pin_memory() if self.device.type == "cuda" else p

    def schedule(self, state: torch.Tensor, start: int) -> Iterator[tuple[int, int]]:
        """(step, penalty index) from ``start`` on: ``__call__``'s draws replayed on a copy of the generator."""
        g = torch.Generator()
        g.set_state(state)
        probe, n = torch.zeros(1, 3, 1, 1), len(self.penalty)
        step = start
        while True:
            self.sampler.draw(g)
            augment_ae_input(probe, g)
            yield step, int(torch.randint(n, (1,), generator=g))
            step += 1

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        pf = self.prefetch
        state = None if pf is None or pf.ready_for(step) else self.generator.get_state()
        i = self.sampler.index(step)
        img = self.images[i:i + 1]
        aug = augment_ae_input(img, self.generator)
        pen = None
        if self.penalty is not None:
            j = int(torch.randint(len(self.penalty), (1,), generator=self.generator))
            pen = pf.get(step, j, state) if pf is not None else self.prepare_penalty(self.penalty[j])
            pen = pen.to(self.device, non_blocking=True)
        t_img = None if self.cache is None else self.cache[i:i + 1]
        out = self._graph_step(img, aug, pen, t_img) if self.graphs else self._eager_step(img, aug, pen, t_img)
        self.sched.step()
        return out

    def _terms(self, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        terms = {"loss": out["total"], "hard": out["hard"], "penalty": out["penalty"], "ae": out["ae"]}
        return {k: v.detach().clone() if self.clone else v.detach() for k, v in terms.items()}

    def _eager_step(self, img, aug, pen, t_img) -> dict[str, torch.Tensor]:
        out = self.loss_fn(img, aug, pen, t_img)
        self.opt.zero_grad(set_to_none=True)
        out["total"].backward()
        self.opt.step()
        return self._terms(out)

    def _graph_step(self, img, aug, pen, t_img) -> dict[str, torch.Tensor]:
        if self.eager_steps < GRAPH_WARMUP:  # real steps, on a side stream as capture requires
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._eager_step(img, aug, pen, t_img)
            torch.cuda.current_stream().wait_stream(side)
            self.eager_steps += 1
            return out
        inputs = {"img": img, "aug": aug, "pen": pen, "t_img": t_img}
        if not self.static:
            self.static = {k: v.clone() for k, v in inputs.items() if v is not None}
        else:
            for k, v in self.static.items():
                v.copy_(inputs[k])
        lr = self.opt.param_groups[0]["lr"]
        if self.graph is None or lr != self.graph_lr:  # capturable Adam bakes a float lr into the graph
            self.graph = None
            self.opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.loss_fn(self.static["img"], self.static["aug"], self.static.get("pen"), self.static.get("t_img"))
                out["total"].backward()
                self.opt.step()
            self.static_out = self._terms(out)
            self.graph, self.graph_lr = graph, lr
        self.graph.replay()
        return {k: v.clone() for k, v in self.static_out.items()}

    def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
