"""Command line of the cluster stacks: register and schedule against the deployed ZenML server, render offline.

python -m stacks.kubernetes register --config stacks/kubernetes.yaml   # get-or-create the components and the stack
python -m stacks.kubernetes schedule --config stacks/kubernetes.yaml   # the retrain pipeline on its cron (a CronJob)
python -m stacks.kubernetes render --config stacks/kubernetes.yaml --out manifests/  # what would be built and submitted

``register`` and ``schedule`` need ``zenml login URL`` first; ``render`` needs no server, cluster or Docker daemon.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zenml.client import Client

from stacks.manifests import render_manifests
from stacks.remote import load_stack_config, prepared_scheduled_pipeline, register_stack, require_server
from stage1_core.common.cli import EXIT_OK, configure_logging, run_command, writable_folder


def main(argv: list[str] | None = None) -> int:
    """Command line: register the stack, schedule the retraining, or render the manifests for review."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["register", "schedule", "render"])
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(__file__).parent / "kubernetes.yaml",
        help="stack YAML (default: stacks/kubernetes.yaml)",
    )
    parser.add_argument("--out", type=Path, default=Path("k8s-manifests"), help="render: folder for the manifest YAMLs")
    args = parser.parse_args(argv)
    configure_logging()

    def run() -> int:
        client = Client()
        config = load_stack_config(args.config)
        if args.command != "render":
            require_server(config, client)
        if args.command == "register":
            print(
                f"stack registered: {register_stack(config, client)}; activate it with `zenml stack set {config.name}`"
            )
        elif args.command == "schedule":
            pipeline, run_configuration, run_kwargs = prepared_scheduled_pipeline(config)
            client.activate_stack(register_stack(config, client))
            pipeline.with_options(
                schedule=run_configuration.schedule,
                enable_cache=False,
                settings=run_configuration.settings,
                steps=run_configuration.steps,
            )(**run_kwargs)
            print(
                f"scheduled {config.schedule.pipeline} on {run_configuration.schedule.cron_expression!r} "
                f"({config.orchestrator}); list with `zenml pipeline schedule list`"
            )
        else:
            writable_folder(args.out, "--out")
            for path in render_manifests(config, client, args.out):
                print(path)
        return EXIT_OK

    return run_command("stacks.kubernetes", run)


if __name__ == "__main__":
    sys.exit(main())
