"""Named model shapes for random checkpoints (``ssd-deploy new --preset``) and benchmarks."""

from __future__ import annotations

from .config import Mamba2Config
from .errors import UserError

PRESETS: dict[str, Mamba2Config] = {
    # tiny: every code path (ngroups > 1, chunk smaller than typical prompts) at test speed
    "tiny": Mamba2Config(d_model=64, n_layer=2, vocab_size=250, d_state=16, d_conv=4, expand=2, headdim=16,
                         ngroups=2, chunk_size=32),
    "130m": Mamba2Config(d_model=768, n_layer=24, vocab_size=50277, d_state=128, headdim=64, ngroups=1),
    "2.7b": Mamba2Config(d_model=2560, n_layer=64, vocab_size=50277, d_state=128, headdim=64, ngroups=1),
    "codestral": Mamba2Config(d_model=4096, n_layer=64, vocab_size=32768, d_state=128, headdim=64, ngroups=8,
                              tie_embeddings=False),
}


def preset(name: str) -> Mamba2Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
