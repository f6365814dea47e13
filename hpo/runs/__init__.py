"""A run of ``python -m hpo.run``: one process or a supervisor of workers, its progress and what it prints."""
