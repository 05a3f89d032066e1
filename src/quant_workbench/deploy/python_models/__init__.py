"""`model.py` files for Triton's Python backend, copied verbatim into generated model repositories.

They run inside Triton's Python backend stub, not in the workbench: they import only
`triton_python_backend_utils` (provided by the stub), numpy, onnxruntime and transformers, and read
every setting from the `parameters` of their config.pbtxt.
"""
