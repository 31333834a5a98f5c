"""Export recipes: declarative TOML presets (``export/*.toml``, shipped in the package as
``ssd_deploy/export_recipes``) that fix target, flavor, precision, shape ranges and TensorRT optimization profiles.

A recipe is checked completely before any work starts: unknown keys, wrong types, impossible ranges, a flavor or
dtype the target cannot run, profiles outside the declared shapes all give one ``UserError`` naming the recipe and
the key. Command-line flags override recipe values and the result is checked again. The resolved recipe (a plain
dict, ``Recipe.to_dict``) is stored in the export's metadata, where ``ssd-deploy build`` reads the profiles.
The schema is documented in ``export/README.md``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .onnx.options import ExportOptions
from .tensorrt.profiles import Profile, Range

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

RECIPES_DIR = Path(__file__).resolve().parent / "export_recipes"  # a symlink to ../export in the source tree

# what each target runs (docs/flavors.md); ONNX Runtime's CPU provider has no bfloat16 MatMul
TARGETS = {
    "cpu": {"flavors": ("portable", "ort"), "dtypes": ("fp32", "fp16")},
    "cuda": {"flavors": ("portable", "ort"), "dtypes": ("fp32", "fp16", "bf16")},
    "tensorrt": {"flavors": ("portable", "trt"), "dtypes": ("fp32", "fp16", "bf16")},
}
EXPORT_KEYS = typing.get_type_hints(ExportOptions)  # [export] key → type: the fields of ExportOptions
PROFILES = ("decode", "prefill")  # [tensorrt.profiles] tables, in engine order

@dataclass(frozen=True)
class Recipe:
    name: str
    target: str
    export: dict[str, Any]  # ExportOptions fields
    batch: tuple[int, int]  # (min, max) the deployment serves
    prefill: tuple[int, int]  # (min, max) prompt tokens per call
    description: str = ""
    profiles: dict[str, Profile] = field(default_factory=dict)  # TensorRT optimization profiles by name
    workspace_mib: int | None = None  # TensorRT builder memory pool cap
    device: str | None = None  # a Jetson target (targets.py): export and build check the memory plan first
    overrides: tuple[str, ...] = ()  # export options the command line changed

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["batch"], d["prefill"] = list(self.batch), list(self.prefill)
        d["profiles"] = {k: {"batch": list(p.batch), "seq": list(p.seq)} for k, p in self.profiles.items()}
        d["overrides"] = list(self.overrides)
        if self.workspace_mib is None:
            del d["workspace_mib"]
        if self.device is None:
            del d["device"]
        return d

    def with_overrides(self, **export_overrides) -> "Recipe":
        """The recipe with command-line values (None = not given) replacing its export options, checked again."""
        given = {k: v for k, v in export_overrides.items() if v is not None}
        unknown = set(given) - set(EXPORT_KEYS)
        if unknown:
            raise UserError(f"recipe {self.name}: cannot override {sorted(unknown)}")
        changed = tuple(sorted(k for k, v in given.items() if self.export.get(k) != v))
        recipe = dataclasses.replace(self, export={**self.export, **given}, overrides=changed)
        check(recipe)
        return recipe


def override_notes(base: Recipe, resolved: Recipe) -> list[str]:
    """One line per export option the command line changed: "recipe cpu-fp32: dtype fp32 -> fp16 (--dtype)"."""
    defaults = ExportOptions()
    return [f"recipe {base.name}: {k} {base.export.get(k, getattr(defaults, k))} -> {resolved.export[k]} "
            f"(--{k.replace('_', '-')})" for k in resolved.overrides]


def available() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def load(name_or_path: str | Path) -> Recipe:
    """A recipe by name (``cpu-fp32``) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise UserError(f"unknown recipe {str(name_or_path)!r}; choose one of {', '.join(available())} "
                            f"or give a path to a .toml file")
    if not path.is_file():
        raise UserError(f"{path}: no such recipe file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed TOML ({e})") from None
    return parse(data, path.stem)


def parse(data: dict, name: str) -> Recipe:
    where = f"recipe {name}"
    _keys(data, {"description", "target", "device", "export", "shapes", "tensorrt"}, where, required={"target", "export",
                                                                                              "shapes"})
    export = _table(data, "export", where)
    _keys(export, set(EXPORT_KEYS), f"{where} [export]", required={"flavor", "dtype"})
    for k, t in EXPORT_KEYS.items():
        if k in export and (not isinstance(export[k], t) or isinstance(export[k], bool)):
            raise UserError(f"{where}: export.{k} must be a {t.__name__}, got {export[k]!r}")
    shapes = _table(data, "shapes", where)
    _keys(shapes, {"batch", "prefill"}, f"{where} [shapes]", required={"batch", "prefill"})
    trt = _table(data, "tensorrt", where) if "tensorrt" in data else {}
    _keys(trt, {"profiles", "workspace_mib"}, f"{where} [tensorrt]")
    profiles_in = _table(trt, "profiles", f"{where} [tensorrt]") if "profiles" in trt else {}
    _keys(profiles_in, set(PROFILES), f"{where} [tensorrt.profiles]")
    profiles = {}
    for pname, p in profiles_in.items():
        pwhere = f"{where} [tensorrt.profiles.{pname}]"
        if not isinstance(p, dict):
            raise UserError(f"{pwhere} must be a table")
        _keys(p, {"batch", "seq"}, pwhere, required={"batch", "seq"})
        # ranges unchecked here: check() says which rule a triple breaks
        profiles[pname] = Profile(pname, Range(*_ints(p["batch"], 3, f"{pwhere} batch")),
                                  Range(*_ints(p["seq"], 3, f"{pwhere} seq")))
    workspace = trt.get("workspace_mib")
    if workspace is not None and (not isinstance(workspace, int) or isinstance(workspace, bool) or workspace < 1):
        raise UserError(f"{where}: tensorrt.workspace_mib must be a positive integer, got {workspace!r}")
    device = data.get("device")
    if device is not None and not isinstance(device, str):
        raise UserError(f"{where}: device must be a string naming a Jetson target, got {device!r}")
    description = data.get("description", "")
    if not isinstance(description, str) or not isinstance(data["target"], str):
        raise UserError(f"{where}: description and target must be strings")
    recipe = Recipe(name=name, target=data["target"], export=dict(export),
                    batch=_ints(shapes["batch"], 2, f"{where} shapes.batch"),
                    prefill=_ints(shapes["prefill"], 2, f"{where} shapes.prefill"),
                    description=description, profiles=profiles, workspace_mib=workspace, device=device)
    check(recipe)
    return recipe


def check(r: Recipe):
    """Cross-field rules: what the target runs, ranges that can hold, profiles inside the declared shapes."""
    where = f"recipe {r.name}"
    if r.target not in TARGETS:
        raise UserError(f"{where}: unknown target {r.target!r}; choose one of {', '.join(TARGETS)}")
    flavor, dtype = r.export.get("flavor"), r.export.get("dtype")
    t = TARGETS[r.target]
    if flavor not in t["flavors"]:
        raise UserError(f"{where}: flavor {flavor!r} does not run on target {r.target} "
                        f"(it runs {', '.join(t['flavors'])})")
    if dtype not in t["dtypes"]:
        raise UserError(f"{where}: dtype {dtype!r} is not supported on target {r.target} "
                        f"(supported: {', '.join(t['dtypes'])})")
    if r.device is not None:
        from .targets import TARGETS as DEVICES

        if r.device not in DEVICES:
            raise UserError(f"{where}: unknown device {r.device!r}; choose one of {', '.join(DEVICES)}")
        if r.target != "tensorrt" or dtype not in DEVICES[r.device].dtypes:
            raise UserError(f"{where}: device {r.device} runs TensorRT engines in {', '.join(DEVICES[r.device].dtypes)}"
                            f" (target tensorrt), not target {r.target} in {dtype}")
    quant, fmt = r.export.get("quant", "none"), r.export.get("quant_format", "auto")
    if r.target == "tensorrt" and quant != "none" and not (fmt == "dq" or (fmt == "auto" and flavor == "trt")):
        raise UserError(f"{where}: TensorRT has no MatMulNBits: quantized weights for it need "
                        f"export.quant_format = \"dq\" (block-wise DequantizeLinear)")
    for label, (lo, hi) in (("shapes.batch", r.batch), ("shapes.prefill", r.prefill)):
        if not 1 <= lo <= hi:
            raise UserError(f"{where}: {label} = [{lo}, {hi}] must satisfy 1 <= min <= max")
    graph = r.export.get("graph", "unified")
    if r.profiles and r.target != "tensorrt":
        raise UserError(f"{where}: tensorrt.profiles given for target {r.target}; they only apply to tensorrt")
    if r.workspace_mib is not None and r.target != "tensorrt":
        raise UserError(f"{where}: tensorrt.workspace_mib given for target {r.target}")
    if r.target == "tensorrt":
        wanted = {"decode"} if graph == "decode" else set(PROFILES)
        if set(r.profiles) != wanted:
            raise UserError(f"{where}: a {graph} graph for tensorrt needs exactly the profiles "
                            f"{sorted(wanted)}, got {sorted(r.profiles)}")
    for pname, p in r.profiles.items():
        pwhere = f"{where}: tensorrt.profiles.{pname}"
        for axis, triple, (lo, hi) in (("batch", p.batch, r.batch), ("seq", p.seq, (1, 1) if pname == "decode"
                                                                     else r.prefill)):
            if not 1 <= triple[0] <= triple[1] <= triple[2]:
                raise UserError(f"{pwhere}.{axis} = {list(triple)} must satisfy 1 <= min <= opt <= max")
            if triple[0] < lo or triple[2] > hi:
                what = "decode takes one token per call" if (pname, axis) == ("decode", "seq") else \
                    f"the recipe's shapes allow [{lo}, {hi}]"
                raise UserError(f"{pwhere}.{axis} = {list(triple)} is outside what it may serve ({what})")


def _keys(d: dict, allowed: set, where: str, required: set = frozenset()):
    unknown = set(d) - allowed
    if unknown:
        raise UserError(f"{where}: unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(allowed))})")
    missing = set(required) - set(d)
    if missing:
        raise UserError(f"{where}: missing keys {sorted(missing)}")


def _table(d: dict, key: str, where: str) -> dict:
    v = d[key]
    if not isinstance(v, dict):
        raise UserError(f"{where}: [{key}] must be a table")
    return v


def _ints(v, n: int, where: str) -> tuple:
    if not isinstance(v, list) or len(v) != n or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise UserError(f"{where} must be a list of {n} integers, got {v!r}")
    return tuple(v)
