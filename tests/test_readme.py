"""The README's result tables quote the committed results files exactly (benchmarks/results/*.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
README_FLAT = README.replace("\n", " ")
"""The README with its lines joined, for figures quoted in prose that may wrap."""
README_WORDS = " ".join(README.split())
"""The README with every run of whitespace one space, for figures in list items (they wrap with an indent)."""
RESULTS = ROOT / "benchmarks" / "results"


def table_rows(first_cell_pattern: str, cells: int) -> list[list[str]]:
    """Markdown rows of the README whose first cell matches, bold marks removed."""
    rows = []
    for line in README.splitlines():
        parts = [p.strip().strip("*") for p in line.strip().strip("|").split("|")]
        if len(parts) == cells and re.fullmatch(first_cell_pattern, parts[0]):
            rows.append(parts)
    return rows


def test_heldout_priors_table_matches_its_json():
    result = json.loads((RESULTS / "heldout-sr-priors.json").read_text())
    rows = table_rows("bicubic|realesrgan|compact|compact-v2", 7)
    assert [r[0] for r in rows] == ["bicubic", "realesrgan", "compact", "compact-v2"]
    for name, psnr, ssim, lpips, dists, hf, spread in rows:
        e = result[name]
        assert [psnr, ssim, lpips, dists, hf, spread] == [
            f"{e['psnr']:.2f}", f"{e['ssim']:.4f}", f"{e['lpips_alex']:.4f}", f"{e['dists']:.4f}",
            f"{e['hf_energy_ratio']:.3f}", f"{e['seed_spread'] * 255:.2f}"], name
    first = json.loads((RESULTS / "heldout-sr-priors-v2-run1.json").read_text())
    below, below_first = (r["compact"]["psnr"] - r["compact-v2"]["psnr"] for r in (result, first))
    assert f"it is {below:.2f} dB below v1 in PSNR (the goal was +1 dB; after its first run it was {below_first:.2f} dB" \
        in README_FLAT


def fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def test_sampler_ablation_sentence_matches_its_tables():
    """"v2 stays below v1 in PSNR" under every sampler of heldout-v2-sampler/, on the photo count the README names."""
    folder = RESULTS / "heldout-v2-sampler"
    tables = {name: json.loads((folder / f"{name}.json").read_text()) for name in ("ddpm-4", "ddim-4", "ddpm-16")}
    commands = (folder / "README.md").read_text()
    for name, result in tables.items():
        assert result["compact-v2"]["psnr"] < result["compact"]["psnr"], name
        assert result["meta"]["sampler"] == name.replace("-", ":") + ":noised_lr"
        assert (f"on {result['meta']['num_photos']} of the held-out photos, v2 stays below v1 in PSNR (the same ×4 LR, "
                f"{result['meta']['seeds']} seeds each)") in README_WORDS
        assert f"--sampler {name.replace('-', ':')}" in commands


def test_paper_protocol_table_matches_its_json():
    table = json.loads((RESULTS / "quality-llff-paper.json").read_text())
    assert table["protocol"] == "paper"
    rows = table_rows("fern|flower", 7)
    assert len(rows) == sum(len(s["methods"]) for s in table["scenes"].values()) == 14
    for scene, method, psnr, ssim, lpips, dists, detail in rows:
        m = table["scenes"][scene]["methods"][method]
        assert [psnr, ssim, lpips, dists, detail] == [
            fmt(m["psnr"], 3), fmt(m["ssim"], 4), fmt(m["lpips_alex"], 4), fmt(m["dists"], 4),
            fmt(m["detail_consistency"], 4)], (scene, method)


def compare_methods(folder: str, scene: str) -> dict:
    """The methods of a committed scripts/compare.py result: benchmarks/results/<folder>/<scene>/compare.json."""
    return json.loads((RESULTS / folder / scene / "compare.json").read_text())["methods"]


def margins(a: dict, b: dict, key: str, digits: int, minus: str = "−") -> str:
    """'fern / flower' margins of method a over method b (scene -> metrics), as the README writes them (the model card
    writes an ASCII minus)."""
    return " / ".join(f"{a[s][key] - b[s][key]:+.{digits}f}".replace("-", minus) for s in ("fern", "flower"))


def test_v2_and_rerun_margins_match_their_runs():
    """The compact-v2 margins (the table's JSON) and the session-13 re-run's (its own compare.json files)."""
    scenes = json.loads((RESULTS / "quality-llff-paper.json").read_text())["scenes"]
    method = {name: {s: scenes[s]["methods"][name] for s in scenes} for name in ("3dsr", "per-frame-v2", "3dsr-v2")}
    assert all(m["run"].endswith(f"paper-protocol-v2/{s}") for name in ("per-frame-v2", "3dsr-v2")
               for s, m in method[name].items())
    v2, per_frame_v2, v1 = method["3dsr-v2"], method["per-frame-v2"], method["3dsr"]
    assert (f"3dsr-v2 against per-frame-v2 is {margins(v2, per_frame_v2, 'psnr', 3)} dB PSNR and "
            f"{margins(v2, per_frame_v2, 'lpips_alex', 4)} LPIPS-Alex on fern / flower, with higher detail consistency "
            f"on both ({margins(v2, per_frame_v2, 'detail_consistency', 4)})") in README_WORDS
    against_v1 = f"{margins(v2, v1, 'psnr', 3)} dB PSNR and {margins(v2, v1, 'lpips_alex', 4)} LPIPS-Alex on fern / flower"
    assert f"3dsr-v2 against 3dsr with v1 is {against_v1}: no win on either scene" in README_WORDS
    assert f"Against 3dsr with v1 it is {margins(v2, v1, 'psnr', 3)} dB and {margins(v2, v1, 'lpips_alex', 4)} " \
           "LPIPS-Alex" in README_WORDS
    card = " ".join((ROOT / "threedsr_ns" / "weights" / "compact_sr_x4_v2" / "MODEL_CARD.md").read_text().split())
    assert (f"3dsr-v2 - per-frame-v2 = {margins(v2, per_frame_v2, 'psnr', 3, '-')} dB PSNR and "
            f"{margins(v2, per_frame_v2, 'lpips_alex', 4, '-')} LPIPS-Alex") in card
    assert (f"against 3dsr with compact, {margins(v2, v1, 'psnr', 3, '-')} dB and "
            f"{margins(v2, v1, 'lpips_alex', 4, '-')} LPIPS-Alex") in card
    first = {s: compare_methods("paper-protocol-v2-run1", s) for s in ("fern", "flower")}
    for scene in ("fern", "flower"):
        assert (f"{first[scene]['per-frame-v2']['lpips_alex']:.4f} -> "
                f"{per_frame_v2[scene]['lpips_alex']:.4f} on {scene}") in card
    rerun = {s: compare_methods("paper-protocol-s13", s) for s in ("fern", "flower")}
    dsr, per_frame = ({s: rerun[s][name] for s in rerun} for name in ("3dsr", "per-frame"))
    assert (f"3dsr − per-frame = {margins(dsr, per_frame, 'psnr', 3)} dB PSNR and "
            f"{margins(dsr, per_frame, 'lpips_alex', 4)} LPIPS-Alex on fern / flower") in README_WORDS


def logged_detail_energy(folder: str, scene: str) -> tuple:
    """(targets, renders): the detail energies over step 1's SR that a committed 3dsr run logged at steps 2-4
    (benchmarks/results/<folder>/<scene>/log-excerpt.txt)."""
    import re

    excerpt = (RESULTS / folder / scene / "log-excerpt.txt").read_text()
    logged = [tuple(map(float, m)) for m in re.findall(r"step \d detail energy .*: targets ([0-9.]+), renders ([0-9.]+)",
                                                       excerpt)]
    assert len(logged) == 3  # steps 2-4 of the 3dsr run
    return tuple(zip(*logged))


def logged_step_seconds(log: str) -> list:
    """Each guidance step's logged parts summed (noise, encode, denoise, decode, ...: "denoise step k done: ..."
    lines), in the order the run logged them; 0 for a step with nothing to sample (bicubic)."""
    import re

    return [sum(float(v) for v in re.findall(r"([0-9.]+)s\b", parts))
            for parts in re.findall(r"denoise step [1-4] done:(.*)", log)]


def logged_parts(log: str, part: str, step: str = "[1-4]") -> list:
    """One logged part (noise, encode, denoise, decode, render, ...) of each guidance step whose number matches
    `step`, in seconds, in the order the run logged them."""
    import re

    return [float(v) for v in re.findall(rf"denoise step {step} done:.*?\b{part} ([0-9.]+)s", log)]


def test_detail_log_figures_match_the_run_they_come_from():
    targets, renders = logged_detail_energy("paper-protocol-isolated-s10", "fern")
    assert (f"hold only {min(renders):.2f}–{max(renders):.2f} of its detail energy, and the new targets fall from "
            f"{targets[0]:.2f} at step 2 to {targets[-1]:.2f} at step 4") in README_FLAT


def test_small_protocol_table_matches_its_json():
    table = json.loads((RESULTS / "quality-llff-small.json").read_text())
    assert table["protocol"] == "small"
    rows = table_rows("fern|flower|horns", 8)
    assert len(rows) == sum(len(s["methods"]) for s in table["scenes"].values()) == 9
    for scene, method, psnr, ssim, lpips, lpips_vgg, dists, detail in rows:
        m = table["scenes"][scene]["methods"][method]
        assert [psnr, ssim, lpips, lpips_vgg, dists, detail] == [
            fmt(m["psnr"], 3), fmt(m["ssim"], 4), fmt(m["lpips_alex"], 4), fmt(m["lpips_vgg"], 4),
            fmt(m["dists"], 4), fmt(m["detail_consistency"], 4)], (scene, method)
    for scene, entry in table["scenes"].items():  # the margins the prose quotes
        ours, base = entry["methods"]["3dsr"], entry["methods"]["per-frame"]
        assert f"{ours['psnr'] - base['psnr']:+.3f}" in README_FLAT, scene


def test_scale_table_matches_its_json():
    runs = json.loads((RESULTS / "scale-h200.json").read_text())["runs"]
    rows = table_rows(r"(fern|flower|fox)-.*", 6)
    assert len(rows) == len(runs) == 20

    def ratio(value):
        return "n/a" if value is None else f"{value:.3f}x"

    for name, gpu, wall, vs_plain, whole, peak in rows:
        r = runs[name]
        assert [gpu, wall, vs_plain, whole, peak] == [
            "alone" if r["isolated"] else "shared", f"{r['wall_s']:.0f}", ratio(r["ratio_vs_no_diffusion"]),
            ratio(r["whole_run_ratio"]), f"{r['peak_gpu_mem_gb']:.1f}"], name
    fern, fox_whole = (runs[f"{scene}-compact-isolated"]["whole_run_ratio"] for scene in ("fern-paper", "fox-x4"))
    before = {scene: runs[f"{scene}-compact-isolated@paper-protocol-isolated-s11"]["whole_run_ratio"]
              for scene in ("fern-paper", "fox-x4")}
    assert fern <= 1.10 < fox_whole  # what the prose says of the target
    assert (f"meets it at the reduced schedule: {fern:.3f}× (session 11, in one process: {before['fern-paper']:.3f}×)"
            in README_FLAT)
    assert (f"at the reduced schedule misses it: {fox_whole:.3f}× (session 11, in one process: "
            f"{before['fox-x4']:.4f}×)") in README_FLAT
    default = runs["fox-x4-compact-isolated@paper-protocol-isolated-default"]  # the paper's schedule meets it
    assert default["schedule"] == {"N0": 30000, "K": 4, "M": 5000} and default["isolated"]
    assert default["whole_run_ratio"] <= 1.10
    assert (f"fox at the default schedule meets it: {default['whole_run_ratio']:.3f}× whole run (the `@…-default` row; "
            f"{default['ratio_vs_no_diffusion']:.3f}× from the warm-up on). Its warm-up took "
            f"{default['warmup_wall_s']:.0f} s of the {default['warmup_wall_s'] + default['wall_s']:.0f} s") in README_WORDS
    fox = runs["fox-x4-compact-isolated"]["metrics"]
    for method in ("3dsr", "bicubic", "per-frame"):
        assert f"{fox[method]['psnr']:.3f} dB / {fox[method]['lpips_alex']:.4f}" in README_FLAT, method
    # 3dsr against bicubic from every fox warm-up (runs of different warm-ups are listed in the same order)
    ours, base = ([fox[m]] + fox[m]["other_runs"] for m in ("3dsr", "bicubic"))
    assert [r["source"] for r in ours] == [r["source"] for r in base]
    gains = [a["psnr"] - b["psnr"] for a, b in zip(ours, base)]
    drops = [b["lpips_alex"] - a["lpips_alex"] for a, b in zip(ours, base)]
    assert min(gains) > 0 and min(drops) > 0
    assert (f"From each of the {len(gains)} fox warm-ups in the table, 3dsr scores above bicubic in PSNR (by "
            f"{min(gains):.3f}–{max(gains):.3f} dB) and below it in LPIPS-Alex (by {min(drops):.3f}–{max(drops):.3f})"
            in README_WORDS)
    def run_of(folder: str) -> int:
        return next(i for i, r in enumerate(ours) if r["source"].endswith(f"{folder}/fox"))

    longer, default = run_of("paper-protocol-isolated-m2500"), run_of("paper-protocol-isolated-default")
    assert gains[longer] == max(gains) and drops[default] == max(drops)
    assert (f"The widest PSNR margin is the M=2500 run's (`@…-m2500`: {ours[longer]['psnr']:.3f} against "
            f"{base[longer]['psnr']:.3f} dB); the widest LPIPS-Alex margin is the default schedule's (`@…-default`: "
            f"{ours[default]['lpips_alex']:.4f} against {base[default]['lpips_alex']:.4f})") in README_WORDS
    lower = [runs_[longer]["psnr"] - runs_[default]["psnr"] for runs_ in (ours, base)]
    assert all(runs_[longer]["lr_psnr"] - runs_[default]["lr_psnr"] > 2 for runs_ in (ours, base))  # the warm-up's
    assert (f"At the default schedule both methods score {min(lower):.1f}–{max(lower):.1f} dB lower than in the M=2500 "
            f"run (3dsr {ours[default]['psnr']:.3f} dB, bicubic {base[default]['psnr']:.3f})") in README_WORDS
    views = {(run, m): fox_views(f"paper-protocol-isolated-{run}", m) for run in ("default", "m2500")
             for m in ("bicubic", "3dsr")}
    view = {key: v["test_views"]["0089.png"]["psnr"] for key, v in views.items()}
    assert (f"Test view 0089 renders at {view['default', 'bicubic']:.2f} dB (bicubic) and {view['default', '3dsr']:.2f} "
            f"dB (3dsr), against {view['m2500', 'bicubic']:.2f} and {view['m2500', '3dsr']:.2f} in the M=2500 run"
            ) in README_WORDS
    covisible = {key: [v["train_views"][f"{n}.png"]["covisible"] for n in ("0090", "0094", "0097")]
                 for key, v in views.items()}  # "almost never co-visible" from the default schedule's warm-up
    assert all(max(c) < 0.03 for (run, _), c in covisible.items() if run == "default")
    assert all(min(c) > 0.4 for (run, _), c in covisible.items() if run == "m2500")
    assert ("the warm-up's depth sees the nearby train views 0090, 0094 and 0097 as almost never co-visible with "
            "their neighbours") in README_WORDS


def fox_views(run: str, method: str) -> dict:
    """A fox run's evaluate.py metrics.json: its per-view rows, {"test_views" | "train_views": {view: row}}."""
    metrics = json.loads((RESULTS / run / "fox" / f"evaluate_{method}" / "metrics.json").read_text())
    return {part: {row["name"]: row for row in metrics[part]} for part in ("test_views", "train_views")}


def test_artifact_write_figures_match_their_json():
    r = json.loads((RESULTS / "artifact-writes-cpu.json").read_text())
    assert (f"a step's PNGs take {r['sync_s']:.1f} s, against {r['sync_level6_one_thread_s']:.1f} s at PIL's default level "
            f"6 on one thread, and {r['mb_level1']:.1f} MB instead of {r['mb_level6']:.1f} MB; a step holds training up "
            f"{r['submit_s']:.1f} s") in README_FLAT and r["compress_level"] == 1


def test_guidance_step_figures_match_their_json():
    def cases(name: str) -> dict:
        return json.loads((RESULTS / f"guidance-step-h200{name}.json").read_text())

    now, before, last = cases("-tile1024"), cases(""), cases("-tile1024-channels-last")
    assert (now["tile_size"], now["channels_last"], before["tile_size"], last["channels_last"]) == (1024, False, 512, True)
    now, before, last = now["cases"], before["cases"], last["cases"]
    fern, fox = now["fern"], now["fox"]
    assert (f"fern: denoising {fern['step1']['denoise']:.2f} s, a whole step {fern['step1']['step']:.2f} s, peak "
            f"{fern['peak_gpu_mem_gb']:.1f} GB; fox: denoising {fox['step1']['denoise']:.2f} s, a whole step "
            f"{fox['step1']['step']:.2f} s, peak {fox['peak_gpu_mem_gb']:.1f} GB") in README_FLAT
    assert (f"fern {before['fern']['step1']['denoise']:.2f} s of denoising, a whole step "
            f"{before['fern']['step1']['step']:.2f} s; fox {before['fox']['step1']['denoise']:.2f} s and "
            f"{before['fox']['step1']['step']:.2f} s") in README_FLAT
    assert (f"denoising is slower, {last['fern']['step1']['denoise']:.2f} s (fern) and "
            f"{last['fox']['step1']['denoise']:.2f} s (fox)") in README_FLAT
    assert all(last[scene]["step1"]["denoise"] > now[scene]["step1"]["denoise"] for scene in ("fern", "fox"))
    tuned = {name: cases(f"-cudnn-{name}") for name in ("heuristics", "autotune", "autotune-cl")}
    assert [(t["cudnn_benchmark"], t["channels_last"], t["predraw_noise"]) for t in tuned.values()] == [
        (False, False, True), (True, False, True), (True, True, True)]
    step2 = {name: [t["cases"][scene]["step2"]["denoise"] for scene in ("fern", "fox")] for name, t in tuned.items()}
    assert (f"step 2's denoising took {step2['autotune'][0]:.3f} s (fern) and {step2['autotune'][1]:.3f} s (fox) "
            f"autotuned against {step2['heuristics'][0]:.3f} s and {step2['heuristics'][1]:.3f} s with cuDNN's "
            f"heuristics, and {step2['autotune-cl'][0]:.3f} s / {step2['autotune-cl'][1]:.3f} s autotuned in "
            "channels-last") in README_WORDS
    assert all(a > 0.95 * h for a, h in zip(step2["autotune"], step2["heuristics"]))  # "does not help": < 5 %
    ahead = cases("-tile1024-predraw")
    assert ahead["predraw_noise"] and ahead["tile_size"] == 1024
    fern, fox = ahead["cases"]["fern"], ahead["cases"]["fox"]
    assert (f"step 2's noise part takes {fern['step2']['noise']:.3f} s (fern) and {fox['step2']['noise']:.3f} s (fox) "
            f"instead of the {fern['step1']['noise']:.2f} / {fox['step1']['noise']:.2f} s of a draw in the step, and "
            f"the whole step {fern['step2']['step']:.2f} s and {fox['step2']['step']:.2f} s") in README_WORDS


def test_cost_prose_figures_match_the_runs_they_come_from():
    import re

    runs = json.loads((RESULTS / "scale-h200.json").read_text())["runs"]
    slow = runs["fox-x4-compact-isolated@paper-protocol-isolated-s9-png6"]
    fast = runs["fox-x4-compact-isolated@paper-protocol-isolated-s9-png1"]
    assert (f"its run took {slow['wall_s']:.0f} s, {slow['ratio_vs_no_diffusion']:.3f}× bicubic's (its png6 row); with "
            f"the fast encoding (its s9-png1 row), {fast['wall_s']:.0f} s and {fast['ratio_vs_no_diffusion']:.3f}×") \
        in README_WORDS

    def log_of(session: str, scene: str, method: str) -> str:  # an isolated job's excerpt: bicubic's run, then 3dsr's
        excerpt = (RESULTS / f"paper-protocol-isolated-{session}" / scene / "log-excerpt.txt").read_text()
        split = excerpt.index("backend 'compact'")
        return excerpt[split:] if method == "3dsr" else excerpt[:split]

    def logged(scene: str, part: str, step: str = "[1-4]") -> list:  # the first two rows' runs: the 3dsr run's steps
        return sorted(logged_parts(log_of("s12", scene, "3dsr"), part, step))

    fern, fox = logged("fern", "denoise"), logged("fox", "denoise")
    assert len(fern) == len(fox) == 4 and min(fern) > 0
    first = [logged(scene, "noise", "1")[0] for scene in ("fern", "fox")]
    later = logged("fern", "noise", "[2-4]") + logged("fox", "noise", "[2-4]")
    renders = logged("fern", "render") + logged("fox", "render")
    assert len(renders) == len(later) == 6  # from step 2 on
    assert (f"{fern[0]:.2f}–{fern[-1]:.2f} s of denoising fern's 17 views and {fox[0]:.2f}–{fox[-1]:.2f} s for fox's 43, "
            f"{first[0]:.2f} / {first[1]:.2f} s of drawing step 1's start noise (fern / fox), {min(later):.2f}–"
            f"{max(later):.2f} s for each later step's noise, drawn ahead, and {min(renders):.2f}–"
            f"{max(renders):.2f} s of renders") in README_WORDS
    assert max(later) < min(first) / 10  # drawn ahead: the steps no longer wait for it

    def baseline_noise(session: str, scene: str) -> float:  # what a bicubic run spent on noise
        (value,) = re.findall(r"denoise step 1 done: noise ([0-9.]+)s", log_of(session, scene, "bicubic"))
        return float(value)

    def clock(pattern: str, text: str) -> int:  # the second of the day of the one timestamped line matching pattern
        ((h, m, sec),) = re.findall(rf"^\[(\d\d):(\d\d):(\d\d)\] {pattern}", text, re.M)
        return 3600 * int(h) + 60 * int(m) + int(sec)

    fox_log = (RESULTS / "paper-protocol-isolated-s12" / "fox" / "log-excerpt.txt").read_text()
    start_up = (clock(r"3dsr denoise step 1/4", log_of("s12", "fox", "3dsr"))
                - clock(r"Saving config.*/3dsr/3dsr/", fox_log))  # the 3dsr run's config save to its first step
    assert (f"began its first guidance step {start_up} s after saving its config (01:19:02 → 01:19:07 in its "
            "`log-excerpt.txt`)") in README_WORDS and start_up == 5

    def phase(method: str, k: int, session: str = "s12") -> float:  # HR phase k of fox: step k's start to step
        run = log_of(session, "fox", method)  # k+1's, less step k's logged parts
        return (clock(rf"3dsr denoise step {k + 1}/4", run) - clock(rf"3dsr denoise step {k}/4", run)
                - logged_step_seconds(run)[k - 1])

    longer = {k: phase("3dsr", k) - phase("bicubic", k) for k in (2, 3)}  # bicubic's step 1 has no timestamp
    assert max(longer, key=longer.get) == 3 and round(longer[3]) == 3
    assert (f"HR phases up to ~{round(longer[3])} s longer than bicubic's 1000 iterations, by the log timestamps (1 s "
            f"apart; fox's third phase: {phase('3dsr', 3):.1f} s from the end of step 3 to step 4, against bicubic's "
            f"{phase('bicubic', 3):.0f} s)") in README_WORDS
    phases_m2500 = {m: [phase(m, k, "m2500") for k in (2, 3)] for m in ("bicubic", "3dsr")}  # M=2500
    slower = [ours / base - 1 for ours, base in zip(phases_m2500["3dsr"], phases_m2500["bicubic"])]
    assert min(slower) > 0.04  # its HR iterations, not only its fixed costs, cost more
    m2500 = runs["fox-x4-compact-isolated@paper-protocol-isolated-m2500"]
    assert m2500["schedule"] == {"N0": 5000, "K": 4, "M": 2500} and m2500["whole_run_ratio"] > 1.10
    assert (f"still misses, at {m2500['whole_run_ratio']:.3f}× whole run and {m2500['ratio_vs_no_diffusion']:.3f}× "
            f"from the warm-up on ({runs['fox-x4-compact-isolated']['ratio_vs_no_diffusion']:.3f}× at M=1000)"
            ) in README_WORDS
    (b2, b3), (o2, o3) = phases_m2500["bicubic"], phases_m2500["3dsr"]
    assert (f"HR phases 2 and 3 took {b2:.0f} and {b3:.0f} s for bicubic and {o2:.1f} and {o3:.1f} s for 3dsr, so 3dsr's "
            f"HR iterations themselves run ~{100 * min(slower):.0f}–{100 * max(slower):.0f}% slower") in README_WORDS
    assert (f"Its peak GPU memory ({m2500['peak_gpu_mem_gb']:.1f} GB against "
            f"{m2500['per_method']['bicubic']['peak_gpu_mem_gb']:.1f})") in README_WORDS
    default = runs["fox-x4-compact-isolated@paper-protocol-isolated-default"]  # the default schedule
    ours, base = default["per_method"]["3dsr"], default["per_method"]["bicubic"]
    more, slower = ours["gaussians"] / base["gaussians"] - 1, ours["ms_per_iteration"] / base["ms_per_iteration"] - 1
    assert more > slower > 0  # the extra time per iteration comes with the extra Gaussians
    assert (f"3dsr ended with {ours['gaussians'] / 1e6:.2f} M Gaussians against bicubic's {base['gaussians'] / 1e6:.2f} M "
            f"(+{100 * more:.0f}%), at a median {ours['ms_per_iteration']:.1f} ms per iteration against "
            f"{base['ms_per_iteration']:.1f} (+{100 * slower:.0f}%)") in README_WORDS
    hr_iterations = default["schedule"]["K"] * default["schedule"]["M"]
    paced = (ours["ms_per_iteration"] - base["ms_per_iteration"]) * hr_iterations / 1000
    extra = ours["wall_s"] - base["wall_s"]
    assert paced > extra / 2  # "most of its extra time"
    assert (f"Over its {hr_iterations} HR iterations that pace is {paced:.0f} s of the {extra:.0f} s 3dsr took beyond "
            "bicubic") in README_WORDS
    default_run = log_of("default", "fox", "3dsr")
    steps = sorted(logged_step_seconds(default_run))
    assert len(steps) == 4
    assert f"its 4 guidance steps took {steps[0]:.2f}–{steps[-1]:.2f} s each (the logged parts" in README_WORDS
    assert baseline_noise("s12", "fern") == baseline_noise("s12", "fox") == 0.0  # the fixed sampler draws none
    assert (f"step 1 logs a noise part of 0.00 s (session 11's drew {baseline_noise('s11', 'fox'):.2f} s on fox, "
            f"{baseline_noise('s11', 'fern'):.2f} s on fern, in their logs)") in README_WORDS
    scale = json.loads((RESULTS / "scale-h200.json").read_text())
    assert [scale["runs"][f"{scene}-compact-isolated"]["folder"] for scene in ("fern-paper", "fox-x4")] == [
        f"benchmarks/results/paper-protocol-isolated-s12/{scene}" for scene in ("fern", "fox")]  # the runs quoted
    bicubic_fern = [compare_methods(f"paper-protocol-isolated-{session}", "fern")["bicubic"]["wall_s"]
                    for session in ("s10", "s11", "s12")]
    assert "sessions 10, 11 and 12 ({:.0f} s, {:.0f} s, {:.0f} s)".format(*bicubic_fern) in README_WORDS


def test_sd_x4_default_warmup_figures_match_their_runs():
    """The SD x4 row after the default warm-up: no ratio (its bicubic run shared the GPU), and the prose's figures
    from its compare.json and the two jobs' log excerpts."""
    import re

    folder = RESULTS / "paper-protocol-sd4-random-n30000"
    run = json.loads((RESULTS / "scale-h200.json").read_text())["runs"][
        "fern-paper-sd-x4-upscaler-random-isolated@paper-protocol-sd4-random-n30000"]
    assert run["schedule"] == {"N0": 30000, "K": 4, "M": 2000} and run["backend"] == "sd-x4-upscaler-random"
    assert (run["ratio_vs_no_diffusion"], run["whole_run_ratio"], run["baseline_valid"]) == (None, None, False)
    stopped = (folder / "fern-m5000-stopped" / "log-excerpt.txt").read_text()
    clocks = [3600 * int(h) + 60 * int(m) + int(sec) for h, m, sec in re.findall(
        r"^\[(\d\d):(\d\d):(\d\d)\] (?:Saving config|3dsr denoise step 2/4 \(t=749\) at iteration 35000)", stopped, re.M)]
    assert len(clocks) == 3  # warm-up's config, bicubic's config, bicubic's step 2 after 5000 HR iterations
    warmup, phase = clocks[1] - clocks[0], clocks[2] - clocks[1]
    assert run["warmup_wall_s"] <= warmup  # between the two config saves: the warm-up's training, its save, the spawn
    excerpt = (folder / "fern" / "log-excerpt.txt").read_text()
    ours = excerpt[excerpt.index("backend 'sd-x4-upscaler-random'"):]
    steps = sorted(logged_step_seconds(ours))
    assert len(steps) == 4
    assert (f"ran its warm-up alone in {run['warmup_wall_s']:.0f} s, and its bicubic run reached step 2, 5000 HR "
            f"iterations on, {phase} s after saving its config") in README_WORDS
    assert (f"{run['wall_s']:.0f} s for 8000 HR iterations, {run['peak_gpu_mem_gb']:.1f} GB at its peak, its 4 guidance "
            f"steps {steps[0]:.1f}–{steps[-1]:.1f} s each") in README_WORDS
    encode, unet, decode = (sum(v) / len(v) for v in (logged_parts(ours, p) for p in ("encode", "denoise", "decode")))
    assert (f"VAE-tiled encode ~{encode:.0f} s, UNet ~{unet:.0f} s, tiled decode ~{decode:.1f} s)") in README_WORDS
    assert f"and {run['peak_gpu_mem_gb']:.1f} GB and " in README_WORDS  # "... GB after the default warm-up"
    assert run["peak_gpu_mem_gb"] <= 40  # issue 14's memory target


def _logged_events(excerpt: str):
    """(seconds of the day, line) for each line of a log excerpt; rich prints a time only when it changes, so an
    untimed line carries the last time seen."""
    import re

    clock, events = None, []
    for line in excerpt.splitlines():
        stamp = re.match(r"^\[(\d\d):(\d\d):(\d\d)\]", line)
        if stamp:
            clock = 3600 * int(stamp[1]) + 60 * int(stamp[2]) + int(stamp[3])
        events.append((clock, line))
    return events


def test_sd_x4_default_warmup_m3000_figures_match_their_run():
    """The SD x4 row after the default warm-up with M=3000: its ratios, and the prose's breakdown of 3dsr's extra
    time (start-up, guidance steps, HR phases, Gaussians) read from its log excerpt and compare.json."""
    import re

    run = json.loads((RESULTS / "scale-h200.json").read_text())["runs"][
        "fern-paper-sd-x4-upscaler-random-isolated@paper-protocol-sd4-random-n30000-m3000"]
    assert run["schedule"] == {"N0": 30000, "K": 4, "M": 3000} and run["baseline_valid"] and run["isolated"]
    bicubic, ours = run["per_method"]["bicubic"], run["per_method"]["3dsr"]
    assert (f"{run['whole_run_ratio']:.3f}× whole run, {run['ratio_vs_no_diffusion']:.3f}× from the warm-up on"
            in README_WORDS)
    assert f"3dsr took {ours['wall_s']:.0f} s against bicubic's {bicubic['wall_s']:.0f} s" in README_WORDS
    assert f"the {ours['wall_s'] - bicubic['wall_s']:.0f} s beyond bicubic" in README_WORDS
    assert run["whole_run_ratio"] > 1.10  # the miss the prose reports

    excerpt = (RESULTS / "paper-protocol-sd4-random-n30000-m3000" / "fern" / "log-excerpt.txt").read_text()
    split = excerpt.rindex("\n", 0, excerpt.index("3dsr/3dsr/config.yml")) + 1  # that line's start
    theirs, mine = _logged_events(excerpt[:split]), _logged_events(excerpt[split:])  # bicubic's, 3dsr's

    def when(events, pattern):
        return [clock for clock, line in events if re.search(pattern, line)]

    # start-up: config saved -> pre-flight passed (3dsr) and -> step 1 began (bicubic, its last config save)
    start_up = when(mine, r"pre-flight passed")[0] - when(mine, r"Saving config")[0]
    bicubic_start = when(theirs, r"denoise step 1/4")[0] - when(theirs, r"Saving config")[-1]
    preflight = re.search(r"pre-flight passed in ([0-9.]+)s", excerpt[split:])[1]
    assert (f"its pre-flight passed {start_up} s after it saved its config (building the random SD ×4, then a "
            f"{preflight} s pre-flight), where bicubic began its first step {bicubic_start} s after") in README_WORDS
    steps = logged_step_seconds(excerpt[split:])
    assert len(steps) == 4
    encode, unet, decode = (sum(v) / len(v) for v in (logged_parts(excerpt[split:], p)
                                                      for p in ("encode", "denoise", "decode")))
    assert (f"sum to {min(steps):.1f}–{max(steps):.1f} s each (VAE-tiled encode ~{encode:.1f} s, UNet ~{unet:.0f} s, "
            f"tiled decode ~{decode:.1f} s): {sum(steps):.0f} s") in README_WORDS
    # HR phases 1-3: bicubic from one step's start to the next (its steps take no time), 3dsr from one step's end
    starts = [when(events, rf"denoise step {k}/4")[0] for events in (theirs, mine) for k in (1, 2, 3, 4)]
    ends = when(mine, r"denoise step [1-3] done:")
    theirs_phases = [b - a for a, b in zip(starts[:3], starts[1:4])]
    mine_phases = [b - a for a, b in zip(ends, starts[5:8])]
    assert ("the first three (from one step's end to the next step's start) took {}, {} and {} s against bicubic's "
            "{}, {} and {} s".format(*mine_phases, *theirs_phases)) in README_WORDS
    assert (f"those three phases took {sum(mine_phases) / sum(theirs_phases) - 1:.0%} longer in all "
            f"({sum(mine_phases)} s against {sum(theirs_phases)})") in README_WORDS
    # the extrapolation to the default M=5000: the fixed costs, plus bicubic's HR training at 3dsr's slower pace
    fixed = start_up - bicubic_start + sum(steps)
    hr_default = bicubic["wall_s"] * 4 * 5000 / (run["schedule"]["K"] * run["schedule"]["M"])
    pace = sum(mine_phases) / sum(theirs_phases)
    default = (run["warmup_wall_s"] + hr_default * pace + fixed) / (run["warmup_wall_s"] + hr_default)
    assert (f"(~{round(fixed, -1):.0f} s of start-up and guidance, plus {pace - 1:.0%} of bicubic's "
            f"~{round(hr_default, -2):.0f} s of HR training) the whole run would be ~{default:.2f}×") in README_WORDS
    assert default > 1.10
    assert (f"{ours['gaussians']:,} against {bicubic['gaussians']:,} at the end" in README_WORDS
            and f"a median {ours['ms_per_iteration']:.1f} ms per iteration against {bicubic['ms_per_iteration']:.1f}"
            in README_WORDS)
    assert f"and {ours['peak_gpu_mem_gb']:.1f} GB after the default warm-up" in README_WORDS


def test_sd_x4_vae_tile_figures_match_their_json():
    from threedsr_ns.backends.sd_upscaler import DEFAULT_VAE_TILE_SIZE

    steps, peaks = [], []
    for tile in (256, 512, 1024):
        r = json.loads((RESULTS / f"guidance-step-h200-sd4-tile{tile}.json").read_text())
        assert (r["backend"], r["tile_size"]) == ("sd-x4-upscaler-random", tile)
        steps.append(r["cases"]["fern"]["step2"]["step"])
        peaks.append(r["cases"]["fern"]["peak_gpu_mem_gb"])
    assert (f"a step takes {steps[0]:.2f} s with 256 px tiles, {steps[1]:.2f} s with 512 and {steps[2]:.2f} s with "
            f"1024, at a peak of {peaks[0]:.1f}, {peaks[1]:.1f} and {peaks[2]:.1f} GB") in README_WORDS
    assert DEFAULT_VAE_TILE_SIZE == 256 and steps[0] == min(steps)  # the default is the fastest measured


def test_sd_x4_vae_dtype_figures_match_their_json():
    """The bfloat16 VAE's step times, and the estimate for the M=3000 row they lead to (the saving over its 4 steps,
    off 3dsr's time in the row's whole-run ratio), still over the 1.10x target."""
    parts = {}
    for dtype in ("bfloat16", "float32"):
        r = json.loads((RESULTS / f"guidance-step-h100-sd4-vae-{dtype}.json").read_text())
        assert (r["backend"], r["vae_dtype"], r["repeats"], r["predraw_noise"]) == (
            "sd-x4-upscaler-random", dtype, 1, True)
        assert "H100" in r["device"] and r["cases"]["fern"]["views"] == 17 and len(r["timesteps"]) == 4
        assert (r["cases"]["fern"]["lr_size"], r["cases"]["fern"]["sr_size"]) == ([504, 378], [2016, 1512])
        parts[dtype] = r["cases"]["fern"]
    bf16, f32 = parts["bfloat16"], parts["float32"]
    assert (f"step 2 over fern's 17 views took {bf16['step2']['step']:.2f} s against {f32['step2']['step']:.2f} s "
            f"(encode {bf16['step2']['encode']:.2f} s against {f32['step2']['encode']:.2f}, decode "
            f"{bf16['step2']['decode']:.2f} s against {f32['step2']['decode']:.2f}), step 1 {bf16['step1']['step']:.2f} "
            f"s against {f32['step1']['step']:.2f}") in README_WORDS
    faster = 1 - (bf16["step1"]["step"] + bf16["step2"]["step"]) / (f32["step1"]["step"] + f32["step2"]["step"])
    assert f"`bfloat16` took ~{round(faster, 1):.0%} less time a guidance step on an H100" in README_WORDS
    saving = f32["step1"]["step"] - bf16["step1"]["step"] + 3 * (f32["step2"]["step"] - bf16["step2"]["step"])
    run = json.loads((RESULTS / "scale-h200.json").read_text())["runs"][
        "fern-paper-sd-x4-upscaler-random-isolated@paper-protocol-sd4-random-n30000-m3000"]
    bicubic, ours = run["per_method"]["bicubic"], run["per_method"]["3dsr"]
    ratio = (run["warmup_wall_s"] + ours["wall_s"] - saving) / (run["warmup_wall_s"] + bicubic["wall_s"])
    assert (f"that is ~{saving:.0f} s of the {ours['wall_s'] - bicubic['wall_s']:.0f}, so the row would be "
            f"~{ratio:.2f}×") in README_WORDS
    assert ratio > 1.10


def test_paper_schedule_figures_match_their_run():
    """The flower run at the paper's schedule: the table's JSON (against the reduced table's LPIPS) and its detail
    log."""
    table = json.loads((RESULTS / "quality-llff-paper-schedule.json").read_text())
    assert table["protocol"] == "paper" and table["schedule"] == {"N0": 30000, "K": 4, "M": 5000}
    run = table["scenes"]["flower"]["methods"]
    reduced = json.loads((RESULTS / "quality-llff-paper.json").read_text())["scenes"]["flower"]["methods"]
    dsr, per_frame = run["3dsr"], run["per-frame"]
    assert (f"3dsr − per-frame = {dsr['psnr'] - per_frame['psnr']:+.3f} dB PSNR, "
            f"{dsr['lpips_alex'] - per_frame['lpips_alex']:+.4f} LPIPS-Alex and "
            f"{dsr['detail_consistency'] - per_frame['detail_consistency']:+.4f} detail consistency") in README_FLAT
    assert (f"(per-frame {reduced['per-frame']['lpips_alex']:.4f} → {per_frame['lpips_alex']:.4f}, 3dsr "
            f"{reduced['3dsr']['lpips_alex']:.4f} → {dsr['lpips_alex']:.4f})") in README_FLAT
    targets, renders = logged_detail_energy("paper-schedule", "flower")
    assert (f"the renders hold only {min(renders):.2f}–{max(renders):.2f} of step 1's detail energy, and the new "
            f"targets fall from {targets[0]:.2f} at step 2 to {targets[-1]:.2f} at step 4") in README_FLAT


def test_guidance_state_copies_quoted_are_the_codes():
    from threedsr_ns.datamanager import GPU_STATE_FRACTION, guidance_state_copies

    pixel, latent = guidance_state_copies(1), guidance_state_copies(4)  # compact priors, SD x4
    assert (f"(the state is counted as {pixel:.0f} float32 copies of the N views' ×4 images with the compact priors, "
            f"{latent:.0f} with SD ×4: targets, renders, the sampler's latents and its working copies, by "
            f"`threedsr_ns.datamanager.guidance_state_copies`" in README_WORDS)
    assert GPU_STATE_FRACTION == 0.5 and "would take more than half the GPU's memory" in README_WORDS
