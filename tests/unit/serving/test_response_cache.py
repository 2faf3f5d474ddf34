"""The response cache on its own: LRU eviction within the byte budget, a key
that covers every input's name, datatype, shape and bytes and the requested
outputs (no false hit), and a reloaded version that never sees the previous
load's answers. ``serving.response_cache`` reads three fields of a loaded
version; ``Version`` below carries exactly those."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest
from pydantic import ValidationError

from serving._generated import model_config_pb2 as mc
from serving.response_cache import ResponseCache, key_of, token_for
from serving.settings import ServingSettings
from serving.tensors import InferRequest, RequestedOutput, Tensor

KEY_BYTES = 32  # SHA-256


@dataclass
class Version:
    model: str = "m"
    version_str: str = "1"
    cache_token: int = 1


def tensor(data: np.ndarray, name: str = "input", datatype: str = "FP32") -> Tensor:
    return Tensor(name, datatype, tuple(data.shape), data.reshape(-1))


def req(*inputs: Tensor, outputs: tuple[RequestedOutput, ...] = ()) -> InferRequest:
    return InferRequest("m", "", inputs, outputs)


def answer(value: float, rows: int = 1) -> tuple[Tensor, ...]:
    data = np.full((rows, 2), value, np.float32)
    return (Tensor("logits", "FP32", data.shape, data),)


def entry_size(outputs: tuple[Tensor, ...]) -> int:
    """What one entry counts against the budget: its key and its tensors."""
    return KEY_BYTES + sum(len(t.name) + len(t.datatype) + t.data.nbytes for t in outputs)


X = np.arange(8, dtype=np.float32).reshape(2, 4)


def test_an_identical_request_hits_and_gets_the_stored_answer() -> None:
    cache, v = ResponseCache(1 << 20), Version()
    key, cached, _ = cache.lookup(v, req(tensor(X)))
    assert cached is None
    cache.insert(key, v.cache_token, answer(3.0))
    key2, cached, seconds = cache.lookup(v, req(tensor(X.copy())))
    assert key2 == key and cached is not None and seconds >= 0
    np.testing.assert_array_equal(cached[0].data, answer(3.0)[0].data)
    assert len(cache) == 1 and cache.size == entry_size(answer(3.0))


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda: req(tensor(X.reshape(4, 2))), id="shape, same bytes"),
        pytest.param(lambda: req(tensor(X.reshape(1, 8))), id="flat shape, same bytes"),
        pytest.param(
            lambda: req(tensor(X.view(np.int32), datatype="INT32")), id="dtype, same bytes"
        ),
        pytest.param(lambda: req(tensor(X.view(np.int32), datatype="FP32")), id="numpy dtype only"),
        pytest.param(lambda: req(tensor(X, datatype="FP16")), id="datatype name only"),
        pytest.param(lambda: req(tensor(X, name="other")), id="input name"),
        pytest.param(lambda: req(tensor(X + 1)), id="bytes"),
        pytest.param(lambda: req(tensor(X), tensor(X, name="extra")), id="one more input"),
        pytest.param(
            lambda: req(tensor(X), outputs=(RequestedOutput("logits"),)), id="an output named"
        ),
        pytest.param(
            lambda: req(tensor(X), outputs=(RequestedOutput("logits", class_count=1),)),
            id="classification count",
        ),
    ],
)
def test_a_request_that_differs_in_anything_that_shapes_the_answer_misses(other) -> None:  # type: ignore[no-untyped-def]
    cache, v = ResponseCache(1 << 20), Version()
    key, _, _ = cache.lookup(v, req(tensor(X)))
    cache.insert(key, v.cache_token, answer(1.0))
    other_key, cached, _ = cache.lookup(v, other())
    assert cached is None and other_key != key


def test_output_order_and_count_are_in_the_key_but_input_order_is_not() -> None:
    v = Version()
    a, b = RequestedOutput("logits"), RequestedOutput("probabilities")
    two = (tensor(X), tensor(X + 1, name="second"))
    assert key_of(v, req(*two)) == key_of(v, req(*reversed(two)))  # the same answer
    assert key_of(v, req(tensor(X), outputs=(a, b))) != key_of(v, req(tensor(X), outputs=(b, a)))
    assert key_of(v, req(tensor(X), outputs=(a,))) != key_of(v, req(tensor(X), outputs=(a, a)))


def test_bytes_elements_keep_their_boundaries() -> None:
    v = Version()
    one = np.array([b"ab", b"c"], dtype=np.object_)
    other = np.array([b"a", b"bc"], dtype=np.object_)
    assert key_of(v, req(tensor(one, datatype="BYTES"))) != key_of(
        v, req(tensor(other, datatype="BYTES"))
    )


def test_model_version_and_load_token_are_in_the_key() -> None:
    request = req(tensor(X))
    base = key_of(Version(), request)
    assert key_of(Version(model="n"), request) != base
    assert key_of(Version(version_str="2"), request) != base
    assert key_of(Version(cache_token=2), request) != base


def test_least_recently_used_entries_are_evicted_to_stay_within_the_budget() -> None:
    one = entry_size(answer(0.0))
    cache, v = ResponseCache(2 * one + one // 2), Version()  # room for two entries, not three
    keys = []
    for i in range(3):
        key, _, _ = cache.lookup(v, req(tensor(X + i)))
        keys.append(key)
    cache.insert(keys[0], 1, answer(0.0))
    cache.insert(keys[1], 1, answer(1.0))
    assert cache.lookup(v, req(tensor(X)))[1] is not None  # 0 is now the most recent
    cache.insert(keys[2], 1, answer(2.0))  # evicts 1, the least recently used
    assert cache.lookup(v, req(tensor(X + 1)))[1] is None
    assert cache.lookup(v, req(tensor(X)))[1] is not None
    assert cache.lookup(v, req(tensor(X + 2)))[1] is not None
    assert len(cache) == 2 and cache.size == 2 * one and cache.evictions == 1


def test_a_larger_answer_evicts_as_many_entries_as_it_needs() -> None:
    one, big = entry_size(answer(0.0)), entry_size(answer(9.0, rows=3))
    cache, v = ResponseCache(big), Version()
    for i in range(big // one):
        cache.insert(key_of(v, req(tensor(X + i))), 1, answer(float(i)))
    cache.insert(key_of(v, req(tensor(X + 100))), 1, answer(9.0, rows=3))
    assert len(cache) == 1 and cache.size == big and cache.size <= cache.capacity


def test_an_answer_larger_than_the_whole_budget_is_not_stored() -> None:
    cache, v = ResponseCache(entry_size(answer(0.0)) - 1), Version()
    cache.insert(key_of(v, req(tensor(X))), 1, answer(0.0))
    assert len(cache) == 0 and cache.size == 0 and cache.evictions == 0


def test_the_stored_answer_is_a_read_only_copy() -> None:
    cache, v = ResponseCache(1 << 20), Version()
    batch = np.zeros((4, 2), np.float32)
    mine = batch[1:2]  # a request's rows are a view into the batch's output
    key = key_of(v, req(tensor(X)))
    cache.insert(key, 1, (Tensor("logits", "FP32", mine.shape, mine),))
    batch[:] = 7.0
    stored = cache.lookup(v, req(tensor(X)))[1]
    assert stored is not None
    np.testing.assert_array_equal(stored[0].data, np.zeros((1, 2), np.float32))
    assert stored[0].data.base is None or stored[0].data.base is not batch
    with pytest.raises(ValueError):
        stored[0].data[0, 0] = 1.0


def test_a_reloaded_version_never_sees_the_previous_loads_answers() -> None:
    config = mc.ModelConfig(name="m")
    config.response_cache.enable = True
    old = Version(cache_token=token_for(config, 1 << 20, "m:1", ensemble=False))
    new = Version(cache_token=token_for(config, 1 << 20, "m:1", ensemble=False))
    assert 0 < old.cache_token != new.cache_token > 0
    cache = ResponseCache(1 << 20)
    cache.insert(key_of(old, req(tensor(X))), old.cache_token, answer(1.0))
    cache.insert(key_of(old, req(tensor(X + 1))), old.cache_token, answer(2.0))
    cache.insert(key_of(new, req(tensor(X + 1))), new.cache_token, answer(3.0))
    assert cache.lookup(new, req(tensor(X)))[1] is None
    cache.forget(old)  # the manager retires the old load
    assert len(cache) == 1 and cache.size == entry_size(answer(3.0))
    assert cache.lookup(old, req(tensor(X)))[1] is None
    hit = cache.lookup(new, req(tensor(X + 1)))[1]
    assert hit is not None and float(hit[0].data[0, 0]) == 3.0


def test_only_models_that_ask_get_a_token_and_one_that_cannot_have_it_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plain = mc.ModelConfig(name="m")
    asking = mc.ModelConfig(name="m")
    asking.response_cache.enable = True
    with caplog.at_level(logging.INFO, logger="serving.response_cache"):
        assert token_for(plain, 1 << 20, "m:1", ensemble=False) == 0
        assert caplog.records == []
        assert token_for(asking, 0, "m:1", ensemble=False) == 0
        assert token_for(asking, 1 << 20, "e:1", ensemble=True) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "m:1 asks for response_cache but the server has no cache" in lines[0]
    assert "--cache-config local,size=N" in lines[0]
    assert "e:1" in lines[1] and "ensembles" in lines[1]


@pytest.mark.parametrize(
    ("text", "size"), [("", 0), ("local,size=1048576", 1048576), ("local, size=0", 0)]
)
def test_cache_config_is_tritons_spelling(text: str, size: int) -> None:
    assert ServingSettings(cache_config=text).cache_bytes == size


@pytest.mark.parametrize("text", ["redis,host=x", "local", "local,size=-1", "local,size=1k"])
def test_a_cache_config_that_is_not_local_size_n_is_refused_with_the_spelling(text: str) -> None:
    with pytest.raises(ValidationError, match=r"expected local,size=N"):
        ServingSettings(cache_config=text)
