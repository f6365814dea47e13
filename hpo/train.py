"""Train a study's fixed settings once, no search:
``python -m hpo.train --study lenet_lr [--set train.epochs=3] [--json]``."""

from __future__ import annotations

import argparse
import json

from hpo import cli
from hpo import config as config_mod
from hpo.training import data as data_mod
from hpo.training import nets
from hpo.training.loop import fit, setup_runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpo.train", description="Train a study's fixed settings once (no search)."
    )
    cli.add_study_arguments(parser)
    parser.add_argument(
        "--json", action="store_true", help="print the result as one JSON object on stdout (default: off)"
    )
    args = parser.parse_args(argv)
    spec = config_mod.load(args.study, args.set)
    cfg = spec.base
    nets.check(spec, args.data_dir)
    device, _ = setup_runtime(cfg)
    data = data_mod.load(cfg.data, cfg.seed, device, root=args.data_dir)
    cli.say(
        f"{spec.name}: {cfg.model.name} on {cfg.data.dataset} ({len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test), {cfg.train.epochs} epochs on {device}"
    )
    result, _ = fit(cfg, data, on_epoch=lambda s: cli.say(cli.epoch_line(s, cfg.train.epochs)))
    if result.status != "ok":
        cli.say(result.reason)
    else:
        cli.say(
            f"best val {result.best_val_acc:.2f}%  test {result.test_acc:.2f}%  "
            f"{result.wall_time_s:.1f}s  {result.images_per_s:,.0f} img/s"
        )
    if args.json:
        print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    cli.run_main(main)
