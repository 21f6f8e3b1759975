"""Local inference with llama.cpp: any GGUF file, continuously batched on one loaded model."""
