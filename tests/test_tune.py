"""cachekern.tune on a tiny FluxTransformer2DModel: the setting it picks meets its target when
measured again on the evaluation seeds, min_psnr is honoured with the fastest such setting, the
saved result loads back for the same model only, and bad targets get clear errors."""

import math

import pytest
import torch

import cachekern
from cachekern.metrics import psnr

diffusers = pytest.importorskip("diffusers")

from cachekern import TeaCache  # noqa: E402
from tiny_models import FAMILY_STEPS, flux, flux_sample, make_inputs, sample_family  # noqa: E402
from tiny_models import tiny_flux  # noqa: E402

STEPS = 8


@pytest.fixture(scope="module")
def model():
    return tiny_flux()


def run_of(model):
    """run(seed): one generation, as a user makes it; the final latents."""
    def run(seed):
        inp = make_inputs(seed)
        return inp["x"] - flux_sample(model, inp, steps=STEPS).sum(0) / STEPS
    return run


@pytest.fixture(scope="module")
def tuned(model):
    return cachekern.tune(model, run_of(model), speedup=2.0, evaluation_seeds=(1, 2),
                          calibration_seeds=(7,), progress=False)


def test_the_chosen_setting_meets_the_speedup_when_measured_again(model, tuned):
    assert tuned.compute <= 0.5 and tuned.speedup >= 2.0
    # two evaluation seeds, one calibration seed recorded once for both methods
    assert tuned.uncached_generations == 3
    # each candidate screened on seed 1, the finalists measured on seed 2 as well
    assert tuned.generations == pytest.approx(3 + sum(r["compute"] * len(r["seeds"])
                                                      for r in tuned.table))
    assert tuned.generations <= 12          # the default max_generations
    from cachekern.tune import FINALISTS

    finalists = [r for r in tuned.table if r["seeds"] == [1, 2]]
    assert 1 <= len(finalists) < len(tuned.table)
    assert all(r["seeds"] == [1] for r in tuned.table if r not in finalists)
    # the finalists are the best screened within the budget (by seed 1 alone): the first
    # FINALISTS always, the next while the budget lasts
    screened = sorted((r for r in tuned.table if r["compute"] <= r["limit"] + 1e-9),
                      key=lambda r: -r["psnrs"][0])
    assert all(r in finalists for r in screened[:FINALISTS])
    for r in screened:                      # one left out did not fit what was left
        assert r in finalists or tuned.generations + r["compute"] > 12
    run = run_of(model)
    with torch.no_grad():
        references = {seed: run(seed) for seed in (1, 2)}
    with cachekern.patched(model, tuned.policy) as handle:
        scores = []
        for seed, reference in references.items():
            handle.reset()
            scores.append(psnr(reference.float(), run(seed).float()))
        stats = handle.stats()
    assert stats["samples_computed"] / (stats["samples_computed"] + stats["samples_skipped"]) \
        == pytest.approx(tuned.compute)
    assert sum(scores) / 2 == pytest.approx(tuned.psnr, rel=1e-9)
    # the best of what it tried within the budget, static and online forecasts among them
    # the online accumulator counts as within the budget a step under it (its compute varies)
    assert all(r["limit"] == pytest.approx(0.5 - (1 / STEPS if r["kind"] == "online" else 0))
               for r in tuned.table)
    within = [r for r in finalists if r["compute"] <= r["limit"]]
    assert tuned.psnr == max(r["psnr"] for r in within)
    assert {r["kind"] for r in tuned.table} == {"static", "online", "blocks"}
    assert math.isfinite(tuned.psnr) and 0 < tuned.ssim <= 1 or math.isnan(tuned.ssim)


def test_min_psnr_picks_the_fastest_setting_that_reaches_it(model, tuned):
    goal = sorted(r["psnr"] for r in tuned.table)[len(tuned.table) // 2]
    result = cachekern.tune(model, run_of(model), min_psnr=goal, evaluation_seeds=(1, 2),
                            calibration_seeds=(7,), progress=False)
    assert result.psnr >= goal
    # the fastest of those that reach it (a setting that never skips is no answer)
    # among the finalists: measured on both seeds
    assert result.compute == min(r["compute"] for r in result.table
                                 if r["psnr"] >= goal and r["compute"] < 1 and
                                 len(r["seeds"]) == 2)
    with pytest.raises(ValueError, match="min_psnr: no candidate reaches 1000.0 dB; the "
                                         "closest was"):
        cachekern.tune(model, run_of(model), min_psnr=1000.0, evaluation_seeds=(1,),
                       calibration_seeds=(7,), progress=False)


def test_save_and_load_round_trip_and_check_the_model(model, tuned, tmp_path):
    path = tmp_path / "tuned.cachekern"
    tuned.save(path)
    policy = cachekern.load_tuned(path, model, num_inference_steps=STEPS)
    assert policy == tuned.policy
    other = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
        axes_dims_rope=[4, 6, 6])
    with pytest.raises(ValueError, match="target: tuned for a FluxTransformer2DModel with 3 "
                                         "blocks, got a FluxTransformer2DModel with 4"):
        cachekern.load_tuned(path, other)
    with pytest.raises(ValueError, match="num_inference_steps: tuned for 8 steps, got 28"):
        cachekern.load_tuned(path, model, num_inference_steps=28)
    (tmp_path / "bad").write_text("{}")
    with pytest.raises(ValueError, match="is not a cachekern.tune result"):
        cachekern.load_tuned(tmp_path / "bad", model)
    pytest.importorskip("matplotlib")
    tuned.plot(tmp_path / "tune.png")
    assert (tmp_path / "tune.png").stat().st_size > 1000


class _PerCallFlops:
    """A plain count of the FLOPs each block really runs: every call of a block is counted
    by its own FlopCounterMode, whatever wrapper or cache sits around it."""

    def __init__(self, blocks):
        from torch.utils.flop_counter import FlopCounterMode

        self.flops = [0] * len(blocks)
        self.calls = [0] * len(blocks)
        self.hooks, open_counters = [], {}

        def before(i):
            def hook(module, args):
                open_counters[i] = FlopCounterMode(display=False)
                open_counters[i].__enter__()
            return hook

        def after(i):
            def hook(module, args, output):
                counter = open_counters.pop(i)
                counter.__exit__(None, None, None)
                self.flops[i] += counter.get_total_flops()
                self.calls[i] += 1
            return hook
        for i, block in enumerate(blocks):
            self.hooks += [block.register_forward_pre_hook(before(i)),
                           block.register_forward_hook(after(i))]

    def remove(self):
        for hook in self.hooks:
            hook.remove()


def test_block_caching_candidates_count_the_flops_that_really_ran(model, tmp_path):
    """methods=("blockcaching",): the pick is a BlockCaching whose compute is the share of the
    blocks' FLOPs that ran (FLUX's double- and single-stream blocks differ), checked against
    a plain per-call count; it saves with its profile and loads back equal."""
    result = cachekern.tune(model, run_of(model), speedup=2.0, evaluation_seeds=(1, 2),
                            calibration_seeds=(7,), methods=("blockcaching",), progress=False)
    assert isinstance(result.policy, cachekern.BlockCaching) and result.method == "BlockCaching"
    assert result.uncached_generations == 3 and {r["kind"] for r in result.table} == {"blocks"}
    assert result.compute <= 0.5
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    run = run_of(model)
    uncached = _PerCallFlops(blocks)
    with torch.no_grad():
        references = {seed: run(seed) for seed in (1, 2)}
    uncached.remove()
    assert uncached.flops[0] != uncached.flops[-1]      # the two kinds of block differ
    counted = _PerCallFlops(blocks)
    with cachekern.patched(model, result.policy) as handle:
        scores = []
        for seed, reference in references.items():
            handle.reset()
            scores.append(psnr(reference.float(), run(seed).float()))
    counted.remove()
    assert sum(counted.flops) / sum(uncached.flops) == pytest.approx(result.compute, rel=1e-9)
    assert sum(counted.calls) < sum(uncached.calls)
    assert sum(scores) / 2 == pytest.approx(result.psnr, rel=1e-9)
    path = tmp_path / "tuned.cachekern"
    result.save(path)
    loaded = cachekern.load_tuned(path, model, num_inference_steps=STEPS)
    assert isinstance(loaded, cachekern.BlockCaching)
    assert loaded.profile.change == result.policy.profile.change
    assert loaded.schedule() == result.policy.schedule()
    assert (loaded.delta, loaded.forecast_order, loaded.scale_shift) == \
        (result.policy.delta, result.policy.forecast_order, result.policy.scale_shift)


def test_the_default_evaluation_seeds_are_as_many_as_leave_the_screen_its_room(model):
    from cachekern.tune import (FINALISTS, MAX_EVALUATION_SEEDS, SCREENED, SURVIVORS,
                                evaluation_seed_count)

    def room(n, compute, budget=12.0):      # what the screen has after the held-back runs:
        # the finalists on the second seed, the survivors on the others
        return budget - n - 1 - (FINALISTS + SURVIVORS * (n - 2)) * compute

    for speedup, expected in ((1.5, 2), (2.0, 3), (3.0, 4), (5.0, 4), (None, 2)):
        n = evaluation_seed_count(speedup)
        compute = 1 / speedup if speedup else 0.6
        assert n == expected
        assert n == 2 or room(n, compute) >= SCREENED * compute - 1e-9
        assert n == MAX_EVALUATION_SEEDS or room(n + 1, compute) < SCREENED * compute
    assert evaluation_seed_count(3.0, max_generations=6.0) == 2
    # tune takes them from 0 on, skipping its calibration seeds
    result = cachekern.tune(model, run_of(model), speedup=3.0, calibration_seeds=(1,),
                            progress=False)
    assert {s for r in result.table for s in r["seeds"]} == {0, 2, 3, 4}
    assert result.uncached_generations == 5
    # Successive halving: every candidate screened on seed 0; the best screened within the
    # budget (FINALISTS at least) on seed 2 as well; the best of those on two seeds
    # (SURVIVORS at least) on seeds 3 and 4; the choice among the last.
    assert all(r["seeds"] in ([0], [0, 2], [0, 2, 3, 4]) for r in result.table)
    within = sorted((r for r in result.table if r["compute"] <= r["limit"] + 1e-9),
                    key=lambda r: -r["psnrs"][0])
    assert all(len(r["seeds"]) > 1 for r in within[:FINALISTS])
    two = sorted((r for r in result.table if len(r["seeds"]) > 1),
                 key=lambda r: -sum(r["psnrs"][:2]))
    complete = [r for r in result.table if len(r["seeds"]) == 4]
    assert all(r in complete for r in two[:SURVIVORS]) and len(complete) >= SURVIVORS
    assert result.psnr == max(r["psnr"] for r in complete if r["compute"] <= r["limit"] + 1e-9)
    assert result.generations == pytest.approx(
        5 + sum(r["compute"] * len(r["seeds"]) for r in result.table))
    assert result.generations <= 12


def test_the_generation_budget_bounds_what_is_measured(model):
    from cachekern.tune import FINALISTS

    # 3 uncached generations, the finalists' second seed held back (0.5 each at 2x), and room
    # for two screens of 0.5 on the first seed.
    budget = 3 + FINALISTS * 0.5 + 2 * 0.5 + 0.25
    result = cachekern.tune(model, run_of(model), speedup=2.0, evaluation_seeds=(1, 2),
                            calibration_seeds=(7,), max_generations=budget, progress=False)
    assert result.generations <= budget and len(result.table) == 2
    with pytest.raises(ValueError, match="max_generations: expected a number above 3"):
        cachekern.tune(model, run_of(model), speedup=2.0, evaluation_seeds=(1, 2),
                       calibration_seeds=(7,), max_generations=3, progress=False)
    for methods in ((), "teacache", ("teacache", "magcache")):
        with pytest.raises(ValueError, match="methods: expected a non-empty subset of"):
            cachekern.tune(model, run_of(model), speedup=2.0, methods=methods,
                           progress=False)


def test_bad_targets_and_arguments_get_clear_errors(model):
    run = run_of(model)
    for kwargs, match in [
        (dict(), "exactly one of speedup"),
        (dict(speedup=2.0, min_psnr=30.0), "exactly one of speedup"),
        (dict(speedup=0.5), "speedup: expected a number > 1"),
        (dict(speedup=True), "speedup: expected a number > 1"),
        (dict(min_psnr=-3.0), "min_psnr: expected a positive number"),
        (dict(speedup=2.0, evaluation_seeds=()), "evaluation_seeds: expected a non-empty"),
        (dict(speedup=2.0, evaluation_seeds=(7,), calibration_seeds=(7,)),
         "evaluation_seeds: must differ from calibration_seeds"),
    ]:
        with pytest.raises(ValueError, match=match):
            cachekern.tune(model, run, progress=False, **kwargs)
    with pytest.raises(TypeError, match="run: expected run\\(seed\\) to return the generated"):
        cachekern.tune(model, lambda seed: "image", speedup=2.0, progress=False)
    with cachekern.patched(model, cachekern.TeaCache()):
        with pytest.raises(RuntimeError, match="tune: the model is patched"):
            cachekern.tune(model, run, speedup=2.0, progress=False)
    with pytest.raises(ValueError, match="speedup: no candidate reaches 50.00x"):
        cachekern.tune(model, run, speedup=50.0, evaluation_seeds=(1,), calibration_seeds=(7,),
                       progress=False)


def test_the_command_line_checks_its_arguments(capsys):
    from cachekern.cli import main

    for argv, message in [
        (["tune", "--speedup", "2", "-o", "x"], "--reference-model"),
        (["tune", "--reference-model", "pixart-scenes", "-o", "x"], "one of the arguments"),
        (["tune", "--reference-model", "nope", "--speedup", "2", "-o", "x"], "invalid choice"),
        (["tune", "--reference-model", "pixart-scenes", "--speedup", "2", "--min-psnr", "30",
          "-o", "x"], "not allowed with"),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err


def test_the_online_threshold_is_bisected_on_the_replayed_decisions():
    """threshold_for against a brute-force scan of simulated_compute on a made-up trajectory
    (two branches, uneven changes), and simulated_compute against the runtime's own decisions
    on a tiny FLUX."""
    from cachekern.tune import simulated_compute, threshold_for

    g = torch.Generator().manual_seed(3)
    steps = 13
    changes = torch.rand(2, steps, generator=g) * 0.3 + 0.01
    trajectory = {(0, branch): [(s, float("nan") if s == 0 else float(changes[i, s]))
                                for s in range(steps)] for i, branch in enumerate("ab")}
    options = dict(coefficients=None, num_inference_steps=steps)
    for budget in (0.9, 0.6, 0.45):
        t = threshold_for(budget, trajectory, steps, **options)
        assert simulated_compute(TeaCache(threshold=t, **options), trajectory, steps) <= budget
        below = [x for x in torch.linspace(0, t, 400).tolist()[:-1]
                 if simulated_compute(TeaCache(threshold=x, **options), trajectory, steps)
                 <= budget]
        assert not below or min(below) >= t * (1 - 1e-6)       # none smaller reaches it
    # Forced steps (warm-up, last) bound what any threshold reaches.
    assert threshold_for(0.1, trajectory, steps, **options) is None
    # On a model: the replay decides as the runtime does on the same (uncached) inputs.
    from cachekern.teacache.calibrate import ChangeRecorder, observe_uncached

    model, inputs, scale = flux()
    recorder = ChangeRecorder()
    observe_uncached(model, lambda: sample_family(model, inputs(5), timestep_scale=scale), 1,
                     recorder, "test")
    policy = TeaCache(threshold=0.2, coefficients=None, num_inference_steps=FAMILY_STEPS)
    with cachekern.patched(model, policy) as handle:
        sample_family(model, inputs(5), timestep_scale=scale)
    first_skip = next((h["step"] for h in handle.history if not h["computed"]), None)
    replayed = [s for s, _ in next(iter(recorder.trajectory.values()))]
    assert replayed == list(range(FAMILY_STEPS))
    # Up to the first skip the inputs are the uncached ones, so the decisions agree there.
    if first_skip is not None:
        single = {k: v[:first_skip + 1] for k, v in recorder.trajectory.items()}
        assert simulated_compute(policy, single, FAMILY_STEPS) == \
            sum(h["computed"] for h in handle.history[:first_skip + 1]) / (first_skip + 1)


def test_an_online_threshold_off_its_budget_is_bisected_again_once():
    """_corrected_online: after an order-1 online candidate ran over (or well under) the
    budget, the threshold bisected for the replay's compute scaled by target / real compute,
    with its order-2 twin; nothing when it landed on the budget, and a corrected candidate is
    not corrected again."""
    from cachekern.tune import (_corrected_online, _online_candidates, simulated_compute,
                                threshold_for)

    g = torch.Generator().manual_seed(5)
    steps = 17
    changes = torch.rand(2, steps, generator=g) * 0.2 + 0.02
    trajectory = {(0, b): [(s, float("nan") if s == 0 else float(changes[i, s]))
                           for s in range(steps)] for i, b in enumerate("ab")}
    target = 0.5
    first, twin = _online_candidates(trajectory, steps, None, target)
    assert (first.order, twin.order, twin.after) == (1, 2, first.label)
    for real in (0.62, 0.38):           # over the budget; well under it
        fresh = _corrected_online(first, dict(compute=real), trajectory, steps, None, target)
        replayed = simulated_compute(TeaCache(**first.options), trajectory, steps)
        assert replayed <= target
        expected = threshold_for(replayed * target / real, trajectory, steps,
                                 coefficients=None, clamp=True, num_inference_steps=steps)
        assert [c.order for c in fresh] == [1, 2]
        assert all(c.options["threshold"] == expected and c.corrected for c in fresh)
        assert fresh[1].after == fresh[0].label != first.label
        assert (expected > first.options["threshold"]) == (real > target)
        assert _corrected_online(fresh[0], dict(compute=real), trajectory, steps, None,
                                 target) == []
    assert _corrected_online(first, dict(compute=0.49), trajectory, steps, None, target) == []
    assert _corrected_online(twin, dict(compute=0.7), trajectory, steps, None, target) == []
    assert _corrected_online(first, dict(compute=0.7), trajectory, steps, None, None) == []


def test_the_accumulator_schedule_is_the_online_decisions_on_the_mean_change():
    """accumulator_schedule against a plain re-implementation: the raw input change averaged
    per step over the recorded runs, accumulated until the threshold (the first and last steps
    always computed), at the smallest threshold (scanned exactly, over every sum of
    consecutive changes) that computes at most `count` steps."""
    from cachekern.teacache.schedule_search import accumulator_schedule

    g = torch.Generator().manual_seed(11)
    steps = 15
    changes = torch.rand(3, steps, generator=g, dtype=torch.float64) * 0.2 + 0.01
    trajectory = {(run, "a"): [(s, float("nan") if s == 0 else float(changes[run, s]))
                               for s in range(steps)] for run in range(3)}
    mean = [float("nan")] + [float(changes[:, s].mean()) for s in range(1, steps)]

    def plain(threshold):
        out, acc = [], 0.0
        for s in range(steps):
            if s in (0, steps - 1):
                out.append(True)
                acc = 0.0
                continue
            acc += mean[s]
            out.append(acc >= threshold)
            if out[-1]:
                acc = 0.0
        return out

    cuts = sorted({sum(mean[i:j]) for i in range(1, steps) for j in range(i + 1, steps + 1)})
    probes = [0.0] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + [cuts[-1] + 1]
    counts = [sum(plain(t)) for t in probes]
    assert counts == sorted(counts, reverse=True)      # this data: fewer steps as it rises
    for count in (13, 9, 6, 4, 2):
        expected = next(plain(t) for t, n in zip(probes, counts) if n <= count)
        got = accumulator_schedule(trajectory, steps, count)
        assert got == expected and sum(got) <= count
    assert accumulator_schedule(trajectory, steps, 1) is None       # first and last are forced
    assert accumulator_schedule(trajectory, steps, steps) == [True] * steps
