"""``eicu score {news2,mews,qsofa}``: score JSON lines from stdin (or a file) to stdout.

Each input line is a JSON object of score inputs, for example::

    {"rr": 22, "spo2": 95, "on_oxygen": false, "sbp": 105, "hr": 112, "acvpu": "A",
     "temp_c": 38.4, "spo2_scale": 1}

and gives one output line with ``total``, ``components``, ``band`` (null when incomplete),
``complete``, ``partial_total``, ``min_band``, ``missing`` and the ``definition`` used. A
missing input (absent or null) makes the score incomplete. An ``id`` key is echoed back. A bad
line gives ``{"line": n, "error": {"field": ..., "message": ...}}`` and the stream goes on;
the exit status is 1 when any line was bad, else 0. Blank lines are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from eicu.errors import ScoreDefinitionError, ScoreInputError
from eicu.scores.definitions import BUILTIN, ScoreDefinition, load_definition
from eicu.scores.evaluate import ScoreResult, evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("score", choices=sorted(BUILTIN), help="which score")
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help="read JSON lines of inputs, write one JSON line of result per input (the default)",
    )
    parser.add_argument(
        "--input", metavar="FILE", help="read JSON lines from FILE instead of stdin"
    )
    parser.add_argument(
        "--definition",
        metavar="FILE",
        help="a local score definition (JSON) to use instead of the built-in one",
    )
    parser.add_argument(
        "--show-definition",
        action="store_true",
        help="print the definition in use as JSON and exit",
    )


def _error(line_no: int, field: str | None, message: str) -> dict[str, Any]:
    return {"line": line_no, "error": {"field": field, "message": message}}


def score_line(definition: ScoreDefinition, text: str, line_no: int) -> dict[str, Any]:
    """One input line to one output object (a result, or an error naming the bad field)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return _error(line_no, None, f"not valid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(obj, dict):
        return _error(line_no, None, f"expected a JSON object, got {type(obj).__name__}")
    ident = obj.pop("id", None)
    head: dict[str, Any] = {} if ident is None else {"id": ident}
    for key, value in obj.items():
        if not (value is None or isinstance(value, bool | int | float | str)):
            return head | _error(line_no, key, f"expected a number, a label or null, got {value!r}")
        spec_index = definition.input_index.get(key)
        if spec_index is not None and isinstance(value, str):
            spec = definition.inputs[spec_index]
            if not spec.labels:
                return head | _error(line_no, key, f"expected a number, got the string {value!r}")
    try:
        result = evaluate(definition, obj)
    except ScoreInputError as exc:
        return head | _error(line_no, exc.field, exc.detail)
    if not isinstance(result, ScoreResult):  # a JSON line holds scalars only
        return head | _error(line_no, None, "expected one value per input")
    return head | result.as_dict()


def stream(definition: ScoreDefinition, lines: TextIO, out: TextIO) -> int:
    """Score every line; returns the number of bad lines."""
    bad = 0
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        result = score_line(definition, text, line_no)
        bad += "error" in result
        out.write(json.dumps(result, separators=(",", ":")) + "\n")
        out.flush()
    return bad


def run(args: argparse.Namespace) -> int:
    definition = BUILTIN[args.score]
    if args.definition:
        definition = load_definition(args.definition)
        if definition.name != args.score:
            raise ScoreDefinitionError(
                "name", f"{args.definition} defines {definition.name!r}, not {args.score!r}"
            )
    if args.show_definition:
        print(json.dumps(definition.raw, indent=2))
        return 0
    if args.input:
        try:
            with open(args.input, encoding="utf-8") as fh:
                bad = stream(definition, fh, sys.stdout)
        except OSError as exc:
            print(f"eicu score: error: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
            return 2
    else:
        bad = stream(definition, sys.stdin, sys.stdout)
    return 1 if bad else 0
