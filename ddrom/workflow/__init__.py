"""The workflow layer: a case file's stages as library functions (HF sweep, import, offline,
calibration, online, comparison, clustering criterion, report). The ``ddrom`` command
(:mod:`ddrom.cli`) only parses arguments, calls these and prints."""
