"""Why the PyTorch inference path runs batch chunks: time, page faults, system time.

For each family, in one process per allocator setting, builds
``accelerate.inference_function`` twice (the default batch chunks, and
``chunk_bytes=None``: whole batches) and times them alternately, recording per call
the minor page faults and the kernel (system) CPU time of the process. The second
setting makes glibc keep freed memory (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``): every feature map then comes from
memory already mapped, whatever its size. Prints a Markdown table with the ratios.

    KERAS_BACKEND is set by the script (torch).
    .venv/bin/python benchmarks/batch_chunks.py
    .venv/bin/python benchmarks/batch_chunks.py --models xception --rounds 5

Run it on a quiet machine: the rows are timed one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

KEEP_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2**32),
               "MALLOC_TRIM_THRESHOLD_": str(2**36),
               "MALLOC_TOP_PAD_": str(2**30)}
SETTINGS = {"glibc default": {}, "glibc keeps freed memory": KEEP_MEMORY}


def child(model_name: str, batch: int, rounds: int, repeats: int) -> dict:
    """Times the two functions alternately in this process; returns medians."""
    import resource

    import numpy as np

    import keras_inception
    from keras_inception import accelerate

    model = keras_inception.create_model(model_name, weights=None)
    size = model.input_shape[1]
    x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    fns = {"chunks": accelerate.inference_function(model),
           "whole": accelerate.inference_function(model, chunk_bytes=None)}
    # Two untimed calls: oneDNN packs the weights for each shape the calls use (the
    # chunk plan of these fixed-size models comes from their shapes).
    for fn in fns.values():
        fn(x), fn(x)
    calls = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(repeats):
                before = resource.getrusage(resource.RUSAGE_SELF)
                start = time.perf_counter()
                fn(x)
                wall = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_SELF)
                calls[name].append((wall, after.ru_minflt - before.ru_minflt,
                                    after.ru_stime - before.ru_stime))
    out = {"split": fns["chunks"].chunks}
    for name, rows in calls.items():
        walls, faults, system = (sorted(column) for column in zip(*rows))
        middle = len(rows) // 2
        out[name] = {"images_per_s": batch / walls[middle], "minor_faults": faults[middle],
                     "system_s": system[middle], "calls": len(rows)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="inception_v3,inception_resnet_v2,xception")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per round")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.rounds, args.repeats)))
        return 0
    started = time.time()
    print("| model | allocator | chunks (img/s) | whole (img/s) | chunks / whole "
          "| minor faults per call, chunks / whole | system s per call, chunks / whole |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for setting, extra in SETTINGS.items():
            env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="2",
                       **extra)
            done = subprocess.run(
                [sys.executable, __file__, "--child", name, "--batch", str(args.batch),
                 "--rounds", str(args.rounds), "--repeats", str(args.repeats)],
                env=env, capture_output=True, text=True)
            if done.returncode:
                print(f"| {name} | {setting} | failed: {done.stderr.strip()[-300:]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            c, w = r["chunks"], r["whole"]
            print(f"| {name} | {setting} | {c['images_per_s']:.2f} | "
                  f"{w['images_per_s']:.2f} | {c['images_per_s'] / w['images_per_s']:.2f}x "
                  f"| {c['minor_faults']} / {w['minor_faults']} "
                  f"| {c['system_s']:.3f} / {w['system_s']:.3f} |", flush=True)
    print(f"\nbatch {args.batch}, medians of {args.rounds} x {args.repeats} calls each, "
          f"the two functions alternating in one process per row; "
          f"{(time.time() - started) / 60:.1f} min.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
