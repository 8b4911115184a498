"""Training and export: ``trainer`` (the recipe: LoRA/QLoRA SFT through TRL's SFTTrainer), ``backends`` (Unsloth,
transformers + peft: a registry), checkpoints, the adapter manifest and model card, ``export`` (merged weights) and
``gguf_export`` (GGUF files).
"""
