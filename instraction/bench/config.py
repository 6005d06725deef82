"""Configuration of InstrAct Bench construction and evaluation (paper Sec. 5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from instraction.config_checks import check_range


def _default_categories() -> dict:
    # primary object -> Ingredients | Processed food | Tools & appliances (Sec. 5.3); unknown objects: "Other".
    return {
        "egg": "Ingredients", "tomato": "Ingredients", "onion": "Ingredients", "carrot": "Ingredients",
        "potato": "Ingredients", "flour": "Ingredients", "butter": "Ingredients", "milk": "Ingredients",
        "dough": "Processed food", "batter": "Processed food", "sauce": "Processed food", "bread": "Processed food",
        "pancake": "Processed food", "cake": "Processed food",
        "pan": "Tools & appliances", "bowl": "Tools & appliances", "knife": "Tools & appliances",
        "pot": "Tools & appliances", "spoon": "Tools & appliances", "whisk": "Tools & appliances",
        "mug": "Tools & appliances", "cup": "Tools & appliances", "board": "Tools & appliances",
    }


@dataclass
class BenchConfig:
    out: Optional[str] = None
    """Where the bench Parquet files and manifest go; default: <data.annotations>/../bench."""
    holdout_fraction: float = 0.2
    """Share of source videos held out of training for the bench (split by source video, never by clip)."""
    semantic_candidates: int = 10
    """InstrAct-Semantic: the caption + 9 verb-altered negatives."""
    logic_min_actions: int = 3
    logic_max_negatives: int = 3
    """InstrAct-Logic: the caption + 2-3 order-swapped negatives (clips with >= logic_min_actions actions)."""
    dynamics_min_pool: int = 4
    dynamics_top_objects: int = 120
    categories: dict = field(default_factory=_default_categories)
    max_per_task: int = 2000
    """Instances per MCQ task (the paper uses 2,000)."""
    controls: list[str] = field(default_factory=lambda: ["reversed", "shuffled", "static"])
    """Temporal controls scored beside every task."""
    batch_size: int = 64
    seed: int = 0

    def validate(self, path: str) -> None:
        check_range(f"{path}.holdout_fraction", self.holdout_fraction, 0.0, 1.0)
        check_range(f"{path}.semantic_candidates", self.semantic_candidates, 2, None)
