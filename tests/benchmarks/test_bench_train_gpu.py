"""The GPU training benchmark runs end to end at tiny shapes on a CPU, and its accumulation is exact.

The real run (CLIP ViT-B/32, batch 256, bf16, H100) is measured in benchmarks/RESULTS.md; here the same
code path runs with ``--quick`` so a broken script is caught before anyone books a GPU for it.
"""

from __future__ import annotations

import json
import sys
import time
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

BENCHMARK = "bench_train_gpu"


def test_quick_run_writes_every_row(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "train_gpu.json"
    rc = bench.main(["--quick", "--device", "cpu", "--max-batch-limit", "16", "--out", str(out),
                     "--commit", "abc1234"])
    assert rc == 0
    result = json.loads(out.read_text())
    for key in ("device", "date", "commit", "versions", "matmul_peak", "params", "throughput", "max_batch"):
        assert key in result, key
    assert result["status"] == "complete"
    assert result["commit"] == "abc1234"  # the device's copy has no .git: --commit is what gets recorded
    assert result["settings"]["out"] == str(out) and result["settings"]["device"] == "cpu"
    assert not out.with_name(out.name + ".tmp").exists()  # written atomically, nothing left behind
    assert result["versions"]["torch"] and result["versions"]["transformers"]
    assert result["matmul_peak"]["tflops"] > 0
    # the two sides are the same network, and the FLOP formula counts exactly their matmul weights
    params = result["params"]
    assert params["ok"] and params["polymodal"] == params["transformers"]
    assert params["matmul_formula"] == params["matmul_counted_polymodal"] == params["matmul_counted_transformers"]
    names = [row["name"] for row in result["throughput"]]
    assert names == ["polymodal eager", "transformers eager"]  # --quick compiles nothing unless asked
    for row in result["throughput"]:
        assert row["samples_per_s"] > 0 and row["mfu"] > 0 and len(row["ms_per_step_all"]) == 2
    searches = {row["name"]: row for row in result["max_batch"]}
    assert len(searches) == 5
    assert all(row["max_batch"] >= 1 for row in searches.values())
    for row in searches.values():  # samples/s at the maximum from warm steps, and labelled so
        assert row["timing_at_max"].startswith("mean of 2 steps") and row["samples_per_s_at_max"] > 0
    accum = searches["polymodal contrastive_accum (local_loss + gather)"]
    assert accum["accumulation"] and accum["max_batch"] >= accum["micro_batch"]
    assert set(result["max_effective_contrastive_batch"]) == {"polymodal", "transformers"}
    check = result["accum_equivalence"]
    assert check["ok"] and check["max_param_diff"] <= 1e-5


def test_accumulated_step_updates_parameters_like_the_full_batch_step(bench: ModuleType) -> None:
    check = bench.check_accum_equivalence(batch=8, k=2)
    assert check["loss_accum"] == pytest.approx(check["loss_full"], rel=1e-6)
    assert check["max_param_update"] > 1e-5  # the step moved the weights, so the comparison can fail
    assert check["max_param_diff"] <= 1e-5


def test_model_flops_formula(bench: ModuleType) -> None:
    """6 N T + attention + logits for CLIP ViT-B/32 at batch 256: about 11.3 TFLOP per step."""
    flops = bench.model_flops(bench.CLIP_B32, 256)
    n = bench.matmul_params(bench.CLIP_B32)
    assert n["vision_blocks"] == 12 * 12 * 768**2 and n["text_blocks"] == 12 * 12 * 512**2
    assert flops["total"] == flops["matmul"] + flops["attention"] + flops["logits"]
    assert 11.0e12 < flops["total_every_token"] < 11.6e12
    # the loss reads one token of each last block: its q, out-proj and MLP (10 d^2) and its attention
    # rows run for that token only; keys and values still for every token
    b, tv, tt, dv, dt = 256, 50, 77, 768, 512
    saved = 6 * b * 10 * (dv**2 * (tv - 1) + dt**2 * (tt - 1)) + 12 * b * (dv * (tv**2 - tv) + dt * (tt**2 - tt))
    assert flops["total_every_token"] - flops["total"] == pytest.approx(saved, rel=1e-12)


def test_max_batch_search_brackets_the_limit(bench: ModuleType) -> None:
    """Doubling then bisection finds the largest fitting batch without any GPU (a fake OOM at 100)."""
    search = bench.find_max(lambda b: 1.0 if b <= 100 else None, start=8, limit=10_000, deadline=float("inf"))
    assert search.fits <= 100 < search.fails and search.fails - search.fits <= max(1, search.fits // 16)
    capped = bench.find_max(lambda b: 1.0, start=8, limit=48, deadline=float("inf"))
    assert capped.fits == 48 and capped.capped
    unit = bench.find_max(lambda b: 1.0 if b <= 100 else None, start=8, limit=10_000, deadline=float("inf"), unit=12)
    assert unit.fits == 96 and unit.fails == 108


# ------------------------------------------------------------------------ the single GPU run must not fail


def _fake_search(fits: int = 16) -> Any:
    import bench_train_gpu as bench

    return bench.Search(fits=fits, fails=fits + 8, capped=False, out_of_time=False, ms_at_fits=2.0,
                        tries=[(fits, True), (fits + 8, False)], seconds=0.1, ms_warm_at_fits=1.0,
                        timing="mean of 2 steps after 1 untimed step at this batch")


def test_a_failing_search_is_recorded_and_earlier_results_are_already_on_disk(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The throughput rows are saved before any search starts; a search that raises becomes an error
    row, the next searches still run, and every row is saved as it finishes."""
    out = tmp_path / "train_gpu.json"
    seen: list[tuple[str, bool, int | None]] = []
    on_disk: list[dict[str, Any]] = []  # the JSON as each search starts

    def search_one(lib: str, ckpt: bool, micro: int | None, *args: Any, **kwargs: Any) -> Any:
        on_disk.append(json.loads(out.read_text()))
        seen.append((lib, ckpt, micro))
        if lib == "transformers" and not ckpt:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")  # neither OOM nor fatal
        return _fake_search()

    monkeypatch.setattr(bench, "search_one", search_one)
    rc = bench.main(["--quick", "--device", "cpu", "--skip-accum-check", "--out", str(out)])
    assert rc == 0 and len(seen) == 5
    for i, written in enumerate(on_disk):
        assert [r["name"] for r in written["throughput"]] == ["polymodal eager", "transformers eager"]
        assert "targets" in written and len(written.get("max_batch", [])) == i
    result = json.loads(out.read_text())
    assert result["status"] == "complete" and len(result["throughput"]) == 2
    rows = {r["name"]: r for r in result["max_batch"]}
    failed = rows["transformers plain"]
    assert "CUDNN_STATUS_EXECUTION_FAILED" in failed["error"] and failed["max_batch"] is None
    assert rows["transformers gradient_checkpointing_enable()"]["max_batch"] == 16  # the next one ran
    accum = rows["polymodal contrastive_accum (local_loss + gather)"]
    assert accum["micro_batch"] == 8 and seen[-1] == ("polymodal", False, 8)  # 3/4 of the plain 16
    # samples/s and MFU at the maximum come from the warm timing, the cold step is kept beside it
    plain = rows["polymodal plain"]
    assert plain["samples_per_s_at_max"] == pytest.approx(16 / 1.0 * 1e3)
    assert plain["ms_first_step_at_max"] == 2.0 and plain["timing_at_max"].startswith("mean of 2")
    assert result["max_effective_contrastive_batch"] == {"polymodal": 16, "transformers": 16}


def _max_batch_args(bench: ModuleType, *extra: str) -> Any:
    return bench.parse_args(["--quick", "--device", "cpu", *extra])


def test_an_unrecoverable_cuda_error_stops_the_searches_and_keeps_what_came_before(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def search_one(lib: str, ckpt: bool, *args: Any, **kwargs: Any) -> Any:
        calls.append(f"{lib} {ckpt}")
        if lib == "polymodal" and ckpt:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors ...")
        return _fake_search()

    monkeypatch.setattr(bench, "search_one", search_one)
    result: dict[str, Any] = {"throughput": ["kept"]}
    saved: list[str] = []
    ok = bench.run_max_batch(_max_batch_args(bench), bench.QUICK, torch.device("cpu"), None,
                             time.perf_counter() + 100, 1.0, result, lambda: saved.append(json.dumps(result)))
    assert not ok and calls == ["polymodal False", "transformers False", "polymodal True"]
    assert result["status"].startswith("stopped: unrecoverable CUDA error")
    assert [r["max_batch"] for r in result["max_batch"]] == [16, 16, None]
    assert result["max_batch"][-1]["unrecoverable"] and "illegal memory access" in result["max_batch"][-1]["error"]
    assert json.loads(saved[-1])["throughput"] == ["kept"] and len(json.loads(saved[-1])["max_batch"]) == 3


def test_searches_without_time_left_are_skipped_not_started(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "search_one", lambda *a, **k: pytest.fail("a search started without time"))
    result: dict[str, Any] = {}
    ok = bench.run_max_batch(_max_batch_args(bench, "--min-search-s", "20"), bench.QUICK, torch.device("cpu"),
                             None, time.perf_counter() + 5, 1.0, result, lambda: None)
    assert ok and len(result["max_batch"]) == 5
    assert all(r["max_batch"] is None and "skipped" in r for r in result["max_batch"])
    assert result["max_effective_contrastive_batch"] == {"polymodal": None, "transformers": None}
    # inside a search, even the first try (no timing to predict from yet) respects the deadline ...
    late = bench.find_max(lambda b: pytest.fail("tried past the deadline"), start=8, limit=64,
                          deadline=time.perf_counter() - 1)
    assert late.out_of_time and late.fits == 0 and late.tries == []
    # ... and after a fitting try (8 in 1 s), one predicted to overrun it (16: 3 s > 2 s) is not started
    timed = bench.find_max(lambda b: 1000.0 if b == 8 else pytest.fail("started a try predicted to overrun"),
                           start=8, limit=1024, deadline=time.perf_counter() + 2)
    assert timed.out_of_time and timed.fits == 8 and timed.tries == [(8, True)]


def test_a_crash_writes_what_was_measured(bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "train_gpu.json"

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(bench, "run_throughput", boom)
    with pytest.raises(RuntimeError, match="boom"):
        bench.main(["--quick", "--device", "cpu", "--skip-accum-check", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["status"].startswith("crashed: RuntimeError('boom')")
    assert result["matmul_peak"]["tflops"] > 0 and result["params"]["ok"]


@pytest.mark.parametrize("message, oom", [
    ("CUDA out of memory. Tried to allocate 20.00 GiB", True),
    ("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported", True),
    ("cuDNN error: CUDNN_BACKEND_EXECUTION_PLAN: Unable to find an engine to execute this computation", True),
    ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
    ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
    ("mat1 and mat2 shapes cannot be multiplied (8x64 and 32x64)", False),
    ("CUDA error: an illegal memory access was encountered", False),
    ("CUDA error: device-side assert triggered", False),
])
def test_is_oom_knows_every_way_a_gpu_runs_out_of_memory(bench: ModuleType, message: str, oom: bool) -> None:
    assert bench._is_oom(RuntimeError(message)) is oom
    assert bench._is_oom(torch.cuda.OutOfMemoryError("x"))
    assert not bench._is_oom(KeyboardInterrupt())


def _throughput_row(name: str, samples_per_s: float | None) -> dict[str, Any]:
    if samples_per_s is None:
        return {"name": name, "skipped": "budget"}
    return {"name": name, "samples_per_s": samples_per_s, "mfu": samples_per_s / 1000}


def test_the_peer_is_the_faster_transformers_row(bench: ModuleType) -> None:
    rows = [_throughput_row("polymodal eager", 100), _throughput_row("polymodal compiled", 150),
            _throughput_row("transformers eager", 120), _throughput_row("transformers compiled", 90)]
    speed = bench.speedup_targets(rows)["speedup_vs_peer"]
    assert (speed["ours"], speed["peer"]) == ("polymodal compiled", "transformers eager")
    assert speed["value"] == pytest.approx(150 / 120) and not speed["met"]
    rows[-1] = _throughput_row("transformers compiled", 200)
    assert bench.speedup_targets(rows)["speedup_vs_peer"]["peer"] == "transformers compiled"
    rows[-1] = _throughput_row("transformers compiled", None)  # skipped for the budget: eager is the peer
    assert bench.speedup_targets(rows)["speedup_vs_peer"]["peer"] == "transformers eager"
    missing = bench.speedup_targets(rows[:2])["speedup_vs_peer"]
    assert missing["value"] is None and missing["met"] is None and "transformers" in missing["why"]


def test_residual_rows_are_compared_best_against_best_and_setting_by_setting(bench: ModuleType) -> None:
    bf16 = bench.RESIDUAL_SUFFIX
    rows = [_throughput_row("polymodal compiled", 150), _throughput_row(f"polymodal compiled{bf16}", 180),
            _throughput_row("transformers compiled", 100), _throughput_row(f"transformers compiled{bf16}", 120)]
    speed = bench.speedup_targets(rows)["speedup_vs_peer"]
    assert (speed["ours"], speed["peer"]) == (f"polymodal compiled{bf16}", f"transformers compiled{bf16}")
    assert speed["value"] == pytest.approx(1.5) and speed["met"]
    by = speed["by_residual"]
    assert by["fp32"]["value"] == pytest.approx(1.5) and by["fp32"]["peer"] == "transformers compiled"
    assert by["bf16"]["value"] == pytest.approx(1.5) and by["bf16"]["ours"] == f"polymodal compiled{bf16}"
    rows[-1] = _throughput_row(f"transformers compiled{bf16}", None)  # the peer's bf16 row never ran
    assert set(bench.speedup_targets(rows)["speedup_vs_peer"]["by_residual"]) == {"fp32"}


def test_both_sides_keep_a_bf16_residual_stream_when_asked(bench: ModuleType) -> None:
    """The peer gets polymodal's setting through hooks: every CLIPEncoderLayer then reads bf16."""
    batch = bench.make_batch(bench.QUICK, 2, torch.device("cpu"))
    for bf16 in (False, True):
        hf = bench.build_hf(bench.QUICK, bf16_residual=bf16)
        pm = bench.build_polymodal(bench.QUICK, bf16_residual=bf16)
        read: list[torch.dtype] = []
        norms = [m for m in hf.modules() if type(m).__name__ == "CLIPEncoderLayer"]
        # polymodal's text tower: its image tower's LayerNorms already read bf16 on a CPU, whose autocast (unlike
        # CUDA's) leaves layer_norm in the input's dtype, and the patch embeddings are bf16 there
        norms = [layer.layer_norm1 for layer in norms] + [b.ln_1 for b in pm.text_encoder.transformer.blocks]
        for norm in norms:
            norm.register_forward_hook(lambda m, inp, out: read.append(inp[0].dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hf(input_ids=batch[1], pixel_values=batch[0], return_loss=True)
            pm(*batch)
        assert len(read) == len(norms) == bench.QUICK.vision_layers + 2 * bench.QUICK.text_layers
        assert set(read) == {torch.bfloat16 if bf16 else torch.float32}
    args = bench.parse_args(["--quick"])
    assert args.residual == "fp32" and bench.residual_settings(args) == ("fp32",)
    assert bench.residual_settings(bench.parse_args(["--quick", "--amp", "bf16"])) == ("bf16", "fp32")
    with pytest.raises(SystemExit):
        bench.parse_args(["--quick", "--residual", "bf16"])  # fp32 autocast on a CPU: no bf16 stream


def _keeps_bf16_residual(model: torch.nn.Module) -> bool:
    """Whether a benchmark model was built with the bf16 stream: polymodal's flag, or the peer's hooks."""
    from polymodal.modules.transformer import Transformer

    stacks = [m.bf16_residual for m in model.modules() if isinstance(m, Transformer)]
    if stacks:
        assert len(set(stacks)) == 1
        return stacks[0]
    hooks = [model.vision_model.pre_layrnorm._forward_hooks, model.text_model.embeddings._forward_hooks]
    assert len({bool(h) for h in hooks}) == 1
    return bool(hooks[0])


def test_every_side_and_search_model_is_built_with_its_rows_setting(bench: ModuleType) -> None:
    device = torch.device("cpu")
    pm = bench.build_polymodal(bench.QUICK, bf16_residual=True)
    hf = bench.build_hf(bench.QUICK, bf16_residual=True)
    sides = bench.make_sides(pm, hf, bench.QUICK, device, torch.bfloat16, None, ("bf16", "fp32"))
    assert [s.name for s in sides] == [
        f"polymodal eager{bench.RESIDUAL_SUFFIX}", f"transformers eager{bench.RESIDUAL_SUFFIX}",
        "polymodal eager", "transformers eager"]
    for side in sides:
        assert _keeps_bf16_residual(side.model) == side.name.endswith(bench.RESIDUAL_SUFFIX), side.name
    # the copies start from the same weights
    torch.testing.assert_close(sides[0].model.state_dict(), sides[2].model.state_dict())
    for lib in ("polymodal", "transformers"):
        for bf16 in (False, True):
            model, _, _ = bench._search_model(lib, False, None, bench.QUICK, device, None, bf16)
            assert _keeps_bf16_residual(model) == bf16, (lib, bf16)


def test_a_full_run_needs_cuda_and_quick_falls_back_to_cpu(bench: ModuleType, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert bench.parse_args(["--quick"]).device == "cpu"
    assert bench.parse_args([]).device == "cuda"
    out = tmp_path / "train_gpu.json"
    assert bench.main(["--out", str(out)]) == 2 and not out.exists()


def test_help_renders(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--help"])
    assert exit_info.value.code == 0 and "--commit" in capsys.readouterr().out


def test_the_checkouts_src_goes_first_on_sys_path(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed or not, the benchmarks import the checkout they are stamped with."""
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "src")])
    import provenance

    provenance.ensure_polymodal_importable(tmp_path)
    assert sys.path[0] == str(tmp_path / "src")


def test_accumulated_step_refuses_a_parameter_without_gradient(bench: ModuleType) -> None:
    """The check that would have caught autocast's cast cache dropping weight gradients."""
    device = torch.device("cpu")
    model = bench.build_polymodal(bench.QUICK)
    model.register_parameter("unused", torch.nn.Parameter(torch.zeros(3)))
    step = bench.polymodal_accum_step(model, bench.make_optimizer(model, device), device, None, 4)
    with pytest.raises(RuntimeError, match="1 trainable parameter.*without a gradient.*unused"):
        step(*bench.make_batch(bench.QUICK, 8, device))


def test_accumulation_frees_the_logits_before_re_encoding() -> None:
    """contrastive_accum_step must not hold the B x B logits while it re-encodes micro-batches (GBs at
    the batches the accumulated max-batch row reaches); what callers read stays."""
    from polymodal.losses import itc_loss
    from polymodal.train.contrastive_accum import contrastive_accum_step, split_micro_batches

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    logits: list[weakref.ref[torch.Tensor]] = []
    alive_while_re_encoding: list[bool] = []

    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_grad_enabled():  # the second pass
            alive_while_re_encoding.append(any(ref() is not None for ref in logits))
        return net(x), net(x).flip(1)

    def loss_fn(img: torch.Tensor, txt: torch.Tensor) -> Any:
        out = itc_loss(img, txt, 2.0)
        logits.extend([weakref.ref(out.logits_per_image), weakref.ref(out.logits_per_text)])
        return out

    out = contrastive_accum_step(encode, split_micro_batches(torch.randn(12, 4), 3), loss_fn)
    assert alive_while_re_encoding == [False, False, False]
    assert out.loss_output.logits_per_image is None and out.loss_output.acc_i2t.shape == ()
    assert not out.loss_output.loss.requires_grad and out.features[0].shape == (12, 3)
    assert net.weight.grad is not None


def test_profiles_and_dynamo_counters_are_readable_on_cpu(bench: ModuleType) -> None:
    """The GPU run records them per side; here the same code reads the CPU's ATen ops."""
    device = torch.device("cpu")
    batch = bench.make_batch(bench.QUICK, 4, device)
    hf = bench.build_hf(bench.QUICK)
    found = bench.profile_step(bench.hf_step(hf, bench.make_optimizer(hf, device), device, None), batch, device)
    assert any("scaled_dot_product" in name for name in found["attention"]["ops"]), found
    # polymodal trains on a CPU with matmul-softmax-matmul on purpose (modules/attention.py): visible too
    pm = bench.build_polymodal(bench.QUICK)
    found = bench.profile_step(bench.polymodal_step(pm, bench.make_optimizer(pm, device), device, None),
                               batch, device)
    ops = found["attention"]["ops"]
    assert "aten::_softmax" in ops and not any("scaled_dot_product" in n for n in ops), found
    time = found["time"]
    assert time["ms_per_step"]["matmul"] > 0, time  # (a CPU AdamW runs plain ops: no "optimizer" kind)
    assert time["total_ms"] == pytest.approx(sum(time["ms_per_step"].values()))
    assert 0 < time["total_ms"] and 0 < time["wall_ms_profiled"]
    assert time["top"] and all(k["kind"] == bench.time_kind(k["name"]) for k in time["top"])
    counts = bench.dynamo_counts()
    assert {"graph_breaks", "recompiles"} <= set(counts)
    delta = bench.dynamo_delta(counts, counts)
    assert delta["graph_breaks"] == 0 and delta["recompiles"] == 0


@pytest.mark.parametrize("name, kind", [
    ("nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopB_TNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("triton_tem_fused_mm_0", "matmul"),
    ("aten::addmm", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7", "attention"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void cudnn::cnn::wgrad_alg0_engine<float, 128, 6>", "conv"),
    ("Memcpy DtoD (Device -> Device)", "copy / cast / fill"),
    ("triton_per_fused__to_copy_add_native_layer_norm_backward_view_64", "fused by Inductor"),
    ("void at::native::vectorized_layer_norm_kernel<float, float, false>", "elementwise / norm / other"),
    ("void precomputed_convolve_sgemm<__nv_bfloat16, 128, 6, 7, 3, 3, 5, 1, false>", "conv"),
])
def test_kernel_names_are_sorted_into_kinds(bench: ModuleType, name: str, kind: str) -> None:
    assert bench.time_kind(name) == kind


def test_gpu_time_counts_kernels_once(bench: ModuleType) -> None:
    """A range annotated on the GPU's timeline spans kernels counted on their own: it is left out."""
    from types import SimpleNamespace

    def kernel(name: str, us: float, annotation: bool = False) -> SimpleNamespace:
        return SimpleNamespace(key=name, device_type="DeviceType.CUDA", self_device_time_total=us, count=2,
                               is_user_annotation=annotation)

    events = [
        kernel("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_coopA_bias_TNT", 4000.0),
        kernel("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", 3000.0),
        kernel("Optimizer.step#AdamW.step", 4000.0, annotation=True),
        kernel("Optimizer.zero_grad#AdamW.zero_grad", 10.0),  # torch without is_user_annotation: by its name
        kernel("Torch-Compiled Region: 0/0", 9000.0),
        SimpleNamespace(key="aten::addmm", device_type="DeviceType.CPU", self_cpu_time_total=9000.0, count=2),
    ]
    time = bench.time_by_kind(events, on_gpu=True, steps=2)
    assert time["ms_per_step"] == {"matmul": 2.0, "optimizer": 1.5}
    assert time["total_ms"] == 3.5 and [k["calls"] for k in time["top"]] == [1, 1]
