"""Developer utilities: ``python -m sakura_nexus.sim {sdf,frame,map} ...``.

  sdf   [OUT] [--seed N]        regenerate the Gazebo world (default worlds/factory_cell.sdf)
  frame OUT.png [--seed N] [--size WxH]   save the first camera frame of a seed
  map   OUT.png [--seed N]      save the top-down map of a seed
"""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sakura_nexus.sim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["sdf", "frame", "map"])
    ap.add_argument("out", nargs="?", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="320x240")
    a = ap.parse_args(argv)
    from . import CellConfig
    cfg = CellConfig(seed=a.seed)
    if a.what == "sdf":
        from .sdf import export_sdf
        with open(a.out or "worlds/factory_cell.sdf", "w", encoding="utf-8") as f:
            f.write(export_sdf(cfg))
    elif a.what == "frame":
        import cv2

        from . import FactoryCell
        w, h = (int(v) for v in a.size.lower().split("x"))
        cell = FactoryCell(cfg, w, h)
        cv2.imwrite(a.out or "frame.png", cell.render()[:, :, ::-1])
        cell.close()
    else:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from . import FactoryCell, plot_cell
        cell = FactoryCell(cfg)
        fig, ax = plt.subplots(figsize=(5, 5))
        plot_cell(ax, cell, legend=True)
        ax.set_title(f"factory cell, seed {a.seed}")
        fig.savefig(a.out or "map.png", dpi=100, bbox_inches="tight")
        cell.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
