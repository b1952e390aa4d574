"""Write the released DINOv2 / DINOv3 architectures at random init as ``save_pretrained`` directories.

``python -m pipelines.random_backbones OUT_DIR [--names dinov2-vits14 dinov3-vits16 ...] [--seed S]`` writes
``OUT_DIR/<name>/`` (config.json + model.safetensors) for each name; nothing is downloaded. Each directory
loads like a copy of the released weights (``--backbone OUT_DIR/dinov2-vitb14``), so the real-size path
(memory, speed, export) runs offline; the predictions mean nothing. Exit status: 0 done, 2 unknown name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stage1_core.common.cli import EXIT_OK, UsageError, configure_logging, run_command
from stage1_core.modeling.backbone import PUBLISHED_ARCHITECTURES, save_random_backbone


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--names",
        nargs="+",
        default=list(PUBLISHED_ARCHITECTURES),
        help=f"architectures to write (default: all): {', '.join(PUBLISHED_ARCHITECTURES)}",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging()

    def run() -> int:
        unknown = sorted(set(args.names) - set(PUBLISHED_ARCHITECTURES))
        if unknown:
            raise UsageError(f"unknown architectures {unknown}; choose from {list(PUBLISHED_ARCHITECTURES)}")
        for name in args.names:
            directory = save_random_backbone(name, args.out_dir / name, seed=args.seed)
            print(f"{name:<20} (architecture of {PUBLISHED_ARCHITECTURES[name][0]}) -> {directory}")
        return EXIT_OK

    return run_command("random_backbones", run)


if __name__ == "__main__":
    sys.exit(main())
