"""Within a run, every distinct pass input is computed once, on a cached prefix where the class allows.

A pass's model inputs are a function of the pass, the question (with its instruction), the
context (text-only and conflict passes), the preamble, the image (vision-only and conflict) and
the teacher-forced answer prefix; `PassMemo.key` names them, with the image by its content hash
(in memory) or its file (on disk). Cases that share all of them (the vision-only pass of one
scene under four text tiers, the text-only pass of a control and its conflict case) share one
computed row. Rows that must be computed go through `hooks.prefix.prefix_lens` when the class
reuses a prefix cache, else through the full forward (`VLM.lens`), as `reuse=False` always does.

What is stored per row is the reduced lens (entropy, log-normaliser, the top 20, candidate logits over
the run's candidate ids), so a row computed for one case serves another with other answers.
`PassMemo.stats()` counts what was saved: rows requested and computed per pass, and the real
(unpadded) language-model tokens and vision-tower runs of the uncached computation against those
of this one.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from hooks.loading import VLM
from hooks.prefix import PrefixCache, PrefixUnavailable, prefix_lens, prefix_support
from hooks.prompts import PassBatch, append_tokens
from hooks.taps import LensResult
from interp.candidates import CandidatePair
from interp.uncertainty import NMLP_TOP_K
from modality_lens.cases import case_item, case_pair

__all__ = ["PassMemo", "PREFIX_CACHE_BYTES"]

PREFIX_CACHE_BYTES = 2 * 2**30
"""Bound of the prefix key / value store **[ours]**: cases of one scene come together in the
built-in sets, so a small store already holds every prefix still to be reused."""

_WITH_IMAGE = {"vision": True, "text": False, "conflict": True}
_WITH_CONTEXT = {"vision": False, "text": True, "conflict": True}


@dataclass(frozen=True)
class _Row:
    """The reduced lens of one computed row (layer axis first), and what it cost uncached."""

    entropy: np.ndarray
    logsumexp: np.ndarray
    top_ids: np.ndarray
    top_logits: np.ndarray
    candidate_ids: tuple[int, ...]
    candidate_logits: np.ndarray
    tokens: int


def _image_digest(image: Any) -> str:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return "sha1:" + hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


class PassMemo:
    """Rows of the passes already computed in a run, the prefix cache, and the counts.

    `prefix=False` keeps the deduplication but runs every computed row as a full forward.
    """

    def __init__(self, vlm: VLM, *, candidate_ids: Iterable[int] = (), prefix: bool = True,
                 prefix_cache_bytes: int = PREFIX_CACHE_BYTES) -> None:
        self.vlm = vlm
        self.candidate_ids: list[int] = sorted(set(candidate_ids))
        ok, why = prefix_support(vlm)
        self.prefix = PrefixCache(prefix_cache_bytes) if prefix and ok else None
        self.fallback = None if self.prefix is not None else (why or "prefix cache switched off")
        self._rows: dict[tuple, _Row] = {}
        self._pairs: dict[tuple, CandidatePair] = {}
        self._home: dict[tuple, tuple] = {}
        self._groups: dict[tuple, list[tuple[tuple, Any, CandidatePair]]] = {}
        self._batch_size = 16
        self._images: dict[int, tuple[Any, str]] = {}
        self.requested = {name: 0 for name in _WITH_IMAGE}
        self.computed = {name: 0 for name in _WITH_IMAGE}
        self.tokens_uncached = self.tokens_run = 0
        self.images_uncached = self.images_run = 0
        self._warned = False

    def _image_key(self, case: Any) -> str:
        if isinstance(case.image, (str, Path)):
            return f"file:{Path(case.image).resolve()}"
        held = self._images.get(id(case.image))
        if held is None or held[0] is not case.image:
            held = (case.image, _image_digest(case.image))
            self._images[id(case.image)] = held
        return held[1]

    def pairs(self, cases: Sequence[Any]) -> list[CandidatePair]:
        """`modality_lens.cases.case_pairs`, each distinct set of answers tokenised once; their ids
        join the candidate ids (call it before computing rows, so no row is computed twice)."""
        out = []
        for case in cases:
            answers = (case.text_answer, case.image_answer, tuple(case.text_candidates), tuple(case.image_candidates))
            pair = self._pairs.get(answers)
            if pair is None:
                pair = self._pairs[answers] = case_pair(self.vlm.tokenizer, case)
            out.append(pair)
        new = {t for p in out for t in p.ids} - set(self.candidate_ids)
        if new:
            self.candidate_ids = sorted(set(self.candidate_ids) | new)
        return out

    def key(self, name: str, case: Any, pair: CandidatePair) -> tuple:
        """What the pass's model inputs are made of; equal keys give equal inputs."""
        item = case_item(case, image="probe")  # question with its instruction, context, preamble; no drawing
        return (name, item.question, item.context if _WITH_CONTEXT[name] else None, item.preamble,
                self._image_key(case) if _WITH_IMAGE[name] else None, tuple(pair.prefix))

    def plan(self, cases: Sequence[Any], batch_size: int = 16) -> None:
        """Fix, from the whole ordered case list, the batch in which each distinct pass input is
        computed: with the other inputs of that pass first needed by cases of the same image, at
        most `batch_size` a batch. A batched forward's numbers depend (in the last float bits) on
        what else is in the batch, so this makes every row a function of the case list alone: a
        resumed run computes the numbers of an uninterrupted one."""
        pairs = self.pairs(cases)
        self._batch_size = batch_size
        for name in _WITH_IMAGE:
            for case, pair in zip(cases, pairs):
                key = self.key(name, case, pair)
                if key not in self._home:
                    self._home[key] = group = (name, self._image_key(case))
                    self._groups.setdefault(group, []).append((key, case, pair))

    def _note_fallback(self, why: str) -> None:
        if not self._warned:
            warnings.warn(f"full forwards instead of a cached prefix: {why}", stacklevel=3)
            self._warned = True

    def _lens(self, batch: PassBatch) -> LensResult:
        # the top 20 (not 1) give 1 - max p, the top-2 margin and NMLP besides the top-1 class
        kwargs = dict(keep_logits=False, candidate_ids=self.candidate_ids,
                      top_k=min(NMLP_TOP_K, self.vlm.vocab_size))
        if self.prefix is not None:
            before = self.prefix.counts()
            try:
                result = prefix_lens(self.vlm, batch, self.prefix, **kwargs)
            except PrefixUnavailable as err:
                self._note_fallback(str(err))
            else:
                after = self.prefix.counts()
                self.tokens_run += sum(after[k] - before[k] for k in ("prefix_tokens", "suffix_tokens"))
                self.images_run += after["image_rows"] - before["image_rows"]
                return result
        else:
            self._note_fallback(self.fallback)
        self.tokens_run += sum(g.length - g.n_pad for g in batch.geometry)
        self.images_run += len(batch) if batch.has_image else 0
        return self.vlm.lens(batch, **kwargs)

    def _compute(self, name: str, todo: list[tuple[tuple, Any, CandidatePair]]) -> None:
        for start in range(0, len(todo), self._batch_size):
            part = todo[start:start + self._batch_size]
            pairs = [p for _, _, p in part]
            batch = self.vlm.passes([case_item(c) for _, c, _ in part], (name,))[name]
            if any(p.prefix for p in pairs):
                batch = append_tokens(batch, [p.prefix for p in pairs])
            result = self._lens(batch)
            arrays = {f: getattr(result, f).detach().cpu().numpy()
                      for f in ("entropy", "logsumexp", "top_ids", "top_logits", "candidate_logits")}
            ids = tuple(self.candidate_ids)
            for b, (key, _, _) in enumerate(part):
                g = batch.geometry[b]
                self._rows[key] = _Row(arrays["entropy"][b], arrays["logsumexp"][b], arrays["top_ids"][b],
                                       arrays["top_logits"][b], ids, arrays["candidate_logits"][b],
                                       g.length - g.n_pad)
            self.computed[name] += len(part)

    def _missing(self, keys: list[tuple], cases: Sequence[Any], pairs: Sequence[CandidatePair],
                 needed: set[int]) -> list[list[tuple[tuple, Any, CandidatePair]]]:
        """The batches to compute: each planned group a needed row belongs to, whole; then the rows
        no plan covers."""
        ready = lambda k: k in self._rows and needed <= set(self._rows[k].candidate_ids)  # noqa: E731
        groups: dict[tuple, None] = {}
        loose: dict[tuple, tuple[tuple, Any, CandidatePair]] = {}
        for key, case, pair in zip(keys, cases, pairs):
            if ready(key):
                continue
            if key in self._home:
                groups[self._home[key]] = None
            else:
                loose.setdefault(key, (key, case, pair))
        out = [[entry for entry in self._groups[g] if not ready(entry[0])] for g in groups]
        return out + ([list(loose.values())] if loose else [])

    def lens(self, name: str, cases: Sequence[Any], pairs: Sequence[CandidatePair]) -> LensResult:
        """The reduced lens of pass `name` for every case (numpy fields), computing only rows not seen."""
        needed = sorted({t for p in pairs for t in p.ids})
        if not set(needed) <= set(self.candidate_ids):
            self.candidate_ids = sorted(set(self.candidate_ids) | set(needed))
        keys = [self.key(name, c, p) for c, p in zip(cases, pairs)]
        for todo in self._missing(keys, cases, pairs, set(needed)):
            self._compute(name, todo)
        rows = [self._rows[k] for k in keys]
        self.requested[name] += len(keys)
        self.tokens_uncached += sum(r.tokens for r in rows)
        self.images_uncached += len(rows) if _WITH_IMAGE[name] else 0
        columns = [[r.candidate_ids.index(t) for t in needed] for r in rows]
        return LensResult(
            entropy=np.stack([r.entropy for r in rows]), logsumexp=np.stack([r.logsumexp for r in rows]),
            top_ids=np.stack([r.top_ids for r in rows]), top_logits=np.stack([r.top_logits for r in rows]),
            model_logits=None, candidate_ids=np.array(needed),
            candidate_logits=np.stack([r.candidate_logits[:, c] for r, c in zip(rows, columns)]))

    def stats(self) -> dict[str, Any]:
        """What the deduplication and the prefix cache saved (real tokens, no padding)."""
        requested, computed = sum(self.requested.values()), sum(self.computed.values())
        ratio = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
        return {
            "reuse": True,
            "prefix_cache": {"used": self.prefix is not None, "fallback": self.fallback,
                             **(self.prefix.counts() if self.prefix is not None else {})},
            "passes": {name: {"requested": self.requested[name], "computed": self.computed[name]}
                       for name in self.requested},
            "forwards": {"requested": requested, "computed": computed, "saved": requested - computed},
            "lm_tokens": {"uncached": self.tokens_uncached, "run": self.tokens_run,
                          "ratio": ratio(self.tokens_run, self.tokens_uncached)},
            "vision_tower_runs": {"uncached": self.images_uncached, "run": self.images_run,
                                  "ratio": ratio(self.images_run, self.images_uncached)},
        }
