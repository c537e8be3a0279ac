"""The stage API: preprocess -> encode -> object tokens -> prompt -> generate, and `describe`.

Host work (preprocessing, prompts, splicing) happens here; every model call goes through a
`StageBackend` (runtime/stages.py): torch by default, onnxruntime or TensorRT engines otherwise.

Two ways in:
- `describe(...)` reproduces one official `mm_infer` call (image or video): all M masks share
  one processor budget and, per image, the first mask's 224 context crop (spec §1.2 quirk).
- The incremental path used by the ROS node: `global_features` once per frame,
  `object_tokens` once per (object, frame), then `answer` costs only the LLM.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from pixelrefer_ros.model import prompt as prompts
from pixelrefer_ros.model.loader import LoadedModel
from pixelrefer_ros.model.preprocess import RegionCrop, global_image, patchify, prepare_regions

if TYPE_CHECKING:
    from pixelrefer_ros.runtime.stages import StageBackend


@dataclass
class Answer:
    """What one question produced, with the token counts and stage times the node reports."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    stopped: str  # "eos" | "max_new_tokens" | "deadline"
    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt: str = field(default="", repr=False)


class RegionPipeline:
    """Runs a loaded PixelRefer-Lite model stage by stage. Not thread-safe: one caller at a time."""

    def __init__(self, loaded: LoadedModel, backend: StageBackend | None = None) -> None:
        # runtime imports are local (here and below): runtime/ sits above model/ and its
        # package imports the worker, so a module-level import could become circular
        from pixelrefer_ros.runtime.stages import TorchBackend

        self.loaded = loaded
        self.model = loaded.model  # None when only config + tokenizer were loaded
        self.backend = backend if backend is not None else TorchBackend(loaded.model)
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        self.tokens_per_object = self.config.objects.tokens_per_object

    # ---- vision stages ---------------------------------------------------------------------

    @torch.inference_mode()
    def encode_images(self, images: Sequence[np.ndarray], num_images: int | None = None
                      ) -> list[Tensor]:
        """Images of one processor call (sharing its patch budget) -> features [gh, gw, C] each."""
        n = num_images or len(images)
        patches = [patchify(img, n, self.config.preprocess) for img in images]
        pixel_values = torch.from_numpy(np.concatenate([pv for pv, _ in patches]))
        grids = [grid for _, grid in patches]
        feats = self.backend.encode(pixel_values, grids)  # [sum P, C]
        parts = feats.split([gh * gw for gh, gw in grids])
        return [f.view(gh, gw, -1) for f, (gh, gw) in zip(parts, grids, strict=True)]

    def global_features(self, image: np.ndarray, num_images: int = 1) -> Tensor:
        """The frame squashed to 336² (spec §1.2 step 5) -> [Pg, C]. Computed once per frame."""
        squashed = global_image(image, self.config.preprocess)
        return self.encode_images([squashed], num_images)[0].flatten(0, 1)

    @torch.inference_mode()
    def region_crops_tokens(self, regions: Sequence[RegionCrop],
                            global_feats: Sequence[Tensor] | None = None,
                            num_images: int | None = None) -> Tensor:
        """SAOT + OCI + MLP for prepared regions -> [M*K, H] (rows ready to splice).

        global_feats, when given, replaces the 336² encode (the node passes its per-frame cache).
        """
        n = num_images or len(regions)
        crops = self.encode_images([r.crop for r in regions], n)
        locals_ = self.encode_images([r.local for r in regions], n)
        if global_feats is None:
            raw = self.encode_images([r.raw_global for r in regions], n)
            globals_ = [g.flatten(0, 1) for g in raw]
        else:
            globals_ = list(global_feats)
        from pixelrefer_ros.runtime.stages import CropFeatures

        objects = [CropFeatures(feats, torch.from_numpy(r.mask_grid), r.box, r.orig_hw)
                   for feats, r in zip(crops, regions, strict=True)]
        local = torch.stack([f.flatten(0, 1) for f in locals_])  # [M, Pl, C]
        global_ = torch.stack([g.to(local.device) for g in globals_])  # [M, Pg, C]
        return self.backend.object_tokens(objects, local, global_)  # [M*K, H]

    def object_tokens(self, image: np.ndarray, mask: np.ndarray,
                      global_feats: Tensor | None = None, num_images: int = 1) -> Tensor:
        """One (object, frame): image RGB uint8 [H, W, 3], mask 0/1 [H, W] -> tokens [K, H]."""
        region = prepare_regions([image], [mask], [0], self.config.preprocess)[0]
        feats = None if global_feats is None else [global_feats]
        return self.region_crops_tokens([region], feats, num_images)

    # ---- text stages -----------------------------------------------------------------------

    def build_prompt(self, question: str, num_objects: int,
                     timestamps_per_object: Sequence[Sequence[float]] | None = None) -> str:
        """The chat string with `<REGION>` blocks of `mask_num` tokens; video format when
        timestamps are given."""
        prompts.check_region_count(question, num_objects)
        if timestamps_per_object is None:
            return prompts.image_prompt(question, num_objects, self.tokens_per_object)
        return prompts.video_prompt(question, timestamps_per_object, self.tokens_per_object)

    @torch.inference_mode()
    def answer(self, question: str, object_tokens: Sequence[Tensor],
               timestamps_per_object: Sequence[Sequence[float]] | None = None,
               max_new_tokens: int = 64, deadline: float | None = None) -> Answer:
        """LLM only: one [F_o*K, H] token block per object (frame order) -> Answer.

        Image mode (timestamps None) expects exactly K rows per object.
        """
        text = self.build_prompt(question, len(object_tokens), timestamps_per_object)
        from pixelrefer_ros.runtime.stages import generate

        backend = self.backend
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long, device=backend.device)
        feats = torch.cat(list(object_tokens)).to(backend.device, backend.dtype)
        embeds = prompts.splice_regions(backend.embed(ids), ids, self.config.region_token_id,
                                        feats)
        result = generate(backend, embeds, max_new_tokens, self.config.eos_token_id,
                          deadline=deadline)
        return Answer(text=self.tokenizer.decode(result.token_ids).strip(),
                      token_ids=result.token_ids, prompt_tokens=int(ids.numel()),
                      stopped=result.stopped, prefill_s=result.prefill_s,
                      decode_s=result.decode_s, prompt=text)

    # ---- one official call -----------------------------------------------------------------

    def describe(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                 mask_ids: Sequence[int], question: str | None = None, modal: str = "image",
                 timestamps: Sequence[float] | None = None,
                 mask_ids_raw: Sequence[Sequence[int]] | None = None,
                 max_new_tokens: int = 64, share_first_local: bool = True) -> Answer:
        """The equivalent of official `mm_infer` (images RGB uint8, masks 0/1 uint8).

        Image: mask i lies on images[mask_ids[i]], and mask i answers the i-th `<region>`.
        Video: masks are object-major then frame order; mask_ids_raw[k] lists object k's frames;
        timestamps[f] is frame f's time in seconds.
        """
        if modal not in ("image", "video"):
            raise ValueError(f"modal must be 'image' or 'video', got {modal!r}")
        t0 = time.perf_counter()
        regions = prepare_regions(images, masks, mask_ids, self.config.preprocess,
                                  share_first_local=share_first_local)
        tokens = self.region_crops_tokens(regions)  # [M*K, H]
        vision_s = time.perf_counter() - t0
        k = self.tokens_per_object
        if modal == "image":
            question = question or prompts.DEFAULT_PROMPT_IMAGE
            blocks = list(tokens.split(k))
            stamps = None
        else:
            question = question or prompts.DEFAULT_PROMPT_VIDEO
            if mask_ids_raw is None or timestamps is None:
                raise ValueError("video mode needs mask_ids_raw and timestamps")
            sizes = [len(frames) * k for frames in mask_ids_raw]
            if sum(sizes) != tokens.shape[0]:
                raise ValueError(f"mask_ids_raw covers {sum(sizes) // k} masks, got {len(masks)}")
            blocks = list(tokens.split(sizes))
            stamps = [[float(timestamps[f]) for f in frames] for frames in mask_ids_raw]
        result = self.answer(question, blocks, stamps, max_new_tokens)
        result.vision_s = vision_s
        return result

