"""Running a model: loading what a model argument names (a run, an adapter, a backbone, a text-only LLM), the one
batched greedy generation every command uses, and the OpenAI-compatible client for a served model.

Nothing is imported here, so that the client stays usable without torch.
"""
