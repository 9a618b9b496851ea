"""Text-to-image: related vs unrelated negative prompts on Stable Diffusion 2 (paper §4.2, App. D.3, F, H).

One run draws all three images of every comparison. Sample id i is

    arm     a = i % 3          0 unguided reference, 1 related negative, 2 unrelated negative
    prompt  p = (i // 3) % P   which triplet of the prompt file
    replica k = i // (3 P)

and the three arms of one (prompt, replica) share the noise key i // 3: the sampler draws the same
initial and per-step noise for them, so each guided image has its unguided twin "at the same seed".
On reference rows `finalize` discards the method's output and takes plain classifier-free guidance,
so the reference is unguided whatever the method does. Any prefix of ids is made of whole triples
(metrics use the complete ones), and prompts rotate fastest, so a short run covers every prompt.

Convention (paper §4.2, docs/text-to-image.md): the method sees `uncond` := eps(positive prompt)
and `neg` := eps(negative prompt); `finalize` applies positive CFG around the method's output,
eps = eps_null + w (eps_method - eps_null), so the negative term is scaled by w as in diffusers'
StableDiffusionPipelineSafe. The three predictions come from one batched UNet forward.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.errors import BenchError
from bench.schedule import Step
from bench.tasks import Profile, Task, register
from metrics.base import MetricValue, metric

if TYPE_CHECKING:
    from datasets.stable_diffusion import ModelFacts

ARMS = ("reference", "related", "unrelated")
REFERENCE, RELATED, UNRELATED = 0, 1, 2
VERSION = "1"
CFG_SCALE = 7.5  # positive guidance w (diffusers' default for Stable Diffusion)
PROMPTS_FILE = Path(__file__).resolve().parent.parent / "datasets" / "prompts" / "paper_scenes.json"



# ---- paired arms (shared with bench/task_gmm_prompts.py) ------------------------------------

@dataclass(frozen=True)
class PairedLayout:
    """Sample id -> (replica, prompt, arm); the three arms of one (replica, prompt) share a noise key."""

    prompts: int = 1

    def arm(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) % 3

    def prompt(self, ids: np.ndarray) -> np.ndarray:
        return (np.asarray(ids, dtype=np.int64) // 3) % self.prompts

    def noise_keys(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) // 3

    def triples(self, n: int) -> np.ndarray:
        """Ids of the complete triples among samples 0..n-1: [T, 3] as (reference, related, unrelated)."""
        return np.arange(n // 3, dtype=np.int64)[:, None] * 3 + np.arange(3)[None, :]

    def rows(self, per_prompt: int) -> int:
        """Samples to draw for `per_prompt` images per prompt and arm."""
        return 3 * self.prompts * per_prompt


class PairedRuntime:
    """Binding of sample ids, shared noise, unguided reference rows and positive CFG."""

    layout: PairedLayout = PairedLayout()
    guidance: float = 1.0  # positive CFG scale w applied by finalize

    _bound: np.ndarray | None = None

    def bind_samples(self, ids: np.ndarray) -> None:
        """Called by the runner before a shard: which samples the next batch holds."""
        self._bound = np.asarray(ids, dtype=np.int64)

    def noise_keys(self, ids: np.ndarray) -> np.ndarray:
        return self.layout.noise_keys(ids)

    @property
    def extra_needs(self) -> tuple[str, ...]:
        return ("null",) if self.guidance != 1.0 else ()

    def bound_rows(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(prompt, arm) of each row of the current batch."""
        if self._bound is None or len(self._bound) != batch:
            raise BenchError("this task conditions each sample on its prompt and arm: the runner must call "
                             "runtime.bind_samples(ids) and pass noise_keys to the sampler (docs/text-to-image.md, 'Harness hooks')")
        return self.layout.prompt(self._bound), self.layout.arm(self._bound)

    def check_pairing(self, x: torch.Tensor, step: Step) -> None:
        """At the first step, rows sharing a noise key must start from the same x_T."""
        if step.index != 0:
            return
        _, first, inverse = np.unique(self.layout.noise_keys(self._bound), return_index=True, return_inverse=True)
        twins = torch.as_tensor(first[inverse], device=x.device)
        if not torch.equal(x, x[twins]):
            raise BenchError("paired arms did not start from the same noise: the sampler must draw noise by "
                             "runtime.noise_keys(ids) (docs/text-to-image.md, 'Harness hooks')")

    def finalize(self, eps: torch.Tensor, preds: dict[str, torch.Tensor]) -> torch.Tensor:
        """Positive CFG around the method's output; reference rows get plain CFG (no negative guidance)."""
        _, arm = self.bound_rows(len(eps))
        reference = torch.as_tensor(arm == REFERENCE, device=eps.device).reshape(-1, *([1] * (eps.dim() - 1)))
        eps = torch.where(reference, preds["uncond"], eps)
        if self.guidance == 1.0:
            return eps
        return preds["null"] + self.guidance * (eps - preds["null"])


def arm_trace_means(traces: dict[str, np.ndarray], layout: PairedLayout, n: int, name: str = "guidance_scale") -> dict[int, float]:
    """Mean of a traced per-sample quantity over steps and the samples of each arm."""
    if name not in traces:
        return {}
    values = traces[name][:, :n]
    arms = layout.arm(np.arange(values.shape[1]))
    return {arm: float(values[:, arms == arm].mean()) for arm in (RELATED, UNRELATED) if (arms == arm).any()}


def guidance_metrics(traces: dict[str, np.ndarray], layout: PairedLayout, n: int, samples: int) -> list[MetricValue]:
    """guidance_related / guidance_unrelated from the sampler's traces."""
    means = arm_trace_means(traces, layout, n)
    names = {RELATED: "guidance_related", UNRELATED: "guidance_unrelated"}
    return [metric(names[arm], value, samples) for arm, value in means.items()]


# ---- prompt sets --------------------------------------------------------------------------

@dataclass(frozen=True)
class Triplet:
    """A positive prompt with a related and an unrelated negative prompt."""

    id: str
    positive: str
    related: str
    unrelated: str
    neutral: str  # the alternative text of the zero-shot "is the related object there?" check
    dng: dict
    paper_scales: dict


def prompts_path() -> Path:
    """The prompt file: BENCH_PROMPTS, else the shipped paper scenes."""
    return Path(os.environ.get("BENCH_PROMPTS") or PROMPTS_FILE)


def load_prompts(path: Path) -> tuple[Triplet, ...]:
    """Triplets of a prompt file; BenchError naming the file and the problem."""
    try:
        data = json.loads(path.read_text())
        rows = data["triplets"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"prompt file {path}: {type(exc).__name__}: {exc}; expected {{\"triplets\": [{{\"id\", \"positive\", \"related\", \"unrelated\"}}, ...]}}") from None
    triplets = []
    for i, row in enumerate(rows):
        missing = [k for k in ("id", "positive", "related", "unrelated") if not isinstance(row.get(k), str) or not row.get(k)]
        if missing:
            raise BenchError(f"prompt file {path}: triplet {i} lacks {', '.join(missing)}")
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", row["id"]):
            raise BenchError(f"prompt file {path}: id {row['id']!r} must be lower-case letters, digits and dashes (it names a task)")
        triplets.append(Triplet(row["id"], row["positive"], row["related"], row["unrelated"], row.get("neutral") or row["positive"],
                                dict(row.get("dng", {})), dict(row.get("paper_scales", {}))))
    if not triplets or len({t.id for t in triplets}) != len(triplets):
        raise BenchError(f"prompt file {path}: needs at least one triplet and unique ids")
    return tuple(triplets)


# ---- the Stable Diffusion runtime -----------------------------------------------------------

class T2IRuntime(PairedRuntime):
    """Stable Diffusion as denoiser (one batched forward of null, positive and negative prompts), CLIP as judge."""

    dtype = torch.float32

    def __init__(self, triplets: tuple[Triplet, ...], guidance: float = CFG_SCALE):
        from datasets import stable_diffusion

        self.triplets, self.guidance = triplets, guidance
        self.layout = PairedLayout(len(triplets))
        self.model = stable_diffusion.load()
        texts = ["", *(t.positive for t in triplets), *(t.related for t in triplets), *(t.unrelated for t in triplets)]
        self.denoiser = stable_diffusion.SDDenoiser(self.model, self.model.encode(texts), self._contexts)
        self._decoded: tuple[torch.Tensor, np.ndarray] | None = None

    def _contexts(self, x: torch.Tensor, step: Step, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Row of the encoded texts conditioning each sample: "" | positive | related | unrelated."""
        prompt, arm = self.bound_rows(len(x))
        self.check_pairing(x, step)
        count = len(self.triplets)
        # Reference rows take the related prompt as `neg`: finalize ignores it, and traces stay meaningful.
        rows = {"null": np.zeros_like(prompt), "uncond": 1 + prompt,
                "neg": np.where(arm == UNRELATED, 1 + 2 * count + prompt, 1 + count + prompt)}
        unknown = set(names) - set(rows)
        if unknown:
            raise KeyError(f"text-to-image tasks provide {sorted(rows)}, not {sorted(unknown)}")
        return {name: rows[name] for name in names}

    def exact_trace(self, x: torch.Tensor, step: Step) -> dict[str, torch.Tensor]:
        return {}

    def images(self, x: torch.Tensor) -> np.ndarray:
        """Decoded uint8 images, computed once for evaluate and to_artifact."""
        if self._decoded is None or self._decoded[0] is not x:
            self._decoded = (x, self.model.decode(x))
        return self._decoded[1]

    def evaluate(self, x: torch.Tensor, traces: dict[str, np.ndarray], wanted: tuple[str, ...]) -> list[MetricValue]:
        from metrics.clip import clip_score, load_clip, q_metric, zero_shot

        triples = self.layout.triples(len(x))
        n = len(triples)
        if n == 0:
            return []
        judge = load_clip()
        embeddings = judge.image_embeddings(self.images(x)[triples.ravel()]).reshape(n, 3, -1)
        related, unrelated = clip_score(embeddings[:, 0], embeddings[:, 1]), clip_score(embeddings[:, 0], embeddings[:, 2])
        prompt = self.layout.prompt(triples[:, 0])
        concept = judge.text_embeddings([t.related for t in self.triplets])[prompt]
        neutral = judge.text_embeddings([t.neutral for t in self.triplets])[prompt]
        present_guided = zero_shot(embeddings[:, 1], concept, neutral, judge.logit_scale) > 0.5
        present_unguided = zero_shot(embeddings[:, 0], concept, neutral, judge.logit_scale) > 0.5
        values = [
            metric("clip_related", related.mean(), n),
            metric("clip_unrelated", unrelated.mean(), n),
            metric("q", q_metric(unrelated, related), n),
            metric("forbidden_rate", present_guided.mean(), n),
            metric("concept_unguided", present_unguided.mean(), n),
            *guidance_metrics(traces, self.layout, 3 * n, n),
        ]
        return [v for v in values if v.name in wanted]

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        return self.images(x)


# ---- tasks ----------------------------------------------------------------------------------

METRICS_T2I = ("clip_related", "clip_unrelated", "q", "forbidden_rate", "concept_unguided", "guidance_related", "guidance_unrelated")


CLIP_METRICS = ("clip_related", "clip_unrelated", "q", "forbidden_rate", "concept_unguided")


def _preflight(spec: str, path: Path, metrics: tuple[str, ...]) -> None:
    """Prompts, Stable Diffusion and (if a CLIP metric is wanted) CLIP weights present, else one line saying how."""
    from datasets.stable_diffusion import locate
    from metrics.clip import clip_spec, weights_path

    load_prompts(path)
    locate(spec)
    if set(metrics) & set(CLIP_METRICS):
        weights_path(clip_spec())


def _version(spec: str, prompt_bytes: bytes, guidance: float) -> str:
    """The task version: our definition plus a digest of the model, prompts, CLIP judge and CFG scale."""
    from metrics.clip import clip_spec

    digest = hashlib.sha256(json.dumps([spec, prompt_bytes.decode(errors="replace"), clip_spec().label(), guidance]).encode()).hexdigest()[:8]
    return f"{VERSION}+{digest}"


def _t2i_task(name: str, triplets: tuple[Triplet, ...], spec: str, facts: ModelFacts, path: Path, version: str) -> Task:
    from metrics.clip import clip_spec

    clip_label = clip_spec().label()
    layout = PairedLayout(max(1, len(triplets)))
    single = triplets[0] if len(triplets) == 1 else None
    return Task(
        name=name,
        version=version,
        family="text-to-image",
        description=(f"Stable Diffusion ({spec}): {'prompt ' + repr(single.positive) if single else f'{len(triplets)} prompt triplets'}, "
                     "related vs unrelated negative prompt; samples are (unguided, related, unrelated) triples sharing noise"),
        shape=facts.latent_shape,
        removed=-1,
        metrics=METRICS_T2I,
        profiles={"quick": Profile(samples=layout.rows(1), steps=50, batch_size=layout.rows(1)),
                  "paper": Profile(samples=layout.rows(32), steps=1000, batch_size=min(48, layout.rows(32)))},
        load=lambda: T2IRuntime(triplets),
        details=lambda: {"model": spec, **facts.as_dict(), "prompts_file": str(path), "clip": clip_label, "positive_cfg": CFG_SCALE,
                         "layout": "sample i: arm i % 3 (reference, related, unrelated), prompt (i // 3) % P, noise key i // 3",
                         "triplets": [vars(t) for t in triplets]},
        schedule=facts.schedule,
        predictions=("uncond", "neg", "null"),
        resources=lambda: (spec, str(path), clip_label),
        preflight=lambda metrics: _preflight(spec, path, metrics),
        quality_metric="q",
        safety_threshold=1.0,  # no safety gate: Q already rewards removing the related object
    )


def _register_all() -> None:
    """One task over every triplet of the prompt file, and one per triplet."""
    from datasets.stable_diffusion import model_spec, read_facts

    spec, path = model_spec(), prompts_path()
    facts = read_facts(spec)  # config files only; SD 2 base defaults when the weights are absent
    try:
        triplets = load_prompts(path)
    except BenchError:
        # A bad prompt file must not break `bench list`; the task's preflight reports it on one line.
        register(_t2i_task("sd2-related-unrelated", (), spec, facts, path, VERSION))
        return
    version = _version(spec, path.read_bytes(), CFG_SCALE)
    register(_t2i_task("sd2-related-unrelated", triplets, spec, facts, path, version))
    for triplet in triplets:
        register(_t2i_task(f"sd2-{triplet.id}", (triplet,), spec, facts, path, version))


_register_all()
