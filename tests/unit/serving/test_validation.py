"""ModelSignature.validate and check_outputs, table-style: each bad request
fails with InvalidInput and a message naming the input and what was
expected; each good one comes back shaped, with its batch size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.errors import InvalidInput
from serving.tensors import RequestedOutput, Tensor
from serving.validation import (
    NAME_LIMIT,
    ModelSignature,
    OutputSpec,
    TensorSpec,
    decode_bytes,
    quoted,
)

OUTPUTS = [OutputSpec("logits", "FP32", (3,)), OutputSpec("probabilities", "FP32", (3,))]

# Batching: input [-1, 2] FP32, max_batch_size 4.
BATCHED = ModelSignature("clf", 4, [TensorSpec("input", "FP32", (2,))], OUTPUTS)
# Not batching: input [3, 2] exactly.
FIXED = ModelSignature("fixed", 0, [TensorSpec("input", "FP32", (3, 2))], OUTPUTS)
# Two inputs, one optional, one with a free dimension: a [-1, -1] and b [-1, 4].
TWO = ModelSignature(
    "two",
    8,
    [TensorSpec("a", "INT64", (-1,)), TensorSpec("b", "FP32", (4,), optional=True)],
    OUTPUTS,
)


def t(
    shape: tuple[int, ...],
    name: str = "input",
    datatype: str = "FP32",
    size: int | None = None,
    raw: bool = True,
) -> Tensor:
    """A flat tensor as the codec delivers it; ``size`` elements (default: what shape says)."""
    count = int(np.prod(shape)) if size is None else size
    dtype = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64}[datatype]
    return Tensor(name, datatype, shape, np.arange(max(count, 0), dtype=dtype), raw)


VALID = [
    (BATCHED, [t((1, 2))], {"input": (1, 2)}, 1),
    (BATCHED, [t((4, 2))], {"input": (4, 2)}, 4),
    (FIXED, [t((3, 2))], {"input": (3, 2)}, 1),
    (TWO, [t((5, 7), "a", "INT64")], {"a": (5, 7)}, 5),
    (TWO, [t((2, 1), "a", "INT64"), t((2, 4), "b")], {"a": (2, 1), "b": (2, 4)}, 2),
    (TWO, [t((2, 4), "b"), t((2, 3), "a", "INT64")], {"a": (2, 3), "b": (2, 4)}, 2),
]


@pytest.mark.parametrize(("signature", "inputs", "shapes", "batch"), VALID)
def test_valid(
    signature: ModelSignature,
    inputs: list[Tensor],
    shapes: dict[str, tuple[int, ...]],
    batch: int,
) -> None:
    feeds, rows = signature.validate(inputs)
    assert {k: v.shape for k, v in feeds.items()} == shapes
    assert rows == batch
    for tensor in inputs:  # same data, only reshaped (no copy of the elements)
        assert np.shares_memory(feeds[tensor.name], tensor.data)


INVALID = {
    "unknown name": (BATCHED, [t((1, 2), name="x")], ["no input 'x'", "['input']"]),
    "given twice": (BATCHED, [t((1, 2)), t((1, 2))], ["input 'input' is given more than once"]),
    "datatype": (BATCHED, [t((1, 2), datatype="FP64")], ["input 'input' must be FP32, got FP64"]),
    "rank too low": (BATCHED, [t((2,))], ["input 'input' has shape [2], expected [-1, 2]"]),
    "rank too high": (BATCHED, [t((1, 1, 2))], ["shape [1, 1, 2], expected [-1, 2]"]),
    "inner dim": (BATCHED, [t((1, 3))], ["shape [1, 3], expected [-1, 2]"]),
    "fixed dim": (FIXED, [t((2, 2))], ["input 'input' has shape [2, 2], expected [3, 2]"]),
    "fixed with batch": (FIXED, [t((1, 3, 2))], ["shape [1, 3, 2], expected [3, 2]"]),
    "over max_batch_size": (
        BATCHED, [t((5, 2))], ["input 'input' has batch size 5", "max_batch_size 4"],
    ),
    "zero rows": (BATCHED, [t((0, 2))], ["input 'input' has shape [0, 2]", "positive"]),
    "zero inner dim": (BATCHED, [t((1, 0))], ["shape [1, 0]", "positive"]),
    "negative batch": (BATCHED, [t((-1, 2), size=2)], ["shape [-1, 2]", "positive"]),
    "negative dim": (BATCHED, [t((1, -2), size=2)], ["shape [1, -2]", "positive"]),
    "zero dim unbatched": (FIXED, [t((0, 2))], ["shape [0, 2]", "positive"]),
    "raw bytes short": (
        BATCHED, [t((2, 2), size=3)], ["input 'input'", "needs 16 bytes", "got 12"],
    ),
    "raw bytes long": (BATCHED, [t((1, 2), size=4)], ["needs 8 bytes", "got 16"]),
    "typed elements short": (
        BATCHED, [t((2, 2), size=3, raw=False)], ["input 'input'", "needs 4 elements, got 3"],
    ),
    "huge declared shape": (
        BATCHED, [t((4, 2**62), size=8)], ["input 'input' has shape [4, 4611686018427387904]"],
    ),
    "huge declared shape, right dims": (
        ModelSignature("free", 4, [TensorSpec("input", "FP32", (-1,))], OUTPUTS),
        [t((4, 2**62), size=8)], ["needs 73786976294838206464 bytes", "got 32"],
    ),
    "batch sizes disagree": (
        TWO, [t((2, 1), "a", "INT64"), t((3, 4), "b")],
        ["inputs disagree on the batch size", "'b' has 3 rows", "earlier input has 2"],
    ),
    "required input missing": (TWO, [t((2, 4), "b")], ["model 'two' needs input(s) ['a']"]),
    "no inputs": (BATCHED, [], ["needs input(s) ['input']"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid(case: str) -> None:
    signature, inputs, fragments = INVALID[case]
    with pytest.raises(InvalidInput) as info:
        signature.validate(inputs)
    for fragment in fragments:
        assert fragment in info.value.message, (fragment, info.value.message)


@given(
    rows=st.integers(-2, 6),
    inner=st.lists(st.integers(-1, 4), min_size=0, max_size=3),
    extra=st.integers(-2, 2),
)
def test_accepts_exactly_the_matching_requests(rows: int, inner: list[int], extra: int) -> None:
    """Against a [-1, 2, 3] signature with max_batch_size 4: accepted iff the
    shape fits, every dim is positive and the element count matches."""
    signature = ModelSignature("p", 4, [TensorSpec("input", "FP32", (2, 3))], OUTPUTS)
    shape = (rows, *inner)
    count = int(np.prod(shape)) if all(d > 0 for d in shape) else 0
    tensor = Tensor("input", "FP32", shape, np.zeros(max(count + extra, 0), np.float32), True)
    fits = 1 <= rows <= 4 and inner == [2, 3] and extra == 0
    if fits:
        feeds, batch = signature.validate([tensor])
        assert feeds["input"].shape == shape and batch == rows
    else:
        with pytest.raises(InvalidInput, match="input 'input'"):
            signature.validate([tensor])


TEXT = ModelSignature("text", 4, [TensorSpec("input", "BYTES", (2,))], OUTPUTS)


def prefixed(*items: bytes) -> np.ndarray:
    """Raw BYTES content as the codec hands it over: undecoded uint8."""
    wire = b"".join(len(i).to_bytes(4, "little") + i for i in items)
    return np.frombuffer(wire, dtype=np.uint8)


def test_raw_bytes_are_decoded_once_valid() -> None:
    feeds, rows = TEXT.validate(
        [Tensor("input", "BYTES", (2, 2), prefixed(b"", b"ab", b"\xff", b"z"), True)]
    )
    assert rows == 2
    assert feeds["input"].dtype == np.object_
    assert feeds["input"].tolist() == [[b"", b"ab"], [b"\xff", b"z"]]


def test_typed_bytes_are_counted_as_elements() -> None:
    data = np.array([b"a", b"b", b"c"], dtype=np.object_)
    with pytest.raises(InvalidInput) as info:
        TEXT.validate([Tensor("input", "BYTES", (1, 2), data, False)])
    assert "input 'input' with shape [1, 2] needs 2 elements, got 3" in info.value.message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (prefixed(b"a", b"b", b"c"), "more raw content than the 2 BYTES elements"),
        (prefixed(b"a"), "needs 2 BYTES elements"),
        (prefixed(b"a", b"bcdef")[:-1], "runs past the raw content"),
        (np.concatenate([prefixed(b"abcd"), prefixed(b"b")[:2]]), "ends inside a length prefix"),
        (np.frombuffer(b"\xff\xff\xff\x7f" * 2, np.uint8), "runs past the raw content"),
    ],
    ids=["too-many", "too-few", "element-cut", "prefix-cut", "huge-length"],
)
def test_raw_bytes_malformed_or_miscounted(data: np.ndarray, fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        TEXT.validate([Tensor("input", "BYTES", (1, 2), data, True)])
    assert "input 'input'" in info.value.message
    assert fragment in info.value.message, info.value.message


def test_raw_bytes_with_a_huge_declared_shape_fail_before_decoding() -> None:
    signature = ModelSignature("text", 4, [TensorSpec("input", "BYTES", (-1,))], OUTPUTS)
    with pytest.raises(InvalidInput) as info:
        signature.validate([Tensor("input", "BYTES", (1, 2**40), prefixed(b"a", b"b"), True)])
    assert f"needs {2**40} BYTES elements (at least {2**42} bytes), got 10" in info.value.message


def test_raw_bytes_for_a_numeric_input_are_refused_by_datatype() -> None:
    broken = np.frombuffer(b"\xff\xff", np.uint8)  # not even a whole length prefix
    with pytest.raises(InvalidInput, match="input 'input' must be FP32, got BYTES"):
        BATCHED.validate([Tensor("input", "BYTES", (1, 2), broken, True)])


# --- requested outputs ------------------------------------------------------------


def test_check_outputs_accepts_known_outputs() -> None:
    BATCHED.check_outputs([RequestedOutput("probabilities", 2), RequestedOutput("logits")])


@pytest.mark.parametrize(
    ("requested", "fragment"),
    [
        (
            [RequestedOutput("scores")],
            "no output 'scores'; its outputs are ['logits', 'probabilities']",
        ),
        (
            [RequestedOutput("logits"), RequestedOutput("logits")],
            "output 'logits' is requested more than once",
        ),
        (
            [RequestedOutput("logits", -1)],
            "output 'logits': classification needs class_count >= 1",
        ),
    ],
)
def test_check_outputs_rejects(requested: list[RequestedOutput], fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        BATCHED.check_outputs(requested)
    assert fragment in info.value.message


# --- client-supplied names in messages ----------------------------------------------

LONG = "n" * 16384  # a 16 KiB name: echoed whole, it would overflow the gRPC trailer


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("x", "'x'"),
        ("", "''"),
        ("a" * NAME_LIMIT, f"'{'a' * NAME_LIMIT}'"),
        ("a" * (NAME_LIMIT + 1), f"'{'a' * NAME_LIMIT}...' ({NAME_LIMIT + 1} characters)"),
        (LONG, f"'{'n' * NAME_LIMIT}...' (16384 characters)"),
    ],
    ids=["short", "empty", "at-limit", "one-over", "16KiB"],
)
def test_quoted_caps_names(name: str, shown: str) -> None:
    assert quoted(name) == shown


def capped(message: str) -> None:
    """The message names the long name by its start and length, never whole."""
    assert LONG not in message
    assert f"'{'n' * NAME_LIMIT}...' (16384 characters)" in message
    assert len(message) < 400, message


@pytest.mark.parametrize(
    "inputs",
    [
        [t((1, 2), name=LONG)],
        [t((1, 2), name=LONG), t((1, 2), name=LONG)],
    ],
    ids=["unknown-input", "unknown-input-twice"],
)
def test_long_input_names_are_capped(inputs: list[Tensor]) -> None:
    with pytest.raises(InvalidInput) as info:
        BATCHED.validate(inputs)
    capped(info.value.message)


def test_long_names_of_known_inputs_are_capped() -> None:
    """A model whose own input name is long: every message about it is capped."""
    signature = ModelSignature("long", 4, [TensorSpec(LONG, "FP32", (2,))], OUTPUTS)
    for inputs in (
        [t((1, 2), name=LONG, datatype="FP64")],
        [t((1, 3), name=LONG)],
        [t((5, 2), name=LONG)],
        [t((0, 2), name=LONG)],
        [t((1, 2), name=LONG, size=3)],
        [t((1, 2), name=LONG), t((1, 2), name=LONG)],
    ):
        with pytest.raises(InvalidInput) as info:
            signature.validate(inputs)
        capped(info.value.message)


def test_long_output_names_are_capped() -> None:
    for requested in (
        [RequestedOutput(LONG)],
        [RequestedOutput(LONG, -1)],
    ):
        with pytest.raises(InvalidInput) as info:
            BATCHED.check_outputs(requested)
        capped(info.value.message)


def test_long_names_are_capped_in_bytes_decoding() -> None:
    with pytest.raises(InvalidInput) as info:
        decode_bytes(prefixed(b"a")[:-1], LONG, 1, (1, 1))
    capped(info.value.message)
    with pytest.raises(InvalidInput) as info:
        decode_bytes(prefixed(b"a")[:2], LONG)
    capped(info.value.message)
