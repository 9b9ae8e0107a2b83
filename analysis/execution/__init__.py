"""How models are run, apart from what they compute: the execution plan (`ExecutionPlan`,
`default_plan`) and the layer loops and projection products it supplies (analysis.execution.ops).

    from analysis.execution import default_plan
    plan = default_plan().replace(compute_dtype="bfloat16")
"""

from analysis.execution.plan import ExecutionPlan, default_plan

__all__ = ["ExecutionPlan", "default_plan"]
