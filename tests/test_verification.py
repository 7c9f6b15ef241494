"""--verify's bounds and --check-exchange's CRCs, on their own (the runs that use them: test_faults, test_edge)."""

import zlib

import numpy as np
import pytest
import torch

from decnn.common.checksum import ExchangeCorrupted, block_crcs, check_blocks
from decnn.common.verification import (
    EXCHANGE_BOUNDS,
    QUANTIZED_BOUND,
    VerificationError,
    bound_for,
    check,
    compare,
    failure,
)
from decnn.distributed.transport import TorchTensors

REFERENCE = np.array([[4.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 3.0]])


def _off(image: int, by: float, cls: int = 0) -> np.ndarray:
    logits = REFERENCE.copy()
    logits[image, cls] += by
    return logits


def test_within_the_bound_verifies_and_beyond_it_names_the_worst_image():
    assert compare(_off(1, 3e-4), REFERENCE)["verified"]  # 3e-4 / 4 < 1e-4
    result = compare(_off(2, 1e-3) + _off(1, 5e-4) - REFERENCE, REFERENCE)
    assert not result["verified"] and result["worst_image"] == 2 and result["verify_bound"] == 1e-4
    assert result["max_rel_diff"] == pytest.approx(1e-3 / 4)
    line = failure(result)
    assert line.startswith("verification failed: image 2 differs from the whole model by max |dlogit| 1.00e-03 "
                           "(2.5e-04 of the largest logit), beyond the bound 0.0001"), line
    with pytest.raises(VerificationError, match="image 2"):
        check(result)


def test_fp32_needs_every_top1_while_a_compressed_exchange_needs_only_its_bound():
    tie = np.array([[1.0, 1.0 - 1e-6, 0.0], *REFERENCE[1:]])
    flipped = tie.copy()
    flipped[0, :2] = flipped[0, 1::-1]  # within 1e-6: the top-1 class changes
    fp32 = compare(flipped, tie)
    assert not fp32["verified"] and fp32["worst_image"] == 0 and fp32["top1_agreement"] == pytest.approx(2 / 3)
    assert "image 0's top-1 class differs from the whole model's" in failure(fp32)
    assert compare(flipped, tie, "int8")["verified"]  # a near-tie: the bound allows it
    assert compare(flipped, tie, quantized=True)["verified"]


def test_logits_that_are_not_finite_are_infinitely_off():
    result = compare(_off(1, np.nan), REFERENCE, "int8", quantized=True)
    assert not result["verified"] and result["worst_image"] == 1 and result["max_abs_diff"] == np.inf
    assert "max |dlogit| inf" in failure(result)


def test_the_bounds_add_up_for_int8_graphs_and_a_run_without_verify_passes():
    assert bound_for("fp16") == EXCHANGE_BOUNDS["fp16"] < EXCHANGE_BOUNDS["bf16"] < EXCHANGE_BOUNDS["int8"]
    assert bound_for("int8", quantized=True) == EXCHANGE_BOUNDS["int8"] + QUANTIZED_BOUND
    assert failure({"max_abs_diff": 1.0}) is None and failure({"verified": True}) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8])
def test_each_block_s_crc_is_zlib_s_crc_of_its_bytes_in_both_runtimes(dtype):
    wire = (torch.randn(84) * 50).to(dtype)  # a flat wire cut into blocks of 36, 0 and 48 elements
    counts = [36, 0, 48]
    seen = TorchTensors().numpy(wire)  # the PyTorch runtime's view of it
    torch_crcs = block_crcs(seen.view(np.uint8).reshape(84, -1), counts, np.zeros(3, np.int64))
    raw = wire.view(torch.uint8).numpy().tobytes()
    device = np.frombuffer(raw, seen.dtype)  # the device runtime's copy of the same bytes
    numpy_crcs = block_crcs(device.view(np.uint8).reshape(84, -1), counts, np.zeros(3, np.int64))
    size = len(raw) // 84
    assert list(torch_crcs) == list(numpy_crcs) == [zlib.crc32(raw[:36 * size]), 0, zlib.crc32(raw[36 * size:])]


def test_a_changed_byte_names_the_point_the_sender_and_the_receiver():
    wire = np.arange(40, dtype=np.float32).reshape(5, 8)
    sent = block_crcs(wire, [2, 0, 3], np.zeros(3, np.int64))
    check_blocks(wire, [2, 0, 3], sent, np.zeros(3, np.int64), point=1, rank=1)  # intact: no error
    wire.view(np.uint8)[4, 0] ^= 0x80
    with pytest.raises(ExchangeCorrupted, match="shuffle point 1: the block rank 2 sent to rank 1 arrived corrupted"):
        check_blocks(wire, [2, 0, 3], sent, np.zeros(3, np.int64), point=1, rank=1)


def test_the_elastic_timeline_names_the_worst_image_by_its_place_in_the_images():
    from decnn.inference.settings import InferConfig
    from decnn.serve.timed_run import _compare

    refs = {0: torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 1: torch.tensor([[2.0, 0.0], [0.0, 2.0]])}
    off = refs[0] + torch.tensor([[0.0, 0.0], [0.5, 0.0]])  # batch 0's second image (image 1)
    calls = [(1, refs[1], None), (0, off, None), (1, refs[1], None)]  # the caller cycles the batches
    result = _compare(InferConfig(random_init=True), calls, refs, starts=[0, 2])
    assert not result["verified"] and result["worst_image"] == 1, result
