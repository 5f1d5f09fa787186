"""The training explorer: ``jaxalign dashboard`` (a live local page over run dirs) and
``jaxalign report`` (the same views as one offline HTML file, or PNGs). See docs/dashboard.md.

Modules, reading down: ``command`` (CLI), ``server`` (Starlette app) and ``report``;
``payload`` (what the page draws) from ``figures``/``evals`` (plotly figure dicts, laid out by
``views`` and ``names``, drawn with ``plotting``); ``runs``/``rundir`` follow run dirs'
files (``metrics_table``, ``jsonl``); ``downsample`` thins curves for the browser.
"""
