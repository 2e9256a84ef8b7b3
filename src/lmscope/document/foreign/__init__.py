"""Readers for models lmscope cannot run: Hugging Face configs, ONNX graphs, Keras files and
PyTorch modules. Each returns a facts document of the same schema as a runnable model's."""
