"""Backends behind one interface, :class:`.base.Backend`: ``polar``, ``prepare_references``, ``search``,
``class_sums``; :func:`get_backend` picks one."""
from ..errors import InputError


def get_backend(name="auto", threads=None, gpu=None, rank=0, exhaustive=False):
    """The backend called ``name`` (``auto`` picks CUDA when a usable GPU exists, else CPU).

    ``exhaustive`` makes the CPU search skip its screening stage; the GPU search is always
    exhaustive.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise InputError("unknown backend %r: use auto, cpu or cuda" % name)
    if name in ("auto", "cuda"):
        try:
            from . import cuda
        except ImportError:
            cuda = None
        if cuda is not None and cuda.available():
            return cuda.CudaBackend(gpu=gpu, rank=rank)
        if name == "cuda":
            raise InputError("the CUDA backend was requested but no usable NVIDIA GPU/driver was found: "
                             "install the 'gpu' extra (pip install scipion-em-cryoralign[gpu]) on a GPU "
                             "machine, or use --backend cpu")
    from .cpu import CpuBackend
    return CpuBackend(threads=threads, exhaustive=exhaustive)
