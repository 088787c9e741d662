"""scipion-em-cryoralign: fast 2D alignment and classification by polar resampling.

The Scipion ``Plugin`` class lives in :mod:`cryoralign_plugin.plugin` and is loaded on first
access (PEP 562): MPI ranks import :mod:`cryoralign_plugin.engine` and must not pay for (or
depend on) pyworkflow/pwem, while Scipion's ``Domain`` still finds ``cryoralign_plugin.Plugin``.
"""
__version__ = "0.1.0"

_logo = "cryoralign_logo.png"
_references = ["Chung2020"]


def __getattr__(name):
    if name == "Plugin":
        from .plugin import Plugin
        globals()["Plugin"] = Plugin
        return Plugin
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
