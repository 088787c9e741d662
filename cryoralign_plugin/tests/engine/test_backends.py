"""Both backends implement the backend contract, :class:`~cryoralign_plugin.engine.backends.base.Backend`."""
import inspect

import pytest

from cryoralign_plugin.engine.backends import base, cpu, cuda, get_backend

CONTRACT = ["class_sums", "name", "polar", "prepare_references", "search"]
BACKENDS = [cpu.CpuBackend, cuda.CudaBackend]


def bare(cls):
    """An instance without ``__init__`` (no GPU needed): ``object.__new__`` is where an abstract
    class refuses to be instantiated, so this raises TypeError when ``cls`` misses a method."""
    return cls.__new__(cls)


def test_the_contract_is_what_the_engine_calls():
    assert sorted(base.Backend.__abstractmethods__) == CONTRACT


@pytest.mark.parametrize("cls", BACKENDS, ids=lambda cls: cls.__name__)
def test_backend_implements_every_abstract_method(cls):
    assert issubclass(cls, base.Backend) and isinstance(bare(cls), base.Backend)
    assert not cls.__abstractmethods__
    for name in CONTRACT:
        contract, own = inspect.getattr_static(base.Backend, name), inspect.getattr_static(cls, name)
        assert own is not contract and not getattr(own, "__isabstractmethod__", False), name
        if name == "name":
            assert isinstance(own, str) and own == cls.__module__.rsplit(".", 1)[1]
        else:
            assert list(inspect.signature(own).parameters) == list(inspect.signature(contract).parameters), name


@pytest.mark.parametrize("module", [cpu, cuda], ids=lambda module: module.__name__.rsplit(".", 1)[1])
def test_prepared_references_share_one_name_and_base(module):
    assert issubclass(module.PreparedReferences, base.PreparedReferences)
    assert module.PreparedReferences is not base.PreparedReferences


def test_get_backend_returns_a_backend():
    assert isinstance(get_backend("cpu", threads=1), base.Backend)


def test_a_backend_missing_a_method_cannot_be_made():
    class Partial(base.Backend):
        name = "partial"

        def polar(self, images, index, centers, grid):
            pass

    with pytest.raises(TypeError, match="abstract"):
        bare(Partial)
