"""Export: trained TorchRec models to plain serving modules, ONNX graphs and an ANN index."""
