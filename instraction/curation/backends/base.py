"""The backend interface and what every backend shares: the annotation row, the LLM answer -> row step (parse,
validate, negatives), quarantine on failure, and the re-ask loop for ray.data.llm processors.

A backend turns the wave's text rows (``iter_clips`` rows without video: key, shard, video_key, video_id, start,
end, caption, error, detail) into annotation rows, exactly one per input row (``ANNOTATION_SCHEMA``):

    kept         reason "instructional"; actions, negatives, primary_object filled
    dropped      reason = the filter's class ("conversational", "off_topic", "no_visible_action", "no_actions")
    quarantined  reason = the read error ("corrupt_tar", "bad_json", ...), "prompt_too_long", "engine_error",
                 or the schema failure of the last answer ("invalid_json", "schema_mismatch", ...); raw_output
                 keeps the model's text and ``detail`` says what was wrong
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import pyarrow as pa

from instraction.curation import negatives, prompts, rules
from instraction.curation.config import CurationConfig

if TYPE_CHECKING:
    import ray.data

ANNOTATION_SCHEMA = pa.schema(
    [
        ("key", pa.string()), ("shard", pa.string()), ("video_key", pa.string()), ("video_id", pa.string()),
        ("start", pa.float64()), ("end", pa.float64()), ("caption", pa.string()),
        ("decision", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
        ("actions", pa.list_(pa.string())), ("verb_altered", pa.list_(pa.string())),
        ("order_swapped", pa.list_(pa.string())), ("primary_object", pa.string()),
        ("backend", pa.string()), ("model", pa.string()), ("prompt_version", pa.string()),
        ("raw_output", pa.string()),
    ]
)
"""One row per clip read. ``detail``: a human-readable cause for quarantined rows (not a count key)."""
COLUMNS = ANNOTATION_SCHEMA.names
DECISIONS = ("kept", "dropped", "quarantined")
RETRY_COLUMN = "retry_error"
"""Intermediate column of the LLM re-ask loop: the schema error of an answer that gets one more try."""
_TEXT_COLUMNS = ("key", "shard", "video_key", "video_id", "start", "end", "caption")


class EngineUnavailable(RuntimeError):
    """A backend whose engine cannot start or be reached: raised by ``preflight`` before any work is queued."""


def _as_list(items: Iterable[str]) -> list[str]:
    return items if type(items) is list else list(items)


class Annotator:
    """Builds annotation rows (picklable: shipped to Ray workers). Owns the negative sampler."""

    def __init__(self, cfg: CurationConfig, backend: str, model: str):
        self.cfg = cfg
        self.backend, self.model, self.prompt_version = backend, model, cfg.prompt_version
        self.sampler = negatives.NegativeSampler(cfg.max_verb_altered, cfg.max_order_swapped, cfg.negative_verbs,
                                                 cfg.seed)

    def row(self, src: dict, decision: str, reason: str, detail: str = "", actions: Iterable[str] = (),
            verb_altered: Iterable[str] = (), order_swapped: Iterable[str] = (), primary_object: str = "",
            raw_output: str = "") -> dict:
        get, video_id = src.get, src.get("video_id")
        return {
            "key": get("key"), "shard": get("shard"), "video_key": get("video_key"),
            "video_id": None if video_id is None else str(video_id), "start": get("start"), "end": get("end"),
            "caption": get("caption"), "decision": decision, "reason": reason, "detail": detail or None,
            "actions": _as_list(actions), "verb_altered": _as_list(verb_altered),
            "order_swapped": _as_list(order_swapped), "primary_object": primary_object or None,
            "backend": self.backend, "model": self.model, "prompt_version": self.prompt_version,
            "raw_output": raw_output or None,
        }

    def quarantine(self, src: dict, reason: str, detail: str = "", raw_output: str = "") -> dict:
        return self.row(src, "quarantined", reason, detail=detail, raw_output=raw_output)

    def read_error(self, src: dict) -> dict | None:
        """The quarantined row of a clip ``iter_clips`` could not read, or None for a readable one."""
        if src.get("error"):
            return self.quarantine(src, str(src["error"]), str(src.get("detail") or ""))
        if not isinstance(src.get("caption"), str) or not src["caption"].strip():
            return self.quarantine(src, "bad_caption", "empty caption")
        return None

    def with_negatives(self, src: dict, analysis: rules.Analysis, slots: list[negatives.Slot], actions: list[str],
                       primary_object: str, raw_output: str = "") -> dict:
        key = str(src.get("key") or "")
        return self.row(
            src, "kept", "instructional", actions=actions,
            verb_altered=self.sampler.verb_altered(analysis, slots, key),
            order_swapped=self.sampler.order_swapped(analysis, slots, key),
            primary_object=primary_object, raw_output=raw_output,
        )

    def from_llm(self, src: dict, raw: str, final: bool) -> dict:
        """Parse an answer into a row; on a schema failure mark it for a re-ask (``final=False``) or quarantine it."""
        try:
            ann = prompts.parse_response(raw, src["caption"])
        except prompts.SchemaError as err:
            if final:
                return self.quarantine(src, err.kind, err.detail, raw_output=raw)
            row = self.quarantine(src, err.kind, err.detail, raw_output=raw)
            row[RETRY_COLUMN] = str(err)
            return row
        if ann.category != "instructional":
            return self.row(src, "dropped", ann.category, raw_output=raw, primary_object=ann.primary_object)
        if not ann.actions:
            return self.row(src, "dropped", "no_actions", detail="instructional but no action extracted",
                            raw_output=raw, primary_object=ann.primary_object)
        analysis = rules.analyze(src["caption"])
        slots = negatives.align(analysis, ann.actions)
        return self.with_negatives(src, analysis, slots, ann.actions, ann.primary_object, raw_output=raw)


def to_table(rows: list[dict], retry_column: bool = False) -> pa.Table:
    """Annotation rows -> Arrow table with the fixed schema (plus the re-ask column inside the LLM loop)."""
    schema = ANNOTATION_SCHEMA.append(pa.field(RETRY_COLUMN, pa.string())) if retry_column else ANNOTATION_SCHEMA
    if retry_column:
        for r in rows:
            r.setdefault(RETRY_COLUMN, "")
    return rows_to_table(rows, schema)


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Row dicts -> Arrow table; column-wise (``from_pylist`` is ~30x slower on the list<string> columns)."""
    return pa.Table.from_pydict({c: [r.get(c) for r in rows] for c in schema.names}, schema=schema)


class Backend(abc.ABC):
    """One curation backend. ``annotate`` maps the wave's text rows to exactly one annotation row each."""

    name: ClassVar[str]

    def __init__(self, cfg: CurationConfig):
        self.cfg = cfg

    @property
    def model(self) -> str:
        """What produced the annotations (recorded per row and part of the re-curation skip key)."""
        return self.cfg.model

    def preflight(self) -> None:
        """Check the engine can start / be reached; raise :class:`EngineUnavailable` quickly otherwise."""

    def annotator(self) -> Annotator:
        return Annotator(self.cfg, self.name, self.model)

    @abc.abstractmethod
    def annotate(self, rows: "ray.data.Dataset") -> "ray.data.Dataset":
        """Text rows -> annotation rows (``ANNOTATION_SCHEMA``), one per input row."""


# --- the ray.data.llm path (openai, vllm): pre-send guards, then processor passes with re-asks ----------------


_SEND = "sendable"


class _Guard:
    """Flags the rows that may reach the engine (column ``sendable``); the others (read errors, over-long
    prompts) get their final quarantined row via :meth:`quarantine`."""

    def __init__(self, annotator: Annotator, max_chars: int):
        self.annotator, self.max_chars = annotator, max_chars
        self.prompt = prompts.get_prompt(annotator.prompt_version)

    def _row(self, src: dict) -> dict | None:
        row = self.annotator.read_error(src)
        if row is None:
            chars = self.prompt.prompt_chars(src["caption"])
            if chars > self.max_chars:
                row = self.annotator.quarantine(src, "prompt_too_long", f"{chars} > {self.max_chars} characters")
        return row

    def flag(self, batch: pa.Table) -> pa.Table:
        return batch.append_column(_SEND, pa.array([self._row(src) is None for src in batch.to_pylist()],
                                                   pa.bool_()))

    def quarantine(self, batch: pa.Table) -> pa.Table:
        return to_table([self._row(src) for src in batch.drop_columns([_SEND]).to_pylist()])


class _Finish:
    """Processor output rows (input columns + ``raw_output`` + ``engine_error``) -> annotation rows."""

    def __init__(self, annotator: Annotator, final: bool):
        self.annotator, self.final = annotator, final

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for src in batch.to_pylist():
            error = src.get("engine_error") or src.get("__inference_error__") or ""
            if error:  # the engine failed on this one request: retrying the same prompt will not help
                out.append(self.annotator.quarantine(src, "engine_error", str(error)[:2000],
                                                     raw_output=str(src.get("raw_output") or "")))
            else:
                out.append(self.annotator.from_llm(src, str(src.get("raw_output") or ""), self.final))
        return to_table(out, retry_column=True)


def request_messages(row: dict, prompt_version: str) -> list[dict[str, str]]:
    """Chat messages of a row: the prompt, or the re-ask when the row carries a previous answer's schema error."""
    prompt = prompts.get_prompt(prompt_version)
    if row.get(RETRY_COLUMN):
        return prompt.retry_messages(row["caption"], str(row.get("raw_output") or ""), row[RETRY_COLUMN])
    return prompt.messages(row["caption"])


def carry(row: dict) -> dict[str, Any]:
    """The input columns a processor's postprocess hands on (ray.data.llm keeps only what postprocess returns)."""
    return {c: row.get(c) for c in (*_TEXT_COLUMNS, "error", "detail")}


def run_processor_passes(rows: "ray.data.Dataset", build: Callable[[], Any], annotator: Annotator,
                         max_chars: int, max_retries: int) -> "ray.data.Dataset":
    """Guard -> processor -> finish, then re-ask the failed answers up to ``max_retries`` times (the last pass
    quarantines what still fails, raw text kept). ``rows`` must be materialised: it is read twice."""
    from ray.data.expressions import col

    guard = _Guard(annotator, max_chars)
    flagged = rows.map_batches(guard.flag, batch_format="pyarrow")
    done = [flagged.filter(expr=~col(_SEND)).map_batches(guard.quarantine, batch_format="pyarrow")]
    pending = flagged.filter(expr=col(_SEND)).drop_columns([_SEND])
    for attempt in range(max_retries + 1):
        final = attempt == max_retries
        answered = build()(pending).map_batches(_Finish(annotator, final), batch_format="pyarrow")
        if final:
            done.append(answered.drop_columns([RETRY_COLUMN]))
            break
        answered = answered.materialize()
        done.append(answered.filter(expr=col(RETRY_COLUMN) == "").drop_columns([RETRY_COLUMN]))
        pending = answered.filter(expr=col(RETRY_COLUMN) != "")
        if pending.count() == 0:
            break
    return done[0].union(*done[1:])
