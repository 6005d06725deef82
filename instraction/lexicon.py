"""The built-in cooking lexicon shared by the word tokenizer, the rules curation backend and SynthKitchen.

Verbs carry a coarse motion class: a verb-altered hard negative swaps a verb for one of a *different* class,
so the negative is semantically different (paper Sec. 3), not a synonym.
"""

from __future__ import annotations

import functools

# verb -> motion class. Verbs in the same class are near-synonyms and never replace each other in a negative.
VERBS: dict[str, str] = {
    # breaking / separating
    "crack": "break", "break": "break", "split": "break", "separate": "break", "peel": "break",
    # circular mixing
    "whisk": "whisk", "beat": "whisk", "whip": "whisk",
    "stir": "stir", "mix": "stir", "fold": "stir", "combine": "stir", "blend": "stir",
    # pouring / adding
    "pour": "pour", "drizzle": "pour", "add": "pour", "sprinkle": "sprinkle", "season": "sprinkle", "dust": "sprinkle",
    # turning
    "flip": "flip", "turn": "flip",
    # translation
    "slide": "slide", "push": "slide", "spread": "spread", "smear": "spread",
    # cutting
    "chop": "chop", "cut": "chop", "slice": "chop", "dice": "chop", "mince": "chop", "cube": "chop",
    "grate": "grate", "shred": "grate",
    # rolling / pressing
    "roll": "roll", "knead": "press", "press": "press", "flatten": "press", "mash": "press", "squeeze": "press",
    "shake": "shake", "toss": "shake",
    "lift": "lift", "raise": "lift", "pick": "lift", "remove": "lift", "take": "lift",
    "drop": "drop", "place": "drop", "put": "drop", "set": "drop", "lay": "drop", "transfer": "drop",
    # heat
    "cook": "heat", "fry": "heat", "bake": "heat", "boil": "heat", "simmer": "heat", "heat": "heat",
    "roast": "heat", "grill": "heat", "saute": "heat", "toast": "heat", "melt": "heat", "steam": "heat",
    # misc
    "wash": "wash", "rinse": "wash", "drain": "drain", "strain": "drain",
    "cover": "cover", "wrap": "cover", "open": "open", "close": "cover", "serve": "serve", "garnish": "sprinkle",
    "measure": "measure", "weigh": "measure", "scoop": "scoop", "spoon": "scoop", "ladle": "scoop",
    "brush": "spread", "coat": "spread", "dip": "dip", "soak": "dip", "marinate": "dip", "stuff": "fill",
    "fill": "fill", "shape": "press", "form": "press", "twist": "twist", "tie": "twist", "pinch": "twist",
    "grind": "grate", "crush": "press", "pound": "press", "tear": "break", "trim": "chop", "core": "chop",
    "skewer": "fill", "layer": "drop", "arrange": "drop", "chill": "cool", "cool": "cool", "freeze": "cool",
    "rest": "cool", "let": "cool", "check": "measure", "taste": "measure", "scrape": "spread", "wipe": "wash",
    "tap": "chop", "tilt": "pour", "swirl": "stir", "rotate": "flip", "spin": "stir", "lower": "drop",
}

# SynthKitchen's verbs and objects: each verb has its own motion and each object its own shape and colour in
# instraction/data/render.py (a test holds the two lists equal).
SYNTH_VERBS = ["crack", "whisk", "stir", "pour", "flip", "slide", "chop", "roll", "press", "shake", "lift", "drop"]
SYNTH_OBJECTS = ["egg", "tomato", "dough", "bowl", "pan", "knife", "carrot", "lemon"]

PARTICLES = {"up", "down", "out", "off", "in", "over", "on", "away", "aside", "back", "together", "apart"}
PREPOSITIONS = {
    "into", "in", "onto", "on", "over", "with", "to", "from", "for", "until", "at", "under", "through",
    "across", "around", "inside", "by", "of", "about", "along", "against", "between", "off", "out",
}
CONNECTIVES = ["then", "and then", "after that", "next", "and", "finally", "now", "first", "once done"]

# primary object -> category (InstrAct-Dynamics pools; Sec. 5.3)
OBJECTS: dict[str, str] = {
    "egg": "Ingredients", "eggs": "Ingredients", "tomato": "Ingredients", "onion": "Ingredients",
    "garlic": "Ingredients", "carrot": "Ingredients", "potato": "Ingredients", "flour": "Ingredients",
    "butter": "Ingredients", "milk": "Ingredients", "sugar": "Ingredients", "salt": "Ingredients",
    "pepper": "Ingredients", "oil": "Ingredients", "water": "Ingredients", "cheese": "Ingredients",
    "chicken": "Ingredients", "beef": "Ingredients", "fish": "Ingredients", "rice": "Ingredients",
    "pasta": "Ingredients", "lemon": "Ingredients", "apple": "Ingredients", "banana": "Ingredients",
    "herbs": "Ingredients", "cream": "Ingredients", "yolk": "Ingredients", "white": "Ingredients",
    "dough": "Processed food", "batter": "Processed food", "sauce": "Processed food", "bread": "Processed food",
    "pancake": "Processed food", "cake": "Processed food", "soup": "Processed food", "salad": "Processed food",
    "mixture": "Processed food", "jam": "Processed food", "noodles": "Processed food", "filling": "Processed food",
    "pan": "Tools & appliances", "bowl": "Tools & appliances", "knife": "Tools & appliances",
    "pot": "Tools & appliances", "spoon": "Tools & appliances", "whisk": "Tools & appliances",
    "mug": "Tools & appliances", "cup": "Tools & appliances", "board": "Tools & appliances",
    "oven": "Tools & appliances", "plate": "Tools & appliances", "tray": "Tools & appliances",
    "lid": "Tools & appliances", "spatula": "Tools & appliances", "blender": "Tools & appliances",
    "container": "Tools & appliances", "jar": "Tools & appliances", "sheet": "Tools & appliances",
    "pin": "Tools & appliances", "grater": "Tools & appliances", "sieve": "Tools & appliances",
}

FUNCTION_WORDS = {
    "the", "a", "an", "it", "them", "this", "that", "these", "those", "some", "of", "and", "then", "you",
    "i", "we", "your", "my", "our", "is", "are", "be", "will", "can", "just", "now", "so", "to", "all",
    "little", "bit", "small", "large", "big", "side", "well", "really", "very", "again", "next", "after",
    "first", "finally", "once", "done", "until", "gently", "quickly", "slowly", "carefully", "minutes",
    "seconds", "top", "bottom", "half", "one", "two", "three", "more", "other", "each", "its",
    "hey", "guys", "welcome", "back", "channel", "today", "subscribe", "like", "video", "thanks",
    "watching", "hope", "enjoy", "um", "uh", "okay", "yeah", "know", "going", "gonna", "let's", "see",
    "what", "how", "do", "don't", "think", "really", "love", "favorite", "recipe", "kitchen", "music",
    "laughs", "oh", "wow", "nice", "good", "great", "look", "at", "here", "there", "got", "get",
}


def ing(verb: str) -> str:
    """'stir' -> 'stirring', 'slice' -> 'slicing', 'flip' -> 'flipping'."""
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ing"
    vowels = "aeiou"
    if (
        len(verb) >= 3
        and verb[-1] not in vowels + "wxy"
        and verb[-2] in vowels
        and verb[-3] not in vowels
        and verb not in {"open", "season", "layer", "lower", "measure", "marinate", "garnish", "skewer"}
    ):
        return verb + verb[-1] + "ing"
    return verb + "ing"


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Every word the lexicon knows, sorted: the word tokenizer's fixed vocabulary (stable across runs)."""
    words = set(VERBS) | {ing(v) for v in VERBS} | PARTICLES | PREPOSITIONS | set(OBJECTS) | FUNCTION_WORDS
    for connective in CONNECTIVES:
        words.update(connective.split())
    return tuple(sorted(words))
