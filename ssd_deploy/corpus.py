"""The stdlib corpus: Python's own standard-library sources, text that exists offline wherever Python runs.

The tiny trained model (``ssd_deploy/data/tiny-stdlib``, made by ``benchmarks/train_tiny.py``) learns from it, and
quantization's accuracy is measured on its held-out files (docs/quantization.md). The split is by file and fixed:
a file is held out when the CRC-32 of its path relative to the stdlib directory is a multiple of ``HELD_OUT_EVERY``,
so it does not depend on which other files a Python version ships. Test suites, IDLE, lib2to3 and turtledemo are
left out (mostly data and fixtures rather than code); files are read as UTF-8, documents joined by the end-of-text
token.
"""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

import numpy as np

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# the model trained on this corpus (benchmarks/train_tiny.py), shipped as package data with its tokenizer.json
TRAINED_MODEL = Path(__file__).parent / "data" / "tiny-stdlib"
EXCLUDED = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
HELD_OUT_EVERY = 10
SPLITS = ("train", "held-out")
EOS = "<|endoftext|>"


def split_of(relative: str) -> str:
    return "held-out" if zlib.crc32(relative.encode()) % HELD_OUT_EVERY == 0 else "train"


def files(split: str, root: Path = STDLIB) -> list[Path]:
    """The split's source files, sorted by relative path."""
    assert split in SPLITS, split
    found = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if EXCLUDED.isdisjoint(rel.parts) and split_of(rel.as_posix()) == split:
            found.append(p)
    return found


def texts(split: str, root: Path = STDLIB) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in files(split, root)]


def token_stream(tokenizer, split: str, root: Path = STDLIB) -> np.ndarray:
    """All documents of the split as one int64 token stream, each followed by the end-of-text token."""
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for enc in tokenizer.encode_batch(texts(split, root)):
        ids += enc.ids
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def windows(stream: np.ndarray, length: int, count: int) -> np.ndarray:
    """``count`` consecutive, non-overlapping windows of ``length`` + 1 tokens from the start of the stream (the
    + 1: each window's next-token targets); fewer when the stream is shorter."""
    count = min(count, (len(stream) - 1) // length)
    return np.stack([stream[i * length:(i + 1) * length + 1] for i in range(count)])
