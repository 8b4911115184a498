"""Models and their parts: ``loading`` (resolve a reference: hub, folder, GGUF, packaged; tokenizer and chat
template), ``adapters`` (an adapter checked against its base), ``modelfile`` (Ollama's template, its Python twin),
``llama3_tokenizer`` (Meta's tokenizer, offline) and the shipped chat templates.
"""
