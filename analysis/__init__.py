"""Analysis of benchmark results (reads results/ files; never loads a model).

    python -m analysis.report --results results/ --out results/report/
"""

from .errors import holm, paired_test
from .load import AnalysisError, load_results
from .pareto import pareto_frontier

__all__ = ["AnalysisError", "holm", "load_results", "paired_test", "pareto_frontier"]
