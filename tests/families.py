"""Tiny random configurations of each decoder family the layer adapter supports, shared by the
tests that must hold for every architecture (similarity engine, scorer)."""

FAMILIES = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gemma": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gemma2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gemma3_text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "phi": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4),
    "gpt2": dict(n_embd=32, n_layer=3, n_head=4, n_positions=128),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=128),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=128),
}


def tiny_family_model(family: str, vocab_size: int, **overrides):
    """A random-weight model of `family` in eval mode (seeded: the same weights every run);
    `overrides` change its configuration (more layers, a shorter sliding window)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=vocab_size, **{**FAMILIES[family], **overrides})
    return AutoModelForCausalLM.from_config(config).eval()
