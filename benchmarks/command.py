"""What the benchmark commands share: measure, then print a table or, with ``--json``, the JSON alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO, TypeVar

from pydantic import BaseModel

from stage1_core.common.cli import EXIT_OK, run_printing_command

ResultT = TypeVar("ResultT", bound=BaseModel)


def run_benchmark(
    name: str, measure: Callable[[], ResultT], print_table: Callable[[ResultT], None], json_output: bool
) -> int:
    """Run ``measure`` under the exit-code contract; its result as a table, or as JSON on stdout alone."""

    def report(out: TextIO) -> int:
        result = measure()
        if json_output:
            print(result.model_dump_json(), file=out)
        else:
            print_table(result)
        return EXIT_OK

    return run_printing_command(name, report, json_output)
