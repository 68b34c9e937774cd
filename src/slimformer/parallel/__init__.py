"""Parallel execution applied from outside the model: data, tensor, pipeline parallel and serving."""
