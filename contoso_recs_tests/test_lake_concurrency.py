"""Parallel writers of one lake table, as the sources' steps are when Dagster runs them at once."""

import multiprocessing

import polars as pl

from contoso_recs.lake.quarantine import QUARANTINE_TABLE, write_quarantine
from contoso_recs.resources.lake import Lake

WRITES = 8


def reject_rows(root: str, source: str, barrier) -> None:
    lake = Lake(root_uri=root)
    barrier.wait()
    for i in range(WRITES):
        rows = pl.DataFrame({"source_ref": [f"{source}:{i}"], "reason": ["duplicate"], "raw": [""]})
        write_quarantine(lake, source, rows)


def test_sources_writing_their_rejects_at_the_same_time_all_land(tmp_path):
    """Three processes MERGE into the quarantine at once (a barrier starts them together):
    Delta refuses the commits that conflict, and each is tried again on the new version, so
    no step fails and every reject is kept once."""
    root = str(tmp_path / "lake")
    sources = ("order_lines", "customers", "product_images")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(sources))
    workers = [context.Process(target=reject_rows, args=(root, s, barrier)) for s in sources]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    kept = Lake(root_uri=root).read(QUARANTINE_TABLE)
    assert sorted(kept["source_ref"].to_list()) == sorted(
        f"{source}:{i}" for source in sources for i in range(WRITES)
    )


def upsert_one_key(root: str, barrier) -> None:
    lake = Lake(root_uri=root)
    barrier.wait()
    lake.upsert(
        "customers", pl.DataFrame({"customer_id": [1], "city": ["Redmond"]}), ["customer_id"]
    )


def test_writers_creating_the_same_new_table_at_once_keep_each_key_once(tmp_path):
    """The first write to a table creates it; a writer that finds it created meanwhile MERGEs
    instead of appending a second copy of the key."""
    root = str(tmp_path / "lake")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    workers = [context.Process(target=upsert_one_key, args=(root, barrier)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert Lake(root_uri=root).read("customers")["customer_id"].to_list() == [1]
