"""Budget tables: the counter is `peftx.model.budget`; here are budget tables of models x methods (`table`), targets
and the search for the knob within one (`target`), tables as text and recipes (`format`), and what
`peftx budget` does (`command`).

Nothing here imports torch until a model is counted, so a cached table prints without it.
"""

from peftx.model.budget import (
    MEMORY_SCHEMES,
    QUANTIZABLE_ROLES,
    Budget,
    MemoryScheme,
    count_parameters,
    fmt_count,
    memory,
    model_budget,
    numel,
)
from peftx.studies.budget.command import BudgetOutput, budget_command
from peftx.studies.budget.format import FORMATS, check_format, emit_recipes, fmt_mem, render
from peftx.studies.budget.table import BudgetRequest, BudgetRow, budget_table
from peftx.studies.budget.target import Target, largest_within, parse_target

__all__ = [
    "FORMATS",
    "MEMORY_SCHEMES",
    "QUANTIZABLE_ROLES",
    "Budget",
    "BudgetOutput",
    "BudgetRequest",
    "BudgetRow",
    "MemoryScheme",
    "Target",
    "budget_command",
    "budget_table",
    "check_format",
    "count_parameters",
    "emit_recipes",
    "fmt_count",
    "fmt_mem",
    "largest_within",
    "memory",
    "model_budget",
    "numel",
    "parse_target",
    "render",
]
