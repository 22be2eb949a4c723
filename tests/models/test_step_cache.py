"""What a generation step derives from parameters (``cached_for_steps``): computed once, checked
against the parameters every call outside a generation and once per cache inside one."""
import threading

import pytest
import torch
import torch.nn as nn

from audiomamba.models.step_cache import cached_for_steps, parameters_fixed


def cacheable() -> nn.Module:
    module = nn.Linear(2, 2)
    module._step_cache = None  # as the blocks declare it
    return module


def counted(module: nn.Module, calls: list):
    return lambda: calls.append(1) or module.weight.sum().item()


def test_outside_a_generation_every_call_sees_an_in_place_change():
    module, calls = cacheable(), []
    with torch.no_grad():
        before = cached_for_steps(module, counted(module, calls))
        assert cached_for_steps(module, counted(module, calls)) == before and len(calls) == 1
        module.weight.add_(1.0)
        assert cached_for_steps(module, counted(module, calls)) == pytest.approx(before + 4) and len(calls) == 2


def test_a_generation_checks_each_cache_once_and_sees_what_changed_before_it():
    module, calls = cacheable(), []
    with torch.no_grad():
        with parameters_fixed():
            first = [cached_for_steps(module, counted(module, calls))]
            module.weight.add_(1.0)  # inside a generation, which sampling never does: not seen there
            first += [cached_for_steps(module, counted(module, calls)) for _ in range(2)]
        with parameters_fixed():
            second = [cached_for_steps(module, counted(module, calls)) for _ in range(3)]
    assert len(calls) == 2 and first == [first[0]] * 3 and second == [second[0]] * 3
    assert second[0] == pytest.approx(first[0] + 4)


def test_another_thread_outside_a_generation_still_checks_every_call():
    module, calls, seen = cacheable(), [], []

    def change_and_read():
        with torch.no_grad():
            module.weight.add_(1.0)
            seen.append(cached_for_steps(module, counted(module, calls)))

    with torch.no_grad(), parameters_fixed():
        before = cached_for_steps(module, counted(module, calls))
        thread = threading.Thread(target=change_and_read)
        thread.start()
        thread.join()
    assert seen == [pytest.approx(before + 4)]


def test_while_autograd_records_it_is_computed_every_call():
    module, calls = cacheable(), []
    with parameters_fixed():
        for _ in range(2):
            cached_for_steps(module, counted(module, calls))
    assert len(calls) == 2
