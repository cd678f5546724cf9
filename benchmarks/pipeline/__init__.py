"""The run pipeline: data, retrievers, embedding + cache, index, metrics, measurements, run record and
results store. Commands (`benchmarks.run`, `.sweep`, ...) and studies are built on it."""
