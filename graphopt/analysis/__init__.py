"""Graph analyses the passes and the pipelines share (what a model is, not how to rewrite it)."""
