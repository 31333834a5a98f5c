"""TensorRT optimization profiles over the graph interface: which ones an engine gets, their shape ranges, and which
one serves a call.

Two shape regimes (DESIGN §3): decode (one token, seq = 1) and prefill (a range of prompt lengths). Both share the
batch range; states only carry the batch as a dynamic axis. The decode profile lets TensorRT pick kernels for
single-token calls instead of stretching the prefill ones down to seq = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..onnx.metadata import INPUT_IDS

CHOICES = {"decode": ("decode",), "prefill": ("prefill",), "both": ("decode", "prefill")}
# Defaults a recipe or flags normally replace. logits [batch, seq, vocab] dominate memory: 4 x 2048 x 50288 fp32
# logits of the 130m preset are 1.6 GB, the most a default should ask a GPU for.
DEFAULT_BATCH = (1, 1, 4)
DEFAULT_SEQ = (1, 256, 2048)


@dataclass(frozen=True)
class Range:
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
        return [self.min, self.opt, self.max]

    def __str__(self):
        return f"{self.min},{self.opt},{self.max}"


@dataclass(frozen=True)
class Profile:
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
    """What an export recipe says about TensorRT profiles; None where it says nothing."""
    profiles: str | None = None
    batch: Range | None = None
    seq: Range | None = None
    workspace_mb: int | None = None


def recipe_ranges(recipe: dict) -> RecipeRanges:
    """The TensorRT part of a resolved export recipe (``ExportMetadata.recipe``): its ``[tensorrt]`` table with
    ``profiles`` (decode | prefill | both), ``batch`` and ``seq`` ([min, opt, max]) and ``workspace_mb``."""
    table = (recipe or {}).get("tensorrt") or {}
    if not isinstance(table, dict):
        raise UserError(f"recipe: [tensorrt] must be a table, got {table!r}")
    where = f"recipe {recipe.get('name', '')}".rstrip() + ": tensorrt."
    profiles = table.get("profiles")
    if profiles is not None and profiles not in CHOICES:
        raise UserError(f"{where}profiles must be one of {', '.join(CHOICES)}, got {profiles!r}")
    workspace = table.get("workspace_mb")
    if workspace is not None and (not isinstance(workspace, int) or workspace < 1):
        raise UserError(f"{where}workspace_mb must be a positive integer, got {workspace!r}")
    return RecipeRanges(profiles=profiles,
                        batch=Range.of(table["batch"], where + "batch") if "batch" in table else None,
                        seq=Range.of(table["seq"], where + "seq") if "seq" in table else None,
                        workspace_mb=workspace)


def plan(which: str | None, batch: str | None, seq: str | None, recipe: RecipeRanges, graph: str) -> list[Profile]:
    """The profiles to build, in engine order. Flags override the recipe, the recipe the defaults. ``graph`` is the
    export's (a "decode" graph takes one token per call, so it only gets the decode profile)."""
    which = which or recipe.profiles or ("decode" if graph == "decode" else "both")
    if which not in CHOICES:
        raise UserError(f"--profile must be one of {', '.join(CHOICES)}, got {which!r}")
    if graph == "decode" and which != "decode":
        raise UserError(f"the export is a single-token decode graph: it takes only --profile decode, not {which}")
    b = Range.of(batch, "--batch") if batch else recipe.batch or Range(*DEFAULT_BATCH)
    s = Range.of(seq, "--seq") if seq else recipe.seq or Range(*DEFAULT_SEQ)
    if seq and "prefill" not in CHOICES[which]:
        raise UserError("--seq sets the prefill profile's range; a decode-only engine always has seq = 1")
    return [Profile(name, b, Range(1, 1, 1) if name == "decode" else s) for name in CHOICES[which]]


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
                    f"rebuild it with wider --batch/--seq")
