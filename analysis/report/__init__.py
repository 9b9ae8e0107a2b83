"""The report room: the generated reports (`lnscope report`), above the experiments it renders.

Reports assemble the experiments' figures (drawn by the plotting room, analysis.plot) and tables,
and the initialization atlas (analysis.experiments.atlas); the report computes nothing of its own.
"""
