"""Delta Gradient Descent as an outer optimiser (NL-L Eq 57, NL-N Eq 29, spec §3, D1)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nestlearn.errors import ConfigError
from nestlearn.optim import DGD
from nestlearn.optim._common import group_names




def _layer(d_in=5, d_out=3, seed=0, bias=False):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out, bias=bias)


def _loss(y):
    return (torch.sin(y) ** 2).sum()


def test_single_input_long_form_is_eq_57():
    layer, lr = _layer(), 0.3
    x = torch.randn(5)
    w = layer.weight.detach().clone()
    opt = DGD(layer, lr=lr)
    y = layer(x)
    u = -torch.autograd.grad(_loss(y), y, retain_graph=True)[0]
    _loss(y).backward()
    opt.step()
    eta = lr / (1 + lr * x.dot(x))
    expected = w - eta * torch.outer(w @ x - u, x)
    torch.testing.assert_close(layer.weight.detach(), expected)


def test_single_input_neurips_form_is_nl_n_eq_29():
    layer, lr = _layer(), 0.3
    x = torch.nn.functional.normalize(torch.randn(5), dim=0)
    w = layer.weight.detach().clone()
    opt = DGD(layer, lr=lr, form="neurips")
    y = layer(x)
    grad_y = torch.autograd.grad(_loss(y), y, retain_graph=True)[0]
    _loss(y).backward()
    opt.step()
    expected = w @ (torch.eye(5) - torch.outer(x, x)) - lr * torch.outer(grad_y, x)
    torch.testing.assert_close(layer.weight.detach(), expected)


def test_batch_and_sequence_axes_are_reduced_by_the_mean_of_x_xT():
    layer, lr = _layer(), 0.1
    x = torch.randn(2, 4, 5)
    w = layer.weight.detach().clone()
    opt = DGD(layer, lr=lr)
    _loss(layer(x)).backward()
    grad = layer.weight.grad.clone()
    opt.step()
    rows = x.reshape(-1, 5)
    moment = rows.T @ rows / rows.shape[0]
    eta = lr / (1 + lr * torch.trace(moment))
    torch.testing.assert_close(layer.weight.detach(), w - eta * w @ moment - eta * grad)


def test_evaluation_forwards_are_ignored_and_accumulation_spans_forwards():
    layer_a, layer_b = _layer(), _layer()
    x1, x2, x_eval = torch.randn(3, 5), torch.randn(3, 5), 100 * torch.randn(3, 5)
    opt_a, opt_b = DGD(layer_a, lr=0.1), DGD(layer_b, lr=0.1)
    _loss(layer_a(torch.cat([x1, x2]))).backward()
    with torch.no_grad():
        layer_b(x_eval)
    (_loss(layer_b(x1)) + _loss(layer_b(x2))).backward()
    opt_a.step()
    opt_b.step()
    torch.testing.assert_close(layer_a.weight, layer_b.weight)


def test_closure_discards_inputs_captured_before_the_step():
    layer_a, layer_b = _layer(), _layer()
    x = torch.randn(4, 5)
    opt_a, opt_b = DGD(layer_a, lr=0.1), DGD(layer_b, lr=0.1)
    layer_b(50 * torch.randn(4, 5))

    def closure(layer, opt):
        def run():
            opt.zero_grad()
            loss = _loss(layer(x))
            loss.backward()
            return loss
        return run

    opt_a.step(closure(layer_a, opt_a))
    opt_b.step(closure(layer_b, opt_b))
    torch.testing.assert_close(layer_a.weight, layer_b.weight)


def test_other_parameters_take_plain_gradient_steps():
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = DGD(model, lr=0.2)
    assert [g["rule"] for g in opt.param_groups] == ["dgd", "sgd"]
    assert group_names(opt.param_groups[0]) == ["0.weight"]
    _loss(model(torch.randn(3, 5))).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for name in ("0.bias", "1.weight", "1.bias"):
        torch.testing.assert_close(model.get_parameter(name).detach(), before[name] - 0.2 * grads[name])


def test_params_restricts_the_optimised_set():
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2))
    opt = DGD(model, lr=0.1, params=[model[1].weight])
    assert [p for g in opt.param_groups for p in g["params"]] == [model[1].weight]
    with pytest.raises(ValueError, match="not trainable parameters"):
        DGD(model, params=[nn.Parameter(torch.zeros(2))])


def test_weight_used_outside_its_module_raises_naming_it():
    layer = _layer()
    opt = DGD(layer, lr=0.1)
    _loss(torch.nn.functional.linear(torch.randn(5), layer.weight)).backward()
    with pytest.raises(RuntimeError, match=r"'weight'.*no input was captured"):
        opt.step()


def test_deep_copied_model_does_not_feed_the_original_optimizer():
    layer = _layer()
    opt = DGD(layer, lr=0.1)
    twin = copy.deepcopy(layer)
    _loss(twin(torch.randn(2, 5))).backward()
    layer.weight.grad = twin.weight.grad
    with pytest.raises(RuntimeError, match="no input was captured"):
        opt.step()


def test_remove_hooks_detaches_from_the_model():
    layer = _layer()
    opt = DGD(layer, lr=0.1)
    opt.remove_hooks()
    assert not layer._forward_hooks


@pytest.mark.parametrize("kwargs,field", [
    ({"lr": -1.0}, "DGD.lr"),
    ({"form": "short"}, "DGD.form"),
    ({"weight_decay": -1.0}, "DGD.weight_decay"),
])
def test_bad_hyper_parameters_raise_naming_them(kwargs, field):
    with pytest.raises(ConfigError) as info:
        DGD(_layer(), **kwargs)
    assert info.value.field == field
