"""How a node runs: worker threads or asyncio tasks, listeners, the grouped outcome writer."""
