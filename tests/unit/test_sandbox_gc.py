"""The standalone sandbox's heap (gateway_sandbox/server.py): what survives a full collection is frozen, so
the next full collections, which every request of the process waits for, walk only what is new."""

from __future__ import annotations

import gc

import pytest

from gateway_sandbox.server import freeze_what_survived

pytestmark = pytest.mark.unit


def test_a_full_collection_freezes_what_survived_it_and_younger_ones_do_not() -> None:
    if gc.get_freeze_count():
        pytest.skip("something else froze this process's heap")
    kept = [{"id": i} for i in range(1000)]  # noqa: F841 - alive through the collection
    gc.callbacks.append(freeze_what_survived)
    try:
        gc.collect(1)
        assert gc.get_freeze_count() == 0
        gc.collect(2)
        assert gc.get_freeze_count() >= 1000
        assert len(gc.get_objects(2)) < 1000  # the next full collection has (almost) nothing old to walk
    finally:
        gc.callbacks.remove(freeze_what_survived)
        gc.unfreeze()
