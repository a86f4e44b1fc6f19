"""Handlers for the ``imgclf`` commands, one module per command family; each takes the argparse namespace.

``train`` (:mod:`.train`), ``predict`` (:mod:`.predict`), ``evaluate`` (:mod:`.evaluate`), ``inspect`` and
``verify`` (:mod:`.model`), ``demo`` and ``demo-data`` (:mod:`.demo`). Each handler returns an exit code;
errors are raised as :class:`imgclf.errors.ImgclfError` and turned into one stderr line by
:func:`imgclf.cli.main`, which imports only the module of the command it runs. This file stays empty so
that importing one command module never pulls in the others (the predict path imports no training or
plotting code).

Usage::

    from imgclf.cli import build_parser
    from imgclf.commands.model import cmd_inspect
    cmd_inspect(build_parser().parse_args(["inspect", "model.imgclf"]))
"""
