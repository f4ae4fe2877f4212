"""Upscale a folder with Ray Data, driving liif-cli's library API (see docs/cluster.md).

liif-cli plans the work (`plan_batch`: names, outputs, skips, collisions);
Ray reads the files to do as bytes (`read_binary_files`), and `map_batches` hands batches of
them to `UpscaleActor` actors, one `liif_cli.Upscaler` (model, device, precision, decoder) per
worker, made once in the actor's constructor. Bytes are decoded by liif-cli's own decoder
(`read_image_bytes`), so 16-bit images, ICC profiles, alpha and EXIF survive:
`ray.data.read_images` would decode with Pillow to 8-bit arrays and drop the profile. Each actor
writes its outputs itself, atomically (`write_image`: temporary name, then rename), so no
full-size image goes back through Ray's object store; what comes back is one record per file
with the fields of a `liif batch --report` line.

    pip install '.[ray]'    # in a clone of liif-cli
    python docs/examples/ray_upscale.py photos/ big/ --scale 4 --workers 4 --report big.jsonl

On a Ray cluster, set RAY_ADDRESS (or call `ray.init(address="auto")`); the folders must be
visible to every node (shared file system), as for `liif batch --shard`. Leave Ray a CPU
beyond workers × cpus-per-worker: its read tasks need one too, and with every CPU held by an
actor the reads (and so the whole pipeline) wait forever. On this machine (no RAY_ADDRESS) the
script refuses such a plan with one line (exit 2); a cluster may grow, so there it is not
checked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from liif_cli.errors import LiifError, UsageError, describe
from liif_cli.io.images import read_image_bytes, write_image
from liif_cli.runtime.sizing import size_request, target_size
from liif_cli.tasks.batch import FileRecord, plan_batch, record_line

FIELDS = ("input", "output", "status", "reason", "seconds", "in_w", "in_h", "out_w", "out_h")


class UpscaleActor:
    """One Ray actor: loads the model once, then upscales every batch it is given.

    `outputs` maps each input path (as Ray reports it) to its output path; `size` is a
    `sizing.SizeRequest` (checked by the driver before any work starts).
    """

    def __init__(self, model: str | None, outputs: dict[str, str], *, size, device: str = "auto",
                 precision: str = "auto", quality: int = 95, overwrite: bool = False,
                 threads: int | None = None):
        import torch

        from liif_cli.runtime.upscaler import Upscaler

        if threads:  # Ray sets OMP_NUM_THREADS per worker from num_cpus; honour a request
            torch.set_num_threads(threads)
        # once per worker, not per batch: the model on its device, its decoder built once
        self.upscaler = Upscaler(model, device=device, precision=precision)
        self.outputs, self.size = outputs, size
        self.quality, self.overwrite = quality, overwrite
        self.worker = f"ray-{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.one(blob, path) for blob, path in zip(batch["bytes"], batch["path"])]
        return {k: np.array([r[k] for r in rows], dtype=object if k in ("input", "output",
                                                                      "status", "reason")
                            else float if k == "seconds" else np.int64) for k in FIELDS}

    def one(self, blob: bytes, path: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        dst = self.outputs[_key(path)]
        rec = {"input": _key(path), "output": dst, "status": "done", "reason": "",
               "in_w": 0, "in_h": 0, "out_w": 0, "out_h": 0}
        try:
            image = read_image_bytes(bytes(blob), name=_key(path))
            rec["in_w"], rec["in_h"] = image.width, image.height
            out_hw = target_size((image.height, image.width), request=self.size)
            res = self.upscaler.upscale_image(image, out_hw)
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            write_image(dst, res.image, quality=self.quality, overwrite=self.overwrite)
            rec["out_h"], rec["out_w"] = res.out_hw
        except Exception as e:  # noqa: BLE001 - one bad file (or out of memory) fails alone,
            # with the one-line reason `liif batch` gives (errors.describe)
            rec["status"], rec["reason"] = "failed", describe(e)[0]
        rec["seconds"] = time.perf_counter() - t0
        return rec


def _key(path: str) -> str:
    """Ray's path of a local file, as liif's plan names it (Ray may drop the 'local://')."""
    return str(Path(str(path).removeprefix("local://")).resolve())


def upscale_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                   scale: float | str | None = None, size: str | None = None,
                   model: str | None = None, workers: int = 1, batch_size: int = 4,
                   device: str = "auto", precision: str = "auto", recursive: bool = False,
                   fmt: str = "same", suffix: str = "", overwrite: bool = False,
                   quality: int = 95, cpus_per_worker: float = 1,
                   gpus_per_worker: float = 0) -> list[FileRecord]:
    """Upscale a folder with Ray Data; one FileRecord per planned file, in plan order.

    Outputs exist already (skipped) or fail by name alone (two inputs, one output) exactly as
    in `liif batch`; only the files to upscale are read by Ray. Call `ray.init` first.
    """
    import ray

    spec = size_request(scale=scale, size=size)  # usage errors before Ray starts anything
    plan = plan_batch(input_dir, output_dir, recursive=recursive, fmt=fmt, suffix=suffix,
                      overwrite=overwrite)
    todo = [item for item in plan.items if item.action == "upscale"]
    records = {str(item.input.resolve()): FileRecord(
        str(item.input.resolve()), str(item.output.resolve()),
        "skipped" if item.action == "skip" else "failed", item.reason)
        for item in plan.items if item.action != "upscale"}
    if todo:
        outputs = {str(item.input.resolve()): str(item.output.resolve()) for item in todo}
        ds = ray.data.read_binary_files([str(item.input.resolve()) for item in todo],
                                        include_paths=True)
        results = ds.map_batches(
            UpscaleActor, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker or None,
            fn_constructor_args=(model, outputs),
            fn_constructor_kwargs=dict(size=spec, device=device, precision=precision,
                                       quality=quality, overwrite=overwrite,
                                       threads=max(1, int(cpus_per_worker))),
        )
        for row in results.iter_rows():
            records[row["input"]] = FileRecord(
                row["input"], row["output"], row["status"], row["reason"],
                float(row["seconds"]),
                (int(row["in_w"]), int(row["in_h"])) if row["in_w"] else None,
                (int(row["out_w"]), int(row["out_h"])) if row["out_w"] else None, "ray")
    return [records[str(item.input.resolve())] for item in plan.items]


def check_room(cpus: float, workers: int, cpus_per_worker: float) -> None:
    """Refuse a plan that would wait forever: Ray's read tasks need a CPU beyond the actors'."""
    if workers * cpus_per_worker + 1 > cpus:
        fit = max(0, int((cpus - 1) // cpus_per_worker)) if cpus_per_worker else 0
        raise UsageError(f"Ray has {cpus:g} CPUs here: --workers {workers} × --cpus-per-worker "
                         f"{cpus_per_worker:g} leaves none for reading the files, and the run "
                         f"would wait forever; use --workers {fit} or fewer"
                         if fit else f"Ray has {cpus:g} CPUs here: too few for --workers "
                         f"{workers} × --cpus-per-worker {cpus_per_worker:g} and a reader")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input_dir")
    p.add_argument("output_dir")
    p.add_argument("--scale", "-s")
    p.add_argument("--size", help="WxH")
    p.add_argument("--model", "-m")
    p.add_argument("--workers", type=int, default=1, help="actors, each with one model")
    p.add_argument("--cpus-per-worker", type=float, default=1)
    p.add_argument("--gpus-per-worker", type=float, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--recursive", "-r", action="store_true")
    p.add_argument("--report", help="write the records as JSON lines to this file")
    args = p.parse_args(argv)

    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    try:
        if not os.environ.get("RAY_ADDRESS"):  # a cluster may grow; this machine will not
            check_room(ray.cluster_resources().get("CPU", 0), args.workers, args.cpus_per_worker)
        recs = upscale_folder(args.input_dir, args.output_dir, scale=args.scale, size=args.size,
                              model=args.model, workers=args.workers, batch_size=args.batch_size,
                              recursive=args.recursive, device=args.device,
                              cpus_per_worker=args.cpus_per_worker,
                              gpus_per_worker=args.gpus_per_worker)
    except LiifError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if args.report:
        with open(args.report, "a", encoding="utf-8") as f:
            f.writelines(record_line(r) for r in recs)
    counts = {s: sum(r.status == s for r in recs) for s in ("done", "skipped", "failed")}
    print(json.dumps(counts))
    for r in recs:
        if r.status == "failed":
            print(f"failed: {r.reason}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
