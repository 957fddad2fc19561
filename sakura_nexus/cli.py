"""The project CLI: ``sakura-nexus <command>`` (or ``python -m sakura_nexus <command>``).

Commands import their heavy dependencies lazily so ``--help`` is instant and the ROS-free
commands (train, aggregator, fleet-experiment, bench) work on hosts without ROS.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, function, help). Each function takes the remaining argv.
COMMANDS = {
    "demo": ("sakura_nexus.harness.cli", "main", "run the MuJoCo cell + the four nodes and write a report"),
    "train": ("sakura_nexus.models.training", "train_main",
              "collect sim data (or read --bag rosbags) and train encoder + world model"),
    "inspect": ("sakura_nexus.bags.report", "inspect_main",
                "data report of rosbag2 bags before training (PNG + JSON; ROS-free)"),
    "evaluate": ("sakura_nexus.experiments.control_eval", "evaluate_main",
                 "closed-loop MPC vs go-to-goal evaluation in the sim (ROS-free); --suite: learned vs "
                 "kinematic MPC on held-out layouts"),
    "train-range-head": ("sakura_nexus.models.obstacles_train", "main",
                         "teach the camera's free-range (obstacle) head in the sim"),
    "aggregator": ("sakura_nexus.federated.fleet.superlink", "aggregator_main",
                   "start the fleet aggregator (Flower SuperLink + ServerApp); no ROS needed"),
    "fleet-keys": ("sakura_nexus.federated.common.signing", "keys_main",
                   "generate the fleet's model-signing key pair / list trusted keys"),
    "supernode": ("sakura_nexus.federated.robot.supernode", "supernode_main", "start a Flower SuperNode for one robot"),
    "fleet-experiment": ("sakura_nexus.experiments.fleet", "experiment_main",
                         "4-site federated vs local vs centralized experiment (ROS-free)"),
    "bench": ("sakura_nexus.bench_cli", "main", "run the benchmarks in bench/ (JSON + plots)"),
    "params-doc": ("sakura_nexus.params", "render_markdown", "print docs/parameters.md"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="sakura-nexus", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS), help="; ".join(
        f"{k}: {v[2]}" for k, v in COMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args, rest = parser.parse_known_args(argv[:1])
    module, func, _ = COMMANDS[args.command]
    fn = getattr(importlib.import_module(module), func)
    if args.command == "params-doc":
        print(fn())
        return 0
    result = fn(argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
