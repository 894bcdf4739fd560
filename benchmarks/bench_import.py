"""Zoo export -> import round trip: N models of a zoo written out as checkpoints and read back.

    python benchmarks/bench_import.py [--zoo runs/zoo/digits-mlp] [--models 1000] [--work runs/bench/import]

Exports the first `--models` models (by id) with `weightgen.zoo.exporting`, imports the folder with
`weightgen.zoo.importing` (the code paths of `weightgen zoo export` / `zoo import`), and checks that
the records (all but where they are stored: shard and row) and every weight tensor are identical.
The last line is JSON: models, equal records, bitwise-equal weights, seconds and models/s each way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from weightgen.zoo.exporting import export_many, select
from weightgen.zoo.importing import evaluate_missing, read_source, write_zoo
from weightgen.zoo.store import ZooStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="runs/zoo/digits-mlp")
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--work", default="runs/bench/import")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    store = ZooStore(args.zoo)
    records = select(store, ids=sorted(r["id"] for r in store.records)[: args.models])
    t0 = time.perf_counter()
    export_many(store, records, work / "exported")
    t1 = time.perf_counter()
    imported = read_source(work / "exported")
    evaluate_missing(imported.models)
    back = write_zoo(imported, work / "zoo", "round-trip", str(work / "exported"))
    t2 = time.perf_counter()
    strip = lambda rs: sorted(({k: v for k, v in r.items() if k not in ("shard", "row")} for r in rs),  # noqa: E731
                              key=lambda r: r["id"])
    same_records = strip(back.records) == strip(records)
    bitwise = all(torch.equal(a, back.state_dict(r["id"])[k]) for r in records for k, a in store.state_dict(r["id"]).items())
    print(json.dumps({"bench": "import", "models": len(records), "skipped": len(imported.skipped),
                      "same_records": same_records, "bitwise_weights": bitwise,
                      "export_s": round(t1 - t0, 2), "import_s": round(t2 - t1, 2),
                      "export_models_per_s": round(len(records) / (t1 - t0), 1),
                      "import_models_per_s": round(len(records) / (t2 - t1), 1)}))


if __name__ == "__main__":
    main()
