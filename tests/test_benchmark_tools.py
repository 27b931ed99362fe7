"""The benchmark tools whose figures RESULTS.md reports: the zoo's training recipes (a few
iterations on the CPU) and the block-work counter behind the quality benchmark's compute ratios."""

import pytest
import torch

from cachekern import reference_models

pytest.importorskip("diffusers")


@pytest.mark.parametrize("name", ["flux-photos", "unet-digits", "pixart-scenes"])
def test_a_recipe_trains_saves_and_loads(name, tmp_path):
    pytest.importorskip({"flux-photos": "skimage", "unet-digits": "sklearn"}.get(name, "torch"))
    from benchmarks.zoo import train

    path = train.train(name, iterations=3, batch=4, device="cpu", cache_dir=tmp_path,
                       log_every=1, sample_steps=1)
    folder = path.parent
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "samples.png", "data.png",
                                                  "train_log.json"}
    ref = reference_models.load(name, cache_dir=tmp_path)
    assert ref.meta["iterations"] == 3
    before = reference_models.create(name, seed=0)
    changed = [not torch.equal(a, b) for a, b in zip(before.model.parameters(),
                                                      ref.model.parameters())]
    assert any(changed)   # the EMA moved from the initial weights


@pytest.mark.parametrize("name", ["unet-digits", "wan-motion"])
def test_a_classifier_trains_saves_and_loads(name, tmp_path):
    pytest.importorskip("sklearn")
    from benchmarks.zoo import train_classifier

    from cachekern.reference_models import classifier

    path, accuracy = train_classifier.train(name, iterations=3, device="cpu", cache_dir=tmp_path)
    assert path == classifier.zoo_path(name, tmp_path) and 0 <= accuracy <= 1
    net = classifier.load(name, cache_dir=tmp_path)
    assert net.config["num_classes"] == reference_models.RECIPES[name].NUM_CLASSES


def test_the_photo_and_digit_data_are_in_range():
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from benchmarks.zoo.data import Digits, PhotoCrops

    g = torch.Generator().manual_seed(0)
    crops, labels = PhotoCrops(reference_models.flux_photos.PHOTOS).batch(5, g)
    assert crops.shape == (5, 3, 64, 64) and labels.max() < 8
    digits = Digits()
    assert digits.images.shape == (1797, 1, 32, 32) and set(digits.labels.tolist()) == set(range(10))
    for x in (crops, digits.images):
        assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1


def flux_call(ref):
    return ref.example_call(torch.device("cpu"))


def test_block_work_counts_steps_exactly_and_leaves_no_wrapper_behind():
    from benchmarks.block_work import BlockWork

    ref = reference_models.create("flux-photos")
    work = BlockWork(ref.model, flux_call(ref))
    with work:
        ref.sample([0, 1], [0, 1], steps=4)
        four = work.flops
        work.reset()
        ref.sample([0, 1], [0, 1], steps=2)
        two = work.flops
    assert four == 2 * two == 4 * 2 * 2 * work.block_flops_per_sample  # steps × CFG × batch
    assert all("forward" not in vars(module) for module, _ in work.units)


def test_block_work_counts_less_under_a_cache_that_skips():
    from benchmarks.block_work import BlockWork
    from diffusers.hooks import FirstBlockCacheConfig

    ref = reference_models.create("flux-photos")
    work = BlockWork(ref.model, flux_call(ref))
    with work:
        ref.sample([0], [0], steps=6, guidance_scale=1.0)
        full = work.flops
        work.reset()
        ref.model.enable_cache(FirstBlockCacheConfig(threshold=10.0))   # skips after step 0
        try:
            ref.sample([0], [0], steps=6, guidance_scale=1.0)
        finally:
            ref.model.disable_cache()
    block0 = sum(own for module, own in work.units
                 if any(module is m for m in ref.model.transformer_blocks[0].modules()))
    assert work.flops == full / 6 + 5 * block0      # one full step, then block 0 alone


def quality_row(method, setting, psnr, model="wan-motion"):
    return dict(model=model, scheduler="unipc", method=method, setting=setting, steps=30,
                compute=0.5, speedup_compute=2.0, wall_s=None, speedup_wall=float("nan"),
                psnr_db=psnr, ssim=0.9, rel_l2=0.1, psnr_converged_db=psnr - 1.0,
                class_accuracy=0.25, fd=14.0, error="")


def test_quality_merge_keeps_the_first_runs_row_once_and_refuses_other_models(tmp_path):
    from benchmarks import quality, quality_merge

    uncached = quality_row("uncached", "30 steps", 100.0)
    first = [uncached, quality_row("fewer steps", "15 steps", 44.84)]
    second = [uncached, quality_row("fewer steps", "15 steps", 1.0),
              quality_row("diffusers MagCache", "threshold=0.1", 35.15)]
    quality.write_csv(first, tmp_path / "a")
    quality.write_csv(second, tmp_path / "b")
    rows = quality_merge.main([str(tmp_path / "m"), str(tmp_path / "a.csv"),
                               str(tmp_path / "b.csv"), "--title", "t", "--environment", "e",
                               "--command", "run a", "--command", "run b"])
    assert [(r["method"], r["psnr_db"]) for r in rows] == [
        ("uncached", 100.0), ("fewer steps", 44.84), ("diffusers MagCache", 35.15)]
    table = (tmp_path / "m.md").read_text()
    assert "`run a` and `run b`" in table and "| 0.5 | fewer steps | 15 steps |" in table
    assert quality_merge.read_rows(tmp_path / "m.csv")[1]["psnr_db"] == 44.84

    quality.write_csv([quality_row("uncached", "28 steps", 100.0, model="pixart-scenes")],
                      tmp_path / "c")
    with pytest.raises(ValueError, match="different models"):
        quality_merge.merge([quality_merge.read_rows(tmp_path / p) for p in ("a.csv", "c.csv")])


def test_quality_merge_reads_a_csv_from_before_the_data_columns(tmp_path):
    import csv

    from benchmarks import quality, quality_merge

    quality.write_csv([quality_row("uncached", "30 steps", 100.0)], tmp_path / "a")
    with open(tmp_path / "a.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    older = [k for k in rows[0] if k not in ("class_accuracy", "fd")]
    with open(tmp_path / "old.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=older, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    [row] = quality_merge.read_rows(tmp_path / "old.csv")
    assert row["psnr_db"] == 100.0 and row["fd"] != row["fd"]     # NaN: not measured
    with open(tmp_path / "bad.csv", "w", newline="") as f:
        csv.DictWriter(f, fieldnames=older[:3]).writeheader()
    with pytest.raises(ValueError, match="not a benchmarks.quality CSV"):
        quality_merge.read_rows(tmp_path / "bad.csv")


def test_tune_vs_sweep_leaves_out_only_settings_built_above_every_budget():
    """fixed_compute reads what a setting is built to run at (a static schedule's pattern,
    Block Caching's target) and nothing else: the online thresholds, whose compute is only
    known once run, are always swept."""
    from benchmarks import quality_methods as methods
    from benchmarks.tune_vs_sweep import fixed_compute

    Setting = methods.Setting
    assert fixed_compute(Setting(methods.TEACACHE_STATIC, "CC.C.C.. taylor order 2", 8)) == 0.5
    assert fixed_compute(Setting(f"{methods.BLOCK_CACHING_FITTED} order 1",
                                 "blocks=all target_compute=0.7 scale_shift=fit", 8)) == 0.7
    assert fixed_compute(Setting(methods.TEACACHE, "threshold=0.1 coefficients=auto", 8)) is None
    assert fixed_compute(Setting(methods.UNCACHED, "8 steps", 8)) is None


def test_tune_vs_sweep_reports_held_out_scores_as_tune_minus_the_sweeps_best():
    """With --holdout, each row gains tune's and the sweep's best's (PSNR, compute) on the
    fresh samples and their difference, tune's minus the best's, with its standard error;
    without it the table is unchanged."""
    from benchmarks.tune_vs_sweep import markdown

    best = dict(method="cachekern TeaCache forecast order 1", setting="threshold=0.1",
                compute=0.321, psnr_db=39.82)
    pick = dict(speedup=3.0, method="tune: TeaCache", setting="C.C...C", compute=0.321,
                psnr_db=37.23, best=best, generations=9.6, uncached_generations=4,
                holdout=(0.3214, 37.62), best_holdout=(0.3571, 39.68), holdout_gap_se=0.4049)
    plain = markdown([pick], "m", "euler", 28, 20, 236, "env", "cmd")
    held = markdown([pick], "m", "euler", 28, 20, 236, "env", "cmd", holdout=20)
    assert "held out" not in plain and "| -2.59 |" in plain
    row = held.splitlines()[-1]
    assert row.endswith("| 37.62 dB at 0.321; 39.68 dB at 0.357; -2.06 ± 0.40 |"), row
    assert held.splitlines()[-2].count("|") == row.count("|")


def test_tune_vs_sweep_standard_error_is_the_paired_differences():
    """paired_standard_error: the sample standard deviation of the per-sample differences over
    the root of their count, written out here; unequal counts are refused, one pair has none."""
    from benchmarks.tune_vs_sweep import paired_standard_error

    g = torch.Generator().manual_seed(3)
    a = (torch.rand(7, generator=g, dtype=torch.float64) * 20 + 30).tolist()
    b = (torch.rand(7, generator=g, dtype=torch.float64) * 20 + 30).tolist()
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    expected = (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5 / len(d) ** 0.5
    assert paired_standard_error(a, b) == pytest.approx(expected, rel=1e-12)
    assert paired_standard_error(a[:1], b[:1]) is None
    with pytest.raises(ValueError, match="as many samples"):
        paired_standard_error(a, b[:6])


def test_graph_peers_time_taylorseer_from_fresh_state_and_count_its_computed_steps():
    """benchmarks.graph_peers.peer_rows with the GPU timers swapped for counting ones: each
    timed TaylorSeer generation runs from fresh state (enabled anew), and its ideal is N over
    the steps whose blocks ran (diffusers' rule: two steps, then every other one)."""
    import statistics

    from benchmarks.graph_peers import peer_rows
    from tiny_models import flux

    model, inputs, scale = flux()
    steps = 12

    class Calls:
        def restart(self, n):
            self.step = 0

        def __call__(self):
            t = 1.0 - self.step / steps
            self.step += 1
            return dict(inputs(1), timestep=torch.full((2,), t * scale))
    calls = Calls()
    eager = lambda: model(**calls())[0]      # noqa: E731
    ran = []

    def generation_ms(step, n, calls, generations=3, fresh=None):
        counts = []
        for _ in range(generations):
            after = fresh() if fresh is not None else None
            calls.restart(n)
            blocks = []
            # A block's first submodule: TaylorSeer still calls a block it forecasts.
            hook = next(iter(model.transformer_blocks[0].children())).register_forward_pre_hook(
                lambda *_: blocks.append(1))
            try:
                for _ in range(n):
                    step()
            finally:
                hook.remove()
                if after is not None:
                    after()
            counts.append(len(blocks))
        ran.append(counts)
        return statistics.median(counts)
    with torch.no_grad():
        rows, gens = peer_rows(model, eager, calls, steps, 1, lambda call, reps: (call(), 1.0)[1],
                               generation_ms, lambda call: 0)
    assert ran[0] == [steps] * 3                 # uncached: every step, every generation
    assert ran[-1] == [7] * 3                    # TaylorSeer: the same pattern each time
    uncached, cached, ideal = gens["diffusers TaylorSeer, whole blocks, eager"]
    assert ideal == steps / 7 and (uncached, cached) == (steps, 7)
