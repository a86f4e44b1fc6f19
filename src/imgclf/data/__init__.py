"""Datasets on disk: folders and splits (``folders``), decode once (``decode``) into a cache (``cache``),
and synthetic demo data (``synthetic``).

Usage::

    from imgclf.data.folders import scan_dataset
    ds = scan_dataset("dataset", val_split=0.1, test_split=0.1, seed=42)
"""
