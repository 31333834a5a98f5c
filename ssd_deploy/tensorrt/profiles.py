"""TensorRT optimization profiles over the graph interface: which ones an engine gets, their shape ranges, and which
one serves a call.

Two shape regimes (docs/graph-interface.md): decode (one token, seq = 1) and prefill (a range of prompt lengths). Both share the
batch range; states only carry the batch as a dynamic axis. The decode profile lets TensorRT pick kernels for
single-token calls instead of stretching the prefill ones down to seq = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import UserError
from ..interface import INPUT_IDS

CHOICES = {"decode": ("decode",), "prefill": ("prefill",), "both": ("decode", "prefill")}
# Defaults a recipe or flags normally replace. logits [batch, seq, vocab] dominate memory: 4 x 2048 x 50288 fp32
# logits of the 130m preset are 1.6 GB, the most a default should ask a GPU for.
DEFAULT_BATCH = (1, 1, 4)
DEFAULT_SEQ = (1, 256, 2048)


class Range(NamedTuple):
    """(min, opt, max) of one axis; a tuple, so a recipe's [min, opt, max] list compares equal to it."""
    min: int
    opt: int
    max: int

    @classmethod
    def of(cls, value, what: str) -> "Range":
        """From "MIN,OPT,MAX", "N" (fixed), or a sequence of three (or one) ints."""
        parts = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) \
            else [value]
        try:
            nums = [int(str(p).strip()) for p in parts]
        except ValueError:
            nums = []
        if len(nums) == 1:
            nums *= 3
        if len(nums) != 3 or not 1 <= nums[0] <= nums[1] <= nums[2]:
            raise UserError(f"{what}: expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX (or one number), got "
                            f"{value!r}")
        return cls(*nums)

    def __contains__(self, v: int) -> bool:
        return self.min <= v <= self.max

    def to_list(self) -> list[int]:
        return list(self)

    def __str__(self):
        return f"{self.min},{self.opt},{self.max}"


@dataclass(frozen=True)
class Profile:
    """A TensorRT optimization profile: ranges of the batch and sequence axes of input_ids. The one class for a
    recipe's profiles (recipes.py), a build's plan, an engine's sidecar and the runner's choice."""
    name: str
    batch: Range
    seq: Range

    def accepts(self, batch: int, seq: int) -> bool:
        return batch in self.batch and seq in self.seq

    def shapes(self, inputs: dict[str, tuple]) -> dict[str, tuple[tuple, tuple, tuple]]:
        """(min, opt, max) shape of every network input; ``inputs`` maps names to shapes with -1 where dynamic.
        Axis 0 is the batch; axis 1 of input_ids the sequence; any other dynamic axis is not ours to guess."""
        out = {}
        for name, shape in inputs.items():
            dims = []
            for axis, d in enumerate(shape):
                if d >= 0:
                    dims.append((d, d, d))
                elif axis == 0:
                    dims.append((self.batch.min, self.batch.opt, self.batch.max))
                elif axis == 1 and name == INPUT_IDS:
                    dims.append((self.seq.min, self.seq.opt, self.seq.max))
                else:
                    raise UserError(f"network input {name} has a dynamic axis {axis} ({tuple(shape)}); only the "
                                    f"batch (and the sequence of {INPUT_IDS}) may be dynamic")
            out[name] = tuple(tuple(d[i] for d in dims) for i in range(3))
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "batch": self.batch.to_list(), "seq": self.seq.to_list()}

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        return cls(d["name"], Range.of(d["batch"], "batch"), Range.of(d["seq"], "seq"))


@dataclass(frozen=True)
class RecipeRanges:
    """What an export recipe says about TensorRT: its profiles by name, and the workspace cap."""
    profiles: dict[str, Profile] = field(default_factory=dict)
    workspace_mib: int | None = None


def recipe_ranges(recipe: dict) -> RecipeRanges:
    """The TensorRT part of a resolved export recipe (``recipes.Recipe.to_dict()``, stored in the export as
    ``ExportMetadata.recipe``): ``profiles`` ({"decode"|"prefill": {"batch": [min, opt, max], "seq": [...]}}) and
    ``workspace_mib``. The recipes module checks these when a recipe is loaded; this reads them back and refuses
    what an engine cannot be built from."""
    recipe = recipe or {}
    where = f"recipe {recipe.get('name', '(unnamed)')}"
    table = recipe.get("profiles") or {}
    if not isinstance(table, dict) or not set(table) <= set(CHOICES["both"]):
        raise UserError(f"{where}: profiles must map decode/prefill to batch and seq ranges, got {table!r}")
    profiles = {}
    for name, p in table.items():
        if not isinstance(p, dict) or set(p) != {"batch", "seq"}:
            raise UserError(f"{where}: profiles.{name} must have exactly batch and seq, got {p!r}")
        profiles[name] = Profile(name, Range.of(p["batch"], f"{where}: profiles.{name}.batch"),
                                 Range.of(p["seq"], f"{where}: profiles.{name}.seq"))
    if "decode" in profiles and profiles["decode"].seq != Range(1, 1, 1):
        raise UserError(f"{where}: profiles.decode.seq must be [1, 1, 1] (one token per call)")
    workspace = recipe.get("workspace_mib")
    if workspace is not None and (not isinstance(workspace, int) or isinstance(workspace, bool) or workspace < 1):
        raise UserError(f"{where}: workspace_mib must be a positive integer, got {workspace!r}")
    return RecipeRanges(profiles, workspace)


def plan(which: str | None, batch: str | None, seq: str | None, recipe: RecipeRanges, graph: str) -> list[Profile]:
    """The profiles to build, in engine order (decode first). Flags override the recipe, the recipe the defaults:
    ``which`` (default: the recipe's profiles, else both), ``batch`` every profile's batch range, ``seq`` the prefill
    range. ``graph`` is the export's: a "decode" graph takes one token per call, so it only gets the decode profile."""
    if which is not None and which not in CHOICES:
        raise UserError(f"--profile must be one of {', '.join(CHOICES)}, got {which!r}")
    names = CHOICES[which] if which else [n for n in CHOICES["both"] if n in recipe.profiles] or \
        CHOICES["decode" if graph == "decode" else "both"]
    if graph == "decode" and list(names) != ["decode"]:
        raise UserError(f"the export is a single-token decode graph: it takes only the decode profile, not "
                        f"{'+'.join(names)}")
    if seq and "prefill" not in names:
        raise UserError("--seq-range sets the prefill profile's range; a decode-only engine always has seq = 1")
    out = []
    for name in names:
        p = recipe.profiles.get(name) or Profile(name, Range(*DEFAULT_BATCH),
                                                 Range(1, 1, 1) if name == "decode" else Range(*DEFAULT_SEQ))
        if batch:
            p = Profile(name, Range.of(batch, "--batch-range"), p.seq)
        if seq and name == "prefill":
            p = Profile(name, p.batch, Range.of(seq, "--seq-range"))
        out.append(p)
    return out


def select_profile(profiles: list[Profile], batch: int, seq: int) -> int:
    """The profile serving a call: the decode profile for one token where there is one, else the first that
    accepts the shape."""
    order = list(range(len(profiles)))
    if seq == 1:
        order.sort(key=lambda i: profiles[i].name != "decode")  # stable: otherwise engine order
    for i in order:
        if profiles[i].accepts(batch, seq):
            return i
    ranges = "; ".join(f"{p.name}: batch {p.batch}, seq {p.seq}" for p in profiles)
    raise UserError(f"batch {batch}, seq {seq} is outside every optimization profile of the engine ({ranges}); "
                    f"rebuild it with wider --batch-range/--seq-range")
