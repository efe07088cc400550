#!/usr/bin/env python3
"""schemathesis' command line, with a workaround for a CPython 3.11 bug (scripts/serve_check.sh runs it).

Hypothesis describes the lambdas inside a strategy (only for its repr) by parsing their module with `ast`;
deep in the stack, CPython before 3.11.8 can fail that parse with "SystemError: AST constructor recursion
depth mismatch" (gh-106905), which surfaces as a flaky "Runtime Error" of the run. A description that
cannot be had is just "lambda" here; nothing that is generated or checked changes.
"""

import sys

import hypothesis.internal.lambda_sources as lambda_sources

_describe = lambda_sources.lambda_description


def _lambda_description(f):
    try:
        return _describe(f)
    except SystemError:
        return "lambda"


lambda_sources.lambda_description = _lambda_description

from schemathesis.cli import schemathesis  # noqa: E402

sys.argv[0] = "schemathesis"
sys.exit(schemathesis())
