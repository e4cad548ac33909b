"""The ports package itself: Protocols only, each small and documented (issue #15)."""

from __future__ import annotations

import inspect
from typing import Protocol

from headwater import ports

MAX_OWN_METHODS = 6


def _protocols() -> dict[str, type]:
    return {
        name: value
        for name, value in vars(ports).items()
        if inspect.isclass(value) and value.__module__.startswith(f"{ports.__name__}.")
    }


def _own_methods(cls: type) -> set[str]:
    own = vars(cls).items()
    return {n for n, v in own if not n.startswith("_") and (callable(v) or isinstance(v, property))}


def test_ports_holds_protocols_only() -> None:
    found = _protocols()
    assert found, "headwater.ports defines no classes"
    for name, cls in found.items():
        assert Protocol in cls.__mro__ and getattr(cls, "_is_protocol", False), f"{name} is not a Protocol"


def test_each_port_is_small_and_says_its_contract() -> None:
    for name, cls in _protocols().items():
        assert (cls.__doc__ or "").strip(), f"{name} has no docstring"
        own = _own_methods(cls)
        assert len(own) <= MAX_OWN_METHODS, f"{name} has {len(own)} methods of its own: {sorted(own)}"


def test_composites_are_made_of_the_small_ports() -> None:
    assert issubclass(ports.MetadataStore, ports.DocumentLedger)
    assert issubclass(ports.MetadataStore, ports.ScanLog)
    assert issubclass(ports.MetadataStore, ports.DeadLetterSink)
    assert issubclass(ports.FeatureStore, ports.InvalidRecordOutbox)
    assert issubclass(ports.StreamBus, ports.BusConsumer)
    assert issubclass(ports.VectorStore, ports.VectorWriter)
    assert issubclass(ports.JobStore, ports.JobJournal)
    assert issubclass(ports.JobStore, ports.JobQueue)
