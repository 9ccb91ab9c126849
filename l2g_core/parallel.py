"""Mapping a function over images in forked worker processes (shared by the per-image stages)."""

import collections
import concurrent.futures
import multiprocessing
import os


def available_cores():
    """Cores this process may run on (a SLURM or taskset allocation), not all of the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel_map(func, items, workers, *, ordered=True, chunksize=1):
    """Yield func(item) for every item, from `workers` forked processes, or in this process when
    workers is 1 (which keeps tracebacks simple). Unordered results come as soon as they are done."""
    if workers <= 1:
        yield from map(func, items)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        imap = pool.imap if ordered else pool.imap_unordered
        yield from imap(func, items, chunksize=chunksize)


def bounded_map(func, items, workers):
    """Yield func(item) in order, like parallel_map, but take items from `items` only while fewer
    than 2 * workers are in flight. For items that are large and made on the fly (a network's
    probability maps): Pool.imap would drain the producer into memory as fast as it can."""
    if workers <= 1:
        yield from map(func, items)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.apply_async(func, (item,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def threaded_map(func, items, in_flight=8):
    """Yield func(item) in order from one background thread, taking items while fewer than
    `in_flight` wait: for writing files (compression and disk time release the GIL) while the
    caller, e.g. a GPU loop, goes on producing."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:
        pending = collections.deque()
        for item in items:
            pending.append(writer.submit(func, item))
            if len(pending) >= in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
