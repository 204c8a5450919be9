"""The one Faust app: ingest bridge, agents, tables, sinks (InfluxDB), alerts."""
