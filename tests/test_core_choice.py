"""jresnet.core_choice: the shared switch behind set_conv_core and set_norm_core."""

from __future__ import annotations

import pytest

from jresnet import native
from jresnet.core_choice import CoreChoice


def test_the_first_core_is_the_default_and_set_returns_the_previous_one() -> None:
    choice = CoreChoice("set_thing_core", ("auto", "plain"))
    assert choice.name == "auto"
    assert choice.set("plain") == "auto"
    assert choice.name == "plain"
    assert choice.set("auto") == "plain"


def test_unknown_names_and_unloadable_onednn_are_rejected_by_the_setters_name(monkeypatch) -> None:
    choice = CoreChoice("set_thing_core", ("auto", "onednn"))
    with pytest.raises(ValueError, match=r"set_thing_core: name must be one of \('auto', 'onednn'\); got 'nope'"):
        choice.set("nope")
    monkeypatch.setattr(native, "status", lambda: native.NativeStatus(False, reason="no C++ compiler found"))
    with pytest.raises(RuntimeError, match=r"set_thing_core\('onednn'\).*no C\+\+ compiler found"):
        choice.set("onednn")
    assert choice.name == "auto"  # a rejected choice changes nothing
