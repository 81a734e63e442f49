"""placeholder until the evaluator lands."""

from bench.errors import UserError


def configure(parser):
    pass


def execute(args):
    raise UserError("not implemented yet")
