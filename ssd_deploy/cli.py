"""The ``ssd-deploy`` command line. Each command is a thin shell over one module; user errors become one message
and exit status 2, a failed validation exit status 1."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path

import click

import ssd_deploy as api
from . import recipes
from .cli_vocabulary import (Choice, CommaList, checkpoint_argument, engine_options, export_argument, json_option,
                             output_option, provider_option)
from .config import FORMATS
from .errors import UserError, user_errors
from .onnx.options import CHOICES, DTYPES, FLAVORS, MIN_OPSET, QUANT_BLOCKS
from .presets import PRESETS
from .progress import for_command
from .runtime.kinds import BACKENDS, EXPORTED_HERE, PROVIDERS, RUN_BACKENDS, TORCH_VARIANTS
from .serving.pbtxt import BACKENDS as SERVE_BACKENDS, RUNTIMES, STRATEGIES
from .targets import TARGETS
from .tensorrt.cli import build


@click.group()
@click.version_option(package_name="ssd-deploy")
def main():
    """Mamba-2 (SSD) checkpoints to proven ONNX Runtime and TensorRT inference."""


@main.command()
@output_option("DIR", "checkpoint directory to write")
@click.option("--preset", "preset_name", type=Choice(PRESETS, "preset"), default="tiny", show_default=True,
              help="model shape")
@click.option("--format", "fmt", type=Choice(FORMATS, "checkpoint format"), default=FORMATS[0],
              show_default=True,
              help="on-disk convention: Hugging Face's or mamba_ssm's")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=Choice(DTYPES, "dtype"), default=DTYPES[0], show_default=True,
              help="precision of the stored weights")
@click.option("--max-shard-size", default="5GB", show_default=True,
              help="hf format: safetensors shards of at most this size, with an index (e.g. 5GB, 500MiB)")
@click.option("--force", is_flag=True, help="replace a previous checkpoint in DIR (atomically)")
@user_errors
def new(output, preset_name, fmt, seed, dtype, max_shard_size, force):
    """Write a random checkpoint (either on-disk format) to DIR, generated tensor by tensor."""
    from .atomic import check_target
    from .checkpoint import parse_size, write_random_checkpoint
    from .config import CONFIG_FILE
    from .presets import preset

    cfg = preset(preset_name)
    shard = parse_size(max_shard_size)
    check_target(output, force, CONFIG_FILE)
    path = write_random_checkpoint(cfg, output, fmt, seed, dtype, shard, force=force)
    click.echo(f"wrote {fmt} checkpoint ({preset_name}, {dtype}, seed {seed}) to {path}")


def export_options(fn):
    """Flags that override a recipe's values; None means 'not given' (the recipe's value, else the default)."""
    for opt in reversed([
        click.option("--recipe", default=None, metavar="NAME|PATH",
                     help=f"export recipe ({', '.join(recipes.available())}, or a TOML file); flags override its "
                          f"values"),
        click.option("--flavor", type=Choice(CHOICES["flavor"], "flavor"), default=None,
                     help=f"what the four ops become  [default: {FLAVORS[0]}]"),
        click.option("--dtype", type=Choice(CHOICES["dtype"], "dtype"), default=None,
                     help=f"of weights and activations (states stay fp32)  [default: {DTYPES[0]}]"),
        click.option("--opset", type=click.IntRange(min=MIN_OPSET), default=None, help=f"[default: {MIN_OPSET}]"),
        click.option("--external-data", type=Choice(CHOICES["external_data"], "external data"), default=None,
                     help="weights in a side file (auto: when the model is large)  [default: auto]"),
        click.option("--logits", type=Choice(CHOICES["logits"], "logits"), default=None,
                     help="logits for every position, or the last one only  [default: all]"),
        click.option("--graph", type=Choice(CHOICES["graph"], "graph"), default=None,
                     help="unified: prefill and decode in one graph; decode: a single-token graph; packed: several "
                          "sequences end to end in one call (cu_seqlens)  [default: unified]"),
        click.option("--prefill", type=Choice(CHOICES["prefill"], "prefill"), default=None,
                     help="ort flavor: calls of more than one token on LinearAttention, or on the portable chunked "
                          "scan (faster on ONNX Runtime's CUDA provider)  [default: contrib]"),
        click.option("--companion", type=Choice(CHOICES["companion"], "companion"), default=None,
                     help="decode: also a single-token graph on the same weights file, which `run` uses for decode "
                          "steps (docs/graph-interface.md)  [default: none]"),
        click.option("--quant", type=Choice(CHOICES["quant"], "quantization"), default=None,
                     help="weight-only quantization of in_proj, out_proj and lm_head (docs/quantization.md)  "
                          "[default: none]"),
        click.option("--quant-block", type=int, default=None,
                     help=f"weights per scale along K: {' | '.join(map(str, QUANT_BLOCKS))}  [default: 128]"),
        click.option("--quant-format", type=Choice(CHOICES["quant_format"], "quant format"), default=None,
                     help="ONNX Runtime's MatMulNBits, or block-wise DequantizeLinear for TensorRT  "
                          "[default: auto = dq for the trt flavor]"),
    ]):
        fn = opt(fn)
    return fn


@main.command()
@checkpoint_argument
@output_option("DIR", "export directory to write (model.onnx and its weights)")
@export_options
@click.option("--force", is_flag=True, help="replace a previous export in DIR (atomically)")
@user_errors
def export(ckpt, output, recipe, force, **flags):
    """Export checkpoint directory CKPT to ONNX in DIR."""
    from .interface import model_path, read_metadata

    # checked before any work starts; what the flags changed in the recipe is said, not silently applied
    out = api.export(ckpt, output, recipe, force=force, notify=lambda line: click.echo(line, err=True),
                     progress=for_command(), **flags)
    meta = read_metadata(out)
    click.echo(f"exported {ckpt} ({meta.flavor}, {meta.dtype}) to {model_path(out)}")


@main.command()
@export_argument
@click.option("--against", "ckpt", metavar="CKPT", type=click.Path(path_type=Path), required=True,
              help="the checkpoint directory the model was exported from")
@click.option("--backend", type=Choice((b for b in BACKENDS if b != "torch"), "backend"), default="ort",
              show_default=True,
              help="ONNX Runtime, or a TensorRT engine built by `ssd-deploy build`")
@provider_option
@engine_options
@click.option("--steps", type=click.IntRange(min=0), default=4, show_default=True,
              help="decode steps after the prefill")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True, help="sequences per call")
@click.option("--prompt-len", type=click.IntRange(min=1), default=None, help="default: 1.5 chunks + 3 tokens")
@click.option("--seed", type=int, default=None)
@json_option("the report")
@user_errors
def validate(export_dir, ckpt, backend, provider, engine, plugins, steps, batch, prompt_len, seed, as_json):
    """Prove an export against the PyTorch reference (exit 1 on failure). A trt-flavor export runs on ONNX Runtime
    through its validation copy (each plugin node with its standard-op body): the very graph TensorRT receives."""
    from .validate import format_report

    report = api.validate(export_dir, ckpt, backend=backend, provider=provider, engine=engine, plugins=plugins,
                          steps=steps, batch=batch, prompt_len=prompt_len, seed=seed,
                          progress=for_command(as_json))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    sys.exit(0 if report.ok else 1)


@main.command()
@checkpoint_argument
@click.option("--target", "target_name", type=Choice(TARGETS, "target"), required=True,
              help="Jetson module (docs/jetson.md)")
@click.option("--recipe", default=None, metavar="NAME|PATH", help="take dtype, shapes, logits and workspace from it")
@click.option("--dtype", type=Choice(DTYPES, "dtype"), default=None, help="[default: fp16, or the recipe's]")
@click.option("--batch", type=int, default=None, help="sequences per call  [default: 1]")
@click.option("--prefill-len", type=int, default=None, help="prompt tokens per call  [default: 2048]")
@click.option("--logits", type=Choice(CHOICES["logits"], "logits"), default=None,
              help="[default: last, or the recipe's]")
@click.option("--workspace-mib", type=int, default=None, help="TensorRT builder memory pool  [default: 1024]")
@click.option("--os-share", type=float, default=None, help="GiB the OS takes (default: the target's estimate)")
@click.option("--quant", type=Choice(CHOICES["quant"], "quantization"), default=None,
              help="weight-only quantization of in_proj, out_proj and lm_head (docs/quantization.md)  "
                   "[default: none, or the recipe's]")
@click.option("--quant-block", type=int, default=None, help="weights per scale  [default: 128, or the recipe's]")
@json_option("the plan")
@user_errors
def plan(ckpt, target_name, recipe, dtype, batch, prefill_len, logits, workspace_mib, os_share, quant, quant_block,
         as_json):
    """Memory budget of CKPT (a checkpoint directory; only its config.json is read) on a Jetson target: weights,
    states, activation peak, TensorRT workspace and runtime overhead against the memory the OS leaves; the largest
    profiles and precisions that fit. Exit status 2 when it does not fit."""
    import dataclasses

    from .config import load_config
    from .plan import DEFAULT_QUANT_BLOCK, DEFAULT_WORKSPACE_MIB, format_plan, make_plan, refusal
    from .recipes import load as load_recipe
    from .targets import target

    tgt = target(target_name)
    if os_share is not None:
        if not 0 <= os_share < tgt.memory_gib:
            raise UserError(f"--os-share must lie in [0, {tgt.memory_gib}) GiB, got {os_share}")
        tgt = dataclasses.replace(tgt, os_share_gib=os_share)
    r = load_recipe(recipe).to_dict() if recipe else {}
    if r.get("device") and r["device"] != tgt.name:
        raise UserError(f"recipe {r['name']} is for {r['device']}, not {tgt.name}")
    cfg, _ = load_config(ckpt)
    p = make_plan(cfg, tgt, dtype or r.get("export", {}).get("dtype", "fp16"),
                  batch if batch is not None else r.get("batch", [1, 1])[1],
                  prefill_len if prefill_len is not None else r.get("prefill", [1, 2048])[1],
                  logits or r.get("export", {}).get("logits", "last"),
                  workspace_mib if workspace_mib is not None else r.get("workspace_mib", DEFAULT_WORKSPACE_MIB),
                  quant or r.get("export", {}).get("quant", "none"),
                  quant_block if quant_block is not None else r.get("export", {}).get("quant_block",
                                                                                      DEFAULT_QUANT_BLOCK))
    click.echo(json.dumps(p.to_dict(), indent=2) if as_json else format_plan(p, str(ckpt)))
    if not p.fits:
        raise UserError(refusal(p, str(ckpt)))


@main.command()
@click.argument("artifact", metavar="ARTIFACT", type=click.Path(path_type=Path))
@json_option("the description")
@user_errors
def inspect(artifact, as_json):
    """Describe ARTIFACT, anything ssd-deploy writes, without loading weights: an export directory (metadata,
    stored recipe, interface, op histogram), a TensorRT engine with its sidecar, or a Triton model repository."""
    from .inspect import format_description

    info = api.inspect(artifact)
    click.echo(json.dumps(info, indent=2) if as_json else format_description(info))


def _ints(text: str, what: str, least: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < least:
        raise UserError(f"{what}: expected {'positive integers' if least == 1 else f'integers >= {least}'}, "
                        f"got {text!r}")
    return values


@main.command()
@click.argument("model", metavar="MODEL", type=click.Path(path_type=Path), required=False)
@click.option("--backend", type=Choice(RUN_BACKENDS, "backend"), default="ort", show_default=True,
              help="torch: MODEL is a checkpoint directory (CKPT); ort/trt: an export directory (EXPORT); triton: a "
                   "Triton server at --url serving --model (MODEL, if given, only for its tokenizer.json)")
@provider_option
@engine_options
@click.option("--url", default="127.0.0.1:8001", show_default=True, help="triton: the server's gRPC address")
@click.option("--model", "served_model", default="mamba2", show_default=True,
              help="triton: the model's name in the server's repository")
@click.option("--prompt", default=None, help="text (needs a tokenizer.json beside MODEL or --tokenizer)")
@click.option("--input-ids", default=None, help="comma-separated token ids")
@click.option("--batch-file", type=click.Path(path_type=Path), default=None,
              help="one prompt per line (text, or comma-separated ids without a tokenizer)")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None, help="tokenizer.json or its directory")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--eos-id", type=int, default=None, help="default: the tokenizer's end-of-text token, if any")
@json_option("the generated ids (instead of streaming them)")
@click.option("--verify-weights", is_flag=True, help="hash an export's weight files whatever their size (they are "
                                                     "always size-checked, and hashed up to 1 GiB)")
@click.option("--cuda-graph", is_flag=True, help="ort with --provider cuda on a decode export (--graph decode) or "
                                                 "a decode companion: replay each step from ONNX Runtime's CUDA graph "
                                                 "of its batch size")
@user_errors
def run(model, backend, provider, engine, plugins, url, served_model, prompt, input_ids, batch_file, tokenizer,
        max_new_tokens, temperature, top_k, top_p, seed, eos_id, as_json, verify_weights, cuda_graph):
    """Generate from MODEL: the prompt prefilled in one call, then token by token with carried states."""
    from .generate import SamplingOptions, default_eos, find_tokenizer

    if sum(x is not None for x in (prompt, input_ids, batch_file)) != 1:
        raise UserError("give exactly one of --prompt, --input-ids, --batch-file")
    if model is None and backend != "triton":
        raise UserError(f"the {backend} backend needs MODEL (a checkpoint or export directory)")
    tok = find_tokenizer(model, tokenizer) if model is not None or tokenizer is not None else None
    if batch_file is not None:
        if not Path(batch_file).is_file():
            raise UserError(f"{batch_file}: no such file")
        try:
            lines = [ln for ln in Path(batch_file).read_text().splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{batch_file}: cannot be read ({e})") from None
        if not lines:
            raise UserError(f"{batch_file}: no prompts in it (every line is blank)")
    else:
        lines = [prompt if prompt is not None else input_ids]
    if prompt is not None and tok is None:
        raise UserError(f"--prompt needs a tokenizer: no tokenizer.json in {model}; pass --tokenizer or --input-ids")
    as_text = tok is not None and input_ids is None
    prompts = [tok.encode(ln).ids if as_text else _ints(ln, "prompt ids", least=0) for ln in lines]
    opts = SamplingOptions(max_new_tokens, temperature, top_k, top_p, seed,
                           eos_id if eos_id is not None else default_eos(tok))
    opts.check()
    if verify_weights and backend not in ("torch", "triton"):
        from .interface import verify_weights as verify

        verify(model, always_hash=True)
    if backend == "triton":  # one server-side sequence per prompt, run concurrently
        if cuda_graph:
            raise UserError("--cuda-graph: ONNX Runtime CUDA graphs are an option of the ort backend (a Triton "
                            "server runs its own model)")
        backend_obj = None
    else:
        backend_obj = api.open_backend(model, backend, provider, engine=engine, plugins=plugins,
                                       cuda_graph=cuda_graph)
        if backend_obj.one_token_per_call and any(len(p) > 1 for p in prompts):
            click.echo("note: this export is a decode-only graph (--graph decode): the prompt is prefilled one "
                       "token per call", err=True)
    stream = len(prompts) == 1 and not as_json

    def on_tokens(tokens, alive):
        if alive[0]:
            click.echo(tok.decode([int(tokens[0])]) if as_text else f"{int(tokens[0])} ", nl=False)

    if backend_obj is None:
        from .serving.client import generate_remote

        outs = generate_remote(url, served_model, prompts, opts,
                               (lambda t: on_tokens([t], [True])) if stream else None)
    else:
        outs = api.generate(backend_obj, prompts, opts, on_tokens=on_tokens if stream else None)
    if as_json:
        click.echo(json.dumps({"prompts": prompts, "generated": outs}))
    elif stream:
        click.echo()
    else:
        for ln, out in zip(lines, outs):
            click.echo(f"{ln} -> {tok.decode(out) if as_text else ','.join(map(str, out))}")


@main.command("serve-repo")
@click.argument("model", metavar="EXPORT", type=click.Path(path_type=Path))
@output_option("REPO", "the model repository to write (a new or empty directory)")
@click.option("--backend", type=Choice(SERVE_BACKENDS, "serving backend"), default="python",
              show_default=True, help="python: a python-backend model keeping per-sequence states (runs anywhere, "
                                      "also on the server bundled in nvidia-pytriton); onnxruntime/tensorrt: the "
                                      "graph or engine with Triton's implicit state")
@engine_options
@click.option("--name", default="mamba2", show_default=True, help="the model's name in the repository")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="model instances (per GPU for GPU instances)")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="sequences per model call  [default: the recipe's largest batch, else 8]")
@click.option("--max-sequences", type=click.IntRange(min=1), default=None,
              help="strategy oldest: live sequences per instance  [default: 4 x max batch]")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              metavar="SECONDS", help="a sequence idle this long is released")
@click.option("--strategy", type=Choice(STRATEGIES, "strategy"), default=STRATEGIES[0], show_default=True,
              help="Triton's sequence batching strategy")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=1000, show_default=True,
              help="how long the batcher waits to fill a batch")
@click.option("--runtime", type=Choice(RUNTIMES, "runtime"), default=RUNTIMES[0], show_default=True,
              help="python backend: ONNX Runtime on the export, or the PyTorch model (EXPORT is then a checkpoint "
                   "directory)")
@click.option("--provider", type=Choice(PROVIDERS, "provider"), default=PROVIDERS[0], show_default=True,
              help="where the model computes: the python backend's runtime, the onnxruntime backend's instances "
                   "(cuda: GPU instances, --instances on every GPU); tensorrt is always on GPUs")
@click.option("--dtype", type=Choice(DTYPES, "dtype"), default=DTYPES[0], show_default=True,
              help="torch runtime: the model's dtype")
@user_errors
def serve_repo(model, output, backend, engine, plugins, name, instances, max_batch, max_sequences, idle_timeout,
               strategy, queue_delay_us, runtime, provider, dtype):
    """Write a Triton Inference Server model repository for EXPORT (docs/serving.md), with a README of how to
    start it."""
    from .serving.pbtxt import ServeOptions
    from .serving.repository import write_repository

    opts = ServeOptions(name=name, backend=backend, instances=instances, max_batch=max_batch,
                        max_sequences=max_sequences, idle_timeout_s=idle_timeout, strategy=strategy,
                        queue_delay_us=queue_delay_us, runtime=runtime, provider=provider)
    out = write_repository(model, output, opts, engine, plugins, dtype)
    click.echo(f"wrote Triton model repository {out} (model {name}, {backend} backend); how to start it: "
               f"{out / 'README.md'}")


@main.command()
@checkpoint_argument
@click.option("--backends", type=CommaList([*TORCH_VARIANTS, *EXPORTED_HERE], "backend"),
              default="torch,portable,ort", show_default=True,
              help="comma-separated: torch (the PyTorch model on the ops' PyTorch listings), torch-triton (on our "
                   "Triton kernels; CUDA), either with -graphs (CUDA: decode steps replayed from CUDA graphs), "
                   "portable and ort (ONNX Runtime on exports made here)")
@click.option("--export", "exports", metavar="EXPORT", type=click.Path(path_type=Path), multiple=True,
              help="a further export directory to run on ONNX Runtime (repeatable)")
@provider_option
@click.option("--dtype", type=Choice(DTYPES, "dtype"), default=DTYPES[0], show_default=True,
              help="of the PyTorch model and of the exports made here")
@click.option("--batches", default="1", show_default=True, help="comma-separated batch sizes")
@click.option("--lengths", default="128,512", show_default=True, help="comma-separated prompt lengths")
@click.option("--steps", type=click.IntRange(min=1), default=8, show_default=True, help="decode steps timed per point")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="prefills timed per point (median)")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="PNG of tokens/s against length")
@click.option("--packed", is_flag=True, help="also prefill one prompt of each of --lengths in one packed call against "
              "one call per prompt (torch backends; portable/ort through a --graph packed export)")
@json_option("the points")
@user_errors
def bench(ckpt, backends, exports, provider, dtype, batches, lengths, steps, repeats, plot, packed, as_json):
    """Prefill tokens/s and decode ms/token of each backend, side by side on the same prompts, each checked against
    the float32 PyTorch listings (err pre: logits after the prefill; err step: after one decode step)."""
    from . import bench as b

    if plot:
        b.require_matplotlib()  # before minutes of measuring, not after
    result = api.benchmark(ckpt, backends, exports=exports, provider=provider, dtype=dtype,
                           batches=_ints(batches, "--batches"), lengths=_ints(lengths, "--lengths"), steps=steps,
                           repeats=repeats, packed=packed, display=for_command(as_json))
    points, packed_points = result.points, result.packed
    if plot:
        b.plot(points, plot, f"{provider}; {Path(ckpt).name}; batches {batches}")
    if as_json:
        click.echo(json.dumps(b.to_json(points) if not packed else
                              {"points": b.to_json(points), "packed": b.to_json(packed_points)}, indent=2))
    else:
        click.echo(b.table(points) + (("\n\n" + b.packed_table(packed_points)) if packed else ""))


@main.group()
def plugins():
    """The CUDA kernels and TensorRT plugin library (plugins/)."""


@plugins.command("build")
@click.option("--build-dir", type=click.Path(path_type=Path), default=None,
              help="default: plugins/build in a source tree, else ~/.cache/ssd-deploy/kernels-VERSION")
@click.option("--arch", "archs", multiple=True,
              help="SM architecture, e.g. 90 (repeatable; default: every one plugins/CMakeLists.txt lists that nvcc "
                   "supports, whatever an earlier run chose)")
@user_errors
def plugins_build(build_dir, archs):
    """Build libssd_kernels (and the TensorRT plugin library where TensorRT headers are found, the ONNX Runtime
    custom-op library where ONNX Runtime headers are) with CMake."""
    from .kernels import ORT_HEADERS_HINT, TRT_HEADERS_HINT, build_all

    with for_command().step("plugins build (CMake)") as say:
        built = build_all(build_dir, list(archs) or None, log=lambda line: say(line.strip()[:100]))
    click.echo(f"built {built.kernels}")
    if built.trt_plugins is not None:
        click.echo(f"built {built.trt_plugins}")
    else:
        hint = f"; {TRT_HEADERS_HINT}" if "header" in built.trt_status.lower() else ""
        click.echo(f"skipped the TensorRT plugin library (what `ssd-deploy build --plugins` needs): "
                   f"{built.trt_status}{hint}")
    if built.ort_custom_ops is not None:
        click.echo(f"built {built.ort_custom_ops}")
    else:
        hint = f"; {ORT_HEADERS_HINT}" if "header" in built.ort_status.lower() else ""
        click.echo(f"skipped the ONNX Runtime custom-op library (the trt flavor on ONNX Runtime CUDA): "
                   f"{built.ort_status}{hint}")


@main.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="where to write and keep the export (default: a temporary directory, removed afterwards)")
@click.option("--prompt", default="def ", show_default=True, help="text to continue")
@user_errors
def demo(workdir, prompt):
    """The tiny Mamba-2 trained on Python's standard library (shipped) → portable ONNX → validated against PyTorch
    on ONNX Runtime → greedy text from PROMPT."""
    import shutil

    from .corpus import TRAINED_MODEL
    from .generate import SamplingOptions, default_eos, find_tokenizer, generate
    from .validate import format_report

    progress = for_command()
    with contextlib.ExitStack() as stack:
        work = Path(workdir) if workdir else \
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ssd-deploy-demo-")))
        click.echo(f"checkpoint: {TRAINED_MODEL} (trained by benchmarks/train_tiny.py)")
        out = api.export(TRAINED_MODEL, work / "export", logits="last", progress=progress)
        shutil.copy(TRAINED_MODEL / "tokenizer.json", out)  # `ssd-deploy run` on the export then speaks text
        click.echo(f"export:     {out}")
        report = api.validate(out, TRAINED_MODEL, steps=4, seed=0, progress=progress)
        click.echo(format_report(report))
        tok = find_tokenizer(out, None)
        new = generate(api.open_backend(out), [tok.encode(prompt).ids],
                       SamplingOptions(max_new_tokens=32, eos_id=default_eos(tok)))[0]
        click.echo(f"greedy, ONNX Runtime:\n{prompt}{tok.decode(new)}")
        if not workdir:
            click.echo(f"(removed {work}; keep the export with --workdir DIR)")
    sys.exit(0 if report.ok else 1)


main.add_command(build)

if __name__ == "__main__":
    main()
