"""Where a run's numbers go: scalars, tables and events, to a list of sinks.

Built-in sinks: ``jsonl`` (metrics.jsonl, events.jsonl, tables as files),
``tensorboard`` (tensorboardX event files), ``console`` (progress bar and
messages), ``wandb`` (optional). Pick them with ``log.sinks`` in YAML; a sink
of your own is named by import path or registered with ``@register_sink``.
See docs/logging.md.
"""

from jaxalign.sinks.base import BaseSink, Sink, SinkError, Sinks, check_table_name, jsonable
from jaxalign.sinks.config import LogConfig
from jaxalign.sinks.registry import get_sink_factory, list_sinks, open_sinks, register_sink

__all__ = ["BaseSink", "LogConfig", "Sink", "SinkError", "Sinks", "check_table_name", "get_sink_factory",
           "jsonable", "list_sinks", "open_sinks", "register_sink"]
