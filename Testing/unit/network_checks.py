"""Checks every network of the zoo must pass; each network's test file calls them with its own configs."""

import functools

import numpy as np
import pytest
import torch

from Testing.realdata import real_crop


@functools.lru_cache(maxsize=None)
def _crop(size, batch):
    return torch.from_numpy(np.repeat(real_crop(size), batch, axis=0))


def real_input(size=(32, 32, 32), batch=1):
    """A real tumor crop, repeated to `batch`, as a float32 tensor (B, 4, D, H, W); read once per size."""
    return _crop(tuple(size), batch).clone()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small convolutions oversubscribe 2 shared cores (3-10x slower).

    Autouse in every test module that imports it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def forward_backward(net, x, present=None):
    """Training-mode forward + backward; returns (logits, aux) and checks every parameter got a gradient."""
    net.train()
    net.zero_grad(set_to_none=True)
    logits, aux = net(x, present) if present is not None else net(x)
    loss = logits.float().square().mean() + sum(t.float().square().mean() for t in aux_tensors(aux))
    loss.backward()
    missing = [name for name, p in net.named_parameters() if p.requires_grad and (p.grad is None)]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    assert torch.isfinite(loss)
    return logits, aux


def aux_tensors(aux):
    """Every tensor in an auxiliary-output dataclass (nested lists/tuples/dicts included)."""
    found = []

    def walk(value):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name))

    walk(aux)
    return found


def eval_deterministic(net, x):
    """Eval mode returns a plain tensor, twice the same."""
    net.eval()
    with torch.no_grad():
        first = net(x)
        second = net(x)
    assert isinstance(first, torch.Tensor)
    assert torch.equal(first, second)
    return first


def exports(net, x):
    """The inference path exports with torch.export and gives the same output as eager mode."""
    net.eval()
    with torch.no_grad():
        expected = net(x)
        program = torch.export.export(net, (x,))
        got = program.module()(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    return program


def absent_channel_is_ignored(net, x, present):
    """Eval output does not depend on the content of channels `present` marks absent; returns the output."""
    altered = x.clone()
    altered[~present] = torch.randn_like(altered[~present]) * 5
    net.eval()
    with torch.no_grad():
        expected, got = net(x, present), net(altered, present)
    torch.testing.assert_close(got, expected)
    return expected
