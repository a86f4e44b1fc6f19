"""``imgclf serve``: an HTTP inference server (v1 JSON API, Open Inference Protocol v2) and a web page.

Built on FastAPI + uvicorn (the ``serve`` extra). It loads model files through
:mod:`imgclf.loading` (an .imgclf through :mod:`imgclf.modelfile`, an .onnx through onnxruntime,
without torch), never training code, and classifies through ``Classifier.predict`` so its answers are
the ones ``imgclf predict`` gives.

Usage::

    from imgclf.serving.models import ModelStore
    from imgclf.serving.app import create_app
    from imgclf.serving.settings import ServeSettings
    app = create_app(ModelStore.open({"malaria": "malaria.imgclf"}), ServeSettings())
"""
