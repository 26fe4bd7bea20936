"""Deployment through ONNX: export the raw network, run it in ONNX Runtime with this package's post-processing.

    from rtmdet_lesson.deploy import export_onnx, load_onnx_model
    export_onnx("data/course-sprites.pth", "course-sprites.onnx")   # the exact network, contract in the metadata
    model = load_onnx_model("course-sprites.onnx")                   # model(x) -> HeadOutput, as the torch model
    instances = model.predict(image)                                 # this package's predict, unchanged

Needs the optional extra: ``pip install -e .[deploy]`` (onnx, onnxscript, onnxruntime). ``contract`` says what an
exported file expects and returns; ``export`` writes files; ``ort_model`` runs them.
"""

from rtmdet_lesson.deploy.contract import DeployContract, output_names
from rtmdet_lesson.deploy.export import export_onnx
from rtmdet_lesson.deploy.extra import INSTALL_HINT, import_extra
from rtmdet_lesson.deploy.ort_model import OnnxRuntimeModel, load_onnx_model

__all__ = ["INSTALL_HINT", "DeployContract", "OnnxRuntimeModel", "export_onnx", "import_extra", "load_onnx_model",
           "output_names"]
