"""SynthKitchen captions: ASR-like narration of the actions in order, or pure chatter.

Instructional captions say each action as a verb phrase a rules parser can recover in order ("V + N",
"V + N + Prep + N", "V + it + particle", "V-ing ..."), joined by order-preserving connectives and mixed with filler
("okay so first crack the egg um then whisk it quickly and then pour it into the pan you know"). Chatter captions
hold no cooking verb at all ("hey guys welcome back to my channel"). Only the action verbs of a clip come from
``lexicon.VERBS``: every other word is checked against it (tests/test_synthetic.py).
"""

from __future__ import annotations

import numpy as np

from instraction import lexicon

OPENERS = ["", "", "okay so", "so", "okay", "now", "so um", "okay now", "hey guys so", "so today", "alright so"]
FIRSTS = ["", "", "first"]
CONNECTIVES = ["then", "and then", "after that", "next", "and", "now", "once done", "and now"]
LASTS = ["finally", "and finally", "and then", "then"]
FILLERS = ["um", "uh", "you know", "okay", "yeah", "so", "oh"]
CLOSERS = ["you know", "okay", "yeah", "and that's it", "really nice", "just like that", "there you go"]
ADVERBS = ["gently", "quickly", "slowly", "carefully", "really gently", "a little bit", "really quickly"]
CHATTER = [
    "hey guys welcome back to my channel", "thanks for watching", "don't forget to like and subscribe",
    "hope you enjoy this video", "this is my favorite recipe", "oh wow that looks really good",
    "what do you think", "i really love this kitchen", "see you in the next video", "okay so um yeah",
    "my kids love it", "it is really nice here today", "you know what i think", "so good", "oh nice",
    "here we are", "look at that", "music", "laughs", "today is a really good day", "thank you so much",
    "how are you all doing", "i hope you like it", "all of my favorite things", "good morning everyone",
]
PARTICLE = {"lift": "up", "flip": "over", "chop": "up", "press": "down", "roll": "out", "drop": "in",
            "pour": "in", "stir": "in", "whisk": "together", "slide": "over", "shake": "off"}
DESTINATION = {
    "crack": ["into the bowl", "into the pan", "into the cup"],
    "pour": ["into the bowl", "into the pan", "onto the plate", "into the pot"],
    "slide": ["onto the plate", "into the pan", "across the board", "onto the tray"],
    "drop": ["into the bowl", "into the pot", "onto the tray", "into the pan"],
    "lift": ["off the board", "from the pan", "off the tray"],
    "roll": ["on the board", "across the board", "on the tray"],
    "stir": ["in the bowl", "in the pot", "in the pan"],
    "whisk": ["in the bowl", "in the cup"],
    "chop": ["on the board"],
    "press": ["on the board", "into the pan", "onto the tray"],
    "shake": ["in the pan", "over the bowl"],
    "flip": ["in the pan", "onto the plate"],
}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def action_phrase(verb: str, obj: str, mentioned: bool, rng: np.random.Generator) -> str:
    """One spoken verb phrase for ``verb obj``; ``it`` may stand for the object once it has been named."""
    ref = "it" if mentioned and rng.random() < 0.5 else f"the {obj}"
    dest = [d for d in DESTINATION.get(verb, []) if not d.endswith(f" {obj}")]
    form = rng.random()
    if form < 0.15:  # V-ing
        return _pick(rng, [f"{lexicon.ing(verb)} {ref}", f"we are {lexicon.ing(verb)} {ref}",
                           f"i am {lexicon.ing(verb)} {ref}", f"just {lexicon.ing(verb)} {ref}"])
    if form < 0.35 and dest:  # V + N + Prep + N
        return f"{verb} {ref} {_pick(rng, dest)}"
    if form < 0.45 and verb in PARTICLE:  # V + it + particle
        return f"{verb} {ref} {PARTICLE[verb]}"
    head = _pick(rng, ["", "", "", "you", "you can", "we will", "i will", "just", "gonna"])
    phrase = f"{head} {verb} {ref}".strip()
    if rng.random() < 0.25:
        adverb = _pick(rng, ADVERBS)
        phrase = f"{adverb} {phrase}" if rng.random() < 0.5 and not head else f"{phrase} {adverb}"
    return phrase


def instructional_caption(verbs: list[str], obj: str, rng: np.random.Generator, max_words: int) -> str:
    """The actions in order as ASR-like narration; optional chatter/filler is dropped beyond ``max_words``."""
    core: list[str] = []
    for i, verb in enumerate(verbs):
        if i == 0:
            lead = _pick(rng, FIRSTS)
        elif i == len(verbs) - 1 and len(verbs) >= 3 and rng.random() < 0.5:
            lead = _pick(rng, LASTS)
        else:
            lead = _pick(rng, CONNECTIVES)
        core.append(f"{lead} {action_phrase(verb, obj, i > 0, rng)}".strip())
    # optional parts, most expendable last
    opener = _pick(rng, OPENERS)
    fillers = {i: _pick(rng, FILLERS) for i in range(1, len(core)) if rng.random() < 0.25}
    closer = _pick(rng, CLOSERS) if rng.random() < 0.35 else ""
    prefix = _pick(rng, CHATTER) if rng.random() < 0.2 else ""
    suffix = _pick(rng, CHATTER) if rng.random() < 0.15 else ""
    while True:
        parts = [prefix, opener]
        for i, phrase in enumerate(core):
            parts += [fillers.get(i, ""), phrase]
        parts += [closer, suffix]
        words = " ".join(p for p in parts if p).split()
        text = " ".join(w for i, w in enumerate(words) if i == 0 or w != words[i - 1])  # no "so so"
        if len(text.split()) <= max_words:
            return text
        if suffix or prefix:
            suffix, prefix = "", suffix and prefix
        elif fillers or closer:
            fillers, closer = {}, ""
        elif opener:
            opener = ""
        else:  # the plainest phrasing of every action: the actions themselves are never cut
            plain = [f"{verb} the {obj}" if i == 0 else f"then {verb} it" for i, verb in enumerate(verbs)]
            return " ".join(plain)


def chatter_caption(rng: np.random.Generator) -> str:
    """1-3 chatter sentences with no cooking verb."""
    n = 1 + int(rng.integers(3))
    return " ".join(_pick(rng, CHATTER) for _ in range(n))
