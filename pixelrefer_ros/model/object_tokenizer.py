"""SAOT feature side + OCI + projection: per-object ViT features -> K tokens of LLM width.

Pipeline per object (spec §1.5-1.6), each stage a separate callable so it can be tested alone:
  1. `gather_object_cells`: add the coordinate embedding to the crop features, align them to the
     mask grid, keep the cells under the mask (N of them, raster order).
  2. `kmeans` / `pool_object`: reduce N cells to K = 32 tokens (pass-through + zero pad if N <= K).
  3. `infuse`: Object-Centric Infusion, two pre-LN cross-attentions (local 224 crop, then the
     whole 336 frame) with residuals.
  4. `project`: `feat_linear` MLP to the LLM width.

Parameter names equal the official keys minus `model.region_encoder.` (the unused
`mask_embedding` is not created).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ObjectTokenizerConfig

Box = tuple[int, int, int, int]  # (top, left, bottom_incl, right_incl) in original pixels


# ----------------------------------------------------------------------------- coordinates

def position_grid(hc: int, wc: int, box: Sequence[int], orig_hw: Sequence[int]) -> torch.Tensor:
    """Normalised coordinates [hc, wc, 2] of the crop cells, with the official axis swap.

    ch0[r, c] = (c / wc * (bottom - top) + top) / (w - 1)   vertical extent, divided by width
    ch1[r, c] = (r / hc * (right - left) + left) / (h - 1)   horizontal extent, divided by height
    The weights were trained with this swap, so it is kept. Cells use their top-left corner.
    """
    top, left, bottom, right = (int(v) for v in box)
    h, w = (int(v) for v in orig_hw)
    cols = torch.arange(wc, dtype=torch.float32) / wc
    rows = torch.arange(hc, dtype=torch.float32) / hc
    ch0 = ((cols * (bottom - top) + top) / (w - 1)).expand(hc, wc)
    ch1 = ((rows * (right - left) + left) / (h - 1))[:, None].expand(hc, wc)
    return torch.stack([ch0, ch1], dim=-1)


# ----------------------------------------------------------------------------- k-means

def _sq_dists(tokens: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Squared L2 [N, K] as sum((t - c)^2) (not the |t|^2 - 2tc + |c|^2 expansion, which rounds
    differently and can flip near-ties). One centroid at a time keeps memory at [N, C]."""
    return torch.stack([((tokens - c) ** 2).sum(-1) for c in centroids], dim=1)


def kmeans(tokens: torch.Tensor, k: int, iterations: int, init: str = "deterministic",
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Cluster tokens [N, C] into k centroids [k, C]; N <= k returns the tokens unchanged.

    init 'deterministic': centroid i starts at tokens[floor(i*N/k)] (what the fixtures used);
    'random': tokens[randperm(N)[:k]] like the official code. Assignment is argmin of squared L2
    (first index on ties); a centroid becomes the mean of its members, an empty one stays put.
    """
    n = tokens.shape[0]
    if n <= k:
        return tokens
    if init == "deterministic":
        start = (torch.arange(k) * n) // k
    elif init == "random":
        start = torch.randperm(n, generator=generator)[:k]
    else:
        raise ValueError(f"kmeans init {init!r}; choose 'deterministic' or 'random'")
    centroids = tokens[start.to(tokens.device)]
    for _ in range(iterations):
        labels = _sq_dists(tokens, centroids).argmin(dim=1)  # [N]
        sums = torch.zeros_like(centroids).index_add_(0, labels, tokens)  # [k, C]
        counts = torch.bincount(labels, minlength=k).to(tokens.dtype)[:, None]  # [k, 1]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def kmeans_static(cells: torch.Tensor, valid: torch.Tensor, k: int,
                  iterations: int) -> torch.Tensor:
    """`pool`-equivalent k-means with static shapes (for ONNX): cells [G, C], valid [G] -> [k, C].

    Same result as `kmeans(cells[valid], ...)` with deterministic init, built from one-hot
    matmuls; when N = valid.sum() <= k it returns the valid rows in order, then zero rows.
    """
    dtype = cells.dtype
    valid = valid.reshape(-1).bool()
    n = valid.sum()
    rank = torch.cumsum(valid.long(), dim=0) - 1  # [G]: index of each valid cell among valid ones
    slots = torch.arange(k, device=cells.device)  # [k]

    def pick(targets: torch.Tensor) -> torch.Tensor:
        """Rows of the valid cells whose rank equals targets [k]; zero rows where none does."""
        onehot = (rank[None, :] == targets[:, None]) & valid[None, :]  # [k, G]
        return onehot.to(dtype) @ cells  # [k, C]

    centroids = pick((slots * n) // k)
    vmask = valid.to(dtype)[:, None]  # [G, 1]
    for _ in range(iterations):
        labels = _sq_dists(cells, centroids).argmin(dim=1)  # [G]
        member = F.one_hot(labels, k).to(dtype) * vmask  # [G, k], invalid cells belong nowhere
        counts = member.sum(dim=0)[:, None]  # [k, 1]
        sums = member.t() @ cells  # [k, C]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return torch.where(n > k, centroids, pick(slots))


# ----------------------------------------------------------------------------- module

class ObjectTokenizer(nn.Module):
    """Official `MaskExtractor` weights; see the module docstring for the stages."""

    def __init__(self, cfg: ObjectTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        c, h = cfg.vision_width, cfg.llm_width
        self.pos_linear = nn.Linear(2, c)
        self.fusion_attention_local = nn.MultiheadAttention(c, cfg.oci_heads, batch_first=True)
        self.fusion_attention_global = nn.MultiheadAttention(c, cfg.oci_heads, batch_first=True)
        self.ln_local = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.ln_global = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.feat_linear = nn.Sequential(nn.Linear(c, h), nn.GELU(), nn.Linear(h, h))

    # --- SAOT
    def gather_object_cells(self, crop_feats: torch.Tensor, mask_grid: torch.Tensor,
                            box: Sequence[int], orig_hw: Sequence[int]) -> torch.Tensor:
        """crop_feats [hc, wc, C] + coordinate embedding, resized to the mask grid [gh, gw] if the
        processor shrank the crop, then the cells with mask_grid > 0 in raster order -> [N, C]."""
        hc, wc, _ = crop_feats.shape
        pos = position_grid(hc, wc, box, orig_hw).to(crop_feats)  # [hc, wc, 2]
        feats = crop_feats + self.pos_linear(pos)  # embedding added before any resize
        gh, gw = mask_grid.shape
        if (hc, wc) != (gh, gw):
            chw = feats.permute(2, 0, 1)[None]  # [1, C, hc, wc]
            chw = F.interpolate(chw, size=(gh, gw), mode="bilinear", align_corners=False)
            feats = chw[0].permute(1, 2, 0)  # [gh, gw, C]
        return feats[mask_grid.to(feats.device) > 0]  # [N, C]

    def pool_object(self, crop_feats: torch.Tensor, mask_grid: torch.Tensor, box: Sequence[int],
                    orig_hw: Sequence[int], generator: torch.Generator | None = None
                    ) -> torch.Tensor:
        """One object's K query tokens [K, C]: gather, k-means if N > K, zero-pad to K."""
        cells = self.gather_object_cells(crop_feats, mask_grid, box, orig_hw)  # [N, C]
        k = self.cfg.tokens_per_object
        pooled = kmeans(cells, k, self.cfg.kmeans_iterations, self.cfg.kmeans_init, generator)
        return F.pad(pooled, (0, 0, 0, k - pooled.shape[0]))  # [K, C]

    # --- OCI
    @staticmethod
    def _cross(q: torch.Tensor, kv: torch.Tensor, ln: nn.LayerNorm,
               mha: nn.MultiheadAttention) -> torch.Tensor:
        """q + MHA(LN(q), kv, kv): pre-LN cross-attention, no FFN, no key padding mask.

        need_weights=True (the official call's default) takes the explicit-softmax path, which
        matches the official fp32 output bit for bit; the SDPA path differs by ~2e-6.
        """
        return q + mha(ln(q), kv, kv, need_weights=True)[0]

    def infuse_local(self, queries: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """queries [O, K, C] attend to their local-224 features [O, Pl, C] (raw, no LN/pos)."""
        return self._cross(queries, local, self.ln_local, self.fusion_attention_local)

    def infuse_global(self, queries: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """queries [O, K, C] attend to their whole-frame features [O, Pg, C]."""
        return self._cross(queries, global_, self.ln_global, self.fusion_attention_global)

    def infuse(self, queries: torch.Tensor, local: torch.Tensor,
               global_: torch.Tensor) -> torch.Tensor:
        """Object-Centric Infusion: local then global; zero-padded query rows attend too."""
        return self.infuse_global(self.infuse_local(queries, local), global_)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """[O, K, C] -> [O*K, H] object tokens in prompt order."""
        return self.feat_linear(x.reshape(-1, x.shape[-1]))

    def forward(self, crop_feats: Sequence[torch.Tensor], mask_grids: Sequence[torch.Tensor],
                boxes: Sequence[Box], orig_hws: Sequence[tuple[int, int]],
                local_feats: Sequence[torch.Tensor], global_feats: Sequence[torch.Tensor],
                generator: torch.Generator | None = None) -> torch.Tensor:
        """All O objects of one request -> [O*K, H]. local/global feats: [gh, gw, C] each."""
        queries = torch.stack([
            self.pool_object(f, m, b, hw, generator)
            for f, m, b, hw in zip(crop_feats, mask_grids, boxes, orig_hws, strict=True)])
        local = torch.stack([f.reshape(-1, f.shape[-1]) for f in local_feats])  # [O, Pl, C]
        global_ = torch.stack([f.reshape(-1, f.shape[-1]) for f in global_feats])  # [O, Pg, C]
        return self.project(self.infuse(queries, local, global_))
