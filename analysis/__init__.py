"""Analysis of benchmark results (reads results/ files; never loads a model)."""
