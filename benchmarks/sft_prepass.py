"""Time to the first SFT step and peak memory as the dataset grows: the render-check
pre-pass streams, so memory must stay nearly flat from 10k to 100k rows.

    HF_HUB_OFFLINE=1 python benchmarks/sft_prepass.py [--rows 10000 100000] [--num-proc 2]

Each size runs ``vlmtune sft`` on the tiny factory Qwen2-VL for one step (batch 8, LoRA, the
recipe defaults otherwise) in a fresh process, and prints the seconds from that process's
start to the end of its first optimizer step (reading the rows, the pre-pass over every row,
model loading, the step), its peak resident memory, and the share of that time the
pre-pass took. Rows: one image each (a pool of 64 PNGs of 112-224 px, reused by path, so
the files stay small), a question, and an answer of 4 to 120 words, written as canonical
JSONL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from child import clock_vlmtune_steps, run_child, since_start

HERE = Path(__file__).resolve()


def build_rows(out: Path, n: int, seed: int = 0) -> Path:
    from vlmtune.data.builtin import COLOURS, SHAPES, draw_shape
    from vlmtune.models.tiny import build_corpus

    rng = random.Random(seed)
    words = sorted({w for line in build_corpus() for w in line.split() if w.isalpha()})
    pool = out / "images"
    pool.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(64):
        path = pool / f"{i:02d}.png"
        draw_shape(rng, rng.choice(SHAPES), COLOURS[rng.choice(list(COLOURS))], rng.randint(112, 224)).save(path)
        images.append(str(path))
    path = out / f"rows-{n}.jsonl"
    with path.open("w") as fh:
        for _ in range(n):
            answer = " ".join(rng.choice(words) for _ in range(rng.randint(4, 120))) + "."
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}],
                "images": [rng.choice(images)]}) + "\n")
    return path


def child(model: Path, data: Path, out: Path, num_proc: int, result: Path) -> None:
    import vlmtune.train.sft as sft
    from vlmtune.config import load_recipe

    logged, _ = clock_vlmtune_steps()
    spans: dict[str, float] = {}
    load = sft.load_datasets

    def timed_load(*args, **kwargs):
        start = time.perf_counter()
        try:
            return load(*args, **kwargs)
        finally:
            spans["prepass"] = time.perf_counter() - start

    sft.load_datasets = timed_load  # the name the engine calls
    summary = sft.run_sft(load_recipe(None, [
        f"model.path={model}", f"data.train_path={data}", f"output.dir={out}", "output.overwrite=true",
        "output.report_to=[]", "train.max_steps=1", "train.batch_size=8", f"data.num_proc={num_proc}"]),
        show_progress=False)
    result.write_text(json.dumps({"first_step_s": logged[1], "prepass_s": spans["prepass"],
                                  "rows": summary["train_rows"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--num-proc", type=int, default=2, help="data.num_proc of the pre-pass")
    ap.add_argument("--out", type=Path, default=None, help="keep model, data and runs here (default: temp dir)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        model, data, out, result = map(Path, args.child)
        return child(model, data, out, args.num_proc, result)

    from vlmtune.models.tiny import make_tiny

    work = args.out or Path(tempfile.mkdtemp(prefix="sft-prepass-"))
    try:
        model = work / "model"
        if not (model / "vlmtune_tiny.json").is_file():
            make_tiny("qwen2_vl", model, seed=0)
        results = {}
        for n in args.rows:
            data = build_rows(work / "data", n)
            result = work / f"result-{n}.json"
            results[n] = run_child([str(HERE), "--num-proc", str(args.num_proc), "--child", str(model), str(data),
                                    str(work / f"run-{n}"), str(result)], result)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nvlmtune sft, tiny Qwen2-VL, one step of 8, data.num_proc={args.num_proc}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'rows':>8}{'time to 1st step (s)':>22}{'of it pre-pass (s)':>20}{'peak RSS (GB)':>15}")
    for n, r in results.items():
        print(f"{n:>8}{r['first_step_s']:>22.1f}{r['prepass_s']:>20.1f}{r['peak_rss_gb']:>15.2f}")
    print(json.dumps({str(n): r for n, r in results.items()}))


if __name__ == "__main__":
    main()
