"""ZooStore: a model zoo on disk, self-describing and readable with no flags.

    zoo.json           format version, resolved config, arch and task tables, held-out tasks, shard plan
    records.jsonl      one line per trained model: id, task, arch, seed, init, held_out, shard, row, metrics
    shards/*.safetensors   models of one arch stacked per parameter, (N, *shape); each shard also carries
                       its own records in its metadata, so records.jsonl can always be rebuilt from shards

Every file is written atomically (temp + rename), and records.jsonl is rewritten whole from the
finished shards, so an interrupted build leaves no partial or duplicate record. Reads are
memory-mapped through `safetensors.safe_open`, so one model can be read without loading its shard.

Everything read is checked, since a zoo folder may be damaged or edited by hand: zoo.json's tables
and plan (types, unique ids, plain shard file names), every record against the plan (a record must
be the planned (id, task, seed) at its shard and row, so a negative or shifted `row`, a duplicated
line or a swapped id is a ZooError, not a wrong model) and against its shard's own copy (so an
edited metric is one too), and each shard, once per store, against its `sha256` (weightgen.atomic:
metadata and tensors), float dtypes and planned shapes. Shards written before the digest existed
have none and get every check but that one; a rebuild retrains a shard that fails its checks.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from weightgen import atomic
from weightgen.checkpoint import FLOAT_DTYPES
from weightgen.errors import ArchError, ZooError, short, shorten
from weightgen.specs import ArchSpec
from weightgen.tasks import TaskSpec, get_task

ZOO_FORMAT = "weightgen-zoo/1"
SHARD_FORMAT = "weightgen-zoo-shard/1"


class ZooStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._checked: dict[str, list[dict]] = {}  # shard file -> its records, once verified

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    # -- writing ------------------------------------------------------------------------------
    def write_manifest(self, manifest: dict) -> None:
        atomic.write_text(self.root / "zoo.json", json.dumps(manifest, indent=1))
        for key in ("manifest", "_plan", "archs"):
            self.__dict__.pop(key, None)
        self._checked.clear()

    def write_shard(self, name: str, tensors: dict[str, torch.Tensor], arch: dict, records: list[dict]) -> None:
        """`arch`: the shard's ArchSpec.to_dict(), or for a LoRA zoo what its adapters adapt."""
        meta = {"weightgen_format": SHARD_FORMAT, "arch": json.dumps(arch), "records": json.dumps(records)}
        atomic.write_safetensors(self.shard_dir / name, tensors, meta)
        self._checked.pop(name, None)

    def shard_records(self, name: str) -> list[dict] | None:
        """The records stored in a finished shard, or None if it is absent, unreadable or fails its
        checks (a rebuild then trains it again)."""
        self._plan  # noqa: B018 - a broken zoo.json is an error, not a reason to retrain every shard
        try:
            return self._checked_shard(name)
        except ZooError:
            return None

    def write_records(self, records: list[dict]) -> None:
        records = sorted(records, key=lambda r: r["id"])
        atomic.write_text(self.root / "records.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        self.__dict__.pop("records", None)
        self.__dict__.pop("_by_id", None)

    # -- reading ------------------------------------------------------------------------------
    @cached_property
    def manifest(self) -> dict:
        path = self.root / "zoo.json"
        if not self.root.is_dir():
            raise ZooError(f"no zoo at {shorten(self.root)}: the folder does not exist")
        if not path.is_file():
            raise ZooError(f"no zoo at {shorten(self.root)}: zoo.json is missing (build one with `weightgen zoo build`)")
        try:
            manifest = json.loads(path.read_bytes())
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ZooError(f"{shorten(path)} is not valid JSON; the zoo folder is corrupt") from e
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        if fmt != ZOO_FORMAT:
            raise ZooError(f"{shorten(path)} is not a weightgen zoo (format {short(fmt)}, expected {ZOO_FORMAT})")
        problem = _manifest_problem(manifest)
        if problem:
            raise ZooError(f"{shorten(path)} is corrupt: {problem}")
        return manifest

    @cached_property
    def _plan(self) -> dict[str, dict]:
        """Shard file -> its plan entry {file, arch, models: [[id, task, seed], ...]}."""
        return {s["file"]: s for s in self.manifest["shards"]}

    @cached_property
    def records(self) -> list[dict]:
        path = self.root / "records.jsonl"
        self.manifest  # noqa: B018 - validates the folder first, for a clearer error
        if not path.is_file():
            raise ZooError(f"zoo {shorten(self.root)} is incomplete: records.jsonl is missing (re-run `weightgen zoo build`)")
        try:
            lines = path.read_bytes().decode("utf-8").split("\n")
        except UnicodeDecodeError as e:
            raise ZooError(f"{shorten(path)} is not UTF-8 text; re-run `weightgen zoo build` to rewrite it") from e
        records, ids, rows = [], set(), set()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError) as e:
                raise ZooError(f"{shorten(path)} line {n} is not a JSON record; re-run `weightgen zoo build` to rewrite it") from e
            problem = _record_problem(rec, self._plan)
            if problem is None and rec["id"] in ids:
                problem = f"repeats model {rec['id']}"
            if problem is None and (rec["shard"], rec["row"]) in rows:
                problem = f"repeats row {rec['row']} of shard {rec['shard']}"
            if problem:
                raise ZooError(f"{shorten(path)} line {n} {problem}; re-run `weightgen zoo build` to rewrite it")
            ids.add(rec["id"])
            rows.add((rec["shard"], rec["row"]))
            records.append(rec)
        # records.jsonl is an index rebuilt from the shards' own records: an edited metric or task there
        # would mislead every reader, so each record must equal its shard's copy (headers only, cheap)
        stored: dict[str, list[str]] = {}
        for rec in records:
            if rec["shard"] not in stored:
                stored[rec["shard"]] = self._header_records(rec["shard"])
            if stored[rec["shard"]][rec["row"]] != json.dumps(rec, sort_keys=True):
                raise ZooError(f"{shorten(path)} says something else about model {rec['id']} than its shard "
                               f"{short(rec['shard'])}; re-run `weightgen zoo build` to rewrite it")
        return records

    def _header_records(self, name: str) -> list[str]:
        """The records a shard's header holds, as canonical JSON (NaN metrics compare equal so), unverified."""
        path = self.shard_dir / name
        try:
            with safe_open(str(path), framework="pt") as f:
                records = json.loads((f.metadata() or {}).get("records", ""))
        except (OSError, SafetensorError, ValueError, RecursionError) as e:
            raise ZooError(f"zoo shard {shorten(path)} is missing or corrupt; re-run `weightgen zoo build`") from e
        if not isinstance(records, list) or len(records) != len(self._plan[name]["models"]):
            raise ZooError(f"zoo shard {shorten(path)} is corrupt: its records do not match the plan in zoo.json")
        return [json.dumps(r, sort_keys=True) for r in records]

    def check_complete(self) -> None:
        planned = sum(len(s["models"]) for s in self.manifest["shards"])
        if len(self.records) != planned:
            raise ZooError(
                f"zoo {shorten(self.root)} is incomplete: {len(self.records)} of {planned} models are built; "
                "re-run the same `weightgen zoo build` to finish it"
            )

    @property
    def held_out(self) -> set[str]:
        """Ids of the held-out tasks: no generator trains on their models."""
        return set(self.manifest["held_out"])

    @property
    def held_out_archs(self) -> set[str]:
        """Slugs of the held-out archs: no generator trains on any of their models (zoos from before
        arch hold-out have none)."""
        return set(self.manifest.get("held_out_archs", []))

    @cached_property
    def archs(self) -> dict[str, ArchSpec]:
        return {slug: ArchSpec.from_dict(d) for slug, d in self.manifest["archs"].items()}

    def tasks(self) -> list[TaskSpec]:
        return [get_task(t) for t in self.manifest["tasks"]]

    @cached_property
    def _by_id(self) -> dict[int, dict]:
        return {r["id"]: r for r in self.records}

    def record(self, model_id: int) -> dict:
        by_id = self._by_id  # built once, not per lookup: exporting a whole zoo is N lookups
        if model_id not in by_id:
            raise ZooError(f"zoo {shorten(self.root)} has no model with id {short(model_id)} "
                           f"(ids run 0..{len(self.records) - 1})")
        return by_id[model_id]

    def _open(self, shard: str):
        self._checked_shard(shard)
        return safe_open(str(self.shard_dir / shard), framework="pt")  # memory-mapped

    def _checked_shard(self, name: str) -> list[dict]:
        """The records of a planned shard, after checking its format, checksum, dtypes, shapes and
        records against the plan; done once per store, as it reads the whole shard."""
        if name in self._checked:
            return self._checked[name]
        plan = self._plan.get(name)
        path = self.shard_dir / name
        if plan is None:
            raise ZooError(f"zoo {shorten(self.root)} plans no shard named {short(name)}")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = f.metadata() or {}
                stored = atomic.header_tensors(f)
                problem = _shard_problem(raw, stored, self._shard_shapes(plan), plan)
                tensors = {} if problem else {k: f.get_tensor(k) for k in stored}
        except (OSError, SafetensorError, ValueError) as e:
            raise ZooError(f"zoo shard {shorten(path)} is missing or corrupt; re-run `weightgen zoo build`") from e
        checksum = raw.get(atomic.SHA256_KEY)
        if problem is None and checksum is not None and checksum != json.dumps(atomic.sha256_of(tensors, raw)):
            problem = "its weights or metadata do not match the checksum written with them"
        if problem:
            raise ZooError(f"zoo shard {shorten(path)} is corrupt: {problem}; re-run `weightgen zoo build` to retrain it")
        self._checked[name] = json.loads(raw["records"])
        return self._checked[name]

    def _shard_shapes(self, plan: dict) -> dict[str, tuple[int, ...]] | None:
        """Name -> planned shape (N, *shape) of a shard's tensors; None when zoo.json does not say."""
        n = len(plan["models"])
        if plan["arch"] in self.manifest["archs"]:
            layout = self.archs[plan["arch"]].layout()
            return {name: (n, *shape) for name, shape in zip(layout.names, layout.shapes)}
        factors = (self.manifest.get("lora") or {}).get("factors")
        return {name: (n, *shape) for name, shape in factors.items()} if factors else None

    def state_dict(self, model_id: int) -> dict[str, torch.Tensor]:
        """One model's weights, read by slicing its row out of the memory-mapped shard."""
        rec = self.record(model_id)
        with self._open(rec["shard"]) as f:
            return {name: f.get_slice(name)[rec["row"]].clone() for name in f.keys()}

    def load_arch(self, slug: str, include_held_out: bool = False) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """All models of one arch stacked (N, *shape), with their records in the same order."""
        recs = [r for r in self.records if r["arch"] == slug and (include_held_out or not r["held_out"])]
        by_shard: dict[str, list[dict]] = {}
        for r in recs:
            by_shard.setdefault(r["shard"], []).append(r)
        parts, ordered = [], []
        for shard, rs in by_shard.items():
            with self._open(shard) as f:
                rows = torch.tensor([r["row"] for r in rs])
                parts.append({n: f.get_tensor(n)[rows] for n in f.keys()})
            ordered += rs
        if not parts:
            return {}, []
        return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}, ordered



def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_texts(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _manifest_problem(m: dict) -> str | None:
    """What is wrong with a zoo.json whose format tag is right (None: nothing), as a clause."""
    for key, kind in (("name", str), ("config", dict), ("archs", dict), ("tasks", dict), ("held_out", list),
                      ("shards", list)):
        if not isinstance(m.get(key), kind):
            return f"its '{key}' entry is missing or not a {'JSON ' + kind.__name__.replace('str', 'string')}"
    if not isinstance(m["config"].get("init"), str):
        return "its config has no init mode"
    if not _is_texts(m["held_out"]) or not _is_texts(m.get("held_out_archs", [])):
        return "its held-out lists are not lists of names"
    for slug, a in m["archs"].items():
        if not isinstance(a, dict) or not isinstance(a.get("text"), str):
            return f"arch {short(slug)} has no description text"
        try:
            ArchSpec.from_dict(a)
        except ArchError as e:
            return f"arch {short(slug)} is invalid ({e})"
    lora = m.get("lora")
    if lora is not None and not (isinstance(lora, dict) and _is_int(lora.get("rank")) and _is_texts(lora.get("target_modules"))
                                 and isinstance(lora.get("base_sha256") or "", str) and _valid_factors(lora.get("factors", {}))):
        return "its lora entry is malformed"
    files, ids = set(), set()
    for i, s in enumerate(m["shards"]):
        if not (isinstance(s, dict) and _plain_file(s.get("file")) and isinstance(s.get("arch"), str)
                and isinstance(s.get("models"), list)):
            return f"shard entry {i} is malformed (file, arch, models)"
        if s["file"] in files:
            return f"shard {short(s['file'])} is planned twice"
        if s["arch"] not in m["archs"] and lora is None:  # a LoRA zoo's shards are adapters, not table archs
            return f"shard {short(s['file'])} names arch {short(s['arch'])}, which is not in the arch table"
        files.add(s["file"])
        for entry in s["models"]:
            if not (isinstance(entry, list) and len(entry) == 3 and _is_int(entry[0]) and entry[1] in m["tasks"]
                    and _is_int(entry[2])):
                return f"shard {short(s['file'])} plans a malformed model {short(entry)}"
            if entry[0] in ids:
                return f"model id {entry[0]} is planned twice"
            ids.add(entry[0])
    return None


def _plain_file(name) -> bool:
    """A file name inside shards/, never a path out of it ('../x', '/etc/x') or a hidden temp file."""
    return (isinstance(name, str) and name.isprintable() and name == Path(name).name and not name.startswith(".")
            and name.endswith(".safetensors"))


def _valid_factors(factors) -> bool:
    return isinstance(factors, dict) and all(
        isinstance(v, list) and v and all(_is_int(x) and x > 0 for x in v) for v in factors.values())


_RECORD_TYPES = (("id", _is_int), ("task", lambda v: isinstance(v, str)), ("arch", lambda v: isinstance(v, str)),
                 ("seed", _is_int), ("held_out", lambda v: isinstance(v, bool)), ("shard", lambda v: isinstance(v, str)),
                 ("row", _is_int))


def _record_problem(r, plan: dict[str, dict]) -> str | None:
    """What is wrong with one record against zoo.json's plan (None: nothing), as a clause."""
    if not isinstance(r, dict):
        return "is not a JSON object"
    for key, ok in _RECORD_TYPES:
        if not ok(r.get(key)):
            return f"has no valid '{key}'"
    bad = [k for k, v in r.items() if k.endswith(("_acc", "_loss")) and v is not None
           and (isinstance(v, bool) or not isinstance(v, (int, float)))]
    if bad:
        return f"has a non-numeric {short(bad[0])}"
    shard = plan.get(r["shard"])
    if shard is None:
        return f"names shard {short(r['shard'])}, which zoo.json does not plan"
    if not 0 <= r["row"] < len(shard["models"]):
        return f"has row {r['row']}, outside its shard's 0..{len(shard['models']) - 1}"
    if shard["models"][r["row"]] != [r["id"], r["task"], r["seed"]] or shard["arch"] != r["arch"]:
        return f"(model {r['id']}) does not match the plan in zoo.json at its shard and row"
    return None


def _shard_problem(raw: dict[str, str], stored: dict[str, tuple], shapes: dict[str, tuple] | None,
                   plan: dict) -> str | None:
    """What is wrong with a shard's header against its plan (None: nothing), as a clause."""
    if raw.get("weightgen_format") != SHARD_FORMAT:
        return "it is not a weightgen zoo shard"
    try:
        records = json.loads(raw.get("records", ""))
    except (ValueError, RecursionError):
        return "its records are not JSON"
    if not isinstance(raw.get(atomic.SHA256_KEY, '""'), str) or not isinstance(records, list):
        return "its metadata is malformed"
    if len(records) != len(plan["models"]) or any(
            _record_problem(r, {plan["file"]: plan}) or r["row"] != i or r["shard"] != plan["file"]
            for i, r in enumerate(records)):
        return "its records do not match the plan in zoo.json"
    for name, (dtype, shape) in stored.items():
        if dtype not in FLOAT_DTYPES:
            return f"tensor {short(name)} is {short(dtype)}, not floating point"
        if shape[:1] != (len(plan["models"]),) or (shapes is not None and shapes.get(name) != shape):
            return f"tensor {short(name)} has shape {short(shape)}, not what zoo.json plans"
    if shapes is not None and set(shapes) != set(stored):
        return "its tensors are not the planned ones"
    return None
