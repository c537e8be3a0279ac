"""Typed configuration for every PixelRefer-Lite stage, built from a checkpoint's config.json.

One dataclass per stage; `PixelReferConfig.from_hf_dict` is the only place that reads the
official `config.json` keys. Defaults that a released checkpoint does not carry (the image
processor constants, spec §8) live here with the reason for each value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Special tokens that the official train.py adds after the Qwen2.5 vocabulary (spec §1.7).
REGION_TOKEN = "<REGION>"
IMAGE_TOKEN = "<image>"
STREAM_START_TOKEN = "<|stream_start|>"
STREAM_END_TOKEN = "<|stream_end|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"


@dataclass(frozen=True)
class PreprocessConfig:
    """Host-side constants of the SAOT crop rule and the DAMOVL image processor."""

    patch_size: int = 14  # ViT patch side in pixels
    expanding_rate: int = 2  # bbox padding = patch_size * expanding_rate = 28 px (spec §1.2)
    min_object_patches: int = 32  # small objects are enlarged until the mask covers ~32 patches
    max_object_patches: int = 50  # Lite shrinks large objects to ~50 patches (full PixelRefer: 100)
    global_size: int = 336  # whole frame squashed to 336x336 ("raw")
    local_size: int = 224  # padded bbox squashed to 224x224 ("local")
    min_pixels: int = 56 * 56  # DAMOVLImageProcessor default (16 patches)
    mm_max_length: int = 8192  # patch budget of one processor call, shared by its images
    spatial_merge_size: int = 2  # enters the pixel cap formula only (spec §1.3)
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # VL3-SigLIP-NaViT preprocessor
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def bbox_pad(self) -> int:
        return self.patch_size * self.expanding_rate

    @property
    def max_pixels(self) -> int:
        """The processor's pixel cap before division by the number of images in a call."""
        return self.mm_max_length * self.spatial_merge_size**2 * self.patch_size**2


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP-NaViT encoder (DAMOVL). 2B/7B: 1152 wide, 27 layers, 16 heads."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    layer_norm_eps: float = 1e-6
    patch_size: int = 14
    num_channels: int = 3
    rope_theta: float = 10000.0  # hard-coded in the official VisionRotaryEmbedding

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ObjectTokenizerConfig:
    """SAOT pooling + OCI + feature MLP (`model.region_encoder.*`)."""

    vision_width: int = 1152  # mm_hidden_size
    llm_width: int = 1536  # output width of feat_linear = LLM hidden size
    tokens_per_object: int = 32  # mask_num
    oci_heads: int = 8  # nn.MultiheadAttention(…, 8) in the official MaskExtractor
    layer_norm_eps: float = 1e-5  # nn.LayerNorm default
    kmeans_iterations: int = 3
    kmeans_init: str = "deterministic"  # or "random" (the official torch.randperm init)


@dataclass(frozen=True)
class LLMConfig:
    """Qwen2 decoder. Defaults are Qwen2.5-1.5B (PixelRefer-Lite-2B)."""

    vocab_size: int = 151669
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class PixelReferConfig:
    """The whole model: one config per stage plus the token ids the prompt needs."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    objects: ObjectTokenizerConfig = field(default_factory=ObjectTokenizerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    region_token_id: int = 151668  # recomputed from the tokenizer by the loader
    eos_token_id: int = 151645  # <|im_end|>
    torch_dtype: str = "bfloat16"
    model_id: str = "pixelrefer-lite"

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], preprocessor: dict[str, Any] | None = None,
                     model_id: str = "pixelrefer-lite") -> PixelReferConfig:
        """Build from an official `config.json` (+ an optional local preprocessor_config.json)."""
        if cfg.get("model_type") not in ("pixelreferlite_qwen2", "pixelrefer_lite_shapes"):
            raise ValueError(f"config.json model_type is {cfg.get('model_type')!r}; expected "
                             "'pixelreferlite_qwen2' (a PixelRefer-Lite checkpoint)")
        if not cfg.get("use_token_compression", True):
            raise ValueError("use_token_compression=false is not supported: the official Lite "
                             "path returns None in that branch (spec §1.8)")
        v = cfg.get("vision_encoder_config") or {}
        vision = VisionConfig(
            hidden_size=v.get("hidden_size", cfg.get("mm_hidden_size", 1152)),
            intermediate_size=v.get("intermediate_size", 4304),
            num_hidden_layers=v.get("num_hidden_layers", 27),
            num_attention_heads=v.get("num_attention_heads", 16),
            layer_norm_eps=v.get("layer_norm_eps", 1e-6),
            patch_size=v.get("patch_size", 14),
            num_channels=v.get("num_channels", 3),
        )
        llm = LLMConfig(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=cfg.get("rope_theta", 1_000_000.0),
            max_position_embeddings=cfg.get("max_position_embeddings", 32768),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
        )
        if cfg.get("rope_scaling"):
            raise ValueError(f"rope_scaling={cfg['rope_scaling']!r} is not supported "
                             "(PixelRefer-Lite uses none)")
        objects = ObjectTokenizerConfig(
            vision_width=cfg.get("mm_hidden_size", vision.hidden_size),
            llm_width=llm.hidden_size,
            tokens_per_object=cfg.get("mask_num", 32),
        )
        p = preprocessor or {}
        mean = tuple(p.get("image_mean", (0.5, 0.5, 0.5)))
        std = tuple(p.get("image_std", (0.5, 0.5, 0.5)))
        preprocess = PreprocessConfig(
            patch_size=vision.patch_size,
            min_pixels=p.get("min_pixels", 56 * 56),
            mm_max_length=cfg.get("mm_max_length", 8192),
            spatial_merge_size=cfg.get("spatial_merge_size", 2),
            image_mean=mean,  # type: ignore[arg-type]
            image_std=std,  # type: ignore[arg-type]
        )
        return cls(vision=vision, objects=objects, llm=llm, preprocess=preprocess,
                   region_token_id=cfg.get("region_token_index", 151668),
                   eos_token_id=_first_id(cfg.get("eos_token_id", 151645)),
                   torch_dtype=cfg.get("torch_dtype", "bfloat16"), model_id=model_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_id(value: int | list[int]) -> int:
    return value[0] if isinstance(value, list) else value


def preset(name: str) -> PixelReferConfig:
    """Configs of the released shapes (spec §1.8, §3.3), for benchmarks and meta-device counts."""
    if name == "2b":
        return PixelReferConfig(model_id="PixelRefer-Lite-2B")
    if name == "7b":
        llm = LLMConfig(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                        num_key_value_heads=4, tie_word_embeddings=False)
        return PixelReferConfig(llm=llm, objects=ObjectTokenizerConfig(llm_width=3584),
                                model_id="PixelRefer-Lite-7B")
    raise ValueError(f"unknown preset {name!r}; choose one of: 2b, 7b")
