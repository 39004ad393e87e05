"""Interoperability: ONNX and IBM aihwkit export, aihwkit config import, shrunk architectures.

* :mod:`.onnx`: the compressed model as an ONNX file, checked with onnx.checker and
  onnxruntime (optional extra ``[export]``);
* :mod:`.layout_json`: the crossbar layout as JSON for a downstream mapper;
* :mod:`.aihwkit`: our non-ideality config <-> aihwkit's ``InferenceRPUConfig``, and the
  model as an aihwkit ``AnalogSequential`` (aihwkit optional);
* :mod:`.architecture`: a Torch-Pruning-free description of physically shrunk models.

Run directories are read by :mod:`xbarprune.experiment.export` (``xbarprune export``).
"""
