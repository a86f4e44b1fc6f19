"""The ``imgclf`` command line: :mod:`imgclf.cli.main` parses and dispatches; one module per command family.

Usage::

    from imgclf.cli.main import main
    main(["predict", "--model", "m.imgclf", "--images", "cells/"])
"""
