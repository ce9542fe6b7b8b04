"""The ViT classifier's PyTorch twin for the benchmark: transformers' `ViTForImageClassification` with the
sizes of the jaxemo model, randomly initialised, trained with cross-entropy, clipping and AdamW in float32.

Importing this module needs neither torch nor transformers.
"""

from __future__ import annotations

FRAMEWORK = "PyTorch (transformers ViT, sdpa)"


def hf_vit(transformers, model):
    """HF `ViTForImageClassification` with the sizes of the jaxemo `model`, randomly initialised."""
    config = transformers.ViTConfig(
        hidden_size=model.width, num_hidden_layers=model.depth, num_attention_heads=model.num_heads,
        intermediate_size=model.mlp_dim, image_size=model.image_size[0], patch_size=model.patch_size[0],
        num_channels=model.in_channels, num_labels=model.num_classes, layer_norm_eps=model.layer_norm_eps,
        hidden_act="gelu", qkv_bias=model.qkv_bias, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa")
    return transformers.ViTForImageClassification(config).train()


def benchmark_steps(torch, case) -> dict:
    """{"train": one full fp32 step (forward, cross-entropy, backward, clipping, AdamW)} on the case's batch."""
    import transformers

    hf_model = hf_vit(transformers, case.task.model)
    o = case.config.optimizer
    optimizer = torch.optim.AdamW(hf_model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                                  eps=o.get("eps", 1e-8), weight_decay=o.weight_decay)
    images = torch.from_numpy(case.batch["image"]).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    labels = torch.from_numpy(case.batch["label"]).long()

    def train():
        logits = hf_model(pixel_values=images.float() / 255.0).logits
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        if o.get("clip_norm"):
            torch.nn.utils.clip_grad_norm_(hf_model.parameters(), o.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return {"train": train}
