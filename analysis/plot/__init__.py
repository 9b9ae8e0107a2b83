"""The plotting room: figures over tidy frames, below the experiments and the report that both draw with it.

Every figure takes a tidy DataFrame and an Axes (`(df, ax, ...)`), never a model
(analysis.plot.figures); one fixed color and marker per placement (analysis.plot.styles).
"""
