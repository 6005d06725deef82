"""LLM curation backends and what they share: versioned prompts, the answer parser/validator, re-ask then
quarantine; hf with a tiny random model built here; openai end to end through ray.data.llm's HTTP processor against
an OpenAI-compatible server on 127.0.0.1 serving that model (tests/openai_stub_server.py); vllm's processor built
and its pre/postprocess checked (a vLLM engine needs CUDA: it cannot run on this CPU-only machine).

    python -m pytest tests/test_curation_llm.py -q
"""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest

import datagen
from instraction.config import load_config
from instraction.curation import pipeline, prompts
from instraction.curation.backends import EngineUnavailable, make_backend
from instraction.curation.backends.base import RETRY_COLUMN, Annotator, _Finish
from instraction.curation.backends.hf import Generator, HFStage
from instraction.curation.config import CurationConfig
from instraction.curation.pipeline import TEXT_SCHEMA
from instraction.curation.tiny_lm import build_tiny_lm, teach_tiny_lm

SCHEMA_KINDS = set(prompts.SchemaError.KINDS)
GOOD = '{"category": "instructional", "actions": ["crack egg", "whisk egg"], "primary_object": "egg"}'


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny", max_positions=1024)


TAUGHT = "crack the egg and then whisk it"


@pytest.fixture(scope="module")
def taught_lm(tmp_path_factory):
    """The tiny model fine-tuned (~10 s) to answer GOOD to the prompt of TAUGHT: the backends' success path."""
    path = build_tiny_lm(tmp_path_factory.mktemp("lm") / "taught", max_positions=1024)
    return teach_tiny_lm(path, [TAUGHT], GOOD, steps=150)


def assert_kept_from_the_models_answer(row):
    """Kept, with the actions of GOOD and negatives derived from them; raw_output is the model's text."""
    assert (row["decision"], row["reason"], row["raw_output"]) == ("kept", "instructional", GOOD)
    assert list(row["actions"]) == ["crack egg", "whisk egg"] and row["primary_object"] == "egg"
    assert len(row["verb_altered"]) == 9 and list(row["order_swapped"]) == ["whisk it and then crack the egg"]


def text_rows(captions, error_rows=()):
    rows = [{"key": f"k{i}", "shard": "00000", "video_key": f"k{i}", "caption": c} for i, c in enumerate(captions)]
    rows += [{"key": key, "shard": "00000", "error": error, "detail": "planted"} for key, error in error_rows]
    return rows


# --- prompts and parsing ----------------------------------------------------------------------------------------


def test_prompt_is_versioned_with_schema_and_retry():
    prompt = prompts.get_prompt("v1")
    msgs = prompt.messages("crack the egg")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"] == "Caption: crack the egg\nJSON:"
    retry = prompt.retry_messages("crack the egg", "oops", "invalid_json: no JSON object")
    assert retry[:-2] == msgs and retry[-2] == {"role": "assistant", "content": "oops"}
    assert "invalid_json" in retry[-1]["content"]
    assert prompt.schema["required"] == ["category", "actions", "primary_object"]
    assert prompt.schema["properties"]["category"]["enum"] == list(prompts.CATEGORIES)
    with pytest.raises(ValueError, match="unknown prompt version"):
        prompts.get_prompt("v999")


def test_parse_accepts_and_normalises_valid_answers():
    caption = "Now crack the eggs, then we are whisking them"
    ann = prompts.parse_response('```json\n{"category": "instructional", "actions": ["Crack the Eggs", "whisking"], '
                                 '"primary_object": "Eggs"}\n```', caption)
    assert (ann.category, ann.actions, ann.primary_object) == ("instructional", ["crack eggs", "whisking"], "eggs")
    chatter = prompts.parse_response('{"category": "conversational", "actions": ["crack egg"], "primary_object": ""}',
                                     caption)
    assert chatter.actions == []  # a non-instructional caption has no actions


@pytest.mark.parametrize("answer, kind", [
    ("", "empty_output"), ("   \n", "empty_output"), ("the egg is cracked", "invalid_json"),
    ('{"category": "instructional", "actions": [', "invalid_json"), ("[1, 2]", "invalid_json"),
    ('{"category": "instructional"}', "schema_mismatch"),
    ('{"category": "recipe", "actions": [], "primary_object": ""}', "schema_mismatch"),
    ('{"category": "instructional", "actions": "crack egg", "primary_object": ""}', "schema_mismatch"),
    ('{"category": "instructional", "actions": ["crack egg!!"], "primary_object": ""}', "schema_mismatch"),
    ('{"category": "instructional", "actions": ["crack the egg into the small bowl now"], "primary_object": ""}',
     "schema_mismatch"),
    ('{"category": "instructional", "actions": ["flip pancake"], "primary_object": "egg"}', "ungrounded_action"),
])
def test_parse_rejects_bad_answers_with_a_bounded_reason(answer, kind):
    with pytest.raises(prompts.SchemaError) as err:
        prompts.parse_response(answer, "crack the egg and then whisk it")
    assert err.value.kind == kind


def test_llm_answer_to_row_kept_dropped_retry_quarantine():
    annotator = Annotator(CurationConfig(), "hf", "m")
    src = text_rows(["crack the egg and then whisk it"])[0]
    kept = annotator.from_llm(src, GOOD, final=False)
    assert (kept["decision"], kept["actions"], kept["raw_output"]) == ("kept", ["crack egg", "whisk egg"], GOOD)
    assert len(kept["verb_altered"]) == 9 and kept["order_swapped"] == ["whisk it and then crack the egg"]
    dropped = annotator.from_llm(src, '{"category": "off_topic", "actions": [], "primary_object": ""}', True)
    assert (dropped["decision"], dropped["reason"]) == ("dropped", "off_topic")
    again = annotator.from_llm(src, "nope", final=False)
    assert again[RETRY_COLUMN].startswith("invalid_json")
    final = annotator.from_llm(src, "nope", final=True)
    assert (final["decision"], final["reason"], final["raw_output"], RETRY_COLUMN in final) == (
        "quarantined", "invalid_json", "nope", False)


# --- hf -----------------------------------------------------------------------------------------------------


class ScriptedGenerator(Generator):
    """The hf stage's control flow with scripted answers (a random tiny model never answers valid JSON)."""

    def __init__(self, script):
        self.script, self.calls, self.max_prompt_tokens, self.stash = script, [], 10_000, []

    def encode(self, messages):
        self.stash = list(messages)
        return [[i] for i in range(len(messages))]

    def generate_ids(self, ids):
        self.calls.append(len(ids))
        return [self.script(self.stash[i[0]]) for i in ids]


def script(messages):
    retry = messages[-1]["content"].startswith("That answer is invalid")
    caption = messages[-3 if retry else -1]["content"]
    if "BOOM" in caption:
        raise RuntimeError("CUDA error: device-side assert triggered")
    if "crack the egg" in caption:
        return GOOD if retry else "Sure! Here are the actions: crack, whisk"
    if "hey guys" in caption:
        return '{"category": "conversational", "actions": [], "primary_object": ""}'
    return '{"category": "instructional", "actions": ["flip pancake"], "primary_object": "pan"}'


def test_hf_stage_reasks_once_then_quarantines_and_isolates_engine_errors():
    cfg = CurationConfig(backend="hf", model="scripted", max_prompt_chars=3000)
    gen = ScriptedGenerator(script)
    stage = HFStage(cfg, Annotator(cfg, "hf", "scripted"), generator=gen)
    captions = ["crack the egg and then whisk it", "hey guys welcome back", "stir the sauce", "BOOM stir", "x " * 2000]
    rows = stage(to_table_text(text_rows(captions, [("bad", "bad_json")]))).to_pylist()
    got = {r["key"]: (r["decision"], r["reason"]) for r in rows}
    assert got == {"k0": ("kept", "instructional"), "k1": ("dropped", "conversational"),
                   "k2": ("quarantined", "ungrounded_action"), "k3": ("quarantined", "engine_error"),
                   "k4": ("quarantined", "prompt_too_long"), "bad": ("quarantined", "bad_json")}
    # first ask: one batch of 4 fails on BOOM -> row by row; then one re-ask batch for k0 and k2 only
    assert gen.calls == [4, 1, 1, 1, 1, 2]
    by_key = {r["key"]: r for r in rows}
    assert by_key["k0"]["raw_output"] == GOOD and len(by_key["k0"]["verb_altered"]) == 9
    assert "flip pancake" in by_key["k2"]["raw_output"] and "CUDA error" in by_key["k3"]["detail"]


def to_table_text(rows):
    from instraction.curation.backends.base import rows_to_table

    return rows_to_table(rows, TEXT_SCHEMA)


def test_hf_stage_with_the_tiny_model_quarantines_garbage(tiny_lm):
    cfg = CurationConfig(backend="hf", model=tiny_lm, max_new_tokens=6, max_prompt_chars=100_000)
    stage = HFStage(cfg, Annotator(cfg, "hf", tiny_lm))
    calls = []
    real = stage.gen.generate_ids
    stage.gen.generate_ids = lambda ids: calls.append(len(ids)) or real(ids)
    long_in_tokens = " ".join(f"w{i}q" for i in range(700))  # under max_prompt_chars, over the 1024 positions
    rows = stage(to_table_text(text_rows(["crack the egg and then whisk it", "stir the sauce", long_in_tokens],
                                         [("bad", "missing_mp4")]))).to_pylist()
    assert calls == [2, 2]  # every garbage answer re-asked exactly once
    by_key = {r["key"]: r for r in rows}
    assert {by_key[k]["reason"] for k in ("k0", "k1")} <= SCHEMA_KINDS
    assert all(by_key[k]["decision"] == "quarantined" and by_key[k]["raw_output"] is not None for k in ("k0", "k1"))
    assert (by_key["k2"]["reason"], by_key["bad"]["reason"]) == ("prompt_too_long", "missing_mp4")


def test_hf_stage_keeps_what_a_real_model_answers(taught_lm):
    cfg = CurationConfig(backend="hf", model=taught_lm, max_new_tokens=64, max_prompt_chars=100_000)
    rows = HFStage(cfg, Annotator(cfg, "hf", taught_lm))(to_table_text(text_rows([TAUGHT]))).to_pylist()
    assert len(rows) == 1 and (rows[0]["backend"], rows[0]["model"]) == ("hf", taught_lm)
    assert_kept_from_the_models_answer(rows[0])


@pytest.mark.integration
def test_hf_backend_pipeline_counts_add_up(ray_local, tiny_lm, tmp_path):
    good = datagen.build_good_shards(str(tmp_path / "shards"), num_shards=1, per_shard=4, whole_videos=1)
    datagen.write_tar(str(tmp_path / "shards" / "00001.tar"), [
        {"__key__": "nojson", "mp4": datagen.ramp_mp4(), "txt": b"stir"},
        datagen.clip_sample("c1", "v1", "hey guys welcome back to my channel", ["none"], datagen.ramp_mp4())])
    cfg = load_config(None, [f"data.shards={tmp_path / 'shards'}", f"data.annotations={tmp_path / 'ann'}",
                             "curation.backend=hf", f"curation.model={tiny_lm}", "curation.max_new_tokens=4",
                             "curation.batch_size=4"])
    summary = pipeline.curate(cfg, progress=False)
    rows = [r for f in ("00000", "00001") for r in pq.read_table(str(tmp_path / "ann" / f"{f}.parquet")).to_pylist()]
    assert sorted(r["key"] for r in rows) == sorted(good["clip_keys"] + ["nojson", "c1"])
    assert summary["counts"]["rows"] == len(rows) == summary["counts"]["by_decision"]["quarantined"]
    reasons = summary["counts"]["by_reason"]["quarantined"]
    assert reasons.pop("missing_json") == 1 and set(reasons) <= SCHEMA_KINDS and sum(reasons.values()) == len(rows) - 1
    assert all(r["raw_output"] is not None for r in rows if r["key"] != "nojson")
    assert {(r["backend"], r["model"]) for r in rows} == {("hf", tiny_lm)}


@pytest.mark.integration
def test_hf_preflight_fails_fast(ray_local, tmp_path):
    t0 = time.time()
    with pytest.raises(EngineUnavailable, match="cannot load"):
        make_backend(CurationConfig(backend="hf", model=str(tmp_path / "no-model"))).preflight()
    with pytest.raises(EngineUnavailable, match="GPU"):
        make_backend(CurationConfig(backend="hf", model=str(tmp_path), num_gpus=1)).preflight()
    assert time.time() - t0 < 60


# --- openai ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub_server(tiny_lm):
    from openai_stub_server import OpenAIStubServer

    server = OpenAIStubServer(tiny_lm, name="tiny-lm")
    yield server
    server.close()


@pytest.mark.integration
def test_openai_backend_end_to_end_through_ray_http_processor(ray_local, stub_server, tmp_path):
    mp4 = datagen.ramp_mp4()
    long_in_tokens = " ".join(f"w{i}q" for i in range(700))
    datagen.write_tar(str(tmp_path / "shards" / "00000.tar"), [
        datagen.clip_sample("a", "va", "crack the egg and then whisk it", ["crack egg", "whisk egg"], mp4),
        datagen.clip_sample("b", "vb", "stir the sauce STUB_HTML_500", ["stir sauce"], mp4),
        datagen.clip_sample("c", "vc", long_in_tokens, ["none"], mp4),
        datagen.clip_sample("d", "vd", "hey guys welcome back to my channel", ["none"], mp4),
        {"__key__": "e", "mp4": mp4, "json": b"{broken", "txt": b"stir"},
    ])
    stub_server.requests.clear()
    cfg = load_config(None, [f"data.shards={tmp_path / 'shards'}", f"data.annotations={tmp_path / 'ann'}",
                             "curation.backend=openai", f"curation.base_url={stub_server.base_url}",
                             "curation.max_new_tokens=4", "curation.max_prompt_chars=100000",
                             "curation.batch_size=4"])
    summary = pipeline.curate(cfg, progress=False)
    rows = {r["key"]: r for r in pq.read_table(str(tmp_path / "ann" / "00000.parquet")).to_pylist()}
    assert sorted(rows) == ["a", "b", "c", "d", "e"] and summary["counts"]["rows"] == 5
    assert summary["model"] == "tiny-lm"  # discovered from /v1/models
    assert [rows[k]["reason"] for k in "bce"] == ["engine_error", "engine_error", "bad_json"]
    assert "500" in rows["b"]["detail"] and "maximum context length" in rows["c"]["detail"]
    assert {rows["a"]["reason"], rows["d"]["reason"]} <= SCHEMA_KINDS
    assert all(r["decision"] == "quarantined" for r in rows.values())
    # a, b, c, d asked once; only the schema failures (a, d) asked again, with the re-ask prompt
    assert len(stub_server.requests) == 6
    assert sum(r.startswith("That answer is invalid") for r in stub_server.requests) == 2


@pytest.mark.integration
def test_openai_backend_keeps_what_a_real_model_answers(ray_local, taught_lm, tmp_path):
    from openai_stub_server import OpenAIStubServer

    datagen.write_tar(str(tmp_path / "shards" / "00000.tar"),
                      [datagen.clip_sample("a", "va", TAUGHT, ["crack egg", "whisk egg"], datagen.ramp_mp4())])
    server = OpenAIStubServer(taught_lm, name="taught-lm")
    try:
        cfg = load_config(None, [f"data.shards={tmp_path / 'shards'}", f"data.annotations={tmp_path / 'ann'}",
                                 "curation.backend=openai", f"curation.base_url={server.base_url}",
                                 "curation.max_new_tokens=64", "curation.max_prompt_chars=100000"])
        summary = pipeline.curate(cfg, progress=False)
        assert len(server.requests) == 1  # answered right the first time: no re-ask
    finally:
        server.close()
    (row,) = pq.read_table(str(tmp_path / "ann" / "00000.parquet")).to_pylist()
    assert summary["counts"]["by_decision"] == {"kept": 1} and (row["backend"], row["model"]) == ("openai", "taught-lm")
    assert_kept_from_the_models_answer(row)


@pytest.mark.integration
def test_openai_preflight_fails_fast(ray_local, stub_server):
    t0 = time.time()
    with pytest.raises(EngineUnavailable, match="cannot reach"):
        make_backend(CurationConfig(backend="openai", base_url="http://127.0.0.1:9/v1")).preflight()
    with pytest.raises(EngineUnavailable, match="not served"):
        make_backend(CurationConfig(backend="openai", base_url=stub_server.base_url, model="gpt-9")).preflight()
    assert time.time() - t0 < 60


# --- vllm (processor only: no GPU here) -------------------------------------------------------------------------


@pytest.mark.integration
def test_vllm_processor_stages_and_pre_postprocess(ray_local, tiny_lm):
    from instraction.curation.backends import vllm

    cfg = CurationConfig(backend="vllm", model=tiny_lm, concurrency=4, min_concurrency=2, batch_size=32,
                         engine_kwargs={"max_model_len": 1024})
    backend = make_backend(cfg)
    processor = backend.build_processor()
    assert processor.list_stage_names() == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    engine = processor.get_stage_by_name("vLLMEngineStage")
    kwargs = engine.fn_constructor_kwargs
    assert kwargs["should_continue_on_error"] and kwargs["model"] == tiny_lm and kwargs["batch_size"] == 32
    assert kwargs["engine_kwargs"]["max_model_len"] == 1024 and kwargs["engine_kwargs"]["enable_prefix_caching"]
    compute = engine.map_batches_kwargs["compute"]
    assert (compute.min_size, compute.max_size, engine.map_batches_kwargs["num_gpus"]) == (2, 4, 1)

    row = text_rows(["crack the egg and then whisk it"])[0]
    pre = vllm.preprocess(row, prompt_version="v1", max_tokens=64, temperature=0.0)
    assert pre["messages"] == prompts.get_prompt("v1").messages(row["caption"])
    assert pre["sampling_params"]["structured_outputs"] == {"json": prompts.get_prompt("v1").schema}
    reask = vllm.preprocess({**row, RETRY_COLUMN: "invalid_json: x", "raw_output": "oops"}, prompt_version="v1",
                            max_tokens=64, temperature=0.0)
    assert reask["messages"][-2]["content"] == "oops"
    # what the engine hands back: a generated row, and an error row that bypassed postprocess
    post = vllm.postprocess({**row, "messages": pre["messages"], "generated_text": GOOD, "num_generated_tokens": 30})
    assert post["raw_output"] == GOOD and "messages" not in post
    error_row = {**row, "messages": pre["messages"], "__inference_error__": "prompt length 5000 > max_model_len"}
    finish = _Finish(Annotator(cfg, "vllm", tiny_lm), final=True)
    out = finish(to_table_rows([post, error_row])).to_pylist()
    assert [(r["decision"], r["reason"]) for r in out] == [("kept", "instructional"), ("quarantined", "engine_error")]
    assert "max_model_len" in out[1]["detail"]
    with pytest.raises(EngineUnavailable, match="GPU"):
        backend.preflight()


def to_table_rows(rows):
    import pyarrow as pa

    keys = sorted({k for r in rows for k in r if k not in ("messages",)})
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])
