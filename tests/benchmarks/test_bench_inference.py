"""Smoke test of benchmarks/bench_inference.py: tiny shapes end to end, so the script cannot rot.

The benchmark is a script, not a package module, so it is loaded from its path. Timings are not
checked (they depend on the machine), only that every row was measured and that both sides of each
comparison are the same size, which is what makes the ratios meaningful.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("transformers")

BENCHMARK = "bench_inference"


def test_quick_run_writes_rows_with_matching_sizes(bench: ModuleType, 
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "inference.json"
    argv = [
        "--quick",
        "--batch",
        "4",
        "--caption-batch",
        "2",
        "--new-tokens",
        "4",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--out",
        str(out),
    ]
    assert bench.main(argv) == 0

    result = json.loads(out.read_text())
    tasks = [row["task"] for row in result["rows"]]
    assert tasks == [
        "image embedding",
        "text embedding",
        "captioning, KV cache",
        "captioning, no KV cache (both)",
    ]
    for row in result["rows"]:
        assert row["ratio"] > 0 and row["polymodal"]["best"] > 0 and row["peer"]["best"] > 0
    for side in ("embedding", "captioning"):
        p, q = result["params"][side]["polymodal"], result["params"][side]["peer"]
        assert abs(p - q) / q < 0.05, (side, p, q)
    assert result["params"]["embedding"]["embed_dim"] == result["shapes"]["embed_dim"]
    assert "same_function_max_abs_diff" in result["params"]["embedding"]  # recorded with the timings
    for key in ("torch", "transformers", "cpu", "cores", "device"):
        assert key in result["machine"]
    assert result["heap"] == (os.environ.get("GLIBC_TUNABLES") or "glibc defaults")
    assert "| image embedding |" in capsys.readouterr().out


def test_the_timed_models_must_compute_the_same_embeddings(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """polymodal is timed with the peer's own weights; a mapping that changed the function is refused."""
    import torch

    from polymodal.hub import native_clip

    s = bench.PRESETS["tiny"]
    torch.manual_seed(0)
    ours, peer = bench.build_polymodal_dual_encoder(s).eval(), bench.build_hf_clip(s).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, s.image_size, s.image_size, generator=gen)
    ids, mask = bench._texts(s, 3, torch.device("cpu"), gen)
    assert bench._load_peer_weights(ours, peer, s, images, ids, mask) < 1e-5
    real = native_clip.clip_state_dict

    def without_ln_post(hf, vision_depth, text_depth):
        out = real(hf, vision_depth, text_depth)
        out["image_encoder.ln_post.bias"] = out["image_encoder.ln_post.bias"] + 0.5
        return out

    monkeypatch.setattr(native_clip, "clip_state_dict", without_ln_post)
    with pytest.raises(RuntimeError, match="not the same model"):
        bench._load_peer_weights(ours, peer, s, images, ids, mask)


@pytest.mark.skipif(sys.platform != "linux", reason="the re-run sets a glibc variable")
@pytest.mark.parametrize("flag", [[], ["--glibc-defaults"]])
def test_the_script_reruns_itself_with_the_heap_kept_unless_told_not_to(tmp_path: Path, flag: list[str], script_heap) -> None:
    from provenance import STEADY_HEAP_TUNABLES

    out = tmp_path / "inference.json"
    args = ["--quick", "--only", "embedding", "--batch", "2", "--repeats", "1", "--warmup", "0", "--out", str(out), *flag]
    heap, printed = script_heap(args, out)
    assert heap == ("glibc defaults" if flag else STEADY_HEAP_TUNABLES)
    assert f"heap: {heap}" in printed
