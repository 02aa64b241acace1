"""`llmtune plan`: parameter counts and peak memory per device from config.json alone.

memory.py is the model (bytes per term), inspect.py reads a model's facts from its config on the meta device,
report.py assembles and prints the plan. The public face is these three names.
"""

from llmtune.plan.report import make_plan, render
from llmtune.plan.source import parse_memory

__all__ = ["make_plan", "parse_memory", "render"]
