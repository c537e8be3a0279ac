"""Train the built-in shapes model from scratch on CPU and write it in the official HF layout.

    python -m pixelrefer_ros.training.train --out models/shapes --seed 0

The forward is the node's incremental path written differentiably with the model's own modules:
ViT on each scene's packed images (per frame the 336² global image, per (object, frame) its crop
and its own 224 local crop), `pool_object` (k-means: the assignments are not differentiable, the
centroids are means, so gradients reach the cells), `infuse`, `project`, `splice_regions` into
`llm.embed(ids)`, and `llm.forward_no_cache`. Cross-entropy covers the answer tokens and the
closing `<|im_end|>` only.

Training runs in four phases (see `TrainConfig`): the ViT first learns shapes on tight object
crops, then the object tokenizer learns region attributes through training-only auxiliary
heads, then the LLM and the object tokenizer learn to answer with the ViT frozen, and last the
LLM alone learns where things are and how they move, on object tokens computed once. Each
phase is a fixed number of steps with its own learning-rate schedule, so a run is a function of
the seed; `--minutes` is only a safety cap (the report says when it cut the run short). The
focus phase runs the LLM through `torch.compile` (`--no-compile` runs it eagerly), and batches
are built in this process (`--prefetch` builds them two steps ahead in a second one); see
`TrainConfig` for what each choice measured.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing as mp
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from pixelrefer_ros.model import prompt as prompts
from pixelrefer_ros.model.checkpoint_writer import save_checkpoint
from pixelrefer_ros.model.config import (
    LLMConfig,
    ObjectTokenizerConfig,
    PixelReferConfig,
    VisionConfig,
)
from pixelrefer_ros.model.loader import load_checkpoint, with_token_ids
from pixelrefer_ros.model.pixelrefer import PixelReferLite
from pixelrefer_ros.model.tokenizer import TextTokenizer
from pixelrefer_ros.model.vision import VisionAttention, VisionEncoder, rope_angles
from pixelrefer_ros.model.vision import apply_rope as apply_vision_rope
from pixelrefer_ros.synthetic import COLOR_NAMES, SHAPES, SIZES, Scene, generate_scene
from pixelrefer_ros.training.data import (
    HELD_OUT_SEED,
    PHASES,
    PREPROCESS,
    SUB_CELLS,
    WORLD,
    CropSample,
    EncodedQuestion,
    SceneSample,
    build_tokenizer,
    encode_question,
    focus_questions,
    make_batch,
    preprocess_scene,
    region_index,
    reversed_in_time,
    without_pixels,
    worker_batch,
    worker_init,
)

IGNORE = -100  # label of positions without a loss
POOLS = ("mean", "meanmax")  # how the training-only heads pool cells or tokens (`pool_rows`)


@dataclass(frozen=True)
class ModelShape:
    """Widths and depths of the shapes model (a few million parameters).

    The OCI heads are not stored in config.json (the loader uses the official 8), so the ViT
    width must be a multiple of 8; its head dim must be a multiple of 4 for the 2-D RoPE.
    """

    vision_hidden: int = 64
    vision_intermediate: int = 256
    vision_layers: int = 2
    vision_heads: int = 4
    llm_hidden: int = 128
    llm_intermediate: int = 384
    llm_layers: int = 3
    llm_heads: int = 4
    llm_kv_heads: int = 2
    max_position_embeddings: int = 4096  # 16 frames x 4 objects x 32 tokens fit easily
    # mask_num: object tokens per object and frame (released checkpoints: 32). 8 makes every
    # LLM step here ~2.4x cheaper (a focus step 0.87 -> 0.28 s), which is what fits the motion
    # training into the budget; the objects are 32-50 patches, so 8 k-means tokens still
    # average only 4-6 cells each.
    tokens_per_object: int = 8

    def config(self, vocab_size: int) -> PixelReferConfig:
        return PixelReferConfig(
            vision=VisionConfig(hidden_size=self.vision_hidden,
                                intermediate_size=self.vision_intermediate,
                                num_hidden_layers=self.vision_layers,
                                num_attention_heads=self.vision_heads),
            objects=ObjectTokenizerConfig(vision_width=self.vision_hidden,
                                          llm_width=self.llm_hidden,
                                          tokens_per_object=self.tokens_per_object),
            llm=LLMConfig(vocab_size=vocab_size, hidden_size=self.llm_hidden,
                          intermediate_size=self.llm_intermediate,
                          num_hidden_layers=self.llm_layers,
                          num_attention_heads=self.llm_heads,
                          num_key_value_heads=self.llm_kv_heads,
                          max_position_embeddings=self.max_position_embeddings,
                          tie_word_embeddings=True),
            torch_dtype="float32", model_id="pixelrefer-lite-shapes")


@dataclass(frozen=True)
class PhaseConfig:
    """Length and optimiser schedule of one training phase."""

    steps: int
    scenes_per_step: int
    lr: float
    warmup_steps: int


@dataclass(frozen=True)
class TrainConfig:
    """Four phases; after the first the ViT is frozen, like the official stage 1:

    0. "crops": the ViT alone learns shapes on tight object crops (`CropHeads`): a fifth of the
       patches of a full crop, and dense per-cell targets (which sub-cells are object, where
       the object's centre is) that a from-scratch ViT learns from far faster than from one
       label per object.
    1. "vision": the object tokenizer learns what a region is (shape, colour, size, where it is)
       through the training-only `AuxHeads` (mean and max of its K tokens, `aux_pool`), one
       frame per scene, no LLM. Phases 0-1 stand in for the SigLIP pretraining that the
       released checkpoints start from.
    2. "answers": the object tokenizer and the LLM learn to answer, with the auxiliary loss
       kept at `aux_weight`.
    3. "focus": the LLM alone, on the object tokens of `focus_bank` training scenes computed
       once with the tokenizer as phase 2 left it (no ViT in the loop, so a step of 8 scenes
       costs about what a phase-2 step of 2 does), asked mostly relations and motion
       (`data.focus_questions`). Relation and motion need comparisons across token blocks,
       which a small LLM learns only after hundreds of steps on them: in phase 2 they stayed
       at chance. Half of the scenes are asked played backwards (`data.reversed_in_time`):
       without that, the LLM learnt the motion of each of the cached objects by heart (1.00
       on them, chance on held-out scenes). The video clips start as the first and last
       frame only and lengthen (`focus_clip_middle`); relations keep frames of their own.
       Measured here: relation is learnt after 500-750 steps of "left of" only; direction
       after ~1,300-3,900 steps, varying from run to run, and with full-length clips from the
       start one run had not learnt it by step 3,850; "moving?" after direction (it needs the
       size of a displacement whatever its sign). With the growing clips (the default) the
       committed run learnt direction by ~1,400 of 5,500, at cheaper steps early on.
    After phase 0 the ViT is frozen (`freeze_vision`; forward only, ~3x cheaper): training it
    on with fresh heads measurably wiped out the shape features it had learnt.
    """

    seed: int = 0
    crops: PhaseConfig = PhaseConfig(steps=1500, scenes_per_step=6, lr=2e-3, warmup_steps=100)
    vision: PhaseConfig = PhaseConfig(steps=600, scenes_per_step=6, lr=2e-3, warmup_steps=20)
    answers: PhaseConfig = PhaseConfig(steps=600, scenes_per_step=2, lr=3e-3, warmup_steps=40)
    focus: PhaseConfig = PhaseConfig(steps=5500, scenes_per_step=8, lr=2e-3, warmup_steps=50)
    crop_pool: str = "meanmax"  # CropHeads: how the crops phase pools a crop's cells
    aux_pool: str = "meanmax"  # AuxHeads: how the vision and answers phases pool a region's tokens
    focus_bank: int = 1000  # training scenes whose object tokens the focus phase caches
    focus_reverse_share: float = 0.5  # of focus scenes asked played backwards (reversed_in_time)
    focus_left_only_share: float = 0.15  # of the focus phase asking only "left of" ...
    focus_ramp_share: float = 0.4  # ... then "right of" rises linearly to half by this share
    # chance of each middle frame joining a focus clip (first and last always do), rising
    # linearly from the first value at step 0 to the second at the last step (README: with
    # (0.5, 0.5) the step where direction was learnt ranged from ~1,400 to beyond 3,850)
    focus_clip_middle: tuple[float, float] = (0.0, 0.6)
    # end the focus phase after this many steps, schedule unchanged: reproduces a run that the
    # time cap cut short, or an experiment's focus phase up to a given step
    focus_stop_step: int | None = None
    freeze_vision: bool = True  # after the crops phase
    aux_weight: float = 0.5  # of the auxiliary loss in the answers phase
    left_only_share: float = 0.5  # of the answers phase asking only "left of" (data.py)
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    weight_decay: float = 0.05  # matrices only; norms, biases and embeddings are not decayed
    grad_clip: float = 1.0
    llm_chunk: int = 16  # sequences per padded LLM call (sorted by length, little padding)
    # the focus phase's LLM forward through torch.compile (inductor fuses RMSNorm, RoPE and
    # SwiGLU's elementwise ops and their gradients): measured, 0.253 -> 0.213 s a step for
    # ~35 s of compiling (cold cache). It needs a C++ compiler (`check_compiler` fails fast
    # without one); the losses agree with the eager forward to float rounding, not bit for bit.
    compile_focus: bool = True
    log_every: int = 25
    threads: int = 2
    max_minutes: float = 90.0  # safety cap only; the schedule is defined by the step counts
    # build the first three phases' batches two steps ahead in a second process. Off: on these
    # 2 cores the process competes with torch's two threads and every step got slower
    # (measured, s a step: crops 0.194 -> 0.159, vision 0.29 -> 0.15, answers 0.47 -> 0.33
    # without it). A machine with idle cores may gain from it (not measured). Batches are a
    # function of (seed, phase, step), so either way trains the same model.
    prefetch: bool = False
    shape: ModelShape = field(default_factory=ModelShape)


# ----------------------------------------------------------------------------- model

def init_weights(model: PixelReferLite) -> None:
    """Qwen2's initialiser (normal, std 0.02; zero biases) for the LLM; the vision encoder and
    object tokenizer keep PyTorch's default (fan-in scaled) initialisation."""
    for module in model.llm.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(shape: ModelShape, tokenizer: TextTokenizer, seed: int) -> PixelReferLite:
    torch.manual_seed(seed)
    # the tokenizer's ids, so that config.json says what the loader will compute
    config = with_token_ids(shape.config(tokenizer.vocab_size), tokenizer)
    model = PixelReferLite(config)
    init_weights(model)
    model.tie_weights()
    return model


AUX_CLASSES = (len(SHAPES), len(COLOR_NAMES), len(SIZES))
AUX_NAMES = ("shape", "color", "size")
AUX_GEOMETRY = 4  # centroid x, y, box w, h (fractions of the image)
GEOMETRY_SCALE = 10.0  # makes a 0.05 error cost about as much as a wrong-ish class


def pooled_width(width: int, pool: str) -> int:
    """Width of `pool_rows`'s output for rows of `width`; rejects unknown pools."""
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}; choose one of {POOLS}")
    return 2 * width if pool == "meanmax" else width


def pool_rows(x: Tensor, pool: str, dim: int) -> Tensor:
    """Mean over `dim`, or with "meanmax" mean and max side by side (twice the width)."""
    if pool == "meanmax":
        return torch.cat([x.mean(dim=dim), x.amax(dim=dim)], dim=-1)
    return x.mean(dim=dim)


class AuxHeads(nn.Module):
    """Training-only probes on a region's K object tokens; never saved in the checkpoint.

    They read what the answers need from the projected tokens (the same tokens the LLM sees),
    pooled over the K tokens by `pool` (see `pool_rows`): shape, colour and size classes, and
    the visible centroid and box size over the image size. Without them, a from-scratch ViT
    learnt only colour within a CPU budget. With the mean alone, the token that carries a
    shape's telling cells is diluted 8-fold, as the crops head's cells were; measured (same
    ViT, 600 vision steps): an MLP probe on the tokens' mean and max read shape at 0.96 of
    held-out regions against 0.90 with the mean-only heads and 200 steps, and the finished
    model's shape rose from 0.93 to 0.96 (README).
    """

    def __init__(self, width: int, pool: str):
        super().__init__()
        self.pool = pool
        pooled = pooled_width(width, pool)
        self.norm = nn.LayerNorm(pooled)
        self.mlp = nn.Sequential(nn.Linear(pooled, width), nn.GELU(),
                                 nn.Linear(width, sum(AUX_CLASSES) + AUX_GEOMETRY))

    def forward(self, tokens: Tensor) -> Tensor:
        """[R, K, H] -> [R, sum(AUX_CLASSES) + AUX_GEOMETRY] logits and regressions."""
        return self.mlp(self.norm(pool_rows(tokens, self.pool, dim=1)))


def aux_loss(heads: AuxHeads, tokens: list[Tensor],
             samples: list[SceneSample]) -> tuple[Tensor, dict[str, float]]:
    """Summed class cross-entropies + scaled geometry MSE, and per-head accuracy / error."""
    out = heads(torch.cat(tokens))  # [R, ...]
    regions = [r for s in samples for r in s.regions]
    labels = torch.tensor([r.labels for r in regions])  # [R, 3]
    geometry = torch.tensor([r.geometry for r in regions])  # [R, 4]
    logits = out[:, :sum(AUX_CLASSES)].split(AUX_CLASSES, dim=1)
    loss = torch.zeros(())
    stats: dict[str, float] = {}
    for i, (name, lg) in enumerate(zip(AUX_NAMES, logits, strict=True)):
        loss = loss + F.cross_entropy(lg, labels[:, i])
        stats[f"acc_{name}"] = float((lg.argmax(1) == labels[:, i]).float().mean())
    err = out[:, sum(AUX_CLASSES):] - geometry
    loss = loss + GEOMETRY_SCALE * (err**2).mean()
    stats["geom_mae"] = float(err.detach().abs().mean())
    return loss, stats


class CropHeads(nn.Module):
    """Training-only heads of the "crops" phase on raw ViT features; never saved.

    `classes` reads shape and colour from the cells under the mask, pooled by `pool`: "mean",
    or "meanmax" (mean and max side by side); `cells` reads, per cell, the object coverage of
    its SUB_CELLS x SUB_CELLS sub-cells and its offset to the object's centre (in crop sides).
    Shapes differ in a few cells (a cross's inner corners against a square's), which a mean
    over hundreds of cells dilutes: measured, with "mean" the head sat at 0.2-0.4 on shape for
    ~900 steps and ended at 0.88 after 2,200; with "meanmax" 0.95 at step 800, 0.99 at 2,200.
    """

    def __init__(self, width: int, pool: str):
        super().__init__()
        self.pool = pool
        pooled = pooled_width(width, pool)
        self.classes = nn.Sequential(nn.LayerNorm(pooled), nn.Linear(pooled, width), nn.GELU(),
                                     nn.Linear(width, AUX_CLASSES[0] + AUX_CLASSES[1]))
        self.cells = nn.Linear(width, SUB_CELLS**2 + 2)

    def pool_cells(self, cells: Tensor) -> Tensor:
        """[N, C] cells under one mask -> [C] or [2C]."""
        return pool_rows(cells, self.pool, dim=0)


def crop_loss(vision: VisionEncoder, heads: CropHeads,
              samples: list[CropSample]) -> tuple[Tensor, dict[str, float]]:
    """Shape + colour cross-entropy, sub-cell BCE and 10x offset MSE over a batch of crops."""
    pixel_values = torch.from_numpy(np.concatenate([s.pixel_values for s in samples]))
    grids = [s.grid for s in samples]
    feats = vision_features(vision, pixel_values, grids)  # [sum P, C]
    inside = [f[torch.from_numpy(s.inside)] for f, s in  # [N_s, C] cells under each mask
              zip(feats.split([h * w for h, w in grids]), samples, strict=True)]
    pooled = torch.stack([heads.pool_cells(c) for c in inside])  # [B, C or 2C]
    shape_logits, color_logits = heads.classes(pooled).split(AUX_CLASSES[:2], dim=1)
    labels = torch.tensor([s.labels for s in samples])  # [B, 3]
    cells = heads.cells(feats)
    targets = torch.from_numpy(np.concatenate([s.cell_targets for s in samples]))
    n = SUB_CELLS**2
    loss = (F.cross_entropy(shape_logits, labels[:, 0])
            + F.cross_entropy(color_logits, labels[:, 1])
            + F.binary_cross_entropy_with_logits(cells[:, :n], targets[:, :n])
            + GEOMETRY_SCALE * F.mse_loss(cells[:, n:], targets[:, n:]))
    stats = {"acc_shape": float((shape_logits.argmax(1) == labels[:, 0]).float().mean()),
             "acc_color": float((color_logits.argmax(1) == labels[:, 1]).float().mean()),
             "regions": float(len(samples))}
    return loss, stats


# ----------------------------------------------------------------------------- forward

def _vision_attention(attn: VisionAttention, x: Tensor, cos: Tensor, sin: Tensor,
                      lengths: list[int]) -> Tensor:
    """`VisionAttention.forward` with images of equal length batched into one 4-D SDPA call
    (4-D inputs take the fused CPU kernel; the model's 3-D call takes the math path)."""
    p = x.shape[0]  # x [P, C]
    q = apply_vision_rope(attn.q_proj(x).view(p, attn.num_heads, attn.head_dim), cos, sin)
    k = apply_vision_rope(attn.k_proj(x).view(p, attn.num_heads, attn.head_dim), cos, sin)
    v = attn.v_proj(x).view(p, attn.num_heads, attn.head_dim)
    qs, ks, vs = q.split(lengths), k.split(lengths), v.split(lengths)
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for i, n in enumerate(lengths):
        groups[n].append(i)
    outs: list[Tensor | None] = [None] * len(lengths)
    for members in groups.values():
        # [N, Pi, H, D] -> [N, H, Pi, D]: N images of the same length, attention within each
        qb, kb, vb = (torch.stack([t[i] for i in members]).transpose(1, 2)
                      for t in (qs, ks, vs))
        o = F.scaled_dot_product_attention(qb, kb, vb).transpose(1, 2)  # [N, Pi, H, D]
        for i, oi in zip(members, o.unbind(0), strict=True):
            outs[i] = oi
    return attn.out_proj(torch.cat(outs, dim=0).reshape(p, -1))  # [P, C]


def vision_features(vision: VisionEncoder, pixel_values: Tensor,
                    grids: list[tuple[int, int]]) -> Tensor:
    """`VisionEncoder.forward` restated for CPU training speed: [P, 3*14*14] -> [P, C].

    Two substitutions that change float rounding only (tests/test_training.py compares with the
    model's forward): the 14x14 patch conv as the equivalent matmul (the conv's weight gradient
    is several times slower on CPU), and `_vision_attention`.
    """
    cfg = vision.cfg
    lengths = [gh * gw for gh, gw in grids]
    angles = rope_angles(grids, cfg.head_dim, cfg.rope_theta)  # [P, D/2]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)  # [P, D]
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)
    conv = vision.embeddings.patch_embedding
    x = F.linear(pixel_values, conv.weight.flatten(1), conv.bias)  # [P, C]
    for layer in vision.encoder.layers:
        x = x + _vision_attention(layer.self_attn, layer.layer_norm1(x), cos, sin, lengths)
        x = x + layer.mlp(layer.layer_norm2(x))
    return vision.post_layernorm(x)


def region_tokens(model: PixelReferLite, samples: list[SceneSample],
                  train_vision: bool = True) -> list[Tensor]:
    """Object tokens of every region of every scene: one [R_s, K, H] tensor per scene.

    One ViT call over all images of the batch (attention stays within each image; without
    gradients when `train_vision` is off), then per region `pool_object` on its crop, and one
    batched `infuse` + `project` for all regions.
    """
    obj = model.objects
    pixel_values = torch.from_numpy(np.concatenate([s.pixel_values for s in samples]))
    grids = [g for s in samples for g in s.grids]
    with torch.set_grad_enabled(train_vision and torch.is_grad_enabled()):
        feats = vision_features(model.vision, pixel_values, grids)  # [sum P, C]
    parts = feats.split([gh * gw for gh, gw in grids])
    queries, local, global_ = [], [], []
    start = 0  # index of the scene's first image in `parts`
    for s in samples:
        nf = len(s.frames)
        frame_pos = {f: i for i, f in enumerate(s.frames)}
        for r, region in enumerate(s.regions):
            gh, gw = s.grids[nf + 2 * r]
            crop = parts[start + nf + 2 * r].view(gh, gw, -1)  # [gh, gw, C]
            queries.append(obj.pool_object(crop, torch.from_numpy(region.mask_grid),
                                           region.box, region.orig_hw))  # [K, C]
            local.append(parts[start + nf + 2 * r + 1])  # [Pl, C]
            global_.append(parts[start + frame_pos[region.frame]])  # [Pg, C]
        start += len(s.grids)
    tokens = obj.project(obj.infuse(torch.stack(queries), torch.stack(local),
                                    torch.stack(global_)))  # [R*K, H]
    k = obj.cfg.tokens_per_object
    tokens = tokens.view(-1, k, tokens.shape[-1])  # [R, K, H]
    return list(tokens.split([len(s.regions) for s in samples]))


@dataclass
class LossSum:
    """Summed cross-entropy over answer + `<|im_end|>` tokens, overall and per task."""

    total: Tensor
    count: int
    per_task: dict[str, list[float]]  # task -> [summed loss, tokens], detached

    @property
    def mean(self) -> Tensor:
        return self.total / self.count


def answer_loss(model: PixelReferLite, questions: list[list[EncodedQuestion]],
                tokens: list[Tensor], region_id: int, chunk: int,
                llm_forward: Callable[[Tensor], Tensor] | None = None) -> LossSum:
    """Cross-entropy of every question of the batch (per scene: its questions and its region
    tokens [R, K, H]); LLM calls on length-sorted chunks, through `llm_forward` (embeds
    [B, T, H] -> logits [B, T, V]; default `model.llm.forward_no_cache`, or its compiled
    form from `compiled_llm_forward`)."""
    llm_forward = llm_forward or model.llm.forward_no_cache
    items = [(q, tok) for qs, tok in zip(questions, tokens, strict=True) for q in qs]
    items.sort(key=lambda item: len(item[0].ids))
    total = torch.zeros(())
    count = 0
    per_task: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for i in range(0, len(items), chunk):
        embeds, labels = [], []
        for q, tok in items[i:i + chunk]:
            ids = torch.from_numpy(q.ids)
            feats = tok[list(q.blocks)].flatten(0, 1)  # [len(blocks)*K, H] in splice order
            embeds.append(prompts.splice_regions(model.llm.embed(ids), ids, region_id, feats))
            label = torch.full_like(ids, IGNORE)
            label[q.num_prompt - 1:-1] = ids[q.num_prompt:]  # position p predicts ids[p + 1]
            labels.append(label)
        x = pad_sequence(embeds, batch_first=True)  # [B, T, H]; right padding, causal mask
        y = pad_sequence(labels, batch_first=True, padding_value=IGNORE)  # [B, T]
        logits = llm_forward(x)  # [B, T, V]
        ce = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=IGNORE,
                             reduction="none")  # [B, T], 0 where ignored
        total = total + ce.sum()
        count += int((y != IGNORE).sum())
        per_question = ce.detach().sum(1).tolist()
        for (q, _), loss_q in zip(items[i:i + chunk], per_question, strict=True):
            acc = per_task[f"{q.mode}/{q.task}"]
            acc[0] += loss_q
            acc[1] += len(q.ids) - q.num_prompt
    return LossSum(total, count, dict(per_task))


def compiled_llm_forward(model: PixelReferLite) -> Callable[[Tensor], Tensor]:
    """`model.llm.forward_no_cache` through torch.compile, for `answer_loss`. `dynamic`:
    the batch and sequence lengths change with every chunk, and one graph serves them all."""
    return torch.compile(model.llm.forward_no_cache, dynamic=True)


def check_compiler() -> None:
    """Fail in seconds, not at the focus phase after ~9 minutes, where torch.compile cannot
    build kernels on this machine (inductor's CPU backend needs a C++ compiler)."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
    except Exception as err:  # inductor raises many kinds; all mean the same here
        raise RuntimeError(f"torch.compile cannot build kernels here ({err}); install a C++ "
                           "compiler or pass --no-compile (a ~16 % slower focus phase, and "
                           "not bit for bit the committed model)") from err


# ----------------------------------------------------------------------------- optimisation

def make_optimizer(modules: list[nn.Module], cfg: TrainConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `modules`; only matrices are decayed."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and "embed_tokens" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)


def lr_at(step: int, phase: PhaseConfig, min_lr_ratio: float) -> float:
    """Linear warmup, then cosine from lr to lr * min_lr_ratio at the phase's last step."""
    if step < phase.warmup_steps:
        return phase.lr * (step + 1) / phase.warmup_steps
    progress = (step - phase.warmup_steps) / max(1, phase.steps - phase.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return phase.lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


def descend(optimizer: torch.optim.Optimizer, params: list[Tensor], loss: Tensor, lr: float,
            grad_clip: float) -> float:
    """One optimiser step on `loss` at learning rate `lr`; returns the gradient norm before
    clipping."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(nn.utils.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    return grad_norm


def stop_reason(name: str, step: int, steps: int, deadline: float, cfg: TrainConfig,
                stop_step: int | None = None, log=print) -> str | None:
    """Why a phase ends early after `step` (0-based), logged: `stop_step` reached, or the
    `max_minutes` cap passed before the last step; None to go on."""
    if stop_step is not None and step + 1 >= stop_step:
        log(f"[{name}] stopping at step {step + 1} of {steps} (--{name}-stop-step)")
        return f"{name}_stop_step"
    if time.perf_counter() > deadline and step + 1 < steps:
        log(f"[{name}] stopping at step {step + 1}: the {cfg.max_minutes} minute cap")
        return "max_minutes"
    return None


# ----------------------------------------------------------------------------- batches

def batches(cfg: TrainConfig, name: str, tokenizer: TextTokenizer, raw_json: str,
            tokens_per_region: int) -> Iterator[list[SceneSample]]:
    """make_batch(seed, step) for every step of phase `name`; with `prefetch`, computed two
    steps ahead in a spawned process (bounded: at most two batches in flight)."""
    phase: PhaseConfig = getattr(cfg, name)

    def left_only(step: int) -> bool:
        return name == "answers" and step < cfg.left_only_share * phase.steps

    if not cfg.prefetch:
        for step in range(phase.steps):
            yield make_batch(cfg.seed, step, phase.scenes_per_step, tokenizer, phase=name,
                             left_only=left_only(step), tokens_per_region=tokens_per_region)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(1, initializer=worker_init, initargs=(raw_json,)) as pool:
        def submit(step: int):
            return pool.apply_async(worker_batch, (cfg.seed, step, phase.scenes_per_step, name,
                                                   left_only(step), tokens_per_region))
        pending = collections.deque(submit(step) for step in range(min(2, phase.steps)))
        for step in range(phase.steps):
            batch = pending.popleft().get()
            if step + 2 < phase.steps:
                pending.append(submit(step + 2))
            yield batch


# ----------------------------------------------------------------------------- loop

def run_phase(name: str, model: PixelReferLite, heads: AuxHeads, cfg: TrainConfig,
              tokenizer: TextTokenizer, raw_json: str, deadline: float,
              log=print) -> dict:
    """One phase of `TrainConfig`'s docstring; returns its history and how it ended."""
    phase: PhaseConfig = getattr(cfg, name)
    answers = name == "answers"
    train_vision = name == "crops" or not cfg.freeze_vision
    model.vision.requires_grad_(train_vision)
    if name == "crops":
        crop_heads = CropHeads(model.config.vision.hidden_size, cfg.crop_pool)
        modules: list[nn.Module] = [model.vision, crop_heads]
    else:
        modules = [model.vision, model.objects, heads] + ([model.llm] if answers else [])
    optimizer = make_optimizer(modules, cfg, phase.lr)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start = time.perf_counter()
    history: list[dict] = []
    window: dict[str, list[float]] = collections.defaultdict(list)
    stopped, step = "steps", 0
    k = model.config.objects.tokens_per_object
    for step, samples in enumerate(batches(cfg, name, tokenizer, raw_json, k)):
        lr = lr_at(step, phase, cfg.min_lr_ratio)
        if name == "crops":
            loss_aux, stats = crop_loss(model.vision, crop_heads, samples)
            loss = loss_aux
        else:
            tokens = region_tokens(model, samples, train_vision)
            loss_aux, stats = aux_loss(heads, tokens, samples)
            loss = loss_aux
        if answers:
            losses = answer_loss(model, [s.questions for s in samples], tokens,
                                 tokenizer.region_id, cfg.llm_chunk)
            loss = losses.mean + cfg.aux_weight * loss_aux
            window["answer_loss"].append(float(losses.mean.detach()))
            for key, (value, n) in losses.per_task.items():
                window[f"task:{key}"].append(value / n)
        grad_norm = descend(optimizer, params, loss, lr, cfg.grad_clip)
        window["loss"].append(float(loss.detach()))
        window["aux_loss"].append(float(loss_aux.detach()))
        for key, value in stats.items():
            window[key].append(value)
        if (step + 1) % cfg.log_every == 0 or step + 1 == phase.steps:
            history.append(log_window(name, step, lr, grad_norm, start, window, log))
        if reason := stop_reason(name, step, phase.steps, deadline, cfg, log=log):
            stopped = reason
            break
    return {"steps_done": step + 1, "stopped_by": stopped,
            "wall_time_s": round(time.perf_counter() - start, 1), "history": history}


def log_window(name: str, step: int, lr: float, grad_norm: float, start: float,
               window: dict[str, list[float]], log) -> dict:
    """One history entry: the means of the statistics gathered since the last one (cleared)."""
    entry = {"step": step + 1, "lr": lr, "grad_norm": round(grad_norm, 3),
             "elapsed_s": round(time.perf_counter() - start, 1)}
    entry |= {k: round(float(np.mean(v)), 4) for k, v in sorted(window.items())}
    log(f"[{name}] " + "  ".join(f"{k} {v}" for k, v in entry.items()))
    window.clear()
    return entry


def token_bank(model: PixelReferLite, cfg: TrainConfig,
               tokenizer: TextTokenizer) -> list[tuple[Scene, Tensor]]:
    """(scene without pixels, object tokens [O*T, K, H], object-major then frame) of
    `cfg.focus_bank` training scenes, every object at every frame, without gradients."""
    rng = np.random.default_rng([cfg.seed, PHASES.index("focus")])
    bank = []
    with torch.no_grad():
        for scene_seed in rng.integers(0, HELD_OUT_SEED, cfg.focus_bank):
            scene = generate_scene(int(scene_seed), WORLD)
            sample = preprocess_scene(scene, range(scene.num_frames), [], tokenizer, PREPROCESS,
                                      model.config.objects.tokens_per_object)
            bank.append((without_pixels(scene), region_tokens(model, [sample], False)[0]))
    return bank


def focus_p_right(step: int, cfg: TrainConfig) -> float:
    """Share of "right of" relations at focus step `step`: 0, then a linear ramp to 0.5.

    Measured: switching from "left of" only to a 50/50 mix at once put the relation loss
    back at chance within 25 steps (the mix is an XOR of the comparison and the question
    word; averaged over both words the comparison's gradient vanishes). A slow ramp keeps
    "left of" the majority while the LLM learns to read the word.
    """
    start = cfg.focus_left_only_share * cfg.focus.steps
    end = max(cfg.focus_ramp_share * cfg.focus.steps, start + 1)
    return 0.5 * min(max((step - start) / (end - start), 0.0), 1.0)


def focus_p_middle(step: int, cfg: TrainConfig) -> float:
    """Chance of each middle frame joining a focus clip at `step` (`focus_clip_middle`).

    Short clips (first and last frame) are the cheapest prompts and put the two blocks whose
    comparison motion needs side by side; the clips then lengthen towards the evaluation's.
    """
    first, last = cfg.focus_clip_middle
    return first + (last - first) * step / max(1, cfg.focus.steps - 1)


def focus_batch(bank: list[tuple[Scene, Tensor]], step: int, cfg: TrainConfig,
                tokenizer: TextTokenizer,
                tokens_per_region: int) -> tuple[list[list[EncodedQuestion]], list[Tensor]]:
    """Focus step `step`'s questions and cached tokens, per scene: `scenes_per_step` scenes
    drawn from `bank`, each played backwards with chance `focus_reverse_share`; a function
    of (seed, step) like `make_batch`."""
    rng = np.random.default_rng([cfg.seed, PHASES.index("focus"), step])
    p_right, p_middle = focus_p_right(step, cfg), focus_p_middle(step, cfg)
    questions, tokens = [], []
    for i in rng.integers(len(bank), size=cfg.focus.scenes_per_step):
        scene, scene_tokens = bank[i]
        reverse = bool(rng.random() < cfg.focus_reverse_share)
        region_of = region_index(scene.num_objects, range(scene.num_frames), reverse)
        if reverse:
            scene = reversed_in_time(scene)
        questions.append([encode_question(tokenizer, q, scene, region_of, tokens_per_region)
                          for q in focus_questions(scene, rng, p_right, p_middle)])
        tokens.append(scene_tokens)
    return questions, tokens


def run_focus(model: PixelReferLite, cfg: TrainConfig, tokenizer: TextTokenizer,
              deadline: float, log=print) -> dict:
    """Phase 3 of `TrainConfig`: the LLM alone on `token_bank` tokens and `focus_questions`."""
    phase = cfg.focus
    start = time.perf_counter()
    model.requires_grad_(False)
    model.llm.requires_grad_(True)
    bank = token_bank(model, cfg, tokenizer)
    bank_s = round(time.perf_counter() - start, 1)
    log(f"[focus] object tokens of {len(bank)} scenes cached in {bank_s} s")
    optimizer = make_optimizer([model.llm], cfg, phase.lr)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    llm_forward = compiled_llm_forward(model) if cfg.compile_focus else None
    k = model.config.objects.tokens_per_object
    history: list[dict] = []
    window: dict[str, list[float]] = collections.defaultdict(list)
    stopped, step = "steps", 0
    for step in range(phase.steps):
        lr = lr_at(step, phase, cfg.min_lr_ratio)
        questions, tokens = focus_batch(bank, step, cfg, tokenizer, k)
        losses = answer_loss(model, questions, tokens, tokenizer.region_id, cfg.llm_chunk,
                             llm_forward)
        grad_norm = descend(optimizer, params, losses.mean, lr, cfg.grad_clip)
        window["answer_loss"].append(float(losses.mean.detach()))
        for key, (value, n) in losses.per_task.items():
            window[f"task:{key}"].append(value / n)
        reason = stop_reason("focus", step, phase.steps, deadline, cfg, cfg.focus_stop_step,
                             log)
        if (step + 1) % cfg.log_every == 0 or step + 1 == phase.steps or reason:
            history.append(log_window("focus", step, lr, grad_norm, start, window, log))
        if reason:
            stopped = reason
            break
    return {"steps_done": step + 1, "stopped_by": stopped, "bank_time_s": bank_s,
            "wall_time_s": round(time.perf_counter() - start, 1), "history": history}


def train(cfg: TrainConfig, out_dir: str | Path | None = None, log=print,
          init_from: str | Path | None = None,
          pre_focus_out: str | Path | None = None) -> tuple[PixelReferLite, dict]:
    """Every phase, or with `init_from` (a checkpoint of this tokenizer) only the focus phase
    on top of it; write the checkpoint + training_report.json when out_dir is set, and the
    model as it enters the focus phase when pre_focus_out is set (an `init_from` for focus
    experiments)."""
    torch.set_num_threads(cfg.threads)
    if cfg.compile_focus:
        check_compiler()
    raw_tokenizer = build_tokenizer()
    tokenizer = TextTokenizer(raw_tokenizer)
    if init_from is None:
        model = build_model(cfg.shape, tokenizer, cfg.seed)
        names = ("crops", "vision", "answers", "focus")
    else:
        model = load_checkpoint(init_from, dtype="float32").model
        if model.config.llm.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"{init_from} has a vocabulary of {model.config.llm.vocab_size}, "
                             f"the training tokenizer {tokenizer.vocab_size}")
        names = ("focus",)
    heads = AuxHeads(model.config.llm.hidden_size, cfg.aux_pool)
    model.train()
    num_params = sum(p.numel() for p in model.parameters())
    log(f"model: {num_params:,} parameters; vocab {tokenizer.vocab_size}"
        "; phases (steps x scenes): " + ", ".join(
            f"{n} {getattr(cfg, n).steps} x {getattr(cfg, n).scenes_per_step}" for n in names))
    start = time.perf_counter()
    deadline = start + cfg.max_minutes * 60
    phases = {name: run_phase(name, model, heads, cfg, tokenizer, raw_tokenizer.to_str(),
                              deadline, log)
              for name in names if name != "focus"}
    if pre_focus_out is not None:
        save_checkpoint(model, raw_tokenizer, pre_focus_out)
    phases["focus"] = run_focus(model, cfg, tokenizer, deadline, log)
    model.requires_grad_(True)
    model.eval()
    last = phases["focus"]["history"][-1] if phases["focus"]["history"] else {}
    report = {
        "train_config": asdict(cfg),
        "init_from": None if init_from is None else str(init_from),
        "seed": cfg.seed,
        "phases": phases,
        "stopped_by": "max_minutes" if any(p["stopped_by"] == "max_minutes"
                                           for p in phases.values()) else "steps",
        "wall_time_s": round(time.perf_counter() - start, 1),
        "final_answer_loss": last.get("answer_loss", float("nan")),
        "num_parameters": num_params,
        "vocab_size": tokenizer.vocab_size,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads": cfg.threads,
    }
    if out_dir is not None:
        save_checkpoint(model, raw_tokenizer, out_dir)
        (Path(out_dir) / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return model, report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    d = TrainConfig()
    for name in ("crops", "vision", "answers", "focus"):
        phase: PhaseConfig = getattr(d, name)
        p.add_argument(f"--{name}-steps", type=int, default=phase.steps,
                       help=f"optimizer steps of the {name} phase (its schedule spans them)")
        p.add_argument(f"--{name}-scenes", type=int, default=phase.scenes_per_step)
        p.add_argument(f"--{name}-lr", type=float, default=phase.lr)
    p.add_argument("--crop-pool", choices=POOLS, default=d.crop_pool,
                   help="how the crops phase's shape/colour head pools a crop's cells")
    p.add_argument("--aux-pool", choices=POOLS, default=d.aux_pool,
                   help="how the vision and answers phases' auxiliary heads pool a region's "
                        "object tokens")
    p.add_argument("--aux-weight", type=float, default=d.aux_weight)
    p.add_argument("--left-only-share", type=float, default=d.left_only_share,
                   help="share of the answers phase that asks only 'left of' relations")
    p.add_argument("--focus-bank", type=int, default=d.focus_bank,
                   help="training scenes whose object tokens the focus phase caches")
    p.add_argument("--focus-reverse-share", type=float, default=d.focus_reverse_share,
                   help="share of focus scenes asked played backwards")
    p.add_argument("--focus-left-only-share", type=float, default=d.focus_left_only_share)
    p.add_argument("--focus-ramp-share", type=float, default=d.focus_ramp_share)
    p.add_argument("--focus-clip-middle", type=float, nargs=2, metavar=("FIRST", "LAST"),
                   default=d.focus_clip_middle,
                   help="chance of each middle frame joining a focus clip, at the first and "
                        "the last focus step (linear between)")
    p.add_argument("--focus-stop-step", type=int, metavar="N",
                   help="end the focus phase after step N, keeping its schedule")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="run only the focus phase, on top of this checkpoint")
    p.add_argument("--pre-focus-out", metavar="DIR",
                   help="also write the checkpoint as it enters the focus phase")
    p.add_argument("--train-vision", action="store_true",
                   help="keep training the ViT after the crops phase")
    p.add_argument("--minutes", type=float, default=d.max_minutes,
                   help="safety cap on wall time; a capped run is reported as such")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--prefetch", action="store_true",
                   help="build batches two steps ahead in a second process (slower on 2 cores)")
    p.add_argument("--no-compile", action="store_true",
                   help="run the focus phase's LLM eagerly (no C++ compiler needed; slower)")
    args = p.parse_args(argv)

    def phase_args(name: str) -> PhaseConfig:
        steps = getattr(args, f"{name}_steps")
        default: PhaseConfig = getattr(d, name)
        return PhaseConfig(steps=steps, scenes_per_step=getattr(args, f"{name}_scenes"),
                           lr=getattr(args, f"{name}_lr"),
                           warmup_steps=min(default.warmup_steps, max(1, steps // 10)))

    cfg = TrainConfig(seed=args.seed, crops=phase_args("crops"), vision=phase_args("vision"),
                      answers=phase_args("answers"), focus=phase_args("focus"),
                      crop_pool=args.crop_pool, aux_pool=args.aux_pool, focus_bank=args.focus_bank,
                      focus_reverse_share=args.focus_reverse_share,
                      focus_left_only_share=args.focus_left_only_share,
                      focus_ramp_share=args.focus_ramp_share,
                      focus_clip_middle=tuple(args.focus_clip_middle),
                      focus_stop_step=args.focus_stop_step,
                      aux_weight=args.aux_weight, left_only_share=args.left_only_share,
                      freeze_vision=not args.train_vision, max_minutes=args.minutes,
                      threads=args.threads, prefetch=args.prefetch,
                      compile_focus=not args.no_compile)
    _, report = train(cfg, args.out, init_from=args.init_from, pre_focus_out=args.pre_focus_out)
    print(json.dumps({k: report[k] for k in ("wall_time_s", "final_answer_loss",
                                             "num_parameters", "stopped_by")}))


if __name__ == "__main__":
    main()
