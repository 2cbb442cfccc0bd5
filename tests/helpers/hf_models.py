"""Tiny random transformers models built in code (no weights ship with any package)."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from ace_jax.models import Qwen3Config


def hf_config(cfg: Qwen3Config):
    data = cfg.to_hf("float32")
    cls = transformers.Qwen3MoeConfig if cfg.model_type == "qwen3_moe" else transformers.Qwen3Config
    data = {k: v for k, v in data.items() if k not in ("architectures", "model_type", "torch_dtype", "dtype")}
    return cls(**data)


def random_hf_model(cfg: Qwen3Config, seed: int = 0, router_scale: float = 2.0):
    """A transformers model with random weights, norms and a router with clear top-k margins."""
    torch.manual_seed(seed)
    hf_cfg = hf_config(cfg)
    cls = transformers.Qwen3MoeForCausalLM if cfg.model_type == "qwen3_moe" else transformers.Qwen3ForCausalLM
    model = cls(hf_cfg).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(router_scale * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def hf_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(input_ids), dtype=torch.long),
                    attention_mask=None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)))
    return out.logits.float().numpy()


def rewrite_checkpoint(src, dst, mutate):
    """Copy a single-file HF checkpoint from `src` to `dst` with its tensors changed by `mutate(dict)`."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(src / "model.safetensors"))
    mutate(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst
