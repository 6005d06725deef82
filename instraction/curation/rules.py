"""Deterministic caption rules over the shared lexicon: the offline curation backend and the text analysis that
every backend's negatives rely on (where each action's verb sits in the caption, in which inflection).

``analyze(caption)`` tokenises once (lower-cased words and punctuation with character spans) and finds the
action verbs left to right: a lexicon verb form counts as an action when it opens a clause (caption start,
after punctuation, a connective such as "and then", a subject "you"/"we", "to", "let it", an adverb...) and not
when a determiner or another verb precedes it ("the whisk", "add chopped onions"). Each action is normalised
into one of the paper's patterns (Sec. 3): "V + N" (``crack egg``: the head noun of the direct object, a
pronoun resolved to the last object mentioned), "V + Prep + N" (``pour into bowl``) when there is no direct
object, "V-ing" (``whisking``) when there is neither.

Everything here is pure Python on small dicts and precompiled regexes: the rules backend's budget is about
50 microseconds per caption including negatives (benchmark goal 20,000 captions/s per core).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from instraction import lexicon

_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+(?:[.,]\d+)?|[^\sA-Za-z\d]")

# --- inflection -----------------------------------------------------------------------------------------------

_IRREGULAR_PAST = {
    "break": "broke", "split": "split", "beat": "beat", "cut": "cut", "put": "put", "set": "set",
    "shake": "shook", "take": "took", "freeze": "froze", "grind": "ground", "lay": "laid", "tear": "tore",
    "spin": "spun", "spread": "spread", "let": "let", "cast": "cast", "shred": "shredded", "rest": "rested",
}
FORMS = ("base", "s", "ed", "ing")


def _doubles(verb: str) -> bool:
    return lexicon.ing(verb) == verb + verb[-1] + "ing"


@functools.lru_cache(maxsize=8192)
def inflect(verb: str, form: str) -> str:
    """The ``form`` ("base" | "s" | "ed" | "ing") of a lemma: inflect("chop", "ed") -> "chopped"."""
    if form == "base":
        return verb
    if form == "ing":
        return lexicon.ing(verb)
    if form == "s":
        if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
            return verb + "es"
        if len(verb) > 1 and verb.endswith("y") and verb[-2] not in "aeiou":
            return verb[:-1] + "ies"
        return verb + "s"
    if form == "ed":
        if verb in _IRREGULAR_PAST:
            return _IRREGULAR_PAST[verb]
        if _doubles(verb):
            return verb + verb[-1] + "ed"
        if verb.endswith("e"):
            return verb + "d"
        if len(verb) > 1 and verb.endswith("y") and verb[-2] not in "aeiou":
            return verb[:-1] + "ied"
        return verb + "ed"
    raise ValueError(f"unknown verb form {form!r}; one of {FORMS}")


def _build_forms() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for verb in lexicon.VERBS:  # base forms first: they win over another lemma's inflection
        table[verb] = (verb, "base")
    for form in ("ing", "s", "ed"):
        for verb in lexicon.VERBS:
            table.setdefault(inflect(verb, form), (verb, form))
    return table


VERB_FORMS: dict[str, tuple[str, str]] = _build_forms()
"""Every inflection of every lexicon verb -> (lemma, form)."""


def lemma_of(word: str) -> str | None:
    """'whisking' -> 'whisk'; None for a word that is not a lexicon verb form."""
    hit = VERB_FORMS.get(word)
    return hit[0] if hit else None


def verb_in_caption(verb: str, caption_words: set[str]) -> bool:
    """Whether ``verb`` (any inflection, lexicon verb or not) occurs among the caption's lower-cased words."""
    if verb in caption_words:
        return True
    lemma = lemma_of(verb)
    if lemma is None:  # a verb outside the lexicon: try the regular inflections and a stripped -ing/-ed
        stems = {verb}
        for suffix in ("ing", "ed", "s"):
            if verb.endswith(suffix) and len(verb) > len(suffix) + 2:
                stem = verb[: -len(suffix)]
                stems.update({stem, stem + "e", stem[:-1] if stem[-1:] == stem[-2:-1] else stem})
        return any(inflect(s, f) in caption_words for s in stems for f in FORMS)
    return any(inflect(lemma, f) in caption_words for f in FORMS)


# --- word classes ---------------------------------------------------------------------------------------------

PUNCT = frozenset(",.;:!?-()\"")
CONNECTIVE_WORDS = frozenset(
    {"and", "then", "next", "now", "first", "firstly", "finally", "lastly", "after", "that", "once", "done",
     "also", "so", "afterwards", "later", "second", "third", "or", "before", "while", "until", "when", "but"}
)
_SUBJECTS = frozenset(
    {"you", "we", "i", "you'll", "we'll", "i'll", "let's", "lets", "we're", "you're", "i'm", "they", "gonna"}
)
_MODALS = frozenset(
    {"can", "will", "should", "must", "could", "would", "to", "please", "just", "simply", "gently",
     "carefully", "slowly", "quickly", "thoroughly", "lightly", "briefly", "immediately", "again", "keep",
     "start", "begin", "continue", "really", "then", "now", "also", "first", "finally", "next"}
)
OPENERS = CONNECTIVE_WORDS | _SUBJECTS | _MODALS
"""A lexicon verb right after one of these (or punctuation, or the caption start) opens an action."""
_DETERMINERS = frozenset(
    {"the", "a", "an", "your", "my", "our", "this", "that", "these", "those", "some", "its", "their", "his",
     "her", "each", "every", "any", "no", "more", "another"}
)
_PRONOUNS = frozenset({"it", "them", "everything", "all", "this", "that", "these", "those", "both"})
_NP_SKIP = _DETERMINERS | frozenset(
    {"little", "bit", "small", "large", "big", "all", "other", "whole", "half", "one", "two", "three", "four",
     "five", "few", "couple", "pinch", "cup", "cups", "spoon", "spoonful", "tablespoon", "teaspoon", "handful",
     "piece", "pieces", "side", "rest", "top", "bottom", "of", "very", "nice", "fresh", "remaining"}
)
_PREPOSITIONS = lexicon.PREPOSITIONS - {"of"}
_PLACE_PREPOSITIONS = _PREPOSITIONS - {"until", "for", "at", "by", "about", "of"}  # "V + Prep + N" (not time)
_ADJECTIVES = frozenset(
    {"little", "small", "large", "big", "whole", "fresh", "hot", "cold", "warm", "clean", "wooden", "metal",
     "electric", "new", "same", "other", "another", "medium", "hand", "stand"}
)
_NOT_BEFORE_VERB = _DETERMINERS | _ADJECTIVES | (_PREPOSITIONS - {"to", "over", "off", "out", "in", "on"})
_BE = frozenset({"are", "is", "am", "was", "were", "be", "been", "being", "we're", "you're", "i'm"})
_PARTICLES_ONLY = frozenset(lexicon.PARTICLES - lexicon.PREPOSITIONS)  # up, down, away, aside, back, together...
CHATTER = frozenset(
    {"subscribe", "channel", "welcome", "comment", "comments", "bell", "notification", "sponsor", "sponsored",
     "link", "description", "video", "videos", "guys", "thanks", "thank", "watching", "hey", "hello", "hi",
     "um", "uh", "laughs", "applause", "instagram", "youtube", "follow", "favorite", "delicious", "yummy"}
)
"""Conversational markers (greetings, channel chatter, reactions)."""
_FILLERS = frozenset({"um", "uh", "okay", "ok", "yeah", "oh", "alright", "well", "right", "hmm", "wow"})
_NP_STOP = PUNCT | CONNECTIVE_WORDS | _PREPOSITIONS | _SUBJECTS | _PARTICLES_ONLY | _FILLERS
_MAX_NP = 6
_NEVER_ACTIONS = frozenset({"let", "lets"})  # causative: the action is the verb after "let it"


@dataclass(slots=True)
class Action:
    """One action found in a caption. ``index`` is the verb's token index; ``form`` its inflection."""

    verb: str
    form: str
    index: int
    obj: str = ""
    prep: str = ""
    pobj: str = ""

    @property
    def phrase(self) -> str:
        if self.obj:
            return f"{self.verb} {self.obj}"
        if self.prep and self.pobj:
            return f"{self.verb} {self.prep} {self.pobj}"
        return inflect(self.verb, "ing")


class Analysis:
    """A tokenised caption: ``words`` lower-cased tokens; ``spans`` their (start, end) character offsets in
    ``text``, computed on first use (only kept captions need them, for the negatives)."""

    __slots__ = ("text", "words", "_spans", "actions", "chatter")

    def __init__(self, text: str, words: list[str]):
        self.text, self.words, self._spans = text, words, None
        self.actions: list[Action] = []
        self.chatter = 0

    @property
    def spans(self) -> list[tuple[int, int]]:
        if self._spans is None:
            if self.text.isascii():  # same tokens, same offsets: a find per token beats a match object per token
                find, pos, spans = self.text.lower().find, 0, []
                append = spans.append
                for w in self.words:
                    start = find(w, pos)
                    pos = start + len(w)
                    append((start, pos))
                self._spans = spans
            else:
                self._spans = [m.span() for m in _TOKEN.finditer(self.text)]
        return self._spans

    @property
    def phrases(self) -> list[str]:
        return [a.phrase for a in self.actions]

    def primary_object(self) -> str:
        """Most frequent direct object (first on ties), else prepositional object, else first lexicon object."""
        for attr in ("obj", "pobj"):
            counts: dict[str, int] = {}
            for a in self.actions:
                word = getattr(a, attr)
                if word:
                    counts[word] = counts.get(word, 0) + 1
            if counts:
                return max(counts, key=counts.__getitem__)  # the first of the most frequent (dicts keep order)
        for word in self.words:
            if is_object(word):
                return word
        return ""


def tokenize(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Lower-cased tokens and their character spans."""
    words, spans = [], []
    for m in _TOKEN.finditer(text):
        words.append(m.group().lower())
        spans.append(m.span())
    return words, spans


def tokenize_lower(text: str) -> list[str]:
    """Lower-cased tokens (the same tokens as :func:`tokenize`, without spans: one C-level regex call)."""
    if text.isascii():  # lower() keeps ASCII lengths and token boundaries: one C call for the whole caption
        return _TOKEN.findall(text.lower())
    return [w.lower() for w in _TOKEN.findall(text)]


def _opens(words: list[str], i: int) -> bool:
    """Whether the lexicon verb form at token ``i`` is an action verb (not a noun, adjective or argument).

    ASR puts fillers, chatter and subjects anywhere ("okay so um crack...", "i hope you like it flip..."), so
    rather than list what may precede a verb this rules out what may not: a determiner or adjective ("the
    whisk", "a small whisk"), a preposition ("with whisk", "until melted"), a number, another verb (its argument:
    "add chopped onions"), a 'be' (passive "is mixed"; the progressive "are whisking" is an action) and an
    object noun (compound "egg whisk", unless a determiner or pronoun follows: "the egg whisk it").
    """
    if i == 0:
        return True
    prev = words[i - 1]
    if prev in OPENERS or prev in PUNCT:
        return True
    if prev in _BE:  # progressive "are whisking" or chatter "here we are" + verb; not the passive "is mixed"
        return VERB_FORMS[words[i]][1] in ("ing", "base")
    if prev in _NOT_BEFORE_VERB or prev in VERB_FORMS or prev[0].isdigit():
        return False
    if is_object(prev):
        return i + 1 < len(words) and (words[i + 1] in _DETERMINERS or words[i + 1] in _PRONOUNS)
    return True


_OBJECT_FORMS = frozenset(f for o in lexicon.OBJECTS for f in (o, o + "s", o + "es"))


def is_object(word: str) -> bool:
    """A lexicon object noun, singular or plural ('onions', 'tomatoes', 'herbs')."""
    return word in _OBJECT_FORMS


def _noun_phrase(words: list[str], j: int, stop_at: int) -> tuple[str, int]:
    """Head noun of the noun phrase starting at token j (before ``stop_at``) and the index after it.

    Without a tagger the phrase ends at punctuation, a connective, a preposition, a subject or particle, and,
    once a lexicon object noun was seen, at the first word that is not one ("the egg using the side..." ->
    'egg'). Otherwise the last content word is the head ("the small container" -> 'container').
    """
    head, end, head_is_object = "", min(stop_at, j + _MAX_NP, len(words)), False
    k = j
    while k < end:
        w = words[k]
        if w in _NP_STOP:
            break
        if w in _PRONOUNS and not head:
            return w, k + 1
        if w not in _NP_SKIP and not w.isdigit():
            obj = is_object(w)
            if head_is_object and not obj:
                break
            if head and (w in VERB_FORMS or w.endswith(("ing", "ly"))):
                break
            head, head_is_object = w, obj
        k += 1
    return head, k


def analyze(text: str) -> Analysis:
    """Tokenise ``text`` and find its actions in temporal (= textual) order with their arguments."""
    words = tokenize_lower(text)
    analysis = Analysis(text, words)
    verb_at = []
    for i, w in enumerate(words):
        hit = VERB_FORMS.get(w)
        if hit is not None and w not in _NEVER_ACTIONS and _opens(words, i):
            verb_at.append((i, hit))
    last_obj = ""
    for n, (i, (lemma, form)) in enumerate(verb_at):
        stop = verb_at[n + 1][0] if n + 1 < len(verb_at) else len(words)
        action = Action(lemma, form, i)
        j = i + 1
        while j < stop and words[j] in _PARTICLES_ONLY:  # "pick up", "set aside": particles are not the object
            j += 1
        head, j2 = _noun_phrase(words, j, stop)
        if head in _PRONOUNS:
            head = last_obj if head in ("it", "them") else ""
            if not head:  # an unresolvable pronoun: fall back to a prepositional object if one follows
                j = j2
        if head:
            action.obj = head
            last_obj = head
        elif j < stop and words[j] in _PLACE_PREPOSITIONS:
            pobj, _ = _noun_phrase(words, j + 1, stop)
            if pobj and pobj not in _PRONOUNS:
                action.prep, action.pobj = words[j], pobj
        analysis.actions.append(action)
    analysis.chatter = sum(map(CHATTER.__contains__, words))
    return analysis


def classify(analysis: Analysis) -> tuple[bool, str]:
    """Stage (1) filter: (keep, reason). Actions on chatter objects ("turn on the bell") do not count; a caption
    with more than four chatter words per action is conversational ("hey guys welcome back ... crack an egg")."""
    analysis.actions = [a for a in analysis.actions if a.obj not in CHATTER and a.pobj not in CHATTER]
    if not analysis.actions:
        return False, "conversational" if analysis.chatter else "no_visible_action"
    if analysis.chatter > 4 * len(analysis.actions):
        return False, "conversational"
    return True, "instructional"
