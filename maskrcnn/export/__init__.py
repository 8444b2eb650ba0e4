"""ONNX export (`onnx.export_onnx`, the traceable graph in `graph`) and the ONNX Runtime backend
(`runtime.OnnxModel`, what `maskrcnn.load("model.onnx")` runs). onnx and onnxruntime are the
optional extra `pip install maskrcnn[onnx]`; they are imported only when used."""
