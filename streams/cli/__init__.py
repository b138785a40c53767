"""The command line: shared options and one parser assembled from the command groups (see ``main``)."""
