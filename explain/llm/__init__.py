"""Everything that talks to an LLM: backends, the request cache, digit read-outs, errors.

Choose a backend with `explain.llm.backends.make_backend`; every call goes
through the SQLite cache of `explain.llm.cache`. Submodules are imported
explicitly (this file imports nothing), so importing `explain.llm.errors`
does not load numpy or an HTTP client.
"""
