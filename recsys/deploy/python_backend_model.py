"""Triton Python-backend model that runs a version's ``model.onnx`` through ONNX Runtime (the CPU twin).

Copied as ``model.py`` into every version folder of the Triton model repository; generic over models: input
and output names, dtypes and dims come from the model config Triton passes in. Standalone on purpose (it runs
inside Triton's Python-backend stub process): it imports nothing from ``recsys``.

- ``initialize`` refuses a model whose ONNX metadata ``schema_hash`` differs from the config parameter
  ``schema_hash`` (Triton then reports the load as failed, with this message).
- ``execute`` gets every request the dynamic batcher merged, runs them as one ONNX Runtime call, and splits the
  outputs back per request; a malformed request gets its own error, and output shapes and dtypes are checked.
- It refuses to load under numpy 2. The nvidia-pytriton wheel's stub is built for numpy 1; with numpy 2 its
  ``as_numpy()`` reads every input as its first value repeated (stride 0) and ``Tensor(name, array)`` sends
  outputs with no data, without an error (seen with numpy 2.2.6). Going through DLPack instead reads correctly
  under numpy 2 but mishandles capsules (logged errors; under numpy 1.26 the stub died), so it is not used.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _dims(tensor_config):
    return tuple(int(d) for d in tensor_config["dims"])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.version = args["model_version"]
        folder = Path(args["model_repository"]) / self.version
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"]), _dims(t))
                       for t in config["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"]), _dims(t))
                        for t in config["output"]]

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("onnx_intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

        expected = params.get("schema_hash")
        found = self.session.get_modelmeta().custom_metadata_map.get("schema_hash")
        if not expected or found != expected:
            raise RuntimeError(
                f"model {self.name!r} version {self.version}: model.onnx carries schema hash {found!r} but the model "
                f"config expects schema hash {expected!r}; refusing to load it (re-export the model for this schema, "
                "or regenerate the config from its model.json)")
        session_inputs = {i.name for i in self.session.get_inputs()}
        missing = [name for name, _, _ in self.inputs if name not in session_inputs]
        if missing:
            raise RuntimeError(f"model {self.name!r} version {self.version}: model.onnx has no input(s) {missing}")

        if int(np.__version__.split(".")[0]) >= 2:
            raise RuntimeError(f"numpy {np.__version__} in the Python-backend stub's environment: this stub is built "
                               "for numpy 1 and would answer with empty outputs; install numpy<2")

    def _request_inputs(self, request):
        """One request's input arrays and its batch size; raises ValueError on a malformed request."""
        arrays, batch = {}, None
        for name, dtype, dims in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            array = tensor.as_numpy()
            if array.dtype != dtype or array.shape[1:] != dims:
                raise ValueError(f"input {name!r}: got {array.dtype} {list(array.shape)}, "
                                 f"expected {np.dtype(dtype)} [batch, {', '.join(map(str, dims))}]")
            if batch is not None and array.shape[0] != batch:
                raise ValueError(f"input {name!r} has batch size {array.shape[0]}, other inputs {batch}")
            arrays[name], batch = array, array.shape[0]
        return arrays, batch

    def execute(self, requests):
        responses = [None] * len(requests)
        good, sizes, per_input = [], [], {name: [] for name, _, _ in self.inputs}
        for i, request in enumerate(requests):
            try:
                arrays, batch = self._request_inputs(request)
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {exc}"))
                continue
            good.append(i)
            sizes.append(batch)
            for name, array in arrays.items():
                per_input[name].append(array)
        if not good:
            return responses

        try:
            feeds = {name: np.concatenate(parts) if len(parts) > 1 else parts[0] for name, parts in per_input.items()}
            results = self.session.run([name for name, _, _ in self.outputs], feeds)
            total = sum(sizes)
            for (name, dtype, dims), result in zip(self.outputs, results, strict=True):
                if result.shape != (total, *dims) or result.dtype != dtype:
                    raise ValueError(f"output {name!r}: ONNX Runtime returned {result.dtype} {list(result.shape)} "
                                     f"for {total} rows, expected {np.dtype(dtype)} [{total}, "
                                     f"{', '.join(map(str, dims))}]")
            bounds = np.cumsum(sizes)[:-1]
            split = [np.split(result, bounds) for result in results]
            for j, i in enumerate(good):
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(split[k][j]))
                           for k, (name, _, _) in enumerate(self.outputs)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        except Exception as exc:  # one answer per request, never an empty one
            error = pb_utils.TritonError(f"{self.name} version {self.version}: {type(exc).__name__}: {exc}")
            for i in good:
                responses[i] = pb_utils.InferenceResponse(error=error)
        return responses

    def finalize(self):
        self.session = None
