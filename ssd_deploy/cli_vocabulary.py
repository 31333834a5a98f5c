"""The command line's shared words: one name, one form and one help text for each argument and option that several
commands take (tests/test_cli_vocabulary.py holds the commands to it).

- ``EXPORT`` is an export directory everywhere, ``CKPT`` a checkpoint directory.
- ``-o, --output`` is what a command writes: a directory for ``export`` and ``new``, a file for ``build``.
- ``--batch N`` is one batch size; ``--batches`` a comma-separated list (bench); ``--batch-range MIN,OPT,MAX`` a
  TensorRT profile range (build), as ``--seq-range``.
- Every fixed set is a ``click.Choice`` of the owning module's table, never restated here.
"""

from __future__ import annotations

from pathlib import Path

import click

PATH = click.Path(path_type=Path)


class Choice(click.Choice):
    """click.Choice whose refusal reads like the modules' own: "unknown preset 'huge'; choose one of tiny, ..."."""

    def __init__(self, values, what: str):
        super().__init__(list(values))
        self.what = what

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"unknown {self.what} {value!r}; choose one of {', '.join(self.choices)}", param, ctx)


class CommaList(click.ParamType):
    """A comma-separated list of choices (bench --backends): each item checked, the list returned."""
    name = "list"

    def __init__(self, values, what: str):
        self.choices, self.what = list(values), what

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in self.choices]
        if bad or not items:
            self.fail(f"unknown {self.what} {', '.join(map(repr, bad)) or '(none given)'}; choose among "
                      f"{', '.join(self.choices)}", param, ctx)
        return items

    def get_metavar(self, param, ctx=None):
        return f"{self.what.upper()}[,{self.what.upper()}...]"


def export_argument(fn):
    return click.argument("export_dir", metavar="EXPORT", type=PATH)(fn)


def checkpoint_argument(fn):
    return click.argument("ckpt", metavar="CKPT", type=PATH)(fn)


def output_option(metavar: str, help: str, required: bool = True):
    return click.option("-o", "--output", "output", type=PATH, required=required, metavar=metavar, help=help)


def provider_option(fn):
    from .runtime.kinds import PROVIDERS

    return click.option("--provider", type=Choice(PROVIDERS, "provider"), default=PROVIDERS[0], show_default=True,
                        help="where to run: ONNX Runtime's execution provider, or the torch backend's device")(fn)


def json_option(what: str):
    return click.option("--json", "as_json", is_flag=True, help=f"print {what} as JSON (no progress display)")


def engine_options(fn):
    """--engine and --plugins, for commands that run a TensorRT engine."""
    fn = click.option("--plugins", type=PATH, default=None, metavar="LIB",
                      help="TensorRT plugin library (trt-flavor engines; default: the one the engine was built "
                           "with)")(fn)
    return click.option("--engine", type=PATH, default=None, metavar="ENGINE",
                        help="TensorRT engine (default: EXPORT/model.engine)")(fn)
