"""The tables of ``bench_train.py``: its configurations and the Markdown it prints."""

from __future__ import annotations

PAIRS = ((8, 4), (16, 4), (8, 8), (32, 8))  # (R, U) of the MOF runs
#: Benchmark label → (--meta-grad, --fd-scheme).
MODES = {"exact": ("exact", "central"), "fd-central": ("finite-diff", "central"),
         "fd-forward": ("finite-diff", "forward")}
#: The floor's passes per mode label: part → how many of it.
FLOOR = {"exact": {"model_step": 1, "inner_U": 1, "outer_R": 1, "eps_U": 2},
         "fd-central": {"model_step": 1, "inner_U": 1, "outer_R": 1, "eps_U": 2},
         "fd-forward": {"model_step": 1, "outer_R": 1, "eps_U": 1}}
#: The paper's train hours on MSR-VTT: MOF R:U over Frozen trained on R frames (its Table VI).
PAPER = {(8, 8): 10 / 8, (32, 8): 28 / 20}
EVERY = (2, 5, 10)
#: The variants of docs/variants.md: label → TrainConfig settings.
VARIANTS = {"mix": {"frame_param": "mix"}, "adamw": {"inner_step": "adamw"},
            "k3": {"frame_steps": 3},
            "mix+adamw+k3": {"frame_param": "mix", "inner_step": "adamw", "frame_steps": 3}}


def _frames(name: str) -> tuple[int, int]:
    """(R, U) of a result name; a baseline on n frames is (n, n)."""
    spec = name.split()[1]
    return tuple(int(x) for x in spec.split(":")) if ":" in spec else (int(spec), int(spec))


def report(results: dict[str, dict[str, float]]) -> list[str]:
    """Markdown tables: phase costs and ratios; where a MOF phase's time goes."""
    base = {_frames(k)[0]: v for k, v in results.items() if k.startswith("baseline")}
    lines = [("| phase | CPU ms | × baseline-U | × baseline-R | peak MiB | peak × baseline-U | "
             "data % | store I/O % | × floor |"), "|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        if "every" in key:
            continue
        regular, used = _frames(key)
        cpu = r["cpu"]
        background = r.get("store_bg", 0.0) + r.get("journal_bg", 0.0)
        io = sum(r.get(k, 0.0) for k in ("store_wait", "journal_wait")) + background
        lines.append(
            f"| {key} | {1e3 * cpu:.0f} | {cpu / base[used]['cpu']:.2f} | "
            f"{cpu / base[regular]['cpu']:.2f} | {r['peak_mib']:.0f} | "
            f"{r['peak_mib'] / base[used]['peak_mib']:.1f} | {100 * r['data'] / cpu:.1f} | "
            f"{100 * io / (cpu + background):.1f} | "
            + (f"{cpu / r['floor']:.2f} |" if "floor" in r else "– |"))
    lines += ["", "Where a MOF phase's CPU time goes (ms per phase):", "",
              ("| R:U, mode | floor: model step U + inner U + outer R + ε-grads U | phase (× "
              "floor) | meta-gradient (its floor passes) | Adam on ε | rest of frame step | "
              "draw (its thread) | data | store wait | journal wait (its thread) | other |"),
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for regular, used in PAIRS:
        for mode in MODES:
            r = results[f"MOF {regular}:{used} {mode}"]
            ms = {k: 1e3 * v for k, v in r.items()}
            terms = {part: n * ms.get(part, 0.0) for part, n in FLOOR[mode].items()}
            passes = ms["floor"] - terms["model_step"]
            other = ms["cpu"] - sum(ms.get(k, 0.0) for k in (
                "model_step", "frame_step", "draw", "data", "store_wait", "journal_wait"))
            lines.append(
                f"| {regular}:{used} {mode} | {terms['model_step']:.0f} + "
                f"{terms.get('inner_U', 0.0):.0f} + {terms['outer_R']:.0f} + "
                f"{terms['eps_U']:.0f} = {ms['floor']:.0f} | "
                f"{ms['cpu']:.0f} ({r['cpu'] / r['floor']:.2f}×) | {ms['meta_grad']:.0f} "
                f"({passes:.0f}) | {ms['frame_adam']:.0f} | "
                f"{ms['frame_step'] - ms['meta_grad'] - ms['frame_adam']:.0f} | "
                f"{ms.get('draw', 0.0):.0f} ({ms.get('draw_bg', 0.0):.0f}) | {ms['data']:.0f} | "
                f"{ms['store_wait']:.0f} | "
                f"{ms['journal_wait']:.0f} ({ms['journal_bg']:.0f}) | {other:.0f} |")
    return lines


def schedule_table(results: dict[str, dict[str, float]], default: str) -> list[str]:
    """MOF over a baseline on R frames with a frame step every k-th batch, and the k at which
    the least-squares fit ``ratio(k) = a + b / k`` meets the paper's train-hour ratio."""
    import numpy as np

    ks = (1, *EVERY)
    lines = ["| R:U | paper | " + " | ".join(f"k = {k}" for k in ks)
             + " | fit a + b/k | k for the paper's ratio |", "|---|---|---|---|---|---|---|---|"]
    for (regular, used), paper in PAPER.items():
        baseline = results[f"baseline {regular}"]["cpu"]
        names = [f"MOF {regular}:{used} {default}" + (f" every {k}" if k > 1 else "") for k in ks]
        ratios = np.array([results[n]["cpu"] / baseline for n in names])
        a, b = np.linalg.lstsq(np.stack([np.ones(len(ks)), 1 / np.array(ks)], 1), ratios,
                               rcond=None)[0]
        k = f"{b / (paper - a):.1f}" if paper > a else f"none (a = {a:.2f} > {paper:.2f})"
        lines.append(f"| {regular}:{used} | {paper:.2f} | "
                     + " | ".join(f"{r:.2f}" for r in ratios) + f" | {a:.2f} + {b:.2f}/k | {k} |")
    return lines


def variant_table(results: dict[str, dict[str, float]], paper: str) -> list[str]:
    """Markdown table: each variant's phase beside the paper's MOF phase ``paper`` and the
    baselines on U and R frames."""
    regular, used = _frames(paper)
    base_u, base_r = results[f"baseline {used}"]["cpu"], results[f"baseline {regular}"]["cpu"]
    lines = ["| phase | CPU ms | × baseline-U | × baseline-R | × paper's MOF | frame step ms |",
             "|---|---|---|---|---|---|"]
    for key, r in results.items():
        if not key.startswith(paper) and not key.startswith("baseline"):
            continue
        cpu = r["cpu"]
        lines.append(f"| {key} | {1e3 * cpu:.0f} | {cpu / base_u:.2f} | {cpu / base_r:.2f} | "
                     f"{cpu / results[paper]['cpu']:.2f} | "
                     f"{1e3 * r.get('frame_step', 0.0):.0f} |")
    return lines
