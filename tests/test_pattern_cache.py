"""torchao's QAT pattern graphs are exported once per distinct pattern, and every caller gets its own copy."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from torch.nn import functional as F  # noqa: E402

from dermmobile.targets import pattern_cache  # noqa: E402


def _pattern(conv_fn, training):
    """Made fresh on every call, as torchao makes its patterns: only the values closed over say which it is."""
    from torchao.quantization.pt2e.export_utils import WrapperModule

    def conv_bn(x, weight, mean, var):
        return F.batch_norm(conv_fn(x, weight), mean, var, training=training)

    return WrapperModule(conv_bn)


def _inputs(side=3):
    return torch.randn(1, 1, side, side), torch.randn(1, 1, 1, 1), torch.randn(1), torch.rand(1) + 0.5


class _CountingExport:
    def __init__(self):
        self.calls = 0

    def __call__(self, pattern, example_inputs, is_cuda=False, **kwargs):
        self.calls += 1
        return torch.fx.symbolic_trace(torch.nn.ReLU())  # a graph the caller can edit


def test_a_pattern_is_exported_once_and_each_caller_gets_its_own_copy():
    export = _CountingExport()
    cached = pattern_cache._cached(export)
    first = cached(_pattern(F.conv2d, True), _inputs())
    first.graph.erase_node(next(n for n in reversed(first.graph.nodes) if n.op == "output"))  # callers edit theirs
    second = cached(_pattern(F.conv2d, True), _inputs())  # new closure, new random inputs of the same shapes
    assert export.calls == 1 and second is not first
    assert any(node.op == "output" for node in second.graph.nodes)


@pytest.mark.parametrize(
    "other",
    [
        lambda: (_pattern(F.conv2d, False), _inputs(), {}),  # another value closed over
        lambda: (_pattern(F.conv_transpose2d, True), _inputs(), {}),  # another function closed over
        lambda: (_pattern(F.conv2d, 1), _inputs(), {}),  # 1 is not True
        lambda: (_pattern(F.conv2d, True), _inputs(side=5), {}),  # other shapes
        lambda: (_pattern(F.conv2d, True), _inputs(), {"scale": torch.ones(1)}),  # a keyword input
    ],
)
def test_any_difference_is_another_export(other):
    export = _CountingExport()
    cached = pattern_cache._cached(export)
    cached(_pattern(F.conv2d, True), _inputs())
    pattern, inputs, kwargs = other()
    cached(pattern, inputs, **kwargs)
    cached(pattern, inputs, **kwargs)
    assert export.calls == 2


def _scaled_pattern(scale):
    from torchao.quantization.pt2e.export_utils import WrapperModule

    def scaled_conv(x, weight):
        return F.conv2d(x, weight) * scale

    return WrapperModule(scaled_conv)


def test_patterns_that_are_not_plain_data_are_exported_every_time():
    export = _CountingExport()
    cached = pattern_cache._cached(export)
    scale = torch.ones(1)  # a tensor closed over: its values are part of the graph, its identity says nothing
    for value in (1.0, 2.0):
        scale.fill_(value)
        cached(_scaled_pattern(scale), _inputs()[:2])
        cached(torch.nn.Conv2d(1, 1, 1), _inputs()[:1])  # a module of its own: its state is not plain data
    assert export.calls == 4


def test_torchao_pattern_graphs_are_the_same_cached_or_not():
    """The installed cache serves torchao's callers, and a cached graph is the graph torchao would have exported."""
    import torchao.quantization.pt2e.qat_utils as qat_utils
    import torchao.quantization.pt2e.utils as utils

    pattern_cache.install()
    cached = utils._get_aten_graph_module_for_pattern
    assert qat_utils._get_aten_graph_module_for_pattern is cached and cached.dermmobile_cache is not None
    pattern_cache.install()  # idempotent: the cache is not wrapped twice
    assert utils._get_aten_graph_module_for_pattern is cached
    inputs = (torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1), *(torch.randn(1) for _ in range(5)))
    fresh = qat_utils._get_qat_conv_bn_pattern(F.conv2d)
    served = [cached(qat_utils._get_qat_conv_bn_pattern(F.conv2d), inputs, False) for _ in range(2)]
    exported = cached.__wrapped__(fresh, inputs, False)
    assert served[0].code == served[1].code == exported.code
