"""Does searching with LSODA (the fitter's default, for speed) find the same (η_h, η_y) as searching with
Radau throughout? Trains seed 0 of the ReLU and the ResNet-style networks of `FULL` and fits three
layers both ways. Usage: python check_fitter.py   (121 s on 2 cores)"""
from __future__ import annotations

import time

from metatele import repdyn
from metatele.repdyn.paper import DS, DX, FULL, in_processes, train_two_point

CASES = {"relu": [11, 17], "resnet": [11]}


def main() -> None:
    specs = [v for v in FULL.variants if v.kind in CASES]
    series = in_processes(train_two_point, [(s, CASES[s.kind]) for s in specs], 0, True, "train")
    for spec, by_layer in zip(specs, series):
        for layer, data in by_layer.items():
            line = f"{spec.kind} layer {layer}:"
            for search in ("LSODA", "Radau"):
                t0 = time.perf_counter()
                f = repdyn.fit(data, DX, DS, search=search)
                line += (f"  {search} η_h {f.eta_h:.6g} η_y {f.eta_y:.6g} R² {f.r2_H:.4f}/{f.r2_Y:.4f}/{f.r2_w:.4f}"
                         f" ({time.perf_counter() - t0:.0f} s)")
            print(line, flush=True)


if __name__ == "__main__":
    main()
