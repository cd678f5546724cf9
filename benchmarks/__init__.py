"""Benchmark runner: data loading, FAISS retrieval, metrics, timing and results."""
