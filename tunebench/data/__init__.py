"""Conversations in, encoded splits out: ``sources`` (hub, files, the packaged set), ``standardize`` (ShareGPT,
OpenAI, Alpaca records to ``{role, content}``), ``splits``, ``encode`` (chat template, assistant-token mask),
``conversations`` (the data step: read, standardize, split, encode, write) and ``data_report`` (read back).
"""
