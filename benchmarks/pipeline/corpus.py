"""A corpus held once, compactly: Arrow columns (id, title, text), in memory or in an Arrow file on disk.

A corpus read from disk is written to an Arrow IPC file as it is read (record batches of `BATCH_ROWS`
documents), so no whole corpus is ever held as Python objects. Passes over all documents (`chunks`)
read one batch at a time into the heap and drop it, so their memory stays bounded; random access (a
document by row, the ids) goes through a memory map of the same file, touching only the pages it reads.

`Corpus` is a read-only mapping {doc id: {"title", "text"}}, so code written against a dict keeps working;
looking one document up by id builds an id -> row dict on first use (~100 bytes a document), so the
pipeline looks ids up in bulk (`rows`) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])
BATCH_ROWS = 8192  # documents per record batch: the unit of a sequential read


class Corpus(Mapping):
    def __init__(self, table: pa.Table, path: Path | None = None):
        self.table, self.path = table, path
        self.ids = table.column("id")
        self._row: dict[str, int] | None = None

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def write(cls, docs: Iterable[tuple[str, str, str]], path: Path | None = None) -> "Corpus":
        """(id, title, text) triples -> a corpus; streamed into an Arrow file at `path`, else in memory."""
        sink = pa.OSFile(str(path), "wb") if path else pa.BufferOutputStream()
        with pa.ipc.new_file(sink, SCHEMA) as writer:
            for batch in batched(docs, BATCH_ROWS):
                writer.write_batch(pa.record_batch(list(zip(*batch)), schema=SCHEMA))
        if path:
            sink.close()
            return cls.open(path)
        return cls(pa.ipc.open_file(sink.getvalue()).read_all())

    @classmethod
    def open(cls, path: Path) -> "Corpus":
        return cls(pa.ipc.open_file(pa.memory_map(str(path))).read_all(), Path(path))

    @classmethod
    def from_dict(cls, docs: Mapping[str, dict], path: Path | None = None) -> "Corpus":
        if isinstance(docs, Corpus) and path is None:
            return docs
        return cls.write(((d, doc.get("title") or "", doc.get("text") or "") for d, doc in docs.items()), path)

    def map_chunks(self, fn: Callable[[dict], dict], path: Path | None = None) -> "Corpus":
        """A new corpus, `fn` applied to each chunk {id: doc} in turn (streamed into `path` if given)."""
        def docs():
            for _, chunk in self.chunks():
                for did, doc in fn(chunk).items():
                    yield did, doc.get("title") or "", doc.get("text") or ""
        return Corpus.write(docs(), path)

    # -- reading ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self) -> Iterator[str]:
        for chunk in self.ids.chunks:
            yield from chunk.to_pylist()

    def __getitem__(self, did: str) -> dict:
        if did not in self:
            raise KeyError(did)
        return self.doc(self._row[did])

    def __contains__(self, did) -> bool:
        if self._row is None:
            self._row = {d: i for i, d in enumerate(self)}
        return did in self._row

    def doc(self, row: int) -> dict:
        return {"title": self.table.column("title")[row].as_py(), "text": self.table.column("text")[row].as_py()}

    def id_at(self, row: int) -> str:
        return self.ids[row].as_py()

    def rows(self, ids: list[str]) -> np.ndarray:
        """Rows of `ids` (-1 where absent), by one hash lookup over the corpus."""
        found = pc.index_in(pa.array(ids, pa.string()), value_set=self.ids)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, dict]]:
        """(first row, {id: doc}) per record batch overlapping rows [start, stop), cut to that range;
        only those batches are read."""
        stop = len(self) if stop is None else stop
        sizes = [b.num_rows for b in self.table.to_batches()]  # the batches' lengths, from their headers
        firsts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        for i in range(int(np.searchsorted(firsts, start, side="right")) - 1, len(sizes)):
            if firsts[i] >= stop:
                return
            lo, hi = max(start - firsts[i], 0), min(stop - firsts[i], sizes[i])
            part = self._batch(i).slice(lo, hi - lo).to_pydict()
            yield firsts[i] + lo, {d: {"title": t, "text": x} for d, t, x in zip(part["id"], part["title"], part["text"])}

    def _batch(self, i: int) -> pa.RecordBatch:
        if self.path is None:
            return self.table.to_batches()[i]
        # A plain file read, not the memory map: a pass over every document must not leave it all resident.
        with pa.OSFile(str(self.path)) as f:
            return pa.ipc.open_file(f).get_batch(i)


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def duplicate(ids: pa.ChunkedArray) -> str | None:
    """An id that occurs twice, or None (a hash count in Arrow, not a Python set of every id)."""
    if pc.count_distinct(ids).as_py() == len(ids):
        return None
    counts = pc.value_counts(ids)
    return counts.field("values").filter(pc.greater(counts.field("counts"), 1))[0].as_py()
