"""Mapping a function over images in forked worker processes (shared by the per-image stages)."""

import multiprocessing


def parallel_map(func, items, workers, *, ordered=True, chunksize=1):
    """Yield func(item) for every item, from `workers` forked processes, or in this process when
    workers is 1 (which keeps tracebacks simple). Unordered results come as soon as they are done."""
    if workers <= 1:
        yield from map(func, items)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        imap = pool.imap if ordered else pool.imap_unordered
        yield from imap(func, items, chunksize=chunksize)
