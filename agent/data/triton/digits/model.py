"""Triton Python-backend model: the digits softmax regression (same weights file as the stand-in).

Input ``pixels`` FP32 [N, 64] (raw pixel values 0-16), output ``probabilities`` FP32 [N, 10].
The weights (``digits.json``, built at install time by ``python -m agent.digits build``) sit next to
this file. PEERSERVE_SITE_PACKAGES, when set (the process runtime, Triton 2.51 of the nvidia-pytriton wheel), names
where numpy lives for the backend's interpreter: it goes first on sys.path, and a numpy from anywhere else is
refused (the model does not load, the server's log says which one was found): that stub reads a numpy 2 array
as 0 bytes, so every output came back empty (a JSON infer 500 "output tensor shape does not match size of
output", binary outputs of 0 bytes) when the interpreter found a venv's numpy 2 first (agent/runtime/triton.py).
"""

import json
import os
import sys

if os.environ.get("PEERSERVE_SITE_PACKAGES"):
    sys.path.insert(0, os.environ["PEERSERVE_SITE_PACKAGES"])

import numpy as np
import triton_python_backend_utils as pb_utils

SITE = os.environ.get("PEERSERVE_SITE_PACKAGES")
if SITE and not os.path.realpath(np.__file__).startswith(os.path.join(os.path.realpath(SITE), "")):
    raise ImportError(f"numpy {np.__version__} from {np.__file__}, not the backend's own in {SITE}")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "digits.json")) as f:
            data = json.load(f)
        self.weights = np.asarray(data["weights"], dtype=np.float64).T  # 64 x 10
        self.bias = np.asarray(data["bias"], dtype=np.float64)
        pb_utils.Logger.log_info(f"numpy {np.__version__} from {np.__file__}; python {sys.executable}")

    def execute(self, requests: list) -> list:  # type: ignore[type-arg]
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "pixels").as_numpy()
            if x.ndim != 2 or x.shape[1] != 64:
                error = pb_utils.TritonError(f"pixels must have shape [N, 64], got {list(x.shape)}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            z = x.astype(np.float64) @ self.weights + self.bias
            z -= z.max(axis=1, keepdims=True)
            e = np.exp(z)
            p = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("probabilities", p)]))
        return responses
