"""The offline, deterministic default backend: lexicon and pattern rules (``instraction.curation.rules``) for
the filter and the verb-phrase extraction, then the shared negatives. Plain Ray Data tasks, no model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from instraction.curation import negatives, rules
from instraction.curation.backends.base import Annotator, Backend, to_table

if TYPE_CHECKING:
    import ray.data

RULES_VERSION = "1"
"""Bumped whenever the rules change what they output: part of ``model`` and so of the re-curation skip key."""


def annotate_rows(annotator: Annotator, rows: list[dict]) -> list[dict]:
    """Text rows -> annotation rows (the whole rules backend, no Ray: the benchmark and tests call it directly)."""
    out = []
    for src in rows:
        row = annotator.read_error(src)
        if row is None:
            analysis = rules.analyze(src["caption"])
            keep, reason = rules.classify(analysis)
            if keep:
                row = annotator.with_negatives(src, analysis, negatives.slots_of(analysis), analysis.phrases,
                                               analysis.primary_object())
            else:
                row = annotator.row(src, "dropped", reason, primary_object=analysis.primary_object())
        out.append(row)
    return out


class _RulesStage:
    def __init__(self, annotator: Annotator):
        self.annotator = annotator

    def __call__(self, batch: pa.Table) -> pa.Table:
        return to_table(annotate_rows(self.annotator, batch.to_pylist()))


class RulesBackend(Backend):
    name = "rules"

    @property
    def model(self) -> str:
        return f"rules-v{RULES_VERSION}"

    def annotate(self, rows: "ray.data.Dataset") -> "ray.data.Dataset":
        return rows.map_batches(_RulesStage(self.annotator()), batch_format="pyarrow",
                                batch_size=self.cfg.batch_size * 16)
