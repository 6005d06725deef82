"""Versioned curation prompts, the JSON schema LLM backends must answer in, and the one parser they all share.

One LLM call per caption does paper Sec. 3 stages (1) and (2): classify the caption (only ``instructional``
captions are kept) and list its actions in temporal order as verb phrases in the paper's patterns "V + N"
("crack egg"), "V-ing" ("whisking") or "V + Prep + N" ("pour into bowl"), plus the clip's primary object
(InstrAct-Dynamics pools). Stage (3), the hard negatives, is code (``negatives.py``) so its validity holds
whatever the model says.

A prompt version is immutable once used: the annotation table records it and ``jobs/curate.py`` re-curates a
shard only when the version (or the model) changes. Edit by adding ``v2``, never by changing ``v1``.

    prompt = get_prompt("v1")
    messages = prompt.messages("crack the egg and then whisk it")
    annotation = parse_response(raw_text, caption)       # raises SchemaError(kind, ...) on a bad answer
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from instraction.curation import rules

CATEGORIES = ("instructional", "conversational", "off_topic", "no_visible_action")
"""The filter's classes. ``instructional`` is kept; the others become the ``reason`` of a dropped row."""

MAX_ACTIONS = 8
MAX_PHRASE_WORDS = 5
_PHRASE = re.compile(r"^[a-z]+(?:[-'][a-z]+)?(?: [a-z]+(?:[-'][a-z]+)?){0,%d}$" % (MAX_PHRASE_WORDS - 1))
_ARTICLES = {"the", "a", "an"}


class SchemaError(ValueError):
    """An LLM answer that fails the schema. ``kind`` is the (bounded) quarantine reason."""

    KINDS = ("empty_output", "invalid_json", "schema_mismatch", "ungrounded_action")

    def __init__(self, kind: str, detail: str):
        assert kind in self.KINDS, kind
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def output_schema(max_actions: int = MAX_ACTIONS) -> dict[str, Any]:
    """JSON schema of one answer (guided decoding on vLLM, ``response_format`` on OpenAI-compatible servers)."""
    return {
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": list(CATEGORIES)},
            "actions": {
                "type": "array",
                "items": {"type": "string", "minLength": 2, "maxLength": 48},
                "maxItems": max_actions,
            },
            "primary_object": {"type": "string", "maxLength": 32},
        },
        "required": ["category", "actions", "primary_object"],
        "additionalProperties": False,
    }


_SYSTEM_V1 = """You curate automatic speech transcripts of cooking videos for training a video model.
For each caption answer with one JSON object and nothing else:
{"category": one of "instructional", "conversational", "off_topic", "no_visible_action",
 "actions": [verb phrases in the order the actions happen],
 "primary_object": the main object handled, one lowercase noun, or ""}
A caption is "instructional" only if it describes concrete, visible food-related actions; greetings, channel
chatter, opinions and stories are "conversational"; talk about other topics is "off_topic".
Write each action in one of three patterns, lowercase, without articles: "V + N" (crack egg), "V-ing"
(whisking), "V + Prep + N" (pour into bowl). Use the caption's own verbs. Non-instructional captions have
no actions."""

_EXAMPLE_V1 = (
    "Crack the egg using the side of this ceramic mug and separate the white into the small container.",
    '{"category": "instructional", "actions": ["crack egg", "separate white"], "primary_object": "egg"}',
)
_EXAMPLE2_V1 = (
    "hey guys welcome back to my channel don't forget to subscribe",
    '{"category": "conversational", "actions": [], "primary_object": ""}',
)


@dataclass(frozen=True)
class Prompt:
    """One immutable prompt version: system text, few-shot examples, user and retry templates, schema."""

    version: str
    system: str
    examples: tuple[tuple[str, str], ...]
    user_template: str
    retry_template: str
    schema: dict = field(default_factory=output_schema)

    def messages(self, caption: str) -> list[dict[str, str]]:
        """OpenAI chat messages asking for the annotation of ``caption``."""
        out = [{"role": "system", "content": self.system}]
        for text, answer in self.examples:
            out.append({"role": "user", "content": self.user_template.format(caption=text)})
            out.append({"role": "assistant", "content": answer})
        out.append({"role": "user", "content": self.user_template.format(caption=caption)})
        return out

    def retry_messages(self, caption: str, raw_output: str, error: str) -> list[dict[str, str]]:
        """The one re-ask after an answer that failed the schema: the bad answer and what was wrong with it."""
        return self.messages(caption) + [
            {"role": "assistant", "content": raw_output[:2000]},
            {"role": "user", "content": self.retry_template.format(error=error[:300])},
        ]

    def prompt_chars(self, caption: str) -> int:
        """Characters of the whole request (the cheap pre-send guard against over-long prompts)."""
        return sum(len(m["content"]) for m in self.messages(caption))


PROMPTS: dict[str, Prompt] = {
    "v1": Prompt(
        version="v1",
        system=_SYSTEM_V1,
        examples=(_EXAMPLE_V1, _EXAMPLE2_V1),
        user_template="Caption: {caption}\nJSON:",
        retry_template="That answer is invalid ({error}). Answer again with only the JSON object.",
    ),
}


def get_prompt(version: str) -> Prompt:
    try:
        return PROMPTS[version]
    except KeyError:
        raise ValueError(f"unknown prompt version {version!r}; known: {sorted(PROMPTS)}") from None


@dataclass
class LLMAnnotation:
    """A parsed, validated answer. ``actions`` are normalised phrases grounded in the caption."""

    category: str
    actions: list[str]
    primary_object: str


def _json_object(text: str) -> Any:
    stripped = text.strip()
    if not stripped:
        raise SchemaError("empty_output", "the model returned no text")
    if stripped.startswith("```"):  # a fenced block: keep what is inside
        stripped = stripped.strip("`")
        stripped = stripped[4:] if stripped.startswith("json") else stripped
    start, end = stripped.find("{"), stripped.rfind("}")
    if start < 0 or end <= start:
        raise SchemaError("invalid_json", "no JSON object in the answer")
    try:
        return json.loads(stripped[start : end + 1])
    except json.JSONDecodeError as err:
        raise SchemaError("invalid_json", str(err)) from None


def normalise_phrase(phrase: str) -> str:
    """Lower-case, collapse spaces and drop articles: 'Crack the Egg ' -> 'crack egg'."""
    words = [w for w in phrase.lower().replace("_", " ").split() if w not in _ARTICLES]
    return " ".join(words)


def parse_response(text: str, caption: str, max_actions: int = MAX_ACTIONS) -> LLMAnnotation:
    """Parse and validate one LLM answer for ``caption``; raise :class:`SchemaError` when it fails.

    Checks, in order: a JSON object is present; it has exactly the schema's keys with the right types and a
    known category; every action is a short phrase in the paper's patterns whose verb occurs in the caption (in
    any inflection: a phrase the caption does not ground is a hallucination, not a curation).
    """
    obj = _json_object(text)
    if not isinstance(obj, dict):
        raise SchemaError("schema_mismatch", f"expected an object, got {type(obj).__name__}")
    missing = {"category", "actions", "primary_object"} - obj.keys()
    if missing:
        raise SchemaError("schema_mismatch", f"missing keys {sorted(missing)}")
    category, actions, primary = obj["category"], obj["actions"], obj["primary_object"]
    if category not in CATEGORIES:
        raise SchemaError("schema_mismatch", f"category {category!r} not in {list(CATEGORIES)}")
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        raise SchemaError("schema_mismatch", "actions must be a list of strings")
    if len(actions) > max_actions:
        raise SchemaError("schema_mismatch", f"{len(actions)} actions > {max_actions}")
    if not isinstance(primary, str):
        raise SchemaError("schema_mismatch", "primary_object must be a string")
    phrases = [normalise_phrase(a) for a in actions]
    words = set(rules.tokenize_lower(caption))
    for phrase in phrases:
        if not _PHRASE.match(phrase):
            raise SchemaError("schema_mismatch", f"action {phrase!r} is not a short verb phrase")
        if not rules.verb_in_caption(phrase.split()[0], words):
            raise SchemaError("ungrounded_action", f"verb of {phrase!r} does not occur in the caption")
    primary = normalise_phrase(primary)
    if category != "instructional":
        phrases = []
    return LLMAnnotation(category=category, actions=phrases, primary_object=primary)
