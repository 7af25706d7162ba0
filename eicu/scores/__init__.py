"""Early-warning scores: NEWS2, MEWS and qSOFA from versioned definitions, one evaluator."""

from eicu.scores.assembly import (
    AssembledBatch,
    AssemblyPolicy,
    assemble,
    assemble_arrays,
    assemble_mews,
    assemble_news2,
    assemble_qsofa,
)
from eicu.scores.definitions import (
    BUILTIN,
    MEWS,
    NEWS2,
    QSOFA,
    ScoreDefinition,
    definition_from_mapping,
    load_definition,
)
from eicu.scores.deterioration import (
    DeteriorationConfig,
    DeteriorationSignal,
    DeteriorationTracker,
    TrendParam,
    TrendState,
)
from eicu.scores.evaluate import (
    ScoreBatch,
    ScoreResult,
    evaluate,
    evaluate_array,
    mews,
    news2,
    qsofa,
)

__all__ = [
    "BUILTIN",
    "MEWS",
    "NEWS2",
    "QSOFA",
    "AssembledBatch",
    "AssemblyPolicy",
    "DeteriorationConfig",
    "DeteriorationSignal",
    "DeteriorationTracker",
    "ScoreBatch",
    "ScoreDefinition",
    "ScoreResult",
    "TrendParam",
    "TrendState",
    "assemble",
    "assemble_arrays",
    "assemble_mews",
    "assemble_news2",
    "assemble_qsofa",
    "definition_from_mapping",
    "evaluate",
    "evaluate_array",
    "load_definition",
    "mews",
    "news2",
    "qsofa",
]
