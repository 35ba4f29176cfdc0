"""The database layer: statements, the repository, records, connections, deadlines, error translation."""
