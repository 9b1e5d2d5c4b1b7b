"""Parameter budgets: the one counter (`count`), budget tables of models x methods (`table`), targets
and the search for the knob within one (`target`), tables as text and recipes (`format`), and what
`peftx budget` does (`command`).

Nothing here imports torch until a model is counted, so a cached table prints without it.
"""

from peftx.budget.command import BudgetOutput, budget_command
from peftx.budget.count import (
    MEMORY_SCHEMES,
    QUANTIZABLE_ROLES,
    Budget,
    MemoryScheme,
    MetaCounter,
    count_parameters,
    memory,
    model_budget,
    numel,
    recipe_budget,
)
from peftx.budget.format import FORMATS, check_format, emit_recipes, fmt_count, fmt_mem, render
from peftx.budget.table import BudgetRequest, BudgetRow, budget_table
from peftx.budget.target import Target, largest_within, parse_target

__all__ = [
    "FORMATS",
    "MEMORY_SCHEMES",
    "QUANTIZABLE_ROLES",
    "Budget",
    "BudgetOutput",
    "BudgetRequest",
    "BudgetRow",
    "MemoryScheme",
    "MetaCounter",
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
    "recipe_budget",
    "render",
]
