"""Train the built-in shapes model from scratch on CPU and write it in the official HF layout.

    python -m pixelrefer_ros.training.train --out models/shapes --seed 0

The forward is the node's incremental path written differentiably with the model's own modules:
ViT on each scene's packed images (per frame the 336² global image, per (object, frame) its crop
and its own 224 local crop), `pool_object` (k-means: the assignments are not differentiable, the
centroids are means, so gradients reach the cells), `infuse`, `project`, `splice_regions` into
`llm.embed(ids)`, and `llm.forward_no_cache`. Cross-entropy covers the answer tokens and the
closing `<|im_end|>` only.

A run is a fixed number of steps with a fixed learning-rate schedule, so it is a function of the
seed; `--minutes` is only a safety cap (the report says when it cut the run short). Batches are
built one step ahead in a second process (numpy/cv2 work overlaps the torch step).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing as mp
import platform
import time
from collections.abc import Iterator
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
from pixelrefer_ros.model.pixelrefer import PixelReferLite
from pixelrefer_ros.model.tokenizer import TextTokenizer
from pixelrefer_ros.model.vision import VisionAttention, VisionEncoder, rope_angles
from pixelrefer_ros.model.vision import apply_rope as apply_vision_rope
from pixelrefer_ros.training.data import (
    SceneSample,
    build_tokenizer,
    make_batch,
    worker_batch,
    worker_init,
)

IGNORE = -100  # label of positions without a loss


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

    def config(self, vocab_size: int) -> PixelReferConfig:
        return PixelReferConfig(
            vision=VisionConfig(hidden_size=self.vision_hidden,
                                intermediate_size=self.vision_intermediate,
                                num_hidden_layers=self.vision_layers,
                                num_attention_heads=self.vision_heads),
            objects=ObjectTokenizerConfig(vision_width=self.vision_hidden,
                                          llm_width=self.llm_hidden),
            llm=LLMConfig(vocab_size=vocab_size, hidden_size=self.llm_hidden,
                          intermediate_size=self.llm_intermediate,
                          num_hidden_layers=self.llm_layers,
                          num_attention_heads=self.llm_heads,
                          num_key_value_heads=self.llm_kv_heads,
                          max_position_embeddings=self.max_position_embeddings,
                          tie_word_embeddings=True),
            torch_dtype="float32", model_id="pixelrefer-lite-shapes")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 1500
    scenes_per_step: int = 2  # each scene brings ~10-50 questions that share its vision work
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 60
    weight_decay: float = 0.05  # matrices only; norms, biases and embeddings are not decayed
    grad_clip: float = 1.0
    llm_chunk: int = 16  # sequences per padded LLM call (sorted by length, little padding)
    log_every: int = 25
    threads: int = 2
    max_minutes: float = 30.0  # safety cap only; the schedule is defined by `steps`
    prefetch: bool = True
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
    config = shape.config(tokenizer.vocab_size)
    model = PixelReferLite(config)
    init_weights(model)
    model.tie_weights()
    return model


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


def region_tokens(model: PixelReferLite, samples: list[SceneSample]) -> list[Tensor]:
    """Object tokens of every region of every scene: one [R_s, K, H] tensor per scene.

    One ViT call over all images of the batch (attention stays within each image), then per
    region `pool_object` on its crop, and one batched `infuse` + `project` for all regions.
    """
    obj = model.objects
    pixel_values = torch.from_numpy(np.concatenate([s.pixel_values for s in samples]))
    grids = [g for s in samples for g in s.grids]
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


def answer_loss(model: PixelReferLite, samples: list[SceneSample], tokens: list[Tensor],
                region_id: int, chunk: int) -> LossSum:
    """Cross-entropy of every question of the batch; LLM calls on length-sorted chunks."""
    items = [(q, tok) for s, tok in zip(samples, tokens, strict=True) for q in s.questions]
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
        logits = model.llm.forward_no_cache(x)  # [B, T, V]
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


# ----------------------------------------------------------------------------- optimisation

def make_optimizer(model: PixelReferLite, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed_tokens" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine from lr to lr * min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


# ----------------------------------------------------------------------------- batches

def batches(cfg: TrainConfig, tokenizer: TextTokenizer, raw_json: str) -> Iterator[list]:
    """make_batch(seed, step) for every step; with `prefetch`, computed one step ahead in a
    spawned process (the pool is bounded to two batches in flight: they are ~60 MB each)."""
    if not cfg.prefetch:
        for step in range(cfg.steps):
            yield make_batch(cfg.seed, step, cfg.scenes_per_step, tokenizer)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(1, initializer=worker_init, initargs=(raw_json,)) as pool:
        pending = collections.deque()
        for step in range(min(2, cfg.steps)):
            pending.append(pool.apply_async(worker_batch,
                                            (cfg.seed, step, cfg.scenes_per_step)))
        for step in range(cfg.steps):
            batch = pending.popleft().get()
            if step + 2 < cfg.steps:
                pending.append(pool.apply_async(worker_batch,
                                                (cfg.seed, step + 2, cfg.scenes_per_step)))
            yield batch


# ----------------------------------------------------------------------------- loop

def train(cfg: TrainConfig, out_dir: str | Path | None = None,
          log=print) -> tuple[PixelReferLite, dict]:
    """Run `cfg.steps` steps; write the checkpoint + training_report.json when out_dir is set."""
    torch.set_num_threads(cfg.threads)
    raw_tokenizer = build_tokenizer()
    tokenizer = TextTokenizer(raw_tokenizer)
    model = build_model(cfg.shape, tokenizer, cfg.seed)
    model.train()
    region_id = tokenizer.region_id
    optimizer = make_optimizer(model, cfg)
    num_params = sum(p.numel() for p in model.parameters())
    log(f"model: {num_params:,} parameters; vocab {tokenizer.vocab_size}; "
        f"{cfg.steps} steps x {cfg.scenes_per_step} scenes")

    start = time.perf_counter()
    history: list[dict] = []
    window: list[float] = []
    task_window: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    step = 0
    stopped = "steps"
    for step, samples in enumerate(batches(cfg, tokenizer, raw_tokenizer.to_str())):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens = region_tokens(model, samples)
        losses = answer_loss(model, samples, tokens, region_id, cfg.llm_chunk)
        loss = losses.mean
        for key, (value, n) in losses.per_task.items():
            task_window[key][0] += value
            task_window[key][1] += n
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        optimizer.step()
        window.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - start
            per_task = {k: round(v / n, 4) for k, (v, n) in sorted(task_window.items())}
            entry = {"step": step + 1, "loss": float(np.mean(window)), "lr": lr,
                     "grad_norm": grad_norm, "elapsed_s": round(elapsed, 1),
                     "task_loss": per_task}
            history.append(entry)
            log(f"step {step + 1:5d}  loss {entry['loss']:.4f}  lr {lr:.2e}  "
                f"|g| {grad_norm:.2f}  {elapsed / 60:.1f} min  "
                + " ".join(f"{k}={v:.3f}" for k, v in per_task.items()))
            window = []
            task_window.clear()
        if time.perf_counter() - start > cfg.max_minutes * 60 and step + 1 < cfg.steps:
            stopped = "max_minutes"
            log(f"stopping at step {step + 1}: the {cfg.max_minutes} minute cap was reached")
            break
    wall = time.perf_counter() - start
    model.eval()
    report = {
        "train_config": asdict(cfg),
        "seed": cfg.seed,
        "steps_done": step + 1,
        "stopped_by": stopped,
        "wall_time_s": round(wall, 1),
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "num_parameters": num_params,
        "vocab_size": tokenizer.vocab_size,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads": cfg.threads,
        "history": history,
    }
    if out_dir is not None:
        save_checkpoint(model, raw_tokenizer, out_dir)
        (Path(out_dir) / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return model, report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--steps", type=int, default=TrainConfig.steps,
                   help="optimizer steps (the schedule spans exactly these)")
    p.add_argument("--minutes", type=float, default=TrainConfig.max_minutes,
                   help="safety cap on wall time; a capped run is reported as such")
    p.add_argument("--scenes-per-step", type=int, default=TrainConfig.scenes_per_step)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    p.add_argument("--no-prefetch", action="store_true", help="build batches in this process")
    args = p.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, steps=args.steps, max_minutes=args.minutes,
                      scenes_per_step=args.scenes_per_step, lr=args.lr, threads=args.threads,
                      prefetch=not args.no_prefetch,
                      warmup_steps=min(TrainConfig.warmup_steps, max(1, args.steps // 10)))
    _, report = train(cfg, args.out)
    print(json.dumps({k: report[k] for k in ("steps_done", "wall_time_s", "final_loss",
                                             "num_parameters", "stopped_by")}))


if __name__ == "__main__":
    main()
