"""The dataset layouts this project reads, one module each (``natix``, ``mapillary``, ``roadwork``, ``folder``):
its file names, folders, columns and label names, its detector and its reader. ``config`` holds what ingest is
told, ``base`` what every reader shares; the demo writers draw their files with these same constants."""
