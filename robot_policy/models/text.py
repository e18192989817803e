"""Language: an instruction string -> LANGUAGE condition tokens (L, D_lang) and a padding mask.

Three encoders behind one interface (``encode(texts) -> (tokens (B, L, D_lang), mask (B, L) bool)``,
zero-padded to the longest instruction in the batch, truncated at ``max_tokens``):

* ``builtin``: a deterministic byte-level encoder for tests and single-machine runs. UTF-8 bytes index a
  256-row embedding, sin-cos positions are added, and two frozen pre-norm transformer layers mix the
  tokens. Every weight is drawn from NumPy's PCG64 generator seeded with ``seed``, so every machine and
  torch version computes the same map, and nothing needs to be saved. It is a random feature map, not a
  language model: distinct instructions get distinct tokens; paraphrases are not recognised as related.
* ``file``: precomputed embeddings (safetensors: one (L_i, D) tensor per instruction); see
  ``save_text_embeddings`` / ``precompute_text_embeddings``. The way to train on T5 features without
  running T5 in the training job.
* ``t5``: a frozen T5 encoder (RDT uses T5-XXL, D = 4096) loaded with ``transformers`` from a local
  directory only.

An empty instruction encodes to a single masked-out token: the policy's language cross-attention then
contributes nothing, the same as language dropout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from robot_policy.models.layers import sincos_table
from robot_policy.models.pretrained import require_local_dir, require_transformers

TEXT_ENCODERS = ("builtin", "file", "t5")
_FILE_FORMAT = "robot_policy.text_embeddings"


@dataclass
class TextEncoderConfig:
    """Which text encoder turns instructions into language tokens. Width and length come from the policy
    config (``lang_dim``, ``max_lang_tokens``)."""

    kind: str = "builtin"  # "builtin" | "file" | "t5"
    path: str | None = None  # file: the .safetensors; t5: the local checkpoint directory (checked when built)
    layers: int = 2  # builtin: frozen transformer layers over the byte embeddings
    heads: int = 4  # builtin: attention heads (must divide lang_dim)
    seed: int = 0  # builtin: weights are a pure function of this seed

    def __post_init__(self) -> None:
        if self.kind not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder.kind: unknown {self.kind!r}; valid: {', '.join(TEXT_ENCODERS)}")
        if self.layers < 0:
            raise ValueError(f"text_encoder.layers: must be >= 0, got {self.layers}")
        if self.heads < 1:
            raise ValueError(f"text_encoder.heads: must be >= 1, got {self.heads}")


class TextEncoder(Protocol):
    """Instructions -> (tokens (B, L, dim) float, mask (B, L) bool; True = real token)."""

    dim: int

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]: ...


def _pad(seqs: Sequence[Tensor], dim: int, device: torch.device | None) -> tuple[Tensor, Tensor]:
    """List of (L_i, dim) -> zero-padded (B, L, dim) and mask (B, L); L >= 1 so empty inputs still have a slot."""
    L = max([1] + [s.shape[0] for s in seqs])
    out = torch.zeros(len(seqs), L, dim, device=device)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool, device=device)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s.to(device=device, dtype=out.dtype)
        mask[i, : s.shape[0]] = True
    return out, mask


class ByteTextEncoder(nn.Module):
    """Deterministic frozen byte-level text encoder (see the module docstring). dim = lang_dim."""

    pos: Tensor  # (max_tokens, dim) sin-cos table

    def __init__(self, dim: int, max_tokens: int, layers: int = 2, heads: int = 4, seed: int = 0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"text_encoder.heads: {heads} must divide lang_dim {dim}")
        self.dim = dim
        self.max_tokens = max_tokens
        self.embed = nn.Embedding(256, dim)
        self.register_buffer("pos", sincos_table(max_tokens, dim), persistent=False)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers)
        ])
        self.norm = nn.LayerNorm(dim)
        self._init_from_seed(seed)
        self.requires_grad_(False)
        self.eval()

    def _init_from_seed(self, seed: int) -> None:
        # NumPy's PCG64 stream is stable across releases; torch's init functions are not promised to be.
        if any(p.is_meta for p in self.parameters()):
            return
        rng = np.random.default_rng(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif p.dim() == 1:  # norm gains
                    p.fill_(1.0)
                else:
                    std = 1.0 if name.startswith("embed") else p.shape[1] ** -0.5
                    p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)) * std))

    def train(self, mode: bool = True) -> ByteTextEncoder:
        return super().train(False)  # frozen: no mode to switch

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """UTF-8 bytes, truncated to max_tokens: ids (B, L) long and mask (B, L) bool."""
        seqs = [torch.tensor(list(t.encode("utf-8")[: self.max_tokens]), dtype=torch.long) for t in texts]
        L = max([1] + [len(s) for s in seqs])
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        mask = torch.zeros(len(seqs), L, dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = True
        return ids, mask

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenize(texts)
        ids, mask = ids.to(self.pos.device), mask.to(self.pos.device)
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, L, dim)
        # An all-padding row (empty text) would attend to nothing: let it see its padding, then mask it out.
        pad = ~(mask | ~mask.any(dim=1, keepdim=True))  # (B, L) True = ignore
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        x = self.norm(x) * mask[..., None]
        return x, mask


def save_text_embeddings(path: str | Path, embeddings: Mapping[str, Tensor]) -> None:
    """Write instruction -> (L_i, D) embeddings to a safetensors file (instructions kept in its metadata)."""
    from safetensors.torch import save_file

    if not embeddings:
        raise ValueError("save_text_embeddings: no embeddings given")
    dims = {e.shape[-1] for e in embeddings.values()}
    if len(dims) != 1 or any(e.dim() != 2 for e in embeddings.values()):
        raise ValueError(f"save_text_embeddings: expected (L, D) tensors of one width, got widths {sorted(dims)}")
    texts = list(embeddings)
    tensors = {str(i): embeddings[t].detach().float().cpu().contiguous() for i, t in enumerate(texts)}
    save_file(tensors, str(path), metadata={"format": _FILE_FORMAT, "version": "1", "instructions": json.dumps(texts)})


def precompute_text_embeddings(encoder: TextEncoder, instructions: Sequence[str], path: str | Path) -> None:
    """Encode each instruction (padding dropped) and save the file a ``file`` text encoder reads."""
    out: dict[str, Tensor] = {}
    for text in dict.fromkeys(instructions):
        tokens, mask = encoder.encode([text])
        out[text] = tokens[0, mask[0]]
    save_text_embeddings(path, out)


class PrecomputedTextEncoder:
    """Looks instructions up in a file written by ``save_text_embeddings``; an unknown one is an error."""

    def __init__(self, path: str | Path | None, max_tokens: int) -> None:
        from safetensors import safe_open

        if not path:
            raise ValueError("text_encoder.path: the embeddings file is required for kind='file'")
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"text_encoder.path: no embeddings file at {str(p)!r}")
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != _FILE_FORMAT:
                raise ValueError(f"text_encoder.path: {p} is not a text-embeddings file "
                                 f"(format {meta.get('format')!r})")
            texts = json.loads(meta["instructions"])
            self.table = {t: fh.get_tensor(str(i))[:max_tokens] for i, t in enumerate(texts)}
        self.dim = int(next(iter(self.table.values())).shape[-1])
        self.path = p
        self.device: torch.device | None = None

    def to(self, device: torch.device | str) -> PrecomputedTextEncoder:
        self.device = torch.device(device)
        return self

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        missing = [t for t in texts if t not in self.table]
        if missing:
            known = list(self.table)[:10]
            raise KeyError(f"instruction {missing[0]!r} is not in {self.path} ({len(self.table)} known, e.g. {known})")
        return _pad([self.table[t] for t in texts], self.dim, self.device)


class T5TextEncoder:
    """Frozen T5 encoder from a local directory (tokenizer + weights); dim = the model's d_model."""

    def __init__(self, path: str | None, max_tokens: int) -> None:
        local = require_local_dir(path, "text_encoder.path")
        transformers = require_transformers("text_encoder.kind=t5")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(local), local_files_only=True)
        self.model = transformers.T5EncoderModel.from_pretrained(str(local), local_files_only=True)
        self.model.requires_grad_(False).eval()
        self.dim = int(self.model.config.d_model)
        self.max_tokens = max_tokens

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> T5TextEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device).bool()
        tokens = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, d_model)
        return tokens.float(), mask


_FACTORIES: dict[str, Callable[[TextEncoderConfig, int, int], TextEncoder]] = {
    "builtin": lambda c, dim, n: ByteTextEncoder(dim, n, c.layers, c.heads, c.seed),
    "file": lambda c, dim, n: PrecomputedTextEncoder(c.path, n),
    "t5": lambda c, dim, n: T5TextEncoder(c.path, n),
}


def make_text_encoder(cfg: TextEncoderConfig, dim: int, max_tokens: int) -> TextEncoder:
    """Build the configured encoder; its width must equal the policy's ``lang_dim`` (``dim``)."""
    encoder = _FACTORIES[cfg.kind](cfg, dim, max_tokens)
    if encoder.dim != dim:
        raise ValueError(f"text_encoder ({cfg.kind} at {cfg.path}) gives width {encoder.dim}, "
                         f"but the policy's lang_dim is {dim}")
    return encoder
