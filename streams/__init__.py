"""Stream processing: the Faust app, its tables and agents, and the sinks."""
