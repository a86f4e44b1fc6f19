"""Files on disk, at the bottom of the package: imported by every layer, importing nothing of ours but errors.

- :mod:`imgclf.fileio.reading`: bounded, non-blocking reads (``read_bounded``, ``read_json``,
  ``open_for_reading``).
- :mod:`imgclf.fileio.writing`: atomic writes (``atomic_open``, ``atomic_write_bytes``,
  ``atomic_write_text``) and early checks that a path can be written (``check_writable``).
- :mod:`imgclf.fileio.processes`: whether a process is still running (``pid_alive``), before taking over
  a temporary file or a lock it left behind.

Usage::

    from imgclf.fileio.writing import atomic_write_text
    atomic_write_text("report.json", text)
"""
