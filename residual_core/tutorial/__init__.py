"""The tutorial profile: a procedural image–caption world and the tiny CLIP trained on it."""
