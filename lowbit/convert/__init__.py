"""Everything `lowbit convert` needs and the runtime does not: reading HF / GGUF checkpoints,
per-architecture tensor maps, recipes, and the streaming converter (`converter.convert`)."""
