"""The report room: figures over tidy frames and the generated reports (`lnscope report`).

Figures take a tidy DataFrame and an Axes (never a model); reports assemble figures and tables.
"""
