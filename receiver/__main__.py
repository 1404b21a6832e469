"""``python -m receiver serve --config FILE``: the same as ``doorlock receiver serve``."""

from receiver.cli import receiver

receiver(prog_name="python -m receiver")
