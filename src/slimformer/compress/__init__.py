"""Compression steps (model -> model, registered by name) and recipes that compose them."""
