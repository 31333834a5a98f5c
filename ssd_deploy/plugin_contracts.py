"""The TensorRT plugins' node contracts as data: one ``plugins/<Plugin>/contract.toml`` per plugin (name, op,
version, inputs and outputs with shapes and dtype roles, attributes with types and defaults), like the per-plugin
config files of TensorRT's own plugin tree. Everything that restated them derives from here:

- the ``trt`` lowering's node table (``ssd_deploy/onnx/trt.py`` ``PLUGINS``);
- the plugin harness: ``plugins/harness/contracts.h`` (generated, checked in) and ``parity_cases.py``;
- the ONNX Runtime custom-op library's op table: ``plugins/ort_custom_ops/contracts.h`` (generated, checked in):
  its ops' names, inputs and outputs, shapes and attributes are these files, read by generic code;
- the Inputs / Outputs / Attributes tables of each ``plugins/<Plugin>/README.md`` (generated sections).

The plugin library's own specs (``plugins/<Plugin>/*Plugin.cpp``) stay hand-written on purpose: the harness checks
the library against these files, not against itself. After editing a contract (adding an input is one
``[[inputs]]`` table), regenerate with ``python -m ssd_deploy.plugin_contracts --write``; tests/test_trt_plugins.py
fails while anything is out of date.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

# the CMake project of plugins/: the source tree's folder through this symlink, or its copy in an installed package
PLUGINS_DIR = (Path(__file__).parent / "plugins_src").resolve()
CONTRACT_FILE = "contract.toml"
HEADER = PLUGINS_DIR / "harness" / "contracts.h"
# the activation dtype of the node (fp32/fp16/bf16), always float32, or int32 (the packed plugins' offsets)
DTYPE_ROLES = {"T": "A", "float32": "F", "int32": "I"}
ATTR_TYPES = {"int": (int, "INT", "kINT32"), "float": (float, "FLOAT", "kFLOAT32")}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: str  # in the op contract's letters: "[b, l, h, p]"
    dtype: str  # "T" (the node's activation dtype), "float32" or "int32"
    note: str = ""
    optional: bool = False  # may be left out (an empty input name in ONNX)

    @property
    def role(self) -> str:
        return DTYPE_ROLES[self.dtype]


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    type: str  # "int" | "float"
    allowed: str
    required: bool = False
    default: float | int | None = None

    @property
    def python_type(self) -> type:
        return ATTR_TYPES[self.type][0]


@dataclass(frozen=True)
class Contract:
    name: str  # the plugin (ONNX op_type)
    domain: str
    version: str
    op: str  # the ssd_deploy op it implements
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    attributes: tuple[AttributeSpec, ...]

    @property
    def roles(self) -> str:
        """'A'/'F'/'I' per input then per output, as the harness reads them."""
        return "".join(t.role for t in self.inputs + self.outputs)


def load(path: Path) -> Contract:
    where = str(path)
    try:
        d = tomllib.loads(Path(path).read_text())
        tensors = {kind: tuple(TensorSpec(**t) for t in d.get(kind, [])) for kind in ("inputs", "outputs")}
        attrs = []
        for a in d.get("attributes", []):
            default = a.get("default")
            if default == "inf":  # TOML has inf, but a quoted word reads better next to the README's "+inf"
                default = math.inf
            attrs.append(AttributeSpec(**{**a, "default": default}))
        c = Contract(name=d["name"], domain=d["domain"], version=d["version"], op=d["op"], **tensors,
                     attributes=tuple(attrs))
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"{where}: malformed plugin contract ({type(e).__name__}: {e})") from None
    for t in c.inputs + c.outputs:
        if t.dtype not in DTYPE_ROLES:
            raise UserError(f"{where}: {t.name}: dtype must be one of {', '.join(DTYPE_ROLES)}, got {t.dtype!r}")
    for a in c.attributes:
        if a.type not in ATTR_TYPES or a.required == (a.default is not None):
            raise UserError(f"{where}: attribute {a.name}: an int or float type and either required or a default")
    return c


def contracts(plugins_dir: Path = PLUGINS_DIR) -> dict[str, Contract]:
    """Every plugin's contract, by plugin name, in folder order."""
    found = [load(p) for p in sorted(Path(plugins_dir).glob(f"*/{CONTRACT_FILE}"))]
    return {c.name: c for c in found}


# ------------------------------------------------------------------------------------------ what derives from them

def readme_tables(c: Contract) -> dict[str, str]:
    """The README's generated tables, by section."""
    def tensors(ts):
        rows = ["| # | name | shape | dtype |", "|---|---|---|---|"]
        for i, t in enumerate(ts):
            notes = "; ".join(n for n in (t.note, "optional" if t.optional else "") if n)
            rows.append(f"| {i} | {t.name} | {t.shape}{f' ({notes})' if notes else ''} | {t.dtype} |")
        return "\n".join(rows)

    def default(a):
        if a.required:
            return "none: required"
        return "+inf" if a.default == math.inf else str(a.default)

    attrs = ["| name | ONNX type (PluginField) | default | allowed |", "|---|---|---|---|"]
    attrs += [f"| {a.name} | {ATTR_TYPES[a.type][1]} ({ATTR_TYPES[a.type][2]}) | {default(a)} | {a.allowed} |"
              for a in c.attributes]
    return {"inputs": tensors(c.inputs), "outputs": tensors(c.outputs), "attributes": "\n".join(attrs)}


def _markers(section: str) -> tuple[str, str]:
    return (f"<!-- {section}: generated from {CONTRACT_FILE} (python -m ssd_deploy.plugin_contracts --write) -->",
            f"<!-- end {section} -->")


def render_readme(text: str, c: Contract) -> str:
    """``text`` with its generated sections replaced by the contract's tables."""
    for section, table in readme_tables(c).items():
        start, end = _markers(section)
        if start not in text or end not in text:
            raise UserError(f"plugins/{c.name}/README.md: no generated {section} section ({start} ... {end})")
        head, rest = text.split(start, 1)
        text = head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1]
    return text


def render_header(all_contracts: dict[str, Contract]) -> str:
    """plugins/harness/contracts.h: each plugin's name, input count, roles and fields, for the C++ harness."""
    rows = []
    for c in all_contracts.values():
        fields = ", ".join(f'{{"{a.name}", T::{ATTR_TYPES[a.type][2]}}}' for a in c.attributes)
        ins, outs = c.roles[:len(c.inputs)], c.roles[len(c.inputs):]
        rows.append(f'        {{"{c.name}", {len(c.inputs)}, "{ins}" "{outs}", {{{fields}}}}},')
    return f"""// GENERATED from plugins/<Plugin>/{CONTRACT_FILE} by `python -m ssd_deploy.plugin_contracts --write`: do not edit.
// The node contracts, read from the contract files rather than from the library's own specs, so that the harness
// checks the library against the contracts rather than against itself.
#pragma once
#include "NvInferRuntime.h"
#include <string>
#include <vector>

namespace harness
{{

struct FieldContract
{{
    std::string name;
    nvinfer1::PluginFieldType type;
}};

struct Contract
{{
    std::string name;
    int32_t nbInputs;
    //! 'A' activation (fp32/fp16/bf16, one dtype per node), 'F' always fp32, 'I' always int32; inputs then outputs.
    std::string roles;
    std::vector<FieldContract> fields;
}};

inline std::vector<Contract> const& contracts()
{{
    using T = nvinfer1::PluginFieldType;
    static std::vector<Contract> const all{{
{chr(10).join(rows)}
    }};
    return all;
}}

}} // namespace harness
"""


_EXTENT = re.compile(r"^(?:([A-Za-z_]\w*)\s*(?:([+-])\s*(\d+))?|(\d+))$")  # "h", "k-1", "n + 1", "4"


def shape_alternatives(t: TensorSpec, plugin: str) -> list[list[tuple[str, int]]]:
    """The shapes a tensor may have ("[h] or [h, p]"), each a list of (symbol, offset): extent = symbol + offset, or
    the constant offset where the symbol is ""."""
    alternatives = []
    for alt in t.shape.split(" or "):
        alt = alt.strip()
        if not (alt.startswith("[") and alt.endswith("]")):
            raise UserError(f"{plugin}.{t.name}: shape {t.shape!r} is not of the form [a, b, ...] (or ... or ...)")
        dims = []
        for extent in filter(None, (e.strip() for e in alt[1:-1].split(","))):
            m = _EXTENT.match(extent)
            if not m:
                raise UserError(f"{plugin}.{t.name}: extent {extent!r} of {t.shape!r} is not a symbol, symbol +/- "
                                "an integer, or an integer")
            symbol, sign, number, constant = m.groups()
            offset = int(number or 0) * (-1 if sign == "-" else 1)
            dims.append((symbol, offset) if symbol else ("", int(constant)))
        alternatives.append(dims)
    return alternatives


_CPP_ROLES = {"A": "Role::kActivation", "F": "Role::kFloat32", "I": "Role::kInt32"}  # DTYPE_ROLES' letters


def render_ort_header(all_contracts: dict[str, Contract]) -> str:
    """plugins/ort_custom_ops/contracts.h: each contract as constexpr C++ data (no TensorRT or ONNX Runtime types),
    with index enums per op (``SsdChunkScan::in::x``) so that the library's launch code names tensors, not
    positions."""
    def ident(name: str, what: str) -> str:
        if not name.isidentifier() or not name.isascii():
            raise UserError(f"{what} {name!r} is not a C++ identifier")
        return name

    def cpp_float(v) -> str:
        return "kInf" if v == math.inf else ("-kInf" if v == -math.inf else repr(float(v)))

    blocks = []
    for c in all_contracts.values():
        ident(c.name, "plugin name")
        lines = [f"namespace {c.name}", "{"]
        for kind, items in (("in", c.inputs), ("out", c.outputs), ("attr", c.attributes)):
            names = ", ".join(ident(t.name, f"{c.name} {kind}") for t in items)
            lines.append(f"namespace {kind} {{ enum : int {{ {names} }}; }}" if items else f"namespace {kind} {{}}")
        tables = {}
        for kind, tensors in (("Inputs", c.inputs), ("Outputs", c.outputs)):
            rows = []
            for t in tensors:
                alts = shape_alternatives(t, c.name)
                var = f"k{kind[:-1]}_{t.name}"
                for i, dims in enumerate(alts):
                    cells = ", ".join(f'{{"{s}", {o}}}' for s, o in dims)
                    lines.append(f"inline constexpr Dim {var}_{i}[] = {{{cells}}};" if dims else
                                 f"inline constexpr Dim const* {var}_{i} = nullptr;")
                shapes = ", ".join(f"{{{var}_{i}, {len(dims)}}}" for i, dims in enumerate(alts))
                lines.append(f"inline constexpr Shape {var}[] = {{{shapes}}};")
                if t.role not in _CPP_ROLES:
                    raise UserError(f"{c.name}.{t.name}: dtype {t.dtype!r} has no ONNX Runtime custom-op role "
                                    "(add it to plugin_contracts._CPP_ROLES and plugins/ort_custom_ops/ortOp.cpp)")
                role = _CPP_ROLES[t.role]
                rows.append(f'{{"{t.name}", {role}, {str(t.optional).lower()}, {var}, {len(alts)}}}')
            lines.append(f"inline constexpr TensorContract k{kind}[] = {{{', '.join(rows)}}};" if rows else "")
            tables[kind] = (f"k{kind}" if rows else "nullptr", len(rows))
        attrs = [f'{{"{a.name}", AttrType::k{a.type.capitalize()}, {str(a.required).lower()}, '
                 f'{cpp_float(0 if a.required else a.default)}}}' for a in c.attributes]
        if attrs:
            lines.append(f"inline constexpr AttrContract kAttributes[] = {{{', '.join(attrs)}}};")
        (ins, n_in), (outs, n_out) = tables["Inputs"], tables["Outputs"]
        lines.append(f'inline constexpr OpContract kContract{{"{c.name}", "{c.domain}", {int(c.version)}, {ins}, '
                     f'{n_in}, {outs}, {n_out}, {"kAttributes" if attrs else "nullptr"}, {len(attrs)}}};')
        lines.append(f"}} // namespace {c.name}")
        blocks.append("\n".join(line for line in lines if line))
    everything = ", ".join(f"&{c.name}::kContract" for c in all_contracts.values())
    return f"""// GENERATED from plugins/<Plugin>/{CONTRACT_FILE} by `python -m ssd_deploy.plugin_contracts --write`: do not edit.
// The node contracts as data for the ONNX Runtime custom-op library (plugins/ort_custom_ops): names, inputs and
// outputs (dtype role, optional, the shapes as symbols), attributes (type, required or default). The library's
// schemas, attribute reading, shape checks and output shapes come from these tables.
#pragma once
#include <cstdint>
#include <limits>

namespace ssd_ort
{{

//! The node's activation dtype (fp32, fp16 or bf16, one per node: 'T' in the contracts), or always float32, or
//! always int32.
enum class Role : uint8_t
{{
    kActivation,
    kFloat32,
    kInt32,
}};

enum class AttrType : uint8_t
{{
    kInt,
    kFloat,
}};

//! One extent: the symbol's value plus offset ("k-1": {{"k", -1}}), or the constant offset when symbol is "".
struct Dim
{{
    char const* symbol;
    int64_t offset;
}};

struct Shape
{{
    Dim const* dims;
    int32_t rank;
}};

struct TensorContract
{{
    char const* name;
    Role role;
    bool optional;
    Shape const* shapes; // the alternatives ("[h] or [h, p]")
    int32_t nbShapes;
}};

struct AttrContract
{{
    char const* name;
    AttrType type;
    bool required;
    double defaultValue; // unused when required
}};

struct OpContract
{{
    char const* name;
    char const* domain;
    int32_t version;
    TensorContract const* inputs;
    int32_t nbInputs;
    TensorContract const* outputs;
    int32_t nbOutputs;
    AttrContract const* attributes;
    int32_t nbAttributes;
}};

namespace contracts
{{
inline constexpr double kInf = std::numeric_limits<double>::infinity();

{(chr(10) * 2).join(blocks)}

inline constexpr OpContract const* kAll[] = {{{everything}}};
}} // namespace contracts

}} // namespace ssd_ort
"""


def stale(plugins_dir: Path = PLUGINS_DIR) -> dict[Path, str]:
    """Every derived file that differs from what the contracts give: path -> the text it should have."""
    all_contracts = contracts(plugins_dir)
    wanted = {Path(plugins_dir) / "harness" / "contracts.h": render_header(all_contracts),
              Path(plugins_dir) / "ort_custom_ops" / "contracts.h": render_ort_header(all_contracts)}
    for c in all_contracts.values():
        readme = Path(plugins_dir) / c.name / "README.md"
        wanted[readme] = render_readme(readme.read_text(), c)
    return {p: text for p, text in wanted.items() if not p.is_file() or p.read_text() != text}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Check (default) or rewrite what derives from the plugin contracts.")
    ap.add_argument("--write", action="store_true", help="rewrite the stale files")
    args = ap.parse_args(argv)
    out_of_date = stale()
    for path, text in out_of_date.items():
        if args.write:
            path.write_text(text)
        print(f"{'wrote' if args.write else 'stale'}: {path}")
    return 1 if out_of_date and not args.write else 0


if __name__ == "__main__":
    raise SystemExit(main())
