"""Measuring a converted model: perplexity and KL divergence against the f32 conversion
(`perplexity`), and the quality card stored in the file (`quality`)."""
