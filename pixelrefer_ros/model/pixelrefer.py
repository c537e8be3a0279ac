"""PixelRefer-Lite as three stage modules: ViT, object tokenizer (SAOT + OCI + MLP), Qwen2.

The module tree mirrors the official checkpoint (see loader.PREFIX_MAP), and each stage is a
method that can be called alone. Host-side preprocessing (numpy/cv2) stays in preprocess.py.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pixelrefer_ros.model.config import PixelReferConfig
from pixelrefer_ros.model.llm import Qwen2
from pixelrefer_ros.model.object_tokenizer import ObjectTokenizer
from pixelrefer_ros.model.vision import VisionEncoder


class PixelReferLite(nn.Module):
    def __init__(self, config: PixelReferConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config.vision)
        self.objects = ObjectTokenizer(config.objects)
        self.llm = Qwen2(config.llm)

    def tie_weights(self) -> None:
        self.llm.tie_weights()

    def materialize_buffers(self, device: str | torch.device) -> None:
        """Recreate buffers that a meta-device build left without storage (none are persistent)."""
        for module in self.modules():
            reset = getattr(module, "reset_buffers", None)
            if callable(reset):
                reset(device)

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.llm.embed_tokens.weight.device

    def encode(self, pixel_values: Tensor, grids: list[tuple[int, int]]) -> list[Tensor]:
        """One packed ViT call: pixel_values [sum P, 588] -> per image features [gh, gw, C]."""
        feats = self.vision(pixel_values.to(self.device, self.dtype), grids)  # [sum P, C]
        out, start = [], 0
        for gh, gw in grids:
            out.append(feats[start:start + gh * gw].view(gh, gw, -1))
            start += gh * gw
        return out
