"""Text-to-image: related vs unrelated negative prompts on Stable Diffusion 2 (paper §4.2, App. D.3, F, H).

One run draws all three images of every comparison, in the paired layout of bench/tasks/paired.py:
sample i is arm i % 3 (unguided reference, related, unrelated) of prompt (i // 3) % P, and the three
arms share the noise key i // 3, so each guided image has its unguided twin at the same seed.

Convention (paper §4.2, docs/text-to-image.md): the method sees `uncond` := eps(positive prompt)
and `neg` := eps(negative prompt); `finalize` applies positive CFG around the method's output,
eps = eps_null + w (eps_method - eps_null), so the negative term is scaled by w as in diffusers'
StableDiffusionPipelineSafe. The three predictions come from one batched UNet forward.

These tasks also provide `nag` (methods/nag.py): the positive prompt's eps with Normalized Attention
Guidance in the UNet's cross-attention layers against the row's negative prompt (the one `neg` uses),
computed in the same forward; no other task has cross-attention layers to hook.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

import negguide.datasets
from negguide.bench.tasks.digests import json_digest
from negguide.bench.tasks.paired import UNRELATED, PairedLayout, PairedRows, guidance_statistics
from negguide.bench.tasks.spec import PAPER_SAMPLER, Conditioning, Records, RunProtocol, Task, Traces
from negguide.methods.errors import BenchError
from negguide.methods.schedule import Step
from negguide.metrics.base import statistic
from negguide.metrics.intervals import Statistic

if TYPE_CHECKING:
    from negguide.bench.tasks import TaskOptions
    from negguide.datasets.stable_diffusion import ModelFacts

VERSION = "1"
CFG_SCALE = 7.5  # positive guidance w (diffusers' default for Stable Diffusion)
PROMPTS_FILE = Path(negguide.datasets.__file__).resolve().parent / "prompts" / "paper_scenes.json"

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


def prompts_path(chosen: Path | None = None) -> Path:
    """The prompt file: the one chosen (--prompts), else BENCH_PROMPTS, else the shipped paper scenes."""
    return Path(chosen or os.environ.get("BENCH_PROMPTS") or PROMPTS_FILE)


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

class T2IRuntime:
    """Stable Diffusion as denoiser (one batched forward of null, positive and negative prompts), CLIP as judge."""

    dtype = torch.float32

    def __init__(self, triplets: tuple[Triplet, ...], device: torch.device, guidance: float = CFG_SCALE):
        from negguide.datasets import stable_diffusion

        self.triplets, self.guidance, self.device = triplets, guidance, device
        self.layout = PairedLayout(len(triplets))
        self.model = stable_diffusion.load(device=str(device))
        texts = ["", *(t.positive for t in triplets), *(t.related for t in triplets), *(t.unrelated for t in triplets)]
        self.contexts = self.model.encode(texts)
        self._decoded: tuple[torch.Tensor, np.ndarray] | None = None

    def condition(self, ids: np.ndarray) -> Conditioning:
        from negguide.datasets.stable_diffusion import SDDenoiser

        rows = PairedRows(np.asarray(ids, dtype=np.int64), self.layout)
        denoiser = SDDenoiser(self.model, self.contexts, partial(self._contexts, rows))
        extra = ("null",) if self.guidance != 1.0 else ()
        return Conditioning(denoiser, self.layout.noise_keys(ids), extra_needs=extra, finalize=partial(rows.finalize, self.guidance))

    def _contexts(self, rows: PairedRows, x: torch.Tensor, step: Step, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Row of the encoded texts conditioning each sample: "" | positive | related | unrelated."""
        rows.check_pairing(x, step)
        prompt, arm, count = rows.prompt, rows.arm, len(self.triplets)
        # Reference rows take the related prompt as `neg`: finalize ignores it, and traces stay meaningful.
        by_name = {"null": np.zeros_like(prompt), "uncond": 1 + prompt, "nag": 1 + prompt,
                   "neg": np.where(arm == UNRELATED, 1 + 2 * count + prompt, 1 + count + prompt)}
        unknown = set(names) - set(by_name)
        if unknown:
            raise KeyError(f"text-to-image tasks provide {sorted(by_name)}, not {sorted(unknown)}")
        return {name: by_name[name] for name in names}

    def images(self, x: torch.Tensor) -> np.ndarray:
        """Decoded uint8 images, computed once for evaluate and to_artifact."""
        if self._decoded is None or self._decoded[0] is not x:
            self._decoded = (x, self.model.decode(x))
        return self._decoded[1]

    def records(self, x: torch.Tensor, wanted: tuple[str, ...]) -> Records:
        """Per sample of the complete triples: arm, CLIP image embedding, and whether the zero-shot judge sees
        the triple's related concept (negative prompt vs a neutral text, p > 0.5)."""
        from negguide.metrics.clip import load_clip, zero_shot

        rows = self.layout.triples(len(x)).ravel()
        judge = load_clip()
        embeddings = judge.image_embeddings(self.images(x)[rows]) if len(rows) else torch.zeros(0, 1)
        prompt = self.layout.prompt(rows)
        concept = judge.text_embeddings([t.related for t in self.triplets])[prompt]
        neutral = judge.text_embeddings([t.neutral for t in self.triplets])[prompt]
        present = zero_shot(embeddings, concept, neutral, judge.logit_scale) > 0.5 if len(rows) else np.zeros(0, bool)
        return {"arm": self.layout.arm(rows), "features": embeddings.numpy(), "concept_present": present}

    def statistics(self, records: Records, traces: Traces, wanted: tuple[str, ...]) -> list[Statistic]:
        """CLIP scores and Q over triples (the unit that shares its noise); shares by Wilson."""
        from negguide.metrics.clip import clip_score

        n = len(records["arm"]) // 3
        embeddings = torch.from_numpy(records["features"]).reshape(n, 3, -1)
        related, unrelated = clip_score(embeddings[:, 0], embeddings[:, 1]), clip_score(embeddings[:, 0], embeddings[:, 2])
        present = records["concept_present"].reshape(n, 3)
        return [
            statistic("clip_related", values=related),
            statistic("clip_unrelated", values=unrelated),
            statistic("q", first=unrelated, second=related),  # paper Eq. 22
            statistic("forbidden_rate", hits=present[:, 1]),
            statistic("concept_unguided", hits=present[:, 0]),
            *guidance_statistics(traces, self.layout.triples(3 * n)),
        ]

    def to_artifact(self, x: torch.Tensor) -> np.ndarray:
        return self.images(x)


# ---- tasks ----------------------------------------------------------------------------------

METRICS_T2I = ("clip_related", "clip_unrelated", "q", "forbidden_rate", "concept_unguided", "guidance_related", "guidance_unrelated")


CLIP_METRICS = ("clip_related", "clip_unrelated", "q", "forbidden_rate", "concept_unguided")


def _preflight(spec: str, path: Path, metrics: tuple[str, ...]) -> None:
    """Prompts, Stable Diffusion and (if a CLIP metric is wanted) CLIP weights present, else one line saying how."""
    from negguide.datasets.stable_diffusion import locate
    from negguide.metrics.clip import clip_spec, weights_path

    load_prompts(path)
    locate(spec)
    if set(metrics) & set(CLIP_METRICS):
        weights_path(clip_spec())


def _version(spec: str, prompt_bytes: bytes, guidance: float) -> str:
    """The task version: our definition plus a digest of the model, prompts, CLIP judge and CFG scale."""
    from negguide.metrics.clip import clip_spec

    digest = hashlib.sha256(json.dumps([spec, prompt_bytes.decode(errors="replace"), clip_spec().label(), guidance]).encode()).hexdigest()[:8]
    return f"{VERSION}+{digest}"


def _details(spec: str, facts: ModelFacts, path: Path, clip_label: str, triplets: tuple[Triplet, ...]) -> dict:
    return {"model": spec, **facts.as_dict(), "prompts_file": str(path), "clip": clip_label, "positive_cfg": CFG_SCALE,
            "layout": "sample i: arm i % 3 (reference, related, unrelated), prompt (i // 3) % P, noise key i // 3",
            "triplets": [vars(t) for t in triplets]}


def _digests(clip_label: str, version: str) -> dict:
    """The CLIP judge, and the prompts (the task version digests them with the model and CFG scale)."""
    return {"judge": json_digest(clip_label), "reference": version}


def _resources(spec: str, path: Path, clip_label: str) -> tuple:
    return (spec, str(path), clip_label)


def _t2i_task(name: str, triplets: tuple[Triplet, ...], spec: str, facts: ModelFacts, path: Path, version: str) -> Task:
    from negguide.metrics.clip import clip_spec

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
        n_classes=0,
        metrics=METRICS_T2I,
        protocols={"quick": RunProtocol(samples=layout.rows(1), steps=50, batch_size=layout.rows(1)),
                   "paper": RunProtocol(samples=layout.rows(32), steps=1000, batch_size=min(48, layout.rows(32)), sampler=PAPER_SAMPLER)},
        digests=partial(_digests, clip_label, version),
        load=partial(T2IRuntime, triplets),
        details=partial(_details, spec, facts, path, clip_label, triplets),
        schedule=facts.schedule,
        predictions=("uncond", "neg", "null", "nag"),  # nag: cross-attention guidance, see SDDenoiser
        resources=partial(_resources, spec, path, clip_label),
        preflight=partial(_preflight, spec, path),
        quality_metric="q",
        safety_threshold=1.0,  # no safety gate: Q already rewards removing the related object
    )


def tasks(options: TaskOptions) -> Iterable[Task]:
    """One task over every triplet of the prompt file, and one per triplet (reads config files only)."""
    from negguide.datasets.stable_diffusion import model_spec, read_facts

    spec, path = model_spec(), prompts_path(options.prompts)
    facts = read_facts(spec)  # config files only; SD 2 base defaults when the weights are absent
    try:
        triplets = load_prompts(path)
    except BenchError:
        # A bad prompt file must not break `bench list`; the task's preflight reports it on one line.
        yield _t2i_task("sd2-related-unrelated", (), spec, facts, path, VERSION)
        return
    version = _version(spec, path.read_bytes(), CFG_SCALE)
    yield _t2i_task("sd2-related-unrelated", triplets, spec, facts, path, version)
    for triplet in triplets:
        yield _t2i_task(f"sd2-{triplet.id}", (triplet,), spec, facts, path, version)
