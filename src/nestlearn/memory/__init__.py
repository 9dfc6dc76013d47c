"""The associative-memory primitive shared by Titans, the linear-memory baselines, Hope and CMS.

* :class:`MemorySpec`: parameterisation × objective × inner rule × momentum × chunking × read.
* :func:`memory_scan`: chunk-parallel fast path (closed-form inner gradients, scans, triangular solve);
  :func:`compile_chunk_step` runs the memories' chunk steps under ``torch.compile`` (:func:`compiled`).
* :func:`memory_scan_reference`: token-by-token oracle (autograd inner gradients, literal updates);
  :func:`inner_gradients`: the autograd inner gradient every reference (memory, self-modifying, CMS) uses,
  :func:`output_gain_autograd` the autograd gain of a gain-normalised step (memory, CMS).
* :func:`memory_apply`, :func:`boundary_factors`, :func:`init_memory_state`: building blocks;
  :func:`weight_step`: one weight's normalised, bounded step (design.md S3, S5), also used by CMS.
"""

from nestlearn.memory.chunks import boundary_weights, chunk_bounds, split_chunks
from nestlearn.memory.gates import logit
from nestlearn.memory.gradients import activation, activation_grad, boundary_factors, memory_apply
from nestlearn.memory.ops import chunk_compile_backend, compile_chunk_step, compiled, init_memory_state, memory_scan, segment_products, weight_step
from nestlearn.memory.reference import inner_gradients, inner_loss, memory_scan_reference, output_gain_autograd
from nestlearn.memory.spec import MemorySpec

__all__ = [
    "MemorySpec",
    "activation",
    "activation_grad",
    "boundary_factors",
    "boundary_weights",
    "chunk_bounds",
    "chunk_compile_backend",
    "compile_chunk_step",
    "compiled",
    "init_memory_state",
    "inner_gradients",
    "inner_loss",
    "logit",
    "memory_apply",
    "memory_scan",
    "memory_scan_reference",
    "output_gain_autograd",
    "segment_products",
    "split_chunks",
    "weight_step",
]
