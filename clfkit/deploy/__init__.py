"""Deployment: :mod:`~clfkit.deploy.export` (torch -> ONNX with proven parity, int8),
:mod:`~clfkit.deploy.tta`, and the torch-free side: :mod:`~clfkit.deploy.onnx_contract` (the
exported model's metadata and preprocessing), :mod:`~clfkit.deploy.predictor` (the Python
``Predictor``) and :mod:`~clfkit.deploy.batch_predict` (``clfkit predict``: a folder -> test.txt).

Nothing is imported here, so the predictor's import chain stays free of torch."""
